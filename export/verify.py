"""`--verify`: run the built engine and ONNX Runtime (FP32) on the same images, on the device.

The engine runs in the runtime's `grefel.runtime.trt_backend.TensorRTBackend` (the code that
`grefel predict` and `grefel bench` use: tensor-name API, primary CUDA context, pinned buffers,
chunks of the profile's maximum batch, zero-padded last chunk on a fixed-batch engine), so the
check exercises exactly what will serve the engine (the engine was just built here, so its
sidecar, written after this check, is not read). The reference is the FP32 ONNX model in
ONNX Runtime on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from export import ExportError
from export.compare import Agreement, agreement
from export.runners import ort_session, run_onnxruntime

__all__ = ["verify_engine"]


def verify_engine(
    engine_path: Union[str, Path],
    onnx_path: Union[str, Path],
    images: np.ndarray,
    *,
    min_agreement: float = 0.99,
) -> Agreement:
    """Engine vs ONNX Runtime FP32 on `images`: top-1 agreement, |dprobs|, NaN/inf."""
    from grefel.runtime.base import BackendError
    from grefel.runtime.trt_backend import TensorRTBackend

    reference = run_onnxruntime(ort_session(onnx_path), images, chunk=16)
    try:
        with TensorRTBackend(Path(engine_path), sidecar=False) as engine:
            got = engine.infer(np.ascontiguousarray(images, dtype=np.float32))
    except BackendError as exc:
        raise ExportError(f"--verify: {exc}") from None
    return agreement(reference, got, min_agreement, label="engine vs ONNX Runtime",
                     backend=f"TensorRT {Path(engine_path).name}")
