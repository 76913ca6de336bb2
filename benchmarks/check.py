"""`grefel check`: what this machine has for grefel, and (`--run`) the engine path proved on it.

    facts = preflight()                  # one dict: versions, GPU, TensorRT, Jetson, detector...
    print(preflight_text(facts))         # the one screen `grefel check` prints
    report = run_check(facts, CheckOptions(out=Path("runs/check/orin")))

The preflight reads package metadata and files (benchmarks.env.environment, shared with `grefel
info` and `grefel bench`), then asks TensorRT and the CUDA layer themselves in a child process
with a time limit (`device_facts`: a TensorRT or driver that crashes or hangs cannot take the
check down with it), and derives what grefel can do here (`capabilities`).

`--run` runs the sections of `SECTIONS`, most valuable first, each as real grefel (or trtexec)
commands in child processes of their own session, under a hard time limit: at the limit the
whole process group is killed (SIGTERM, then SIGKILL), which a TensorRT build in native code
cannot ignore as it ignores Python's SIGALRM. Every section's stdout and stderr go whole to
`OUT/logs/SECTION.log`; the report names the log of each section and carries the tail of a
failed one. A section whose prerequisite is missing is skipped with one line saying why.
The report is OUT/check.json + OUT/check.md (atomic writes), to attach to an issue.

Exit status of `grefel check --run`: 0 every section passed; 1 a section failed or timed out;
2 none failed but at least one was skipped (what could run here passed; the rest needs the
target), as `grefel export` exits 2 when it wrote the ONNX but no engine.
Torch-free module; nothing heavy is imported at import time.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from benchmarks.options import CheckOptions
from grefel.errors import first_line
from grefel.runtime.cuda_layer import CHOICES

__all__ = ["CheckOptions", "RUNTIME_LAYERS", "SECTIONS", "Section", "SectionResult", "Steps",
           "capabilities", "device_facts", "exit_code", "preflight", "preflight_text",
           "run_check", "run_steps"]

# The CUDA Python layers grefel's TensorRT backend runs on, in its order of preference
# (grefel.runtime.cuda_layer.open_layer: cuda-bindings where importable, else pycuda).
RUNTIME_LAYERS = CHOICES
PROBE_LIMIT_S = 60.0  # creating TensorRT's builder initialises CUDA: seconds on a Jetson
KILL_GRACE_S = 5.0
# grefel._lazy's hint, short enough for one line per section (docs/install.md has the rest)
TRT_HINT = ("`pip install '.[trt]'` on a desktop GPU; JetPack's python3-libnvinfer on a Jetson: "
            "docs/install.md")  # SIGTERM -> SIGKILL
LOG_TAIL_LINES = 40
BATCHES = (1, 8, 32)
TRTEXEC_SECONDS = 3


# --- facts -------------------------------------------------------------------------------------


def preflight(probe: bool = True) -> Dict[str, Any]:
    """Everything `grefel check` says about this machine, JSON-ready: benchmarks.env's
    environment, the device facts of TensorRT and the CUDA layer (`device`), the face detector,
    the default model, and `can`: what grefel can therefore do here."""
    from benchmarks.env import environment

    facts = environment()
    facts["device"] = probe_device() if probe else {"probe": "not run"}
    facts["detector"] = detector_facts()
    facts["default_model"] = default_model_facts()
    facts["can"] = capabilities(facts)
    return facts


def probe_device(limit_s: float = PROBE_LIMIT_S) -> Dict[str, Any]:
    """`device_facts()` in a child process under a hard time limit; a child that fails or
    hangs gives {"probe": "failed"/"timed out", "why", "log_tail"} instead."""
    code = ("import json; from benchmarks.check import device_facts; "
            "print(json.dumps(device_facts()))")
    with tempfile.TemporaryDirectory(prefix="grefel-check-") as tmp:
        log = Path(tmp) / "probe.log"
        steps = run_steps([[sys.executable, "-c", code]], log, limit_s)
        text = log.read_text(errors="replace")
    if steps.status == "passed":
        for line in reversed(text.splitlines()):
            if line.startswith("{"):
                try:
                    return {"probe": "ok", **json.loads(line)}
                except ValueError:
                    break
    return {"probe": steps.status if steps.status != "passed" else "failed",
            "why": steps.why or "no facts printed", "log_tail": _tail(text, 15)}


def device_facts() -> Dict[str, Any]:
    """What TensorRT and the CUDA layers say about this machine (run by `probe_device` in a
    child): TensorRT's version and typing modes, its builder's DLA cores and fast precisions;
    each installed CUDA layer's driver version and first GPU."""
    return {"tensorrt": _tensorrt_facts(), "cuda_layers": _cuda_layer_facts()}


