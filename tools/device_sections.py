"""The measuring sections of `tools.device_check`, each run in its own child process.

Each function measures one model, named by its key in the prepared inputs (`prepared.json`,
written by `python -m tools.device_check --prepare DIR` on a CPU machine), and returns a
JSON-ready dict. They run on `device` (``cuda`` on the GPU machine); a CPU run exercises the
plumbing only and says nothing about a GPU's arithmetic.

- `fp16`: real FP16 against FP32 on the prepared 64 faces, judged by the FP16 gate's comparator
  (`export.compare.measure_agreement` with `FP16_CRITERIA`), beside the CPU-emulated gate's own
  numbers from the prepare step: does the emulation predict real FP16?
- `eager`: latency at batch 1/8/32, p50/p90/p99 of the wall time and of the GPU time (CUDA
  events), input already on the GPU.
- `graphs`: the same through `torch.cuda.CUDAGraph` replay.
- `train`: one AMP training step (Adam, GradScaler, the GReFEL loss): images/s and peak memory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

BATCHES = (1, 8, 32)
CHUNK = 16  # images per forward in the FP16 comparison, as export.compare.run_backend
# The two torch forms of "FP16" reported beside the emulated gate: autocast keeps softmax,
# layer_norm and reductions in FP32 (the nearest torch form of grefel's FP16 engine, which pins
# LayerNorm, Softmax and the reliability tail to FP32); half is every weight and activation
# in FP16 (a harsher bound).
FP16_MODES = ("autocast", "half")
Outputs = Dict[str, np.ndarray]


def state_sha256(model: Any) -> str:
    """A digest of the model's state dict (names, dtypes, shapes, bytes): the device run checks
    that a random-init model rebuilt from its seed has the weights the prepare step gated."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def load_prepared(prepared: Path) -> Dict[str, Any]:
    """The manifest of the prepared inputs (device_check's preflight has checked its files)."""
    return json.loads((Path(prepared) / "prepared.json").read_text())


def load_model(prepared: Path, key: str) -> Tuple[Any, Dict[str, Any]]:
    """The model `key` of the prepared inputs on the CPU in eval mode, and whether its weights
    are the ones the prepare step measured (`weights_match`)."""
    import torch

    spec = load_prepared(prepared)["models"][key]
    if spec["kind"] == "random-init":
        from grefel.model.grefel import create_model

        torch.manual_seed(int(spec["seed"]))
        model = create_model(spec["preset"]).eval()
    else:
        from grefel.checkpoint import load_checkpoint

        model, _ = load_checkpoint(Path(prepared) / spec["checkpoint"])
    digest = state_sha256(model)
    return model, {"weights_match": digest == spec["state_sha256"], "state_sha256": digest,
                   "preset": model.cfg.name}


