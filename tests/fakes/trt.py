"""One fake `tensorrt` + `pycuda.driver` for every TensorRT test (no GPU exists on CI machines).

The fake follows the real API, generation by generation, from the API snapshots in
`tests/data/trt_api/trt-VERSION.json` (dumped from the real bindings; 8.5.2 derived from 8.6.1,
see `make_snapshots.py`):

- enums are IntEnums with the real member values of that generation (STRONGLY_TYPED is 1 in
  10.x and 0 in 11.x; BuilderFlag.FP16 does not exist in 11.x);
- every fake object refuses a public attribute that its real class lacks in that generation
  (AttributeError, as the real module raises), and a property that is read-only there;
- arguments are type-checked like pybind11 does (an enum must be that enum, a size an int, a
  cache an ITimingCache): a wrong type raises `TypeError: ... incompatible function arguments`;
- it fails the way TensorRT does: `set_input_shape` returns False outside the profile and keeps
  the old shape, profiles may have min > 1, `create_timing_cache` returns None for bytes it
  cannot read, `add_optimization_profile` returns -1 for an invalid profile, a strongly typed
  network with BuilderFlag.FP16 or INT8 gives no plan, 8.5.2's `nptype` raises AttributeError (it
  builds `np.bool`, which numpy 1.24-1.26 lacks);
- pycuda: `Context.push()` pushes on the calling thread's context stack and the static
  `Context.pop()` pops the calling thread's top (pycuda's `context::pop`), pycuda calls need a
  current context on the calling thread, and `Gpu.leftover()` lists the stacks that would make
  pycuda abort at interpreter exit ("The context stack was not empty upon module cleanup").

Every access to a public member of the TensorRT fake is recorded in `Gpu.calls` as
`Call(cls, member, kind, args)`, with the arguments encoded (`encode`), so that the real-bindings
test can replay each call our code made against the real pybind module.
"""

from __future__ import annotations

import enum
import functools
import json
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

SNAPSHOTS = Path(__file__).resolve().parents[1] / "data" / "trt_api"
GENERATIONS = {"8.5": "8.5.2", "8.6": "8.6.1", "10.3": "10.3.0", "10.13": "10.13.0.35",
               "11": "11.4.0.106"}
FAKE_CLASSES = ["Logger", "Builder", "INetworkDefinition", "OnnxParser", "ParserError",
                "IBuilderConfig", "IOptimizationProfile", "ITimingCache", "IHostMemory", "ILayer",
                "ITensor", "Runtime", "ICudaEngine", "IExecutionContext"]
ENUMS = ["DataType", "NetworkDefinitionCreationFlag", "BuilderFlag", "MemoryPoolType",
         "DeviceType", "LayerType", "TensorIOMode", "ProfilingVerbosity"]
IMAGES = "images"
CHW = (3, 112, 112)
CUDA_DEFAULT = ["pycuda"]  # Gpu.cuda's default; tests/test_runtime_trt.py runs both layers


@functools.lru_cache(maxsize=None)
def surface(gen: str) -> Dict[str, Any]:
    """The API snapshot of one generation ("8.5", "8.6", "10.3", "10.13", "11")."""
    return json.loads((SNAPSHOTS / f"trt-{GENERATIONS[gen]}.json").read_text())


@dataclass(frozen=True)
class Call:
    cls: str  # real class name, or "tensorrt" for module-level names
    member: str
    kind: str  # "init", "method", "get", "set", "enum", "attr"
    args: Tuple[Any, ...] = ()


def encode(value: Any) -> Any:
    """A call argument as JSON, rebuildable with the real module (tests/trt_real/probe.py)."""
    if isinstance(value, enum.Enum):
        return {"enum": type(value)._trt_name_, "name": value.name}
    if isinstance(value, _Real):
        return {"obj": type(value)._real}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return {type(value).__name__ if value is not None else "none": value}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [encode(v) for v in value]}
    return {"other": type(value).__name__}


