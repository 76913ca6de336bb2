"""The TensorRT side of `grefel export`, against the shared strict fake of `tensorrt` and
`pycuda.driver` (tests/fakes/trt.py: real enum values and members per generation, failing the
way TensorRT does). These tests check our glue (which API calls we make, in which generation,
and what we do with their results), not TensorRT: no GPU or TensorRT exists on CI machines.
`tests/test_trt_real_bindings.py` checks the same calls against the real bindings."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import numpy as np
import onnx
import pytest
import torch
from fakes.trt import EngineSpec, Gpu, install
from onnx import TensorProto, helper

from export import ExportError
from export.compare import run_backend
from export.gate_images import gate_images
from export.onnx_export import export_onnx
from export.pipeline import ExportOptions, run_export
from export.trt_builder import BuildOptions, build_engine, network_flags, precision_mode
from export.verify import verify_engine
from grefel.model import create_model

FP32_NAMES = ["/model/fusion/se/Mul", "/model/Shape", "Gemm_4"]
OUTPUTS = {"probs": (7,), "primary": (7,), "confidence": ()}


def _build(tmp_path: Path, opts: BuildOptions, **kw) -> object:
    return build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", opts,
                        onnx_fp16=tmp_path / "m.fp16.onnx", fp32_layers=FP32_NAMES, log=str, **kw)


def _pinned(gpu: Gpu) -> set:
    return {layer.name for layer in gpu.last["network"]._layers
            if layer._precision_set is not None}


# --- builder -----------------------------------------------------------------------------------
@pytest.mark.parametrize("gen", ["8.5", "8.6"])
def test_builder_weak_typing_only_where_strongly_typed_is_missing(tmp_path, monkeypatch, gen):
    """8.5/8.6 (no STRONGLY_TYPED): FP32 ONNX, BuilderFlag.FP16 + OBEY, FP32 pins; real enum
    values (EXPLICIT_BATCH = 0). Pins follow `layer.metadata` where the API has it (8.6), so a
    parser helper layer of a pinned node is pinned too; on 8.5 (no metadata) names decide."""
    gpu = Gpu(gen=gen)
    trt, _ = install(monkeypatch, gpu)
    result = _build(tmp_path, BuildOptions(fp16=True, batch=2, max_batch=8, workspace_gib=2))
    network, config = gpu.last["network"], gpu.last["config"]
    assert network._flags == 1 << 0 and network._parsed == tmp_path / "m.onnx"
    assert {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS} <= config._flags
    assert config._pools == {trt.MemoryPoolType.WORKSPACE: 2 * 2**30}
    shapes = config._profiles[0]._shapes["images"]
    assert shapes == ((1, 3, 112, 112), (2, 3, 112, 112), (8, 3, 112, 112))
    expected = {"/model/levels.0/attn/Softmax", "/model/fusion/se/Mul", "Gemm_4_1"}
    if gen == "8.6":
        expected.add("(Unnamed Layer* 7) [Shuffle]")  # metadata "[ONNX Layer: .../se/Mul]"
    assert _pinned(gpu) == expected and result.pinned_fp32_layers == len(expected)
    for layer in network._layers:
        if layer.name in expected:
            assert layer._output_types == {0: trt.float32}
    assert result.precision_mode == "fp16-weak"
    assert (tmp_path / "m.engine").read_bytes() == b"\x00PLAN"


@pytest.mark.parametrize("gen, flags", [("10.3", 0b11), ("10.13", 0b11), ("11", 0b1)])
def test_builder_strongly_typed_wherever_the_flag_exists(tmp_path, monkeypatch, gen, flags):
    """10.x and 11.x: the FP16-typed ONNX, STRONGLY_TYPED by its real value (1 in 10.x, 0 in
    11.x), no FP16 flag (a strongly typed network with it gives no plan), no layer pins."""
    gpu = Gpu(gen=gen)
    install(monkeypatch, gpu)
    result = _build(tmp_path, BuildOptions(max_batch=4))
    network, config = gpu.last["network"], gpu.last["config"]
    assert network._flags == flags and network._parsed == tmp_path / "m.fp16.onnx"
    assert all(f.name != "FP16" for f in config._flags) and not _pinned(gpu)
    assert result.precision_mode == "fp16-strong" and result.pinned_fp32_layers == 0
    with pytest.raises(ExportError, match="FP16-typed ONNX is needed"):
        build_engine(tmp_path / "m.onnx", tmp_path / "n.engine", BuildOptions(), log=str)


def test_network_flags_and_precision_mode_by_generation(monkeypatch):
    """Real enum values: EXPLICIT_BATCH 0 (8.x/10.x), STRONGLY_TYPED 1 (10.x) / 0 (11.x)."""
    from fakes.trt import make_fakes

    trt = {g: make_fakes(Gpu(gen=g))[0] for g in ("8.5", "8.6", "10.3", "10.13", "11")}
    assert network_flags(trt["10.3"], strongly_typed=False) == 1
    assert network_flags(trt["10.13"], strongly_typed=True) == 0b11
    assert network_flags(trt["11"], strongly_typed=False) == 0
    assert network_flags(trt["11"], strongly_typed=True) == 1
    with pytest.raises(ExportError, match="STRONGLY_TYPED"):
        network_flags(trt["8.6"], strongly_typed=True)
    assert {g: precision_mode(t, True) for g, t in trt.items()} == {
        "8.5": "fp16-weak", "8.6": "fp16-weak", "10.3": "fp16-strong", "10.13": "fp16-strong",
        "11": "fp16-strong"}
    assert precision_mode(trt["11"], False) == "fp32"


@pytest.mark.parametrize("gen", ["8.6", "10.3"])
def test_builder_dla_fixed_profile_and_layer_report(tmp_path, monkeypatch, gen):
    """DLA has no dynamic shapes: min = opt = max = max_batch, GPU fallback, and the notes say
    how many layers TensorRT reports as DLA-capable (can_run_on_DLA)."""
    gpu = Gpu(gen=gen)
    trt, _ = install(monkeypatch, gpu)
    result = _build(tmp_path, BuildOptions(dla_core=1, max_batch=8))
    config = gpu.last["config"]
    assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 1
    assert trt.BuilderFlag.GPU_FALLBACK in config._flags
    assert config._profiles[0]._shapes["images"] == ((8, 3, 112, 112),) * 3
    assert any("2 of 7 layers as DLA-capable" in n for n in result.notes)
    with pytest.raises(ExportError, match="has 2 DLA cores"):
        _build(tmp_path, BuildOptions(dla_core=2))
    with pytest.raises(ExportError, match="needs an FP16 or INT8 build"):
        _build(tmp_path, BuildOptions(fp16=False, dla_core=0))


@pytest.mark.parametrize("gen, mode, flags", [
    ("8.5", "int8-weak", 0b1), ("8.6", "int8-weak", 0b1), ("10.3", "int8-weak", 0b1),
    ("10.13", "int8-weak", 0b1), ("11", "int8-strong", 0b1)])
def test_builder_int8_flag_where_it_exists_else_strongly_typed(tmp_path, monkeypatch, gen, mode,
                                                                 flags):
    """INT8 builds the QDQ ONNX: BuilderFlag.INT8 on 8.x/10.x (weakly typed: EXPLICIT_BATCH
    only), a strongly typed network on 11.x (no INT8 flag exists; STRONGLY_TYPED is 0 there);
    never FP16 or FP32 pins. DLA takes INT8 with a fixed profile."""
    gpu = Gpu(gen=gen)
    trt, _ = install(monkeypatch, gpu)
    result = _build(tmp_path, BuildOptions(int8=True, max_batch=4),
                    onnx_int8=tmp_path / "m.int8.onnx")
    network, config = gpu.last["network"], gpu.last["config"]
    assert network._flags == flags and network._parsed == tmp_path / "m.int8.onnx"
    assert result.precision_mode == mode and not _pinned(gpu)
    int8 = getattr(trt.BuilderFlag, "INT8", None)
    assert (int8 in config._flags) == (mode == "int8-weak")
    assert all(f.name != "FP16" for f in config._flags)
    assert precision_mode(trt, fp16=True, int8=True) == mode
    with pytest.raises(ExportError, match="QDQ INT8 ONNX"):
        _build(tmp_path, BuildOptions(int8=True))
    result = _build(tmp_path, BuildOptions(int8=True, fp16=False, dla_core=0, max_batch=8),
                    onnx_int8=tmp_path / "m.int8.onnx")
    assert gpu.last["config"]._profiles[0]._shapes["images"] == ((8, 3, 112, 112),) * 3


def test_fake_refuses_int8_flag_on_a_strongly_typed_network(tmp_path, monkeypatch):
    """What TensorRT 10.x does with a precision flag on a strongly typed network: no plan."""
    gpu = Gpu(gen="10.3")
    trt, _ = install(monkeypatch, gpu)
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(network_flags(trt, strongly_typed=True))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, 112, 112), (1, 3, 112, 112), (1, 3, 112, 112))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is None


def test_builder_checks_add_optimization_profile(tmp_path, monkeypatch):
    """-1 from add_optimization_profile is an error, not a build without a profile."""
    install(monkeypatch, Gpu(gen="10.3", fail_profile=True))
    with pytest.raises(ExportError, match="rejected the optimization profile"):
        _build(tmp_path, BuildOptions())
    assert not (tmp_path / "m.engine").exists()


def test_timing_cache_load_reject_fresh_and_merge(tmp_path, monkeypatch):
    """A readable cache is loaded (ignore_mismatch False) and saved; another GPU's is an error;
    an unreadable file (create_timing_cache -> None) gives a fresh cache with a note; entries
    another build wrote meanwhile are merged (ITimingCache.combine), not overwritten."""
    gpu = Gpu(gen="10.13")
    install(monkeypatch, gpu)
    cache = tmp_path / "timing.cache"
    opts = BuildOptions(timing_cache=cache)
    _build(tmp_path, opts)
    first = cache.read_bytes()
    assert first.startswith(b"TCACHE:Fake Orin:tuned-")
    assert gpu.last["config"]._ignore_mismatch is False
    cache.write_bytes(b"junk that is no timing cache")
    result = _build(tmp_path, opts)
    assert any("cannot read this timing cache" in n for n in result.notes)
    assert cache.read_bytes().startswith(b"TCACHE:Fake Orin:")

    gpu.on_build = lambda: cache.write_bytes(b"TCACHE:Fake Orin:from-another-build")
    _build(tmp_path, opts)
    entries = cache.read_bytes().decode().split(":", 2)[2].split(",")
    assert "from-another-build" in entries and len(entries) >= 3
    gpu.on_build = None
    cache.write_bytes(b"TCACHE:NVIDIA GeForce RTX 4090:x")
    with pytest.raises(ExportError, match="rejected this timing cache"):
        _build(tmp_path, opts)


def test_fp32_build_tf32_note_and_no_tf32(tmp_path, monkeypatch):
    """FP32 engines say TF32 is on (TensorRT's default); tf32=False clears BuilderFlag.TF32."""
    gpu = Gpu(gen="10.3")
    trt, _ = install(monkeypatch, gpu)
    result = _build(tmp_path, BuildOptions(fp16=False))
    assert trt.BuilderFlag.TF32 in gpu.last["config"]._flags
    assert result.precision_mode == "fp32" and any("TF32 on" in n for n in result.notes)
    result = _build(tmp_path, BuildOptions(fp16=False, tf32=False))
    assert trt.BuilderFlag.TF32 not in gpu.last["config"]._flags
    assert any("TF32 off" in n for n in result.notes)


def test_raw_tensorrt_exception_becomes_export_error(tmp_path, monkeypatch):
    """Anything the bindings raise during the build is one ExportError line."""
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"GOOD ENGINE")
    install(monkeypatch, Gpu(gen="10.3", raise_on_build=RuntimeError(
        "CUDA initialization failure with error: 35\nmore")))
    with pytest.raises(ExportError) as err:
        _build(tmp_path, BuildOptions())
    assert "RuntimeError: CUDA initialization failure with error: 35" in str(err.value)
    assert "\n" not in str(err.value) and engine.read_bytes() == b"GOOD ENGINE"


