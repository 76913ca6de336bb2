"""Inference backends behind one interface, and the preprocessing that feeds them.

    with open_backend("engines/best_fp16_b8.engine") as backend:   # or .onnx / .safetensors
        out = backend.infer(batch)        # float32 (N, 3, 112, 112) -> {"probs": (N, C), ...}

Importing this package imports neither torch nor onnxruntime, tensorrt or a CUDA layer: each
backend imports its library when it opens, so a Jetson that runs engines needs numpy, TensorRT
and cuda-bindings (or pycuda) only (grefel.runtime.cuda_layer).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

from grefel.runtime.base import INPUT_SHAPE, OUTPUTS, Backend, BackendError, Outputs

__all__ = [
    "BACKENDS",
    "INPUT_SHAPE",
    "OUTPUTS",
    "Backend",
    "BackendError",
    "Outputs",
    "open_backend",
]

# File suffix -> backend name.
BACKENDS = {".engine": "tensorrt", ".plan": "tensorrt", ".onnx": "onnx", ".safetensors": "torch"}


def open_backend(
    path: Union[str, Path],
    device: Optional[str] = None,
    threads: Optional[int] = None,
    low_memory: bool = False,
    cuda_graph: bool = False,
) -> Backend:
    """The backend for a model file, chosen by suffix (not yet opened: use it with `with`).

    Args:
        path: `.engine` (TensorRT + cuda-bindings or pycuda), `.onnx` (ONNX Runtime, CUDA
            provider when present) or `.safetensors` (a grefel checkpoint, PyTorch).
        device: "cpu" or "cuda" (ONNX Runtime and PyTorch); None picks CUDA when available.
        threads: CPU threads for ONNX Runtime / PyTorch (None: the library default).
        low_memory: ONNX Runtime without its NCHWc layout optimisation (less memory, slower
            CPU convolutions; `OrtBackend`).
        cuda_graph: TensorRT: replay each input shape's enqueue as a CUDA graph (cuda-bindings;
            `TensorRTBackend`); other backends run without, with a warning saying so.
    """
    path = Path(path)
    kind = BACKENDS.get(path.suffix.lower())
    if kind is None:
        raise BackendError(
            f"{path}: unknown model file type {path.suffix!r}; use .engine (TensorRT), "
            ".onnx (ONNX Runtime) or .safetensors (PyTorch checkpoint)"
        )
    if not path.is_file():
        raise BackendError(f"{path}: no such model file")
    if cuda_graph and kind != "tensorrt":  # said, not silently ignored
        logging.getLogger(__name__).warning(
            "%s: --cuda-graph replays TensorRT engines only; this %s model runs without CUDA "
            "graphs", path, "ONNX Runtime" if kind == "onnx" else "PyTorch")
    backend: Any
    if kind == "tensorrt":
        from grefel.runtime.trt_backend import TensorRTBackend

        backend = TensorRTBackend(path, cuda_graph=cuda_graph)
    elif kind == "onnx":
        from grefel.runtime.ort_backend import OrtBackend

        backend = OrtBackend(path, device=device, threads=threads, low_memory=low_memory)
    else:
        from grefel.runtime.torch_backend import TorchBackend

        backend = TorchBackend(path, device=device, threads=threads)
    return backend
