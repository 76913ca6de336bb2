"""The one interface every inference backend shares (TensorRT, ONNX Runtime, PyTorch).

A backend is a context manager: construction only records the file, `__enter__` loads the model
and allocates memory, `__exit__` frees it. The public `infer` checks the batch against the model
contract (float32, (N, 3, 112, 112), finite, values in `grefel.contract.INPUT_RANGE` = [0, 1]),
calls the backend's `_infer`, which returns numpy arrays keyed by the ONNX output names (at least
probs, primary, confidence), and refuses outputs that hold NaN or inf (an FP16 graph that
overflowed, a broken engine) with a BackendError naming the model file. The export gates, which
measure non-finite outputs rather than refuse them, pass `finite_outputs=False`.

No module here imports torch, onnxruntime, tensorrt or pycuda at import time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from grefel import contract
from grefel.errors import GrefelError

__all__ = [
    "INPUT_SHAPE",
    "OUTPUTS",
    "Backend",
    "BackendError",
    "check_outputs",
    "Outputs",
    "generic_classes",
    "read_sidecar",
]

log = logging.getLogger(__name__)

INPUT_SHAPE = contract.INPUT_SHAPE
OUTPUTS = contract.OUTPUTS
PROBS_SUM_TOL = 1e-2  # FP16 softmax rows of 7-8 classes sum to 1 within ~1e-3

Outputs = Dict[str, np.ndarray]


class BackendError(GrefelError, RuntimeError):
    """A model file or batch that a backend cannot use; the message names the file and why."""


def generic_classes(n: int) -> Tuple[str, ...]:
    return tuple(f"class{i}" for i in range(n))


def read_sidecar(path: Path) -> Optional[contract.EngineSidecar]:
    """The checked engine sidecar `NAME.json` beside `path`, or None (with a warning) if absent.

    `grefel.contract.read_engine_sidecar` reads it (format version and input contract checked);
    a sidecar of another layout or version is a BackendError naming it.
    """
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        log.warning("%s: no sidecar %s; classes and build target are unknown", path, side.name)
        return None
    try:
        return contract.read_engine_sidecar(side)
    except contract.SidecarError as exc:
        raise BackendError(str(exc)) from None


class Backend:
    """Base class: context manager plus a validating `infer` (polygraphy's BaseRunner shape).

    Subclasses set `name` and implement `_open`, `_close` and `_infer`; `_open` sets
    `self.classes` (class names in output order).
    """

    name = "base"

    def __init__(self, path: Optional[Path] = None) -> None:
        self.path = Path(path) if path is not None else None
        self.classes: Tuple[str, ...] = ()
        self.output_width: Optional[int] = None  # classes the model outputs, when `_open` knows
        self.device = "cpu"
        self.active = False

    def __enter__(self) -> Backend:
        if not self.active:
            self._open()
            self.active = True
            try:  # every backend's class names, checked in this one place
                self.classes = contract.check_class_names(
                    self.classes, self.path or self.describe(), self.output_width,
                    fix="re-export the model with `grefel export`, or correct its class names "
                        "(ONNX metadata grefel.class_names, or its NAME.json sidecar)")
            except contract.ClassNamesError as exc:
                self.close()
                raise BackendError(str(exc)) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.active:
            self.active = False
            self._close()

    def infer(self, batch: np.ndarray, *, finite_outputs: bool = True,
              checked: bool = False) -> Outputs:
        """float32 (N, 3, 112, 112) RGB in [0, 1] -> {"probs": (N, C), "primary": (N, C),
        "confidence": (N,), ...}; outputs with NaN / inf are a BackendError unless
        `finite_outputs=False` (the export gates count them instead).

        checked: `batch` is what `check_input` returned, so its values are not scanned again
        (bench times the inference without the CPU pass over the batch, and times that pass
        apart); the type, dtype and shape are checked all the same."""
        out = self._infer(self._check(batch, values=not checked))
        width = np.shape(out["probs"])[-1] if "probs" in out else len(self.classes)
        if width != len(self.classes):  # a symbolic class dimension, seen now
            raise BackendError(f"{self.path or self.describe()}: {len(self.classes)} class "
                               f"names for {width} model outputs ({', '.join(self.classes)}); "
                               "re-export the model with `grefel export`, or correct its class "
                               "names")
        return self._check_distribution(self._check_finite(out)) if finite_outputs else out

    def infer_timed(self, batch: np.ndarray, *,
                    checked: bool = False) -> Tuple[Outputs, Optional[float]]:
        """`infer` plus the GPU compute time in ms (CUDA events), or None on the CPU."""
        return self.infer(batch, checked=checked), None

    def check_input(self, batch: Any) -> np.ndarray:
        """The batch checked against the contract (type, dtype, shape, finite values in
        INPUT_RANGE) as a C-contiguous array, or a BackendError saying what is wrong. `infer`
        does this itself; a caller that times the inference alone calls it first, outside its
        timed region, and passes the result with `checked=True`."""
        return self._check(batch)

    def _check_finite(self, outputs: Outputs) -> Outputs:
        """The outputs, or a BackendError naming the model and the outputs that hold NaN/inf."""
        from grefel.finite import nonfinite_counts  # the check every model reader uses

        bad = nonfinite_counts({n: np.asarray(v) for n, v in outputs.items()})
        if bad:
            counts = ", ".join(f"{n}: {k} of {size}" for n, (k, size) in sorted(bad.items()))
            raise BackendError(
                f"{self.path or self.describe()}: the model returned NaN or inf ({counts} "
                "values) for inputs in the contract's range; the model file is broken (an FP16 "
                "overflow?): re-export it, or use the FP32 ONNX / checkpoint"
            )
        return outputs

    def _check_distribution(self, outputs: Outputs) -> Outputs:
        """The outputs, or a BackendError when `probs` is not a probability distribution per
        face (values in [0, 1], each row summing to 1 within PROBS_SUM_TOL): a model that
        returns logits or scores would otherwise give records whose probabilities mean nothing."""
        probs = np.asarray(outputs["probs"], dtype=np.float64) if "probs" in outputs else None
        if probs is None or probs.size == 0:
            return outputs
        sums = probs.reshape(probs.shape[0], -1).sum(axis=1)
        worst = float(np.max(np.abs(sums - 1.0)))
        if worst > PROBS_SUM_TOL or float(probs.min()) < -PROBS_SUM_TOL:
            raise BackendError(
                f"{self.path or self.describe()}: the model's `probs` are not probabilities "
                f"(rows sum to {float(sums.min()):.4g}..{float(sums.max()):.4g}, values from "
                f"{float(probs.min()):.4g}); a grefel model ends in a softmax: export it with "
                "`grefel export`, or add the softmax to the graph"
            )
        return outputs

    def describe(self) -> str:
        return f"{self.name} on {self.device}" + (f" ({self.path.name})" if self.path else "")

    def _check(self, batch: Any, values: bool = True) -> np.ndarray:
        """The contract's checks; `values=False` skips the pass over the values (finite, in
        range), which `check_input` has made already."""
        if not self.active:
            raise BackendError(f"{self.describe()}: use the backend inside `with` (not opened)")
        if not isinstance(batch, np.ndarray):
            raise BackendError(f"expected a numpy array, got {type(batch).__name__}")
        if batch.dtype != np.float32:
            raise BackendError(f"expected float32 images, got {batch.dtype}")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != INPUT_SHAPE or batch.shape[0] < 1:
            want = ", ".join(map(str, INPUT_SHAPE))
            raise BackendError(f"expected shape (N, {want}) with N >= 1, got {batch.shape}")
        if not values:
            return np.ascontiguousarray(batch)
        if not np.isfinite(batch).all():
            raise BackendError("the batch contains NaN or inf")
        lo, hi = contract.INPUT_RANGE
        least, most = float(batch.min()), float(batch.max())
        if least < lo or most > hi:
            raise BackendError(
                f"input values span [{least:g}, {most:g}]; the model takes RGB in "
                f"[{lo:g}, {hi:g}] (uint8 / 255, grefel.contract.to_model_input)"
            )
        return np.ascontiguousarray(batch)

    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> Outputs:
        raise NotImplementedError


def check_outputs(outputs: Outputs, names: Sequence[str] = OUTPUTS) -> Outputs:
    """Every backend returns at least `names`; a missing output is a model-file problem."""
    missing = [n for n in names if n not in outputs]
    if missing:
        raise BackendError(f"the model has no output(s) {missing}; got {sorted(outputs)}")
    return outputs
