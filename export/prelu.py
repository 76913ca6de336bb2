"""PReLU in equal ONNX forms: branch-free for ONNX Runtime's CPU, `PRelu` for TensorRT.

PReLU(x) = x for x > 0, a * x otherwise (a per channel). ONNX Runtime's CPU `PRelu` kernel
picks one of the two per element with a branch, so its time depends on the signs of x
(`python -m research.onnx_prelu` times it on one [1, 64, 112, 112] tensor, one thread:
research/results/onnx_prelu.md). Activations of a face network have mixed signs; the paper
preset's 55 PRelu nodes took 22-24 ms of its ~110 ms forward, where the POSTER V2 reference,
fed its un-normalised [0, 1] input, spent 12.5 ms on the same nodes.

The export therefore writes every `PRelu` whose slope is a constant with every a <= 1, a != 0 as

    y = Max(x, a * x)                                       (two vectorised element-wise ops)

(for a <= 1: x >= a * x when x >= 0 and a * x >= x when x < 0), and any other `PRelu` as

    y = Relu(x) + a * Min(x, 0)                             (four)

Both are exactly PReLU in floating point, infinities included: the product a * x is the one
`PRelu` computes, and |a * x| <= |x| cannot overflow in FP16. a = 0 is excluded from the first
form because 0 * inf is NaN where PReLU(inf) = inf; in the second, x > 0 gives x + a * 0 = x and
otherwise 0 + a * x (`Relu(x) + a * (x - Relu(x))` is one op cheaper to write but turns x = inf
into inf - inf = NaN). TensorRT has a PReLU layer of its own (fused with convolutions, and what
DLA runs), so the engine builder folds both patterns back into `PRelu` nodes with their original
names before parsing (`export.trt_form.for_tensorrt`); FP32 pins by node name keep working.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.fp16 import drop_unused_initializers

__all__ = ["to_branch_free", "to_prelu"]

# Suffixes of the nodes that stand for one PRelu named NAME: NAME + suffix.
_PARTS = ("/bf_relu", "/bf_min", "/bf_mul", "/bf_add")  # Relu(x) + a * Min(x, 0)
_MAX_PARTS = ("/bf_scale", "/bf_max")  # Max(x, a * x)
ZERO = "prelu_bf_zero"  # the scalar 0 of every Min(x, 0)


def to_branch_free(model: onnx.ModelProto, *, max_form: bool = True) -> int:
    """Replace every `PRelu` node of the main graph by one of the two branch-free forms of the
    module docstring (Max(x, a * x) where its slope allows it and `max_form`); the count
    replaced."""
    slopes = {init.name: init for init in model.graph.initializer}
    nodes: List[onnx.NodeProto] = []
    replaced = 0
    zero_dtype = None
    for node in model.graph.node:
        if node.op_type != "PRelu" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        x, slope = node.input
        name = node.name or f"PRelu_{replaced}"
        replaced += 1
        if max_form and _max_form_is_exact(slopes.get(slope)):
            scaled = f"{name}/bf_scaled"
            nodes += [
                helper.make_node("Mul", [x, slope], [scaled], name=name + _MAX_PARTS[0]),
                helper.make_node("Max", [x, scaled], [node.output[0]], name=name + _MAX_PARTS[1]),
            ]
            continue
        if zero_dtype is None:
            zero_dtype = _slope_dtype(model, slope)
        pos, neg, scaled = f"{name}/bf_pos", f"{name}/bf_neg", f"{name}/bf_scaled"
        nodes += [
            helper.make_node("Relu", [x], [pos], name=name + _PARTS[0]),
            helper.make_node("Min", [x, ZERO], [neg], name=name + _PARTS[1]),
            helper.make_node("Mul", [neg, slope], [scaled], name=name + _PARTS[2]),
            helper.make_node("Add", [pos, scaled], [node.output[0]], name=name + _PARTS[3]),
        ]
    if replaced:
        if zero_dtype is not None and not any(i.name == ZERO for i in model.graph.initializer):
            model.graph.initializer.append(
                numpy_helper.from_array(np.zeros((), dtype=zero_dtype), ZERO))
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return replaced


def _max_form_is_exact(slope: Optional[onnx.TensorProto]) -> bool:
    """Max(x, a * x) equals PReLU for every x when the slope is a constant with a <= 1, a != 0."""
    if slope is None:  # computed at run time: unknown values
        return False
    a = numpy_helper.to_array(slope).astype(np.float64)
    return bool(a.size and np.all(np.isfinite(a)) and np.all(a <= 1.0) and np.all(a != 0.0))


def _slope_dtype(model: onnx.ModelProto, slope: str) -> np.dtype:
    """The element type of a PRelu slope (the type Min's 0 must have); float32 if unknown."""
    for init in model.graph.initializer:
        if init.name == slope:
            return helper.tensor_dtype_to_np_dtype(init.data_type)
    return np.dtype(np.float32)


def to_prelu(model: onnx.ModelProto) -> int:
    """Fold the nodes `to_branch_free` wrote back into one `PRelu` each (the original name and
    position); the count folded. Nodes that only look alike are left alone."""
    by_name: Dict[str, onnx.NodeProto] = {n.name: n for n in model.graph.node}
    folded: Dict[str, onnx.NodeProto] = {}  # name of a pattern's first node -> its PRelu
    drop = set()
    for node in model.graph.node:
        if node.op_type == "Relu" and node.name.endswith(_PARTS[0]):
            name = node.name[: -len(_PARTS[0])]
            low, mul, add = (by_name.get(name + part) for part in _PARTS[1:])
            x, pos = node.input[0], node.output[0]
            if not (low is not None and mul is not None and add is not None
                    and low.op_type == "Min" and list(low.input) == [x, ZERO]
                    and mul.op_type == "Mul" and mul.input[0] == low.output[0]
                    and add.op_type == "Add" and list(add.input) == [pos, mul.output[0]]):
                continue
            parts, slope, out = (low, mul, add), mul.input[1], add.output[0]
        elif node.op_type == "Mul" and node.name.endswith(_MAX_PARTS[0]):
            name = node.name[: -len(_MAX_PARTS[0])]
            top = by_name.get(name + _MAX_PARTS[1])
            x = node.input[0]
            if not (top is not None and top.op_type == "Max"
                    and list(top.input) == [x, node.output[0]]):
                continue
            parts, slope, out = (top,), node.input[1], top.output[0]
        else:
            continue
        folded[node.name] = helper.make_node("PRelu", [x, slope], [out], name=name)
        drop.update(id(n) for n in parts)
    if not folded:
        return 0
    nodes = [folded.get(n.name, n) for n in model.graph.node if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    drop_unused_initializers(model, {ZERO})
    return len(folded)
