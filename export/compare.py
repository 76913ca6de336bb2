"""The one comparator of the export checks: the same inputs through two backends, then either an
elementwise parity check (`check_parity`, torch vs ONNX Runtime) or a classifier-level precision
gate (`measure_agreement`: the FP16 gate, `--verify` and the INT8 gate use the same criterion).

The precision gate's criterion (GateCriteria, FP16_CRITERIA / INT8_CRITERIA, Agreement,
`measure_agreement`, `artifact_precision`) lives in `grefel.agreement`, shared with `grefel eval
--reference`; it is re-exported here for the export stages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from grefel.agreement import (
    CRITERIA,
    FP16_CRITERIA,
    INT8_CRITERIA,
    Agreement,
    GateCriteria,
    artifact_precision,
    measure_agreement,
)

__all__ = [
    "CRITERIA",
    "FP16_CRITERIA",
    "INT8_CRITERIA",
    "Agreement",
    "artifact_precision",
    "GateCriteria",
    "OutputCheck",
    "Parity",
    "check_parity",
    "measure_agreement",
    "run_backend",
]

Outputs = Dict[str, np.ndarray]
Tolerance = Tuple[float, float]  # (atol, rtol): pass when |a - b| <= atol + rtol * |a|


def run_backend(backend: Any, images: np.ndarray, chunk: int = 16) -> Outputs:
    """Open a runtime backend (`grefel.runtime`), run `images` through its `infer` in chunks of
    `chunk` (bounded memory), close it; the outputs by name, NaN / inf included (the gates count
    them: `finite_outputs=False`)."""
    parts: List[Outputs] = []
    with backend:
        for i in range(0, len(images), chunk):
            parts.append(backend.infer(np.ascontiguousarray(images[i : i + chunk]),
                                      finite_outputs=False))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@dataclass(frozen=True)
class OutputCheck:
    name: str
    atol: float
    rtol: float
    max_abs: float
    mean_abs: float
    nonfinite: int  # NaN/inf count in the candidate
    passed: bool


@dataclass
class Parity:
    """Elementwise parity of named outputs; its truth value is pass/fail."""

    label: str
    checks: List[OutputCheck] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.missing and all(c.passed for c in self.checks)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "label": self.label,
            "passed": bool(self),
            "missing": self.missing,
            "outputs": [asdict(c) for c in self.checks],
        }

    def __str__(self) -> str:
        parts = [f"{c.name} max|d|={c.max_abs:.2e}{'' if c.passed else ' FAIL'}"
                 for c in self.checks]
        parts += [f"{m} missing" for m in self.missing]
        return f"{self.label}: {'pass' if self else 'FAIL'} ({', '.join(parts)})"


def check_parity(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    tolerances: Mapping[str, Tolerance],
    label: str = "parity",
) -> Parity:
    """Check every output named in `tolerances` elementwise (a shape mismatch fails)."""
    result = Parity(label)
    for name, (atol, rtol) in tolerances.items():
        if name not in reference or name not in candidate:
            result.missing.append(name)
            continue
        ref = np.asarray(reference[name], dtype=np.float64)
        got = np.asarray(candidate[name], dtype=np.float64)
        nonfinite = int(np.size(got) - np.isfinite(got).sum())
        if ref.shape != got.shape:
            result.checks.append(OutputCheck(name=name, atol=atol, rtol=rtol,
                                             max_abs=float("inf"), mean_abs=float("inf"),
                                             nonfinite=nonfinite, passed=False))
            continue
        diff = np.abs(ref - got)
        ok = bool(np.all(diff <= atol + rtol * np.abs(ref))) and nonfinite == 0
        result.checks.append(OutputCheck(
            name=name, atol=atol, rtol=rtol, max_abs=float(diff.max(initial=0.0)),
            mean_abs=float(diff.mean()) if diff.size else 0.0, nonfinite=nonfinite, passed=ok))
    return result
