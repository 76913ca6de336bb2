"""`--verify`: run the built engine and ONNX Runtime (FP32) on the same images, on the device.

A minimal engine runner lives here so the export package does not depend on grefel.runtime: the
tensor-name API that exists unchanged from TensorRT 8.5 to 11.x (`num_io_tensors`,
`get_tensor_name/mode/dtype/shape`, `get_tensor_profile_shape`, `set_input_shape`,
`set_tensor_address`, `execute_async_v3`), pycuda with the device's primary context, pinned host
buffers and one non-default stream. Batches larger than the engine's max are run in chunks; a
static engine gets its last chunk zero-padded (and the padding dropped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from export import ExportError
from export.compare import Agreement, agreement
from export.runners import ort_session, run_onnxruntime
from grefel._lazy import require

__all__ = ["EngineRunner", "verify_engine"]


class EngineRunner:
    """Runs a plan file; use as a context manager (CUDA memory lives inside the `with`)."""

    def __init__(self, engine_path: Union[str, Path], trt: Any = None, cuda: Any = None) -> None:
        self.path = Path(engine_path)
        self.trt = trt if trt is not None else require("tensorrt")
        self.cuda = cuda if cuda is not None else require("pycuda.driver")
        self._held: List[Any] = []

    def __enter__(self) -> EngineRunner:
        trt, cuda = self.trt, self.cuda
        cuda.init()
        self._ctx = cuda.Device(0).retain_primary_context()
        self._ctx.push()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            self._ctx.pop()
            raise ExportError(f"{self.path}: TensorRT could not deserialize the engine (built "
                              "for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input = next(n for n in names if is_in[n])
        self.outputs = [n for n in names if not is_in[n]]
        shape = list(self.engine.get_tensor_shape(self.input))
        self.static = shape[0] != -1
        self.max_batch = shape[0] if self.static else int(
            self.engine.get_tensor_profile_shape(self.input, 0)[2][0])
        return self

    def __exit__(self, *exc: Any) -> None:
        self._held.clear()
        self.context = self.engine = self._runtime = None
        self._ctx.pop()

    def _buffer(self, name: str, shape: List[int]):
        dtype = self.trt.nptype(self.engine.get_tensor_dtype(name))
        host = self.cuda.pagelocked_empty(tuple(shape), dtype)
        device = self.cuda.mem_alloc(host.nbytes)
        self._held.append(device)
        self.context.set_tensor_address(name, int(device))
        return host, device

    def _run_chunk(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        cuda = self.cuda
        self.context.set_input_shape(self.input, tuple(x.shape))
        h_in, d_in = self._buffer(self.input, list(x.shape))
        h_in[...] = x
        outs = {n: self._buffer(n, list(self.context.get_tensor_shape(n))) for n in self.outputs}
        cuda.memcpy_htod_async(d_in, h_in, self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise ExportError(f"{self.path}: execute_async_v3 failed to enqueue")
        for host, device in outs.values():
            cuda.memcpy_dtoh_async(host, device, self.stream)
        self.stream.synchronize()
        result = {n: np.array(host, dtype=np.float32) for n, (host, _) in outs.items()}
        self._held.clear()
        return result

    def infer(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        """images (N, 3, 112, 112) float32 -> {output name: (N, ...) float32}."""
        parts = []
        for i in range(0, len(images), self.max_batch):
            chunk = np.ascontiguousarray(images[i : i + self.max_batch], dtype=np.float32)
            n = len(chunk)
            if self.static and n < self.max_batch:
                pad = np.zeros((self.max_batch - n, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            parts.append({k: v[:n] for k, v in self._run_chunk(chunk).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in self.outputs}


def verify_engine(
    engine_path: Union[str, Path],
    onnx_path: Union[str, Path],
    images: np.ndarray,
    *,
    min_agreement: float = 0.99,
    runner: Optional[EngineRunner] = None,
) -> Agreement:
    """Engine vs ONNX Runtime FP32 on `images`: top-1 agreement, |dprobs|, NaN/inf."""
    reference = run_onnxruntime(ort_session(onnx_path), images, chunk=16)
    with (runner if runner is not None else EngineRunner(engine_path)) as engine:
        got = engine.infer(images)
    return agreement(reference, got, min_agreement, label="engine vs ONNX Runtime",
                     backend=f"TensorRT {Path(engine_path).name}")
