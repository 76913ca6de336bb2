"""A fake `cuda.bindings.driver` (NVIDIA's cuda-bindings) sharing the TensorRT fake's `Gpu`.

It follows the real module (checked against the real wheels 12.8.0, 12.9.10 and 13.5.0 by
tests/test_cuda_real_bindings.py): the functions the backend uses, with the real parameter
names; every call returns a tuple whose first item is a `CUresult` with the real values, then
the out-values (`(err,)` when there are none; None each on an error, as 12.9+ and 13.x
return); handles are their own classes (`CUstream`,
`CUdeviceptr`...) with `int()`; a wrong argument type raises TypeError before any "driver"
work, as Cython's conversion does. It fails the way the driver does: no device is
CUDA_ERROR_NO_DEVICE from cuInit, a bad ordinal CUDA_ERROR_INVALID_DEVICE, a call without a
current context CUDA_ERROR_INVALID_CONTEXT, a pop of an empty stack CUDA_ERROR_INVALID_CONTEXT.

Memory: pinned host blocks are real numpy buffers (the backend maps their address); device
blocks live in `Gpu.allocs` at the same addresses the pycuda fake uses, so the TensorRT fake's
engine reads and writes them. Stream capture: while a stream captures, the TensorRT fake's
`execute_async_v3` on it records its work instead of running it (as CUDA does), and
`cuGraphLaunch` runs the recorded work. `Gpu.cuda_fail = {"cuMemAlloc": "CUDA_ERROR_..."}`
makes a function return that error.
"""

from __future__ import annotations

import ctypes
import enum
import inspect
import types
from typing import Any, Callable, Dict, List

import numpy as np

# The real values (cuda.h; checked against the real enums in tests/test_cuda_real_bindings.py).
CURESULT = {
    "CUDA_SUCCESS": 0, "CUDA_ERROR_INVALID_VALUE": 1, "CUDA_ERROR_OUT_OF_MEMORY": 2,
    "CUDA_ERROR_NOT_INITIALIZED": 3, "CUDA_ERROR_NO_DEVICE": 100,
    "CUDA_ERROR_INVALID_DEVICE": 101, "CUDA_ERROR_INVALID_CONTEXT": 201,
    "CUDA_ERROR_INVALID_HANDLE": 400, "CUDA_ERROR_ILLEGAL_ADDRESS": 700,
    "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED": 900, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED": 901,
}
ATTRIBUTES = {"CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR": 75,
              "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR": 76}
CAPTURE_MODES = {"CU_STREAM_CAPTURE_MODE_GLOBAL": 0, "CU_STREAM_CAPTURE_MODE_THREAD_LOCAL": 1,
                 "CU_STREAM_CAPTURE_MODE_RELAXED": 2}
HANDLES = ("CUdevice", "CUcontext", "CUdeviceptr", "CUstream", "CUevent", "CUgraph",
           "CUgraphExec")
DESCRIPTIONS = {"CUDA_ERROR_NO_DEVICE": "no CUDA-capable device is detected",
                "CUDA_ERROR_INVALID_DEVICE": "invalid device ordinal",
                "CUDA_ERROR_OUT_OF_MEMORY": "out of memory"}


def _handle_class(name: str) -> type:
    def init(self: Any, init_value: int = 0) -> None:
        if not isinstance(init_value, (int, np.integer)) or isinstance(init_value, bool):
            raise TypeError(f"Argument 'init_value' has incorrect type (expected int, got "
                            f"{type(init_value).__name__})")
        self._value = int(init_value)

    return type(name, (), {
        "__init__": init,
        "__int__": lambda self: self._value,
        "__index__": lambda self: self._value,
        "__repr__": lambda self: f"<{name} {self._value}>",
        "__eq__": lambda self, other: type(other) is type(self) and other._value == self._value,
        "__hash__": lambda self: hash((name, self._value)),
        "getPtr": lambda self: self._value,
    })


