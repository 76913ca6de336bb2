"""`grefel eval`: accuracy, macro-F1, calibration, embedding quality and bias of a model file.

    report = evaluate_checkpoint("runs/demo/train/best.safetensors", "data/synthfer", out="ev")
    report = evaluate_model("engines/best.int8.onnx", "data/synthfer", EvalOptions(threads=2),
                            reference="runs/demo/train/best.safetensors")

A checkpoint runs in PyTorch; an exported `.onnx` (FP32, FP16-typed or INT8 QDQ) or a TensorRT
`.engine` runs through its runtime backend (`grefel.runtime.open_backend`), fed by the same
loader: `FERDataset` decodes and crops with `grefel.contract` and the eval transform is
`grefel.contract.to_model_input`, what `grefel predict` feeds a backend. So the accuracy of an
artifact is measured on the tensors it serves. With `reference=CKPT` the FP32 checkpoint runs
over the same batches and the report holds both accuracies and the agreement, measured by a
`Comparator`: by default the export gates' (`grefel.agreement.measure_agreement`) held to the
criteria `EvalOptions.criteria` names (`agreement_comparator`); a caller may pass its own. The
loader yields numpy batches (`grefel.data.datasets.batches`; torch's DataLoader with `workers`
> 0), so an exported model is evaluated without torch, as on a Jetson without it.

Everything is measured on one split (test by default) and written to OUT:

    metrics.json            every number below, machine-readable, and `alignment`: with
                            `alignment=FaceAlignment(mode="detect")` (`--align-faces detect`)
                            the images are first detected and aligned as `grefel predict` does
                            a still image (grefel.align_data), and this holds the settings and
                            the counts (faces found, without a face, unreadable)
    confusion_final.png     confusion matrix of L_final (eq. 19), the prediction
    confusion_primary.png   confusion matrix of the primary distribution l (eq. 9)
    confusion.json          both matrices, rows = true class, columns = predicted
    reliability.png         reliability diagram of C_f (eq. 10) and of max p, with their ECE
    embedding.png           the pooled embeddings e projected to 2-D with PCA (numpy SVD), coloured
                            by true class (paper Fig. 5 uses t-SNE; PCA is deterministic and
                            needs no extra package); only when the model file outputs e

Primary vs final shows what reliability balancing changed (paper Figs. 4 and 9): how many
predictions it changed, how many wrong ones it fixed and how many right ones it broke.
Davies-Bouldin and Calinski-Harabasz are computed on the full D-dimensional embedding.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
)

import numpy as np

from grefel._lazy import MissingDependency, require
from grefel.config import EvalOptions, FaceAlignment
from grefel.errors import GrefelError
from grefel.finite import NonFiniteError, require_finite
from grefel.metrics import (
    accuracy,
    calinski_harabasz,
    confusion_matrix,
    davies_bouldin,
    expected_calibration_error,
    group_accuracy,
    macro_f1,
    majority_baseline,
    pca_2d,
    per_class_scores,
    prediction_changes,
    reliability_bins,
)
from grefel.progress import Progress

if TYPE_CHECKING:
    import torch

__all__ = [
    "ARTIFACT_SUFFIXES", "Comparator", "EvalError", "EvalOptions", "OUTPUT_NAMES",
    "agreement_comparator", "collect_backend_outputs", "collect_outputs", "criteria_for",
    "evaluate_checkpoint", "evaluate_model", "format_report", "score_predictions",
]

# Exported artifacts that run through a runtime backend (a checkpoint runs in PyTorch).
ARTIFACT_SUFFIXES = (".onnx", ".engine", ".plan")

PathLike = Union[str, Path]
# Sample attributes that are not groups to report accuracy over (labels, boxes, per-sample
# continuous values): RAF-DB gender/race/age and SynthFER skin/occlusion remain.
NOT_GROUPS = frozenset({"clean_label", "box", "intensity"})


class EvalError(GrefelError, ValueError):
    """Data and checkpoint that do not fit together; the message says how."""


def collect_outputs(
    model: torch.nn.Module, loader: Any, device: torch.device, amp: bool = False
) -> Dict[str, np.ndarray]:
    """Run `model` (eval mode) over a loader of collate_skip or collate_arrays batches.

    Returns numpy arrays: indices (N,), labels (N,), probs and primary (N, C), confidence (N,),
    embedding (N, D), and skipped (dataset indices of unreadable images).
    """
    import torch

    was_training = model.training
    model.eval()
    parts: Dict[str, List[np.ndarray]] = {k: [] for k in
                                          ("indices", "labels", "probs", "primary",
                                           "confidence", "embedding")}
    skipped: List[int] = []
    for images, labels, indices, bad in loader:
        skipped.extend(bad)
        if len(labels) == 0:
            continue
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = model(torch.as_tensor(images).to(device, non_blocking=True))  # (B, C) / (B,)
        parts["indices"].append(np.asarray(indices))
        parts["labels"].append(np.asarray(labels))
        for name in ("probs", "primary", "confidence", "embedding"):
            parts[name].append(getattr(out, name).float().cpu().numpy())
    model.train(was_training)
    result = {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in parts.items()}
    result["skipped"] = np.asarray(skipped, dtype=np.int64)
    # The check the runtime backends make of every output (grefel.runtime.base): scores over
    # NaN (argmax 0, a confidence bin of -1) would be numbers that mean nothing.
    require_finite({k: result[k] for k in ("probs", "primary", "confidence")},
                   f"the model's outputs on {len(result['labels'])} images",
                   "its weights are finite but it computes NaN or inf (an overflow: weights too "
                   "large?); the model is broken")
    return result


def collect_backend_outputs(backend: Any, loader: Any) -> Dict[str, np.ndarray]:
    """`collect_outputs` for an opened runtime backend (`grefel.runtime.Backend`).

    The loader's float32 batches (arrays or tensors) go to `backend.infer` as numpy; the
    embedding is included only when the artifact outputs it (`grefel export --embedding`).
    """
    parts: Dict[str, List[np.ndarray]] = {k: [] for k in
                                          ("indices", "labels", "probs", "primary",
                                           "confidence", "embedding")}
    skipped: List[int] = []
    for images, labels, indices, bad in loader:
        skipped.extend(bad)
        if len(labels) == 0:
            continue
        out = backend.infer(np.ascontiguousarray(images, dtype=np.float32))
        parts["indices"].append(np.asarray(indices))
        parts["labels"].append(np.asarray(labels))
        for name in ("probs", "primary", "confidence"):
            parts[name].append(np.asarray(out[name], dtype=np.float32))
        if "embedding" in out:
            parts["embedding"].append(np.asarray(out["embedding"], dtype=np.float32))
    result = {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in parts.items()}
    result["skipped"] = np.asarray(skipped, dtype=np.int64)
    return result


def _classification(labels: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> Dict:
    cm = confusion_matrix(labels, pred, len(names))
    scores = per_class_scores(cm)
    return {
        "accuracy": accuracy(labels, pred),
        "macro_f1": macro_f1(cm),
        "per_class": {
            name: {k: float(scores[k][i]) for k in ("precision", "recall", "f1", "support")}
            for i, name in enumerate(names)
        },
        "confusion": cm.tolist(),
    }


def score_predictions(
    pred: Dict[str, np.ndarray],
    class_names: Sequence[str],
    attrs: Sequence[Dict[str, str]],
    train_labels: Optional[Sequence[int]] = None,
    n_bins: int = 15,
) -> Dict[str, Any]:
    """Every metric of `grefel eval` from the arrays of `predict` (pure: no files, no model).

    attrs: per-sample attribute dicts aligned with pred["labels"] (for per-group accuracy).
    train_labels: labels of the training split, for the majority-class baseline; without
        them the baseline's majority class is taken from the evaluated split itself.
    """
    labels = pred["labels"].astype(np.int64)
    final = pred["probs"].argmax(axis=1)
    primary = pred["primary"].argmax(axis=1)
    max_p = pred["probs"].max(axis=1)
    correct = final == labels
    source = "train" if train_labels is not None else "evaluated split"
    majority, base_acc = majority_baseline(
        train_labels if train_labels is not None else labels, labels, len(class_names)
    )
    keys = sorted({k for a in attrs for k in a} - NOT_GROUPS)
    emb = pred["embedding"]
    has_emb = emb.ndim == 2 and len(emb) == len(labels) and len(labels) > 0
    return {
        "n": int(len(labels)),
        "final": _classification(labels, final, class_names),
        "primary": _classification(labels, primary, class_names),
        "balancing_changes": prediction_changes(labels, primary, final),
        "majority_baseline": {"class": class_names[majority], "accuracy": base_acc,
                              "majority_from": source},
        "calibration": {
            "ece_confidence": expected_calibration_error(pred["confidence"], correct, n_bins),
            "ece_max_prob": expected_calibration_error(max_p, correct, n_bins),
            "n_bins": n_bins,
        },
        "embedding": {
            # None when the model file has no embedding output (an ONNX without --embedding)
            "davies_bouldin": davies_bouldin(emb, labels) if has_emb else None,
            "calinski_harabasz": calinski_harabasz(emb, labels) if has_emb else None,
            "dim": int(emb.shape[1]) if has_emb else 0,
        },
        "per_group": {
            key: group_accuracy(labels, final, [a.get(key, "") for a in attrs]) for key in keys
        },
    }


def format_report(report: Dict[str, Any]) -> str:
    """The plain-text table `grefel eval` prints on stdout."""
    f, p = report["final"], report["primary"]
    cal, emb = report["calibration"], report["embedding"]
    base = report["majority_baseline"]
    ch = report["balancing_changes"]

    def num(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    ref = report.get("reference")

    lines = [
        f"{'metric':<34}{'value':>12}",
        f"{'samples':<34}{report['n']:>12}",
        *_alignment_lines(report.get("alignment")),
        f"{'accuracy (final, eq. 19)':<34}{num(f['accuracy']):>12}",
        f"{'macro-F1 (final)':<34}{num(f['macro_f1']):>12}",
        f"{'accuracy (primary, eq. 9)':<34}{num(p['accuracy']):>12}",
        f"{'macro-F1 (primary)':<34}{num(p['macro_f1']):>12}",
        f"{'majority baseline (' + base['class'] + ')':<34}{num(base['accuracy']):>12}",
        f"{'balancing changed / fixed / broke':<34}"
        f"{str(ch['changed']) + ' / ' + str(ch['fixed']) + ' / ' + str(ch['broken']):>12}",
        f"{'ECE of confidence C_f':<34}{num(cal['ece_confidence']):>12}",
        f"{'ECE of max prob':<34}{num(cal['ece_max_prob']):>12}",
        f"{'Davies-Bouldin (lower better)':<34}{num(emb['davies_bouldin']):>12}",
        f"{'Calinski-Harabasz (higher better)':<34}{num(emb['calinski_harabasz']):>12}",
    ]
    if ref is not None:
        agree = ref["agreement"]
        lines += [
            f"{'reference accuracy (final)':<34}{num(ref['final_accuracy']):>12}",
            f"{'accuracy - reference':<34}{ref['accuracy_delta']:>+12.4f}",
            f"{'reference macro-F1 (final)':<34}{num(ref['final_macro_f1']):>12}",
            f"{'top-1 agreement with reference':<34}{num(agree['top1_agreement']):>12}",
            f"{'decisive flips / near-tie flips':<34}"
            f"{str(agree['decisive_flips']) + ' / ' + str(agree['near_tie_flips']):>12}",
            f"{'max |dprobs| vs reference':<34}{agree['max_abs_dprobs']:>12.2e}",
            f"{'agreement gate (' + ref['criteria'] + ')':<34}"
            f"{'pass' if agree['passed'] else 'FAIL':>12}",
        ]
    lines += [
        "",
        f"{'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name, s in f["per_class"].items():
        lines.append(f"{name:<14}{s['precision']:>10.3f}{s['recall']:>10.3f}{s['f1']:>10.3f}"
                     f"{int(s['support']):>10}")
    for key, groups in report["per_group"].items():
        lines += ["", f"{'accuracy by ' + key:<24}{'n':>8}{'accuracy':>10}"]
        for name, g in groups.items():
            lines.append(f"{name or '(none)':<24}{g['n']:>8}{g['accuracy']:>10.3f}")
    return "\n".join(lines)


def _alignment_lines(alignment: Optional[Dict[str, Any]]) -> List[str]:
    """format_report's lines on face alignment (none when it was off)."""
    if not alignment or alignment.get("mode", "off") == "off":
        return []
    found = f"{alignment['faces']} / {alignment['no_face']}"
    return [f"{'aligned by ' + str(alignment['detector']):<34}{alignment['images']:>12}",
            f"{'faces found / without a face':<34}{found:>12}"]