def test_parser_errors_and_none_plan_keep_the_good_engine(tmp_path, monkeypatch):
    """Parser messages are reported; a None plan is an error and never replaces a good engine
    or the timing cache (our glue, not TensorRT)."""
    engine, cache = tmp_path / "m.engine", tmp_path / "t.cache"
    engine.write_bytes(b"GOOD ENGINE")
    install(monkeypatch, Gpu(gen="8.6", parse_errors=["node /x: Unsupported op Foo",
                                                      "second problem"]))
    with pytest.raises(ExportError, match="(?s)Unsupported op Foo.*second problem"):
        _build(tmp_path, BuildOptions())
    install(monkeypatch, Gpu(gen="8.6", plan=None))
    with pytest.raises(ExportError, match="returned no plan"):
        _build(tmp_path, BuildOptions(timing_cache=cache))
    assert engine.read_bytes() == b"GOOD ENGINE" and not cache.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.engine"]  # no temp file left behind


def test_static_onnx_batch_must_match_max_batch(tmp_path, monkeypatch):
    """A static ONNX gets no profile and must equal --max-batch (our glue only)."""
    gpu = Gpu(gen="8.6", input_batch=4)
    install(monkeypatch, gpu)
    _build(tmp_path, BuildOptions(max_batch=4))
    assert gpu.last["config"]._profiles == []
    with pytest.raises(ExportError, match="static batch of 4"):
        _build(tmp_path, BuildOptions(max_batch=8))


