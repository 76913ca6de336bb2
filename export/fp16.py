"""The FP16-typed ONNX and the FP16 gate (both run on the CPU).

`convert_to_fp16` writes the ONNX that strongly typed TensorRT (10.0+, always on 11.x) builds
in FP16: float tensors become float16 except the graph inputs/outputs and the numerically
sensitive parts, which stay float32 behind Cast nodes:

- LayerNorm: the LayerNormalization op (opset 17) or its decomposed form (opset 16: ReduceMean,
  Sub, Pow, ReduceMean, Add, Sqrt, Div and the affine Mul/Add), whose squares overflow FP16;
- every Softmax;
- the reliability-balancing tail: everything downstream of the fusion ViT's final LayerNorm
  (SE block, eq. 9 head and its softmax, anchor distances and softmax of eqs. 13-15, the MHSA
  correction of eqs. 16-17, the mixing of eqs. 18-19 and the confidence of eqs. 10-11).

The same node set is what the weakly typed TensorRT build (8.5 and 8.6 only) pins to FP32
(`fp32_node_names`). The converter is ours (about 100 lines) so its rules are visible and the
engine-only Jetson path needs nothing beyond `onnx`.

Initializers cast to float16 are clamped to its finite range (+-65504); magnitudes too small
for its smallest subnormal (2^-24) round to 0; both counts are in the returned report.

`fp16_gate` runs, in the runtime's `OrtBackend` on the CPU, the FP32 ONNX against an emulation
of the FP16 rounding (`emulate_fp16`: ONNX Runtime's CPU provider would run most of the
FP16-typed ONNX in FP32) on the same images, compared by `export.compare.measure_agreement`;
the FP16-typed file is run as well, to show that it loads and agrees.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export import ExportError
from export.compare import FP16_CRITERIA, Agreement, GateCriteria, measure_agreement, run_backend
from grefel.fileio import atomic_path

__all__ = ["convert_to_fp16", "emulate_fp16", "fp16_gate", "fp32_node_names", "to_float16"]

# Ops computed in FP16 when not in the FP32 set; every other op keeps its float32 tensors.
FP16_OPS = {
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "Div", "Erf", "Expand",
    "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity", "MatMul", "Max", "MaxPool",
    "Min", "Mul", "Neg", "PRelu", "Relu", "Reshape", "Sigmoid", "Slice", "Split", "Squeeze", "Sub",
    "Tanh", "Transpose", "Unsqueeze", "Where",
}
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_TINY = 2.0**-24  # smallest positive subnormal


def to_float16(values: np.ndarray) -> Tuple[np.ndarray, int, int]:
    """float32 -> float16 without inf: (array, values clamped to +-65504, nonzero values too
    small for float16's smallest subnormal 2^-24, which round to 0)."""
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    clamped = int(np.count_nonzero(finite & (np.abs(values) > FP16_MAX)))
    flushed = int(np.count_nonzero((values != 0) & (np.abs(values) < FP16_TINY / 2)))
    return np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16), clamped, flushed


