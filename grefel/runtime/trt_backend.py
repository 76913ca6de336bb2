"""TensorRT backend: a plain `.engine` plan run with cuda-bindings or pycuda.

- Tensor-name API only (TensorRT >= 8.5): `num_io_tensors`, `get_tensor_name/mode/dtype`,
  `get_tensor_profile_shape`, `set_input_shape`, `set_tensor_address`, `execute_async_v3`;
  every bool they return is checked (False is a BackendError, never a silent wrong shape).
- TensorRT dtypes map to numpy in our own table (`numpy_dtype`), not `trt.nptype`: TensorRT
  8.5.2's `nptype` (JetPack 5.1) builds `np.bool`, which numpy 1.24-1.26 no longer has.
- CUDA through one small layer (`grefel.runtime.cuda_layer`): cuda-bindings where importable
  (wheels on Jetson and desktop), else pycuda; `cuda=` or $GREFEL_CUDA forces one. Every failed
  CUDA call is a `CudaError` naming the call and the CUDA error, which becomes this backend's
  one-line BackendError.
- The device's primary context, shared with the CUDA runtime that TensorRT uses, is pushed
  around each operation (open, inference, close) by the thread doing it and popped by that same
  thread (pycuda's `Context.pop()` and `cuCtxPopCurrent` pop the calling thread's top). Between
  calls no context stays pushed, so any thread may use or close the backend, and an unclosed
  backend cannot make pycuda abort at interpreter exit; a finaliser frees the buffers of a
  backend that was never closed. One lock serialises inference (one execution context, one
  stream, one set of pinned buffers). `with backend.thread_context():` keeps the context
  current in a thread for a block of the caller's own CUDA work.
- `cuda_graph=True` (cuda-bindings only): per input shape, the first chunk runs normally (the
  warm-up TensorRT needs before capture), the second captures `execute_async_v3` into a CUDA
  graph, and later ones replay it with one launch; a capture that fails logs one warning and
  the backend goes on without graphs.
- Pinned host buffers and device buffers sized once for the profile's maximum batch, one
  non-default stream; a larger batch is split into chunks of that maximum, and a chunk below
  the profile's minimum (a fixed-batch or DLA engine, or a trtexec engine with --minShapes) is
  zero-padded up to it; samples never influence each other.
- Teardown order: execution context -> engine -> runtime -> device buffers -> context pop.
- An engine built for another GPU or TensorRT version is refused by comparing the sidecar
  (`NAME.json`: tensorrt_version, gpu_name, compute_capability, classes, input) with what is
  running, and a `None` from the deserialiser becomes a clear error. Any other exception from
  pycuda or TensorRT (no GPU, a bad device index, a driver error) becomes a BackendError, so
  `grefel predict`, `grefel bench` and `grefel export --verify` print one line.
- One process-wide TensorRT logger (`trt_logger`), shared with the builder: TensorRT keeps one
  logger per process and warns when a second one is passed while the first is in use.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from grefel._lazy import require
from grefel.contract import EngineSidecar
from grefel.errors import first_line
from grefel.runtime.base import (
    INPUT_SHAPE,
    Backend,
    BackendError,
    Outputs,
    check_outputs,
    generic_classes,
    read_sidecar,
)
from grefel.runtime.cuda_layer import CudaError, CudaLayer, open_layer

__all__ = ["TensorRTBackend", "check_build_target", "numpy_dtype", "sidecar_facts", "trt_logger"]

log = logging.getLogger(__name__)

# TensorRT's module-level DataType aliases -> numpy (Polygraphy's own table does the same).
_NUMPY_DTYPES = (("float32", "float32"), ("float16", "float16"), ("int32", "int32"),
                 ("int8", "int8"), ("bool", "bool"), ("uint8", "uint8"), ("int64", "int64"))
_LOGGER_LOCK = threading.Lock()
_LOGGER: List[Any] = []  # [tensorrt module, its logger]


def trt_logger(trt: Any) -> Any:
    """The one process-wide `trt.Logger(WARNING)` (per tensorrt module object)."""
    with _LOGGER_LOCK:
        if not _LOGGER or _LOGGER[0] is not trt:
            _LOGGER[:] = [trt, trt.Logger(trt.Logger.WARNING)]
        return _LOGGER[1]


def numpy_dtype(trt: Any, dtype: Any) -> np.dtype:
    """numpy dtype of a TensorRT DataType, without `trt.nptype` (broken on 8.5.2 + numpy 1.24+)."""
    for trt_name, np_name in _NUMPY_DTYPES:
        member = getattr(trt, trt_name, None)
        if member is not None and dtype == member:
            return np.dtype(np_name)
    raise BackendError(f"TensorRT tensor type {dtype} has no numpy equivalent here")


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, CudaError):  # already "cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY"
        return (str(exc).strip().splitlines() or [""])[0]
    return first_line(exc)


class _Owned:
    """What a backend allocated in its context, freed in this order by `_free`."""

    def __init__(self) -> None:
        self.graphs: List[Tuple[Any, Any]] = []  # (graph, graph exec)
        self.device: List[Any] = []
        self.pinned: List[np.ndarray] = []
        self.streams: List[Any] = []
        self.events: List[Any] = []

    def __bool__(self) -> bool:
        return any((self.graphs, self.device, self.pinned, self.streams, self.events))


def _free_graphs(layer: CudaLayer, owned: _Owned) -> None:
    while owned.graphs:
        layer.destroy_graph(*owned.graphs.pop())


def _free(layer: CudaLayer, owned: _Owned) -> None:
    """Device buffers, pinned buffers, streams and events (context current); the first
    CudaError is raised after everything else was tried."""
    first: Optional[CudaError] = None
    for items, free in ((owned.device, layer.free), (owned.pinned, layer.free_pinned),
                        (owned.streams, layer.destroy_stream),
                        (owned.events, layer.destroy_event)):
        for item in items:
            try:
                free(item)
            except CudaError as exc:
                first = first or exc
        items.clear()
    if first is not None:
        raise first


def _release(layer: CudaLayer, owned: _Owned) -> None:
    """Finaliser of a backend that was never closed: free its buffers, release the context."""
    if not owned:
        return
    try:
        layer.push()
    except Exception:  # the driver is already gone at interpreter exit
        return
    try:
        with contextlib.suppress(Exception):
            _free_graphs(layer, owned)
        with contextlib.suppress(Exception):
            _free(layer, owned)
    finally:
        with contextlib.suppress(Exception):
            layer.pop()
        with contextlib.suppress(Exception):
            layer.release()


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
    if built_cc is not None and built_cc != cc:  # "8.7": read_engine_sidecar normalises it
        problems.append(f"compute capability {built_cc} (running {cc})")
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
        cuda: "cuda-bindings" or "pycuda" (None: $GREFEL_CUDA, else cuda-bindings when
            importable, else pycuda).
        cuda_graph: replay `execute_async_v3` as a CUDA graph per input shape (cuda-bindings).
    """

    name = "tensorrt"

    def __init__(self, path: Path, gpu: int = 0, sidecar: bool = True,
                 cuda: Optional[str] = None, cuda_graph: bool = False) -> None:
        super().__init__(path)
        self.gpu = gpu
        self._read_sidecar = sidecar
        self._cuda_choice = cuda
        self.cuda_graph = cuda_graph
        self.cuda_layer = ""  # the layer in use once open: "cuda-bindings" or "pycuda"
        self.max_batch = 0
        self.min_batch = 1
        self._trt: Any = None
        self._layer: Optional[CudaLayer] = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._events: Tuple[Any, ...] = ()
        self._input: Optional[_IO] = None
        self._outputs: List[_IO] = []
        self._owned = _Owned()
        self._graphs: Dict[Tuple[int, ...], Any] = {}  # input shape -> graph exec
        self._warm: set = set()  # input shapes run once (captured on their next run)
        self._finalizer: Optional[weakref.finalize] = None
        self._lock = threading.RLock()
        self._local = threading.local()

    # -- CUDA context ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        """The primary context current in this thread for the block; pushed and popped here."""
        depth = getattr(self._local, "depth", 0)
        if depth or self._layer is None:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        layer = self._layer
        layer.push()
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            layer.pop()  # pops this thread's top, the context pushed above

    @contextlib.contextmanager
    def thread_context(self) -> Iterator[TensorRTBackend]:
        """Keep the backend's CUDA context current in this thread for the block (for the
        caller's own CUDA work; inference pushes it by itself)."""
        if self._layer is None:
            raise BackendError(f"{self.describe()}: open the backend before using it in a thread")
        with self._current():
            yield self

    # -- open / close ---------------------------------------------------------------------------

    def _open(self) -> None:
        if not Path(self.path).is_file():
            raise BackendError(f"{self.path}: no such engine file")
        sidecar = read_sidecar(Path(self.path)) if self._read_sidecar else None
        self._trt = require("tensorrt")
        layer = open_layer(self._cuda_choice)
        try:
            gpu_name, cc = self._device(layer)
            self._layer, self.cuda_layer = layer, layer.name
            check_build_target(Path(self.path), sidecar, self._trt.__version__, gpu_name, cc)
            self._finalizer = weakref.finalize(self, _release, layer, self._owned)
            with self._current():
                self._load(Path(self.path).read_bytes())
            self.device = f"cuda:{self.gpu} ({gpu_name})"
            self.classes = self._classes(sidecar)
            if self.cuda_graph and not layer.graphs:
                log.warning("%s: --cuda-graph needs cuda-bindings (%s is in use): running "
                            "without CUDA graphs", self.path, layer.name)
                self.cuda_graph = False
        except BaseException as exc:
            with contextlib.suppress(BackendError):  # the first error is the one to report
                self._close()
            if isinstance(exc, (BackendError, KeyboardInterrupt, SystemExit)):
                raise
            raise BackendError(f"{self.path}: TensorRT could not load this engine "
                               f"({_first_line(exc)})") from None

    def _device(self, layer: CudaLayer) -> Tuple[str, str]:
        """(GPU name, compute capability) of device `self.gpu`, its primary context retained."""
        try:
            return layer.open(self.gpu)
        except CudaError as exc:
            with contextlib.suppress(CudaError):
                layer.release()
            raise BackendError(f"{self.path}: cannot use CUDA device {self.gpu} "
                               f"({_first_line(exc)}); is a GPU visible (nvidia-smi) and the "
                               "device index right?") from None

    def _load(self, plan: bytes) -> None:
        trt, layer = self._trt, self._layer
        self._runtime = trt.Runtime(trt_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendError(
                f"{self.path}: not a TensorRT engine, or built by another TensorRT version "
                f"(running {trt.__version__}); rebuild it here from the ONNX file"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"{self.path}: TensorRT could not create an execution context")
        self._stream = layer.stream()
        self._owned.streams.append(self._stream)
        self._events = (layer.event(), layer.event())
        self._owned.events.extend(self._events)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise BackendError(f"{self.path}: expected one input tensor, got {inputs}")
        shape = tuple(self._engine.get_tensor_shape(inputs[0]))
        if -1 in shape:
            profile = self._engine.get_tensor_profile_shape(inputs[0], 0)
            min_shape, max_shape = tuple(profile[0]), tuple(profile[2])
        else:  # a fixed-batch engine: smaller chunks are zero-padded
            min_shape = max_shape = shape
        if tuple(max_shape[1:]) != INPUT_SHAPE:
            raise BackendError(f"{self.path}: input shape {max_shape}, expected "
                               f"(N, {', '.join(map(str, INPUT_SHAPE))})")
        self.max_batch, self.min_batch = int(max_shape[0]), max(int(min_shape[0]), 1)
        self._set_shape(inputs[0], max_shape)
        self._input = self._allocate(inputs[0], max_shape)
        self._outputs = [
            self._allocate(n, tuple(self._context.get_tensor_shape(n)))
            for n in names
            if n not in inputs
        ]
        check_outputs({io.name: None for io in self._outputs})

    def _set_shape(self, name: str, shape: Tuple[int, ...]) -> None:
        if not self._context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise BackendError(
                f"{self.path}: TensorRT refused input shape {tuple(shape)} for {name!r} "
                f"(the engine's profile is batch {self.min_batch}..{self.max_batch})"
            )

    def _allocate(self, name: str, shape: Tuple[int, ...]) -> _IO:
        """Pinned host + device buffer for `shape` (the profile max), bound to the context."""
        dtype = numpy_dtype(self._trt, self._engine.get_tensor_dtype(name))
        host = self._layer.pinned(int(np.prod(shape)), dtype)
        self._owned.pinned.append(host)
        device = self._layer.alloc(host.nbytes)
        self._owned.device.append(device)
        if not self._context.set_tensor_address(name, int(device)):
            raise BackendError(f"{self.path}: TensorRT refused the buffer address of {name!r}")
        return _IO(name, dtype, host, device)

    def _classes(self, sidecar: Optional[EngineSidecar]) -> Tuple[str, ...]:
        """The sidecar's class names (checked by `Backend.__enter__` against the width)."""
        probs = next(io for io in self._outputs if io.name == "probs")
        self.output_width = probs.host.size // max(self.max_batch, 1)
        classes = sidecar_facts(sidecar)["classes"]
        if classes:
            return tuple(classes)
        return generic_classes(self.output_width)

    def _close(self) -> None:
        """CUDA graphs -> context -> engine -> runtime -> buffers, stream, events -> pop the
        CUDA context -> release it."""
        with self._lock:
            layer = self._layer
            if layer is None:
                self._context = self._engine = self._runtime = None
                return
            try:
                with self._current():
                    try:
                        _free_graphs(layer, self._owned)
                    finally:
                        self._graphs.clear()
                        self._context = None
                        self._engine = None
                        self._runtime = None
                        self._input, self._outputs, self._stream = None, [], None
                        _free(layer, self._owned)
                if self._finalizer is not None:
                    self._finalizer.detach()
                self._layer = None
                layer.release()
            except CudaError as exc:
                self._layer = None
                raise BackendError(f"{self.path}: closing the engine failed "
                                   f"({_first_line(exc)})") from None

    # -- inference ------------------------------------------------------------------------------

    def _infer(self, batch: np.ndarray) -> Outputs:
        return self._run(batch, None)

    def infer_timed(self, batch: np.ndarray, *,
                    checked: bool = False) -> Tuple[Outputs, Optional[float]]:
        times: List[float] = []
        outputs = self._check_finite(self._run(self._check(batch, values=not checked), times))
        return outputs, float(sum(times))

    def _run(self, batch: np.ndarray, gpu_times: Optional[List[float]]) -> Outputs:
        """Batches above the profile's maximum run as consecutive chunks of at most that size."""
        with self._lock:
            try:
                with self._current():
                    parts = [
                        self._run_chunk(batch[i : i + self.max_batch], gpu_times)
                        for i in range(0, len(batch), self.max_batch)
                    ]
            except BackendError:
                raise
            except Exception as exc:  # pycuda / TensorRT errors
                raise BackendError(f"{self.path}: inference failed ({_first_line(exc)})") from None
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _run_chunk(self, chunk: np.ndarray, gpu_times: Optional[List[float]]) -> Outputs:
        n = len(chunk)
        if n < self.min_batch:  # below the profile's minimum (fixed-batch / DLA engines)
            pad = np.zeros((self.min_batch - n,) + chunk.shape[1:], chunk.dtype)
            out = self._run_chunk(np.concatenate([chunk, pad]), gpu_times)
            return {name: value[:n] for name, value in out.items()}
        layer, ctx, stream, inp = self._layer, self._context, self._stream, self._input
        self._set_shape(inp.name, chunk.shape)
        n_in = chunk.size
        inp.host[:n_in] = chunk.ravel()  # casts to the engine's input dtype (FP16 I/O engines)
        layer.htod(inp.device, inp.host[:n_in], stream)
        start, end = self._events
        if gpu_times is not None:
            layer.record(start, stream)
        self._enqueue(tuple(chunk.shape))
        if gpu_times is not None:
            layer.record(end, stream)
        shapes = {io.name: tuple(ctx.get_tensor_shape(io.name)) for io in self._outputs}
        for io in self._outputs:
            count = int(np.prod(shapes[io.name]))
            layer.dtoh(io.host[:count], io.device, stream)
        layer.synchronize(stream)
        if gpu_times is not None:
            gpu_times.append(layer.elapsed_ms(start, end))
        return {
            io.name: io.host[: int(np.prod(shapes[io.name]))]
            .reshape(shapes[io.name])
            .astype(np.float32)  # a copy: the pinned buffer is reused by the next call
            for io in self._outputs
        }

    def _enqueue(self, shape: Tuple[int, ...]) -> None:
        """execute_async_v3, or with `cuda_graph` its CUDA graph for this input shape: the
        first run of a shape is the warm-up, the second captures, later ones replay."""
        layer, stream = self._layer, self._stream
        if self.cuda_graph:
            graph_exec = self._graphs.get(shape)
            if graph_exec is None and shape in self._warm:
                graph_exec = self._capture(shape)
            if graph_exec is not None:
                layer.launch(graph_exec, stream)
                return
            self._warm.add(shape)
        if not self._context.execute_async_v3(layer.stream_handle(stream)):
            raise BackendError(f"{self.path}: TensorRT failed to enqueue the inference")

    def _capture(self, shape: Tuple[int, ...]) -> Optional[Any]:
        """The graph exec of one enqueue at `shape`, or None (one warning; graphs off) when
        capture fails: the stream is taken out of capture mode either way."""
        layer, stream = self._layer, self._stream
        graph = graph_exec = None
        capturing = False
        try:
            layer.begin_capture(stream)
            capturing = True
            enqueued = self._context.execute_async_v3(layer.stream_handle(stream))
            capturing = False
            graph = layer.end_capture(stream)
            if not enqueued:
                raise CudaError("execute_async_v3 returned False during capture")
            graph_exec = layer.instantiate(graph)
        except CudaError as exc:
            if capturing:
                with contextlib.suppress(CudaError):
                    graph = layer.end_capture(stream)
            with contextlib.suppress(CudaError):
                layer.destroy_graph(graph, graph_exec)
            log.warning("%s: CUDA graph capture failed at input shape %s (%s): running without "
                        "CUDA graphs", self.path, shape, _first_line(exc))
            self.cuda_graph = False
            return None
        self._owned.graphs.append((graph, graph_exec))
        self._graphs[shape] = graph_exec
        return graph_exec