# --- verify ------------------------------------------------------------------------------------
def _mean_softmax_onnx(path: Path) -> Path:
    """probs = primary = softmax(channel means) padded to 7 classes, confidence = max prob: a
    reference small enough for tests, with the outputs of the model contract."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, 112, 112])
    outs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["b", 7]),
            helper.make_tensor_value_info("primary", TensorProto.FLOAT, ["b", 7]),
            helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["b"])]
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 7], np.eye(3, 7).ravel() * 5)
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["l"]),
             helper.make_node("Softmax", ["l"], ["probs"], axis=1),
             helper.make_node("Identity", ["probs"], ["primary"]),
             helper.make_node("ReduceMax", ["probs"], ["confidence"], axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [x], outs, [w])
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


@pytest.mark.parametrize("gen, static", [("10.3", None), ("10.3", 4), ("8.5", None)])
def test_verify_runs_engine_in_chunks_and_compares(tmp_path, monkeypatch, gen, static):
    """--verify runs the engine in the runtime's TensorRTBackend (chunks of the max batch, static
    padding) against ONNX Runtime, also on 8.5 (whose nptype is broken under numpy 1.24+)."""
    ref = _mean_softmax_onnx(tmp_path / "ref.onnx")
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"\x00PLAN")
    gpu = Gpu(gen=gen, engines={b"\x00PLAN": EngineSpec(_engine_math(), OUTPUTS, static=static)})
    install(monkeypatch, gpu)
    images = np.random.default_rng(0).random((10, 3, 112, 112), dtype=np.float32)
    result = verify_engine(plan, ref, images)
    assert result and result.samples == 10 and result.max_abs_dprobs < 1e-5
    assert gpu.leftover() == {}  # every pushed context popped by its thread
    gpu.engines[b"\x00PLAN"] = EngineSpec(_engine_math(flip=True), OUTPUTS)
    assert not verify_engine(plan, ref, images)
    plan.write_bytes(b"another GPU's plan")
    with pytest.raises(ExportError, match="--verify: .*not a TensorRT engine"):
        verify_engine(plan, ref, images)
    assert gpu.leftover() == {}


def test_verify_without_a_gpu_is_one_line(tmp_path, monkeypatch):
    """pycuda's "no CUDA-capable device" reaches the user as one ExportError line."""
    ref = _mean_softmax_onnx(tmp_path / "ref.onnx")
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"\x00PLAN")
    install(monkeypatch, Gpu(no_gpu=True))
    with pytest.raises(ExportError) as err:
        verify_engine(plan, ref, np.zeros((2, 3, 112, 112), np.float32))
    assert "cannot use CUDA device 0" in str(err.value) and "no CUDA-capable device" in str(
        err.value)
    assert "\n" not in str(err.value)


