"""One GPU check, for the day a GPU is at hand: what the CPU-only CI cannot measure.

    python -m benchmarks.device_check [--out benchmarks/results] [--time-limit 540]

Writes `OUT/device_check_<YYYYmmdd-HHMMSS>_<device>.json` (rewritten atomically after every
section, so a run stopped by its time limit still leaves what it measured):

- `env`: GPU, driver, CUDA, torch, ONNX Runtime providers, TensorRT version if it imports
  (benchmarks.env.environment plus torch's CUDA facts);
- `train_step`: the paper preset, one AMP training step (Adam, GradScaler, the GReFEL loss) on a
  random batch: images/s over fixed steps after warm-up, peak CUDA memory;
- `torch_latency`: the paper preset in eval mode at batch 1/8/32, timed with CUDA events;
- `ort_cuda_latency`: the same model's ONNX in ONNX Runtime's CUDA provider, where it exists;
- `tensorrt`: where TensorRT and pycuda import, `grefel export --fp16 --verify` of the demo ONNX
  (`--onnx`, default runs/demo/engines/best.onnx; without it a random-init tiny checkpoint goes
  through the whole export) and the engine's latency at batch 1/8/32 with the GPU compute time
  from CUDA events (TensorRTBackend.infer_timed);
- `ablation` (only with `--sections ...,ablation`: it takes most of a lease): issue 16's paired
  ablation on the paper preset, `benchmarks.ablation --preset paper --device cuda --trunk
  trained` (no_rb vs both at 0 % and 30 % label noise, `--ablation-seeds` seeds, every run the
  whole model with the image-stream warm-up, as `make demo` trains the tiny one). Its record
  goes to OUT beside this one (`ablation_paper_trained_<date>.json/.md`, paired differences with
  95 % intervals); stopped by the time limit, it records the seeds that finished, and the same
  command with the same --ablation-work continues.

    python -m benchmarks.device_check --sections env,ablation --time-limit 540

Without a CUDA GPU it exits at once (status 2) saying so and writes nothing. Each section that
fails records its one-line error instead of a number; numbers are never invented.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

BATCHES = (1, 8, 32)
SECTIONS = ("env", "train_step", "torch_latency", "ort_cuda_latency", "tensorrt", "ablation")
DEFAULT_SECTIONS = SECTIONS[:-1]  # the ablation only when asked for
DEFAULT_ONNX = Path("runs/demo/engines/best.onnx")


class TimeLimit(BaseException):
    """The --time-limit alarm (a BaseException: no `except Exception` inside swallows it)."""


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _stats(ms: Sequence[float]) -> Dict[str, float]:
    values = np.asarray(ms, np.float64)
    return {"median_ms": round(float(np.median(values)), 4),
            "p90_ms": round(float(np.percentile(values, 90)), 4),
            "iters": int(values.size)}


def section_env() -> Dict[str, Any]:
    import torch

    from benchmarks.env import environment

    props = torch.cuda.get_device_properties(0)
    return {**environment(), "torch_cuda": {
        "device": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "memory_gib": round(props.total_memory / 2**30, 2),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}}


def section_train_step(batch: int, steps: int, warmup: int) -> Dict[str, Any]:
    import torch

    from grefel.model.grefel import GReFELOutput, create_model
    from grefel.model.losses import GReFELLoss
    from grefel.train import optimizer_step

    torch.manual_seed(0)
    device = torch.device("cuda")
    model = create_model("paper").to(device).train()
    loss_fn = GReFELLoss(model.cfg, None, 0.0).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    images = torch.rand(batch, 3, 112, 112, device=device)
    labels = torch.arange(batch, device=device) % model.cfg.num_classes

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(images)
        out = GReFELOutput(*(t.float() if t is not None else None for t in out))
        optimizer_step(loss_fn(out, labels, model).total, optimizer, scaler, params, 1.0)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"preset": "paper", "amp": True, "batch": batch, "steps": steps,
            "images_per_s": round(batch * steps / seconds, 2) if seconds > 0 else None,
            "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def section_torch_latency(iters: int) -> Dict[str, Any]:
    import torch

    from grefel.model.grefel import create_model

    torch.manual_seed(0)
    model = create_model("paper").cuda().eval()
    out: Dict[str, Any] = {}
    with torch.inference_mode():
        for b in BATCHES:
            x = torch.rand(b, 3, 112, 112, device="cuda")
            for _ in range(10):
                model(x)
            times: List[float] = []
            for _ in range(iters):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                model(x)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            out[f"batch_{b}"] = _stats(times)
    return {"preset": "paper", "timer": "CUDA events", **out}


def section_ort_cuda(iters: int, tmp: Path) -> Dict[str, Any]:
    import onnxruntime as ort
    import torch

    from export.onnx_export import export_onnx
    from grefel.model.grefel import create_model

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"status": f"no CUDAExecutionProvider (providers: {ort.get_available_providers()})"}
    torch.manual_seed(0)
    path = export_onnx(create_model("paper").eval(), tmp / "paper.onnx", opset=17)
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    out: Dict[str, Any] = {"providers": session.get_providers()}
    for b in BATCHES:
        x = np.random.default_rng(0).random((b, 3, 112, 112), dtype=np.float32)
        for _ in range(5):
            session.run(None, {"images": x})
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            session.run(None, {"images": x})
            times.append((time.perf_counter() - t0) * 1e3)
        out[f"batch_{b}"] = _stats(times)
    return {"preset": "paper", "timer": "perf_counter around session.run (host copies included)",
            **out}


def section_tensorrt(onnx: Optional[Path], tmp: Path, iters: int) -> Dict[str, Any]:
    from benchmarks.latency import measure_latency
    from export.pipeline import ExportOptions, run_export
    from grefel._lazy import MissingDependency, require
    from grefel.runtime.trt_backend import TensorRTBackend

    try:
        trt = require("tensorrt")
        require("pycuda.driver")
    except MissingDependency as exc:
        return {"status": f"skipped: {str(exc).splitlines()[0]}"}
    source = onnx
    if source is None:
        import torch

        from grefel.checkpoint import save_checkpoint
        from grefel.model.grefel import create_model

        torch.manual_seed(0)
        source = save_checkpoint(tmp / "tiny.safetensors", create_model("tiny").eval())
    logs: List[str] = []
    opts = ExportOptions(fp16=True, verify=True, max_batch=max(BATCHES), out=tmp / "engines")
    result = run_export(Path(source), opts, log=logs.append)
    engine = next((p for p in result.artifacts if p.suffix == ".engine"), None)
    out: Dict[str, Any] = {"tensorrt": trt.__version__, "source": str(source),
                           "exit_code": result.exit_code, "verify": result.gates.get("verify"),
                           "build_log": logs[-40:]}
    if engine is None:
        out["status"] = result.message
        return out
    with TensorRTBackend(engine, sidecar=False) as backend:
        for b in BATCHES:
            res = measure_latency(backend, b, min_iters=iters, min_seconds=1.0)
            out[f"batch_{b}"] = {k: getattr(res, k) for k in (
                "median_ms", "p90_ms", "gpu_median_ms", "gpu_p90_ms", "images_per_s", "iters")}
    return out


ABLATION_NOISE = ("0", "0.3")


def ablation_argv(args: argparse.Namespace) -> List[str]:
    """The paper-preset ablation this check runs (benchmarks.ablation's command line)."""
    return ["--preset", "paper", "--device", "cuda", "--trunk", "trained", "--n", "3000",
            "--noise", *ABLATION_NOISE, "--variants", "no_rb", "both",
            "--seeds", *(str(s) for s in range(args.ablation_seeds)),
            "--epochs", str(args.ablation_epochs), "--image-warmup", "150", "--freeze", "none",
            "--work", str(args.ablation_work), "--out", str(args.out)]


def section_ablation(args: argparse.Namespace) -> Dict[str, Any]:
    """benchmarks.ablation on the paper preset; on the time limit, the record of what finished."""
    from benchmarks import ablation

    argv = ablation_argv(args)
    try:
        status = ablation.main(argv)
    except TimeLimit:
        ablation.main(argv + ["--report-only"])  # the seeds that finished, then stop
        raise
    records = sorted(Path(args.out).glob("ablation_paper_trained_*.json"))
    if status != 0 or not records:
        return {"status": f"failed: benchmarks.ablation exited {status}"}
    import json

    record = json.loads(records[-1].read_text())
    return {"status": "ok", "record": str(records[-1]), "command":
            "python -m benchmarks.ablation " + " ".join(argv), "paired": record["paired"]}


def run(args: argparse.Namespace, write: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    record: Dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "time_limit_s": args.time_limit, "sections": {}}
    onnx = args.onnx if args.onnx is not None else (DEFAULT_ONNX if DEFAULT_ONNX.is_file()
                                                      else None)
    with tempfile.TemporaryDirectory(prefix="grefel-device-check-") as tmp_name:
        tmp = Path(tmp_name)
        sections = [
            ("env", section_env),
            ("train_step", lambda: section_train_step(args.train_batch, args.steps, 3)),
            ("torch_latency", lambda: section_torch_latency(args.iters)),
            ("ort_cuda_latency", lambda: section_ort_cuda(args.iters, tmp)),
            ("tensorrt", lambda: section_tensorrt(onnx, tmp, args.iters)),
            ("ablation", lambda: section_ablation(args)),
        ]
        chosen = getattr(args, "sections", None) or DEFAULT_SECTIONS
        for name, fn in sections:
            if name not in chosen:
                continue
            start = time.perf_counter()
            try:
                record["sections"][name] = fn()
            except TimeLimit:
                record["sections"][name] = {"status": "stopped by --time-limit"}
                record["timed_out"] = True
            except Exception as exc:  # record why, never a number
                first = (str(exc).strip().splitlines() or [""])[0]
                record["sections"][name] = {"status": f"failed: {type(exc).__name__}: {first}"}
            record["sections"][name]["seconds"] = round(time.perf_counter() - start, 2)
            print(f"device_check: {name} done", file=sys.stderr)
            write(record)
            if record.get("timed_out"):
                break
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--time-limit", type=int, default=540, help="seconds for the whole run")
    parser.add_argument("--onnx", type=Path, help=f"ONNX to build (default {DEFAULT_ONNX})")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--iters", type=int, default=50, help="timed iterations per batch size")
    parser.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--ablation-seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--ablation-epochs", type=int, default=8)
    parser.add_argument("--ablation-work", type=Path, default=Path("runs/ablation_paper"),
                        help="the ablation's datasets, runs and partial record")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown or not args.sections:
        print(f"device_check: --sections {','.join(unknown) or '(empty)'}: choose from "
              f"{', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if not cuda_available():
        print("device_check: no CUDA GPU visible (torch.cuda.is_available() is False); "
              "nothing measured, nothing written", file=sys.stderr)
        return 2
    if args.onnx is not None and not args.onnx.is_file():
        print(f"device_check: --onnx {args.onnx}: no such file", file=sys.stderr)
        return 2

    from benchmarks.env import device_label, environment
    from grefel.fileio import atomic_write_json

    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"device_check_{stamp}_{device_label(environment())}.json"

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeLimit()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(args.time_limit, 1))
    try:
        run(args, lambda record: atomic_write_json(path, record))
    finally:
        signal.alarm(0)
    print(str(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
