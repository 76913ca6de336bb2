"""The branch-free PReLU of the exported ONNX (export/prelu.py): exact, reversible, and what
TensorRT's parser gets back as PRelu nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.prelu import to_branch_free, to_prelu
from export.trt_builder import BuildOptions, build_engine
from export.trt_form import for_tensorrt
from tests.fakes.trt import Gpu, install

SHAPE = [2, 4, 5, 5]


def _prelu_graph() -> onnx.ModelProto:
    """x -> Conv -> PRelu(a) -> PRelu(b) -> PRelu(a) -> y: slopes a in [-0.5, 0.9] (the
    Max(x, a * x) form), b with a 0 and a 1.5 in it (the four-node form); one PRelu unnamed."""
    rng = np.random.default_rng(0)
    a = numpy_helper.from_array(rng.uniform(-0.5, 0.9, (4, 1, 1)).astype(np.float32), "a")
    b = numpy_helper.from_array(np.array([0.25, 0.0, 1.5, -2.0], np.float32).reshape(4, 1, 1),
                                "b")
    w = numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("PRelu", ["c", "a"], ["p"], name="/act/PRelu"),
             helper.make_node("PRelu", ["p", "b"], ["q"], name="/act2/PRelu"),
             helper.make_node("PRelu", ["q", "a"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)], [a, b, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _nodes(model: onnx.ModelProto) -> list:
    return [(n.op_type, n.name, list(n.input), list(n.output)) for n in model.graph.node]


def _identity_graph(slope: np.ndarray, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x -> PRelu(slope) -> y, nothing else (x's values reach the PRelu as they are)."""
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "a"], ["y"], name="p")], "g",
        [helper.make_tensor_value_info("x", dtype, SHAPE)],
        [helper.make_tensor_value_info("y", dtype, SHAPE)], [numpy_helper.from_array(slope, "a")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _special_values(dtype: type = np.float32) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(dtype) * 3
    big = np.finfo(dtype).max
    x.flat[:8] = [0.0, -0.0, 1e-38 if dtype == np.float32 else 1e-7,
                  -1e-38 if dtype == np.float32 else -1e-7, big, -big, np.inf, -np.inf]
    return x


def test_branch_free_form_is_exactly_prelu():
    """Bit-equal outputs in ONNX Runtime on mixed signs, zeros, tiny and huge values."""
    x = _special_values()
    model = _prelu_graph()
    before = _run(model, x)
    assert to_branch_free(model) == 3
    ops = [n.op_type for n in model.graph.node]
    assert "PRelu" not in ops
    assert ops.count("Max") == 2 and ops.count("Relu") == 1  # slope b has a 0 and a 1.5
    np.testing.assert_array_equal(_run(model, x), before)


@pytest.mark.parametrize("slope, form", [
    ([0.25, 1.0, -3.0, 1e-3], "Max"),  # every a <= 1, none 0
    ([0.25, 1.5, 0.5, 0.5], "Relu"),  # a > 1: Max(x, a * x) would be a * x for x > 0
    ([0.25, 0.0, 0.5, 0.5], "Relu"),  # a = 0: 0 * inf is NaN where PReLU(inf) = inf
])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_each_slope_gets_an_exact_form(slope, form, dtype):
    """The form follows the slope's values, and each is bit-equal to PRelu on the inputs of
    its first PRelu (the special values fed straight in), FP16 included."""
    onnx_type = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    model = _identity_graph(np.array(slope, dtype).reshape(4, 1, 1), onnx_type)
    x = _special_values(dtype)
    before = _run(model, x)
    assert to_branch_free(model) == 1
    assert form in [n.op_type for n in model.graph.node]
    np.testing.assert_array_equal(_run(model, x), before)


def test_a_computed_slope_gets_the_four_node_form():
    """A slope that is not a constant may hold any value at run time."""
    model = _identity_graph(np.full((4, 1, 1), 0.5, np.float32))
    model.graph.initializer[0].name = "a_init"
    model.graph.node.insert(0, helper.make_node("Identity", ["a_init"], ["a"], name="id"))
    to_branch_free(model)
    assert "Max" not in [n.op_type for n in model.graph.node]
    assert "Relu" in [n.op_type for n in model.graph.node]


def test_fold_restores_the_original_nodes_and_names():
    original = _prelu_graph()
    model = _prelu_graph()
    to_branch_free(model)
    assert to_prelu(model) == 3
    names = [n.name for n in original.graph.node]
    assert names[3] == ""  # the unnamed PRelu gets a name, everything else as it was
    got = _nodes(model)
    assert [g[1] for g in got] == [*names[:3], "PRelu_2"]
    assert [g[0] for g in got] == ["Conv", "PRelu", "PRelu", "PRelu"]
    assert [g[2:] for g in got] == [g[2:] for g in _nodes(original)]
    assert [i.name for i in model.graph.initializer] == [i.name for i in original.graph.initializer]
    assert to_prelu(model) == 0  # nothing left to fold


@pytest.mark.parametrize("part", ["/act2/PRelu/bf_add", "/act/PRelu/bf_max"])
def test_fold_leaves_lookalikes_alone(part):
    """A node named like a part whose neighbours are not the pattern stays as it is."""
    model = _prelu_graph()
    to_branch_free(model)
    node = next(n for n in model.graph.node if n.name == part)
    node.input[0] = "w"  # no longer Relu(x) + a * Min(x, 0) / Max(x, a * x)
    assert to_prelu(model) == 2
    assert [n.op_type for n in model.graph.node].count("PRelu") == 2


def test_exported_onnx_has_no_prelu_and_trt_parses_prelu(tmp_path, monkeypatch):
    """`grefel export`'s ONNX carries the branch-free form (equal outputs to the model), and
    the engine builder hands TensorRT's parser a copy with the PRelu nodes back; the copy is
    removed after the build and the source is untouched."""
    from export.pipeline import ExportOptions, run_export
    from grefel.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny")
    prelus = sum(isinstance(m, torch.nn.PReLU) for m in model.modules())
    assert prelus > 0
    ckpt = tmp_path / "m.safetensors"
    from grefel.checkpoint import save_checkpoint

    save_checkpoint(ckpt, model=model)
    out = tmp_path / "engines"
    run_export(ckpt, ExportOptions(out=out, onnx_only=True, fp16=False), log=lambda *_: None)
    exported = onnx.load(str(out / "m.onnx"))
    ops = [n.op_type for n in exported.graph.node]
    assert "PRelu" not in ops
    names = [n.name for n in exported.graph.node]
    assert sum(n.endswith(("/bf_relu", "/bf_max")) for n in names) == prelus

    import export.trt_builder as builder

    seen = {}
    parse = builder._parse

    def parse_and_look(trt, network, logger, onnx_path):  # the file is gone after parsing
        seen["ops"] = [n.op_type for n in onnx.load(str(onnx_path)).graph.node]
        parse(trt, network, logger, onnx_path)

    monkeypatch.setattr(builder, "_parse", parse_and_look)
    install(monkeypatch, Gpu(gen="10.13"))
    source = out / "m.onnx"
    stamp = source.read_bytes()
    build_engine(source, tmp_path / "m.engine", BuildOptions(fp16=False), log=str)
    assert seen["ops"].count("PRelu") == prelus
    assert source.read_bytes() == stamp
    assert list(tmp_path.glob("*.trt.onnx")) == []


def test_for_tensorrt_passes_unreadable_files_to_the_parser(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not onnx")
    assert for_tensorrt(bad, tmp_path) == bad
    assert for_tensorrt(tmp_path / "missing.onnx", tmp_path) == tmp_path / "missing.onnx"


@pytest.mark.parametrize("form", ["prelu", "four_nodes", "max"])
def test_tiny_model_outputs_match_torch_in_every_form(tmp_path: Path, form):
    """The exported tiny model in each form agrees with PyTorch to float tolerance."""
    from export.onnx_export import export_onnx
    from grefel.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny").eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    if form != "prelu":
        assert to_branch_free(proto, max_form=form == "max") > 0
        ops = [n.op_type for n in proto.graph.node]
        assert "PRelu" not in ops and ("Max" in ops) == (form == "max")
    x = np.random.default_rng(0).random((2, 3, 112, 112), dtype=np.float32)
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["probs"], {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).probs.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
