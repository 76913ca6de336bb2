"""The parity comparator: the same inputs through two runners, per-output tolerances.

`compare(reference, candidate, tolerances)` returns a `Comparison` whose truth value is
pass/fail; `agreement(...)` measures what matters for a classifier (top-1 agreement, |dprobs|,
NaN/inf count), used by the FP16 gate and the on-device `--verify`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

__all__ = ["Agreement", "Comparison", "OutputCheck", "agreement", "compare"]

Tolerance = Tuple[float, float]  # (atol, rtol): pass when |a - b| <= atol + rtol * |a|


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
class Comparison:
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


def compare(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    tolerances: Mapping[str, Tolerance],
    label: str = "parity",
) -> Comparison:
    """Check every output named in `tolerances` elementwise (shape mismatch fails)."""
    result = Comparison(label)
    for name, (atol, rtol) in tolerances.items():
        if name not in reference or name not in candidate:
            result.missing.append(name)
            continue
        ref = np.asarray(reference[name], dtype=np.float64)
        got = np.asarray(candidate[name], dtype=np.float64)
        nonfinite = int(np.size(got) - np.isfinite(got).sum())
        if ref.shape != got.shape:
            result.checks.append(OutputCheck(name, atol, rtol, float("inf"), float("inf"),
                                             nonfinite, False))
            continue
        diff = np.abs(ref - got)
        ok = bool(np.all(diff <= atol + rtol * np.abs(ref))) and nonfinite == 0
        result.checks.append(OutputCheck(name, atol, rtol, float(diff.max(initial=0.0)),
                                         float(diff.mean()) if diff.size else 0.0, nonfinite, ok))
    return result


@dataclass(frozen=True)
class Agreement:
    """Classifier-level agreement of a candidate's probs with the reference's."""

    label: str
    samples: int
    top1_agreement: float  # fraction of samples with the same argmax
    max_abs_dprobs: float
    median_abs_dprobs: float  # median over samples of max_c |dp|
    nonfinite: int  # NaN/inf count over every candidate output
    min_agreement: float
    backend: str = ""

    @property
    def passed(self) -> bool:
        return self.nonfinite == 0 and self.top1_agreement >= self.min_agreement

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def __str__(self) -> str:
        return (
            f"{self.label}: {'pass' if self else 'FAIL'} top-1 agreement "
            f"{100 * self.top1_agreement:.2f}% (min {100 * self.min_agreement:.0f}%), "
            f"max|dp| {self.max_abs_dprobs:.2e}, median|dp| {self.median_abs_dprobs:.2e}, "
            f"NaN/inf {self.nonfinite}" + (f" [{self.backend}]" if self.backend else "")
        )


def agreement(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    min_agreement: float = 0.99,
    label: str = "agreement",
    backend: str = "",
) -> Agreement:
    """Top-1 agreement and |dprobs| of candidate['probs'] against reference['probs']."""
    ref = np.asarray(reference["probs"], dtype=np.float64)
    got = np.asarray(candidate["probs"], dtype=np.float64)
    nonfinite = sum(int(np.size(v) - np.isfinite(v).sum()) for v in candidate.values())
    finite = np.where(np.isfinite(got), got, np.inf)
    per_sample = np.abs(ref - finite).max(axis=1)  # (N,)
    return Agreement(
        label=label,
        samples=int(ref.shape[0]),
        top1_agreement=float(np.mean(ref.argmax(1) == got.argmax(1))),
        max_abs_dprobs=float(per_sample.max()),
        median_abs_dprobs=float(np.median(per_sample)),
        nonfinite=nonfinite,
        min_agreement=min_agreement,
        backend=backend,
    )