def _incompatible(cls: str, member: str, args: Sequence[Any]) -> TypeError:
    kinds = ", ".join(type(a).__name__ for a in args)
    return TypeError(f"{member}(): incompatible function arguments. The following argument "
                     f"types are supported: (see tensorrt.{cls}.{member}) Invoked with: {kinds}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, enum.Enum))


def _from_outside(depth: int = 2) -> bool:
    """Is the access made by code under test (not by this fake itself)?"""
    return sys._getframe(depth).f_globals.get("__name__") != __name__


# --- enums -------------------------------------------------------------------------------------
class _RecordingEnumMeta(enum.EnumMeta):
    """Records reads of enum members (presence matters per generation)."""

    def __getattribute__(cls, name: str) -> Any:
        value = super().__getattribute__(name)
        if not name.startswith("_") and isinstance(value, enum.Enum) and _from_outside():
            gpu = type.__getattribute__(cls, "__dict__").get("_gpu")
            if gpu is not None:
                gpu.calls.append(Call(type.__getattribute__(cls, "_trt_name_"), name, "enum"))
        return value


class _TrtEnum(enum.IntEnum, metaclass=_RecordingEnumMeta):
    """A TensorRT enum: real member values; `_trt_name_` is its name in the real module."""


def _make_enum(name: str, values: Dict[str, int], gpu: Gpu, trt_name: str) -> Any:
    ordered = sorted(values.items(), key=lambda kv: kv[1])
    cls = _TrtEnum(name, ordered)
    type.__setattr__(cls, "_trt_name_", trt_name)
    type.__setattr__(cls, "_gpu", gpu)
    return cls


# --- the shared fake GPU state -----------------------------------------------------------------
@dataclass
class EngineSpec:
    """What a fake plan deserialises to: one input, outputs computed by `fn` at the input's
    current shape, the profile (min, opt, max batch) or a static batch."""

    fn: Callable[[np.ndarray], Dict[str, np.ndarray]]
    outputs: Dict[str, Tuple[int, ...]]  # name -> per-sample shape
    profile: Tuple[int, int, int] = (1, 1, 4)
    static: Optional[int] = None
    input_dtype: str = "FLOAT"  # DataType member name
    output_dtype: str = "FLOAT"


@dataclass
class LayerSpec:
    name: str
    type: str  # LayerType member name
    outputs: List[str]  # DataType member names
    metadata: str = ""


def default_layers() -> List[LayerSpec]:
    return [
        LayerSpec("/model/image/input_layer/Conv", "CONVOLUTION", ["FLOAT"],
                  "[ONNX Layer: /model/image/input_layer/Conv]"),
        LayerSpec("/model/levels.0/attn/Softmax", "SOFTMAX", ["FLOAT"],
                  "[ONNX Layer: /model/levels.0/attn/Softmax]"),
        LayerSpec("/model/fusion/se/Mul", "ELEMENTWISE", ["FLOAT"],
                  "[ONNX Layer: /model/fusion/se/Mul]"),
        LayerSpec("Gemm_4_1", "MATRIX_MULTIPLY", ["FLOAT"], "[ONNX Layer: Gemm_4]"),
        LayerSpec("Gemm_45", "MATRIX_MULTIPLY", ["FLOAT"], "[ONNX Layer: Gemm_45]"),
        LayerSpec("/model/Shape", "SHAPE", ["INT32"], "[ONNX Layer: /model/Shape]"),
        # a helper layer the parser names itself; its metadata names the ONNX node
        LayerSpec("(Unnamed Layer* 7) [Shuffle]", "SHUFFLE", ["FLOAT"],
                  "[ONNX Layer: /model/fusion/se/Mul]"),
    ]


@dataclass
class Gpu:
    """State shared by the TensorRT and pycuda fakes of one test."""

    gen: str = "10.3"
    gpu_name: str = "Fake Orin"
    cc: Tuple[int, int] = (8, 7)
    devices: int = 1
    no_gpu: bool = False
    plan: Optional[bytes] = b"\x00PLAN"  # what build_serialized_network returns
    engines: Dict[bytes, EngineSpec] = field(default_factory=dict)
    parse_errors: Sequence[str] = ()
    layers: List[LayerSpec] = field(default_factory=default_layers)
    input_batch: int = -1  # the ONNX input's batch dimension (-1 dynamic)
    num_dla_cores: int = 2
    dla_layer_types: Set[str] = field(default_factory=lambda: {"CONVOLUTION", "ELEMENTWISE"})
    fail_profile: bool = False
    raise_on_build: Optional[BaseException] = None
    on_build: Optional[Callable[[], None]] = None  # runs inside build_serialized_network
    calls: List[Call] = field(default_factory=list)
    allocs: Dict[int, np.ndarray] = field(default_factory=dict)
    loggers: List[Any] = field(default_factory=list)  # every trt.Logger created
    logged: List[str] = field(default_factory=list)  # TensorRT's error messages
    last: Dict[str, Any] = field(default_factory=dict)  # last builder/config/context made
    stacks: Dict[int, List[Any]] = field(default_factory=dict)  # thread id -> context stack
    freed: List[int] = field(default_factory=list)
    # the CUDA layer the backend gets: "pycuda" (only pycuda importable) or "cuda-bindings"
    # (both importable, so the backend's own preference picks it); see tests/fakes/cuda_bindings
    cuda: str = field(default_factory=lambda: CUDA_DEFAULT[0])
    cuda_fail: Dict[str, str] = field(default_factory=dict)  # cuda-bindings function -> CUresult
    cuda_calls: List[str] = field(default_factory=list)  # cuda-bindings functions called
    host: Dict[int, np.ndarray] = field(default_factory=dict)  # pinned blocks (cuda-bindings)
    freed_host: List[int] = field(default_factory=list)
    capturing: Dict[int, List[Callable[[], None]]] = field(default_factory=dict)  # stream -> work
    graph_launches: int = 0
    enqueues: int = 0  # execute_async_v3 calls that ran (not captured)
    retained: int = 0  # primary-context references held (cuda-bindings)

    def stack(self) -> List[Any]:
        return self.stacks.setdefault(threading.get_ident(), [])

    def leftover(self) -> Dict[int, int]:
        """Threads whose pycuda context stack is not empty (pycuda would abort at exit)."""
        return {tid: len(s) for tid, s in self.stacks.items() if s}

    def members(self, cls: str) -> Dict[str, Any]:
        return surface(self.gen)["classes"][cls]["members"]


# --- strict base class -------------------------------------------------------------------------
class _Real:
    """Refuses public members its real class lacks in this generation; records every use."""

    _real = "object"
    _gpu: Gpu

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        cls = type(self)._real
        gpu = object.__getattribute__(self, "_gpu")
        info = gpu.members(cls).get(name)
        if info is None:
            raise AttributeError(f"'tensorrt.{cls}' object has no attribute '{name}'")
        value = object.__getattribute__(self, name)
        if info["kind"] != "instancemethod":
            gpu.calls.append(Call(cls, name, "get"))
            return value

        @functools.wraps(value)
        def method(*args: Any) -> Any:
            gpu.calls.append(Call(cls, name, "method", tuple(encode(a) for a in args)))
            return value(*args)

        return method

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            cls = type(self)._real
            gpu = object.__getattribute__(self, "_gpu")
            info = gpu.members(cls).get(name)
            if info is None:
                raise AttributeError(f"'tensorrt.{cls}' object has no attribute '{name}'")
            if info["kind"] != "property" or not info.get("settable"):
                raise AttributeError(f"can't set attribute '{name}' of tensorrt.{cls}")
            gpu.calls.append(Call(cls, name, "set", (encode(value),)))
        object.__setattr__(self, name, value)


def make_fakes(gpu: Gpu) -> Tuple[types.ModuleType, types.ModuleType]:
    """(tensorrt, pycuda.driver) fakes of `gpu.gen`, sharing `gpu`'s state."""
    return _make_trt(gpu), _make_cuda(gpu)


class _FakeModule(types.ModuleType):
    """The `tensorrt` module: records reads of its public names by the code under test."""

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if not name.startswith("_") and _from_outside():
            super().__getattribute__("_gpu").calls.append(Call("tensorrt", name, "attr"))
        return value


def _make_trt(gpu: Gpu) -> types.ModuleType:  # noqa: C901 - one generation of the fake API
    snap = surface(gpu.gen)
    trt = _FakeModule("tensorrt")
    trt._gpu = gpu
    trt.__version__ = snap["version"]
    E = {name: _make_enum(name, snap["classes"][name]["enum"], gpu, name) for name in ENUMS
         if name in snap["classes"]}
    for name, cls in E.items():
        setattr(trt, name, cls)
    DataType = E["DataType"]
    for const, member in snap["constants"].items():
        setattr(trt, const, DataType[member])
    Severity = _make_enum("Severity", snap["classes"]["Logger"]["enum"], gpu, "ILogger.Severity")

    def real(cls_name: str) -> Callable[[type], type]:
        def wrap(cls: type) -> type:
            cls._real, cls._gpu = cls_name, gpu
            return cls
        return wrap

    def check(cls: str, member: str, args: Sequence[Any], ok: bool) -> None:
        if not ok:
            raise _incompatible(cls, member, args)

    def record_init(cls: str, args: Sequence[Any]) -> None:
        gpu.calls.append(Call(cls, "__init__", "init", tuple(encode(a) for a in args)))

    def log_error(msg: str) -> None:
        gpu.logged.append(msg)

    @real("Logger")
    class Logger(_Real):
        def __init__(self, min_severity: Any = None) -> None:
            record_init("Logger", () if min_severity is None else (min_severity,))
            check("Logger", "__init__", (min_severity,),
                  min_severity is None or isinstance(min_severity, Severity))
            self._severity = min_severity
            gpu.loggers.append(self)

    for sev in Severity:
        setattr(Logger, sev.name, sev)
    Logger.Severity = Severity

    @real("ITensor")
    class ITensor(_Real):
        def __init__(self, name: str, shape: Tuple[int, ...], dtype: Any) -> None:
            object.__setattr__(self, "name", name)
            object.__setattr__(self, "shape", tuple(shape))
            object.__setattr__(self, "dtype", dtype)

    @real("ILayer")
    class ILayer(_Real):
        def __init__(self, spec: LayerSpec) -> None:
            object.__setattr__(self, "name", spec.name)
            object.__setattr__(self, "type", E["LayerType"][spec.type])
            object.__setattr__(self, "metadata", spec.metadata)
            object.__setattr__(self, "precision", DataType.FLOAT)
            self._spec = spec
            self._outs = [ITensor(f"{spec.name}_out{j}", (), DataType[d])
                          for j, d in enumerate(spec.outputs)]
            self._precision_set: Optional[Any] = None
            self._output_types: Dict[int, Any] = {}

        @property
        def num_outputs(self) -> int:
            return len(self._outs)

        def get_output(self, index: int) -> ITensor:
            check("ILayer", "get_output", (index,), _is_int(index))
            return self._outs[index]

        def set_output_type(self, index: int, dtype: Any) -> None:
            check("ILayer", "set_output_type", (index, dtype),
                  _is_int(index) and isinstance(dtype, DataType))
            self._output_types[index] = dtype

        def __setattr__(self, name: str, value: Any) -> None:
            if name == "precision":
                check("ILayer", "precision", (value,), isinstance(value, DataType))
                super().__setattr__(name, value)
                self._precision_set = value
                return
            super().__setattr__(name, value)

    @real("INetworkDefinition")
    class INetworkDefinition(_Real):
        def __init__(self, flags: int) -> None:
            self._flags = flags
            self._layers = [ILayer(s) for s in gpu.layers]
            self._input = ITensor(IMAGES, (gpu.input_batch, *CHW), DataType.FLOAT)
            self._parsed: Optional[Path] = None

        @property
        def num_layers(self) -> int:
            return len(self._layers)

        @property
        def num_inputs(self) -> int:
            return 1

        def get_layer(self, index: int) -> ILayer:
            check("INetworkDefinition", "get_layer", (index,), _is_int(index))
            return self._layers[index]

        def get_input(self, index: int) -> ITensor:
            check("INetworkDefinition", "get_input", (index,), _is_int(index))
            return self._input

        def _strongly_typed(self) -> bool:
            flag = getattr(E["NetworkDefinitionCreationFlag"], "STRONGLY_TYPED", None)
            if flag is None:
                return False
            return gpu.gen == "11" or bool(self._flags & (1 << int(flag)))

    @real("ParserError")
    class ParserError(_Real):
        def __init__(self, text: str) -> None:
            self._text = text

        def desc(self) -> str:
            return self._text

        def __str__(self) -> str:
            return self._text

    @real("OnnxParser")
    class OnnxParser(_Real):
        def __init__(self, network: Any, logger: Any) -> None:
            record_init("OnnxParser", (network, logger))
            check("OnnxParser", "__init__", (network, logger),
                  isinstance(network, INetworkDefinition) and isinstance(logger, Logger))
            self._network = network
            object.__setattr__(self, "num_errors", 0)

        def parse_from_file(self, model: str) -> bool:
            check("OnnxParser", "parse_from_file", (model,), isinstance(model, str))
            self._network._parsed = Path(model)
            object.__setattr__(self, "num_errors", len(gpu.parse_errors))
            return not gpu.parse_errors

        def get_error(self, index: int) -> ParserError:
            check("OnnxParser", "get_error", (index,), _is_int(index))
            return ParserError(gpu.parse_errors[index])

    @real("IHostMemory")
    class IHostMemory(_Real):
        def __init__(self, data: bytes) -> None:
            self._data = bytes(data)

        @property
        def nbytes(self) -> int:
            return len(self._data)

        def __bytes__(self) -> bytes:
            return self._data

        def __buffer__(self, flags: int) -> memoryview:
            return memoryview(self._data)

    @real("ITimingCache")
    class ITimingCache(_Real):
        """Serialised as b"TCACHE:<gpu>:<entry>,<entry>" (sorted)."""

        def __init__(self, origin: str, entries: Set[str]) -> None:
            self._origin, self._entries = origin, set(entries)

        @classmethod
        def _parse(cls, data: bytes) -> Optional[ITimingCache]:
            if not data:
                return cls(gpu.gpu_name, set())
            if not data.startswith(b"TCACHE:"):
                return None  # what TensorRT does with bytes it cannot read
            _, origin, entries = data.decode().split(":", 2)
            return cls(origin, {e for e in entries.split(",") if e})

        def serialize(self) -> IHostMemory:
            text = f"TCACHE:{self._origin}:" + ",".join(sorted(self._entries))
            return IHostMemory(text.encode())

        def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
            check("ITimingCache", "combine", (input_cache, ignore_mismatch),
                  isinstance(input_cache, ITimingCache) and isinstance(ignore_mismatch, bool))
            if input_cache._origin != self._origin and not ignore_mismatch:
                return False
            self._entries |= input_cache._entries
            return True

    @real("IOptimizationProfile")
    class IOptimizationProfile(_Real):
        def __init__(self) -> None:
            self._shapes: Dict[str, Tuple[Tuple[int, ...], ...]] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
            dims_ok = all(isinstance(d, (tuple, list)) and all(_is_int(x) for x in d)
                          for d in (min, opt, max))
            check("IOptimizationProfile", "set_shape", (input, min, opt, max),
                  isinstance(input, str) and dims_ok)
            self._shapes[input] = (tuple(min), tuple(opt), tuple(max))

        def _valid(self) -> bool:
            return bool(self._shapes) and all(
                all(a <= b <= c for a, b, c in zip(*s)) for s in self._shapes.values())

    @real("IBuilderConfig")
    class IBuilderConfig(_Real):
        def __init__(self) -> None:
            self._flags = {E["BuilderFlag"].TF32} if "TF32" in E["BuilderFlag"].__members__ \
                else set()
            self._pools: Dict[Any, int] = {}
            self._profiles: List[IOptimizationProfile] = []
            self._cache: Optional[ITimingCache] = None
            self._ignore_mismatch: Optional[bool] = None
            object.__setattr__(self, "default_device_type", E["DeviceType"].GPU)
            object.__setattr__(self, "DLA_core", -1)
            object.__setattr__(self, "profiling_verbosity",
                               E["ProfilingVerbosity"].LAYER_NAMES_ONLY)
            gpu.last["config"] = self

        def set_flag(self, flag: Any) -> None:
            check("IBuilderConfig", "set_flag", (flag,), isinstance(flag, E["BuilderFlag"]))
            self._flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            check("IBuilderConfig", "clear_flag", (flag,), isinstance(flag, E["BuilderFlag"]))
            self._flags.discard(flag)

        def get_flag(self, flag: Any) -> bool:
            check("IBuilderConfig", "get_flag", (flag,), isinstance(flag, E["BuilderFlag"]))
            return flag in self._flags

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            check("IBuilderConfig", "set_memory_pool_limit", (pool, pool_size),
                  isinstance(pool, E["MemoryPoolType"]) and _is_int(pool_size))
            self._pools[pool] = int(pool_size)

        def add_optimization_profile(self, profile: Any) -> int:
            check("IBuilderConfig", "add_optimization_profile", (profile,),
                  isinstance(profile, IOptimizationProfile))
            if gpu.fail_profile or not profile._valid():
                log_error("IBuilderConfig::addOptimizationProfile: invalid profile")
                return -1
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: Any) -> Optional[ITimingCache]:
            check("IBuilderConfig", "create_timing_cache", (serialized_timing_cache,),
                  isinstance(serialized_timing_cache, (bytes, bytearray, memoryview)))
            return ITimingCache._parse(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
            check("IBuilderConfig", "set_timing_cache", (cache, ignore_mismatch),
                  isinstance(cache, ITimingCache) and isinstance(ignore_mismatch, bool))
            if cache._origin != gpu.gpu_name and not ignore_mismatch:
                return False
            self._cache, self._ignore_mismatch = cache, ignore_mismatch
            return True

        def get_timing_cache(self) -> Optional[ITimingCache]:
            return self._cache

        def can_run_on_DLA(self, layer: Any) -> bool:  # noqa: N802 - TensorRT's name
            check("IBuilderConfig", "can_run_on_DLA", (layer,), isinstance(layer, ILayer))
            return layer._spec.type in gpu.dla_layer_types

        def __setattr__(self, name: str, value: Any) -> None:
            kinds = {"default_device_type": E["DeviceType"], "DLA_core": int,
                     "profiling_verbosity": E["ProfilingVerbosity"]}
            if name in kinds:
                ok = _is_int(value) if kinds[name] is int else isinstance(value, kinds[name])
                check("IBuilderConfig", name, (value,), ok)
            super().__setattr__(name, value)

    @real("Builder")
    class Builder(_Real):
        def __init__(self, logger: Any) -> None:
            record_init("Builder", (logger,))
            check("Builder", "__init__", (logger,), isinstance(logger, Logger))
            object.__setattr__(self, "platform_has_fast_fp16", True)
            object.__setattr__(self, "platform_has_fast_int8", True)  # absent in 11.x's surface
            object.__setattr__(self, "num_DLA_cores", gpu.num_dla_cores)
            self._logger = logger
            gpu.last["builder"] = self

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            check("Builder", "create_network", (flags,), _is_int(flags))
            network = INetworkDefinition(int(flags))
            gpu.last["network"] = network
            return network

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: Any, config: Any) -> Optional[IHostMemory]:
            check("Builder", "build_serialized_network", (network, config),
                  isinstance(network, INetworkDefinition) and isinstance(config, IBuilderConfig))
            if gpu.raise_on_build is not None:
                raise gpu.raise_on_build
            if gpu.on_build is not None:
                gpu.on_build()
            for name in ("FP16", "INT8"):  # precision flags contradict a strongly typed network
                flag = getattr(E["BuilderFlag"], name, None)
                if network._strongly_typed() and flag is not None and flag in config._flags:
                    log_error(f"BuilderFlag::k{name} is not allowed with a strongly typed network")
                    return None
            if network._input.shape[0] == -1 and not config._profiles:
                log_error("Network has dynamic or shape inputs, but no optimization profile")
                return None
            if config._cache is not None:
                config._cache._entries.add(f"tuned-{len(gpu.calls)}")
            return None if gpu.plan is None else IHostMemory(gpu.plan)

    @real("IExecutionContext")
    class IExecutionContext(_Real):
        def __init__(self, engine: ICudaEngine) -> None:
            self._engine = engine
            self._shape: Optional[Tuple[int, ...]] = (
                (engine._spec.static, *CHW) if engine._spec.static else None)
            self._addr: Dict[str, int] = {}
            gpu.last["context"] = self

        def set_input_shape(self, name: str, shape: Any) -> bool:
            check("IExecutionContext", "set_input_shape", (name, shape),
                  isinstance(name, str) and isinstance(shape, (tuple, list))
                  and all(_is_int(x) for x in shape))
            lo, hi = self._engine._batch_range()
            if (name != IMAGES or len(shape) != 4 or tuple(shape[1:]) != CHW
                    or not lo <= shape[0] <= hi):
                log_error(f"IExecutionContext::setInputShape: {name} {tuple(shape)} is outside "
                          f"the profile [{lo}, {hi}]")
                return False  # the old shape stays
            self._shape = tuple(int(x) for x in shape)
            return True

        def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
            check("IExecutionContext", "get_tensor_shape", (name,), isinstance(name, str))
            batch = self._shape[0] if self._shape else -1
            if name == IMAGES:
                return self._shape or (-1, *CHW)
            return (batch, *self._engine._spec.outputs[name])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            check("IExecutionContext", "set_tensor_address", (name, memory),
                  isinstance(name, str) and _is_int(memory))
            if name not in self._engine._names:
                log_error(f"IExecutionContext::setTensorAddress: no tensor {name}")
                return False
            self._addr[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            check("IExecutionContext", "execute_async_v3", (stream_handle,),
                  _is_int(stream_handle))
            if self._shape is None or set(self._addr) != set(self._engine._names):
                log_error("IExecutionContext::enqueueV3: shapes or addresses not set")
                return False
            spec, shape, addr = self._engine._spec, self._shape, dict(self._addr)

            def work() -> None:
                dt = np.dtype(_NUMPY[spec.input_dtype])
                raw = gpu.allocs[addr[IMAGES]]
                count = int(np.prod(shape))
                batch = raw.view(dt)[:count].reshape(shape).astype(np.float32)
                for name, value in spec.fn(batch).items():
                    out = gpu.allocs[addr[name]].view(_NUMPY[spec.output_dtype])
                    out[: value.size] = np.asarray(value).ravel()

            if int(stream_handle) in gpu.capturing:  # recorded into the graph, not run
                gpu.capturing[int(stream_handle)].append(work)
            else:
                gpu.enqueues += 1
                work()
            return True

    @real("ICudaEngine")
    class ICudaEngine(_Real):
        def __init__(self, spec: EngineSpec) -> None:
            self._spec = spec
            self._names = [IMAGES, *spec.outputs]

        def _batch_range(self) -> Tuple[int, int]:
            if self._spec.static:
                return self._spec.static, self._spec.static
            return self._spec.profile[0], self._spec.profile[2]

        @property
        def num_io_tensors(self) -> int:
            return len(self._names)

        @property
        def num_optimization_profiles(self) -> int:
            return 1

        def get_tensor_name(self, index: int) -> str:
            check("ICudaEngine", "get_tensor_name", (index,), _is_int(index))
            return self._names[index]

        def get_tensor_mode(self, name: str) -> Any:
            check("ICudaEngine", "get_tensor_mode", (name,), isinstance(name, str))
            mode = E["TensorIOMode"]
            return mode.INPUT if name == IMAGES else mode.OUTPUT if name in self._names \
                else mode.NONE

        def get_tensor_dtype(self, name: str) -> Any:
            check("ICudaEngine", "get_tensor_dtype", (name,), isinstance(name, str))
            return DataType[self._spec.input_dtype if name == IMAGES else self._spec.output_dtype]

        def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
            check("ICudaEngine", "get_tensor_shape", (name,), isinstance(name, str))
            batch = self._spec.static or -1
            return (batch, *CHW) if name == IMAGES else (batch, *self._spec.outputs[name])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[Tuple]:
            check("ICudaEngine", "get_tensor_profile_shape", (name, profile_index),
                  isinstance(name, str) and _is_int(profile_index))
            lo, hi = self._batch_range()
            opt = self._spec.static or self._spec.profile[1]
            return [(lo, *CHW), (opt, *CHW), (hi, *CHW)]

        def create_execution_context(self) -> IExecutionContext:
            return IExecutionContext(self)

    @real("Runtime")
    class Runtime(_Real):
        def __init__(self, logger: Any) -> None:
            record_init("Runtime", (logger,))
            check("Runtime", "__init__", (logger,), isinstance(logger, Logger))
            self._logger = logger

        def deserialize_cuda_engine(self, serialized_engine: Any) -> Optional[ICudaEngine]:
            check("Runtime", "deserialize_cuda_engine", (serialized_engine,),
                  isinstance(serialized_engine, (bytes, bytearray, memoryview)))
            spec = gpu.engines.get(bytes(serialized_engine))
            if spec is None:
                log_error("IRuntime::deserializeCudaEngine: magic tag does not match")
                return None
            return ICudaEngine(spec)

    for cls in (Logger, Builder, INetworkDefinition, OnnxParser, ParserError, IBuilderConfig,
                IOptimizationProfile, ITimingCache, IHostMemory, ILayer, ITensor, Runtime,
                ICudaEngine, IExecutionContext):
        setattr(trt, cls._real, cls)

    def nptype(trt_type: Any) -> Any:
        if snap["nptype_uses_np_bool"]:  # TensorRT 8.5.2 under numpy 1.24-1.26 (JetPack 5)
            raise AttributeError("module 'numpy' has no attribute 'bool'")
        return np.dtype(_NUMPY[trt_type.name]).type

    trt.nptype = nptype
    return trt


_NUMPY = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT8": "int8",
          "BOOL": "bool", "UINT8": "uint8", "INT64": "int64"}