def evaluate_checkpoint(checkpoint: PathLike, data: PathLike, out: Optional[PathLike] = None,
                        **settings: Any) -> Dict[str, Any]:
    """Evaluate `checkpoint` on the dataset at `data` with EvalOptions(**settings) (split,
    device, ...); write plots + JSON to `out`."""
    return evaluate_model(checkpoint, data, EvalOptions(**settings), out=out)


Outputs = Dict[str, np.ndarray]


class Comparator(Protocol):
    """The seam between eval and the export gates: compares the reference checkpoint's outputs
    with the evaluated model's over the same images, and returns an object with `to_dict()`
    (a `grefel.agreement.Agreement`: the report's `reference.agreement`)."""

    def __call__(self, reference: Outputs, candidate: Outputs) -> Any: ...


def criteria_for(criteria: str, model_path: PathLike) -> str:
    """The agreement criteria's name for `criteria`: itself, or for "auto" the model's
    precision's (int8 for a quantized model, else fp16, the FP16 gate's: an FP32 artifact is
    held to it too)."""
    if criteria != "auto":
        return criteria
    from grefel.agreement import artifact_precision

    return "int8" if artifact_precision(model_path) == "int8" else "fp16"


def agreement_comparator(criteria: str, label: str = "agreement") -> Comparator:
    """The default Comparator: the export gates' `measure_agreement` held to the criteria named
    `criteria` (grefel.agreement.CRITERIA), so eval's agreement is the gates' own verdict."""
    from grefel.agreement import CRITERIA, measure_agreement

    if criteria not in CRITERIA:
        raise EvalError(f"criteria {criteria!r}: choose auto or one of {', '.join(CRITERIA)}")
    return functools.partial(measure_agreement, criteria=CRITERIA[criteria], label=label)


