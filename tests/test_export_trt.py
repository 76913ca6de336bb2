"""The TensorRT side of `grefel export`, against small recording fakes of `tensorrt` and
`pycuda.driver`. These tests check our glue (which API calls we make, in which generation, and
what we do with their results), not TensorRT: no GPU or TensorRT exists on CI machines."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from export import ExportError
from export.fp16 import gate_images
from export.onnx_export import export_onnx
from export.pipeline import ExportOptions, run_export
from export.runners import ort_session, run_onnxruntime
from export.trt_builder import BuildOptions, build_engine, network_flags
from export.verify import verify_engine
from grefel.model import create_model

F32, F16, I32 = "float32", "float16", "int32"


# --- fake tensorrt -----------------------------------------------------------------------------
class FakeLayer:
    def __init__(self, name: str, type_: str, outputs: List[str]) -> None:
        self.name, self.type, self._outs = name, type_, outputs
        self.precision_set: Optional[str] = None
        self.output_types: Dict[int, str] = {}

    num_outputs = property(lambda self: len(self._outs))
    precision = property(lambda self: self.precision_set,
                         lambda self, v: setattr(self, "precision_set", v))

    def get_output(self, j: int):
        return SimpleNamespace(dtype=self._outs[j])

    def set_output_type(self, j: int, dtype: str) -> None:
        self.output_types[j] = dtype


def default_layers() -> List[FakeLayer]:
    return [
        FakeLayer("/model/image/input_layer/Conv", "CONVOLUTION", [F32]),
        FakeLayer("/model/levels.0/attn/Softmax", "SOFTMAX", [F32]),
        FakeLayer("/model/fusion/se/Mul", "ELEMENTWISE", [F32]),
        FakeLayer("Gemm_4_1", "MATRIX_MULTIPLY", [F32]),  # a parser suffix of node Gemm_4
        FakeLayer("Gemm_45", "MATRIX_MULTIPLY", [F32]),  # another node: not pinned
        FakeLayer("/model/Shape", "SHAPE", [I32]),  # named, but an int output: not pinned
    ]


def make_fake_trt(gen: str, plan: Optional[bytes] = b"\x00PLAN", parse_errors=(),
                  static_batch: Optional[int] = None, engine_fn: Optional[Callable] = None):
    """A `tensorrt` module of one API generation ("8.6", "10" or "11") that records calls."""
    rec = SimpleNamespace(flags=None, config_flags=set(), pool=None, profiles=[], parsed=None,
                          cache_in=None, layers=default_layers(), ignore_mismatch=None)
    trt = types.ModuleType("tensorrt")
    trt.__version__ = {"8.6": "8.6.1", "10": "10.3.0", "11": "11.1.0"}[gen]
    trt.float32, trt.float16, trt.int32 = F32, F16, I32
    net_flags = {"8.6": {"EXPLICIT_BATCH": 0}, "10": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
                 "11": {"STRONGLY_TYPED": 0}}[gen]
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(**net_flags)
    bflags = ["TF32", "GPU_FALLBACK"]
    if gen != "11":
        bflags += ["FP16", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = SimpleNamespace(**{k: k for k in bflags})
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.DeviceType = SimpleNamespace(GPU="GPU", DLA="DLA")
    trt.LayerType = SimpleNamespace(SOFTMAX="SOFTMAX", CONVOLUTION="CONVOLUTION", SHAPE="SHAPE")
    if gen != "8.5":
        trt.LayerType.NORMALIZATION = "NORMALIZATION"
    trt.TensorIOMode = SimpleNamespace(INPUT="IN", OUTPUT="OUT")
    trt.nptype = lambda dtype: np.float32
    trt.Logger = type("Logger", (), {"WARNING": "W", "__init__": lambda self, s: None})

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"|tuned"

    class Config:
        default_device_type, DLA_core = "GPU", None

        def set_flag(self, f):
            rec.config_flags.add(f)

        def set_memory_pool_limit(self, pool, n):
            rec.pool = (pool, n)

        def add_optimization_profile(self, p):
            rec.profiles.append(p.shapes)

        def create_timing_cache(self, data):
            rec.cache_in = data
            return Cache(data)

        def set_timing_cache(self, cache, ignore):
            self.cache, rec.ignore_mismatch = cache, ignore
            return cache.data != b"foreign"

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            self.shapes = (name, mn, opt, mx)

    class Network:
        num_layers = property(lambda self: len(rec.layers))

        def get_layer(self, i):
            return rec.layers[i]

        def get_input(self, i):
            return SimpleNamespace(shape=(static_batch or -1, 3, 112, 112))

    class Builder:
        platform_has_fast_fp16 = True
        num_DLA_cores = 2

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec.flags = flags
            return Network()

        create_builder_config = staticmethod(Config)
        create_optimization_profile = staticmethod(Profile)

        def build_serialized_network(self, network, config):
            rec.config = config
            return plan

    if gen == "11":
        del Builder.platform_has_fast_fp16

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            rec.parsed = Path(path)
            self.num_errors = len(parse_errors)
            return not parse_errors

        def get_error(self, i):
            return _Msg(parse_errors[i])

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    trt.Runtime = lambda logger: SimpleNamespace(
        deserialize_cuda_engine=lambda data: FakeEngine(engine_fn, static_batch) if data == plan
        else None)
    trt.rec = rec
    return trt


class _Msg:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


# --- fake engine + pycuda for the runner -------------------------------------------------------
MEMORY: Dict[int, object] = {}


class DeviceMem:
    def __init__(self, nbytes: int) -> None:
        self.data = np.zeros(nbytes // 4, np.float32)
        self.freed = False
        MEMORY[id(self)] = self

    def __int__(self) -> int:
        return id(self)

    def free(self) -> None:
        self.freed = True


class FakeContext:
    def __init__(self, fn, names) -> None:
        self.fn, self.names, self.addr, self.shapes = fn, names, {}, []

    def set_input_shape(self, name, shape):
        self.shapes.append(tuple(shape))

    def get_tensor_shape(self, name):
        b = self.shapes[-1][0]
        return (b,) if name == "confidence" else (b, 7)

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def execute_async_v3(self, handle):
        assert handle == 1234
        shape = self.shapes[-1]
        x = MEMORY[self.addr["images"]].data[: int(np.prod(shape))].reshape(shape)
        for name, value in self.fn(x).items():
            MEMORY[self.addr[name]].data[: value.size] = value.ravel()
        return True


class FakeEngine:
    names = ["images", "probs", "primary", "confidence"]
    num_io_tensors = 4

    def __init__(self, fn, static_batch) -> None:
        self.fn, self.static = fn, static_batch
        self.context = None

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "IN" if name == "images" else "OUT"

    def get_tensor_shape(self, name):
        return (self.static or -1, 3, 112, 112)

    def get_tensor_profile_shape(self, name, idx):
        return [(1, 3, 112, 112), (1, 3, 112, 112), (4, 3, 112, 112)]

    def get_tensor_dtype(self, name):
        return F32

    def create_execution_context(self):
        self.context = FakeContext(self.fn, self.names)
        return self.context


def make_fake_cuda():
    cuda = types.ModuleType("pycuda.driver")
    ctx = SimpleNamespace(pushed=0, push=None, pop=None)
    ctx.push = lambda: setattr(ctx, "pushed", ctx.pushed + 1)
    ctx.pop = lambda: setattr(ctx, "pushed", ctx.pushed - 1)
    cuda.ctx = ctx
    cuda.init = lambda: None
    cuda.Device = lambda i: SimpleNamespace(retain_primary_context=lambda: ctx,
                                            name=lambda: "Fake Orin", compute_capability=lambda:
                                            (8, 7))
    cuda.get_driver_version = lambda: 12060
    cuda.get_version = lambda: (12, 6, 0)
    cuda.Stream = lambda: SimpleNamespace(handle=1234, synchronize=lambda: None)
    cuda.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
    cuda.mem_alloc = DeviceMem

    def htod(d, h, stream):
        d.data[: h.size] = h.ravel()

    def dtoh(h, d, stream):
        h[...] = d.data[: h.size].reshape(h.shape)

    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = htod, dtoh
    return cuda


def _install(monkeypatch, trt=None, cuda=None):
    if trt is not None:
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
    if cuda is not None:
        monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)


FP32_NAMES = ["/model/fusion/se/Mul", "/model/Shape", "Gemm_4"]


# --- builder -----------------------------------------------------------------------------------
def test_builder_trt86_weak_typing_flags_profile_pins_cache(tmp_path, monkeypatch):
    """8.6-like API (FP16 flag, EXPLICIT_BATCH): checks our glue, not TensorRT."""
    trt = make_fake_trt("8.6")
    _install(monkeypatch, trt)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    opts = BuildOptions(fp16=True, batch=2, max_batch=8, workspace_gib=2, timing_cache=cache)
    result = build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", opts,
                          onnx_fp16=tmp_path / "m.fp16.onnx", fp32_layers=FP32_NAMES, log=str)
    rec = trt.rec
    assert rec.flags == 1 << 0  # EXPLICIT_BATCH, by its enum value
    assert rec.parsed == tmp_path / "m.onnx"  # weakly typed: the FP32 ONNX
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= rec.config_flags
    assert rec.profiles == [("images", (1, 3, 112, 112), (2, 3, 112, 112), (8, 3, 112, 112))]
    assert rec.pool == ("WORKSPACE", 2 * 2**30)
    assert rec.cache_in == b"old" and rec.ignore_mismatch is False
    assert cache.read_bytes() == b"old|tuned"
    cache.write_bytes(b"foreign")
    with pytest.raises(ExportError, match="rejected this timing cache"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", opts, log=str)
    pinned = {layer.name for layer in rec.layers if layer.precision_set == F32}
    assert pinned == {"/model/levels.0/attn/Softmax", "/model/fusion/se/Mul", "Gemm_4_1"}
    assert all(layer.output_types == {0: F32} for layer in rec.layers if layer.name in pinned)
    assert result.precision_mode == "fp16-weak" and result.pinned_fp32_layers == 3
    assert (tmp_path / "m.engine").read_bytes() == b"\x00PLAN"  # the plan, no header bytes


def test_builder_trt11_strongly_typed_without_fp16_flag(tmp_path, monkeypatch):
    """11-like API (no FP16 flag, no EXPLICIT_BATCH, STRONGLY_TYPED): checks our glue only."""
    trt = make_fake_trt("11")
    _install(monkeypatch, trt)
    result = build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", BuildOptions(max_batch=4),
                          onnx_fp16=tmp_path / "m.fp16.onnx", fp32_layers=FP32_NAMES, log=str)
    rec = trt.rec
    assert rec.flags == 1 << 0  # STRONGLY_TYPED is 0 in 11.x; no EXPLICIT_BATCH exists
    assert rec.parsed == tmp_path / "m.fp16.onnx"
    assert "FP16" not in rec.config_flags and not rec.config_flags
    assert all(layer.precision_set is None for layer in rec.layers)  # casts carry precision
    assert rec.profiles[0][3] == (4, 3, 112, 112) and rec.pool is None
    assert result.precision_mode == "fp16-strong"
    with pytest.raises(ExportError, match="FP16-typed ONNX is needed"):
        build_engine(tmp_path / "m.onnx", tmp_path / "n.engine", BuildOptions(), log=str)


def test_network_flags_by_generation():
    """EXPLICIT_BATCH only where it exists; STRONGLY_TYPED by its enum value (our glue only)."""
    assert network_flags(make_fake_trt("10"), strongly_typed=False) == 1
    assert network_flags(make_fake_trt("10"), strongly_typed=True) == 0b11
    assert network_flags(make_fake_trt("11"), strongly_typed=False) == 0
    with pytest.raises(ExportError, match="STRONGLY_TYPED"):
        network_flags(make_fake_trt("8.6"), strongly_typed=True)


def test_builder_dla_core_with_gpu_fallback(tmp_path, monkeypatch):
    """DLA settings reach the config (our glue, not TensorRT)."""
    trt = make_fake_trt("8.6")
    _install(monkeypatch, trt)
    build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", BuildOptions(dla_core=1), log=str)
    config = trt.rec.config
    assert config.default_device_type == "DLA" and config.DLA_core == 1
    assert "GPU_FALLBACK" in trt.rec.config_flags
    with pytest.raises(ExportError, match="has 2 DLA cores"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", BuildOptions(dla_core=2), log=str)
    with pytest.raises(ExportError, match="needs an FP16 build"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine",
                     BuildOptions(fp16=False, dla_core=0), log=str)


def test_parser_errors_and_none_plan_keep_the_good_engine(tmp_path, monkeypatch):
    """Parser messages are reported; a None plan is an error and never replaces a good engine
    or the timing cache (our glue, not TensorRT)."""
    engine, cache = tmp_path / "m.engine", tmp_path / "t.cache"
    engine.write_bytes(b"GOOD ENGINE")
    _install(monkeypatch, make_fake_trt("8.6", parse_errors=["node /x: Unsupported op Foo",
                                                             "second problem"]))
    with pytest.raises(ExportError, match="(?s)Unsupported op Foo.*second problem"):
        build_engine(tmp_path / "m.onnx", engine, BuildOptions(), log=str)
    _install(monkeypatch, make_fake_trt("8.6", plan=None))
    with pytest.raises(ExportError, match="returned no plan"):
        build_engine(tmp_path / "m.onnx", engine, BuildOptions(timing_cache=cache), log=str)
    assert engine.read_bytes() == b"GOOD ENGINE" and not cache.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.engine"]  # no temp file left behind


def test_static_onnx_batch_must_match_max_batch(tmp_path, monkeypatch):
    """A static ONNX gets no profile and must equal --max-batch (our glue only)."""
    trt = make_fake_trt("8.6", static_batch=4)
    _install(monkeypatch, trt)
    build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", BuildOptions(max_batch=4), log=str)
    assert trt.rec.profiles == []
    with pytest.raises(ExportError, match="static batch of 4"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", BuildOptions(max_batch=8),
                     log=str)


# --- verify ------------------------------------------------------------------------------------
def _mean_softmax_onnx(path: Path) -> Path:
    """probs = softmax(channel means) padded to 7 classes: a reference small enough for tests."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, 112, 112])
    out = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["b", 7])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 7], np.eye(3, 7).ravel() * 5)
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["l"]),
             helper.make_node("Softmax", ["l"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "g", [x], [out], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _engine_math(flip: bool = False):
    def fn(x):
        logits = np.zeros((len(x), 7), np.float32)
        logits[:, :3] = x.mean(axis=(2, 3)) * 5
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p = p[:, ::-1] if flip else p
        return {"probs": p, "primary": p, "confidence": p.max(1)}
    return fn


@pytest.mark.parametrize("static", [None, 4])
def test_verify_runs_engine_in_chunks_and_compares(tmp_path, monkeypatch, static):
    """--verify runs the engine in the runtime's TensorRTBackend (chunks of the max batch, static
    padding) against ONNX Runtime. Checks our glue with recording fakes, not TensorRT."""
    ref = _mean_softmax_onnx(tmp_path / "ref.onnx")
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"\x00PLAN")
    cuda = make_fake_cuda()
    _install(monkeypatch, make_fake_trt("10", static_batch=static, engine_fn=_engine_math()),
             cuda)
    images = np.random.default_rng(0).random((10, 3, 112, 112), dtype=np.float32)
    result = verify_engine(plan, ref, images)
    assert result and result.samples == 10 and result.max_abs_dprobs < 1e-5
    assert cuda.ctx.pushed == 0  # the primary context was pushed and popped
    _install(monkeypatch, make_fake_trt("10", engine_fn=_engine_math(flip=True)))
    assert not verify_engine(plan, ref, images)
    plan.write_bytes(b"another GPU's plan")
    with pytest.raises(ExportError, match="--verify: .*not a TensorRT engine"):
        verify_engine(plan, ref, images)
    assert cuda.ctx.pushed == 0


# --- the whole command with fakes ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    return export_onnx(create_model("tiny").eval(),
                       tmp_path_factory.mktemp("onnx") / "tiny.onnx", opset=17)


