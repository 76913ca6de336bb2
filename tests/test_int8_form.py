"""The INT8 ONNX's activations as uint8 with zero point 128 (export/int8.py): the same
quantization as TensorRT's int8 with zero point 0, run by ONNX Runtime's x86 CPU as integer
kernels, and turned back for TensorRT's parser (export/trt_form.py)."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.int8 import (
    U8_ZERO_POINT,
    to_int8_activations,
    to_uint8_activations,
)
from export.trt_form import for_tensorrt

SHAPE = [1, 4, 6, 6]


def _qdq_graph(graph_output_q: bool = False) -> onnx.ModelProto:
    """x -> Q/DQ (int8, zp 0) -> Conv(DQ(int8 weights, per channel)) -> Q/DQ -> y, plus (when
    `graph_output_q`) the second Q's output as a graph output of its own."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.float32(0.05), "xs"),
        numpy_helper.from_array(np.int8(0), "xz"),
        numpy_helper.from_array(np.float32(0.2), "ys"),
        numpy_helper.from_array(np.int8(0), "yz"),
        numpy_helper.from_array(rng.integers(-127, 128, (4, 4, 3, 3)).astype(np.int8), "wq"),
        numpy_helper.from_array(rng.uniform(0.01, 0.02, 4).astype(np.float32), "ws"),
        numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xd", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"], name="q_c"),
        helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"], name="dq_c"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)]
    if graph_output_q:
        outputs.append(helper.make_tensor_value_info("cq", TensorProto.INT8, SHAPE))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, SHAPE)], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def _zero_points(model: onnx.ModelProto) -> dict:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: inits[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")}


def _inputs() -> np.ndarray:
    """Values across the whole int8 grid and far outside it (both ends saturate)."""
    x = np.random.default_rng(1).uniform(-8, 8, SHAPE).astype(np.float32)
    x.flat[:6] = [0.0, -6.4, 6.35, 1e6, -1e6, 0.025]  # 0.025 / 0.05: a .5 rounding case
    return x


def test_uint8_activations_are_the_same_quantization():
    model = _qdq_graph()
    x = _inputs()
    before = _run(model, x)
    assert to_uint8_activations(model) == 2
    zps = _zero_points(model)
    assert zps["q_x"].dtype == np.uint8 and int(zps["q_x"]) == 128
    assert zps["dq_x"].dtype == np.uint8 and zps["dq_c"].dtype == np.uint8
    assert zps["dq_w"].dtype == np.int8 and not zps["dq_w"].any()  # weights stay int8
    np.testing.assert_array_equal(_run(model, x), before)
    names = {i.name for i in model.graph.initializer}
    assert U8_ZERO_POINT in names and "xz" not in names and "yz" not in names


def test_int8_activations_undo_it_exactly():
    model = _qdq_graph()
    x = _inputs()
    before = _run(model, x)
    to_uint8_activations(model)
    assert to_int8_activations(model) == 2
    zps = _zero_points(model)
    assert all(z.dtype != np.uint8 and not z.any() for z in zps.values())
    assert U8_ZERO_POINT not in {i.name for i in model.graph.initializer}
    np.testing.assert_array_equal(_run(model, x), before)
    assert to_int8_activations(model) == 0


def test_pairs_that_are_not_plain_activation_pairs_are_left_alone():
    """A Q output that leaves the graph, or a zero point that is not 0, keeps its int8 form."""
    model = _qdq_graph(graph_output_q=True)
    assert to_uint8_activations(model) == 1  # q_x only
    assert _zero_points(model)["q_c"].dtype == np.int8
    model = _qdq_graph()
    next(i for i in model.graph.initializer if i.name == "xz").CopyFrom(
        numpy_helper.from_array(np.int8(3), "xz"))
    assert to_uint8_activations(model) == 1  # q_c only
    assert _zero_points(model)["q_x"].dtype == np.int8


def _optimized_ops(path: Path, tmp_path: Path) -> collections.Counter:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath)
                               .graph.node)


@pytest.fixture(scope="module")
def int8_tiny(tmp_path_factory) -> Path:
    """The tiny model through grefel's quantize_int8 (SynthFER faces as calibration images)."""
    import torch

    from export.gate_images import gate_images
    from export.int8 import quantize_int8
    from export.onnx_export import export_onnx
    from grefel.model import create_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(create_model("tiny").eval(), folder / "m.onnx")
    calib, _ = gate_images(None, n=16)
    quantize_int8(fp32, folder / "m.int8.onnx", calib)
    return folder / "m.int8.onnx"


