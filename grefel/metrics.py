"""Classification, calibration and clustering metrics as pure numpy functions.

Every function takes plain arrays and returns plain numbers or arrays, so that training,
`grefel eval` and the benchmarks share one tested implementation. Divisions are guarded: an
empty input or an absent class gives a defined value (documented per function), never a NaN
or a warning.

    accuracy            correct / n
    macro_f1            mean F1 over the classes present in the labels or the predictions
                        (sklearn's `f1_score(average="macro")` with zero_division=0)
    ECE                 sum_b (n_b / n) |acc_b - conf_b| over equal-width confidence bins
                        (Guo et al. 2017, "On Calibration of Modern Neural Networks")
    Davies-Bouldin      mean_i max_{j != i} (s_i + s_j) / ||c_i - c_j||   (lower is better)
    Calinski-Harabasz   [tr(B) / (k - 1)] / [tr(W) / (n - k)]             (higher is better)
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "accuracy",
    "calinski_harabasz",
    "confusion_matrix",
    "davies_bouldin",
    "expected_calibration_error",
    "group_accuracy",
    "inverse_frequency_weights",
    "macro_f1",
    "majority_baseline",
    "pca_2d",
    "per_class_scores",
    "prediction_changes",
    "reliability_bins",
]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows are true classes, columns predicted classes."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_pred has {p.shape}")
    bad = (t < 0) | (t >= num_classes) | (p < 0) | (p >= num_classes)
    if bad.any():
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of equal entries; 0.0 for empty input."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    return float(_safe_div((t == p).sum(), t.size))


def per_class_scores(cm: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix (0 where undefined)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over classes that occur in the labels or the predictions; 0.0 when none do.

    A class absent from both (an empty row and column) is left out, as sklearn does with
    `labels=None`: it has no samples to get right or wrong.
    """
    cm = np.asarray(cm)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    if not present.any():
        return 0.0
    return float(per_class_scores(cm)["f1"][present].mean())


def reliability_bins(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 15
) -> Dict[str, np.ndarray]:
    """Equal-width bins over [0, 1]: edges (n_bins + 1,), count, mean accuracy, mean confidence.

    A confidence of exactly 1 falls in the last bin; empty bins have accuracy and confidence 0.
    """
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    ok = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    acc = _safe_div(np.bincount(idx, weights=ok, minlength=n_bins), count)
    mean_conf = _safe_div(np.bincount(idx, weights=conf, minlength=n_bins), count)
    return {"edges": edges, "count": count, "accuracy": acc, "confidence": mean_conf}


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 15
) -> float:
    """ECE = sum_b (n_b / n) |acc_b - conf_b|; 0.0 for empty input."""
    bins = reliability_bins(confidence, correct, n_bins)
    n = bins["count"].sum()
    gap = np.abs(bins["accuracy"] - bins["confidence"])
    return float(_safe_div((bins["count"] * gap).sum(), n))


def _clusters(x: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct labels, per-point cluster index, centroids (k, D)."""
    uniq, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    sums = np.zeros((len(uniq), x.shape[1]))
    np.add.at(sums, inverse, x)
    return uniq, inverse, sums / counts[:, None]


def davies_bouldin(x: np.ndarray, labels: Sequence[int]) -> Optional[float]:
    """Davies-Bouldin index of points x (N, D) under labels (N,); None with fewer than 2 clusters.

    s_i is the mean Euclidean distance of cluster i's points to its centroid c_i. Coincident
    centroids contribute 0 to the max (sklearn's convention), so the result stays finite.
    """
    x = np.asarray(x, dtype=np.float64)
    lab = np.asarray(labels)
    uniq, inverse, centroids = _clusters(x, lab)
    k = len(uniq)
    if k < 2:
        return None
    dist = np.linalg.norm(x - centroids[inverse], axis=1)  # (N,)
    scatter = _safe_div(np.bincount(inverse, weights=dist, minlength=k), np.bincount(inverse))
    sep = np.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=-1)  # (k, k)
    ratio = _safe_div(scatter[:, None] + scatter[None, :], sep)  # 0 on the diagonal
    return float(ratio.max(axis=1).mean())


def calinski_harabasz(x: np.ndarray, labels: Sequence[int]) -> Optional[float]:
    """Calinski-Harabasz score of x (N, D) under labels (N,); None unless 2 <= k < N.

    When every point sits on its centroid (tr(W) = 0) the score is 1.0, sklearn's convention.
    """
    x = np.asarray(x, dtype=np.float64)
    lab = np.asarray(labels)
    uniq, inverse, centroids = _clusters(x, lab)
    k, n = len(uniq), len(x)
    if not 2 <= k < n:
        return None
    counts = np.bincount(inverse).astype(np.float64)
    between = float((counts * ((centroids - x.mean(axis=0)) ** 2).sum(axis=1)).sum())
    within = float(((x - centroids[inverse]) ** 2).sum())
    if within == 0.0:
        return 1.0
    return between * (n - k) / (within * (k - 1))


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project x (N, D) on its first two principal axes (numpy SVD) -> (N, 2).

    Fewer than two non-trivial axes (N < 2 or D < 2) pad with zero columns.
    """
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    out = np.zeros((len(x), 2))
    if len(x) < 2:
        return out
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # vt (min(N, D), D)
    proj = centred @ vt[:2].T  # (N, <=2)
    out[:, : proj.shape[1]] = proj
    return out


def majority_baseline(
    train_labels: Sequence[int], test_labels: Sequence[int], num_classes: int
) -> Tuple[int, float]:
    """The most frequent training class and the accuracy of always predicting it on the test set."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
    majority = int(counts.argmax())
    test = np.asarray(test_labels)
    return majority, accuracy(test, np.full(test.shape, majority))


def prediction_changes(
    y_true: Sequence[int], primary: Sequence[int], final: Sequence[int]
) -> Dict[str, int]:
    """What reliability balancing did to the primary predictions (paper Figs. 4 and 9).

    changed: final != primary; fixed: primary wrong, final right; broken: primary right, final
    wrong; the remaining changes moved one wrong answer to another.
    """
    t, p, f = (np.asarray(a) for a in (y_true, primary, final))
    return {
        "changed": int((p != f).sum()),
        "fixed": int(((p != t) & (f == t)).sum()),
        "broken": int(((p == t) & (f != t)).sum()),
        "wrong_to_wrong": int(((p != f) & (p != t) & (f != t)).sum()),
    }


def group_accuracy(
    y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str]
) -> Dict[str, Dict[str, float]]:
    """Accuracy and count per group value (e.g. per skin tone); keys sorted."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    g = np.asarray([str(v) for v in groups])
    return {
        name: {"n": int((g == name).sum()), "accuracy": accuracy(t[g == name], p[g == name])}
        for name in sorted(set(g.tolist()))
    }


def inverse_frequency_weights(counts: Sequence[int]) -> List[float]:
    """Class weights proportional to 1 / count, with mean 1 over the classes that occur.

    A class with no samples gets weight 0 (it never appears as a target).
    """
    c = np.asarray(counts, dtype=np.float64)
    inv = _safe_div(np.ones_like(c), c)
    present = c > 0
    if not present.any():
        raise ValueError("no class has any samples")
    return (inv / inv[present].mean()).tolist()
