"""The INT8 ONNX (explicit quantization, QDQ) and the INT8 gate (both run on the CPU).

`quantize_int8` writes `NAME.int8.onnx` from the checked FP32 ONNX with ONNX Runtime's static
quantizer (`onnxruntime.quantization.quantize_static`, QDQ format): QuantizeLinear /
DequantizeLinear pairs around the inputs and weights of every Conv, MatMul and Gemm, so that
ONNX Runtime runs them as integer kernels on the CPU and TensorRT builds them as INT8 layers
(explicit quantization: the scales are in the file, TensorRT needs no calibrator).

- Weights: per-channel (one scale per output channel of a Conv / column of a MatMul), int8,
  symmetric.
- Activations: per-tensor int8, symmetric (zero point 0: what TensorRT's Q/DQ layers accept),
  their ranges calibrated on real images (`--calib-data`) run through the FP32 model.
- Calibration method (`CALIB_METHODS`): `minmax` (default) takes each activation's range as the
  largest |value| seen over the calibration images; `percentile` the 99.999th percentile of
  |value| (clips rare outliers: finer steps for the bulk); `entropy` the range that minimises the
  KL divergence between the float and the quantized histogram (TensorRT's entropy calibrator).
- Kept in float (`nodes_to_exclude`): every LayerNorm, Softmax and the reliability tail, the
  same node set the FP16 conversion keeps in FP32 (`export.fp16.fp32_node_names`), plus the
  attention MatMuls on either side of each Softmax (`softmax_matmuls`: the q k^T scores and the
  weighted sum of v), so that a Softmax reads and writes float, never int8 logits or int8
  probabilities; ops other than Conv / MatMul / Gemm (PRelu, Add, Reshape, ...) compute in
  float between dequantized tensors.

- Activations in the file: uint8 with zero point 128 (`to_uint8_activations`). Symmetric int8
  with zero point 0 and uint8 with zero point 128 are the same quantization, value for value
  (round(x / s) saturated to [-128, 127], shifted by 128), but ONNX Runtime's x86 CPU fuses
  DequantizeLinear -> Conv -> QuantizeLinear into an integer QLinearConv only for uint8
  activations (U8S8): with int8 ones it runs a float Conv on dequantized weights (the paper
  preset at one thread: 194 ms against 219 ms in FP32), and with `session.qdqisint8allowed` an
  S8S8 kernel that is slower still (902 ms); with uint8 activations 95 ms. TensorRT takes int8
  Q/DQ with zero point 0 only, so the engine builder turns the activations back
  (`to_int8_activations`, exact) before parsing (`export.trt_form`), and the int32 biases
  ONNX Runtime's quantizer writes (DequantizeLinear of an int32 initializer, which ONNX
  Runtime's QLinearConv / QGemm fuse) as the float constants they dequantize to
  (`float_biases`, exact): TensorRT's DequantizeLinear takes int8 and fp8 only.

`int8_gate` runs the FP32 and the INT8 ONNX in the runtime's `OrtBackend` on held-out images
(never the calibration ones) and compares them with `export.compare.measure_agreement` under
`INT8_CRITERIA` (decisive flips, |dp|, |dconf|, NaN/inf).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple, Union

import numpy as np
import onnx

from export import ExportError
from export.compare import INT8_CRITERIA, Agreement, GateCriteria, measure_agreement, run_backend
from export.fp16 import _Graph, drop_unused_initializers, fp32_node_names, set_nodes
from export.options import CALIB_METHODS
from grefel._lazy import require
from grefel.fileio import atomic_path

__all__ = [
    "CALIB_METHODS",
    "QUANTIZED_OPS",
    "int8_gate",
    "quantize_int8",
    "softmax_matmuls",
    "float_biases",
    "to_int8_activations",
    "to_uint8_activations",
]

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
PERCENTILE = 99.999
U8_ZERO_POINT = "grefel_u8_zero_point"  # uint8 128: every activation Q/DQ pair in the file
S8_ZERO_POINT = "grefel_s8_zero_point"  # int8 0: the same pairs in TensorRT's form
# Ops between an attention MatMul and its Softmax (scale, bias, head reshapes).
_PASS_THROUGH = {"Add", "Mul", "Div", "Sub", "Reshape", "Transpose", "Cast", "Where"}


def softmax_matmuls(model: onnx.ModelProto, depth: int = 4) -> List[str]:
    """Names of the MatMuls that feed a Softmax or read its output, through at most `depth`
    pass-through ops (the attention scores q k^T and the weighted sum of v)."""
    g = _Graph(model.graph)

    def upstream(j: int) -> List[int]:
        return [g.producer[name] for name in g.nodes[j].input if name in g.producer]

    def downstream(j: int) -> List[int]:
        return g.consumers.get(g.nodes[j].output[0], [])

    found: Set[int] = set()
    for i, node in enumerate(g.nodes):
        if node.op_type != "Softmax":
            continue
        seen = {i}
        for neighbours in (upstream, downstream):
            todo = [(i, 0)]
            while todo:
                j, d = todo.pop()
                for k in neighbours(j):
                    if k in seen:
                        continue
                    seen.add(k)
                    if g.nodes[k].op_type == "MatMul":
                        found.add(k)
                    elif g.nodes[k].op_type in _PASS_THROUGH and d < depth:
                        todo.append((k, d + 1))
    return [g.nodes[k].name for k in sorted(found)]


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over an (N, 3, 112, 112) array."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = 8) -> None:
        self.images, self.input_name, self.batch = images, input_name, batch
        self._it: Optional[Iterator[Dict[str, np.ndarray]]] = None
        self.rewind()

    def rewind(self) -> None:
        self._it = iter([{self.input_name: np.ascontiguousarray(self.images[i:i + self.batch])}
                         for i in range(0, len(self.images), self.batch)])

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._it, None)  # type: ignore[arg-type]


def quantize_int8(
    fp32_onnx: Union[str, Path],
    int8_onnx: Union[str, Path],
    calib_images: np.ndarray,
    *,
    method: str = "minmax",
) -> Dict[str, Any]:
    """Write the QDQ INT8 version of `fp32_onnx` to `int8_onnx` (atomically); returns counts.

    Args:
        fp32_onnx: the checked FP32 ONNX (input `images`).
        int8_onnx: the file to write; untouched on failure.
        calib_images: float32 (N, 3, 112, 112) real images for the activation ranges.
        method: one of CALIB_METHODS (module doc).
    """
    if method not in CALIB_METHODS:
        raise ExportError(f"calibration method {method!r}: choose from {', '.join(CALIB_METHODS)}")
    if calib_images.ndim != 4 or len(calib_images) == 0:
        raise ExportError("INT8 calibration needs at least one image")
    require("onnxruntime")
    from onnxruntime import quantization as q

    model = onnx.load(str(fp32_onnx))
    if any(not n.name for n in model.graph.node):
        for i, n in enumerate(model.graph.node):
            n.name = n.name or f"{n.op_type}_{i}"
    keep_float = list(dict.fromkeys([*fp32_node_names(model), *softmax_matmuls(model)]))
    calib = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
             "entropy": q.CalibrationMethod.Entropy}[method]
    extra: Dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    with tempfile.TemporaryDirectory(prefix="grefel-int8-") as tmp:
        named = Path(tmp) / "named.onnx"
        onnx.save(model, str(named))
        out = Path(tmp) / "int8.onnx"
        try:
            q.quantize_static(
                str(named), str(out), _Reader(calib_images, model.graph.input[0].name),
                quant_format=q.QuantFormat.QDQ, per_channel=True,
                activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=keep_float,
                calibrate_method=calib, extra_options=extra,
            )
        except Exception as exc:  # onnxruntime's quantizer raises assorted types
            raise ExportError(f"{fp32_onnx}: INT8 quantization failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        quantized = onnx.load(str(out))
    # The grefel metadata (class names, config) travels with the model, plus the precision.
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update({"grefel.precision": "int8", "grefel.calibration": method,
                 "grefel.calibration_images": str(len(calib_images))})
    del quantized.metadata_props[:]
    for key, value in meta.items():
        quantized.metadata_props.add(key=key, value=value)
    to_uint8_activations(quantized)
    ops = [n.op_type for n in quantized.graph.node]
    quantized_nodes = sum(1 for n in model.graph.node if n.op_type in QUANTIZED_OPS
                          and n.name not in set(keep_float))
    with atomic_path(Path(int8_onnx)) as tmp_path:
        onnx.save(quantized, str(tmp_path))
    return {"calibration": method, "calibration_images": int(len(calib_images)),
            "quantized_nodes": quantized_nodes, "float_nodes_kept": len(keep_float),
            "quantize_linear": ops.count("QuantizeLinear"),
            "dequantize_linear": ops.count("DequantizeLinear"),
            "bytes": Path(int8_onnx).stat().st_size}


def int8_gate(
    fp32_onnx: Union[str, Path],
    int8_onnx: Union[str, Path],
    images: np.ndarray,
    *,
    criteria: GateCriteria = INT8_CRITERIA,
    threads: Optional[int] = None,
) -> Tuple[Agreement, Dict[str, np.ndarray]]:
    """The INT8 ONNX against the FP32 one on held-out `images` in ONNX Runtime on the CPU."""
    from grefel.runtime.ort_backend import OrtBackend

    reference = run_backend(OrtBackend(Path(fp32_onnx), device="cpu", threads=threads), images)
    candidate = run_backend(OrtBackend(Path(int8_onnx), device="cpu", threads=threads), images)
    gate = measure_agreement(reference, candidate, criteria, label="INT8 gate",
                             backend=f"onnxruntime CPU on {Path(int8_onnx).name}")
    return gate, candidate


def _shift_activations(model: onnx.ModelProto, *, to_uint8: bool) -> int:
    """Re-point the zero point of every activation QuantizeLinear (and of the DequantizeLinear
    nodes reading it) from int8 0 to uint8 128 (`to_uint8`) or back; the count of Q nodes.

    Weights are stored quantized (DequantizeLinear of an initializer, no QuantizeLinear) and are
    left as they are. A Q whose output reaches anything but a DequantizeLinear is left alone."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    if to_uint8:
        old_type, new_name, new_value = TensorProto.INT8, U8_ZERO_POINT, np.uint8(128)
    else:
        old_type, new_name, new_value = TensorProto.UINT8, S8_ZERO_POINT, np.int8(0)
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    shifted, replaced = 0, set()
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        if zp is None or zp.data_type != old_type or zp.dims:  # per-tensor activations only
            continue
        old = int(numpy_helper.to_array(zp))
        if old != (0 if to_uint8 else 128):
            continue
        readers = consumers.get(node.output[0], [])
        if node.output[0] in graph_outputs or not all(
                r.op_type == "DequantizeLinear" and list(r.input[:1]) == [node.output[0]]
                and len(r.input) == 3 and r.input[2] == node.input[2] for r in readers):
            continue
        replaced.add(node.input[2])
        node.input[2] = new_name
        for reader in readers:
            reader.input[2] = new_name
        shifted += 1
    if shifted and new_name not in inits:
        model.graph.initializer.append(numpy_helper.from_array(np.array(new_value), new_name))
    drop_unused_initializers(model, replaced | {U8_ZERO_POINT, S8_ZERO_POINT})
    return shifted


