"""`grefel export`: the stages in order, a progress line and a time each.

    checkpoint -> ONNX FP32 (opset per target, dynamic batch) -> onnxsim -> ONNX Runtime parity
    with torch -> TensorRT op lint -> FP16-typed ONNX + FP16 gate -> (--int8: QDQ INT8 ONNX
    calibrated on --calib-data + INT8 gate on held-out images, export/int8.py) -> ONNX
    artifacts -> engine build (INT8 from the QDQ ONNX with --int8) -> --verify on the device ->
    engine + sidecar -> (--triton DIR: the Triton model repository of the engine, else of the
    ONNX)

`MODEL.onnx` as the source skips the torch stages (no torch import), for a Jetson that builds
its own engine. Every artifact is made in a work folder inside `--out` and moved into place only
when its checks pass, so a failed export or build never replaces a good file. Without
TensorRT the checked ONNX artifacts are written and the result says what to run on the target.

The work folder is `.export-<pid>-<random>`: an export that was killed (SIGKILL, power loss)
cannot remove its own, so every export first removes the work folders of processes that no
longer run (`remove_stale_work_dirs`); those of running exports are left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import onnx

from export import ExportError
from export.compare import FP16_CRITERIA, INT8_CRITERIA, Agreement, artifact_precision
from export.fp16 import convert_to_fp16, fp16_gate, fp32_node_names
from export.gate_images import gate_images
from export.int8 import CALIB_METHODS
from export.lint import TARGETS, lint_onnx, target_table
from export.options import ExportOptions
from export.prelu import to_branch_free
from export.quiet import CapturedWarnings, captured_warnings
from export.sidecar import device_info, engine_stem, onnx_meta, write_sidecar
from export.simplify import simplify_onnx
from export.trt_form import for_tensorrt
from grefel._lazy import MissingDependency, require
from grefel.contract import (
    AUTO_TARGET_WITHOUT_TENSORRT,
    INPUT_SHAPE,
    TENSORRT_TARGETS,
    opset_for_target,
    target_for_version,
)
from grefel.fileio import (
    atomic_path,
    atomic_write_json,
    claim_run_folder,
    display_path,
    left_by_dead_run,
    why_unwritable,
)

__all__ = ["ExportOptions", "ExportResult", "artifact_name", "planned_outputs",
           "remove_stale_work_dirs", "resolve_target", "run_export"]

WORK_PREFIX = ".export-"

Log = Callable[[str], None]
# The exporter writes LayerNormalization from opset 17 on, which TensorRT 8.5's parser lacks
# although its range reaches 17: a grefel ONNX of opset 17 can never lint for 8.5.
OPSET_CEILING = {t: opset_for_target(t) for t, spec in TENSORRT_TARGETS.items()
                 if not spec.layernorm}
PARITY_TOL = {"probs": (1e-4, 0.0), "primary": (1e-4, 0.0), "confidence": (1e-4, 0.0)}


@dataclass
class ExportResult:
    exit_code: int
    artifacts: List[Path] = field(default_factory=list)
    gates: Dict[str, Any] = field(default_factory=dict)
    message: str = ""


def artifact_name(source: Path, opts: ExportOptions) -> str:
    """NAME of the artifacts: --name, else the source's whole stem, so an artifact never takes
    the name of another precision's file (NAME.fp16.onnx exports as NAME.fp16, never as NAME,
    whose NAME.onnx is the FP32 model of another export). A QDQ INT8 source NAME.int8.onnx is
    NAME: its INT8 artifact NAME.int8.onnx is then the source itself."""
    source = Path(source)
    if opts.name:
        return opts.name
    if (source.suffix.lower() == ".onnx" and source.stem.endswith(".int8")
            and artifact_precision(source) == "int8"):
        return source.stem[: -len(".int8")]
    return source.stem


def planned_outputs(source: Path, opts: ExportOptions) -> Tuple[str, ...]:
    """The names this export may write into --out (ONNX artifacts, checks file, engine and its
    sidecar), the source itself excepted: an ONNX exported in its own folder is used in place
    (`_Run._publish` never rewrites it)."""
    source = Path(source)
    name = artifact_name(source, opts)
    int8_source = source.suffix.lower() == ".onnx" and artifact_precision(source) == "int8"
    names = [f"{name}{'.int8' if int8_source else ''}.onnx", f"{name}.checks.json"]
    if opts.fp16 and not int8_source:
        names.append(f"{name}.fp16.onnx")
    if opts.int8 and not int8_source:
        names.append(f"{name}.int8.onnx")
    if not opts.onnx_only:
        stem = engine_stem(name, opts.fp16, opts.max_batch, int8=opts.int8 or int8_source)
        names += [f"{stem}.engine", f"{stem}.json"]
    return tuple(n for n in names if not _is_source(Path(opts.out) / n, source))


def _is_source(path: Path, source: Path) -> bool:
    try:
        return os.path.samefile(path, source)
    except OSError:  # no such file (yet)
        return False


def resolve_target(target: str, trt: Any) -> Tuple[str, List[str]]:
    """(build target, targets to lint). auto: the installed TensorRT, else trt10 + all."""
    if target != "auto":
        return target, [target]
    if trt is None:
        return AUTO_TARGET_WITHOUT_TENSORRT, list(TARGETS)
    major, minor = (int(x) for x in str(trt.__version__).split(".")[:2])
    found = target_for_version(major, minor)
    return found, [found]


class _Stages:
    """Numbered stages: one line on `log` when a stage ends (its summary and wall time); its
    start line and a nested stage's lines go to `detail` (shown with -v)."""

    def __init__(self, log: Log, detail: Log) -> None:
        self.log, self.detail = log, detail
        self.n = 0
        self.depth = 0
        self.times: Dict[str, float] = {}

    @contextmanager
    def __call__(self, title: str, without: str = "") -> Iterator[List[str]]:
        """One stage. A package the stage needs that is missing (MissingDependency, an
        ImportError, which no ExportError handler would catch) ends the export with an
        ExportError naming the stage, the package to install and `without`, the option that
        exports without this stage (`--no-simplify`), when there is one."""
        nested = self.depth > 0
        if not nested:
            self.n += 1
        label = f"    {title}" if nested else f"[{self.n}] {title}"
        say = self.detail if nested else self.log
        notes: List[str] = []
        start = time.perf_counter()
        self.detail(f"{label} ...")
        self.depth += 1
        try:
            yield notes
        except MissingDependency as exc:
            instead = f"; or {without}" if without else ""
            raise ExportError(f"export stage '{title}': {str(exc).rstrip('.')}{instead}"
                              ) from None
        finally:
            self.depth -= 1
        seconds = time.perf_counter() - start
        self.times.setdefault(title, round(seconds, 3))
        say(f"{label}: {'; '.join(notes) or 'done'} ({seconds:.1f} s)")