def fp32_exact() -> None:
    """FP32 as FP32: no TF32 in matmuls or convolutions (the reference of the FP16 check)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def run_model(model: Any, images: np.ndarray, device: str, mode: str = "fp32") -> Outputs:
    """probs and confidence of `images` in chunks of CHUNK; mode fp32, autocast or half."""
    import torch

    probs, conf = [], []
    dtype = torch.float16 if mode == "half" else torch.float32
    with torch.inference_mode():
        for i in range(0, len(images), CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(images[i: i + CHUNK])).to(device, dtype)
            with torch.autocast(device_type=device, dtype=torch.float16,
                                enabled=mode == "autocast"):
                out = model(x)
            probs.append(out.probs.float().cpu().numpy())
            conf.append(out.confidence.float().cpu().numpy())
    return {"probs": np.concatenate(probs), "confidence": np.concatenate(conf)}


GATE_FIELDS = ("passed", "reasons", "max_abs_dprobs", "median_abs_dprobs", "max_abs_dconfidence",
               "flips", "decisive_flips", "near_ties", "nonfinite", "backend")


def judge(reference: Mapping[str, np.ndarray], candidates: Mapping[str, Outputs],
          gate: Mapping[str, Any], cpu_reference: Mapping[str, np.ndarray],
          backend: str) -> Dict[str, Any]:
    """Each candidate against the FP32 `reference` by the FP16 gate's comparator, beside the
    emulated gate's numbers (`gate`, from the prepare step); plus the FP32 reference against
    the CPU ONNX Runtime reference of the prepare step (the same weights on the same faces)."""
    from export.compare import FP16_CRITERIA, measure_agreement

    emulated = {k: gate.get(k) for k in GATE_FIELDS}
    base = measure_agreement(cpu_reference, reference, FP16_CRITERIA,
                             label="FP32 here vs FP32 ONNX Runtime CPU (prepare)", backend=backend)
    real: Dict[str, Any] = {}
    for mode, outputs in candidates.items():
        got = measure_agreement(reference, outputs, FP16_CRITERIA, label=f"real FP16 ({mode})",
                                backend=f"torch {mode} float16 on {backend}")
        emulated_dp = gate.get("max_abs_dprobs")
        real[mode] = {**{k: v for k, v in got.to_dict().items() if k in GATE_FIELDS},
                      "same_verdict_as_gate": got.passed == bool(gate.get("passed")),
                      "dprobs_ratio_to_gate": (round(got.max_abs_dprobs / emulated_dp, 3)
                                               if emulated_dp else None)}
    return {"criteria": "export.compare.FP16_CRITERIA (the FP16 gate's)",
            "fp32_vs_cpu_reference": {k: v for k, v in base.to_dict().items()
                                      if k in GATE_FIELDS},
            "emulated_gate": emulated, "real": real}


def section_fp16(prepared: Path, key: str, device: str = "cuda",
                 modes: Sequence[str] = FP16_MODES) -> Dict[str, Any]:
    """Real FP16 vs FP32 of model `key` on the prepared faces, beside its emulated gate.

    A candidate whose forward raises is recorded with its error (the others are still judged)
    and the section reports `errors`, which makes the child exit non-zero."""
    spec = load_prepared(prepared)["models"][key]
    images = np.load(Path(prepared) / "faces.npy")
    cpu_ref = dict(np.load(Path(prepared) / spec["reference"]))
    fp32_exact()
    model, info = load_model(prepared, key)
    if not info["weights_match"]:
        raise RuntimeError(
            f"{key}: the weights rebuilt here (state sha256 {info['state_sha256'][:12]}) are not "
            f"the prepared ones ({spec['state_sha256'][:12]}, made with torch "
            f"{spec.get('torch')}): the emulated gate's numbers are for other weights")
    model = model.to(device)
    reference = run_model(model, images, device)
    candidates, errors = {}, {}
    for mode in modes:
        try:
            subject = copy.deepcopy(model).half() if mode == "half" else model
            candidates[mode] = run_model(subject, images, device, mode)
        except Exception as exc:  # recorded, never a number
            errors[mode] = f"{type(exc).__name__}: {exc}"
    where = _device_name(device)
    out = {"model": key, "preset": info["preset"], "images": len(images),
           **judge(reference, candidates, spec["fp16_gate"], cpu_ref, where)}
    if errors:
        out["errors"] = errors
    return out


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else device


def stats(values: Sequence[float]) -> Dict[str, float]:
    """p50 / p90 / p99 in ms of `values` (ms)."""
    v = np.asarray(values, np.float64)
    return {f"p{q}_ms": round(float(np.percentile(v, q)), 4) for q in (50, 90, 99)}


def time_calls(call: Callable[[], Any], *, iters: int, max_seconds: float) -> Dict[str, Any]:
    """Time `call` (after 10 warm-up calls): wall ms from the call to the end of its GPU work
    (perf_counter around it and a synchronize) and GPU ms between CUDA events recorded before
    and after it; at least 20 and at most `iters` calls, within `max_seconds` once past 20."""
    import torch

    for _ in range(10):
        call()
    torch.cuda.synchronize()
    wall: List[float] = []
    gpu: List[float] = []
    started = time.perf_counter()
    while len(wall) < iters and (len(wall) < 20 or time.perf_counter() - started < max_seconds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        call()
        end.record()
        end.synchronize()
        wall.append((time.perf_counter() - t0) * 1e3)
        gpu.append(start.elapsed_time(end))
    return {"iters": len(wall), "wall": stats(wall), "gpu": stats(gpu)}


def _batch(images: np.ndarray, b: int, device: str) -> Any:
    import torch

    reps = -(-b // len(images))
    return torch.from_numpy(np.ascontiguousarray(np.tile(images, (reps, 1, 1, 1))[:b])).to(device)


def section_eager(prepared: Path, key: str, iters: int = 200,
                  max_seconds: float = 3.0) -> Dict[str, Any]:
    """Eager FP32 latency of model `key` at BATCHES (the prepared faces, on the GPU)."""
    import torch

    images = np.load(Path(prepared) / "faces.npy")
    model, info = load_model(prepared, key)
    model = model.cuda()
    out: Dict[str, Any] = {"model": key, "preset": info["preset"], "precision": "fp32",
                           "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                           "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
                           "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}
    with torch.inference_mode():
        for b in BATCHES:
            x = _batch(images, b, "cuda")
            res = time_calls(lambda x=x: model(x), iters=iters, max_seconds=max_seconds)
            out[f"batch_{b}"] = {**res, "images_per_s": round(b / res["wall"]["p50_ms"] * 1e3, 1)}
    return out


def section_graphs(prepared: Path, key: str, iters: int = 200,
                   max_seconds: float = 3.0) -> Dict[str, Any]:
    """The same forward captured once per batch size in a CUDA graph and timed by replay; the
    replay's probs are checked against an eager forward of the same input."""
    import torch

    images = np.load(Path(prepared) / "faces.npy")
    model, info = load_model(prepared, key)
    model = model.cuda()
    out: Dict[str, Any] = {"model": key, "preset": info["preset"], "precision": "fp32"}
    with torch.no_grad():
        for b in BATCHES:
            static_x = _batch(images, b, "cuda")
            eager = model(static_x).probs.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture stream, as torch's docs do
                for _ in range(3):
                    model(static_x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = model(static_x)
            graph.replay()
            torch.cuda.synchronize()
            diff = float((static_out.probs - eager).abs().max())
            res = time_calls(graph.replay, iters=iters, max_seconds=max_seconds)
            out[f"batch_{b}"] = {**res, "images_per_s": round(b / res["wall"]["p50_ms"] * 1e3, 1),
                                 "replay_vs_eager_max_abs_dprobs": diff}
            del graph, static_out
    return out


def section_train(prepared: Path, key: str, batch: int = 32, steps: int = 20,
                  warmup: int = 3) -> Dict[str, Any]:
    """AMP training steps of model `key` (its preset, from its weights) on the prepared faces:
    images/s over `steps` after `warmup`, per-step ms, peak CUDA memory allocated."""
    import torch

    from grefel.model.grefel import GReFELOutput
    from grefel.model.losses import GReFELLoss
    from grefel.train import optimizer_step

    images = np.load(Path(prepared) / "faces.npy")
    model, info = load_model(prepared, key)
    model = model.cuda().train()
    loss_fn = GReFELLoss(model.cfg, None, 0.0).cuda()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    x = _batch(images, batch, "cuda")
    labels = torch.arange(batch, device="cuda") % model.cfg.num_classes

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(x)
        out = GReFELOutput(*(t.float() if t is not None else None for t in out))
        optimizer_step(loss_fn(out, labels, model).total, optimizer, scaler, params, 1.0)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times: List[float] = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    total_s = sum(times) / 1e3
    return {"model": key, "preset": info["preset"], "amp": "float16 autocast", "batch": batch,
            "steps": steps, "warmup": warmup, "step": stats(times),
            "images_per_s": round(batch * steps / total_s, 1) if total_s > 0 else None,
            "peak_memory_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "peak_memory_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1)}


KINDS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "fp16": section_fp16, "eager": section_eager, "graphs": section_graphs, "train": section_train}