# (what, total images) -> the Progress of one pass over the split (`grefel eval`: stderr)
ProgressFactory = Callable[[str, int], Progress]


def with_progress(loader: Any, progress: Optional[Progress]) -> Iterator[Any]:
    """`loader`'s batches, telling `progress` the images done (read or skipped) after each."""
    if progress is None:
        yield from loader
        return
    done = 0
    for batch in loader:
        yield batch
        _, labels, _, bad = batch
        done += len(labels) + len(bad)
        progress.update(done)
    progress.close()


def _training_split(data: Any, dataset: str) -> Optional[List[Any]]:
    """The dataset's training samples (the shared-images warning and the majority baseline),
    None when it has no readable training split."""
    from grefel.data import DatasetError, load_samples

    with contextlib.suppress(DatasetError):
        return load_samples(data, dataset, "train")[0]
    return None


def _warn_shared_with_train(data: Any, dataset: str, split: str, samples: Sequence[Any],
                            train: Optional[Sequence[Any]] = None) -> None:
    """A warning line when the evaluated split shares images with the dataset's training split
    (a test.csv that lists training images scores memory, not recognition). `train`: the
    training samples when the caller has read them (none: read here; a dataset without a
    readable training split has nothing to compare)."""
    from grefel.data import shared_images, shared_warning

    if split == "train":
        return
    train = train if train is not None else _training_split(data, dataset) or []
    shared = shared_images(train, samples)
    if shared:
        sys.stderr.write(shared_warning(data, split, "train", shared) + "\n")


