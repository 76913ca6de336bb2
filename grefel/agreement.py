"""How far a candidate model's outputs are from a reference's over the same images, at the level
of the classifier: the precision gates of `grefel export` (FP16 gate, --verify, INT8 gate) and
the agreement of `grefel eval --reference` use this one criterion (`measure_agreement`), held
to the criteria of the candidate's precision (CRITERIA by name, `artifact_precision`).

A precision gate measures precision, not ties. It fails on

- any NaN/inf in a candidate output;
- max |dprobs| or max |dconfidence| above the criteria's tolerance;
- *decisive* top-1 flips: a sample whose label changed although the FP32 reference's top-1
  margin (p1 - p2) is larger than `margin_factor` x the measured numeric error. The error is
  the 90th percentile over samples of max_c |dp| (the typical error of the reduced precision),
  floored at `error_floor` (2^-10, FP16's machine epsilon). A flip of a sample whose margin is
  below that is a *near-tie*: its label was decided by rounding; near-tie flips are counted and
  reported, never decisive.

Why not 2 x max |dp| as the error: a flip needs |dp| >= margin / 2 on the flipped sample, so with
the sample maximum no flip could ever be decisive. The percentile makes a flip decisive exactly
when one sample's error is far above the typical one, which is what an overflow or a mis-built
layer looks like; broad degradation is caught by the |dp| tolerance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping

import numpy as np

__all__ = [
    "CRITERIA",
    "FP16_CRITERIA",
    "INT8_CRITERIA",
    "Agreement",
    "GateCriteria",
    "artifact_precision",
    "measure_agreement",
]


@dataclass(frozen=True)
class GateCriteria:
    """What a reduced-precision candidate must meet against the FP32 reference.

    Attributes:
        max_dprobs: tolerance on max |dprobs| over samples and classes.
        max_dconfidence: tolerance on max |dconfidence|.
        min_decisive_agreement: fraction of the decisive samples (margin above the threshold)
            that must keep their top-1 label; 1.0 allows no decisive flip.
        error_floor: the smallest numeric error assumed (FP16's machine epsilon 2^-10).
        margin_factor: a sample is decisive when its reference margin exceeds this times the
            numeric error.
    """

    max_dprobs: float
    max_dconfidence: float
    min_decisive_agreement: float = 1.0
    error_floor: float = 2.0**-10
    margin_factor: float = 2.0


# FP16 arithmetic on this model moves probabilities by 1e-6..1e-3; an overflow or a layer that
# lost its FP32 pin moves them by far more (or to NaN).
FP16_CRITERIA = GateCriteria(max_dprobs=2e-2, max_dconfidence=2e-2)
# INT8 (explicit quantization) errors are ~10x larger; a percent of decisive flips is allowed.
INT8_CRITERIA = GateCriteria(max_dprobs=0.15, max_dconfidence=0.15, min_decisive_agreement=0.99)
# By precision name (`grefel eval --criteria`); an FP32 artifact is held to the FP16 gate's.
CRITERIA = {"fp16": FP16_CRITERIA, "int8": INT8_CRITERIA}


def artifact_precision(path: Any) -> str:
    """"int8", "fp16" or "fp32": an ONNX by its nodes (QuantizeLinear / DequantizeLinear: a QDQ
    INT8 model; a Cast to float16 or a float16 initializer: FP16-typed), an engine by its
    sidecar's `build.precision_mode`; "fp32" for anything else."""
    import json
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() == ".onnx":
        import onnx

        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception:  # DecodeError, OSError: the backend reports the file itself
            return "fp32"
        ops = {n.op_type for n in graph.node}
        if ops & {"QuantizeLinear", "DequantizeLinear"}:
            return "int8"
        fp16 = onnx.TensorProto.FLOAT16
        if any(i.data_type == fp16 for i in graph.initializer) or any(
                a.name == "to" and a.i == fp16 for n in graph.node if n.op_type == "Cast"
                for a in n.attribute):
            return "fp16"
        return "fp32"
    side = path.with_suffix(".json")
    try:
        mode = str(json.loads(side.read_text()).get("build", {}).get("precision_mode", ""))
    except (OSError, ValueError, AttributeError):
        return "fp32"
    return "int8" if "int8" in mode else ("fp16" if "fp16" in mode else "fp32")


@dataclass(frozen=True)
class Agreement:
    """Classifier-level agreement of a candidate with the FP32 reference (see the module doc)."""

    label: str
    samples: int
    flips: int  # samples whose top-1 label changed
    near_ties: int  # samples whose reference margin is at most the threshold
    near_tie_flips: int
    decisive_flips: int
    decisive_agreement: float  # 1 - decisive_flips / decisive samples
    top1_agreement: float  # over every sample, for information
    max_abs_dprobs: float
    median_abs_dprobs: float  # median over samples of max_c |dp|
    numeric_error: float  # p90 over samples of max_c |dp|, floored
    margin_threshold: float
    max_abs_dconfidence: float
    nonfinite: int  # NaN/inf count over every candidate output
    criteria: GateCriteria
    backend: str = ""

    def reasons(self) -> List[str]:
        """Why the gate fails (empty: it passes)."""
        c = self.criteria
        out = []
        if self.nonfinite:
            out.append(f"{self.nonfinite} NaN/inf values in the outputs")
        if not self.max_abs_dprobs <= c.max_dprobs:
            out.append(f"max|dprobs| {self.max_abs_dprobs:.3g} > {c.max_dprobs:g}")
        if not self.max_abs_dconfidence <= c.max_dconfidence:
            out.append(f"max|dconfidence| {self.max_abs_dconfidence:.3g} > {c.max_dconfidence:g}")
        if self.decisive_agreement < c.min_decisive_agreement:
            out.append(f"{self.decisive_flips} decisive top-1 flips (reference margin > "
                       f"{self.margin_threshold:.2g})")
        return out

    @property
    def passed(self) -> bool:
        return not self.reasons()

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "reasons": self.reasons()}

    def __str__(self) -> str:
        verdict = "pass" if self else "FAIL (" + "; ".join(self.reasons()) + ")"
        return (
            f"{self.label}: {verdict}: {self.samples} images, {self.decisive_flips} decisive "
            f"flips, {self.near_ties} near-ties ({self.near_tie_flips} flipped), "
            f"max|dp| {self.max_abs_dprobs:.2e}, max|dconf| {self.max_abs_dconfidence:.2e}, "
            f"NaN/inf {self.nonfinite}" + (f" [{self.backend}]" if self.backend else "")
        )


