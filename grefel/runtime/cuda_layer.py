"""The few CUDA driver calls the TensorRT backend makes, on `cuda-bindings` or on pycuda.

TensorRT's Python API takes raw device addresses and a raw stream handle; something else must
allocate, copy and synchronise. Two packages can, with the same driver API underneath:

- `cuda-bindings` (NVIDIA's cuda-python, `from cuda.bindings import driver`): wheels for x86-64
  and aarch64 (Jetson included), nothing to compile. Supported: 12.8+ on a CUDA 12 driver
  (JetPack 6, desktop CUDA 12) and 13.x on a CUDA 13 driver (JetPack 7, desktop CUDA 13); the
  calls used here have the same names and signatures in 12.8, 12.9 and 13.x (checked against the
  real wheels in tests/test_cuda_real_bindings.py). cuda-python before 12.8 spells the module
  `from cuda import cuda` and is not used.
- pycuda (`pycuda.driver`): compiles on install; what older setups have.

`open_layer` picks one when a backend opens: cuda-bindings when importable, else pycuda; the
`GREFEL_CUDA` environment variable (`cuda-bindings` or `pycuda`) or the `prefer` argument forces
one. Both layers use the device's primary context (the one TensorRT's CUDA runtime uses), pushed
and popped by the thread doing the work, and raise `CudaError` for every failed CUDA call, its
message naming the call and the CUDA error: cuda-bindings returns `(CUresult, value...)` tuples,
every one of which is checked here; pycuda raises its own errors, which are re-raised as
CudaError with pycuda's text ("cuMemAlloc failed: out of memory").

CUDA graphs (capture of one enqueue, replayed with one launch) use cuStreamBeginCapture /
cuStreamEndCapture / cuGraphInstantiate / cuGraphLaunch of cuda-bindings; the pycuda layer
reports them unsupported (`graphs = False`) and the backend runs without them.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from grefel._lazy import MissingDependency, install_hint, require
from grefel.errors import first_line

__all__ = ["CHOICES", "ENV", "BindingsLayer", "CudaError", "CudaLayer", "PycudaLayer",
           "open_layer"]

ENV = "GREFEL_CUDA"
CHOICES = ("cuda-bindings", "pycuda")
_NAME_LENGTH = 256  # cuDeviceGetName's buffer


class CudaError(RuntimeError):
    """A CUDA call failed; the message is one line naming the call and the CUDA error."""


class CudaLayer:
    """One device's primary context, memory, stream and events, for one backend.

    Handles (`alloc`, `stream`, `event`, `graph`) are the layer's own objects; `int(handle)` is
    the raw address TensorRT takes (`set_tensor_address`, `execute_async_v3`).
    """

    name = "none"
    graphs = False  # can capture and replay CUDA graphs

    def open(self, index: int) -> Tuple[str, str]:
        """Initialise the driver, retain device `index`'s primary context; (GPU name, "8.7")."""
        raise NotImplementedError

    def push(self) -> None:
        raise NotImplementedError

    def pop(self) -> None:
        """Pop the calling thread's current context (the one `push` made current)."""
        raise NotImplementedError

    def release(self) -> None:
        """Give the primary context back (after everything allocated in it is freed)."""

    def versions(self) -> Dict[str, Any]:
        """The CUDA driver version (12060 = 12.6) and the layer's own, for records."""
        raise NotImplementedError

    def pinned(self, count: int, dtype: np.dtype) -> np.ndarray:
        """A page-locked host array of `count` elements (async copies need pinned memory)."""
        raise NotImplementedError

    def free_pinned(self, array: np.ndarray) -> None:
        """Free a `pinned` array (pycuda frees its own when the array goes)."""

    def alloc(self, nbytes: int) -> Any:
        raise NotImplementedError

    def free(self, alloc: Any) -> None:
        raise NotImplementedError

    def stream(self) -> Any:
        """A non-default stream (enqueue on the default stream adds synchronisations)."""
        raise NotImplementedError

    def destroy_stream(self, stream: Any) -> None:
        """Destroy a `stream` (pycuda's goes with its object)."""

    def event(self) -> Any:
        raise NotImplementedError

    def destroy_event(self, event: Any) -> None:
        """Destroy an `event` (pycuda's goes with its object)."""

    def record(self, event: Any, stream: Any) -> None:
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def htod(self, device: Any, host: np.ndarray, stream: Any) -> None:
        """Copy contiguous `host` (pinned) to `device` on `stream`, asynchronously."""
        raise NotImplementedError

    def dtoh(self, host: np.ndarray, device: Any, stream: Any) -> None:
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:
        raise NotImplementedError

    def stream_handle(self, stream: Any) -> int:
        raise NotImplementedError

    def begin_capture(self, stream: Any) -> None:
        raise CudaError(f"CUDA graphs are not available with {self.name} (use cuda-bindings)")

    def end_capture(self, stream: Any) -> Any:
        raise CudaError(f"CUDA graphs are not available with {self.name} (use cuda-bindings)")

    def instantiate(self, graph: Any) -> Any:
        raise CudaError(f"CUDA graphs are not available with {self.name} (use cuda-bindings)")

    def launch(self, graph_exec: Any, stream: Any) -> None:
        raise CudaError(f"CUDA graphs are not available with {self.name} (use cuda-bindings)")

    def destroy_graph(self, graph: Any, graph_exec: Any) -> None:
        """Destroy a captured graph and its executable (either may be None)."""


