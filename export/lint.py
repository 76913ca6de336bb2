"""TensorRT op lint: an ONNX graph's op types and opset against the ONNX-TensorRT op table.

The table (`export/data/trt_onnx_supported_ops.json`) is onnx-tensorrt's `docs/operators.md` as
of TensorRT 11.1, with the differences of 10.15, 10.0-10.1 (used for 10.3, JetPack 6.1/6.2), 8.6
and 8.5; its `source` fields name the commits. Per target: the opset must be in the parser's
range, every op must be supported, and every op with a restriction is listed with the
restriction's text and, where the graph can show it, whether the graph meets it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import onnx

from grefel.contract import TENSORRT_TARGETS, TensorRTTarget, opset_for_target

__all__ = ["TARGETS", "LintReport", "lint_onnx", "load_op_table", "target_table"]

TABLE_PATH = Path(__file__).with_name("data") / "trt_onnx_supported_ops.json"

# The targets (grefel.contract.TENSORRT_TARGETS): each names its entry in the op table.
TARGETS: Dict[str, TensorRTTarget] = TENSORRT_TARGETS


@lru_cache(maxsize=1)
def load_op_table() -> Dict[str, Any]:
    with open(TABLE_PATH) as f:
        return json.load(f)


def target_table(target: str) -> Tuple[Dict[str, Dict[str, Any]], int, int]:
    """(ops, opset_min, opset_max) of `target`: the latest table with that version's changes."""
    if target not in TARGETS:
        raise ValueError(f"unknown TensorRT target {target!r}; choose from {sorted(TARGETS)}")
    table = load_op_table()
    key = TARGETS[target].op_table
    ops = {k: dict(v) for k, v in table["ops"].items()}
    lo, hi = table["opset_min"], table["opset_max"]
    if key is not None:
        old = table["older_versions"][key]
        for op, entry in old["differs_from_latest"].items():
            ops[op] = dict(entry)
        for op, notes in old["same_support_but_different_restrictions"].items():
            ops.setdefault(op, {"supported": True, "fp16": True})["notes"] = notes
        lo = old["opset_min"] or lo
        hi = old["opset_max"]
    return ops, lo, hi


@dataclass(frozen=True)
class Restriction:
    op: str
    nodes: int
    text: str
    met: Optional[bool]  # None: the graph cannot show it (attribute/value-level, not checked)
    detail: str = ""


@dataclass
class LintReport:
    target: str
    description: str
    opset: int
    opset_range: Tuple[int, int]
    op_counts: Dict[str, int]
    unsupported: Dict[str, int] = field(default_factory=dict)
    restrictions: List[Restriction] = field(default_factory=list)
    fp32_only: List[str] = field(default_factory=list)  # supported, but no FP16 in this table

    @property
    def opset_ok(self) -> bool:
        return self.opset_range[0] <= self.opset <= self.opset_range[1]

    def __bool__(self) -> bool:
        broken = any(r.met is False for r in self.restrictions)
        return self.opset_ok and not self.unsupported and not broken

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["passed"] = bool(self)
        d["opset_ok"] = self.opset_ok
        d["export_opset"] = opset_for_target(self.target)
        return d

    def lines(self) -> List[str]:
        lo, hi = self.opset_range
        out = [
            f"{self.target} ({self.description}): {'PASS' if self else 'FAIL'}; opset "
            f"{self.opset} {'in' if self.opset_ok else 'OUTSIDE'} {lo}-{hi}; "
            f"{len(self.op_counts)} op types, {sum(self.op_counts.values())} nodes"
        ]
        if self.opset != opset_for_target(self.target):
            out.append(f"  grefel exports opset {opset_for_target(self.target)} for this target: "
                       f"grefel export CHECKPOINT --target {self.target}")
        out += [f"  unsupported: {op} x{n}" for op, n in sorted(self.unsupported.items())]
        for r in self.restrictions:
            verdict = {True: "met", False: "BROKEN", None: "not checkable here"}[r.met]
            detail = f" ({r.detail})" if r.detail else ""
            out.append(f"  {r.op} x{r.nodes}: {verdict}{detail}: {r.text}")
        if self.fp32_only:
            out.append(f"  no FP16 in this version (runs FP32): {', '.join(self.fp32_only)}")
        return out


