"""TensorRT backend: a plain `.engine` plan run with pycuda (reference/tensorrt_jetson.md §2.2).

- Tensor-name API only (TensorRT >= 8.5): `num_io_tensors`, `get_tensor_name/mode/dtype`,
  `get_tensor_profile_shape`, `set_input_shape`, `set_tensor_address`, `execute_async_v3`.
- The device's primary context (`Device(i).retain_primary_context().push()`), shared with the
  CUDA runtime that TensorRT uses; popped on exit. Another thread uses the backend inside
  `with backend.thread_context():`, which makes the context current there.
- Pinned host buffers and device buffers sized once for the profile's maximum batch, one
  non-default stream; a larger batch is split into chunks of that maximum (a fixed-batch engine
  gets its last chunk zero-padded; samples never influence each other).
- Teardown order: execution context -> engine -> runtime -> device buffers -> context pop.
- An engine built for another GPU or TensorRT version is refused by comparing the sidecar
  (`NAME.json`: tensorrt_version, gpu_name, compute_capability, classes, input) with what is
  running, and a `None` from the deserialiser becomes a clear error.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from grefel._lazy import require
from grefel.contract import EngineSidecar
from grefel.runtime.base import (
    INPUT_SHAPE,
    Backend,
    BackendError,
    Outputs,
    check_outputs,
    generic_classes,
    read_sidecar,
)

__all__ = ["TensorRTBackend", "check_build_target", "sidecar_facts"]

log = logging.getLogger(__name__)


def _cc_string(value: Any) -> str:
    """Compute capability as "8.7" from "8.7", [8, 7] or (8, 7)."""
    if isinstance(value, (list, tuple)):
        return ".".join(str(int(v)) for v in value)
    return str(value)


def _trt_release(version: str) -> str:
    """major.minor.patch: plans are tied to the TensorRT release that built them."""
    return ".".join(str(version).split(".")[:3])


def sidecar_facts(sidecar: Optional[EngineSidecar]) -> Dict[str, Any]:
    """tensorrt_version, gpu_name, compute_capability and classes of a sidecar read and checked
    by `grefel.contract.read_engine_sidecar` (None: all unknown)."""
    if sidecar is None:
        return dict.fromkeys(("tensorrt_version", "gpu_name", "compute_capability", "classes"))
    return {
        "tensorrt_version": sidecar.tensorrt_version,
        "gpu_name": sidecar.gpu_name,
        "compute_capability": sidecar.compute_capability,
        "classes": sidecar.class_names,
    }


def check_build_target(
    path: Path, sidecar: Optional[EngineSidecar], trt_version: str, gpu: str, cc: str
) -> None:
    """Raise BackendError if the sidecar says the engine was built elsewhere."""
    if not sidecar:
        return
    sidecar = sidecar_facts(sidecar)
    problems = []
    built_trt = sidecar.get("tensorrt_version")
    if built_trt and _trt_release(built_trt) != _trt_release(trt_version):
        problems.append(f"TensorRT {built_trt} (running {trt_version})")
    built_cc = sidecar.get("compute_capability")
    if built_cc is not None and _cc_string(built_cc) != cc:
        problems.append(f"compute capability {_cc_string(built_cc)} (running {cc})")
    built_gpu = sidecar.get("gpu_name")
    if built_gpu and built_gpu != gpu:
        problems.append(f"GPU {built_gpu!r} (running {gpu!r})")
    if problems:
        raise BackendError(
            f"{path}: this engine was built for {', '.join(problems)}. TensorRT engines only run "
            "on the GPU model and TensorRT version that built them: rebuild it here with "
            "`grefel export MODEL.onnx` (the ONNX file is portable)."
        )


class _IO:
    """One I/O tensor: name, dtype, pinned host buffer and device buffer (profile-max size)."""

    def __init__(self, name: str, dtype: Any, host: np.ndarray, device: Any) -> None:
        self.name, self.dtype, self.host, self.device = name, dtype, host, device


class TensorRTBackend(Backend):
    """A serialized TensorRT engine.

    Args:
        path: the .engine file (a plain plan) with its `NAME.json` sidecar beside it.
        gpu: CUDA device index.
        sidecar: False for an engine this process has just built (`grefel export --verify`):
            no sidecar is read, so there is no build-target check and classes are generic.
    """

    name = "tensorrt"

    def __init__(self, path: Path, gpu: int = 0, sidecar: bool = True) -> None:
        super().__init__(path)
        self.gpu = gpu
        self._read_sidecar = sidecar
        self.max_batch = 0
        self._static = False
        self._trt: Any = None
        self._cuda: Any = None
        self._ctx: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._input: Optional[_IO] = None
        self._outputs: List[_IO] = []

    # -- open / close ---------------------------------------------------------------------------

    def _open(self) -> None:
        if not Path(self.path).is_file():
            raise BackendError(f"{self.path}: no such engine file")
        sidecar = read_sidecar(Path(self.path)) if self._read_sidecar else None
        self._trt, self._cuda = require("tensorrt"), require("pycuda.driver")
        cuda = self._cuda
        cuda.init()
        device = cuda.Device(self.gpu)
        cc = _cc_string(device.compute_capability())
        check_build_target(Path(self.path), sidecar, self._trt.__version__, device.name(), cc)
        self._ctx = device.retain_primary_context()
        self._ctx.push()
        try:
            self._load(Path(self.path).read_bytes())
        except BaseException:
            self._close()
            raise
        self.device = f"cuda:{self.gpu} ({device.name()})"
        self.classes = self._classes(sidecar)

    def _load(self, plan: bytes) -> None:
        trt, cuda = self._trt, self._cuda
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendError(
                f"{self.path}: not a TensorRT engine, or built by another TensorRT version "
                f"(running {trt.__version__}); rebuild it here from the ONNX file"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"{self.path}: TensorRT could not create an execution context")
        self._stream = cuda.Stream()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise BackendError(f"{self.path}: expected one input tensor, got {inputs}")
        shape = tuple(self._engine.get_tensor_shape(inputs[0]))
        self._static = -1 not in shape  # a fixed-batch engine: smaller chunks are zero-padded
        max_shape = (
            shape if self._static else tuple(self._engine.get_tensor_profile_shape(inputs[0], 0)[2])
        )
        if tuple(max_shape[1:]) != INPUT_SHAPE:
            raise BackendError(f"{self.path}: input shape {max_shape}, expected (N, 3, 112, 112)")
        self.max_batch = int(max_shape[0])
        self._context.set_input_shape(inputs[0], max_shape)
        self._input = self._allocate(inputs[0], max_shape)
        self._outputs = [
            self._allocate(n, tuple(self._context.get_tensor_shape(n)))
            for n in names
            if n not in inputs
        ]
        check_outputs({io.name: None for io in self._outputs})

    def _allocate(self, name: str, shape: Tuple[int, ...]) -> _IO:
        """Pinned host + device buffer for `shape` (the profile max), bound to the context."""
        dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
        host = self._cuda.pagelocked_empty(int(np.prod(shape)), dtype)
        device = self._cuda.mem_alloc(host.nbytes)
        self._context.set_tensor_address(name, int(device))
        return _IO(name, dtype, host, device)

    def _classes(self, sidecar: Optional[EngineSidecar]) -> Tuple[str, ...]:
        classes = sidecar_facts(sidecar)["classes"]
        if classes:
            return tuple(classes)
        probs = next(io for io in self._outputs if io.name == "probs")
        return generic_classes(probs.host.size // max(self.max_batch, 1))

    def _close(self) -> None:
        """Context -> engine -> runtime -> device buffers -> pop the CUDA context."""
        self._context = None
        self._engine = None
        self._runtime = None
        for io in ([self._input] if self._input else []) + self._outputs:
            io.device.free()
        self._input, self._outputs, self._stream = None, [], None
        if self._ctx is not None:
            self._ctx.pop()
            self._ctx = None

    @contextlib.contextmanager
    def thread_context(self) -> Iterator[TensorRTBackend]:
        """Make the backend's CUDA context current in this (worker) thread for the block."""
        if self._ctx is None:
            raise BackendError(f"{self.describe()}: open the backend before using it in a thread")
        self._ctx.push()
        try:
            yield self
        finally:
            self._ctx.pop()

    # -- inference ------------------------------------------------------------------------------

    def _infer(self, batch: np.ndarray) -> Outputs:
        return self._run(batch, None)

    def infer_timed(self, batch: np.ndarray) -> Tuple[Outputs, Optional[float]]:
        times: List[float] = []
        outputs = self._run(self._check(batch), times)
        return outputs, float(sum(times))

    def _run(self, batch: np.ndarray, gpu_times: Optional[List[float]]) -> Outputs:
        """Batches above the profile's maximum run as consecutive chunks of at most that size."""
        parts = [
            self._run_chunk(batch[i : i + self.max_batch], gpu_times)
            for i in range(0, len(batch), self.max_batch)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _run_chunk(self, chunk: np.ndarray, gpu_times: Optional[List[float]]) -> Outputs:
        n = len(chunk)
        if self._static and n < self.max_batch:
            pad = np.zeros((self.max_batch - n,) + chunk.shape[1:], chunk.dtype)
            out = self._run_chunk(np.concatenate([chunk, pad]), gpu_times)
            return {name: value[:n] for name, value in out.items()}
        cuda, ctx, stream, inp = self._cuda, self._context, self._stream, self._input
        ctx.set_input_shape(inp.name, chunk.shape)
        n_in = chunk.size
        inp.host[:n_in] = chunk.ravel()  # casts to the engine's input dtype (FP16 I/O engines)
        cuda.memcpy_htod_async(inp.device, inp.host[:n_in], stream)
        start = end = None
        if gpu_times is not None:
            start, end = cuda.Event(), cuda.Event()
            start.record(stream)
        if not ctx.execute_async_v3(stream.handle):
            raise BackendError(f"{self.path}: TensorRT failed to enqueue the inference")
        if end is not None:
            end.record(stream)
        shapes = {io.name: tuple(ctx.get_tensor_shape(io.name)) for io in self._outputs}
        for io in self._outputs:
            count = int(np.prod(shapes[io.name]))
            cuda.memcpy_dtoh_async(io.host[:count], io.device, stream)
        stream.synchronize()
        if end is not None:
            gpu_times.append(end.time_since(start))
        return {
            io.name: io.host[: int(np.prod(shapes[io.name]))]
            .reshape(shapes[io.name])
            .astype(np.float32)  # a copy: the pinned buffer is reused by the next call
            for io in self._outputs
        }