# --- pycuda.driver -----------------------------------------------------------------------------
def _make_cuda(gpu: Gpu) -> types.ModuleType:
    cuda = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    class CudaRuntimeError(Error):
        pass

    CudaRuntimeError.__name__ = "RuntimeError"
    cuda.Error, cuda.LogicError, cuda.RuntimeError = Error, LogicError, CudaRuntimeError
    state = {"init": False}

    def need_context(what: str) -> None:
        if not gpu.stack():
            raise LogicError(f"{what} failed: invalid device context")

    def init(flags: int = 0) -> None:
        if gpu.no_gpu:
            raise CudaRuntimeError("cuInit failed: no CUDA-capable device is detected")
        state["init"] = True

    class Context:
        def __init__(self, device: Device) -> None:
            self._device = device

        def push(self) -> None:
            gpu.stack().append(self)

        @staticmethod
        def pop() -> None:
            """pycuda's static pop: the calling thread's top context, whichever it is."""
            stack = gpu.stack()
            if not stack:
                raise LogicError("context::pop failed: cannot pop non-current context")
            stack.pop()

        @staticmethod
        def get_current() -> Optional[Context]:
            stack = gpu.stack()
            return stack[-1] if stack else None

    class Device:
        def __init__(self, number: int) -> None:
            if not state["init"]:
                raise LogicError("cuDeviceGet failed: initialization error")
            if not 0 <= number < gpu.devices:
                raise LogicError("cuDeviceGet failed: invalid device ordinal")
            self._number = number

        @staticmethod
        def count() -> int:
            return gpu.devices

        def name(self) -> str:
            return gpu.gpu_name

        def compute_capability(self) -> Tuple[int, int]:
            return gpu.cc

        def retain_primary_context(self) -> Context:
            return Context(self)

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self._ptr = 0x10000 + 0x1000 * len(gpu.allocs)
            gpu.allocs[self._ptr] = np.zeros(nbytes, np.uint8)

        def __int__(self) -> int:
            return self._ptr

        def free(self) -> None:
            need_context("cuMemFree")
            gpu.freed.append(self._ptr)

    class Stream:
        def __init__(self, flags: int = 0) -> None:
            need_context("cuStreamCreate")
            self.handle = 0xBEEF  # never the default stream (0)

        def synchronize(self) -> None:
            need_context("cuStreamSynchronize")

    class Event:
        def __init__(self, flags: int = 0) -> None:
            need_context("cuEventCreate")

        def record(self, stream: Optional[Stream] = None) -> Event:
            return self

        def synchronize(self) -> Event:
            return self

        def time_since(self, event: Event) -> float:
            return 1.5

    def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
        need_context("cuMemHostAlloc")
        return np.empty(shape, dtype)

    def mem_alloc(bytesize: int) -> DeviceAllocation:
        need_context("cuMemAlloc")
        if not _is_int(bytesize):
            raise TypeError("mem_alloc(): incompatible function arguments")
        return DeviceAllocation(int(bytesize))

    def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Any = None) -> None:
        need_context("cuMemcpyHtoDAsync")
        data = np.ascontiguousarray(src).view(np.uint8).ravel()
        gpu.allocs[int(dest)][: data.size] = data

    def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Any = None) -> None:
        need_context("cuMemcpyDtoHAsync")
        dest.view(np.uint8).reshape(-1)[:] = gpu.allocs[int(src)][: dest.nbytes]

    cuda.init, cuda.Context, cuda.Device, cuda.Stream, cuda.Event = init, Context, Device, \
        Stream, Event
    cuda.DeviceAllocation = DeviceAllocation
    cuda.pagelocked_empty, cuda.mem_alloc = pagelocked_empty, mem_alloc
    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    cuda.get_driver_version = lambda: 12060
    cuda.get_version = lambda: (12, 6, 0)
    return cuda


CUDA_BINDINGS = ("cuda", "cuda.bindings", "cuda.bindings.driver")


def install(monkeypatch: Any, gpu: Gpu) -> Tuple[types.ModuleType, types.ModuleType]:
    """Put the fakes of `gpu` into sys.modules as `tensorrt`, `pycuda` and `pycuda.driver`, and
    with `gpu.cuda == "cuda-bindings"` the fake `cuda.bindings.driver` too (else `cuda` is made
    unimportable, whatever is installed). Returns (tensorrt, pycuda.driver)."""
    from .cuda_bindings import modules

    trt, cuda = make_fakes(gpu)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    bindings = modules(gpu) if gpu.cuda == "cuda-bindings" else dict.fromkeys(CUDA_BINDINGS)
    for name, module in bindings.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv("GREFEL_CUDA", raising=False)
    return trt, cuda


def block(monkeypatch: Any) -> None:
    """Make `import tensorrt` / `import pycuda` fail as on a machine without them, whatever is
    installed: a test of what happens without TensorRT must hold on a Jetson or a GPU box too."""
    for name in ("tensorrt", "pycuda", "pycuda.driver", "pycuda.autoinit") + CUDA_BINDINGS:
        monkeypatch.setitem(sys.modules, name, None)
