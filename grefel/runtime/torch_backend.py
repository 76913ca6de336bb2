"""PyTorch backend: a `.safetensors` checkpoint (or an in-memory GReFEL) run eagerly.

torch is imported when the backend opens, never at module import. On CUDA, `infer_timed`
brackets the forward pass with CUDA events so that bench can report GPU compute time apart from
the end-to-end time.

OpenMP's wait policy: the CPU build of torch runs its intra-op threads on OpenMP, whose threads
spin-wait at every barrier by default. With more threads than idle cores (other processes, or
the face detector's and OpenCV's own threads in `grefel predict`) a spinning thread holds a core
that the thread everyone waits for needs, and the small operators of a batch-1 forward pass pay
that at every barrier: the tiny preset took 153-380 ms per call at torch's default thread count
on a loaded 2-core machine, 21-33 ms with OMP_WAIT_POLICY=PASSIVE or one thread
(benchmarks/results/torch_threads_2026-12-07.md). `prefer_passive_openmp` sets PASSIVE (unless
the user set a policy) before torch is imported; OpenMP reads it only when torch loads, so the
inference commands call it first thing, and the backend calls it before it imports torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from grefel._lazy import require
from grefel.runtime.base import OUTPUTS, Backend, BackendError, Outputs

__all__ = ["OPENMP_WAIT_POLICY", "TorchBackend", "prefer_passive_openmp"]

OPENMP_WAIT_POLICY = "PASSIVE"  # idle OpenMP threads sleep instead of spinning


def prefer_passive_openmp() -> bool:
    """Set OMP_WAIT_POLICY to PASSIVE unless it is set; True when torch will run with it (torch
    not imported yet, or imported with it already set). OpenMP reads the variable once, when
    torch loads."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", OPENMP_WAIT_POLICY)
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == OPENMP_WAIT_POLICY


class TorchBackend(Backend):
    """GReFEL in PyTorch eager mode.

    Args:
        path: a `.safetensors` checkpoint with its JSON sidecar (ignored when `model` is given).
        device: "cpu", "cuda" or None for CUDA when available.
        model: an already built GReFEL (bench's random-init model); moved to `device`.
        threads: torch intra-op threads on the CPU (None keeps torch's default).
    """

    name = "torch"

    def __init__(
        self,
        path: Optional[Path] = None,
        device: Optional[str] = None,
        model: Any = None,
        threads: Optional[int] = None,
    ) -> None:
        super().__init__(path)
        self._want_device = device
        self._model = model
        self._threads = threads
        self._torch: Any = None

    def _open(self) -> None:
        prefer_passive_openmp()
        torch = self._torch = require("torch")
        if self._threads:
            torch.set_num_threads(self._threads)
        self.device = self._want_device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"{self.path}: PyTorch sees no CUDA GPU here; use --device cpu")
        if self._model is None:
            from grefel.checkpoint import CheckpointError, load_checkpoint

            try:
                self._model, _ = load_checkpoint(self.path)
            except CheckpointError as exc:
                raise BackendError(str(exc)) from None
        self._model = self._model.to(self.device).eval()
        # Inputs take the model's dtype: a .half() model (the FP16 gate's fallback) runs in FP16.
        self._dtype = next(self._model.parameters()).dtype
        self.classes = tuple(self._model.cfg.class_names)
        self.output_width = int(self._model.cfg.num_classes)

    def _close(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.empty_cache()

    def _forward(self, batch: np.ndarray) -> Tuple[Outputs, Any]:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, dtype=self._dtype, non_blocking=True)
            out = self._model(x)
            return {n: getattr(out, n) for n in OUTPUTS}, out

    def _infer(self, batch: np.ndarray) -> Outputs:
        outputs, _ = self._forward(batch)
        return {n: t.float().cpu().numpy() for n, t in outputs.items()}

    def infer_timed(self, batch: np.ndarray, *,
                    checked: bool = False) -> Tuple[Outputs, Optional[float]]:
        if self.device != "cuda":
            return self.infer(batch, checked=checked), None
        batch = self._check(batch, values=not checked)
        torch = self._torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        outputs, _ = self._forward(batch)
        end.record()
        end.synchronize()
        gpu_ms = start.elapsed_time(end)
        return self._check_finite({n: t.float().cpu().numpy() for n, t in outputs.items()}), gpu_ms