class PycudaLayer(CudaLayer):
    """pycuda.driver: its errors (LogicError, RuntimeError, MemoryError...) become CudaError."""

    name = "pycuda"

    def __init__(self, cuda: Any) -> None:
        self.cuda = cuda
        self.ctx: Any = None

    def _do(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.cuda.Error as exc:
            raise CudaError(first_line(exc)) from None

    def open(self, index: int) -> Tuple[str, str]:
        self._do(self.cuda.init)
        device = self._do(self.cuda.Device, index)
        name, cc = self._do(device.name), self._do(device.compute_capability)
        self.ctx = self._do(device.retain_primary_context)
        return name, ".".join(str(int(v)) for v in cc)

    def push(self) -> None:
        self._do(self.ctx.push)

    def pop(self) -> None:
        self._do(self.cuda.Context.pop)  # static: pops this thread's top

    def release(self) -> None:
        self.ctx = None  # pycuda releases the primary context with its Context object

    def versions(self) -> Dict[str, Any]:
        return {"cuda_driver_version": self._do(self.cuda.get_driver_version),
                "cuda_version_pycuda_built_for": ".".join(map(str, self.cuda.get_version()))}

    def pinned(self, count: int, dtype: np.dtype) -> np.ndarray:
        return self._do(self.cuda.pagelocked_empty, int(count), dtype)

    def alloc(self, nbytes: int) -> Any:
        return self._do(self.cuda.mem_alloc, int(nbytes))

    def free(self, alloc: Any) -> None:
        self._do(alloc.free)

    def stream(self) -> Any:
        return self._do(self.cuda.Stream)

    def event(self) -> Any:
        return self._do(self.cuda.Event)

    def record(self, event: Any, stream: Any) -> None:
        self._do(event.record, stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._do(end.time_since, start))

    def htod(self, device: Any, host: np.ndarray, stream: Any) -> None:
        self._do(self.cuda.memcpy_htod_async, device, host, stream)

    def dtoh(self, host: np.ndarray, device: Any, stream: Any) -> None:
        self._do(self.cuda.memcpy_dtoh_async, host, device, stream)

    def synchronize(self, stream: Any) -> None:
        self._do(stream.synchronize)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)


