"""The FP16-typed ONNX and the FP16 gate (both run on the CPU).

`convert_to_fp16` writes the ONNX that strongly typed TensorRT (10.12+, required on 11.x) builds
in FP16: float tensors become float16 except the graph inputs/outputs and the numerically
sensitive parts, which stay float32 behind Cast nodes:

- LayerNorm: the LayerNormalization op (opset 17) or its decomposed form (opset 16: ReduceMean,
  Sub, Pow, ReduceMean, Add, Sqrt, Div and the affine Mul/Add), whose squares overflow FP16;
- every Softmax;
- the reliability-balancing tail: everything downstream of the fusion ViT's final LayerNorm
  (SE block, eq. 9 head and its softmax, anchor distances and softmax of eqs. 13-15, the MHSA
  correction of eqs. 16-17, the mixing of eqs. 18-19 and the confidence of eqs. 10-11).

The same node set is what the weakly typed TensorRT build (8.5-10.11) pins to FP32
(`fp32_node_names`). The converter is ours (about 100 lines) so its rules are visible and the
engine-only Jetson path needs nothing beyond `onnx`.

`fp16_gate` runs that FP16 ONNX in ONNX Runtime on the CPU against the FP32 ONNX on the same
images; where ORT has no FP16 CPU kernel for an op it falls back to the torch model in
`.half()` (the whole network in FP16, stricter than the ONNX), and says which one it used.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export import ExportError
from export.compare import Agreement, agreement
from export.runners import ort_session, run_onnxruntime, run_torch
from grefel.fileio import atomic_path

__all__ = ["convert_to_fp16", "fp16_gate", "fp32_node_names", "gate_images"]

# Ops computed in FP16 when not in the FP32 set; every other op keeps its float32 tensors.
FP16_OPS = {
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "Div", "Erf", "Expand",
    "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity", "MatMul", "MaxPool", "Mul",
    "Neg", "PRelu", "Relu", "Reshape", "Sigmoid", "Slice", "Split", "Squeeze", "Sub", "Tanh",
    "Transpose", "Unsqueeze", "Where",
}
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


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

    def cast(name: str, to: int) -> str:
        key = f"{name}__to_{'fp16' if to == HALF else 'fp32'}"
        if key not in casts:
            if name in inits and to == HALF:
                arr = numpy_helper.to_array(inits[name]).astype(np.float16)
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
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(new_inits)
    used = {i for n in model.graph.node for i in n.input}
    kept_inits = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits)
    del model.graph.value_info[:]
    model.metadata_props.add(key="grefel.precision", value="fp16 (FP32 I/O, LayerNorm, Softmax, "
                             "reliability tail)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{dst}: the FP16-typed graph is invalid ({exc})") from exc
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return {"fp16_nodes": converted, "fp32_nodes": len(keep), "casts": len(casts)}


def gate_images(calib_dir: Optional[Union[str, Path]], n_random: int = 32, n_data: int = 64,
                seed: int = 0) -> np.ndarray:
    """Gate inputs (N, 3, 112, 112) float32 in [0, 1]: images of `calib_dir` + random ones."""
    rng = np.random.default_rng(seed)
    parts = [rng.random((n_random, 3, 112, 112), dtype=np.float32)]
    if calib_dir is not None:
        parts.insert(0, _load_folder(Path(calib_dir), n_data))
    return np.concatenate(parts)


def _load_folder(folder: Path, limit: int) -> np.ndarray:
    from grefel.contract import ImageError, load_model_input

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise ExportError(f"{folder}: no .png/.jpg images for the FP16 gate")
    step = max(1, len(files) // limit)
    out = []
    for p in files[::step][:limit]:
        try:
            out.append(load_model_input(p))  # the decode and resize of every path
        except ImageError as exc:
            raise ExportError(str(exc)) from None
    return np.stack(out)


def fp16_gate(
    fp32_onnx: Union[str, Path],
    fp16_onnx: Union[str, Path],
    images: np.ndarray,
    *,
    min_agreement: float = 0.99,
    torch_model=None,
    names: Sequence[str] = ("probs", "primary", "confidence"),
) -> Agreement:
    """FP16 arithmetic vs FP32 on the same images; the result's truth value is pass/fail."""
    reference = run_onnxruntime(ort_session(fp32_onnx), images, chunk=16)
    try:
        candidate = run_onnxruntime(ort_session(fp16_onnx), images, chunk=16)
        backend = f"onnxruntime CPU on {Path(fp16_onnx).name}"
    except Exception as exc:  # no FP16 CPU kernel for some op (NOT_IMPLEMENTED)
        if torch_model is None:
            raise ExportError(f"{fp16_onnx}: ONNX Runtime cannot run it on the CPU ({exc}) and "
                              "no torch model is at hand for the FP16 gate") from exc
        half = copy.deepcopy(torch_model).eval().half()
        candidate = run_torch(half, images, names, half=True)
        backend = f"torch .half() on CPU (ONNX Runtime: {str(exc).splitlines()[0][:120]})"
    return agreement(reference, candidate, min_agreement, label="FP16 gate", backend=backend)