def evaluate_model(
    model_path: PathLike,
    data: PathLike,
    opts: EvalOptions,
    *,
    out: Optional[PathLike] = None,
    reference: Optional[PathLike] = None,
    comparator: Optional[Comparator] = None,
    alignment: Optional[FaceAlignment] = None,
    align_cache: Optional[PathLike] = None,
    progress: Optional[ProgressFactory] = None,
) -> Dict[str, Any]:
    """Evaluate a checkpoint, `.onnx` or `.engine` on `opts.split` of `data` (module doc).

    out: the folder of metrics.json, confusion.json and the plots (None: nothing written).
    reference: an FP32 checkpoint run over the same batches; its outputs and the model's are
        compared by `comparator`, by default `agreement_comparator` held to the criteria
        `opts.criteria` names (`criteria_for`), recorded in the report.
    alignment: with mode "detect", every image is first detected and aligned as `grefel
        predict` does a still image (grefel.align_data, cached in `align_cache`); the
        report's `alignment` holds the settings and how many images had no face.
    progress: makes the Progress of each pass over the split ("eval", then "eval reference"),
        told the images done after every batch.
    """
    from grefel import contract
    from grefel.data import FERDataset, absent_classes, load_samples
    from grefel.data.datasets import batches, collate_arrays, resolve_kind

    model_path = Path(model_path)
    dataset, split, batch_size, workers = opts.dataset, opts.split, opts.batch_size, opts.workers
    device, threads, strict = opts.device, opts.threads, opts.strict
    compare, criteria = comparator, ""
    if reference is not None:  # the comparison is chosen before anything is loaded
        criteria = criteria_for(opts.criteria, model_path)
        if compare is None:
            compare = agreement_comparator(
                criteria, label=f"{model_path.name} vs {Path(reference).name}")

    samples, classes = load_samples(data, dataset, split)
    absent = absent_classes(samples, classes)
    if absent:  # the same rule as grefel train's validation split (docs/reliability)
        sys.stderr.write(f"warning: {data}: split {split!r} has no sample of class(es) "
                         f"{', '.join(absent)}: its macro-F1 and per-class scores leave them "
                         "out, and every prediction of them counts as an error\n")
    train = samples if split == "train" else _training_split(data, dataset)  # read once
    _warn_shared_with_train(data, dataset, split, samples, train or [])
    if alignment is not None:
        alignment = alignment.for_dataset(resolve_kind(data, dataset, split))
    aligned = _aligned(samples, alignment, align_cache)
    # The eval transform as numpy (`EvalTransform` is this in a tensor): no torch for an export.
    dataset_ = FERDataset(samples, classes, transform=contract.to_model_input, strict=strict,
                          read=aligned)

    def loader(what: str = "eval") -> Any:  # one fixed order: the reference sees the same batches
        shown = None if progress is None else progress(what, len(samples))
        return with_progress(plain_loader(), shown)

    def plain_loader() -> Any:
        if workers == 0:
            return batches(dataset_, batch_size, collate_arrays)
        try:
            require("torch", f"--workers {workers} (torch's DataLoader)")
        except MissingDependency as exc:
            raise EvalError(f"{exc} Or use --workers 0.") from None
        from torch.utils.data import DataLoader

        return DataLoader(dataset_, batch_size=batch_size, shuffle=False, num_workers=workers,
                          collate_fn=collate_arrays)

    if model_path.suffix.lower() in ARTIFACT_SUFFIXES:
        pred, backend_name = _artifact_outputs(model_path, classes, data, split, loader(),
                                               device, threads)
    else:
        model = _load_model(model_path, classes, data, split, device, threads)
        try:
            pred, backend_name = collect_outputs(model, loader(), model_device(model)), "torch"
        except NonFiniteError as exc:
            raise EvalError(f"{model_path}: {exc}") from None
    if len(pred["labels"]) == 0:
        raise EvalError(f"{data} ({split}): none of its {len(samples)} images could be read")
    # without a train split the majority class is the evaluated split's
    train_labels = None if train is None else [s.label for s in train]
    attrs = [samples[int(i)].attrs for i in pred["indices"]]
    report = score_predictions(pred, classes, attrs, train_labels)
    report.update(model=str(model_path), backend=backend_name, data=str(data), split=split,
                  skipped=[samples[int(i)].path for i in pred["skipped"]],
                  alignment={"mode": "off"} if aligned is None else aligned.report())
    report["checkpoint"] = str(model_path)  # the key of earlier reports
    report["trained_face_alignment"] = trained_face_alignment(model_path)
    if reference is not None:
        ref_model = _load_model(Path(reference), classes, data, split, device, threads)
        try:
            ref_pred = collect_outputs(ref_model, loader("eval reference"),
                                       model_device(ref_model))
        except NonFiniteError as exc:
            raise EvalError(f"{reference}: {exc}") from None
        if not np.array_equal(ref_pred["indices"], pred["indices"]):
            raise EvalError(f"{data} ({split}): the reference run read other images than "
                            f"{model_path.name} (a file changed during eval?)")
        ref_scores = score_predictions(ref_pred, classes, attrs, train_labels)
        agreement = compare(ref_pred, pred)  # type: ignore[misc]  # set with reference
        report["reference"] = {
            "checkpoint": str(reference),
            "final_accuracy": ref_scores["final"]["accuracy"],
            "final_macro_f1": ref_scores["final"]["macro_f1"],
            "primary_accuracy": ref_scores["primary"]["accuracy"],
            "accuracy_delta": report["final"]["accuracy"] - ref_scores["final"]["accuracy"],
            "criteria": criteria,
            "agreement": agreement.to_dict(),
        }
    if out is not None:
        write_outputs(Path(out), report, pred, classes)
    return report