def _tensorrt_facts() -> Dict[str, Any]:
    from grefel._lazy import MissingDependency, require

    try:
        trt = require("tensorrt")
    except MissingDependency as exc:
        return {"installed": False, "why": str(exc)}
    from export import ExportError
    from export.trt_builder import precision_mode
    from grefel.runtime.trt_backend import trt_logger

    facts: Dict[str, Any] = {"installed": True, "version": str(trt.__version__)}
    for key, kwargs in (("fp16_mode", {"fp16": True}), ("int8_mode", {"fp16": False,
                                                                     "int8": True})):
        try:  # export.trt_builder's own choice: "fp16-strong", "int8-weak", ...
            facts[key] = precision_mode(trt, **kwargs)
        except ExportError as exc:
            facts[key] = None
            facts[f"{key}_why"] = str(exc)
    try:
        builder = trt.Builder(trt_logger(trt))
        if builder is None:
            raise RuntimeError("trt.Builder returned None (no usable GPU?)")
        facts["builder"] = "ok"
        facts["dla_cores"] = int(builder.num_DLA_cores)
        # absent from 11.x (always true where 11.x runs): None there
        facts["fast_fp16"] = getattr(builder, "platform_has_fast_fp16", None)
        facts["fast_int8"] = getattr(builder, "platform_has_fast_int8", None)
    except Exception as exc:  # no GPU, driver mismatch: the bindings' own words
        facts["builder"] = f"failed: {first_line(exc, 300)}"
    return facts


def _cuda_layer_facts() -> Dict[str, Any]:
    """pycuda's and cuda-bindings' view of the first GPU, for each that imports."""
    from grefel._lazy import MissingDependency, require

    layers: Dict[str, Any] = {}
    for layer, module, query in (("pycuda", "pycuda.driver", _pycuda_gpu),
                                 ("cuda-bindings", "cuda.bindings.driver", _bindings_gpu)):
        try:
            mod = require(module)
        except MissingDependency:
            layers[layer] = {"installed": False}
            continue
        try:
            layers[layer] = {"installed": True, **query(mod)}
        except Exception as exc:  # no GPU, no driver: the layer's own error
            layers[layer] = {"installed": True, "error": first_line(exc, 300)}
    return layers


def _pycuda_gpu(cuda: Any) -> Dict[str, Any]:
    cuda.init()
    count = int(cuda.Device.count())
    out: Dict[str, Any] = {"driver": int(cuda.get_driver_version()), "devices": count}
    if count:
        dev = cuda.Device(0)
        out["name"] = dev.name()
        out["compute_capability"] = "{}.{}".format(*dev.compute_capability())
    return out


def _bindings_gpu(driver: Any) -> Dict[str, Any]:
    """cuda-bindings' driver API: every call returns (CUresult, value...)."""

    def ok(result: Any) -> Any:
        err, *values = result
        if err != driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"{getattr(err, 'name', err)}")
        return values[0] if values else None

    ok(driver.cuInit(0))
    count = int(ok(driver.cuDeviceGetCount()))
    out: Dict[str, Any] = {"driver": int(ok(driver.cuDriverGetVersion())), "devices": count}
    if count:
        dev = ok(driver.cuDeviceGet(0))
        out["name"] = bytes(ok(driver.cuDeviceGetName(256, dev))).split(b"\0")[0].decode()
        attr = driver.CUdevice_attribute
        cc = [ok(driver.cuDeviceGetAttribute(getattr(attr, f"CU_DEVICE_ATTRIBUTE_COMPUTE_"
                                                           f"CAPABILITY_{part}"), dev))
              for part in ("MAJOR", "MINOR")]
        out["compute_capability"] = f"{cc[0]}.{cc[1]}"
    return out


def detector_facts() -> Dict[str, Any]:
    """The face detector `grefel predict` would use (FaceAlignment.detector) and the TFLite
    runtime that would run it (grefel.runtime.detectors.tflite_interpreter's order)."""
    import importlib.util

    from grefel.config import FaceAlignment

    name = FaceAlignment.detector
    runtime = None
    for module, dist in (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime",
                                                                 "tflite-runtime")):
        if importlib.util.find_spec(module) is not None:
            from benchmarks.env import _version

            runtime = f"{dist} {_version(dist) or ''}".strip()
            break
    if runtime is None:
        try:
            import cv2

            if hasattr(cv2.dnn, "readNetFromTFLite"):
                runtime = f"OpenCV DNN {cv2.__version__}"
        except ImportError:
            pass
    what = {"auto": "BlazeFace full range, short range for close-ups",
            "haar": "OpenCV's Haar cascade"}.get(name, f"BlazeFace ({name})")
    return {"name": name, "what": what, "runtime": runtime if name != "haar" else "OpenCV"}


