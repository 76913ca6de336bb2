"""onnxsim on the exported graph, with its node counts. A failure is an error, never skipped.

(ultralytics downgrades a simplifier failure to a warning; here `--no-simplify` is the only way
to export without it.)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Union

import onnx

from export import ExportError
from grefel._lazy import require
from grefel.fileio import atomic_path

__all__ = ["SimplifyReport", "simplify_onnx"]


@dataclass(frozen=True)
class SimplifyReport:
    nodes_before: int
    nodes_after: int
    seconds: float

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"onnxsim: {self.nodes_before} -> {self.nodes_after} nodes"


def simplify_onnx(src: Union[str, Path], dst: Union[str, Path]) -> SimplifyReport:
    """Simplify `src` with onnxsim and write `dst` atomically (may equal `src`).

    onnxsim's own check (random inputs, original vs simplified in ONNX Runtime) must pass;
    metadata_props are carried over.
    """
    onnxsim = require("onnxsim")
    start = time.perf_counter()
    model = onnx.load(str(src))
    before = len(model.graph.node)
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises RuntimeError / onnx errors
        raise ExportError(f"{src}: onnxsim failed ({exc}); use --no-simplify to skip it") from exc
    if not ok:
        raise ExportError(f"{src}: onnxsim's check of the simplified graph failed")
    if not simplified.metadata_props:
        simplified.metadata_props.extend(model.metadata_props)
    with atomic_path(dst) as tmp:
        onnx.save(simplified, str(tmp))
    return SimplifyReport(before, len(simplified.graph.node), time.perf_counter() - start)
