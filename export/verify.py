"""`--verify`: run the built engine and ONNX Runtime (FP32) on the same images, on the device.

The engine runs in the runtime's `grefel.runtime.trt_backend.TensorRTBackend` (the code that
`grefel predict` and `grefel bench` use: tensor-name API, primary CUDA context, pinned buffers,
chunks of the profile's maximum batch, zero-padded last chunk on a fixed-batch engine), so the
check exercises exactly what will serve the engine (the engine was just built here, so its
sidecar, written after this check, is not read). The reference is the FP32 ONNX model in the
runtime's `OrtBackend` on the CPU; both are compared by `export.compare.measure_agreement`, the
criterion of the FP16 gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from export import ExportError
from export.compare import FP16_CRITERIA, Agreement, GateCriteria, measure_agreement, run_backend

__all__ = ["verify_engine"]


def verify_engine(
    engine_path: Union[str, Path],
    onnx_path: Union[str, Path],
    images: np.ndarray,
    *,
    criteria: GateCriteria = FP16_CRITERIA,
) -> Agreement:
    """Engine vs ONNX Runtime FP32 on `images`: decisive flips, |dprobs|, NaN/inf."""
    from grefel.runtime.base import BackendError
    from grefel.runtime.ort_backend import OrtBackend
    from grefel.runtime.trt_backend import TensorRTBackend

    try:
        reference = run_backend(OrtBackend(Path(onnx_path), device="cpu"), images)
        got = run_backend(TensorRTBackend(Path(engine_path), sidecar=False), images)
    except BackendError as exc:
        raise ExportError(f"--verify: {exc}") from None
    return measure_agreement(reference, got, criteria, label="engine vs ONNX Runtime",
                             backend=f"TensorRT {Path(engine_path).name}")
