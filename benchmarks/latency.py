"""Latency and throughput of inference backends (`grefel bench` part b).

Protocol (mirrors trtexec, docs/tensorrt.md, "Timing"): warm up for at least
`warmup_iters` calls and `warmup_seconds`, then time at least `min_iters` calls and at least
`min_seconds` of wall time with `time.perf_counter`; report the median / p90 / p99 (nearest
rank) of the end-to-end latency per call, and images/s = batch * calls / total time. Backends
that time the GPU (TensorRT, PyTorch on CUDA) also give the GPU compute time from CUDA events,
apart from the end-to-end time that includes host-device copies. The CPU check of the input
batch (`Backend.check_input`: finite, min / max over the whole batch) is timed apart, before
each timed call, and reported as its own number (`input_check_median_ms`); the timed call is
`infer_timed(checked_batch, checked=True)`, which does not scan the values again.

Nothing measured is thrown away: `run` hands each row to `on_row` as soon as it is measured, and
a backend that cannot open, or a batch size that cannot run (out of memory, a kernel error), gives
a row whose `status` says why, and the other rows are still measured.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from grefel._lazy import MissingDependency, require
from grefel.contract import INPUT_SHAPE
from grefel.runtime import Backend, BackendError, open_backend

__all__ = [
    "LatencyResult",
    "Target",
    "export_onnx_for_bench",
    "measure_latency",
    "percentile",
    "run",
]


@dataclass
class LatencyResult:
    backend: str
    model: str
    device: str
    batch: int
    status: str = "ok"  # "ok", or why the backend did not run
    iters: int = 0
    seconds: float = 0.0
    median_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    images_per_s: Optional[float] = None
    gpu_median_ms: Optional[float] = None
    gpu_p90_ms: Optional[float] = None
    gpu_p99_ms: Optional[float] = None
    input_check_median_ms: Optional[float] = None  # timed apart from median_ms

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


def measure_latency(
    backend: Backend,
    batch: int,
    min_iters: int = 20,
    min_seconds: float = 3.0,
    warmup_iters: int = 3,
    warmup_seconds: float = 0.5,
    model: str = "",
    seed: int = 0,
) -> LatencyResult:
    """Time `backend.infer_timed` on a fixed random batch (the backend must be open)."""
    images = np.random.default_rng(seed).random((batch, *INPUT_SHAPE), dtype=np.float32)
    start = time.perf_counter()
    done = 0
    while done < warmup_iters or time.perf_counter() - start < warmup_seconds:
        backend.infer_timed(images)
        done += 1
    wall: List[float] = []
    gpu: List[float] = []
    check: List[float] = []
    begin = time.perf_counter()
    while len(wall) < min_iters or time.perf_counter() - begin < min_seconds:
        t0 = time.perf_counter()
        checked = backend.check_input(images)
        t1 = time.perf_counter()
        _, gpu_ms = backend.infer_timed(checked, checked=True)
        wall.append((time.perf_counter() - t1) * 1e3)
        check.append((t1 - t0) * 1e3)
        if gpu_ms is not None:
            gpu.append(gpu_ms)
    total = time.perf_counter() - begin
    res = LatencyResult(
        backend.name, model, backend.device, batch, iters=len(wall), seconds=round(total, 3)
    )
    res.median_ms, res.p90_ms, res.p99_ms = (round(percentile(wall, q), 3) for q in (50, 90, 99))
    res.images_per_s = round(batch * len(wall) / total, 2) if total > 0 else None
    res.input_check_median_ms = round(percentile(check, 50), 3)
    if gpu:
        res.gpu_median_ms, res.gpu_p90_ms, res.gpu_p99_ms = (
            round(percentile(gpu, q), 3) for q in (50, 90, 99)
        )
    return res


def export_onnx_for_bench(model: Any, path: Path) -> Path:
    """A dynamic-batch FP32 ONNX of `model` (probs, primary, confidence) for timing only: the
    export package's own `export_onnx`, so the timed graph is the graph `grefel export` writes."""
    from export.onnx_export import export_onnx

    return export_onnx(model, path)


@dataclass
class Target:
    """One thing to time: a model file, or an in-memory torch model (random init / checkpoint)."""

    label: str
    backend: str  # torch, onnx, tensorrt
    path: Optional[Path] = None
    model: Any = None
    error: Optional[str] = None  # why the target cannot be timed (its row says so)


def _open(target: Target, threads: Optional[int], cuda_graph: bool = False) -> Backend:
    if target.error is not None:
        raise BackendError(target.error)
    if target.model is not None:
        from grefel.runtime.torch_backend import TorchBackend

        return TorchBackend(model=target.model, threads=threads)
    if target.path is None:  # TensorRT asked for without an engine file
        require("tensorrt")
        raise BackendError("no .engine file given: build one on this GPU with `grefel export`")
    return open_backend(target.path, threads=threads, cuda_graph=cuda_graph)


def _iter_targets(targets: Sequence[Target], tmp: Path) -> Iterator[Target]:
    """Targets, with each in-memory model's ONNX target exported on demand into `tmp`."""
    for t in targets:
        if t.backend == "onnx" and t.path is None:
            try:
                path = export_onnx_for_bench(t.model, tmp / f"{t.label}.onnx")
            except Exception as exc:  # the exporter's errors (torch.onnx, onnx, OSError)
                yield Target(t.label, "onnx", error=f"ONNX export failed ({_first_line(exc)})")
                continue
            yield Target(t.label, "onnx", path)
        else:
            yield t


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else "") or type(exc).__name__


def run(
    targets: Sequence[Target],
    batch_sizes: Sequence[int],
    min_iters: int,
    min_seconds: float,
    threads: Optional[int] = None,
    progress: Any = None,
    on_row: Optional[Callable[[LatencyResult], None]] = None,
    cuda_graph: bool = False,
) -> List[LatencyResult]:
    """Time every target at every batch size. A backend that cannot open gives one
    `unavailable: why` row per batch size, a batch that fails a `failed: why` row; `on_row` gets
    each row as it is made."""
    results: List[LatencyResult] = []

    def add(row: LatencyResult) -> None:
        results.append(row)
        if on_row is not None:
            on_row(row)

    with tempfile.TemporaryDirectory(prefix="grefel-bench-") as tmp:
        for target in _iter_targets(targets, Path(tmp)):
            done = set()
            try:
                with _open(target, threads, cuda_graph) as backend:
                    for b in batch_sizes:
                        if progress:
                            progress(f"{target.backend} {target.label} batch {b} ...")
                        try:
                            row = measure_latency(backend, b, min_iters, min_seconds,
                                                  model=target.label)
                        except (BackendError, RuntimeError, MemoryError) as exc:
                            # torch's out-of-memory is a RuntimeError; ORT's errors are
                            # BackendErrors; the next batch size may still fit
                            row = LatencyResult(target.backend, target.label, backend.device, b,
                                                status=f"failed: {_first_line(exc)}")
                        done.add(b)
                        add(row)
            except (MissingDependency, BackendError) as exc:
                for b in batch_sizes:
                    if b not in done:
                        add(LatencyResult(target.backend, target.label, "-", b,
                                          status=f"unavailable: {exc}"))
    return results
