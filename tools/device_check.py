"""What a GPU machine without TensorRT can show, in one call of at most 5 minutes.

Two steps. Here, on a CPU machine with grefel's export tools (torch, onnx, onnxsim, ONNX
Runtime), prepare the inputs once:

    python -m tools.device_check --prepare runs/device-inputs [--preset paper]

Then on the GPU machine (the prepared folder carried beside the code):

    python -m tools.device_check --prepared runs/device-inputs --out OUT [--time-limit 280]

`--prepare DIR` writes everything the device run reads, so no CPU export runs on the device's
clock: `faces.npy` (the 64 SynthFER faces every precision gate runs on, export.gate_images),
the default model's checkpoint (`default.safetensors` + `.json`), for each model the CPU
ONNX Runtime FP32 outputs on those faces (`reference_KEY.npz`) and the CPU-emulated FP16 gate's
own numbers (`grefel export CKPT --fp16 --onnx-only`: export, onnxsim, parity, lint, FP16
gate), all listed with their sha256 in `prepared.json`. The paper preset's weights (176 MiB)
are larger than a device call carries (64 MiB): it is the random-init model of torch seed 0,
which the device run rebuilds and checks against the state-dict digest taken here.

The device run is a list of sections, each a child process in its own process group with a hard
time limit (the group is killed at the limit), each ending passed, failed, skipped or timed
out with its reason; a section that fails or times out keeps its whole log in the record:

1. `preflight`: ends the run in seconds, before any torch number, listing what is missing
   (torch, torch built with CUDA, a GPU, safetensors, grefel's model code, the prepared inputs);
2. `fp16_MODEL`: real GPU FP16 (torch autocast, and the whole model in half) against GPU FP32
   (TF32 off) on the 64 faces, judged by the FP16 gate's comparator
   (`export.compare.measure_agreement`, `FP16_CRITERIA`), beside the emulated gate's numbers;
3. `eager_MODEL`: eager FP32 latency at batch 1/8/32, p50/p90/p99 of wall and GPU time;
4. `graphs_MODEL`: the same by CUDA-graph replay;
5. `train_MODEL`: AMP training-step throughput and peak memory.

MODEL is `default` (the packaged model) then `paper` (or the `--preset` given to --prepare).
The record, `OUT/device_check_<YYYYmmdd-HHMMSS>_<device>.json` and `.md`, says what ran where
(GPU, driver, torch, CUDA, the command, the prepare step's machine and versions) and is
rewritten after every section. Exit status: 0 every section passed, 1 one failed or timed
out, 2 the preflight found something missing (nothing measured).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "grefel.device_check/2"
MANIFEST = "prepared.json"
FACES = "faces.npy"
N_FACES = 64
KINDS = ("fp16", "eager", "graphs", "train")  # the order they run in: most valuable first
LIMITS = {"preflight": 90.0, "fp16": 90.0, "eager": 60.0, "graphs": 60.0, "train": 60.0}
MIN_SECTION_S = 15.0  # a section with less of the run's time left is skipped, not started
RESULT_ENV = "GREFEL_SECTION_RESULT"  # where a section's child writes its JSON result
LOG_LIMIT = 4 << 20  # a log beyond 4 MiB keeps its last 4 MiB and says how much went


# --- sections: a name, a child process, a hard time limit, a status and its reason ---------


@dataclass
class SectionResult:
    """One section's outcome: status is passed, failed, skipped or timed out."""

    name: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    limit_s: Optional[float] = None
    result: Dict[str, Any] = field(default_factory=dict)
    log: Optional[str] = None  # the whole log, kept when the section failed or timed out

    def line(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"{self.name} {self.status} ({self.seconds:.1f} s){why}"


def skipped(name: str, reason: str) -> SectionResult:
    return SectionResult(name=name, status="skipped", reason=reason)


def _kill_group(pgid: int) -> None:
    """SIGKILL the section's process group: its child and whatever that started (a build in
    native code that no Python signal handler can interrupt included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, signal.SIGKILL)


def _read_log(path: Path) -> str:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size > LOG_LIMIT:
            f.seek(size - LOG_LIMIT)
            return f"[first {size - LOG_LIMIT} bytes of the log dropped]\n" + f.read().decode(
                errors="replace")
        return f.read().decode(errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def run_section(name: str, argv: Sequence[str], *, limit_s: float,
                cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None) -> SectionResult:
    """Run `argv` as section `name` in a new session (its own process group) with stdout and
    stderr in one log; at `limit_s` the whole group is killed. The child writes its JSON
    result to the file named by $GREFEL_SECTION_RESULT; `{"status": "skipped", "reason": ...}`
    there marks the section skipped, a "reason" explains a failure."""
    with tempfile.TemporaryDirectory(prefix=f"grefel-section-{name}-") as tmp:
        result_path, log_path = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        child_env = {**(os.environ if env is None else env), RESULT_ENV: str(result_path)}
        start = time.monotonic()
        timed_out = False
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=cwd, env=child_env,
                                    start_new_session=True)
            try:
                proc.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:  # also on Ctrl-C here, and for stragglers of a child that exited
                _kill_group(proc.pid)
                proc.wait()
        seconds = round(time.monotonic() - start, 2)
        text = _read_log(log_path)
        try:
            result = json.loads(result_path.read_text()) if result_path.is_file() else None
        except ValueError:
            result = None
    out = SectionResult(name=name, status="passed", seconds=seconds, limit_s=limit_s,
                        result=result if isinstance(result, dict) else {})
    if timed_out:
        out.status, out.log = "timed out", text
        out.reason = (f"killed at its {limit_s:g} s limit (its whole process group); "
                      f"last output: {_last_line(text)}")
    elif proc.returncode != 0:
        out.status, out.log = "failed", text
        code = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                else f"exit {proc.returncode}")
        out.reason = f"{out.result.get('reason') or _last_line(text)} ({code})"
    elif result is None:
        out.status, out.log = "failed", text
        out.reason = "exited 0 without writing its result"
    elif out.result.get("status") == "skipped":
        out.status, out.reason = "skipped", str(out.result.get("reason", ""))
    return out


# --- the preflight -------------------------------------------------------------------------


def _import(name: str) -> Any:
    """importlib.import_module (tests replace it to play a machine without a module)."""
    return importlib.import_module(name)


def check_prepared(prepared: Path) -> List[str]:
    """What is missing or damaged in the prepared inputs (no torch needed)."""
    from grefel.fileio import sha256_file

    how = f"run `python -m tools.device_check --prepare {prepared}` where grefel's " \
          "export tools are, and carry the folder"
    path = Path(prepared) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        why = "not found" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc})"
        return [f"the prepared inputs: {path} {why}; {how}"]
    if manifest.get("schema") != SCHEMA:
        return [f"the prepared inputs: {path} is of schema {manifest.get('schema')!r}, not "
                f"{SCHEMA!r}; {how}"]
    missing = []
    for name, digest in manifest.get("files", {}).items():
        file = Path(prepared) / name
        if not file.is_file():
            missing.append(f"the prepared file {file} (listed in {MANIFEST}); {how}")
        elif sha256_file(file) != digest:
            missing.append(f"the prepared file {file} as prepared (its sha256 differs); {how}")
    return missing


def preflight(prepared: Path) -> Dict[str, Any]:
    """What this machine has for the device run and what it lacks ("missing", each with how
    to get it); the environment block of the record."""
    found: Dict[str, Any] = {}
    missing = check_prepared(prepared)
    try:
        torch = _import("torch")
    except ImportError as exc:
        missing.append(f"torch (import failed: {exc})")
        torch = None
    if torch is not None:
        found["torch"] = torch.__version__
        found["cuda"] = torch.version.cuda
        if torch.version.cuda is None:
            missing.append(f"torch built with CUDA (this torch {torch.__version__} is a CPU "
                           "build)")
        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            missing.append("a CUDA GPU visible to torch (torch.cuda.is_available() is False" +
                           (f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None
                            else "") + ")")
        else:
            props = torch.cuda.get_device_properties(0)
            found["device"] = torch.cuda.get_device_name(0)
            found["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            found["memory_gib"] = round(props.total_memory / 2**30, 2)
            found["cudnn"] = torch.backends.cudnn.version()
    for module, what in (("safetensors", "safetensors (the default model's checkpoint)"),
                         ("grefel.model.grefel", "grefel's model code"),
                         ("grefel.checkpoint", "grefel's checkpoint loader")):
        try:
            _import(module)
        except ImportError as exc:
            missing.append(f"{what} (import failed: {exc})")
    from benchmarks.env import environment

    return {"found": found, "missing": missing, "environment": environment()}


# --- the children: one section each --------------------------------------------------------


def child_main(section: str, args: argparse.Namespace) -> int:
    """The body of one section's child: its JSON result to $GREFEL_SECTION_RESULT; exit 1 on
    an error (its traceback is the section's log)."""
    from grefel.fileio import atomic_write_json

    result_file = os.environ.get(RESULT_ENV)
    try:
        if section == "preflight":
            result = preflight(args.prepared)
            if result["missing"]:
                result["reason"] = "missing: " + "; ".join(result["missing"])
        else:
            from tools import device_sections

            kind, _, key = section.partition("_")
            fn = device_sections.KINDS[kind]
            extra: Dict[str, Any] = {"train": {"batch": args.train_batch, "steps": args.steps},
                                     "eager": {"iters": args.iters},
                                     "graphs": {"iters": args.iters}}.get(kind, {})
            result = fn(args.prepared, key, **extra)
            if result.get("errors"):
                result["reason"] = "; ".join(f"{k}: {v}" for k, v in result["errors"].items())
    except Exception:
        traceback.print_exc()
        return 1
    if result_file:
        atomic_write_json(Path(result_file), result)
    print(json.dumps(result, default=str)[:2000])
    return 1 if result.get("reason") else 0


# --- the prepare step (here, on the CPU) ---------------------------------------------------


def prepare(folder: Path, *, preset: str = "paper", seed: int = 0, default: bool = True,
            log: Callable[[str], None] = print) -> Path:
    """Write the device run's inputs to `folder`; returns its manifest (written last, so a
    folder whose prepare was interrupted has none and the preflight says so). The faces are
    the 64 the export's FP16 gate ran on (export.gate_images without --calib-data).
    `default=False` leaves the default model out (tests: one export instead of two)."""
    import torch

    from export.gate_images import gate_images
    from grefel.checkpoint import load_checkpoint, save_checkpoint, sidecar_path
    from grefel.fileio import atomic_path, atomic_write_json, sha256_file
    from grefel.model.grefel import create_model
    from grefel.runtime.default_model import DEFAULT_MODEL, default_model
    from tools.device_sections import state_sha256

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    images, what = gate_images(None, n=N_FACES)
    with atomic_path(folder / FACES) as tmp, open(tmp, "wb") as f:
        np.save(f, images)
    files = {FACES: sha256_file(folder / FACES)}
    models: Dict[str, Dict[str, Any]] = {}
    sources: Dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="grefel-device-prepare-") as work_name:
        work = Path(work_name)
        if default:
            src = default_model("checkpoint")
            for path, name in ((src, "default.safetensors"),
                               (sidecar_path(src), "default.json")):
                with atomic_path(folder / name) as tmp:
                    shutil.copyfile(path, tmp)
                files[name] = sha256_file(folder / name)
            model, _ = load_checkpoint(folder / "default.safetensors")
            models["default"] = {"kind": "checkpoint", "name": DEFAULT_MODEL,
                                 "checkpoint": "default.safetensors", "preset": model.cfg.name,
                                 "state_sha256": state_sha256(model)}
            sources["default"] = folder / "default.safetensors"
        torch.manual_seed(seed)
        model = create_model(preset).eval()
        models[preset] = {"kind": "random-init", "preset": preset, "seed": seed,
                          "torch": torch.__version__, "state_sha256": state_sha256(model)}
        sources[preset] = save_checkpoint(work / f"{preset}.safetensors", model)
        for key, source in sources.items():
            files.update(_gate(key, source, folder, work, images, what, models[key], log))
    manifest = {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": socket.gethostname(),
        "command": shlex.join(["python", "-m", "tools.device_check", "--prepare",
                               str(folder), "--preset", preset]),
        "versions": {"torch": torch.__version__, "onnxruntime": _version("onnxruntime"),
                     "onnx": _version("onnx"), "onnxsim": _version("onnxsim")},
        "faces": {"file": FACES, "shape": list(images.shape), "what": what},
        "models": models, "order": list(sources), "files": files,
    }
    atomic_write_json(folder / MANIFEST, manifest)
    return folder / MANIFEST


def _gate(key: str, source: Path, folder: Path, work: Path, images: np.ndarray, what: str,
          spec: Dict[str, Any], log: Callable[[str], None]) -> Dict[str, str]:
    """`grefel export SOURCE --fp16 --onnx-only` (export, onnxsim, parity, lint, the FP16 gate)
    into `work`; the gate's numbers go into `spec`, the FP32 ONNX's outputs on `images` (CPU
    ONNX Runtime, the gate's reference) into `folder` as reference_KEY.npz. Returns
    {file name: sha256} of what it wrote to `folder`."""
    from export.compare import run_backend
    from export.pipeline import ExportOptions, run_export
    from grefel.fileio import atomic_path, sha256_file
    from grefel.runtime.ort_backend import OrtBackend

    log(f"device_check --prepare: {key}: grefel export --fp16 --onnx-only (CPU)")
    out = work / f"export-{key}"
    result = run_export(source, ExportOptions(fp16=True, onnx_only=True, name=key, out=out),
                        log=log)
    gate = result.gates.get("fp16_gate")
    if result.exit_code != 0 or not gate or gate.get("images") != what:
        raise RuntimeError(f"{key}: the export's FP16 gate did not run on the prepared faces: "
                           f"{result.message}")
    reference = run_backend(OrtBackend(out / f"{key}.onnx", device="cpu"), images)
    name = f"reference_{key}.npz"
    with atomic_path(folder / name) as tmp, open(tmp, "wb") as f:
        np.savez(f, probs=reference["probs"], confidence=reference["confidence"])
    spec.update(fp16_gate=gate, reference=name,
                gate_command=f"grefel export {source.name} --fp16 --onnx-only")
    return {name: sha256_file(folder / name)}


def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --- the device run ------------------------------------------------------------------------


def plan(prepared: Path, kinds: Sequence[str]) -> List[str]:
    """The section names after the preflight: each kind, then each prepared model."""
    try:
        order = json.loads((Path(prepared) / MANIFEST).read_text())["order"]
    except (OSError, ValueError, KeyError):
        order = ["default", "paper"]
    return [f"{kind}_{key}" for kind in KINDS if kind in kinds for key in order]


def child_argv(section: str, args: argparse.Namespace) -> List[str]:
    return [sys.executable, "-m", "tools.device_check", "--section", section,
            "--prepared", str(Path(args.prepared).resolve()), "--iters", str(args.iters),
            "--train-batch", str(args.train_batch), "--steps", str(args.steps)]


def run_device(args: argparse.Namespace, argv: Sequence[str],
               clock: Callable[[], float] = time.monotonic) -> int:
    """The preflight, then each section in its own child within --time-limit; the record is
    rewritten after each section."""
    deadline = clock() + args.time_limit
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    record: Dict[str, Any] = {
        "schema": SCHEMA, "started": dt.datetime.now(dt.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(["python", "-m", "tools.device_check", *argv]),
        "time_limit_s": args.time_limit, "environment": None, "prepared": None, "sections": []}
    stem: Optional[Path] = None

    def add(res: SectionResult) -> None:
        nonlocal stem
        record["sections"].append(asdict(res))
        print(f"device_check: {res.line()}", file=sys.stderr)
        if stem is None:
            stem = args.out / f"device_check_{time.strftime('%Y%m%d-%H%M%S')}_{_label(record)}"
        write_record(stem, record)

    pre = run_section("preflight", child_argv("preflight", args), cwd=ROOT, env=env,
                      limit_s=min(LIMITS["preflight"], args.time_limit))
    record["environment"] = {**pre.result.get("environment", {}),
                             "found": pre.result.get("found", {})}
    record["prepared"] = _prepared_summary(args.prepared)
    add(pre)
    names = plan(args.prepared, args.kinds)
    if pre.status != "passed":
        for name in names:
            add(skipped(name, f"the preflight {pre.status}"))
        print(f"device_check: nothing measured; the record: {stem.with_suffix('.json')}",
              file=sys.stderr)
        return 2
    for name in names:
        left = deadline - clock()
        if left < MIN_SECTION_S:
            add(skipped(name, f"the run's --time-limit {args.time_limit:g} s was spent "
                              f"({left:.0f} s left)"))
            continue
        kind = name.partition("_")[0]
        add(run_section(name, child_argv(name, args), cwd=ROOT, env=env,
                        limit_s=min(LIMITS[kind], left)))
    failed = [s for s in record["sections"] if s["status"] in ("failed", "timed out")]
    print(f"device_check: {len(failed)} of {len(names)} sections failed or timed out; the "
          f"record: {stem.with_suffix('.json')}", file=sys.stderr)
    return 1 if failed else 0


def _prepared_summary(prepared: Path) -> Optional[Dict[str, Any]]:
    try:
        m = json.loads((Path(prepared) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return {"folder": str(prepared), "created": m.get("created"), "host": m.get("host"),
            "command": m.get("command"), "versions": m.get("versions"), "faces": m.get("faces"),
            "models": {k: {f: v.get(f) for f in ("kind", "name", "preset", "seed", "torch")
                           if v.get(f) is not None} for k, v in m.get("models", {}).items()}}


def _label(record: Dict[str, Any]) -> str:
    env = record.get("environment") or {}
    raw = (env.get("found") or {}).get("device") or env.get("host") or "host"
    return "".join(c if c.isalnum() else "-" for c in raw).strip("-").lower()[:40] or "host"


def write_record(stem: Path, record: Dict[str, Any]) -> None:
    from benchmarks.report import write_json_and_markdown

    write_json_and_markdown(stem.with_suffix(".json"), stem.with_suffix(".md"), record,
                            to_markdown(record))


# --- the Markdown --------------------------------------------------------------------------


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "pass" if v else "FAIL"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def to_markdown(record: Dict[str, Any]) -> str:
    env = record.get("environment") or {}
    found = env.get("found") or {}
    versions = env.get("versions") or {}
    gpu = env.get("gpu") or {}
    prep = record.get("prepared") or {}
    lines = [f"# device_check {record['started']}", "",
             f"- command: `{record['command']}` (time limit {record['time_limit_s']:g} s)",
             f"- device: {found.get('device', 'none')} (compute {found.get('capability', '-')}, "
             f"{found.get('memory_gib', '-')} GiB), driver {gpu.get('driver', '-')}, host "
             f"{env.get('host', '-')}",
             f"- torch {found.get('torch', versions.get('torch', '-'))}, CUDA "
             f"{found.get('cuda', '-')}, cuDNN {found.get('cudnn', '-')}, Python "
             f"{env.get('python', '-')}, grefel {versions.get('grefel', '-')}",
             f"- inputs prepared {prep.get('created', '-')} on {prep.get('host', '-')} "
             f"(`{prep.get('command', '-')}`, torch {(prep.get('versions') or {}).get('torch')})"
             if prep else "- inputs: none prepared", "",
             "| section | status | seconds | reason |", "|---|---|---|---|"]
    for s in record["sections"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | "
                     f"{s['reason'].replace('|', '/')} |")
    done = {s["name"]: s["result"] for s in record["sections"] if s["status"] == "passed"}
    fp16 = [(n, r) for n, r in done.items() if n.startswith("fp16_")]
    if fp16:
        lines += ["", "## Real GPU FP16 against FP32, beside the CPU-emulated FP16 gate", "",
                  "Same 64 faces, same comparator (export.compare.measure_agreement, "
                  "FP16_CRITERIA).", "",
                  "| model | candidate | verdict | max abs dprobs | median | max abs dconf | "
                  "decisive flips | NaN/inf | same verdict as gate | dprobs / gate's |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in fp16:
            rows = [("emulated gate (CPU)", r["emulated_gate"], None, None),
                    ("GPU FP32 vs CPU FP32", r["fp32_vs_cpu_reference"], None, None)]
            rows += [(f"real FP16 {m}", v, v["same_verdict_as_gate"], v["dprobs_ratio_to_gate"])
                     for m, v in r["real"].items()]
            for label, v, same, ratio in rows:
                cells = [r["model"], label, _f(v.get("passed")),
                         *(_f(v.get(k)) for k in ("max_abs_dprobs", "median_abs_dprobs",
                                                  "max_abs_dconfidence", "decisive_flips",
                                                  "nonfinite")),
                         "-" if same is None else ("yes" if same else "NO"), _f(ratio)]
                lines.append("| " + " | ".join(cells) + " |")
    timed = [(n, r) for n, r in done.items() if n.startswith(("eager_", "graphs_"))]
    if timed:
        lines += ["", "## Latency (FP32, input on the GPU)", "",
                  "| model | mode | batch | wall p50 / p90 / p99 ms | GPU p50 / p90 / p99 ms | "
                  "images/s | iters |", "|---|---|---|---|---|---|---|"]
        for name, r in timed:
            for key, v in r.items():
                if key.startswith("batch_"):
                    w, g = v["wall"], v["gpu"]
                    lines.append(
                        f"| {r['model']} | {name.partition('_')[0]} | {key[6:]} | "
                        f"{w['p50_ms']:.3f} / {w['p90_ms']:.3f} / {w['p99_ms']:.3f} | "
                        f"{g['p50_ms']:.3f} / {g['p90_ms']:.3f} / {g['p99_ms']:.3f} | "
                        f"{v['images_per_s']} | {v['iters']} |")
    train = [r for n, r in done.items() if n.startswith("train_")]
    if train:
        lines += ["", "## Training step (AMP float16)", "",
                  "| model | batch | step p50 ms | images/s | peak allocated MiB | "
                  "peak reserved MiB |", "|---|---|---|---|---|---|"]
        for r in train:
            lines.append(f"| {r['model']} | {r['batch']} | {r['step']['p50_ms']:.2f} | "
                         f"{r['images_per_s']} | {r['peak_memory_allocated_mib']} | "
                         f"{r['peak_memory_reserved_mib']} |")
    for s in record["sections"]:
        if s.get("log") is not None:
            lines += ["", f"## Log of {s['name']} ({s['status']})", "", "```",
                      s["log"].rstrip().replace("```", "'''"), "```"]
    return "\n".join(lines) + "\n"


# --- command line --------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.device_check",
                                     description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", type=Path, metavar="DIR",
                      help="write the device run's inputs to DIR (on a CPU machine)")
    mode.add_argument("--prepared", type=Path, metavar="DIR",
                      help="run on this GPU machine from the inputs prepared in DIR")
    parser.add_argument("--out", type=Path, help="folder of the record (required with "
                        "--prepared)")
    parser.add_argument("--preset", default="paper", choices=("paper", "tiny"),
                        help="--prepare: the random-init preset measured beside the default "
                        "model (tiny: for a quick try)")
    parser.add_argument("--time-limit", type=float, default=280.0,
                        help="seconds for the whole device run (default 280)")
    parser.add_argument("--sections", default=",".join(KINDS),
                        help=f"comma-separated kinds, of {', '.join(KINDS)} (the preflight "
                        "always runs)")
    parser.add_argument("--iters", type=int, default=200, help="most timed calls per batch")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # a child: run this one section
    args = parser.parse_args(argv)
    args.kinds = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown or not args.kinds:
        parser.error(f"--sections {','.join(unknown) or '(empty)'}: choose from "
                     f"{', '.join(KINDS)}")
    if args.prepared is not None and args.out is None and args.section is None:
        parser.error("--out is required with --prepared: the folder the record is written to")
    if args.time_limit <= 0 or args.iters < 20 or args.train_batch < 1 or args.steps < 1:
        parser.error("--time-limit must be > 0, --iters >= 20, --train-batch and --steps >= 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.section is not None:
        if args.prepared is None:
            print("device_check: --section needs --prepared DIR", file=sys.stderr)
            return 2
        return child_main(args.section, args)
    if args.prepare is not None:
        try:
            manifest = prepare(args.prepare, preset=args.preset,
                               log=lambda m: print(m, file=sys.stderr))
        except Exception as exc:  # one line; the export's own messages came before it
            print(f"device_check --prepare: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(str(manifest))
        return 0
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=args.out, prefix=".device-check-probe-"):
            pass
    except OSError as exc:
        print(f"device_check: --out {args.out}: cannot write the record there "
              f"({exc.strerror or exc})", file=sys.stderr)
        return 2
    return run_device(args, argv)


if __name__ == "__main__":
    sys.exit(main())
