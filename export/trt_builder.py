"""ONNX -> TensorRT plan, for TensorRT 8.5 through 11.x, the API feature-detected.

No version string decides a code path; the attributes do (docs/tensorrt.md, "API across versions"):

- network flags: `EXPLICIT_BATCH` where it exists (required on 8.x, ignored on 10.x, gone in
  11.x); `STRONGLY_TYPED` for the strongly typed build;
- precision: where `BuilderFlag.FP16` exists (8.5-10.16) the FP32 ONNX is built weakly typed
  with the FP16 flag, and the LayerNorm / Softmax / reliability-tail layers are pinned to FP32
  (`layer.precision`, `set_output_type`, OBEY_PRECISION_CONSTRAINTS). Where the flag is gone
  (11.x) the FP16-typed ONNX (`export.fp16`) is built STRONGLY_TYPED: its Cast nodes carry the
  precision;
- optimisation profile min 1 / opt `batch` / max `max_batch` on the `images` input;
- workspace pool limit, timing cache loaded and saved, DLA core with GPU fallback.

Failures are errors with TensorRT's own words: the parser's messages, and a None plan.
The plan goes to disk through `grefel.fileio.atomic_path`, so a failed build never replaces an
existing engine. `tensorrt` is imported lazily (grefel._lazy.require); this module never imports
torch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Union

from export import ExportError
from grefel._lazy import require
from grefel.contract import INPUT_SHAPE
from grefel.fileio import atomic_path, atomic_write_bytes

__all__ = ["BuildOptions", "BuildResult", "build_engine", "network_flags", "precision_mode"]

INPUT_CHW = INPUT_SHAPE  # the model contract (grefel.contract)
Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = True
    batch: int = 1  # opt
    max_batch: int = 8
    workspace_gib: Optional[float] = None
    timing_cache: Optional[Path] = None
    dla_core: Optional[int] = None
    input_name: str = "images"


@dataclass
class BuildResult:
    engine: Path
    tensorrt_version: str
    precision_mode: str  # "fp16-weak", "fp16-strong" or "fp32"
    onnx_built: Path
    seconds: float
    plan_bytes: int
    pinned_fp32_layers: int = 0
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["engine"], d["onnx_built"] = str(self.engine), str(self.onnx_built)
        return d


def precision_mode(trt, fp16: bool) -> str:
    """'fp16-weak' where BuilderFlag.FP16 exists, 'fp16-strong' where it does not, or 'fp32'."""
    if not fp16:
        return "fp32"
    return "fp16-weak" if hasattr(trt.BuilderFlag, "FP16") else "fp16-strong"


def network_flags(trt, strongly_typed: bool) -> int:
    """create_network flags by feature detection; never hard-coded bit positions."""
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None:
        flags |= 1 << int(explicit)
    strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed:
        if strong is None:
            raise ExportError("this TensorRT has neither BuilderFlag.FP16 nor STRONGLY_TYPED: "
                              "no FP16 build path exists")
        flags |= 1 << int(strong)
    return flags


def _parse(trt, network, logger, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser failed:\n  " +
                          "\n  ".join(errors or ["(no parser message)"]))


def _add_profile(trt, builder, network, config, opts: BuildOptions) -> List[List[int]]:
    """min 1 / opt batch / max max_batch on a dynamic batch; a static batch must equal max."""
    shape = list(network.get_input(0).shape)
    if shape[0] != -1:
        if shape[0] != opts.max_batch:
            raise ExportError(f"the ONNX has a static batch of {shape[0]} but --max-batch is "
                              f"{opts.max_batch}; re-export with --dynamic or match them")
        return [shape]
    shapes = [[b, *INPUT_CHW] for b in (1, opts.batch, opts.max_batch)]
    profile = builder.create_optimization_profile()
    profile.set_shape(opts.input_name, *[tuple(s) for s in shapes])
    config.add_optimization_profile(profile)
    return shapes


def _pin_fp32(trt, network, names: Set[str]) -> int:
    """Pin sensitive layers (by ONNX node name, plus softmax/normalisation) to FP32."""
    kinds = {getattr(trt.LayerType, k, None) for k in ("SOFTMAX", "NORMALIZATION")} - {None}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        named = layer.name in names or any(layer.name.startswith(n + "_") for n in names)
        if not (named or layer.type in kinds):
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


def _configure(trt, builder, config, opts: BuildOptions, mode: str, log: Log) -> List[str]:
    notes: List[str] = []
    if opts.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * 2**30))
    if mode == "fp16-weak":
        if hasattr(builder, "platform_has_fast_fp16") and not builder.platform_has_fast_fp16:
            notes.append("this GPU has no fast FP16; TensorRT may pick FP32 kernels")
        config.set_flag(trt.BuilderFlag.FP16)
        obey = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None)
        config.set_flag(obey if obey is not None else trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    if opts.dla_core is not None:
        available = int(getattr(builder, "num_DLA_cores", 0))
        if not opts.fp16:
            raise ExportError("--dla-core needs an FP16 build (DLA runs FP16/INT8 only)")
        if opts.dla_core >= available:
            raise ExportError(f"--dla-core {opts.dla_core}: this device has {available} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = opts.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        notes.append(f"DLA core {opts.dla_core} with GPU fallback")
    for note in notes:
        log(f"  note: {note}")
    return notes


def _timing_cache(config, path: Optional[Path]):
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False
        raise ExportError(f"{path}: TensorRT rejected this timing cache (made on another GPU or "
                          "TensorRT version?); delete it or pass another --timing-cache")
    return cache


def build_engine(
    onnx_fp32: Union[str, Path],
    engine_path: Union[str, Path],
    opts: BuildOptions,
    *,
    onnx_fp16: Optional[Union[str, Path]] = None,
    fp32_layers: Sequence[str] = (),
    log: Log = print,
) -> BuildResult:
    """Build a plain TensorRT plan from the ONNX and write it to `engine_path` atomically.

    Args:
        onnx_fp32: the FP32 ONNX (weakly typed and FP32 builds).
        engine_path: the .engine file; untouched unless the build succeeds.
        opts: batch profile, precision, workspace, timing cache, DLA.
        onnx_fp16: the FP16-typed ONNX, required where the FP16 flag is gone.
        fp32_layers: ONNX node names pinned to FP32 in a weakly typed FP16 build.
        log: progress/notes printer.
    """
    trt = require("tensorrt")
    mode = precision_mode(trt, opts.fp16)
    source = Path(onnx_fp32)
    if mode == "fp16-strong":
        if onnx_fp16 is None:
            raise ExportError("this TensorRT has no BuilderFlag.FP16: an FP16-typed ONNX is needed")
        source = Path(onnx_fp16)
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, mode == "fp16-strong"))
    _parse(trt, network, logger, source)
    config = builder.create_builder_config()
    shapes = _add_profile(trt, builder, network, config, opts)
    notes = _configure(trt, builder, config, opts, mode, log)
    pinned = _pin_fp32(trt, network, set(fp32_layers)) if mode == "fp16-weak" else 0
    cache = _timing_cache(config, opts.timing_cache)
    log(f"  TensorRT {trt.__version__}, {mode}, profile {shapes}, {pinned} layers pinned FP32")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"{source}: TensorRT returned no plan (build failed; see its log "
                          f"above); {engine_path} was left unchanged")
    data = bytes(plan)
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(data)
    if opts.timing_cache is not None:
        updated = config.get_timing_cache() or cache
        atomic_write_bytes(opts.timing_cache, bytes(updated.serialize()))
    return BuildResult(engine=Path(engine_path), tensorrt_version=str(trt.__version__),
                       precision_mode=mode, onnx_built=source,
                       seconds=time.perf_counter() - start, plan_bytes=len(data),
                       pinned_fp32_layers=pinned, notes=notes)