def make_driver(gpu: Any) -> types.ModuleType:  # noqa: C901 - one module of the fake API
    """The fake `cuda.bindings.driver` on `gpu` (a tests.fakes.trt.Gpu)."""
    d = types.ModuleType("cuda.bindings.driver")
    CUresult = enum.IntEnum("CUresult", CURESULT)
    d.CUresult = CUresult
    d.CUdevice_attribute = enum.IntEnum("CUdevice_attribute", ATTRIBUTES)
    d.CUstreamCaptureMode = enum.IntEnum("CUstreamCaptureMode", CAPTURE_MODES)
    H = {name: _handle_class(name) for name in HANDLES}
    for name, cls in H.items():
        setattr(d, name, cls)
    state: Dict[str, Any] = {"init": False, "streams": 0, "events": 0, "graphs": {},
                             "retained": 0}

    def handle(value: Any, *names: str) -> int:
        """A handle argument: one of `names`' classes or an int, as the real conversion."""
        if isinstance(value, tuple(H[n] for n in names)):
            return int(value)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        raise TypeError(f"Argument must be of type {names[0]} or int, got "
                        f"{type(value).__name__}")

    def size(value: Any) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        raise TypeError(f"an integer is required, got {type(value).__name__}")

    def err(name: str) -> Any:
        return CUresult[name]

    def api(fn: Callable[..., tuple]) -> Callable[..., tuple]:
        """A driver function: ends in cuda_fail's error when set, else its own result."""
        sig = inspect.signature(fn)

        def call(*args: Any, **kwargs: Any) -> tuple:
            sig.bind(*args, **kwargs)  # TypeError for a wrong count, as the real function
            gpu.cuda_calls.append(fn.__name__)
            fail = gpu.cuda_fail.get(fn.__name__)
            result = fn(*args, **kwargs)
            code = CUresult[fail] if fail is not None else result[0]
            if code != CUresult.CUDA_SUCCESS:  # 12.9+ and 13.x give None for every out-value
                return (code,) + (None,) * (len(result) - 1)
            return result

        call.__name__, call.__signature__ = fn.__name__, sig
        setattr(d, fn.__name__, call)
        return call

    def current() -> bool:
        return bool(gpu.stack())

    @api
    def cuInit(Flags: int) -> tuple:  # noqa: N802, N803 - the real names
        size(Flags)
        if gpu.no_gpu:
            return (err("CUDA_ERROR_NO_DEVICE"),)
        state["init"] = True
        return (err("CUDA_SUCCESS"),)

    @api
    def cuDriverGetVersion() -> tuple:  # noqa: N802
        return err("CUDA_SUCCESS"), 12060

    @api
    def cuDeviceGet(ordinal: int) -> tuple:  # noqa: N802
        size(ordinal)
        if not state["init"]:
            return err("CUDA_ERROR_NOT_INITIALIZED"), H["CUdevice"](0)
        if not 0 <= ordinal < gpu.devices:
            return err("CUDA_ERROR_INVALID_DEVICE"), H["CUdevice"](0)
        return err("CUDA_SUCCESS"), H["CUdevice"](ordinal)

    @api
    def cuDeviceGetName(length: int, dev: Any) -> tuple:  # noqa: N802
        size(length)
        handle(dev, "CUdevice")
        return err("CUDA_SUCCESS"), gpu.gpu_name.encode().ljust(length, b"\0")[:length]

    @api
    def cuDeviceGetAttribute(attrib: Any, dev: Any) -> tuple:  # noqa: N802
        if not isinstance(attrib, d.CUdevice_attribute):
            raise TypeError("Argument 'attrib' has incorrect type (expected CUdevice_attribute)")
        handle(dev, "CUdevice")
        major = attrib.name.endswith("MAJOR")
        return err("CUDA_SUCCESS"), gpu.cc[0] if major else gpu.cc[1]

    @api
    def cuDevicePrimaryCtxRetain(dev: Any) -> tuple:  # noqa: N802
        handle(dev, "CUdevice")
        state["retained"] += 1
        gpu.retained = state["retained"]
        return err("CUDA_SUCCESS"), H["CUcontext"](0xC0)

    @api
    def cuDevicePrimaryCtxRelease(dev: Any) -> tuple:  # noqa: N802
        handle(dev, "CUdevice")
        if state["retained"] == 0:
            return (err("CUDA_ERROR_INVALID_CONTEXT"),)
        state["retained"] -= 1
        gpu.retained = state["retained"]
        return (err("CUDA_SUCCESS"),)

    @api
    def cuCtxPushCurrent(ctx: Any) -> tuple:  # noqa: N802
        gpu.stack().append(handle(ctx, "CUcontext"))
        return (err("CUDA_SUCCESS"),)

    @api
    def cuCtxPopCurrent() -> tuple:  # noqa: N802
        stack = gpu.stack()
        if not stack:
            return err("CUDA_ERROR_INVALID_CONTEXT"), H["CUcontext"](0)
        return err("CUDA_SUCCESS"), H["CUcontext"](stack.pop())

    @api
    def cuMemAlloc(bytesize: int) -> tuple:  # noqa: N802
        size(bytesize)
        if not current():
            return err("CUDA_ERROR_INVALID_CONTEXT"), H["CUdeviceptr"](0)
        ptr = 0x10000 + 0x1000 * len(gpu.allocs)
        gpu.allocs[ptr] = np.zeros(bytesize, np.uint8)
        return err("CUDA_SUCCESS"), H["CUdeviceptr"](ptr)

    @api
    def cuMemFree(dptr: Any) -> tuple:  # noqa: N802
        ptr = handle(dptr, "CUdeviceptr")
        if not current():
            return (err("CUDA_ERROR_INVALID_CONTEXT"),)
        if ptr not in gpu.allocs or ptr in gpu.freed:
            return (err("CUDA_ERROR_INVALID_VALUE"),)
        gpu.freed.append(ptr)
        return (err("CUDA_SUCCESS"),)

    @api
    def cuMemHostAlloc(bytesize: int, Flags: int) -> tuple:  # noqa: N802, N803
        size(bytesize), size(Flags)
        if not current():
            return err("CUDA_ERROR_INVALID_CONTEXT"), 0
        block = np.zeros(bytesize, np.uint8)
        gpu.host[block.ctypes.data] = block
        return err("CUDA_SUCCESS"), block.ctypes.data

    @api
    def cuMemFreeHost(p: Any) -> tuple:  # noqa: N802
        p = size(p)
        if not current():
            return (err("CUDA_ERROR_INVALID_CONTEXT"),)
        if p not in gpu.host:
            return (err("CUDA_ERROR_INVALID_VALUE"),)
        gpu.freed_host.append(p)
        return (err("CUDA_SUCCESS"),)

    def pinned(address: int, nbytes: int) -> bool:
        return any(a <= address and address + nbytes <= a + b.nbytes
                   for a, b in gpu.host.items() if a not in gpu.freed_host)

    @api
    def cuMemcpyHtoDAsync(dstDevice: Any, srcHost: Any, ByteCount: int,  # noqa: N802, N803
                          hStream: Any) -> tuple:
        dst, src, n = handle(dstDevice, "CUdeviceptr"), size(srcHost), size(ByteCount)
        handle(hStream, "CUstream")
        if not current():
            return (err("CUDA_ERROR_INVALID_CONTEXT"),)
        if dst not in gpu.allocs or n > gpu.allocs[dst].nbytes or not pinned(src, n):
            return (err("CUDA_ERROR_INVALID_VALUE"),)
        gpu.allocs[dst][:n] = np.frombuffer(ctypes.string_at(src, n), np.uint8)
        return (err("CUDA_SUCCESS"),)

    @api
    def cuMemcpyDtoHAsync(dstHost: Any, srcDevice: Any, ByteCount: int,  # noqa: N802, N803
                          hStream: Any) -> tuple:
        dst, src, n = size(dstHost), handle(srcDevice, "CUdeviceptr"), size(ByteCount)
        handle(hStream, "CUstream")
        if not current():
            return (err("CUDA_ERROR_INVALID_CONTEXT"),)
        if src not in gpu.allocs or n > gpu.allocs[src].nbytes or not pinned(dst, n):
            return (err("CUDA_ERROR_INVALID_VALUE"),)
        ctypes.memmove(dst, gpu.allocs[src].ctypes.data, n)
        return (err("CUDA_SUCCESS"),)

    def with_context(name: str, *handles: Any) -> tuple:
        if not current():
            return (err("CUDA_ERROR_INVALID_CONTEXT"),)
        return (err("CUDA_SUCCESS"),)

    @api
    def cuStreamCreate(Flags: int) -> tuple:  # noqa: N802, N803
        size(Flags)
        if not current():
            return err("CUDA_ERROR_INVALID_CONTEXT"), H["CUstream"](0)
        state["streams"] += 1
        return err("CUDA_SUCCESS"), H["CUstream"](0xBEEF + state["streams"])

    @api
    def cuStreamDestroy(hStream: Any) -> tuple:  # noqa: N802, N803
        handle(hStream, "CUstream")
        return with_context("cuStreamDestroy")

    @api
    def cuStreamSynchronize(hStream: Any) -> tuple:  # noqa: N802, N803
        handle(hStream, "CUstream")
        return with_context("cuStreamSynchronize")

    @api
    def cuEventCreate(Flags: int) -> tuple:  # noqa: N802, N803
        size(Flags)
        if not current():
            return err("CUDA_ERROR_INVALID_CONTEXT"), H["CUevent"](0)
        state["events"] += 1
        return err("CUDA_SUCCESS"), H["CUevent"](0xE0 + state["events"])

    @api
    def cuEventDestroy(hEvent: Any) -> tuple:  # noqa: N802, N803
        handle(hEvent, "CUevent")
        return with_context("cuEventDestroy")

    @api
    def cuEventRecord(hEvent: Any, hStream: Any) -> tuple:  # noqa: N802, N803
        handle(hEvent, "CUevent"), handle(hStream, "CUstream")
        return with_context("cuEventRecord")

    @api
    def cuEventElapsedTime(hStart: Any, hEnd: Any) -> tuple:  # noqa: N802, N803
        handle(hStart, "CUevent"), handle(hEnd, "CUevent")
        if not current():
            return err("CUDA_ERROR_INVALID_CONTEXT"), 0.0
        return err("CUDA_SUCCESS"), 1.5

    @api
    def cuStreamBeginCapture(hStream: Any, mode: Any) -> tuple:  # noqa: N802, N803
        stream = handle(hStream, "CUstream")
        if not isinstance(mode, d.CUstreamCaptureMode):
            raise TypeError("Argument 'mode' has incorrect type (expected CUstreamCaptureMode)")
        if not current():
            return (err("CUDA_ERROR_INVALID_CONTEXT"),)
        gpu.capturing[stream] = []
        return (err("CUDA_SUCCESS"),)

    @api
    def cuStreamEndCapture(hStream: Any) -> tuple:  # noqa: N802, N803
        stream = handle(hStream, "CUstream")
        if stream not in gpu.capturing:
            return err("CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"), H["CUgraph"](0)
        work = gpu.capturing.pop(stream)
        graph = 0x6000 + len(state["graphs"])
        state["graphs"][graph] = work
        return err("CUDA_SUCCESS"), H["CUgraph"](graph)

    @api
    def cuGraphInstantiate(hGraph: Any, flags: int) -> tuple:  # noqa: N802, N803
        graph = handle(hGraph, "CUgraph")
        size(flags)
        if graph not in state["graphs"]:
            return err("CUDA_ERROR_INVALID_VALUE"), H["CUgraphExec"](0)
        return err("CUDA_SUCCESS"), H["CUgraphExec"](graph + 0x1000)

    @api
    def cuGraphLaunch(hGraphExec: Any, hStream: Any) -> tuple:  # noqa: N802, N803
        graph = handle(hGraphExec, "CUgraphExec") - 0x1000
        handle(hStream, "CUstream")
        if graph not in state["graphs"]:
            return (err("CUDA_ERROR_INVALID_VALUE"),)
        for work in state["graphs"][graph]:
            work()
        gpu.graph_launches += 1
        return (err("CUDA_SUCCESS"),)

    @api
    def cuGraphDestroy(hGraph: Any) -> tuple:  # noqa: N802, N803
        handle(hGraph, "CUgraph")
        return (err("CUDA_SUCCESS"),)

    @api
    def cuGraphExecDestroy(hGraphExec: Any) -> tuple:  # noqa: N802, N803
        handle(hGraphExec, "CUgraphExec")
        return (err("CUDA_SUCCESS"),)

    @api
    def cuGetErrorName(error: Any) -> tuple:  # noqa: N802
        return err("CUDA_SUCCESS"), CUresult(error).name.encode()

    @api
    def cuGetErrorString(error: Any) -> tuple:  # noqa: N802
        name = CUresult(error).name
        return err("CUDA_SUCCESS"), DESCRIPTIONS.get(name, name.lower()).encode()

    return d


def modules(gpu: Any) -> Dict[str, types.ModuleType]:
    """sys.modules entries for `cuda`, `cuda.bindings` and the fake `cuda.bindings.driver`."""
    driver = make_driver(gpu)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.__path__, bindings.__path__ = [], []  # packages, as the real namespace
    cuda.bindings, bindings.driver = bindings, driver
    bindings.__version__ = "12.9.10"
    return {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.driver": driver}


FUNCTIONS: List[str] = sorted(
    n for n in vars(make_driver(type("G", (), {"cuda_calls": [], "cuda_fail": {}})())) if
    n.startswith("cu") and n[2:3].isupper())
