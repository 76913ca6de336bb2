"""ONNX -> TensorRT plan, for TensorRT 8.5 through 11.x, the API feature-detected.

No version string decides a code path; the attributes do (docs/tensorrt.md, "API across versions";
checked against the real bindings of 8.6.1, 10.3.0, 10.13.0.35 and 11.4.0.106 and the 8.5.2 API
in `tests/test_trt_real_bindings.py`):

- precision: where `NetworkDefinitionCreationFlag.STRONGLY_TYPED` exists (10.0+: JetPack 6.1
  onward and 7.x; always on in 11.x) the FP16-typed ONNX (`export.fp16`) is built strongly
  typed: its Cast nodes carry the precision, no layer names need matching, and none of the
  weak-typing APIs deprecated in 10.12 are used. Only on 8.5/8.6 (no STRONGLY_TYPED) the FP32
  ONNX is built weakly typed with BuilderFlag.FP16, the LayerNorm / Softmax / reliability-tail
  layers pinned to FP32 (`layer.precision`, `set_output_type`, OBEY_PRECISION_CONSTRAINTS),
  matched by the parser's `layer.metadata` ("[ONNX Layer: NODE]") where it is set, else by the
  parser's layer name (the node name, or `NODE_<n>` for a duplicate). TensorRT's fused
  transformer regions can still ignore layer precisions there (NVIDIA/TensorRT#3889, #4505):
  `--verify` is the safeguard;
- INT8 (`--int8`): the QDQ ONNX (`export.int8`; explicit quantization, the scales are in its
  Q/DQ nodes, no calibrator). Where `BuilderFlag.INT8` exists (8.5-10.x) it is built weakly
  typed with that flag (layers without Q/DQ stay FP32); where it does not (11.x, strongly typed
  only) the network is strongly typed and the Q/DQ nodes carry the precision. DLA needs INT8 or
  FP16 and fixed shapes;
- network flags: `EXPLICIT_BATCH` where it exists (required on 8.x, ignored on 10.x, gone in
  11.x), `STRONGLY_TYPED` by its enum value (1 in 10.x, 0 in 11.x);
- optimisation profile min 1 / opt `batch` / max `max_batch` on the `images` input; a DLA
  build gets min = opt = max = `max_batch` (DLA has no dynamic shapes: with a range, GPU
  fallback silently runs every layer on the GPU), and the notes say how many layers TensorRT
  reports as DLA-capable (`IBuilderConfig.can_run_on_DLA`); an invalid profile (-1 from
  `add_optimization_profile`) is an error;
- FP32 engines: TF32 stays on (TensorRT's default: on Ampere, Orin and newer, FP32 matmuls and
  convolutions run as TF32, a 10-bit mantissa) unless `tf32=False` (`--no-tf32`), and the notes
  say which;
- workspace pool limit; timing cache: loaded (a file TensorRT cannot read is replaced by a
  fresh cache, with a note; one made for another GPU/TensorRT is an error), and saved after the
  build merged (`ITimingCache.combine`) with what another build wrote meanwhile;
- one process-wide TensorRT logger (`grefel.runtime.trt_backend.trt_logger`).

Failures are `ExportError`s with TensorRT's own words: the parser's messages, a None plan, and
any exception the bindings raise. The plan goes to disk through `grefel.fileio.atomic_path`, so
a failed build never replaces an existing engine. `tensorrt` is imported lazily
(grefel._lazy.require); this module never imports torch.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from export import ExportError
from export.trt_form import for_tensorrt
from grefel._lazy import require
from grefel.contract import INPUT_SHAPE
from grefel.fileio import atomic_path, atomic_write_bytes

__all__ = ["BuildOptions", "BuildResult", "build_engine", "network_flags", "precision_mode"]

INPUT_CHW = INPUT_SHAPE  # the model contract (grefel.contract)
Log = Callable[[str], None]
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = True
    batch: int = 1  # opt
    max_batch: int = 8
    workspace_gib: Optional[float] = None
    timing_cache: Optional[Path] = None
    dla_core: Optional[int] = None
    input_name: str = "images"
    tf32: bool = True  # FP32 builds: TensorRT's default; False clears BuilderFlag.TF32
    int8: bool = False  # build the QDQ INT8 ONNX (explicit quantization); fp16 is then ignored


@dataclass
class BuildResult:
    engine: Path
    tensorrt_version: str
    precision_mode: str  # "fp16-weak", "fp16-strong", "int8-weak", "int8-strong" or "fp32"
    onnx_built: Path
    seconds: float
    plan_bytes: int
    pinned_fp32_layers: int = 0
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["engine"], d["onnx_built"] = str(self.engine), str(self.onnx_built)
        return d


def precision_mode(trt: Any, fp16: bool, int8: bool = False) -> str:
    """'fp16-strong' where STRONGLY_TYPED exists (10.0+), 'fp16-weak' where only
    BuilderFlag.FP16 does (8.5/8.6), or 'fp32'. With `int8`: 'int8-weak' where BuilderFlag.INT8
    exists (8.5-10.x), else 'int8-strong' where STRONGLY_TYPED does (11.x)."""
    if int8:
        if getattr(trt.BuilderFlag, "INT8", None) is not None:
            return "int8-weak"
        if getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None) is not None:
            return "int8-strong"
        raise ExportError(f"TensorRT {trt.__version__} has neither BuilderFlag.INT8 nor "
                          "STRONGLY_TYPED: no INT8 build path exists")
    if not fp16:
        return "fp32"
    if getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None) is not None:
        return "fp16-strong"
    if getattr(trt.BuilderFlag, "FP16", None) is not None:
        return "fp16-weak"
    raise ExportError(f"TensorRT {trt.__version__} has neither STRONGLY_TYPED nor "
                      "BuilderFlag.FP16: no FP16 build path exists")


def network_flags(trt: Any, strongly_typed: bool) -> int:
    """create_network flags by feature detection; never hard-coded bit positions."""
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None:
        flags |= 1 << int(explicit)
    strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed:
        if strong is None:
            raise ExportError("this TensorRT has no STRONGLY_TYPED network flag: the typed ONNX "
                              "cannot be built strongly typed")
        flags |= 1 << int(strong)
    return flags


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser failed:\n  " +
                          "\n  ".join(errors or ["(no parser message)"]))


def _add_profile(builder: Any, network: Any, config: Any, opts: BuildOptions) -> List[List[int]]:
    """min 1 / opt batch / max max_batch on a dynamic batch (min = opt = max = max_batch for
    DLA); a static batch must equal max."""
    shape = list(network.get_input(0).shape)
    if shape[0] != -1:
        if shape[0] != opts.max_batch:
            raise ExportError(f"the ONNX has a static batch of {shape[0]} but --max-batch is "
                              f"{opts.max_batch}; re-export with --dynamic or match them")
        return [shape]
    batches = (1, opts.batch, opts.max_batch) if opts.dla_core is None else (opts.max_batch,) * 3
    shapes = [[b, *INPUT_CHW] for b in batches]
    profile = builder.create_optimization_profile()
    profile.set_shape(opts.input_name, *[tuple(s) for s in shapes])
    if config.add_optimization_profile(profile) < 0:
        raise ExportError(f"TensorRT rejected the optimization profile {shapes} for input "
                          f"{opts.input_name!r} (needs min <= opt <= max: check --batch "
                          f"{opts.batch} and --max-batch {opts.max_batch})")
    return shapes


def _pinned(layer: Any, names: Set[str]) -> bool:
    """Is the layer one of the ONNX nodes in `names`? By the parser's metadata where set,
    else by its name (the node name, or `NODE_<n>` for a made-unique duplicate)."""
    nodes = _ONNX_LAYER.findall(getattr(layer, "metadata", "") or "")
    if nodes:
        return any(node in names for node in nodes)
    return layer.name in names or any(layer.name.startswith(n + "_") for n in names)


def _pin_fp32(trt: Any, network: Any, names: Set[str]) -> int:
    """Pin sensitive layers (the ONNX nodes in `names`, plus softmax/normalisation) to FP32."""
    kinds = {getattr(trt.LayerType, k, None) for k in ("SOFTMAX", "NORMALIZATION")} - {None}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not (layer.type in kinds or _pinned(layer, names)):
            continue
        float_outs = [j for j in range(layer.num_outputs)
                      if layer.get_output(j).dtype == trt.float32]
        if not float_outs:
            continue  # shape / index layers
        layer.precision = trt.float32
        for j in float_outs:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def _configure(trt: Any, builder: Any, network: Any, config: Any, opts: BuildOptions,
               mode: str) -> List[str]:
    notes: List[str] = []
    if opts.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * 2**30))
    if mode == "fp16-weak":
        if hasattr(builder, "platform_has_fast_fp16") and not builder.platform_has_fast_fp16:
            notes.append("this GPU has no fast FP16; TensorRT may pick FP32 kernels")
        config.set_flag(trt.BuilderFlag.FP16)
        obey = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None)
        config.set_flag(obey if obey is not None else trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    if mode == "int8-weak":
        if hasattr(builder, "platform_has_fast_int8") and not builder.platform_has_fast_int8:
            notes.append("this GPU has no fast INT8; TensorRT may pick FP32 kernels")
        config.set_flag(trt.BuilderFlag.INT8)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if not opts.tf32 and tf32 is not None:
        config.clear_flag(tf32)
        notes.append("TF32 off (--no-tf32): FP32 layers compute in full FP32")
    elif mode == "fp32" and tf32 is not None:
        notes.append("TF32 on (TensorRT's default): on Ampere, Orin and newer GPUs FP32 matmuls "
                     "and convolutions run as TF32 (10-bit mantissa); --no-tf32 for full FP32")
    if opts.dla_core is not None:
        notes.extend(_configure_dla(trt, builder, network, config, opts))
    return notes


def _configure_dla(trt: Any, builder: Any, network: Any, config: Any,
                   opts: BuildOptions) -> List[str]:
    available = int(getattr(builder, "num_DLA_cores", 0))
    if not (opts.fp16 or opts.int8):
        raise ExportError("--dla-core needs an FP16 or INT8 build (DLA runs FP16/INT8 only)")
    if opts.dla_core >= available:
        raise ExportError(f"--dla-core {opts.dla_core}: this device has {available} DLA cores")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = opts.dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    on_dla = sum(1 for layer in layers if config.can_run_on_DLA(layer))
    return [f"DLA core {opts.dla_core} with GPU fallback, fixed batch {opts.max_batch} (DLA has "
            f"no dynamic shapes; smaller batches are padded at run time)",
            f"TensorRT reports {on_dla} of {len(layers)} layers as DLA-capable; the other "
            f"{len(layers) - on_dla} run on the GPU"]


def _load_timing_cache(config: Any, path: Optional[Path], notes: List[str]) -> Tuple[Any, bytes]:
    """(cache set on the config, the file's bytes as read)."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None and data:
        notes.append(f"{path}: TensorRT cannot read this timing cache (damaged, or written by "
                     "another TensorRT); starting a fresh one, which replaces it after the build")
        cache = config.create_timing_cache(b"")
    if cache is None:
        raise ExportError("TensorRT could not create an empty timing cache; build without "
                          "--timing-cache")
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False
        raise ExportError(f"{path}: TensorRT rejected this timing cache (made on another GPU or "
                          "TensorRT version?); delete it or pass another --timing-cache")
    return cache, data


def _save_timing_cache(config: Any, cache: Any, path: Path, loaded: bytes,
                       notes: List[str]) -> None:
    """Write the build's cache, merged with entries another build wrote since it was read."""
    updated = config.get_timing_cache() or cache
    now = path.read_bytes() if path.is_file() else b""
    if now and now != loaded:
        other = config.create_timing_cache(now)
        if other is None or not updated.combine(other, False):
            notes.append(f"{path}: could not merge the timing cache another build wrote "
                         "meanwhile; it was replaced by this build's")
    atomic_write_bytes(path, bytes(updated.serialize()))


def build_engine(
    onnx_fp32: Union[str, Path],
    engine_path: Union[str, Path],
    opts: BuildOptions,
    *,
    onnx_fp16: Optional[Union[str, Path]] = None,
    onnx_int8: Optional[Union[str, Path]] = None,
    fp32_layers: Sequence[str] = (),
    log: Log = print,
) -> BuildResult:
    """Build a plain TensorRT plan from the ONNX and write it to `engine_path` atomically.

    Args:
        onnx_fp32: the FP32 ONNX (weakly typed and FP32 builds).
        engine_path: the .engine file; untouched unless the build succeeds.
        opts: batch profile, precision, workspace, timing cache, DLA, TF32.
        onnx_fp16: the FP16-typed ONNX, required for a strongly typed FP16 build (10.0+).
        onnx_int8: the QDQ INT8 ONNX, required for an INT8 build (`opts.int8`).
        fp32_layers: ONNX node names pinned to FP32 in a weakly typed FP16 build (8.5/8.6).
        log: progress/notes printer.
    """
    trt = require("tensorrt")
    mode = precision_mode(trt, opts.fp16, opts.int8)
    source = Path(onnx_fp32)
    if opts.int8:
        if onnx_int8 is None:
            raise ExportError("an INT8 build needs the QDQ INT8 ONNX (grefel export --int8 "
                              "writes NAME.int8.onnx)")
        source = Path(onnx_int8)
    elif mode == "fp16-strong":
        if onnx_fp16 is None:
            raise ExportError(f"TensorRT {trt.__version__} builds FP16 strongly typed: the "
                              "FP16-typed ONNX is needed (grefel export writes NAME.fp16.onnx)")
        source = Path(onnx_fp16)
    try:
        return _build(trt, mode, source, Path(engine_path), opts, fp32_layers, log)
    except ExportError:
        raise
    except Exception as exc:  # raw pybind / TensorRT errors
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ExportError(f"{source}: TensorRT {trt.__version__} failed during the build "
                          f"({type(exc).__name__}: {first}); {engine_path} was left "
                          "unchanged") from None


def _build(trt: Any, mode: str, source: Path, engine_path: Path, opts: BuildOptions,
           fp32_layers: Sequence[str], log: Log) -> BuildResult:
    from grefel.runtime.trt_backend import trt_logger

    start = time.perf_counter()
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, mode.endswith("-strong")))
    parsed = for_tensorrt(source, engine_path.parent)  # PRelu layers, int8 Q/DQ
    try:
        _parse(trt, network, logger, parsed)
    finally:
        if parsed != source:
            parsed.unlink(missing_ok=True)
    config = builder.create_builder_config()
    shapes = _add_profile(builder, network, config, opts)
    notes = _configure(trt, builder, network, config, opts, mode)
    pinned = _pin_fp32(trt, network, set(fp32_layers)) if mode == "fp16-weak" else 0
    cache, loaded = _load_timing_cache(config, opts.timing_cache, notes)
    for note in notes:
        log(f"  note: {note}")
    log(f"  TensorRT {trt.__version__}, {mode}, profile {shapes}, {pinned} layers pinned FP32")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"{source}: TensorRT returned no plan (build failed; see its log "
                          f"above); {engine_path} was left unchanged")
    data = bytes(plan)
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(data)
    if opts.timing_cache is not None:
        _save_timing_cache(config, cache, opts.timing_cache, loaded, notes)
    return BuildResult(engine=Path(engine_path), tensorrt_version=str(trt.__version__),
                       precision_mode=mode, onnx_built=source,
                       seconds=time.perf_counter() - start, plan_bytes=len(data),
                       pinned_fp32_layers=pinned, notes=notes)