def _require_trt() -> Tuple[Any, str]:
    try:
        return require("tensorrt"), ""
    except MissingDependency as exc:
        return None, str(exc)


def run_export(source: Path, opts: ExportOptions, log: Log = print,
               verbose: bool = False) -> ExportResult:
    """Run every stage for `source` (.safetensors checkpoint or .onnx); see the module doc.

    `log` gets one line per stage; with `verbose` also each stage's details (lint reports,
    per-batch parity, third-party warnings), which `NAME.checks.json` keeps either way."""
    check_options(Path(source), opts)
    trt, missing = _require_trt()
    target, lint_targets = resolve_target(opts.target, trt)
    try:
        claim_run_folder(opts.out, "export")
        remove_stale_work_dirs(opts.out, log)
        work = tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=opts.out)
    except OSError as exc:
        raise ExportError(f"--out {opts.out}: cannot write there ({exc.strerror or exc}); give "
                          "a writable folder") from None
    with work as tmp:
        run = _Run(source, opts, log, Path(tmp), trt, missing, target, lint_targets, verbose)
        try:
            with captured_warnings(sink=run.detail) as caught:
                run.caught = caught
                result = run.run()
        except ExportError as exc:
            raise ExportError(_user_message(str(exc), Path(source), Path(tmp))) from None
        except MissingDependency as exc:  # one outside a stage: an ExportError all the same
            raise ExportError(str(exc)) from None
        except OSError as exc:  # a full disk, --out made read-only meanwhile
            raise ExportError(f"--out {opts.out}: cannot write the artifacts "
                              f"({exc.strerror or exc}); nothing earlier there was replaced"
                              ) from None
    if opts.triton is not None and result.exit_code in (0, 2):
        result.artifacts.append(_triton_repository(run, result))
    return result