def _ort_engine(onnx_path: Path, flip: bool = False):
    session = ort_session(onnx_path)

    def fn(x):
        out = run_onnxruntime(session, np.ascontiguousarray(x))
        return {k: (v[:, ::-1] if flip and v.ndim == 2 else v) for k, v in out.items()}
    return fn


def test_pipeline_builds_verifies_and_writes_sidecar(tiny_onnx, tmp_path, monkeypatch):
    """ONNX -> fake engine -> --verify -> sidecar; a failing verify keeps the old engine.
    Checks our glue (stages, files, sidecar fields), not TensorRT."""
    import export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "gate_images", lambda calib: gate_images(calib, n_random=6))
    out = tmp_path / "engines"
    fn = _ort_engine(tiny_onnx)
    _install(monkeypatch, make_fake_trt("8.6", engine_fn=fn), make_fake_cuda())
    opts = ExportOptions(out=out, verify=True, max_batch=4, timing_cache=tmp_path / "t.cache")
    logs: List[str] = []
    result = run_export(tiny_onnx, opts, log=logs.append)
    assert result.exit_code == 0
    engine, sidecar = out / "tiny_fp16_b4.engine", out / "tiny_fp16_b4.json"
    assert engine.read_bytes() == b"\x00PLAN"
    meta = json.loads(sidecar.read_text())
    assert meta["versions"]["tensorrt"] == "8.6.1" and meta["versions"]["gpu"] == "Fake Orin"
    assert meta["versions"]["compute_capability"] == "8.7"
    assert meta["class_names"][0] == "surprise" and meta["input"]["shape"][1:] == [3, 112, 112]
    assert meta["build"]["precision_mode"] == "fp16-weak" and meta["onnx"] == "tiny.onnx"
    assert meta["gates"]["verify"]["passed"] and meta["gates"]["fp16_gate"]["passed"]
    assert meta["gates"]["lint"]["trt8.6"]["passed"]
    assert any(line.startswith("[") and "build TensorRT engine" in line and " s)" in line
               for line in logs)
    _install(monkeypatch, make_fake_trt("8.6", plan=b"\x00NEW", engine_fn=_engine_math(True)))
    with pytest.raises(ExportError, match="engine was not installed"):
        run_export(tiny_onnx, opts, log=str)
    assert engine.read_bytes() == b"\x00PLAN"
    _install(monkeypatch, make_fake_trt("11", engine_fn=fn))
    run_export(tiny_onnx, ExportOptions(out=out, max_batch=4), log=str)
    assert json.loads(sidecar.read_text())["onnx"] == "tiny.fp16.onnx"


def test_auto_target_follows_the_installed_tensorrt():
    """--target auto maps the installed version to a lint table (our glue, not TensorRT)."""
    from export.lint import TARGETS
    from export.pipeline import resolve_target

    found = {v: resolve_target("auto", SimpleNamespace(__version__=v))
             for v in ("8.5.2.2", "8.6.2", "10.3.0", "10.13.3", "11.4.1")}
    assert {v: t for v, (t, _) in found.items()} == {
        "8.5.2.2": "trt8.5", "8.6.2": "trt8.6", "10.3.0": "trt10", "10.13.3": "trt10.15",
        "11.4.1": "trt11"}
    assert resolve_target("auto", None) == ("trt10", list(TARGETS))
    assert resolve_target("trt8.6", None) == ("trt8.6", ["trt8.6"])
