"""The branch-free PReLU of the exported ONNX (export/prelu.py): exact, reversible, and what
TensorRT's parser gets back as PRelu nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.prelu import fold_for_tensorrt, to_branch_free, to_prelu
from export.trt_builder import BuildOptions, build_engine
from tests.fakes.trt import Gpu, install

SHAPE = [2, 4, 5, 5]


def _prelu_graph() -> onnx.ModelProto:
    """x -> Conv -> PRelu -> PRelu(shared slope) -> y, two PRelus, one unnamed."""
    rng = np.random.default_rng(0)
    slope = numpy_helper.from_array(rng.uniform(-0.5, 0.9, (4, 1, 1)).astype(np.float32), "a")
    w = numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("PRelu", ["c", "a"], ["p"], name="/act/PRelu"),
             helper.make_node("PRelu", ["p", "a"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)], [slope, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _nodes(model: onnx.ModelProto) -> list:
    return [(n.op_type, n.name, list(n.input), list(n.output)) for n in model.graph.node]


def test_branch_free_form_is_exactly_prelu():
    """Bit-equal outputs in ONNX Runtime on mixed signs, zeros, tiny and huge values."""
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32) * 3
    x.flat[:8] = [0.0, -0.0, 1e-38, -1e-38, 3e38, -3e38, np.inf, -np.inf]
    model = _prelu_graph()
    before = _run(model, x)
    assert to_branch_free(model) == 2
    assert "PRelu" not in {n.op_type for n in model.graph.node}
    np.testing.assert_array_equal(_run(model, x), before)


def test_fold_restores_the_original_nodes_and_names():
    original = _prelu_graph()
    model = _prelu_graph()
    to_branch_free(model)
    assert to_prelu(model) == 2
    names = [n.name for n in original.graph.node]
    assert names[2] == ""  # the unnamed PRelu gets a name, everything else as it was
    got = _nodes(model)
    assert [g[1] for g in got] == [names[0], names[1], "PRelu_1"]
    assert [g[0] for g in got] == ["Conv", "PRelu", "PRelu"]
    assert [g[2:] for g in got] == [g[2:] for g in _nodes(original)]
    assert [i.name for i in model.graph.initializer] == [i.name for i in original.graph.initializer]
    assert to_prelu(model) == 0  # nothing left to fold


def test_fold_leaves_lookalikes_alone():
    """A Relu named like a part whose neighbours are not the pattern stays as it is."""
    model = _prelu_graph()
    to_branch_free(model)
    add = next(n for n in model.graph.node if n.name.endswith("/act/PRelu/bf_add"))
    add.input[0] = "c"  # no longer r + a * (x - r)
    assert to_prelu(model) == 1
    assert [n.op_type for n in model.graph.node].count("PRelu") == 1


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
    assert "PRelu" not in ops and ops.count("Relu") >= prelus

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
    assert list(tmp_path.glob("*.prelu.onnx")) == []


def test_fold_for_tensorrt_passes_unreadable_files_to_the_parser(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not onnx")
    assert fold_for_tensorrt(bad, tmp_path) == bad
    assert fold_for_tensorrt(tmp_path / "missing.onnx", tmp_path) == tmp_path / "missing.onnx"


@pytest.mark.parametrize("form", ["prelu", "branch_free"])
def test_tiny_model_outputs_match_torch_in_both_forms(tmp_path: Path, form):
    """The exported tiny model in either form agrees with PyTorch to float tolerance."""
    from export.onnx_export import export_onnx
    from grefel.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny").eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    if form == "branch_free":
        assert to_branch_free(proto) > 0
    x = np.random.default_rng(0).random((2, 3, 112, 112), dtype=np.float32)
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["probs"], {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).probs.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