def _triton_repository(run: _Run, result: ExportResult) -> Path:
    """--triton DIR, the last stage: the Triton model repository of the built engine, else of
    the FP32 ONNX (ONNX Runtime), once every artifact is in --out (a failure here leaves them
    there); returns DIR/grefel/config.pbtxt, the artifact list's last line."""
    from export.triton import write_model_repository

    opts = run.opts
    engines = [p for p in result.artifacts if p.suffix == ".engine"]
    onnx_fp32 = result.artifacts[0]
    with run.stage("Triton model repository") as notes:
        try:
            folder = write_model_repository(
                opts.triton, engines[0] if engines else onnx_fp32, onnx_fp32,
                max_batch=opts.max_batch, max_queue_delay_us=opts.triton_repo.max_queue_delay_us,
                instances=opts.triton_repo.instances, cuda_graphs=opts.triton_repo.cuda_graphs,
                log=run.log)
        except OSError as exc:  # e.g. a file where DIR or one of its folders should be
            raise ExportError(f"--triton {display_path(opts.triton)}: cannot write the model "
                              f"repository ({why_unwritable(exc)})") from None
        notes.append(f"{folder}, {'model.plan' if engines else 'model.onnx'}")
    return folder / "config.pbtxt"


def check_options(source: Path, opts: ExportOptions) -> None:
    """Refuse option combinations that cannot work, before any work is done."""
    if opts.batch > opts.max_batch:
        raise ExportError(f"--batch {opts.batch} is larger than --max-batch {opts.max_batch}")
    if opts.deepstream is not None and opts.embedding:
        raise ExportError("--deepstream with --embedding: DeepStream's classifier parser would "
                          "read the embedding output as one more class attribute; export for "
                          "DeepStream without --embedding")
    if opts.triton is not None and not opts.dynamic:
        raise ExportError("--triton: a Triton repository with dynamic batching needs a dynamic "
                          "batch: drop --static")
    if opts.calib_method not in ("auto", *CALIB_METHODS):
        raise ExportError(f"--calib-method {opts.calib_method}: choose auto or one of "
                          f"{', '.join(CALIB_METHODS)}")
    if not opts.int8 or opts.calib_data is not None:
        return
    if source.suffix.lower() == ".onnx" and artifact_precision(source) == "int8":
        return  # a QDQ INT8 ONNX is built as it is: nothing to calibrate
    raise ExportError("--int8 needs --calib-data DIR: a folder of real face crops (e.g. a "
                      "SynthFER or RAF-DB folder) to calibrate on and gate with")


def remove_stale_work_dirs(out: Path, log: Log = print) -> List[Path]:
    """Remove the `.export-<pid>-*` work folders in `out` whose process no longer runs (and
    those of the older unnumbered `.export-<random>` layout, which no running grefel makes);
    return the removed paths."""
    removed = []
    for entry in sorted(Path(out).glob(f"{WORK_PREFIX}*")):
        if not left_by_dead_run(entry, WORK_PREFIX):
            continue  # a running export's (maybe this one's) work folder
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
            log(f"removed {entry}, the work folder of an export that was killed")
    return removed


def _user_message(message: str, source: Path, work: Path) -> str:
    """An error names the user's file, never the hidden work folder that is removed anyway."""
    if str(work) not in message:
        return message
    message = message.replace(f"{work}{os.sep}", "").replace(str(work), "")
    return message if message.startswith(str(source)) else f"{source}: {message}"


@dataclass(frozen=True)
class _Int8Try:
    """One calibration method's INT8 ONNX (in the work folder) and its gate."""

    method: str
    path: Path
    counts: Dict[str, Any]
    gate: Agreement
    seconds: float


def _closest(tries: List[_Int8Try]) -> _Int8Try:
    """The try nearest to passing: the most decisive agreement, then the smallest |dp|."""
    return max(tries, key=lambda t: (t.gate.decisive_agreement, -t.gate.max_abs_dprobs))


def _gate_summary(gate: Agreement) -> str:
    """A gate in a few words: verdict, decisive flips, max |dp|, images."""
    verdict = "pass" if gate else "FAIL (" + "; ".join(gate.reasons()) + ")"
    return (f"{verdict}, {gate.decisive_flips} decisive flips, max|dp| "
            f"{gate.max_abs_dprobs:.1e} on {gate.samples} images")


def _int8_summary(requested: str, tries: List[_Int8Try], chosen: _Int8Try) -> str:
    """`percentile calibration (minmax failed: ...)`: what was kept, and why the others were not."""
    failed = [f"{t.method} failed: {', '.join(t.gate.reasons())}" for t in tries
              if t is not chosen]
    which = f"{chosen.method} calibration" + (f" ({'; '.join(failed)})" if failed else "")
    if requested == "auto" and not failed:
        which += ", the first tried"
    return f"{which}: {_gate_summary(chosen.gate)}"