# --- the whole command with fakes ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    return export_onnx(create_model("tiny").eval(),
                       tmp_path_factory.mktemp("onnx") / "tiny.onnx", opset=17)


def _ort_engine(onnx_path: Path, flip: bool = False):
    from grefel.runtime.ort_backend import OrtBackend

    def fn(x):
        out = run_backend(OrtBackend(onnx_path, device="cpu"), np.ascontiguousarray(x))
        return {k: (v[:, ::-1] if flip and v.ndim == 2 else v) for k, v in out.items()}
    return fn


def test_pipeline_builds_verifies_and_writes_sidecar(tiny_onnx, tmp_path, monkeypatch):
    """ONNX -> fake engine -> --verify -> sidecar; a failing verify keeps the old engine;
    10.x builds the FP16-typed ONNX; --no-tf32 reaches the builder. Checks our glue."""
    import export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "gate_images", lambda calib: gate_images(calib, n=6))
    out = tmp_path / "engines"
    spec = EngineSpec(_ort_engine(tiny_onnx), OUTPUTS, profile=(1, 1, 4))
    gpu = Gpu(gen="8.6", engines={b"\x00PLAN": spec})
    install(monkeypatch, gpu)
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
    assert any(line.startswith("[") and "build TensorRT engine" in line and " s)" in line
               for line in logs)
    assert len(gpu.loggers) == 1  # one process-wide TensorRT logger for build and verify
    bad = Gpu(gen="8.6", plan=b"\x00NEW",
              engines={b"\x00NEW": EngineSpec(_engine_math(True), OUTPUTS)})
    install(monkeypatch, bad)
    with pytest.raises(ExportError, match="engine was not installed"):
        run_export(tiny_onnx, opts, log=str)
    assert engine.read_bytes() == b"\x00PLAN"
    gpu10 = Gpu(gen="10.3", engines={b"\x00PLAN": spec})
    trt, _ = install(monkeypatch, gpu10)
    run_export(tiny_onnx, ExportOptions(out=out, max_batch=4), log=str)
    assert json.loads(sidecar.read_text())["onnx"] == "tiny.fp16.onnx"
    run_export(tiny_onnx, ExportOptions(out=out, max_batch=4, fp16=False, tf32=False), log=str)
    assert trt.BuilderFlag.TF32 not in gpu10.last["config"]._flags