def trained_face_alignment(model_path: Path) -> Optional[Dict[str, Any]]:
    """How a checkpoint's training images became faces (its sidecar's
    `preprocessing.face_alignment`, grefel train --align-faces); None when it does not say
    (an exported file, a checkpoint saved before the setting existed)."""
    if model_path.suffix.lower() != ".safetensors":
        return None
    from grefel.checkpoint import CheckpointError, read_meta

    try:
        found = (read_meta(model_path).get("preprocessing") or {}).get("face_alignment")
    except CheckpointError:
        return None
    return found if isinstance(found, dict) else None


def alignment_mismatch(report: Dict[str, Any]) -> str:
    """A note when the model was trained on faces prepared another way than this eval's
    (e.g. trained with --align-faces detect, evaluated on the images as given); "" if not."""
    trained = report.get("trained_face_alignment") or {}
    if "mode" not in trained:
        return ""
    used = report.get("alignment") or {"mode": "off"}
    keys = ("mode",) if trained["mode"] != used.get("mode") or trained["mode"] == "off" else (
        "detector", "det_size", "align", "margin", "min_face")
    differ = [f"{k} {trained.get(k)!r} vs {used.get(k)!r}" for k in keys
              if trained.get(k) != used.get(k)]
    if not differ:
        return ""
    return (f"note: {report['model']} was trained on faces prepared otherwise than this eval's "
            f"(training vs eval: {', '.join(differ)}); pass the training's --align-faces "
            "settings to measure what it was trained for")