def _met(line: str) -> bool:
    """A lint report line of a restriction the graph meets (or that cannot be checked)."""
    return ": met" in line or ": not checkable here" in line


def _model_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _check_onnx_source(path: Path) -> None:
    """A given ONNX must load, pass onnx.checker and have the contract's interface: one input
    `images` of (N, 3, 112, 112) and the outputs probs, primary, confidence."""
    from grefel.contract import INPUT_NAME, INPUT_SHAPE, OUTPUTS

    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, ValidationError, OSError
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path}: not a valid ONNX model ({first})") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    want = f"one input {INPUT_NAME!r} (N, {', '.join(map(str, INPUT_SHAPE))})"
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ExportError(f"{path}: not a grefel model: expected {want}, got inputs "
                          f"{[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != 4 or shape[1:] != list(INPUT_SHAPE):
        shown = ["N" if d is None else d for d in shape]
        raise ExportError(f"{path}: not a grefel model: expected {want}, got "
                          f"{INPUT_NAME!r} {tuple(shown)}")
    outputs = [o.name for o in model.graph.output]
    missing = [n for n in OUTPUTS if n not in outputs]
    if missing:
        raise ExportError(f"{path}: not a grefel model: it has no output(s) {missing} (got "
                          f"{outputs}); export a grefel checkpoint with `grefel export`")
    _check_finite_initializers(path, model)


def _check_finite_initializers(path: Path, model: Any) -> None:
    """ExportError when a weight of the ONNX holds NaN or inf (grefel.finite, the check behind
    every model reader): an export would carry the broken weights into every artifact."""
    from onnx import numpy_helper

    from grefel.finite import NonFiniteError, require_finite

    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
               if i.data_location != onnx.TensorProto.EXTERNAL}
    try:
        require_finite(weights, str(path), "the model is broken: export it again from a "
                                           "finite checkpoint")
    except NonFiniteError as exc:
        raise ExportError(str(exc)) from None