def lint_onnx(model: Union[str, Path, onnx.ModelProto], target: str) -> LintReport:
    """Lint `model` (a path or a loaded ModelProto) for one TensorRT target."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    ops, lo, hi = target_table(target)
    opset = _default_opset(model)
    graph = _GraphIndex(model.graph)
    counts = Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        for n in model.graph.node
    )
    report = LintReport(target, TARGETS[target].description, opset, (lo, hi),
                        dict(sorted(counts.items())))
    for op, n in sorted(counts.items()):
        entry = ops.get(op)
        if entry is None or not entry.get("supported"):
            report.unsupported[op] = n
            continue
        if not entry.get("fp16"):
            report.fp32_only.append(op)
        text = entry.get("notes", "").strip()
        if text:
            met, detail = _check_restriction(op, text, model.graph, graph, opset)
            report.restrictions.append(Restriction(op, n, text, met, detail))
    return report


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ValueError("the model imports no default-domain opset")


class _GraphIndex:
    """Which tensors are constants, and who consumes each tensor."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.constants: Set[str] = {i.name for i in graph.initializer}
        self.constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        self.consumed: Set[str] = {i for n in graph.node for i in n.input}
        self.consumed |= {o.name for o in graph.output}


# Input index of `axes` (or CumSum's `axis`) when it is an input rather than an attribute.
def _axes_input(op: str, opset: int) -> Optional[int]:
    if op in ("Slice", "Pad"):
        return 3
    if op == "CumSum":
        return 1
    if op in ("Squeeze", "Unsqueeze", "ReduceSum"):
        return 1 if opset >= 13 else None
    if op.startswith("Reduce"):
        return 1 if opset >= 18 else None
    return None


def _check_axes(op: str, nodes, g: _GraphIndex, opset: int) -> Tuple[bool, str]:
    idx = _axes_input(op, opset)
    bad = [n.name for n in nodes if idx is not None and len(n.input) > idx and n.input[idx]
           and n.input[idx] not in g.constants]
    if bad:
        return False, f"non-constant axes on {', '.join(bad[:3])}"
    return True, "every axes input is an initializer/Constant or an attribute"


def _check_maxpool(nodes) -> Tuple[bool, str]:
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if len(attrs.get("kernel_shape", [])) not in (2, 3):
            return False, f"{n.name}: not 2D/3D"
        if len(n.output) > 1 and n.output[1]:
            return False, f"{n.name}: Indices output used"
        if any(d != 1 for d in attrs.get("dilations", [])):
            return False, f"{n.name}: dilations != 1"
    return True, "2D, no Indices output, no dilation"


def _check_first_output_only(nodes, g: _GraphIndex) -> Tuple[bool, str]:
    bad = [n.name for n in nodes if any(o and o in g.consumed for o in n.output[1:])]
    if bad:
        return False, f"extra outputs used on {', '.join(bad[:3])}"
    return True, "only output Y is used"


def _check_constant(nodes) -> Tuple[bool, str]:
    banned = {"sparse_value", "value_string", "value_strings"}
    bad = [n.name for n in nodes if banned & {a.name for a in n.attribute}]
    return (not bad), ("string/sparse constants on " + ", ".join(bad[:3])) if bad else "dense"


def _check_zero_point(nodes, graph: onnx.GraphProto) -> Tuple[bool, str]:
    """Q/DQ zero points: initializers, all 0, of a signed type (int8 / int4 / fp8; the ONNX
    default, uint8, is what TensorRT's Q/DQ layers do not take)."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    signed = {TensorProto.INT8, TensorProto.INT4, TensorProto.FLOAT8E4M3FN}
    bad = []
    for n in nodes:
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None or zp.data_type not in signed or numpy_helper.to_array(zp).astype(
                "float64").any():
            bad.append(n.name or n.op_type)
    if bad:
        return False, (f"{len(bad)} node(s) with a zero point that is not an int8 0 "
                       f"({', '.join(bad[:3])})")
    return True, "int8 zero points, all 0"


def _check_restriction(
    op: str, text: str, graph: onnx.GraphProto, g: _GraphIndex, opset: int
) -> Tuple[Optional[bool], str]:
    nodes = [n for n in graph.node if n.op_type == op]
    checks: Dict[str, Callable[[], Tuple[bool, str]]] = {
        "MaxPool": lambda: _check_maxpool(nodes),
        "LayerNormalization": lambda: _check_first_output_only(nodes, g),
        "Constant": lambda: _check_constant(nodes),
        "QuantizeLinear": lambda: _check_zero_point(nodes, graph),
        "DequantizeLinear": lambda: _check_zero_point(nodes, graph),
    }
    if "axes" in text or "`axis`" in text:
        return _check_axes(op, nodes, g, opset)
    if op in checks:
        return checks[op]()
    return None, ""