def _aligned(samples: Sequence[Any], alignment: Optional[FaceAlignment],
             cache: Optional[PathLike]) -> Any:
    """The aligned crops of `samples` (grefel.align_data.AlignedImages), None when off."""
    if alignment is None or alignment.mode == "off":
        return None
    from grefel.align_data import AlignError, align_samples

    try:
        return align_samples(samples, alignment, cache,
                             progress=lambda line: print(line, file=sys.stderr, flush=True))
    except AlignError as exc:
        raise EvalError(f"--align-faces {alignment.mode}: {exc}") from None


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of `model`'s first parameter."""
    return next(model.parameters()).device


def _load_model(path: Path, classes: Sequence[str], data: PathLike, split: str, device: str,
                threads: Optional[int]) -> torch.nn.Module:
    if path.suffix.lower() != ".safetensors":
        raise EvalError(f"{path}: expected a .safetensors checkpoint, or an exported "
                        f"{' / '.join(ARTIFACT_SUFFIXES)}")
    try:
        torch = require("torch", f"{path.name} (a PyTorch checkpoint)")
    except MissingDependency as exc:
        raise EvalError(f"{exc} Or evaluate its exported .onnx / .engine.") from None
    from grefel.checkpoint import load_checkpoint
    from grefel.devices import DeviceError, resolve_device

    try:
        dev = resolve_device(device)
    except DeviceError as exc:
        raise EvalError(str(exc)) from None
    if threads and dev.type == "cpu":
        torch.set_num_threads(threads)
    model, _ = load_checkpoint(path, map_location=str(dev))
    if tuple(classes) != tuple(model.cfg.class_names):
        raise EvalError(f"{data} ({split}) has classes {list(classes)}, but {path} was "
                        f"trained on {list(model.cfg.class_names)}")
    return model