class BindingsLayer(CudaLayer):
    """cuda-bindings' driver module: every `(CUresult, ...)` tuple is checked."""

    name = "cuda-bindings"
    graphs = True

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.device: Any = None
        self.ctx: Any = None
        self._pinned: List[Tuple[int, np.ndarray]] = []

    def _call(self, call: str, *args: Any) -> Any:
        """`driver.call(*args)`; its error as CudaError, else the value(s) after the CUresult."""
        try:
            result = getattr(self.driver, call)(*args)
        except Exception as exc:  # no libcuda (RuntimeError / DynamicLibNotFoundError), a type
            raise CudaError(f"{call} failed: {first_line(exc)}") from None
        err, values = result[0], result[1:]
        if err != self.driver.CUresult.CUDA_SUCCESS:
            raise CudaError(f"{call} failed: {self._error_name(err)}")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def _error_name(self, err: Any) -> str:
        """CUDA_ERROR_... and the driver's description where it gives one."""
        name = getattr(err, "name", None) or f"CUresult {int(err)}"
        try:
            code, text = self.driver.cuGetErrorString(err)
            if code == self.driver.CUresult.CUDA_SUCCESS and text:
                text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
                return f"{name} ({text})"
        except Exception:  # a description is a courtesy; the name is the message
            pass
        return name

    def open(self, index: int) -> Tuple[str, str]:
        d = self.driver
        self._call("cuInit", 0)
        self.device = self._call("cuDeviceGet", int(index))
        raw = self._call("cuDeviceGetName", _NAME_LENGTH, self.device)
        name = bytes(raw).split(b"\0", 1)[0].decode(errors="replace")
        attr = d.CUdevice_attribute
        major = self._call("cuDeviceGetAttribute",
                           attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.device)
        minor = self._call("cuDeviceGetAttribute",
                           attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.device)
        self.ctx = self._call("cuDevicePrimaryCtxRetain", self.device)
        return name, f"{int(major)}.{int(minor)}"

    def push(self) -> None:
        self._call("cuCtxPushCurrent", self.ctx)

    def pop(self) -> None:
        self._call("cuCtxPopCurrent")

    def release(self) -> None:
        if self.ctx is not None:
            self.ctx = None
            self._call("cuDevicePrimaryCtxRelease", self.device)

    def versions(self) -> Dict[str, Any]:
        import cuda.bindings

        return {"cuda_driver_version": int(self._call("cuDriverGetVersion")),
                "cuda_bindings": getattr(cuda.bindings, "__version__", None)}

    def pinned(self, count: int, dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(int(count) * dtype.itemsize, 1)
        ptr = int(self._call("cuMemHostAlloc", nbytes, 0))
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        array = np.frombuffer(raw, np.uint8)[: int(count) * dtype.itemsize].view(dtype)
        self._pinned.append((ptr, array))
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        for i, (ptr, held) in enumerate(self._pinned):
            if held is array:
                del self._pinned[i]
                self._call("cuMemFreeHost", ptr)
                return

    def alloc(self, nbytes: int) -> Any:
        return self._call("cuMemAlloc", int(nbytes))

    def free(self, alloc: Any) -> None:
        self._call("cuMemFree", alloc)

    def stream(self) -> Any:
        return self._call("cuStreamCreate", 0)

    def destroy_stream(self, stream: Any) -> None:
        self._call("cuStreamDestroy", stream)

    def event(self) -> Any:
        return self._call("cuEventCreate", 0)

    def destroy_event(self, event: Any) -> None:
        self._call("cuEventDestroy", event)

    def record(self, event: Any, stream: Any) -> None:
        self._call("cuEventRecord", event, stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call("cuEventElapsedTime", start, end))

    def htod(self, device: Any, host: np.ndarray, stream: Any) -> None:
        self._call("cuMemcpyHtoDAsync", device, _address(host), host.nbytes, stream)

    def dtoh(self, host: np.ndarray, device: Any, stream: Any) -> None:
        self._call("cuMemcpyDtoHAsync", _address(host), device, host.nbytes, stream)

    def synchronize(self, stream: Any) -> None:
        self._call("cuStreamSynchronize", stream)

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def begin_capture(self, stream: Any) -> None:
        # thread-local: another thread's CUDA work cannot invalidate (or join) this capture
        mode = self.driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        self._call("cuStreamBeginCapture", stream, mode)

    def end_capture(self, stream: Any) -> Any:
        return self._call("cuStreamEndCapture", stream)

    def instantiate(self, graph: Any) -> Any:
        return self._call("cuGraphInstantiate", graph, 0)

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._call("cuGraphLaunch", graph_exec, stream)

    def destroy_graph(self, graph: Any, graph_exec: Any) -> None:
        if graph_exec is not None:
            self._call("cuGraphExecDestroy", graph_exec)
        if graph is not None:
            self._call("cuGraphDestroy", graph)


def _address(array: np.ndarray) -> int:
    """Host address of a contiguous array (a prefix view of a pinned buffer)."""
    if not array.flags.c_contiguous:
        raise CudaError("a host copy needs a contiguous array")
    return int(array.ctypes.data)


def layer_choice(prefer: Optional[str] = None) -> str:
    """The CUDA layer asked for: `prefer`, else $GREFEL_CUDA (spaces stripped), else "auto"; a
    ValueError naming the variable for anything but CHOICES and "auto". The one reader of the
    variable: `open_layer` and the start-up check of every command (grefel.environment)."""
    choice = prefer or os.environ.get(ENV, "").strip() or "auto"
    if choice not in CHOICES + ("auto",):
        raise ValueError(f"{ENV}={choice!r}: use one of {', '.join(CHOICES)}, or unset it "
                         "(cuda-bindings where installed, else pycuda)")
    return choice


def open_layer(prefer: Optional[str] = None) -> CudaLayer:
    """The CUDA layer to use: `prefer`, else $GREFEL_CUDA, else cuda-bindings when importable,
    else pycuda. MissingDependency (naming both packages) when the chosen one is missing."""
    try:
        choice = layer_choice(prefer)
    except ValueError as exc:
        raise MissingDependency(str(exc)) from None
    if choice in ("auto", "cuda-bindings"):
        try:
            return BindingsLayer(require("cuda.bindings.driver"))
        except MissingDependency:
            if choice == "cuda-bindings":
                raise
    try:
        return PycudaLayer(require("pycuda.driver"))
    except MissingDependency as exc:
        if choice == "pycuda":
            raise
        raise MissingDependency(f"{exc} Or install {install_hint('cuda.bindings')}") from None