def test_every_quantized_conv_runs_as_an_integer_kernel(int8_tiny, tmp_path):
    """ONNX Runtime fuses every DQ -> Conv -> Q of grefel's INT8 ONNX into QLinearConv; with
    the int8 activations TensorRT takes, most of them stay float Convs on x86."""
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(int8_tiny)).graph.node)
    ops = _optimized_ops(int8_tiny, tmp_path)
    assert ops["QLinearConv"] == convs and ops["Conv"] == 0
    trt_form = for_tensorrt(int8_tiny, tmp_path / "work")
    assert trt_form != int8_tiny
    zps = _zero_points(onnx.load(str(trt_form)))
    assert zps and all(z.dtype != np.uint8 and not z.any() for z in zps.values())


def test_tensorrt_parser_gets_int8_zero_points(int8_tiny, tmp_path, monkeypatch):
    """The engine builder hands TensorRT's parser the int8 form (TensorRT's QuantizeLinear
    takes zero point 0 only); the source stays as it is and the copy is removed."""
    import export.trt_builder as builder
    from export.lint import lint_onnx
    from export.trt_builder import BuildOptions, build_engine
    from tests.fakes.trt import Gpu, install

    seen = {}
    parse = builder._parse

    def parse_and_look(trt, network, logger, onnx_path):
        model = onnx.load(str(onnx_path))
        seen["zps"] = _zero_points(model)
        seen["prelu"] = sum(n.op_type == "PRelu" for n in model.graph.node)
        seen["report"] = lint_onnx(model, "trt10")
        parse(trt, network, logger, onnx_path)

    monkeypatch.setattr(builder, "_parse", parse_and_look)
    install(monkeypatch, Gpu(gen="10.13"))
    stamp = int8_tiny.read_bytes()
    build_engine(int8_tiny, tmp_path / "m.engine", BuildOptions(int8=True), log=str,
                 onnx_int8=int8_tiny)
    assert seen["zps"] and all(z.dtype == np.int8 and not z.any() for z in seen["zps"].values())
    assert seen["report"], "\n".join(seen["report"].lines())  # no int32 bias DQ either
    assert int8_tiny.read_bytes() == stamp
    assert list(tmp_path.glob("*.trt.onnx")) == []


def test_float_biases_are_what_the_int32_ones_dequantize_to():
    """DequantizeLinear of an int32 bias (per channel) -> the float32 constant, bit-equal."""
    import onnxruntime as ort

    from export.int8 import float_biases

    rng = np.random.default_rng(2)
    q = rng.integers(-2**20, 2**20, 4).astype(np.int32)
    scale = rng.uniform(1e-4, 1e-3, 4).astype(np.float32)
    inits = [numpy_helper.from_array(q, "bq"), numpy_helper.from_array(scale, "bs"),
             numpy_helper.from_array(np.zeros(4, np.int32), "bz")]
    nodes = [helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"], axis=0, name="dq"),
             helper.make_node("Add", ["x", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.zeros(4, np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=[
        "CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert float_biases(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Add"]
    assert [i.name for i in model.graph.initializer] == ["b"]
    got = ort.InferenceSession(model.SerializeToString(), providers=[
        "CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_tensorrt_form_of_a_plain_file_is_the_file(tmp_path):
    model = _qdq_graph()
    path = tmp_path / "plain.onnx"
    onnx.save(model, str(path))
    assert for_tensorrt(path, tmp_path / "work") == path


def test_lint_wants_int8_zero_points_and_lints_what_tensorrt_gets(tmp_path):
    """TensorRT's Q/DQ take zero point 0 only: the uint8 file fails the op lint, its TensorRT
    form passes it (what `grefel export NAME.int8.onnx --int8` lints)."""
    from export.lint import lint_onnx

    model = _qdq_graph()
    assert lint_onnx(model, "trt10")
    to_uint8_activations(model)
    report = lint_onnx(model, "trt10")
    assert not report and "zero point" in "\n".join(report.lines())
    path = tmp_path / "u8.onnx"
    onnx.save(model, str(path))
    assert lint_onnx(for_tensorrt(path, tmp_path / "work"), "trt10")