def _artifact_outputs(path: Path, classes: Sequence[str], data: PathLike, split: str,
                      loader: Any, device: str, threads: Optional[int]
                      ) -> Tuple[Dict[str, np.ndarray], str]:
    """Run an exported artifact through its runtime backend; (outputs, backend description)."""
    from grefel._lazy import MissingDependency
    from grefel.runtime import BackendError, open_backend
    from grefel.runtime.base import generic_classes

    want = None if device == "auto" else ("cuda" if device.startswith("cuda") else device)
    try:
        with open_backend(path, device=want, threads=threads) as backend:
            got = tuple(backend.classes)
            if got != tuple(classes) and not (got == generic_classes(len(classes))):
                raise EvalError(f"{data} ({split}) has classes {list(classes)}, but {path} "
                                f"outputs {list(got)}")
            return collect_backend_outputs(backend, loader), backend.describe()
    except (BackendError, MissingDependency) as exc:
        raise EvalError(str(exc)) from None


# What write_outputs writes into --out: no input may be one of them.
OUTPUT_NAMES = ("metrics.json", "confusion.json", "confusion_final.png", "confusion_primary.png",
                "reliability.png", "embedding.png")


def write_outputs(
    out: Path, report: Dict[str, Any], pred: Dict[str, np.ndarray], names: Sequence[str]
) -> None:
    """metrics.json, confusion.json and the four PNG plots, each written atomically."""
    from grefel.fileio import atomic_write_json, claim_run_folder

    claim_run_folder(out, "eval")
    atomic_write_json(out / "metrics.json", report)
    atomic_write_json(out / "confusion.json", {
        "class_names": list(names), "rows": "true class", "columns": "predicted class",
        "final": report["final"]["confusion"], "primary": report["primary"]["confusion"],
    })
    for kind in ("final", "primary"):
        plot_confusion(np.asarray(report[kind]["confusion"]), names,
                       f"{kind} prediction, accuracy {report[kind]['accuracy']:.3f}",
                       out / f"confusion_{kind}.png")
    correct = pred["probs"].argmax(axis=1) == pred["labels"]
    plot_reliability(pred["confidence"], pred["probs"].max(axis=1), correct,
                     report["calibration"], out / "reliability.png")
    if pred["embedding"].ndim == 2 and len(pred["embedding"]):  # an ONNX may have none
        plot_embedding(pca_2d(pred["embedding"]), pred["labels"], names, report["embedding"],
                       out / "embedding.png")


def _save(fig: Any, path: Path) -> None:
    from grefel.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_confusion(cm: np.ndarray, names: Sequence[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix with counts in the cells."""
    from matplotlib.figure import Figure

    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig = Figure(figsize=(1.0 + 0.8 * len(names), 0.8 + 0.7 * len(names)))
    ax = fig.add_subplot()
    ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)


def plot_reliability(
    conf: np.ndarray, max_p: np.ndarray, correct: np.ndarray, cal: Dict[str, Any], path: Path
) -> None:
    """Accuracy per confidence bin for C_f (eq. 10) and for max p, against the diagonal."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for values, label, ece in ((conf, "confidence C_f", cal["ece_confidence"]),
                               (max_p, "max prob", cal["ece_max_prob"])):
        bins = reliability_bins(values, correct, cal["n_bins"])
        used = bins["count"] > 0
        ax.plot(bins["confidence"][used], bins["accuracy"][used], marker="o",
                label=f"{label} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_title("reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def plot_embedding(
    xy: np.ndarray, labels: np.ndarray, names: Sequence[str], scores: Dict[str, Any], path: Path
) -> None:
    """2-D PCA of the embeddings e, one colour per true class (cf. paper Fig. 5)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    for c, name in enumerate(names):
        mask = labels == c
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=6, label=name)
    db, ch = scores["davies_bouldin"], scores["calinski_harabasz"]
    ax.set_title(f"embedding (PCA)  DB {db if db is None else round(db, 3)}  "
                 f"CH {ch if ch is None else round(ch, 1)}", fontsize=9)
    ax.legend(fontsize=7, markerscale=2)
    _save(fig, path)