class _Run:
    """One export: state shared by the stage methods."""

    def __init__(self, source, opts, log, work, trt, missing, target, lint_targets,
                 verbose: bool = False) -> None:
        self.source, self.opts, self._log, self.work = Path(source), opts, log, work
        self.trt, self.missing, self.target, self.lint_targets = trt, missing, target, lint_targets
        self.verbose = verbose
        self.lines: List[str] = []  # everything logged or detailed: NAME.checks.json's "log"
        self.caught: Optional[CapturedWarnings] = None
        self.stage = _Stages(self.log, self.detail)
        self.gates: Dict[str, Any] = {}
        self.model = None
        self.is_onnx = self.source.suffix.lower() == ".onnx"
        self.name = artifact_name(self.source, opts)
        # A QDQ ONNX given as the source is the INT8 model itself (built, never re-quantized).
        self.source_int8 = self.is_onnx and artifact_precision(self.source) == "int8"
        self.opset = opts.opset or opset_for_target(target)
        self.explicit_target = opts.target != "auto"
        self._images: Optional[Tuple[Any, str]] = None

    def log(self, line: str) -> None:
        """A line the user always sees (one per stage)."""
        self.lines.append(line)
        self._log(line)

    def detail(self, line: str) -> None:
        """A detail line: shown with -v, always kept in NAME.checks.json."""
        self.lines.append(line)
        if self.verbose:
            self._log(line)

    def checks(self) -> Dict[str, Any]:
        """NAME.checks.json: every gate's result, the stage times, the full log, the warnings."""
        return {"source": str(self.source), "target": self.target,
                "stage_seconds": self.stage.times, **self.gates, "log": list(self.lines),
                "warnings": self.caught.lines() if self.caught is not None else []}

    # --- ONNX stages ---------------------------------------------------------------------
    def run(self) -> ExportResult:
        if not self.source.is_file():
            raise ExportError(f"{self.source}: no such file")
        if self.source.suffix.lower() not in (".onnx", ".safetensors"):
            raise ExportError(f"{self.source}: expected a .safetensors checkpoint or an .onnx")
        onnx_path = self.work / f"{self.name}{'.int8' if self.source_int8 else ''}.onnx"
        if self.is_onnx:
            _check_onnx_source(self.source)
            shutil.copyfile(self.source, onnx_path)
        else:
            self._load_checkpoint()
            self._export(onnx_path, self.opset)
            self._parity(onnx_path)
        if self.source_int8 and not self.opts.int8:
            raise ExportError(f"{self.source}: a QDQ INT8 ONNX; build it with --int8")
        self._lint(onnx_path)
        artifacts = [onnx_path]
        self.int8_path: Optional[Path] = onnx_path if self.source_int8 else None
        if self.opts.fp16 and not self.source_int8:
            artifacts.append(self._fp16(onnx_path))
        if self.opts.int8 and not self.source_int8:
            self.int8_path = self._int8(onnx_path)
            artifacts.append(self.int8_path)
        artifacts.append(self.work / f"{self.name}.checks.json")
        self.log("ONNX artifacts: " + ", ".join(str(p.name) for p in artifacts)
                 + f" -> {self.opts.out}")
        atomic_write_json(artifacts[-1], self.checks())
        final = [self._publish(p) for p in artifacts]
        self.checks_path = final[-1]
        if self.int8_path is not None:
            self.int8_path = self.opts.out / self.int8_path.name
        if self.opts.onnx_only or self.trt is None:
            planned = self.opts.out / f"{self._engine_stem()}.engine"
            final += self._deepstream(final[0], planned, built=False)
            atomic_write_json(self.checks_path, self.checks())
        if self.opts.onnx_only:
            return ExportResult(0, final, self.gates, "ONNX artifacts written (--onnx-only)")
        if self.trt is None:
            return ExportResult(2, final, self.gates, self._how_to_build(final[0]))
        return self._engine(final)

    def _engine_stem(self) -> str:
        return engine_stem(self.name, self.opts.fp16, self.opts.max_batch,
                           int8=self.int8_path is not None)

    def _deepstream(self, onnx_fp32: Path, engine: Path, built: bool) -> List[Path]:
        """--deepstream DIR: the nvinfer config for `engine` (built, or the one the printed
        command builds on the device); [] without --deepstream."""
        from export.deepstream import DeepStreamOptions, write_deepstream_config

        if self.opts.deepstream is None:
            return []
        precision = ("int8" if self.int8_path is not None else
                     "fp16" if self.opts.fp16 else "fp32")
        ds = DeepStreamOptions(detector_gie_id=self.opts.deepstream_detector_id,
                               face_class_ids=tuple(self.opts.deepstream_face_classes),
                               batch_size=self.opts.max_batch, precision=precision,
                               dla_core=self.opts.dla_core)
        with self.stage("DeepStream nvinfer config") as notes:
            onnx_path = self.int8_path if self.int8_path is not None else onnx_fp32
            written = write_deepstream_config(
                self.opts.deepstream, engine=engine, onnx=onnx_path, opts=ds,
                engine_built=built, build_command=self._build_command(onnx_fp32))
            notes.append(f"{written[0]}, {precision.upper()}, secondary on class(es) "
                         f"{';'.join(map(str, ds.face_class_ids))} of GIE {ds.detector_gie_id}"
                         + ("" if built else f"; engine to build: {engine.name}"))
        return written

    def _load_checkpoint(self) -> None:
        from grefel.checkpoint import CheckpointError, load_checkpoint

        with self.stage("load checkpoint") as notes:
            try:
                self.model, meta = load_checkpoint(self.source)
            except CheckpointError as exc:
                raise ExportError(str(exc)) from None
            notes.append(f"preset {self.model.cfg.name}, {self.model.cfg.num_classes} classes")

    def _export(self, path: Path, opset: int) -> None:
        from export.onnx_export import export_onnx

        raw = path.with_suffix(".raw.onnx") if self.opts.simplify else path
        with self.stage(f"export ONNX (opset {opset}, "
                        f"{'dynamic' if self.opts.dynamic else 'static'} batch)") as notes:
            export_onnx(self.model, raw, opset=opset, batch=self.opts.max_batch if not
                        self.opts.dynamic else 2, dynamic=self.opts.dynamic,
                        embedding=self.opts.embedding)
            notes.append(f"{len(onnx.load(str(raw)).graph.node)} nodes")
        if self.opts.simplify:
            with self.stage("onnxsim", without="--no-simplify exports without it") as notes:
                report = simplify_onnx(raw, path)
                raw.unlink()
                notes.append(f"{report.nodes_before} -> {report.nodes_after} nodes")
                self.gates.setdefault("onnxsim", {})[str(opset)] = report.to_dict()
        with self.stage("PReLU for ONNX Runtime's CPU") as notes:
            model = onnx.load(str(path))
            count = to_branch_free(model)
            with atomic_path(path) as tmp:
                onnx.save(model, str(tmp))
            self.gates["prelu_branch_free"] = count
            notes.append(f"{count} PRelu rewritten, exact")
            self.detail(f"    {count} PRelu -> Max(x, a*x) or Relu + a*Min(x, 0) (exact; "
                        "export/prelu.py; TensorRT builds get them folded back)")

    def _parity(self, path: Path) -> None:
        import numpy as np

        from export.compare import check_parity, run_backend
        from grefel.runtime.ort_backend import OrtBackend
        from grefel.runtime.torch_backend import TorchBackend

        sizes = (1, 3, 8) if self.opts.dynamic else (self.opts.max_batch,)
        with self.stage(f"ONNX Runtime vs torch at batch {'/'.join(map(str, sizes))}") as notes:
            rng = np.random.default_rng(0)
            results, worst = [], 0.0
            for b in sizes:
                x = rng.random((b, *INPUT_SHAPE), dtype=np.float32)
                ref = run_backend(TorchBackend(model=self.model, device="cpu"), x, chunk=b)
                got = run_backend(OrtBackend(path, device="cpu"), x, chunk=b)
                result = check_parity(ref, got, PARITY_TOL, label=f"batch {b}")
                results.append(result.to_dict())
                self.detail(f"    {result}")
                if not result:
                    raise ExportError(f"{self.source}: the exported ONNX disagrees with torch "
                                      f"in ONNX Runtime: {result}")
                worst = max([worst, *(c.max_abs for c in result.checks)])
            self.gates["parity"] = results
            notes.append(f"pass, max|d| {worst:.1e}")

    def gate_images(self) -> Tuple[Any, str]:
        """The precision gates' images (made once per export)."""
        if self._images is None:
            self._images = gate_images(self.opts.calib_data)
        return self._images

    def _lint(self, path: Path) -> None:
        targets, skipped = self._lint_targets(path)
        with self.stage(f"TensorRT op lint ({', '.join(targets) or 'no target'})") as notes:
            reports = {}
            for target in targets:
                reports[target] = lint_onnx(self._onnx_for_lint(path, target), target)
                for line in reports[target].lines():
                    # what fails is always shown; the restrictions that hold only with -v
                    say = self.log if not reports[target] and not _met(line) else self.detail
                    say("    " + line.replace(str(self.work / path.name), str(self.source)))
            self.gates["lint"] = {t: r.to_dict() for t, r in reports.items()}
            self.gates["lint_skipped"] = skipped
            failed = [t for t, r in reports.items() if not r]
            notes.append(f"failed: {', '.join(failed)}" if failed else "every target passes")
            notes += [f"skipped {t}: {why}" for t, why in skipped.items()]
        if failed and not self.opts.force:
            older = [t for t in failed if t in OPSET_CEILING]
            hint = (f" (re-export from the checkpoint with --target {older[0]} for opset "
                    f"{OPSET_CEILING[older[0]]})" if older else "")
            raise ExportError(f"{self.source}: TensorRT op lint failed for {', '.join(failed)}"
                              f"{hint}; --force builds anyway")

    def _lint_targets(self, path: Path) -> Tuple[List[str], Dict[str, str]]:
        """(targets to lint, {skipped target: why}). A given ONNX has one opset: targets whose
        parser range does not contain it are skipped with how to export for them, unless the
        target was named with --target (then it is linted and fails)."""
        if not self.is_onnx or self.explicit_target:
            return list(self.lint_targets), {}
        opset = _model_opset(path)
        targets, skipped = [], {}
        for target in self.lint_targets:
            _, lo, hi = target_table(target)
            if lo <= opset <= min(hi, OPSET_CEILING.get(target, hi)):
                targets.append(target)
            else:
                skipped[target] = (f"{self.source.name} is opset {opset}; {target} needs opset "
                                   f"{opset_for_target(target)}: grefel export CKPT --target "
                                   f"{target} --onnx-only writes one")
        if not targets:
            raise ExportError(f"{self.source}: opset {opset} fits no TensorRT target "
                              f"({'; '.join(skipped.values())})")
        return targets, skipped

    def _onnx_for_lint(self, path: Path, target: str) -> Path:
        """The target's own ONNX: the main one (a given ONNX in the form TensorRT's parser gets,
        `export.trt_form`), or a re-export at the target's opset."""
        opset = opset_for_target(target)
        if self.is_onnx:
            return for_tensorrt(path, self.work / "lint")
        if self.opts.opset or opset == self.opset:
            return path
        other = self.work / f"{self.name}.opset{opset}.lint.onnx"
        if not other.exists():
            self._export(other, opset)
        return other

    def _fp16(self, path: Path) -> Path:
        fp16_path = path.with_name(f"{self.name}.fp16.onnx")
        with self.stage("FP16-typed ONNX + FP16 gate") as notes:
            counts = convert_to_fp16(path, fp16_path)
            images, what = self.gate_images()
            gate, typed = fp16_gate(path, fp16_path, images, criteria=FP16_CRITERIA)
            self.gates["fp16_gate"] = {**gate.to_dict(), **counts, "images": what,
                                       "calib_data": str(self.opts.calib_data or ""),
                                       "fp16_onnx_in_onnxruntime": typed}
            typed_ok = typed.get("ran") is False or typed.get("passed")
            notes.append(_gate_summary(gate))
            self.detail(f"    {gate} on {what}")
            self.detail(f"    the FP16-typed ONNX in ONNX Runtime: {typed.get('why') or 'agrees'}"
                        if typed_ok else "    the FP16-typed ONNX in ONNX Runtime disagrees")
            if not typed_ok:
                notes.append("the FP16-typed ONNX disagrees in ONNX Runtime")
            if counts["init_values_clamped"] or counts["init_values_flushed"]:
                notes.append(f"{counts['init_values_clamped']} weights clamped to +-65504, "
                             f"{counts['init_values_flushed']} below float16's range set to 0")
        if not gate and not self.opts.force:
            raise ExportError(f"{self.source}: FP16 breaks this model: {gate}; --fp32 exports "
                              "an FP32 engine, --force exports anyway")
        if not typed_ok and not self.opts.force:
            raise ExportError(f"{self.source}: the FP16-typed ONNX disagrees with the FP32 one "
                              f"in ONNX Runtime ({'; '.join(typed['reasons'])}); --force "
                              "exports anyway")
        return fp16_path

    def _int8(self, path: Path) -> Path:
        """The QDQ INT8 ONNX, calibrated with --calib-method; `auto` tries CALIB_METHODS in turn
        and keeps the first whose INT8 gate passes (each try is recorded in checks.json)."""
        from export.gate_images import calibration_split

        int8_path = path.with_name(f"{self.name}.int8.onnx")
        requested = self.opts.calib_method
        methods = CALIB_METHODS if requested == "auto" else (requested,)
        with self.stage(f"INT8 QDQ ONNX ({requested} calibration) + INT8 gate") as notes:
            calib, held_out, what = calibration_split(self.opts.calib_data)
            self.detail(f"    {what}")
            tries: List[_Int8Try] = []
            for method in methods:
                tries.append(self._calibrate(path, method, calib, held_out))
                if tries[-1].gate:
                    break
            chosen = next((t for t in tries if t.gate), None) or _closest(tries)
            os.replace(chosen.path, int8_path)
            for t in tries:
                t.path.unlink(missing_ok=True)
            self.gates["int8_gate"] = {**chosen.gate.to_dict(), **chosen.counts, "images": what,
                                       "calib_data": str(self.opts.calib_data)}
            self.gates["int8_calibration"] = {
                "requested": requested, "chosen": chosen.method,
                "tried": [{"method": t.method, "passed": t.gate.passed,
                           "reasons": t.gate.reasons(), "seconds": t.seconds} for t in tries]}
            notes.append(_int8_summary(requested, tries, chosen))
            notes.append(f"{chosen.counts['quantized_nodes']} nodes quantized, "
                         f"{chosen.counts['bytes'] / 2**20:.1f} MiB")
        if not chosen.gate and not self.opts.force:
            if requested == "auto":
                raise ExportError(
                    f"{self.source}: INT8 breaks this model with every calibration method ("
                    + "; ".join(f"{t.method}: {', '.join(t.gate.reasons())}" for t in tries)
                    + "); more --calib-data, --fp16 instead of --int8, or --force to export "
                    f"anyway (keeps {chosen.method}, the closest)")
            raise ExportError(f"{self.source}: INT8 breaks this model: {chosen.gate}; try "
                              "--calib-method auto (each method in turn), more --calib-data, "
                              "or --force to export anyway")
        return int8_path

    def _calibrate(self, path: Path, method: str, calib: Any, held_out: Any) -> _Int8Try:
        from export.int8 import int8_gate, quantize_int8

        start = time.perf_counter()
        candidate = self.work / f"{self.name}.int8-{method}.onnx"
        counts = quantize_int8(path, candidate, calib, method=method)
        gate, _ = int8_gate(path, candidate, held_out, criteria=INT8_CRITERIA)
        seconds = round(time.perf_counter() - start, 3)
        self.detail(f"    {method} calibration: {gate} ({seconds:.1f} s)")
        return _Int8Try(method, candidate, counts, gate, seconds)

    def _publish(self, path: Path) -> Path:
        """Move a finished artifact into --out; the ONNX copy of a source that already is that
        artifact (exported in its own folder) is dropped: the source is never rewritten."""
        dest = self.opts.out / path.name
        if _is_source(dest, self.source):
            path.unlink()
            return dest
        os.replace(path, dest)
        return dest

    def _build_command(self, onnx_path: Path) -> str:
        """The command that builds this export's engine on the device, into --out."""
        flags = f"--fp16 --batch {self.opts.batch} --max-batch {self.opts.max_batch}"
        if self.int8_path is not None:
            onnx_path, flags = self.int8_path, flags.replace("--fp16", "--int8")
        elif not self.opts.fp16:
            flags = flags.replace("--fp16", "--fp32")
        return f"grefel export {onnx_path} {flags} --target auto --verify --out {self.opts.out}"

    def _how_to_build(self, onnx_path: Path) -> str:
        lines = [
            f"No engine built: {self.missing}",
            "Build it on the target GPU (TensorRT + pycuda; no torch needed; --target auto "
            "picks the installed TensorRT):",
            f"  {self._build_command(onnx_path)}",
        ]
        for target, opset in OPSET_CEILING.items() if not self.is_onnx else ():
            lines.append(f"For {TENSORRT_TARGETS[target].description} export opset {opset} "
                         f"first: grefel export {self.source} --target {target} --onnx-only, "
                         "then build that ONNX.")
        return "\n".join(lines)

    # --- engine stages -------------------------------------------------------------------
    def _engine(self, final: List[Path]) -> ExportResult:
        from export.trt_builder import BuildOptions, build_engine

        onnx_fp32 = final[0]
        int8 = self.int8_path is not None
        onnx_fp16 = final[1] if self.opts.fp16 and not int8 else None
        stem = self._engine_stem()
        work_engine = self.work / f"{stem}.engine"
        build_opts = BuildOptions(self.opts.fp16 and not int8, self.opts.batch,
                                  self.opts.max_batch, self.opts.workspace_gib,
                                  self.opts.timing_cache, self.opts.dla_core, tf32=self.opts.tf32,
                                  int8=int8)
        with self.stage("build TensorRT engine") as notes:
            fp32_layers = fp32_node_names(onnx.load(str(onnx_fp32)))
            build = build_engine(onnx_fp32, work_engine, build_opts, onnx_fp16=onnx_fp16,
                                 onnx_int8=self.int8_path, fp32_layers=fp32_layers,
                                 log=self.detail)
            notes.append(f"{build.precision_mode}, {build.plan_bytes / 2**20:.1f} MiB")
            notes += [f"note: {note}" for note in build.notes]
        if self.opts.verify:
            self._verify(work_engine, onnx_fp32)
        engine = self._publish(work_engine)
        build = replace(build, engine=engine)
        sidecar = self.opts.out / f"{stem}.json"
        with self.stage("sidecar"):
            write_sidecar(sidecar, engine=engine, onnx_built=build.onnx_built,
                          onnx_fp32=onnx_fp32, build=build.to_dict(), gates=self.gates,
                          device=device_info(self.trt), meta=onnx_meta(onnx_fp32))
        written = self._deepstream(onnx_fp32, engine, built=True)
        atomic_write_json(self.checks_path, self.checks())  # now with the engine stages' log
        return ExportResult(0, [*final, engine, sidecar, *written], self.gates,
                            f"engine: {engine}")

    def _verify(self, engine: Path, onnx_fp32: Path) -> None:
        from export.verify import verify_engine

        with self.stage("verify engine vs ONNX Runtime") as notes:
            images, what = self.gate_images()
            criteria = INT8_CRITERIA if self.int8_path is not None else FP16_CRITERIA
            result = verify_engine(engine, onnx_fp32, images, criteria=criteria)
            self.gates["verify"] = result.to_dict()
            notes.append(_gate_summary(result))
            self.detail(f"    {result} on {what}")
        if not result and not self.opts.force:
            raise ExportError(f"{engine.name}: {result}; the engine was not installed")
