"""PReLU in two equal ONNX forms: branch-free for ONNX Runtime's CPU, `PRelu` for TensorRT.

PReLU(x) = x for x > 0, a * x otherwise (a per channel). ONNX Runtime's CPU `PRelu` kernel
picks one of the two per element with a branch, so its time depends on the signs of x
(`python -m benchmarks.onnx_prelu` times it on one [1, 64, 112, 112] tensor, one thread:
benchmarks/results/onnx_prelu.md). Activations of a face network have mixed signs; the paper
preset's 55 PRelu nodes took 22-24 ms of its ~110 ms forward, where the POSTER V2 reference,
fed its un-normalised [0, 1] input, spent 12.5 ms on the same nodes.

The export therefore writes every `PRelu` as

    y = Relu(x) + a * Min(x, 0)                            (four vectorised element-wise ops)

which is exactly PReLU in floating point, infinities included: for x > 0 it is x + a * 0 = x,
otherwise 0 + a * x, the product `PRelu` computes (`Relu(x) + a * (x - Relu(x))` is one op
cheaper to write but turns x = inf into inf - inf = NaN). TensorRT has a PReLU layer of its
own (fused with convolutions, and what DLA runs), so the engine builder folds the pattern back
into `PRelu` nodes with their original names before parsing (`fold_for_tensorrt`); FP32 pins by
node name keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import onnx
from onnx import helper, numpy_helper

from grefel.fileio import atomic_path

__all__ = ["fold_for_tensorrt", "to_branch_free", "to_prelu"]

# Suffixes of the four nodes that stand for one PRelu named NAME: NAME + suffix.
_PARTS = ("/bf_relu", "/bf_min", "/bf_mul", "/bf_add")
ZERO = "prelu_bf_zero"  # the scalar 0 of every Min(x, 0)


def to_branch_free(model: onnx.ModelProto) -> int:
    """Replace every `PRelu` node of the main graph by Relu, Sub, Mul, Add; the count replaced."""
    nodes: List[onnx.NodeProto] = []
    replaced = 0
    zero_dtype = None
    for node in model.graph.node:
        if node.op_type != "PRelu" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        x, slope = node.input
        if zero_dtype is None:
            zero_dtype = _slope_dtype(model, slope)
        name = node.name or f"PRelu_{replaced}"
        pos, neg, scaled = f"{name}/bf_pos", f"{name}/bf_neg", f"{name}/bf_scaled"
        nodes += [
            helper.make_node("Relu", [x], [pos], name=name + _PARTS[0]),
            helper.make_node("Min", [x, ZERO], [neg], name=name + _PARTS[1]),
            helper.make_node("Mul", [neg, slope], [scaled], name=name + _PARTS[2]),
            helper.make_node("Add", [pos, scaled], [node.output[0]], name=name + _PARTS[3]),
        ]
        replaced += 1
    if replaced:
        if not any(i.name == ZERO for i in model.graph.initializer):
            model.graph.initializer.append(
                numpy_helper.from_array(np.zeros((), dtype=zero_dtype), ZERO))
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return replaced


def _slope_dtype(model: onnx.ModelProto, slope: str) -> np.dtype:
    """The element type of a PRelu slope (the type Min's 0 must have); float32 if unknown."""
    for init in model.graph.initializer:
        if init.name == slope:
            return helper.tensor_dtype_to_np_dtype(init.data_type)
    return np.dtype(np.float32)


def to_prelu(model: onnx.ModelProto) -> int:
    """Fold the four nodes `to_branch_free` wrote back into one `PRelu` each (the original name
    and position); the count folded. Nodes that only look alike are left alone."""
    by_name: Dict[str, onnx.NodeProto] = {n.name: n for n in model.graph.node}
    folded: Dict[str, onnx.NodeProto] = {}  # name of the Relu part -> the PRelu replacing all four
    drop = set()
    for node in model.graph.node:
        if node.op_type != "Relu" or not node.name.endswith(_PARTS[0]):
            continue
        name = node.name[: -len(_PARTS[0])]
        low, mul, add = (by_name.get(name + part) for part in _PARTS[1:])
        x, pos = node.input[0], node.output[0]
        if not (low is not None and mul is not None and add is not None
                and low.op_type == "Min" and list(low.input) == [x, ZERO]
                and mul.op_type == "Mul" and mul.input[0] == low.output[0]
                and add.op_type == "Add" and list(add.input) == [pos, mul.output[0]]):
            continue
        folded[node.name] = helper.make_node("PRelu", [x, mul.input[1]], [add.output[0]], name=name)
        drop.update(id(n) for n in (low, mul, add))
    if not folded:
        return 0
    nodes = [folded.get(n.name, n) for n in model.graph.node if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(ZERO in n.input for n in nodes):
        kept = [i for i in model.graph.initializer if i.name != ZERO]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return len(folded)


def fold_for_tensorrt(source: Path, work: Path) -> Path:
    """`source`, or a copy in `work` with the branch-free PReLUs folded back (what TensorRT's
    parser should see). The copy is written atomically; `source` is never changed."""
    try:
        model = onnx.load(str(source))
    except Exception:  # unreadable or not ONNX: TensorRT's parser reports it in its own words
        return source
    if to_prelu(model) == 0:
        return source
    work.mkdir(parents=True, exist_ok=True)
    target = work / f"{source.stem}.prelu.onnx"
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    return target