def to_uint8_activations(model: onnx.ModelProto) -> int:
    """Symmetric int8 activations (zero point 0) -> uint8 with zero point 128, exactly
    (module docstring: what ONNX Runtime's x86 CPU runs as integer kernels); the count."""
    return _shift_activations(model, to_uint8=True)


def to_int8_activations(model: onnx.ModelProto) -> int:
    """The inverse of `to_uint8_activations` (what TensorRT's Q/DQ layers take); the count."""
    return _shift_activations(model, to_uint8=False)


def float_biases(model: onnx.ModelProto) -> int:
    """Replace every DequantizeLinear of an int32 initializer (a quantized bias) by the float32
    initializer it computes, (q - zero point) * scale as ONNX Runtime does; the count."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    keep: List[onnx.NodeProto] = []
    made: List[onnx.TensorProto] = []
    for node in model.graph.node:
        q = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if q is None or q.data_type != TensorProto.INT32 or node.input[1] not in inits:
            keep.append(node)
            continue
        values = numpy_helper.to_array(q).astype(np.int64)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.int64)
                if len(node.input) > 2 and node.input[2] in inits else np.zeros((), np.int64))
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and values.ndim > 0:  # per axis: broadcast along `axis`
            shape = [1] * values.ndim
            shape[axis % values.ndim] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim else zero
        dequantized = (values - zero).astype(np.float32) * scale
        made.append(numpy_helper.from_array(dequantized.astype(np.float32), node.output[0]))
    if made:
        set_nodes(model, keep, made)
    return len(made)