def measure_agreement(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    criteria: GateCriteria,
    *,
    label: str = "agreement",
    backend: str = "",
) -> Agreement:
    """Compare candidate['probs'] / ['confidence'] with the reference's (module doc)."""
    ref = np.asarray(reference["probs"], dtype=np.float64)
    got = np.asarray(candidate["probs"], dtype=np.float64)
    if ref.shape != got.shape or ref.ndim != 2 or ref.shape[0] == 0:
        raise ValueError(f"probs of shape {got.shape} against the reference's {ref.shape}")
    nonfinite = sum(int(np.size(v) - np.isfinite(v).sum()) for v in candidate.values())
    per_sample = np.abs(ref - np.where(np.isfinite(got), got, np.inf)).max(axis=1)  # (N,)
    finite_err = per_sample[np.isfinite(per_sample)]
    p90 = float(np.percentile(finite_err, 90)) if finite_err.size else float("inf")
    numeric_error = max(criteria.error_floor, p90)
    threshold = criteria.margin_factor * numeric_error
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
    margin = top2[:, 1] - top2[:, 0]
    flipped = ref.argmax(1) != np.where(np.isfinite(got), got, -np.inf).argmax(1)
    near = margin <= threshold
    decisive = ~near
    n_decisive = int(decisive.sum())
    decisive_flips = int((flipped & decisive).sum())
    dconf = float("inf")
    if "confidence" in reference and "confidence" in candidate:
        rc = np.asarray(reference["confidence"], dtype=np.float64)
        gc = np.asarray(candidate["confidence"], dtype=np.float64)
        dconf = float(np.abs(rc - np.where(np.isfinite(gc), gc, np.inf)).max(initial=0.0))
    return Agreement(
        label=label,
        samples=int(ref.shape[0]),
        flips=int(flipped.sum()),
        near_ties=int(near.sum()),
        near_tie_flips=int((flipped & near).sum()),
        decisive_flips=decisive_flips,
        decisive_agreement=1.0 - decisive_flips / n_decisive if n_decisive else 1.0,
        top1_agreement=float(np.mean(~flipped)),
        max_abs_dprobs=float(per_sample.max()),
        median_abs_dprobs=float(np.median(per_sample)),
        numeric_error=numeric_error,
        margin_threshold=threshold,
        max_abs_dconfidence=dconf,
        nonfinite=nonfinite,
        criteria=criteria,
        backend=backend,
    )