def test_deepstream_config_names_the_built_engine(tiny_onnx, tmp_path, monkeypatch):
    """With an engine built (fake TensorRT 10.3), --deepstream points nvinfer at it, at the
    export's max batch, after the detector GIE given."""
    import export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "gate_images", lambda calib: gate_images(calib, n=6))
    spec = EngineSpec(_ort_engine(tiny_onnx), OUTPUTS, profile=(1, 1, 4))
    install(monkeypatch, Gpu(gen="10.3", engines={b"\x00PLAN": spec}))
    opts = ExportOptions(out=tmp_path / "engines", max_batch=4, deepstream=tmp_path / "ds",
                         deepstream_detector_id=3)
    result = run_export(tiny_onnx, opts, log=str)
    config = tmp_path / "ds" / "config_infer_secondary_grefel.txt"
    assert result.exit_code == 0 and config in result.artifacts
    text = config.read_text()
    props = dict(line.split("=", 1) for line in text.splitlines()
                 if line and not line.startswith(("#", "[")))
    assert props["model-engine-file"] == "../engines/tiny_fp16_b4.engine"
    assert (tmp_path / "engines" / "tiny_fp16_b4.engine").is_file()
    assert "# model-engine-file: built by grefel export" in text
    assert (props["batch-size"], props["operate-on-gie-id"], props["gie-unique-id"]) == (
        "4", "3", "4")


def test_export_cli_has_no_tf32_flag():
    from click.testing import CliRunner

    from grefel.cli import cli

    res = CliRunner().invoke(cli, ["export", "--help"])
    assert res.exit_code == 0 and "--no-tf32" in res.output


def test_auto_target_follows_the_installed_tensorrt():
    """--target auto maps the installed version to a lint table (our glue, not TensorRT)."""
    from export.lint import TARGETS
    from export.pipeline import resolve_target

    found: Dict[str, tuple] = {v: resolve_target("auto", SimpleNamespace(__version__=v))
                               for v in ("8.5.2.2", "8.6.2", "10.3.0", "10.13.3", "11.4.1")}
    assert {v: t for v, (t, _) in found.items()} == {
        "8.5.2.2": "trt8.5", "8.6.2": "trt8.6", "10.3.0": "trt10", "10.13.3": "trt10.15",
        "11.4.1": "trt11"}
    assert resolve_target("auto", None) == ("trt10", list(TARGETS))
    assert resolve_target("trt8.6", None) == ("trt8.6", ["trt8.6"])


def test_triton_repository_of_a_built_engine_records_its_builder_and_refuses_another(
        tiny_onnx, tmp_path, monkeypatch):
    """The whole command with the TensorRT fakes: `--triton DIR` holds the built plan and
    grefel.json names TensorRT 8.6.1 on Fake Orin; an export of the same model built by
    TensorRT 10.3 into the same DIR ends in one error line and leaves the 8.6 plan there."""
    from click.testing import CliRunner

    from grefel.cli import cli

    repo, spec = tmp_path / "repo", EngineSpec(_ort_engine(tiny_onnx), OUTPUTS, profile=(1, 1, 4))
    args = ["export", str(tiny_onnx), "--fp32", "--max-batch", "4", "--triton", str(repo)]
    install(monkeypatch, Gpu(gen="8.6", engines={b"\x00PLAN": spec}))
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    record = json.loads((repo / "grefel" / "grefel.json").read_text())
    assert record["built_by"] == {"tensorrt": "8.6.1", "gpu": "Fake Orin",
                                  "compute_capability": "8.7"}
    assert (repo / "grefel" / "1" / "model.plan").read_bytes() == b"\x00PLAN"
    install(monkeypatch, Gpu(gen="10.3", plan=b"\x00P10", engines={b"\x00P10": spec}))
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b")])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "TensorRT 8.6.1" in errors[0] and "does not mix" in errors[0]
    assert (repo / "grefel" / "1" / "model.plan").read_bytes() == b"\x00PLAN"
    assert (tmp_path / "b" / "tiny_fp32_b4.engine").read_bytes() == b"\x00P10"  # kept in --out
