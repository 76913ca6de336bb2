"""SynthFER: a procedurally drawn, seeded facial-expression dataset written as PNG + CSV.

The faces come from `grefel.data.faces` (identity, skin tone, pose, lighting, clutter,
occlusions, expression geometry at a random intensity, ground-truth iBUG-68 landmarks).

Dataset layout written by `generate_synthfer` (read by the CSV reader, like real data):
    OUT/images/000000.png ...
    OUT/train.csv, val.csv, test.csv   path,label,group,clean_label,skin,occlusion,intensity
    OUT/classes.txt, OUT/landmarks.csv (path,x0,y0,...,x67,y67 in output pixels), OUT/README.txt
Classes follow DATASET_CLASSES["synthfer"] (["synthfer8"] with contempt) with RAF-DB basic's
training-set class frequencies by default. Identities get uneven image counts (lognormal), so the
data-refinement cap per group matters; splits are by identity (~70 / 15 / 15 % of images, no
identity in two splits) and `group` is the identity id. Label noise flips that fraction of *train*
labels to another random class (val/test stay clean); `clean_label` keeps the truth. The images
depend only on (n, seed, imbalance, contempt, size): a noisy and a clean dataset with the same
seed hold the same pictures. Same arguments -> same bytes.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from grefel.config import DATASET_CLASSES, SynthConfig
from grefel.data.faces import Identity, make_identity, render_face
from grefel.fileio import atomic_write_bytes

__all__ = ["RAFDB_TRAIN_COUNTS", "generate_synthfer", "split_identities"]

# RAF-DB basic training-set counts per class: the default class imbalance.
RAFDB_TRAIN_COUNTS: Dict[str, int] = {
    "surprise": 1290, "fear": 281, "disgust": 717, "happiness": 4772, "sadness": 1982,
    "anger": 705, "neutral": 2524,
    "contempt": 210,  # not in RAF-DB basic; made the rarest class, as in AffectNet
}


def _apportion(n: int, weights: Sequence[float], minimum: int = 0) -> List[int]:
    """Integers proportional to weights summing to n (largest remainder), each >= minimum."""
    w = np.asarray(weights, dtype=np.float64)
    rest = n - minimum * len(w)
    raw = rest * w / w.sum()
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out), kind="stable")[: rest - int(out.sum())]:
        out[i] += 1
    return (out + minimum).tolist()


def _plan(n: int, seed: int, classes: Sequence[str], imbalance: str
          ) -> Tuple[List[int], List[int], List[str]]:
    """Per image: clean label, identity id; per identity: split. All from (n, seed, classes)."""
    rng = np.random.default_rng([seed, 0])
    if imbalance == "rafdb":
        weights = [RAFDB_TRAIN_COUNTS[c] for c in classes]
    elif imbalance == "uniform":
        weights = [1.0] * len(classes)
    else:
        raise ValueError(f"imbalance must be 'rafdb' or 'uniform', got {imbalance!r}")
    labels = np.repeat(np.arange(len(classes)), _apportion(n, weights))
    labels = rng.permutation(labels).tolist()
    n_ids = max(3, min(n, int(round(n / 16))))
    per_id = _apportion(n, rng.lognormal(0.0, 0.75, n_ids), minimum=1)
    identity = np.repeat(np.arange(n_ids), per_id).tolist()
    order = rng.permutation(n_ids)
    split, done = [""] * n_ids, 0
    for k, i in enumerate(order):  # ~70 / 15 / 15 % of images, at least one identity each
        left = n_ids - k
        frac = done / n
        name = "train" if frac < 0.7 else ("val" if frac < 0.85 else "test")
        if left <= 2 and "val" not in split:
            name = "val"
        elif left == 1 and "test" not in split:
            name = "test"
        split[i] = name
        done += per_id[i]
    return labels, identity, split


def _csv_bytes(header: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def split_identities(path: Path) -> Dict[str, int]:
    """Distinct identities (`group`) in each split CSV of a SynthFER folder."""
    counts = {}
    for name in ("train", "val", "test"):
        with open(Path(path) / f"{name}.csv", newline="") as f:
            counts[name] = len({row["group"] for row in csv.DictReader(f)})
    return counts


def generate_synthfer(
    out: Union[str, Path],
    n: int,
    seed: int = SynthConfig.seed,
    noise: float = SynthConfig.noise,
    imbalance: str = SynthConfig.imbalance,
    contempt: bool = SynthConfig.contempt,
    size: int = SynthConfig.size,
    difficulty: float = SynthConfig.difficulty,
    overwrite: bool = SynthConfig.overwrite,
) -> Path:
    """Write a SynthFER dataset of `n` images to `out` (layout in the module docstring).

    `difficulty` in [0, 1] scales the nuisances (pose, clutter, occlusions, blur, lighting,
    noise, weak expressions; `grefel.data.faces.render_face`): 1 is the full set, lower values
    give data a small model learns in CPU minutes. An `out` that exists and is not empty is
    refused (FileExistsError) unless `overwrite`, which replaces the dataset files there.
    """
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if n < 3:
        raise ValueError(f"n must be >= 3 (one identity per split), got {n}")
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    out = Path(out)
    if not overwrite and out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a folder that is not empty" if out.is_dir() else "not a folder"
        raise FileExistsError(f"{out} is {what}; choose a new folder, or pass --overwrite to "
                              "replace the dataset files there")
    classes = DATASET_CLASSES["synthfer8" if contempt else "synthfer"]
    labels, identity, split = _plan(n, seed, classes, imbalance)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("*.png"):  # a previous, larger dataset's leftovers
        old.unlink()
    idents: Dict[int, Identity] = {}
    rows: Dict[str, List[List[object]]] = {"train": [], "val": [], "test": []}
    lm_rows = []
    for k in range(n):
        i = identity[k]
        if i not in idents:
            idents[i] = make_identity(np.random.default_rng([seed, 3, i]))
        img, lm, attrs = render_face(np.random.default_rng([seed, 1, k]), idents[i],
                                     classes[labels[k]], size, difficulty)
        rel = f"images/{k:06d}.png"
        img.save(out / rel, format="PNG", compress_level=3)
        rows[split[i]].append([rel, classes[labels[k]], f"id{i:04d}", classes[labels[k]],
                               attrs["skin"], attrs["occlusion"], attrs["intensity"]])
        lm_rows.append([rel] + [f"{v:.2f}" for v in lm.reshape(-1)])
    _add_noise(rows["train"], noise, classes, np.random.default_rng([seed, 2]))
    header = ["path", "label", "group", "clean_label", "skin", "occlusion", "intensity"]
    for name, r in rows.items():
        atomic_write_bytes(out / f"{name}.csv", _csv_bytes(header, r))
    lm_header = ["path"] + [f"{a}{j}" for j in range(68) for a in "xy"]
    atomic_write_bytes(out / "landmarks.csv", _csv_bytes(lm_header, lm_rows))
    atomic_write_bytes(out / "classes.txt", ("\n".join(classes) + "\n").encode())
    readme = _readme(n=n, seed=seed, noise=noise, imbalance=imbalance, size=size,
                     difficulty=difficulty, classes=classes, rows=rows)
    atomic_write_bytes(out / "README.txt", readme)
    return out


def _add_noise(rows: List[List[object]], noise: float, classes: Sequence[str],
               rng: np.random.Generator) -> None:
    """Flip round(noise * len(rows)) labels (column 1) to a different random class."""
    n_flip = int(round(noise * len(rows)))
    for j in rng.choice(len(rows), n_flip, replace=False):
        clean = classes.index(str(rows[j][1]))
        rows[j][1] = classes[(clean + int(rng.integers(1, len(classes)))) % len(classes)]


def _readme(n: int, seed: int, noise: float, imbalance: str, size: int, difficulty: float,
            classes: Sequence[str], rows: Dict[str, List[List[object]]]) -> bytes:
    lines = [
        "SynthFER: procedurally drawn facial expressions (grefel.data.synthfer).",
        f"Generated with: n={n} seed={seed} noise={noise} imbalance={imbalance} size={size} "
        f"difficulty={difficulty}",
        "Columns: path,label,group,clean_label,skin,occlusion,intensity.",
        "label = class name (noisy in train when noise > 0), clean_label = the drawn expression,",
        "group = identity id (no identity is in two splits). landmarks.csv: iBUG-68 x,y pixels.",
        "",
        "split  " + " ".join(f"{c:>9}" for c in classes) + "  total  flipped",
    ]
    for name, r in rows.items():
        counts = [sum(1 for row in r if row[1] == c) for c in classes]
        flipped = sum(1 for row in r if row[1] != row[3])
        lines.append(f"{name:6} " + " ".join(f"{v:>9}" for v in counts)
                     + f"  {len(r):>5}  {flipped:>7}")
    return ("\n".join(lines) + "\n").encode()