class _Graph:
    """Producer and consumer maps of a graph's nodes (by index)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.producer: Dict[str, int] = {o: i for i, n in enumerate(self.nodes) for o in n.output}
        self.consumers: Dict[str, List[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for name in n.input:
                self.consumers[name].append(i)

    def only_consumer(self, tensor: str, op: str) -> Optional[int]:
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and self.nodes[users[0]].op_type == op:
            return users[0]
        return None

    def downstream(self, tensors: Iterable[str]) -> Set[int]:
        seen: Set[int] = set()
        todo = list(tensors)
        while todo:
            for i in self.consumers.get(todo.pop(), []):
                if i not in seen:
                    seen.add(i)
                    todo.extend(self.nodes[i].output)
        return seen


def _decomposed_layernorms(g: _Graph) -> List[List[int]]:
    """Node groups of opset-16 LayerNorms: x - mean(x), squared, mean, + eps, sqrt, divide."""
    groups = []
    for i, n in enumerate(g.nodes):
        if n.op_type != "Pow":
            continue
        sub = g.producer.get(n.input[0])
        if sub is None or g.nodes[sub].op_type != "Sub":
            continue
        mean = g.producer.get(g.nodes[sub].input[1])
        if mean is None or g.nodes[mean].op_type != "ReduceMean":
            continue
        chain, last = [mean, sub, i], i
        for op in ("ReduceMean", "Add", "Sqrt", "Div", "Mul", "Add"):
            nxt = g.only_consumer(g.nodes[last].output[0], op)
            if nxt is None:
                break
            chain.append(nxt)
            last = nxt
        if len(chain) >= 7:  # through the Div at least: it is a LayerNorm
            groups.append(chain)
    return groups


def fp32_node_names(model: onnx.ModelProto) -> List[str]:
    """Names of the nodes kept in FP32: LayerNorm, Softmax and the reliability tail."""
    g = _Graph(model.graph)
    keep: Set[int] = {i for i, n in enumerate(g.nodes) if n.op_type in ("Softmax",
                                                                        "LayerNormalization")}
    norms = [[i] for i, n in enumerate(g.nodes) if n.op_type == "LayerNormalization"]
    norms += _decomposed_layernorms(g)
    for chain in norms:
        keep.update(chain)
    if norms:  # the tail: everything after the last LayerNorm (the fusion ViT's final norm)
        final = max(norms, key=lambda c: max(c))
        keep |= g.downstream(g.nodes[max(final)].output)
    return [g.nodes[i].name for i in sorted(keep)]


def _float_types(model: onnx.ModelProto) -> Dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def convert_to_fp16(src: Union[str, Path], dst: Union[str, Path]) -> Dict[str, int]:
    """Write the FP16-typed version of FP32 ONNX `src` to `dst`; returns node counts."""
    model = onnx.load(str(src))
    if any(not n.name for n in model.graph.node):
        for i, n in enumerate(model.graph.node):
            n.name = n.name or f"{n.op_type}_{i}"
    keep = set(fp32_node_names(model))
    types = _float_types(model)
    inits = {t.name: t for t in model.graph.initializer}
    half: Set[str] = set()  # tensors that are float16 in the new graph
    casts: Dict[str, str] = {}  # (tensor, to) -> cast output name, cached
    new_nodes: List[onnx.NodeProto] = []
    new_inits: List[onnx.TensorProto] = []
    range_counts = {"init_values_clamped": 0, "init_values_flushed": 0}

    def cast(name: str, to: int) -> str:
        key = f"{name}__to_{'fp16' if to == HALF else 'fp32'}"
        if key not in casts:
            if name in inits and to == HALF:
                arr, clamped, flushed = to_float16(numpy_helper.to_array(inits[name]))
                range_counts["init_values_clamped"] += clamped
                range_counts["init_values_flushed"] += flushed
                new_inits.append(numpy_helper.from_array(arr, key))
            else:
                new_nodes.append(helper.make_node("Cast", [name], [key], name=key, to=to))
            casts[key] = key
        return key

    converted = 0
    for node in model.graph.node:
        to_half = node.op_type in FP16_OPS and node.name not in keep
        for k, name in enumerate(node.input):
            if not name:
                continue
            if to_half and types.get(name) == FLOAT and name not in half:
                node.input[k] = cast(name, HALF)
            elif not to_half and name in half:
                node.input[k] = cast(name, FLOAT)
        if to_half:
            converted += 1
            half.update(o for o in node.output if types.get(o) == FLOAT)
        new_nodes.append(node)
    for out in model.graph.output:  # outputs stay float32
        if out.name in half:
            producer = next(n for n in new_nodes if out.name in n.output)
            inner = f"{out.name}__fp16"
            producer.output[list(producer.output).index(out.name)] = inner
            for n in new_nodes:
                n.input[:] = [inner if i == out.name else i for i in n.input]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], name=f"{inner}_out",
                                              to=FLOAT))
    set_nodes(model, new_nodes, new_inits)
    del model.graph.value_info[:]
    model.metadata_props.add(key="grefel.precision", value="fp16 (FP32 I/O, LayerNorm, Softmax, "
                             "reliability tail)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{dst}: the FP16-typed graph is invalid ({exc})") from exc
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return {"fp16_nodes": converted, "fp32_nodes": len(keep), "casts": len(casts),
            **range_counts}


def emulate_fp16(src: Union[str, Path], dst: Union[str, Path]) -> None:
    """Write an FP32 graph that rounds like the FP16-typed one: the same node set computes with
    float16 weights (clamped as `convert_to_fp16` does) and every float tensor entering or
    leaving it is rounded through float16 (Cast to float16 and back), so an overflow becomes
    inf exactly where an FP16 engine's would. The arithmetic inside an op stays FP32, as in
    TensorRT's FP16 kernels that accumulate in FP32.

    Why not run the FP16-typed ONNX itself: ONNX Runtime's CPU provider lacks FP16 kernels for
    most ops, inserts Casts to run them in FP32 and removes the Cast pairs between them, so a
    chain of "FP16" ops runs in FP32 without any rounding (an activation of 1.2e5 that overflows
    float16 passed through it unnoticed).
    """
    model = onnx.load(str(src))
    for i, n in enumerate(model.graph.node):
        n.name = n.name or f"{n.op_type}_{i}"
    keep = set(fp32_node_names(model))
    types = _float_types(model)
    inits = {t.name: t for t in model.graph.initializer}
    rounded: Dict[str, str] = {}  # float tensor -> its float16-rounded twin
    new_nodes: List[onnx.NodeProto] = []

    def round_trip(name: str, out: Optional[str] = None) -> str:
        out = out or f"{name}__fp16r"
        half = f"{out}__fp16"
        new_nodes.append(helper.make_node("Cast", [name], [half], name=half, to=HALF))
        new_nodes.append(helper.make_node("Cast", [half], [out], name=f"{half}_back", to=FLOAT))
        return out

    for node in model.graph.node:
        half = node.op_type in FP16_OPS and node.name not in keep
        if half:
            for k, name in enumerate(node.input):
                if not name or types.get(name) != FLOAT:
                    continue
                if name not in rounded:
                    if name in inits:
                        arr, _, _ = to_float16(numpy_helper.to_array(inits[name]))
                        rounded[name] = f"{name}__fp16r"
                        model.graph.initializer.append(
                            numpy_helper.from_array(arr.astype(np.float32), rounded[name]))
                    else:
                        rounded[name] = round_trip(name)
                node.input[k] = rounded[name]
        new_nodes.append(node)
        if half:
            for k, out in enumerate(node.output):
                if types.get(out) == FLOAT:
                    node.output[k] = f"{out}__fp32"
                    rounded[out] = round_trip(node.output[k], out=out)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    del model.graph.value_info[:]
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))


def fp16_gate(
    fp32_onnx: Union[str, Path],
    fp16_onnx: Union[str, Path],
    images: np.ndarray,
    *,
    criteria: GateCriteria = FP16_CRITERIA,
) -> Tuple[Agreement, Dict[str, Any]]:
    """FP16 arithmetic vs FP32 on the same images, through the runtime's `OrtBackend`.

    Returns (the gate, a check of the FP16-typed file). The gate runs `emulate_fp16` of the FP32
    ONNX (the rounding an FP16 engine does) against the FP32 ONNX; its truth value is pass/fail
    (`export.compare.measure_agreement`). The FP16-typed ONNX, the file TensorRT builds, is run
    too, to prove it loads and computes the same outputs; where ONNX Runtime has no CPU kernel
    for one of its ops, the check says so.
    """
    from grefel.runtime.base import BackendError
    from grefel.runtime.ort_backend import OrtBackend

    reference = run_backend(OrtBackend(Path(fp32_onnx), device="cpu"), images)
    with tempfile.TemporaryDirectory(prefix="grefel-fp16-") as tmp:
        emulated = Path(tmp) / "emulated.onnx"
        emulate_fp16(fp32_onnx, emulated)
        candidate = run_backend(OrtBackend(emulated, device="cpu"), images)
    gate = measure_agreement(reference, candidate, criteria, label="FP16 gate",
                             backend="FP16 rounding emulated in ONNX Runtime CPU")
    try:
        typed = run_backend(OrtBackend(Path(fp16_onnx), device="cpu"), images)
    except BackendError as exc:  # no FP16 CPU kernel for some op (NOT_IMPLEMENTED)
        return gate, {"ran": False, "why": str(exc).splitlines()[0][:200]}
    check = measure_agreement(reference, typed, criteria, label="FP16-typed ONNX",
                              backend=f"onnxruntime CPU on {Path(fp16_onnx).name}")
    return gate, {"ran": True, **check.to_dict()}


def set_nodes(model: onnx.ModelProto, nodes: List[onnx.NodeProto],
              initializers: List[onnx.TensorProto]) -> None:
    """The main graph's nodes become `nodes`, `initializers` are added, and the initializers no
    node reads any more are dropped."""
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    drop_unused_initializers(model)


def drop_unused_initializers(model: onnx.ModelProto, names: Optional[Set[str]] = None) -> None:
    """Remove the initializers no node of the main graph reads (only those in `names`, if
    given)."""
    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer
            if t.name in used or (names is not None and t.name not in names)]
    if len(kept) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
