"""PyTorch backend: a `.safetensors` checkpoint (or an in-memory GReFEL) run eagerly.

torch is imported when the backend opens, never at module import. On CUDA, `infer_timed`
brackets the forward pass with CUDA events so that bench can report GPU compute time apart from
the end-to-end time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from grefel._lazy import require
from grefel.runtime.base import OUTPUTS, Backend, BackendError, Outputs

__all__ = ["TorchBackend"]


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

    def infer_timed(self, batch: np.ndarray) -> Tuple[Outputs, Optional[float]]:
        if self.device != "cuda":
            return self.infer(batch), None
        batch = self._check(batch)
        torch = self._torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        outputs, _ = self._forward(batch)
        end.record()
        end.synchronize()
        gpu_ms = start.elapsed_time(end)
        return self._check_finite({n: t.float().cpu().numpy() for n, t in outputs.items()}), gpu_ms
