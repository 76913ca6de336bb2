"""The muxspace/facial_expressions layout: real labelled faces, and their identity-disjoint split.

    ROOT/data/legend.csv   user.id,image,emotion   (emotion in mixed case: "HAPPINESS", "sad")
    ROOT/images/<image>    13,690 photos: LFW-style crops First_Last_0001.jpg (identity in the
                           name), posed photos Name_12.jpg and facial-expressions_NNNNk.jpg

(github.com/muxspace/facial_expressions, Apache-2.0; its unlabelled test/ folder is not read.)

Labels are normalised (case, surrounding blanks, and the synonyms in LABELS). An image listed
twice with one label counts once; an image listed with two different labels is left out (both
counted in the split record). The identity of an image is its file name without the extension
and the trailing index (`George_W_Bush_0001.jpg` -> `George_W_Bush`, `Avinash_12.jpg` ->
`Avinash`); a name without an index is its own identity.

The split is identity-disjoint and stratified by class (`grefel.data.splits`: each class gets
about 80 / 10 / 10 % of its images where its identities allow it). It is computed from
legend.csv alone (not from what is on disk), so it is the same on every machine, and written
into the data folder the first time the folder is read, so that every command uses it:

    ROOT/grefel_split.csv   image,identity,label,split (one row per labelled image)
    ROOT/grefel_split.json  format, seed, fractions, legend.csv's and the CSV's sha256, images
                            per class and split, identities per split, the classes flagged for
                            fewer than MIN_TEST test images, the label problems left out

A split file made from another legend.csv, or edited by hand, is an error (remove both files to
make a new split): a model's test split must not change under it. Images listed in legend.csv
but missing on disk are left out of every split with one warning naming them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from grefel.config import DATASET_CLASSES
from grefel.data.samples import DatasetError, Sample
from grefel.data.splits import FRACTIONS, MAX_SHARE, SPLITS, stratified_group_split
from grefel.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    read_user_text,
    sha256_file,
)

__all__ = [
    "LABELS",
    "MIN_TEST",
    "SPLIT_CSV",
    "SPLIT_JSON",
    "identity_of",
    "looks_muxspace",
    "muxspace_split",
    "read_muxspace",
    "read_muxspace8",
]

_log = logging.getLogger("grefel.data")

LEGEND = Path("data") / "legend.csv"
IMAGES = "images"
SPLIT_CSV, SPLIT_JSON = "grefel_split.csv", "grefel_split.json"
SPLIT_FORMAT = "grefel-split/1"
SEED = 0
MIN_TEST = 10  # a class with fewer test images than this is flagged: its test metrics are noise
ALL_CLASSES = DATASET_CLASSES["muxspace8"]  # the split is made over all eight
LABELS = {name: name for name in ALL_CLASSES}
LABELS.update({"happy": "happiness", "sad": "sadness", "angry": "anger", "surprised": "surprise",
               "disgusted": "disgust", "afraid": "fear"})
_INDEX = re.compile(r"_\d+$")
_SHOW = 5


def identity_of(image: str) -> str:
    """The file name without its extension and trailing `_<digits>` index."""
    stem = os.path.splitext(os.path.basename(image))[0]
    return _INDEX.sub("", stem) or stem


def looks_muxspace(root: Path) -> bool:
    return (root / LEGEND).is_file() and (root / IMAGES).is_dir()


@dataclass
class Legend:
    """legend.csv read and normalised: {image: class name}, and what was left out."""

    labels: Dict[str, str] = field(default_factory=dict)
    duplicates: int = 0  # extra rows of an image with the same label
    conflicting: List[str] = field(default_factory=list)  # images given two different labels
    sha256: str = ""


def _listing(items: Sequence[str]) -> str:
    more = len(items) - _SHOW
    return ", ".join(items[:_SHOW]) + (f", ... and {more} more" if more > 0 else "")


def read_legend(root: Path) -> Legend:
    """ROOT/data/legend.csv -> Legend; DatasetError for a missing file, column or an unknown
    label (listing them)."""
    path = root / LEGEND
    if not path.is_file():
        raise DatasetError(f"{path}: missing (the muxspace/facial_expressions layout has "
                           "data/legend.csv with columns user.id,image,emotion)")
    text = read_user_text(path, error=DatasetError)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    cols = [c.strip() for c in reader.fieldnames or []]
    if "image" not in cols or "emotion" not in cols:
        raise DatasetError(f"{path}: needs the columns image and emotion (found: "
                           f"{', '.join(cols) or 'no header'})")
    out = Legend(sha256=sha256_file(path))
    seen: Dict[str, Optional[str]] = {}
    unknown, not_names = [], []
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        image, raw = row["image"], row["emotion"]
        if not image or "/" in image or "\\" in image or image in (".", ".."):
            not_names.append(f"line {line}: {image!r}")  # images/NAME only: never outside it
            continue
        label = LABELS.get(raw.lower())
        if label is None:
            unknown.append(f"line {line}: {raw!r}")
            continue
        if image in seen:
            if seen[image] == label:
                out.duplicates += 1
            elif seen[image] is not None:
                out.conflicting.append(image)
                seen[image] = None
            continue
        seen[image] = label
    if not_names:
        raise DatasetError(f"{path}: {len(not_names)} image(s) that are not a file name in "
                           f"{IMAGES}/ (a path, or empty): {_listing(not_names)}; the layout "
                           f"lists file names of {IMAGES}/ only")
    if unknown:
        raise DatasetError(f"{path}: {len(unknown)} unknown emotion label(s) (known: "
                           f"{', '.join(sorted(LABELS))}): {_listing(unknown)}")
    out.labels = {image: label for image, label in seen.items() if label is not None}
    if not out.labels:
        raise DatasetError(f"{path}: no labelled image")
    return out


def _make_split(root: Path, legend: Legend) -> Tuple[Dict[str, str], Dict[str, object]]:
    """{identity: split} and the record of the split (counts, flags) for `legend`."""
    groups: Dict[str, List[int]] = {}
    for image, label in legend.labels.items():
        groups.setdefault(identity_of(image), [0] * len(ALL_CLASSES))[
            ALL_CLASSES.index(label)] += 1
    assignment = stratified_group_split(groups, fractions=FRACTIONS, seed=SEED)
    counts = {s: dict.fromkeys(ALL_CLASSES, 0) for s in SPLITS}
    for image, label in legend.labels.items():
        counts[assignment[identity_of(image)]][label] += 1
    flagged = {c: counts["test"][c] for c in ALL_CLASSES
               if counts["test"][c] < MIN_TEST and any(counts[s][c] for s in SPLITS)}
    on_disk = {p.name for p in (root / IMAGES).iterdir()} if (root / IMAGES).is_dir() else set()
    record = {
        "format": SPLIT_FORMAT, "seed": SEED, "fractions": list(FRACTIONS),
        "max_share": MAX_SHARE, "legend_sha256": legend.sha256,
        "images": len(legend.labels), "counts": counts,
        "identities": {s: sum(v == s for v in assignment.values()) for s in SPLITS},
        "flagged_fewer_than_10_test_images": flagged,
        "legend_duplicate_rows": legend.duplicates,
        "legend_conflicting_images": sorted(legend.conflicting),
        "unlabelled_images_on_disk": len(on_disk - set(legend.labels)),
        "listed_images_missing": sorted(set(legend.labels) - on_disk),
    }
    return assignment, record


def _split_csv(legend: Legend, assignment: Dict[str, str]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "identity", "label", "split"])
    for image in sorted(legend.labels):
        ident = identity_of(image)
        w.writerow([image, ident, legend.labels[image], assignment[ident]])
    return buf.getvalue().encode()


def split_table(record: Dict[str, object]) -> str:
    """The images per class and split of a split record, as a Markdown table (printed and
    recorded), with the flagged classes marked."""
    counts = record["counts"]
    flagged = record["flagged_fewer_than_10_test_images"]
    lines = ["| class | train | val | test | total |", "|---|---:|---:|---:|---:|"]
    for c in ALL_CLASSES:
        row = [counts[s][c] for s in SPLITS]
        mark = f" (flagged: fewer than {MIN_TEST} test images)" if c in flagged else ""
        lines.append(f"| {c}{mark} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    totals = [sum(counts[s].values()) for s in SPLITS]
    lines.append("| all | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |")
    ids = record["identities"]
    lines.append("| identities | " + " | ".join(str(ids[s]) for s in SPLITS)
                 + f" | {sum(ids.values())} |")
    return "\n".join(lines)


def muxspace_split(root: Path) -> Tuple[Legend, Dict[str, str], Dict[str, object]]:
    """(legend, {image: split}, split record) of the folder, from its split files, which are
    written first when absent (module docstring)."""
    legend = read_legend(root)
    csv_path, json_path = root / SPLIT_CSV, root / SPLIT_JSON
    if json_path.exists() or csv_path.exists():
        record = _read_record(json_path, csv_path, legend)
        by_image = _read_split_csv(csv_path, legend)
        return legend, by_image, record
    assignment, record = _make_split(root, legend)
    data = _split_csv(legend, assignment)
    record["split_csv_sha256"] = _sha256_bytes(data)
    try:
        atomic_write_bytes(csv_path, data)
        atomic_write_json(json_path, record)
        where = f"written to {csv_path}"
    except OSError as exc:
        where = (f"could not be written into the data folder ({exc.strerror}); it is computed "
                 "the same way on every read")
    _log.warning("%s: new identity-disjoint split %s:\n%s", root, where, split_table(record))
    if record["flagged_fewer_than_10_test_images"]:
        _log.warning("%s: classes with fewer than %d test images (their test metrics are noise): "
                     "%s", root, MIN_TEST, record["flagged_fewer_than_10_test_images"])
    by_image = {image: assignment[identity_of(image)] for image in legend.labels}
    return legend, by_image, record


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_record(json_path: Path, csv_path: Path, legend: Legend) -> Dict[str, object]:
    remove = (f"remove {csv_path.name} and {json_path.name} to make a new split from the "
              "current legend.csv (models evaluated on the old test split are not comparable)")
    try:
        record = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{json_path}: missing or unreadable ({exc}); {remove}") from None
    if not isinstance(record, dict) or record.get("format") != SPLIT_FORMAT:
        raise DatasetError(f"{json_path}: not a {SPLIT_FORMAT} split record; {remove}")
    if record.get("legend_sha256") != legend.sha256:
        raise DatasetError(f"{json_path}: the split was made from another data/legend.csv "
                           f"(sha256 {str(record.get('legend_sha256'))[:12]}..., now "
                           f"{legend.sha256[:12]}...); {remove}")
    try:
        same = sha256_file(csv_path) == record.get("split_csv_sha256")
    except OSError:
        same = False
    if not same:
        raise DatasetError(f"{csv_path}: missing or changed since {json_path.name} recorded it; "
                           f"{remove}")
    return record


def _read_split_csv(csv_path: Path, legend: Legend) -> Dict[str, str]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_image = {r["image"]: r["split"] for r in rows}
    if set(by_image) != set(legend.labels) or set(by_image.values()) - set(SPLITS):
        raise DatasetError(f"{csv_path}: does not list the labelled images of legend.csv "
                           f"with train/val/test; remove it and {SPLIT_JSON}")
    return by_image


def read_muxspace(root: Path, split: str, classes: Tuple[str, ...] = DATASET_CLASSES["muxspace"],
                  **_: object) -> Tuple[List[Sample], Tuple[str, ...]]:
    """The `split` (train, val, test or all) of a muxspace/facial_expressions folder, with the
    7 basic expressions: contempt (9 images) is left out and counted (muxspace8 keeps it)."""
    if split not in SPLITS + ("all",):
        raise DatasetError(f"{root}: muxspace has splits {', '.join(SPLITS)}, all; not {split!r}")
    legend, by_image, _ = muxspace_split(root)
    index = {c: i for i, c in enumerate(classes)}
    samples, missing, other = [], [], 0
    for image in sorted(legend.labels):
        if split != "all" and by_image[image] != split:
            continue
        label = legend.labels[image]
        if label not in index:
            other += 1
            continue
        path = root / IMAGES / image
        if not path.is_file():
            missing.append(image)
            continue
        samples.append(Sample(str(path.resolve()), index[label], identity_of(image)))
    if missing:
        _log.warning("%s: %d image(s) of split %r listed in %s are missing from %s/ and left out:"
                     " %s", root, len(missing), split, LEGEND, IMAGES, _listing(missing))
    if other:
        _log.warning("%s: %d image(s) of split %r with a class outside %s left out (%s keeps "
                     "them)", root, other, split, ", ".join(classes), "--dataset muxspace8")
    return samples, classes


def read_muxspace8(root: Path, split: str, **_: object) -> Tuple[List[Sample], Tuple[str, ...]]:
    """read_muxspace with the eighth class, contempt."""
    return read_muxspace(root, split, classes=ALL_CLASSES)