def default_model_facts() -> Dict[str, Any]:
    from grefel.runtime.default_model import DefaultModelError, default_model, describe

    try:
        return {"onnx": str(default_model("onnx")), "describe": describe(default_model("onnx"))}
    except DefaultModelError as exc:
        return {"onnx": None, "describe": f"missing: {exc}"}


def _trt(facts: Dict[str, Any]) -> Dict[str, Any]:
    return (facts.get("device") or {}).get("tensorrt") or {}


def _runtime_layer(facts: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The first CUDA layer the TensorRT backend runs on that saw a GPU, as {"layer", ...}."""
    layers = (facts.get("device") or {}).get("cuda_layers") or {}
    for layer in RUNTIME_LAYERS:
        seen = layers.get(layer) or {}
        if seen.get("devices"):
            return {"layer": layer, **seen}
    return None


def _why_no_engine(facts: Dict[str, Any]) -> Optional[str]:
    """None where an engine can be built here, else why not (one line)."""
    device, trt = facts.get("device") or {}, _trt(facts)
    if device.get("probe") not in (None, "ok"):
        return f"the TensorRT probe {device['probe']} ({device.get('why')})"
    if not trt.get("installed"):
        return f"TensorRT is not installed ({TRT_HINT})"
    if trt.get("builder") != "ok":
        return f"TensorRT {trt.get('version')} cannot make a builder: {trt.get('builder')}"
    return None


def _why_no_run(facts: Dict[str, Any]) -> Optional[str]:
    """None where an engine can be run here (verify, bench, predict), else why not."""
    why = _why_no_engine(facts)
    if why or _runtime_layer(facts):
        return why
    layers = (facts.get("device") or {}).get("cuda_layers") or {}
    found = [f"{k}: {v.get('error', 'no GPU')}" for k, v in layers.items()
             if k in RUNTIME_LAYERS and v.get("installed")]
    if found:
        return "no GPU seen through " + "; ".join(found)
    return (f"{' or '.join(RUNTIME_LAYERS)} is not installed (`pip install cuda-bindings`, "
            "the wheel for the driver's CUDA major, or pycuda: docs/install.md)")


def capabilities(facts: Dict[str, Any]) -> List[Dict[str, Any]]:
    """What grefel can do here: [{"what", "ok", "detail"}], detail = how, or why not."""
    from grefel._lazy import install_hint

    v = facts.get("versions") or {}
    providers = v.get("onnxruntime_providers") or []
    trt, no_engine, no_run = _trt(facts), _why_no_engine(facts), _why_no_run(facts)
    layer = _runtime_layer(facts)
    gpu_ep = [p for p in providers if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    torch_ok = bool(v.get("torch") and v.get("onnxsim"))
    dla = trt.get("dla_cores")
    detector = facts.get("detector") or {}
    rows = [
        ("ONNX Runtime on the CPU (predict, eval, serve of an .onnx)",
         "CPUExecutionProvider" in providers,
         f"onnxruntime {v.get('onnxruntime')}" if v.get("onnxruntime")
         else f"install {install_hint('onnxruntime')}"),
        ("ONNX Runtime on the GPU", bool(gpu_ep),
         ", ".join(gpu_ep) or "no CUDA provider (onnxruntime-gpu, or JetPack's build)"),
        ("export from a checkpoint (torch + onnxsim)", torch_ok,
         f"torch {v.get('torch')}, onnxsim {v.get('onnxsim')}" if torch_ok
         else f"from an .onnx only; for checkpoints install {install_hint('torch')}"),
        ("engine build (TensorRT)", no_engine is None,
         f"TensorRT {trt.get('version')}, FP16 {trt.get('fp16_mode')}" if no_engine is None
         else no_engine),
        ("engine run: verify, bench, predict", no_run is None,
         f"{layer['layer']} on {layer.get('name')} (compute capability "
         f"{layer.get('compute_capability')})" if no_run is None and layer
         else "needs an engine build" if no_engine else no_run),
        ("INT8 engine (QDQ)", no_engine is None and bool(trt.get("int8_mode")),
         trt.get("int8_mode") or trt.get("int8_mode_why") or "needs an engine build"),
        ("DLA", bool(dla), f"{dla} DLA core(s)" if dla else
         "no DLA cores" if dla == 0 else "unknown: TensorRT's builder reports it"),
        ("trtexec comparison", bool(facts.get("trtexec")) and no_run is None,
         facts.get("trtexec") or "trtexec is not on PATH nor in /usr/src/tensorrt/bin"),
        (f"face detection ({detector.get('name')})", bool(detector.get("runtime")),
         detector.get("runtime") or "no TFLite runtime: OpenCV >= 4.8 or ai-edge-litert"),
    ]
    return [{"what": what, "ok": bool(ok), "detail": str(detail)} for what, ok, detail in rows]


def preflight_text(facts: Dict[str, Any]) -> str:
    """The one screen of `grefel check`: what this machine has, then what grefel can do."""
    from benchmarks.report import env_lines

    lines = env_lines(facts)
    trt, device = _trt(facts), facts.get("device") or {}
    if device.get("probe") not in (None, "ok"):
        lines.append(f"TensorRT/CUDA probe {device['probe']}: {device.get('why')}")
    elif trt.get("installed"):
        lines.append(f"TensorRT {trt.get('version')}: FP16 {trt.get('fp16_mode')}, INT8 "
                     f"{trt.get('int8_mode')}; builder {trt.get('builder')}"
                     + (f"; DLA cores {trt['dla_cores']}" if "dla_cores" in trt else ""))
    for name, layer in (device.get("cuda_layers") or {}).items():
        if layer.get("installed"):
            seen = layer.get("error") or (f"{layer.get('devices')} GPU(s), {layer.get('name')}, "
                                          f"driver {layer.get('driver')}")
            lines.append(f"{name}: {seen}")
    lines.append(f"trtexec: {facts.get('trtexec') or 'not found'}")
    det = facts.get("detector") or {}
    lines.append(f"face detector {det.get('name')} ({det.get('what')}): "
                 f"{det.get('runtime') or 'no runtime'}")
    lines.append((facts.get("default_model") or {}).get("describe", ""))
    lines.append("")
    lines.append("what grefel can do here:")
    for row in facts.get("can", []):
        lines.append(f"  {row['what']}: {'yes' if row['ok'] else 'no'} ({row['detail']})")
    return "\n".join(lines)


# --- the section runner -----------------------------------------------------------------------


@dataclass
class Steps:
    """What `run_steps` did: status "passed", "failed" or "timed out", why (one line), the
    output of each step that ran (its part of the log), and the wall time."""

    status: str
    why: str = ""
    outputs: List[str] = field(default_factory=list)
    seconds: float = 0.0


def run_steps(steps: Sequence[Sequence[str]], log_path: Path, limit_s: float,
              env: Optional[Dict[str, str]] = None) -> Steps:
    """Run `steps` (argv lists) one after the other, each in a new session (its own process
    group), stdout and stderr whole into `log_path`, all within `limit_s` seconds together.
    At the limit the running step's process group is killed (SIGTERM, SIGKILL after
    KILL_GRACE_S): a TensorRT build in native code cannot ignore that. The first step that
    exits non-zero ends the run as "failed"."""
    start = time.monotonic()
    deadline = start + limit_s
    outputs: List[str] = []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result = Steps("passed")
    with open(log_path, "wb") as log:
        for argv in steps:
            command = shlex.join(str(a) for a in argv)
            log.write(f"$ {command}\n".encode())
            log.flush()
            begin = log.tell()
            left = deadline - time.monotonic()
            rc = _run_one([str(a) for a in argv], log, left, env) if left > 0 else None
            log.flush()
            end = log.tell()
            with open(log_path, "rb") as read:
                read.seek(begin)
                outputs.append(read.read(end - begin).decode(errors="replace"))
            if rc is None:
                result = Steps("timed out", f"killed at the time limit of {limit_s:g} s, "
                               f"in `{_short(command)}`")
                break
            if rc != 0:
                result = Steps("failed", f"exit status {rc} of `{_short(command)}`")
                break
        log.write(f"# {result.status} after {time.monotonic() - start:.1f} s\n".encode())
    result.outputs, result.seconds = outputs, round(time.monotonic() - start, 2)
    return result


def _short(command: str, width: int = 160) -> str:
    return command if len(command) <= width else command[: width - 3] + "..."


def _run_one(argv: List[str], log: Any, timeout: float,
             env: Optional[Dict[str, str]]) -> Optional[int]:
    """The exit status of `argv`, or None when it ran past `timeout` and was killed."""
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    except OSError as exc:  # not found, not executable
        log.write(f"cannot start: {exc}\n".encode())
        return 127
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return None
    except BaseException:  # Ctrl-C: the child has its own session and did not get it
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _tail(text: str, n: int = LOG_TAIL_LINES) -> List[str]:
    return text.rstrip("\n").splitlines()[-n:]


# --- the sections ------------------------------------------------------------------------------


@dataclass
class SectionResult:
    name: str
    title: str
    status: str  # passed, failed, timed out, skipped
    why: str = ""
    seconds: float = 0.0
    log: Optional[str] = None
    commands: List[str] = field(default_factory=list)
    numbers: Dict[str, Any] = field(default_factory=dict)
    log_tail: List[str] = field(default_factory=list)

    def line(self) -> str:
        """The one line the command prints for this section."""
        if self.status == "skipped":
            return f"skipped {self.name}: {self.why}"
        head = f"{self.status} {self.name} ({self.seconds:.0f} s)"
        summary = summarize(self)
        return head + (f": {self.why}" if self.why else f": {summary}" if summary else "") + (
            f"; log {self.log}" if self.status != "passed" else "")


@dataclass
class Plan:
    """What a section will run: its steps, or why it is skipped, and how to read its numbers."""

    steps: List[List[str]] = field(default_factory=list)
    skip: Optional[str] = None
    collect: Optional[Callable[[Steps], Dict[str, Any]]] = None


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    limit_s: float
    plan: Callable[[Dict[str, Any], CheckOptions, Dict[str, SectionResult]], Plan]


def _grefel(*args: Any) -> List[str]:
    return [sys.executable, "-m", "grefel", *(str(a) for a in args)]


def _trt_target(facts: Dict[str, Any]) -> str:
    """The target `grefel export --target auto` builds for with the installed TensorRT
    (grefel.contract.target_for_version; without TensorRT, export's own default)."""
    from grefel.contract import AUTO_TARGET_WITHOUT_TENSORRT, target_for_version

    version = _trt(facts).get("version")
    if not version:
        return AUTO_TARGET_WITHOUT_TENSORRT
    major, minor = (int(x) for x in str(version).split(".")[:2])
    return target_for_version(major, minor)


def _source(facts: Dict[str, Any], opts: CheckOptions) -> Any:
    """(source model, None) or (None, why not): the ONNX, or on TensorRT 8.5 (no opset-17
    LayerNormalization) the checkpoint, which export takes to opset 16 with torch."""
    from grefel.contract import OPSET, TENSORRT_TARGETS, opset_for_target
    from grefel.runtime.default_model import DefaultModelError, default_model

    if opts.model is not None:
        return opts.model, None
    try:
        target = _trt_target(facts)
        opset = opset_for_target(target)
        if opset == OPSET:  # the opset of the default model's ONNX
            return default_model("onnx"), None
        if not (facts.get("versions") or {}).get("torch"):
            version = TENSORRT_TARGETS[target].description.split(" (")[0]
            return None, (f"{version} needs an opset-{opset} ONNX, which export writes from the "
                          "checkpoint with torch (not installed): run `grefel export --target "
                          f"{target} --onnx-only` where torch is and pass the ONNX with --model")
        return default_model("checkpoint"), None
    except DefaultModelError as exc:
        return None, str(exc)


def _engine(folder: Path, source: Path, precision: str, max_batch: int) -> Path:
    from export.sidecar import engine_stem

    name = source.stem
    if precision == "int8" and name.endswith(".int8"):
        name = name[: -len(".int8")]
    stem = engine_stem(name, precision == "fp16", max_batch, int8=precision == "int8")
    return folder / f"{stem}.engine"


def _export(source: Path, folder: Path, json_path: Path, *flags: Any) -> List[str]:
    return _grefel("export", source, *flags, "--verify", "--timing-cache",
                   folder.parent / "timing.cache", "--out", folder, "--json", json_path)


def _bench(engine: Path, batches: Sequence[int], folder: Path) -> List[str]:
    return _grefel("bench", "--weights", engine, "--backends", "trt", "--batch-sizes",
                   ",".join(map(str, batches)), "--out", folder)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _gates(path: Path) -> Dict[str, Any]:
    """The verdicts of `grefel export --json`: each gate's pass and its worst differences."""
    gates = _read_json(path)
    out: Dict[str, Any] = {}
    for key in ("fp16_gate", "int8_gate", "verify"):
        gate = gates.get(key)
        if isinstance(gate, dict):
            out[key] = {k: gate.get(k) for k in ("passed", "samples", "max_abs_dprobs",
                                                 "max_abs_dconfidence", "decisive_flips",
                                                 "backend") if k in gate}
    calib = gates.get("int8_calibration")
    if isinstance(calib, dict):
        out["int8_calibration"] = {k: calib.get(k) for k in ("method", "images") if k in calib}
    return out


def _build_facts(engine: Path) -> Dict[str, Any]:
    build = _read_json(engine.with_suffix(".json")).get("build") or {}
    return {"engine": str(engine), **{k: build[k] for k in ("precision_mode", "plan_bytes",
                                                            "profile") if k in build}}


def _latency_rows(folder: Path) -> List[Dict[str, Any]]:
    """The TensorRT rows of the bench record in `folder`."""
    keys = ("batch", "status", "median_ms", "p90_ms", "p99_ms", "gpu_median_ms", "gpu_p90_ms",
            "gpu_p99_ms", "images_per_s", "device")
    rows = []
    for path in sorted(folder.glob("*.json")):
        for row in _read_json(path).get("latency") or []:
            if row.get("backend") == "tensorrt":
                rows.append({k: row.get(k) for k in keys})
    return rows


def _plan_engine_fp16(facts, opts, done) -> Plan:
    why = _why_no_run(facts)
    source, no_source = _source(facts, opts)
    if why or no_source:
        return Plan(skip=why or no_source)
    folder = opts.out / "engine-fp16"
    engine = _engine(folder, source, "fp16", max(BATCHES))
    return Plan(
        steps=[_export(source, folder, opts.out / "engine-fp16.json", "--fp16", "--batch", 1,
                       "--max-batch", max(BATCHES))],
        collect=lambda _: {**_build_facts(engine), **_gates(opts.out / "engine-fp16.json")})


def _plan_latency(batch: int) -> Callable[..., Plan]:
    """Batch `batch` timed on an engine whose profile opt is `batch`: engine-fp16's (opt 1) for
    batch 1, else one built for it (opt = max = batch)."""

    def plan(facts, opts, done) -> Plan:
        why = _why_no_run(facts)
        source, no_source = _source(facts, opts)
        if why or no_source:
            return Plan(skip=why or no_source)
        bench = opts.out / f"latency-b{batch}-bench"
        steps = []
        if batch == 1:
            first = done.get("engine-fp16")
            if first is None or first.status != "passed":
                return Plan(skip="needs the engine of engine-fp16 (profile opt 1), which did "
                                 "not pass")
            engine = Path(first.numbers["engine"])
        else:
            folder = opts.out / f"latency-b{batch}"
            engine = _engine(folder, source, "fp16", batch)
            steps.append(_export(source, folder, opts.out / f"latency-b{batch}.json", "--fp16",
                                 "--batch", batch, "--max-batch", batch))
        steps.append(_bench(engine, [batch], bench))
        return Plan(steps=steps, collect=lambda _: {
            **_build_facts(engine), "profile_opt": batch, "rows": _latency_rows(bench)})

    return plan


_TRTEXEC_NUMBERS = ("Throughput", "Latency", "Enqueue Time", "GPU Compute Time")


def parse_trtexec(text: str) -> Dict[str, Any]:
    """trtexec's performance summary ("GPU Compute Time: min = ... ms, ..., median = X ms,
    percentile(99%) = Y ms", "Throughput: Z qps") as numbers, by metric; the same lines in
    TensorRT 8.5 through 11."""
    import re

    out: Dict[str, Any] = {}
    for line in text.splitlines():
        for metric in _TRTEXEC_NUMBERS:
            head = re.search(rf"\b{re.escape(metric)}: (.*)$", line)
            if not head:
                continue
            if metric == "Throughput":
                qps = re.match(r"([\d.]+) qps", head.group(1))
                if qps:
                    out["throughput_qps"] = float(qps.group(1))
                continue
            stats = dict((k, float(v)) for k, v in re.findall(
                r"(min|max|mean|median|percentile\(\d+%\)) = ([\d.eE+-]+) ms", head.group(1)))
            if stats:
                key = metric.lower().replace(" ", "_")
                out[key] = {k.replace("percentile(", "p").replace("%)", ""): v
                            for k, v in stats.items()}
    return out


def _plan_trtexec(facts, opts, done) -> Plan:
    from grefel.contract import INPUT_NAME, INPUT_SHAPE

    trtexec = facts.get("trtexec")
    if not trtexec:
        return Plan(skip="trtexec not found (not on PATH nor in /usr/src/tensorrt/bin)")
    first = done.get("engine-fp16")
    if first is None or first.status != "passed":
        return Plan(skip="needs the engine of engine-fp16, which did not pass")
    engine = first.numbers["engine"]
    shape = "x".join(map(str, (1, *INPUT_SHAPE)))
    base = [trtexec, f"--loadEngine={engine}", f"--shapes={INPUT_NAME}:{shape}",
            f"--duration={TRTEXEC_SECONDS}"]
    major = int(str(_trt(facts).get("version") or "10").split(".")[0])
    # TensorRT 11 captures a CUDA graph by default (--noCudaGraph); 8.x/10.x on --useCudaGraph
    graph, plain = ([], ["--noCudaGraph"]) if major >= 11 else (["--useCudaGraph"], [])
    steps = [base + graph, base + plain]

    def collect(ran: Steps) -> Dict[str, Any]:
        return {"engine": engine, "batch": 1,
                "cuda_graph": parse_trtexec(ran.outputs[0]) if ran.outputs else {},
                "no_cuda_graph": parse_trtexec(ran.outputs[1]) if len(ran.outputs) > 1 else {},
                "flags": {"cuda_graph": graph, "no_cuda_graph": plain}}

    return Plan(steps=steps, collect=collect)


def _plan_int8(facts, opts, done) -> Plan:
    why = _why_no_run(facts)
    source, no_source = _source(facts, opts)
    trt = _trt(facts)
    if why or no_source:
        return Plan(skip=why or no_source)
    if not trt.get("int8_mode"):
        return Plan(skip=trt.get("int8_mode_why") or "this TensorRT has no INT8 build path")
    folder = opts.out / "engine-int8"
    steps = []
    calib = opts.calib_data
    if calib is None:  # no face crops shipped: SynthFER faces, drawn here (torch-free)
        steps.append(_grefel("data", "synth", "--out", opts.out / "calib-synthfer", "--n", 400,
                             "--imbalance", "uniform", "--difficulty", 0.3))
        calib = opts.out / "calib-synthfer" / "images"
    engine = _engine(folder, source, "int8", 8)
    steps.append(_export(source, folder, opts.out / "engine-int8.json", "--int8",
                         "--calib-data", calib, "--batch", 1, "--max-batch", 8))
    steps.append(_bench(engine, [1], opts.out / "engine-int8-bench"))
    return Plan(steps=steps, collect=lambda _: {
        **_build_facts(engine), **_gates(opts.out / "engine-int8.json"),
        "calibration_images": str(calib), "rows": _latency_rows(opts.out / "engine-int8-bench")})


def _plan_paper(facts, opts, done) -> Plan:
    from grefel._lazy import install_hint

    why = _why_no_run(facts)
    if why:
        return Plan(skip=why)
    if not (facts.get("versions") or {}).get("torch"):
        return Plan(skip=f"the paper preset's ONNX is written with torch, which is not "
                         f"installed (install {install_hint('torch')})")
    folder = opts.out / "paper-fp16"
    onnx = opts.out / "paper.onnx"
    engine = _engine(folder, onnx, "fp16", 8)
    code = ("import sys; from benchmarks.check import write_paper_onnx; "
            "write_paper_onnx(sys.argv[1], sys.argv[2])")
    steps = [[sys.executable, "-c", code, str(onnx), _trt_target(facts)],
             _export(onnx, folder, opts.out / "paper-fp16.json", "--fp16", "--batch", 1,
                     "--max-batch", 8),
             _bench(engine, [1], opts.out / "paper-fp16-bench")]
    return Plan(steps=steps, collect=lambda _: {
        **_build_facts(engine), **_gates(opts.out / "paper-fp16.json"),
        "weights": "random init (seed 0): speed and numerics, not accuracy",
        "rows": _latency_rows(opts.out / "paper-fp16-bench")})


def write_paper_onnx(path: str, target: str) -> None:
    """The paper preset, random init (seed 0), as the ONNX `grefel export` writes for `target`
    (the paper section's first step; needs torch)."""
    import torch

    from export.onnx_export import export_onnx
    from grefel.contract import opset_for_target
    from grefel.model.grefel import create_model

    torch.manual_seed(0)
    export_onnx(create_model("paper").eval(), Path(path), opset=opset_for_target(target))


SECTIONS = (
    Section("engine-fp16", "the default model's FP16 engine, verified against ONNX Runtime "
            "(CPU)", 900, _plan_engine_fp16),
    *(Section(f"latency-b{b}", f"FP16 latency at batch {b} (engine profile opt {b})",
              300 if b == 1 else 900, _plan_latency(b)) for b in BATCHES),
    Section("trtexec", "trtexec on the engine-fp16 plan, with and without CUDA graphs", 300,
            _plan_trtexec),
    Section("engine-int8", "the INT8 engine: calibrated, verified and timed", 1800, _plan_int8),
    Section("paper-fp16", "the paper preset's FP16 engine, verified and timed", 1800,
            _plan_paper),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)


# --- running and reporting ---------------------------------------------------------------------


def run_check(facts: Dict[str, Any], opts: CheckOptions,
              on_result: Callable[[SectionResult], None] = lambda r: None) -> Dict[str, Any]:
    """Run the chosen sections in order; the report (also written to OUT/check.json and
    OUT/check.md after every section, so a killed check leaves what it measured)."""
    done: Dict[str, SectionResult] = {}
    report: Dict[str, Any] = {"facts": facts, "sections": []}
    chosen = [s for s in SECTIONS if opts.sections is None or s.name in opts.sections]
    for section in chosen:
        result = run_section(section, facts, opts, done)
        done[section.name] = result
        report["sections"].append(asdict(result))
        report["exit_code"] = exit_code(done.values())
        write_report(report, opts.out)
        on_result(result)
    report["exit_code"] = exit_code(done.values())
    write_report(report, opts.out)
    return report


def run_section(section: Section, facts: Dict[str, Any], opts: CheckOptions,
                done: Dict[str, SectionResult]) -> SectionResult:
    try:
        plan = section.plan(facts, opts, done)
    except Exception as exc:  # a planning bug must not cost the other sections
        plan = Plan(skip=f"could not be planned ({first_line(exc, 300)})")
    result = SectionResult(section.name, section.title, "skipped", why=plan.skip or "")
    if plan.skip:
        return result
    limit = opts.time_limit_s or section.limit_s
    log = opts.out / "logs" / f"{section.name}.log"
    ran = run_steps(plan.steps, log, limit)
    result.status, result.why, result.seconds = ran.status, ran.why, ran.seconds
    result.log = str(log.relative_to(opts.out))
    result.commands = [shlex.join(map(str, s)) for s in plan.steps]
    if plan.collect is not None:
        try:
            result.numbers = plan.collect(ran)
        except Exception as exc:  # numbers of a partial run may be missing
            result.numbers = {"collect_error": first_line(exc, 300)}
    if ran.status != "passed":
        result.log_tail = _tail(log.read_text(errors="replace"))
    return result


def exit_code(results: Any) -> int:
    """0 every section passed, 1 one failed or timed out, 2 none failed but one was skipped."""
    statuses = {r.status for r in results}
    if statuses & {"failed", "timed out"}:
        return 1
    return 2 if "skipped" in statuses else 0


def summarize(result: SectionResult) -> str:
    """A short line of a section's numbers (the Markdown table and the command's line)."""
    n = result.numbers
    parts = []
    for key in ("verify", "int8_gate"):
        gate = n.get(key)
        if isinstance(gate, dict) and "passed" in gate:
            parts.append(f"{key} {'pass' if gate['passed'] else 'FAIL'}, max|dp| "
                         f"{gate.get('max_abs_dprobs')}")
    for row in n.get("rows") or []:
        if row.get("status") == "ok":
            parts.append(f"b{row['batch']} p50/p90/p99 {row['median_ms']}/{row['p90_ms']}/"
                         f"{row['p99_ms']} ms, GPU {row.get('gpu_median_ms')}/"
                         f"{row.get('gpu_p90_ms')}/{row.get('gpu_p99_ms')} ms")
        else:
            parts.append(f"b{row.get('batch')} {row.get('status')}")
    for key in ("cuda_graph", "no_cuda_graph"):
        gpu = (n.get(key) or {}).get("gpu_compute_time") or {}
        if gpu:
            parts.append(f"{key.replace('_', ' ')}: GPU median {gpu.get('median')} ms, p99 "
                         f"{gpu.get('p99')} ms")
    return "; ".join(parts)


def write_report(report: Dict[str, Any], out: Path) -> None:
    from grefel.fileio import atomic_write_bytes, atomic_write_json

    atomic_write_json(out / "check.json", report)
    atomic_write_bytes(out / "check.md", report_markdown(report).encode())


def report_markdown(report: Dict[str, Any]) -> str:
    facts = report.get("facts") or {}
    lines = ["# grefel check", "", "```", preflight_text(facts), "```", "",
             "| section | status | seconds | numbers / why | log |", "|---|---|---|---|---|"]
    results = [SectionResult(**s) for s in report.get("sections", [])]
    for r in results:
        what = r.why if r.status != "passed" else summarize(r)
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} | {what.replace('|', '/')} "
                     f"| {r.log or ''} |")
    for r in results:
        if r.log_tail:
            lines += ["", f"## {r.name}: {r.status} (last lines of {r.log})", "", "```",
                      *r.log_tail, "```"]
    lines += ["", f"exit status {report.get('exit_code')}; the numbers of each section are in "
              "check.json, each section's whole output in logs/", ""]
    return "\n".join(lines)
