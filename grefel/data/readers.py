"""Dataset readers: one function per layout, `(root, split, **kw) -> (samples, class names)`.

Class names come from `grefel.config.DATASET_CLASSES` (or the dataset's own classes.txt for csv
and imagefolder). Every reader raises `DatasetError` naming the missing or malformed file, the
empty class folders or the unknown labels. Expected layouts (ROOT is the folder you pass):

rafdb       RAF-DB basic. ROOT/EmoLabel/list_patition_label.txt ("train_00001.jpg 5", labels
            1..7 = surprise fear disgust happiness sadness anger neutral), images
            ROOT/Image/aligned/train_00001_aligned.jpg. Splits train / test (file-name prefix).
            Optional ROOT/Annotation/manual/train_00001_manu_attri.txt (5 landmark lines, then
            gender, race, age) -> attrs gender / race / age.
affectnet7, affectnet8
            ROOT/training.csv and ROOT/validation.csv (also accepted under
            ROOT/Manually_Annotated_file_lists/), columns subDirectory_filePath, expression
            (and face_x, face_y, face_width, face_height: the face box, cropped when loading).
            Images at ROOT/Manually_Annotated_Images/<subDirectory_filePath> or
            ROOT/<subDirectory_filePath>. Splits: train = training.csv, val and test =
            validation.csv (the official test set is unreleased). Labels outside the class range
            (7 contempt for affectnet7, 8 none, 9 uncertain, 10 no-face) are dropped and counted.
ferplus     ROOT/fer2013.csv (emotion, pixels, Usage) and ROOT/fer2013new.csv (Usage, Image name,
            neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
            vote counts), rows aligned. Label = FER+ "majority" mode: single votes removed, the
            top emotion must hold more than half of the remaining votes; unknown, NF, ties and
            rows without an image name are dropped. Splits: train = Training, val = PublicTest,
            test = PrivateTest. Images are decoded from the 48x48 pixel strings (path
            "ROOT/fer2013.csv#ROW").
fergdb      ROOT/<character>/<character>_<emotion>/*.png (or ROOT/<character>/<emotion>/*.png),
            emotions anger disgust fear joy neutral sadness surprise. No official split: a
            stable hash of the file name puts 80 / 10 / 10 % in train / val / test.
            group = character.
affwild2    Aff-Wild2 expression track. ROOT/cropped_aligned/<video>/<frame:05d>.jpg and per-video
            annotation files <video>.txt in a Train_Set / Validation_Set folder anywhere up to
            three levels under ROOT (e.g. ROOT/annotations/EXPR_Set/Train_Set). Each file: a
            header line "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other", then one
            label per frame (line k = frame k). -1 frames are dropped; annotated frames without
            an image (no face found) are skipped and counted in the log. Splits: train =
            Train_Set, val and test = Validation_Set. group = video.
jaffe       ROOT/**/<subject>.<EXPR><n>.<id>.tiff (e.g. KA.AN1.39.tiff; NE HA SA SU AN DI FE).
            Leave-subject-out split: with subjects sorted, subject `fold` is test, the next one
            val, the rest train (`fold=` keyword, default 0); split "all" = everything.
            group = subject.
imagefolder ROOT/<split>/<class>/*.{jpg,jpeg,png,bmp,tif,tiff,webp}; classes from
            ROOT/classes.txt (one per line) when present, else the sorted class folders of all
            split folders. Empty class folders, folders not in classes.txt and links to nothing
            (broken, or a loop of links) among the folders and images are errors.
csv         ROOT/<split>.csv with a header: path,label[,group][,more columns -> attrs]. path is
            relative to ROOT (or absolute), label a class name or index; classes from
            ROOT/classes.txt when present, else the sorted names (or 0..max index, every index
            present) of all split CSVs. Unknown labels, index gaps without classes.txt and
            missing images (broken links and symlink loops included) are errors listing them.
muxspace, muxspace8
            muxspace/facial_expressions: ROOT/data/legend.csv (user.id,image,emotion) and
            ROOT/images/. 7 classes (contempt left out and counted) or 8. Splits train / val /
            test: identity-disjoint, stratified by class, written into ROOT as grefel_split.csv
            + .json on first read (grefel.data.muxspace); "all" = every labelled image.
            group = identity (the file name without its trailing index).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from grefel.config import DATASET_CLASSES
from grefel.contract import ClassNamesError, check_class_names
from grefel.data.muxspace import looks_muxspace, read_muxspace, read_muxspace8
from grefel.data.samples import DatasetError, Sample
from grefel.fileio import read_user_text

__all__ = ["READERS", "detect_kind", "table_image"]

_log = logging.getLogger("grefel.data")
Result = Tuple[List[Sample], Tuple[str, ...]]
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SHOW = 10  # how many names an error message lists before "... and N more"


def _listing(items: Sequence[object]) -> str:
    head = ", ".join(str(i) for i in list(items)[:_SHOW])
    more = len(items) - _SHOW
    return head + (f", ... and {more} more" if more > 0 else "")


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{path}: missing {what}")
    return path


def _check_exist(paths: Iterable[str], root: Path, what: str) -> None:
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        loops = sum(os.path.lexists(p) for p in missing)
        links = f" ({loops} of them broken links or symlink loops)" if loops else ""
        raise DatasetError(f"{root}: {len(missing)} {what} missing{links}: {_listing(missing)}")


def _absolute(root: Path, path: str) -> str:
    """ROOT/path made absolute, symlinks resolved where they resolve (a symlink loop stays as
    written and is reported as missing by _check_exist)."""
    joined = root / path
    try:
        return str(joined.resolve())
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13 on a symlink loop
        return os.path.abspath(joined)


def _read_csv(path: Path, required: Sequence[str]) -> List[Dict[str, str]]:
    """Rows of a CSV with a header; DatasetError if a required column is absent, or naming the
    line of a row whose field count is not the header's (an unquoted comma in a file name
    would otherwise shift the label into another column, or the row into a traceback)."""
    reader = csv.DictReader(io.StringIO(read_user_text(path, error=DatasetError), newline=""))
    line = 1
    try:
        cols = [c.strip() for c in (reader.fieldnames or [])]
        absent = [c for c in required if c not in cols]
        if absent:
            raise DatasetError(f"{path}: missing column(s) {', '.join(absent)} "
                               f"(found: {', '.join(cols) or 'no header'})")
        rows = []
        for row in reader:
            line = reader.line_num
            extra = row.pop(None, None)  # DictReader's restkey: fields beyond the header
            short = sum(v is None for v in row.values())  # its restval: fields missing
            if extra is not None or short:
                fields = len(cols) + len(extra or ()) - short
                hint = ("a field holding a comma must be quoted (\"a,b.jpg\")" if extra
                        else "every row needs a field (maybe empty) for every column")
                raise DatasetError(f"{path}: line {line}: {fields} field(s) for the "
                                   f"{len(cols)} columns of its header ({', '.join(cols)}); "
                                   f"{hint}")
            rows.append({k.strip(): v.strip() for k, v in row.items()})
        return rows
    except csv.Error as e:
        raise DatasetError(f"{path}: line {line + 1}: not valid CSV ({e})") from None


def _stable_split(key: str, fractions: Tuple[float, float] = (0.8, 0.9)) -> str:
    """train / val / test from a stable hash of `key` (80 / 10 / 10 %)."""
    h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if h < fractions[0] else ("val" if h < fractions[1] else "test")


def _check_split(split: str, allowed: Sequence[str], root: Path, kind: str) -> None:
    if split not in allowed:
        raise DatasetError(f"{root}: {kind} has splits {', '.join(allowed)}, not {split!r}")


# --- generic: csv and imagefolder ---------------------------------------------------------------


def _classes_file(root: Path) -> Optional[Tuple[str, ...]]:
    path = root / "classes.txt"
    if not path.exists():
        return None
    lines = [line.strip() for line in read_user_text(path, error=DatasetError).splitlines()]
    while lines and not lines[-1]:  # blank lines at the end mean nothing
        lines.pop()
    if "" in lines:  # line k names class k: a blank line would shift every class after it
        raise DatasetError(f"{path}: line {lines.index('') + 1} is empty; integer labels "
                           "index the lines (line k = label k), so remove the empty line(s)")
    try:
        check_class_names(tuple(lines), path, fix="one class name per line")
    except ClassNamesError as exc:
        raise DatasetError(str(exc)) from None
    if len(lines) < 2:
        raise DatasetError(f"{path}: needs at least two distinct class names, one per line")
    return tuple(lines)


def _csv_classes(root: Path, rows: Sequence[Dict[str, str]]) -> Tuple[str, ...]:
    """classes.txt, else the sorted label names (or 0..max index) of every split CSV."""
    names = _classes_file(root)
    if names is not None:
        return names
    labels = {r["label"] for r in rows}
    for other in ("train", "val", "test"):
        if (root / f"{other}.csv").exists():
            labels |= {r["label"] for r in _read_csv(root / f"{other}.csv", ("path", "label"))}
    if labels and all(v.isdigit() for v in labels):
        found = sorted({int(v) for v in labels})
        absent = sorted(set(range(found[-1] + 1)) - set(found))
        if absent:  # a stray index must not silently add empty classes
            raise DatasetError(
                f"{root}: integer labels {_listing(found)} and no classes.txt: indices "
                f"{_listing(absent)} have no sample, so the number of classes is unclear. "
                f"Declare the classes in {root / 'classes.txt'} (one name per line, line k = "
                "label k), or fix the labels")
        return tuple(str(i) for i in found)
    return tuple(sorted(labels))


def read_csv_dataset(root: Path, split: str, **_: object) -> Result:
    """ROOT/<split>.csv: path,label[,group][,attrs...] (see the module docstring)."""
    path = _need(root / f"{split}.csv", f"split file {split}.csv (columns path,label[,group])")
    rows = _read_csv(path, ("path", "label"))
    classes = _csv_classes(root, rows)
    index = {c: i for i, c in enumerate(classes)}
    samples, unknown = [], []
    for line, r in enumerate(rows, start=2):
        label = index.get(r["label"])
        if label is None and r["label"].isdigit() and int(r["label"]) < len(classes):
            label = int(r["label"])
        if label is None:
            unknown.append(f"line {line}: {r['label']!r}")
            continue
        attrs = {k: v for k, v in r.items() if k not in ("path", "label", "group")}
        samples.append(Sample(_absolute(root, r["path"]), label, r.get("group", ""), attrs))
    if unknown:
        raise DatasetError(f"{path}: {len(unknown)} unknown label(s) (classes: "
                           f"{', '.join(classes)}): {_listing(unknown)}")
    _check_exist((s.path for s in samples), root, f"images listed in {path.name}")
    return samples, classes


def _folder_entries(folder: Path, kind: str) -> List[Path]:
    """The sorted subfolders (kind "dir") or image files (kind "image") of a folder, in one scan
    (no stat for plain entries). A link to nothing among them (broken, or a loop of links) is
    an error naming it, not an entry silently left out."""
    found, dangling = [], []
    with os.scandir(folder) as scan:
        for entry in scan:
            if kind == "image" and os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTS:
                continue
            try:
                wanted = entry.is_dir() if kind == "dir" else entry.is_file()
            except OSError:  # a loop of links: stat fails with ELOOP
                wanted = False
            if wanted:
                found.append(Path(entry.path))
            elif entry.is_symlink() and not os.path.exists(entry.path):
                dangling.append(entry.path)
    if dangling:
        raise DatasetError(f"{folder}: {len(dangling)} symbolic link(s) to nothing (broken, or a "
                           f"loop of links); fix or remove them: {_listing(sorted(dangling))}")
    return sorted(found)


def _subfolders(folder: Path) -> List[Path]:
    return _folder_entries(folder, "dir")


def _image_files(folder: Path) -> List[Path]:
    return _folder_entries(folder, "image")


def read_imagefolder(root: Path, split: str, **_: object) -> Result:
    """ROOT/<split>/<class>/*.jpg (see the module docstring)."""
    base = _need(root / split, f"split folder {split}/ (layout ROOT/{split}/<class>/*.jpg)")
    folders = _subfolders(base)
    if not folders:
        raise DatasetError(f"{base}: no class folders (layout ROOT/{split}/<class>/*.jpg)")
    classes = _classes_file(root)
    if classes is None:
        names = {p.name for s in ("train", "val", "test") if (root / s).is_dir()
                 for p in _subfolders(root / s)}
        classes = tuple(sorted(names))
    unknown = [p.name for p in folders if p.name not in classes]
    if unknown:
        raise DatasetError(f"{base}: class folder(s) not in classes.txt ({', '.join(classes)}): "
                           f"{_listing(unknown)}")
    samples, empty = [], []
    for folder in folders:
        files = _image_files(folder)
        if not files:
            empty.append(str(folder))
        samples += [Sample(str(p.resolve()), classes.index(folder.name)) for p in files]
    if empty:
        raise DatasetError(f"{base}: {len(empty)} empty class folder(s) (no "
                           f"{'/'.join(IMAGE_EXTS)} files): {_listing(empty)}")
    return samples, classes


# --- RAF-DB ---------------------------------------------------------------------------------------

_RAF_ATTRS = {
    "gender": ("male", "female", "unsure"),
    "race": ("caucasian", "african-american", "asian"),
    "age": ("0-3", "4-19", "20-39", "40-69", "70+"),
}


def _raf_attrs(path: Path) -> Dict[str, str]:
    """gender / race / age from a RAF-DB manual attribute file (lines 6-8, after 5 landmarks)."""
    text = read_user_text(path, error=DatasetError)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 8:
        raise DatasetError(f"{path}: expected 5 landmark lines then gender, race, age "
                           f"({len(lines)} lines)")
    attrs = {}
    for (key, names), value in zip(_RAF_ATTRS.items(), lines[5:8]):
        if not value.isdigit() or int(value) >= len(names):
            raise DatasetError(f"{path}: {key} code {value!r} is not one of 0..{len(names) - 1}")
        attrs[key] = names[int(value)]
    return attrs


def read_rafdb(root: Path, split: str, **_: object) -> Result:
    """RAF-DB basic (see the module docstring)."""
    _check_split(split, ("train", "test"), root, "RAF-DB")
    if not (root / "EmoLabel").exists() and (root / "basic" / "EmoLabel").exists():
        root = root / "basic"
    labels_file = _need(root / "EmoLabel" / "list_patition_label.txt", "RAF-DB label file")
    classes = DATASET_CLASSES["rafdb"]
    manual = root / "Annotation" / "manual"
    samples, bad = [], []
    text = read_user_text(labels_file, error=DatasetError)
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= 7:
            bad.append(f"line {n}: {line.strip()!r}")
            continue
        name = parts[0]
        if not name.startswith(split + "_"):
            continue
        stem = name.rsplit(".", 1)[0]
        image = root / "Image" / "aligned" / f"{stem}_aligned.jpg"
        attr_file = manual / f"{stem}_manu_attri.txt"
        attrs = _raf_attrs(attr_file) if attr_file.exists() else {}
        samples.append(Sample(str(image.resolve()), int(parts[1]) - 1, "", attrs))
    if bad:
        raise DatasetError(f"{labels_file}: {len(bad)} line(s) not '<name> <label 1..7>': "
                           f"{_listing(bad)}")
    _check_exist((s.path for s in samples), root, "aligned images (Image/aligned/*_aligned.jpg)")
    return samples, classes


# --- AffectNet ------------------------------------------------------------------------------------


def _read_affectnet(root: Path, split: str, classes: Tuple[str, ...]) -> Result:
    _check_split(split, ("train", "val", "test"), root, "AffectNet")
    name = "training.csv" if split == "train" else "validation.csv"
    lists = [root / name, root / "Manually_Annotated_file_lists" / name]
    path = next((p for p in lists if p.exists()), None)
    if path is None:
        raise DatasetError(f"{root}: missing AffectNet list {name} (looked for "
                           f"{', '.join(str(p) for p in lists)})")
    rows = _read_csv(path, ("subDirectory_filePath", "expression"))
    images = root / "Manually_Annotated_Images"
    base = images if images.is_dir() else root
    samples: List[Sample] = []
    dropped: Dict[int, int] = {}
    for r in rows:
        try:
            label = int(float(r["expression"]))
        except ValueError:
            raise DatasetError(f"{path}: expression {r['expression']!r} is not a number "
                               f"({r['subDirectory_filePath']})") from None
        if not 0 <= label < len(classes):
            dropped[label] = dropped.get(label, 0) + 1
            continue
        box = [r.get(k, "") for k in ("face_x", "face_y", "face_width", "face_height")]
        attrs = {"box": ",".join(box)} if all(box) else {}
        samples.append(Sample(str((base / r["subDirectory_filePath"]).resolve()), label, "",
                              attrs))
    if dropped:
        _log.info("%s: dropped %d rows with labels outside 0..%d (%s)", path,
                  sum(dropped.values()), len(classes) - 1,
                  ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())))
    _check_exist((s.path for s in samples), root, f"images listed in {path.name}")
    return samples, classes


def read_affectnet7(root: Path, split: str, **_: object) -> Result:
    return _read_affectnet(root, split, DATASET_CLASSES["affectnet7"])


def read_affectnet8(root: Path, split: str, **_: object) -> Result:
    return _read_affectnet(root, split, DATASET_CLASSES["affectnet8"])


# --- FER+ -----------------------------------------------------------------------------------------

_FERPLUS_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}


def ferplus_majority(votes: Sequence[float]) -> Optional[int]:
    """FER+ "majority" label of 10 vote counts (8 emotions, unknown, NF), or None if dropped.

    As FERPlus's `_process_data(mode="majority")`: votes of 1 are outliers and removed; the top
    entry must hold more than half of the remaining votes; unknown (8) and NF (9) are dropped.
    """
    v = [0.0 if x <= 1 else float(x) for x in votes]
    total = sum(v)
    if total <= 0:
        return None
    top = int(np.argmax(v))
    if v[top] <= 0.5 * total or top >= 8:
        return None
    return top


def read_ferplus(root: Path, split: str, **_: object) -> Result:
    """FER+ over FER2013 (see the module docstring)."""
    _check_split(split, tuple(_FERPLUS_USAGE), root, "FER+")
    pixels = _need(root / "fer2013.csv", "FER2013 pixel file fer2013.csv")
    votes = _need(root / "fer2013new.csv", "FER+ vote file fer2013new.csv")
    classes = DATASET_CLASSES["ferplus"]
    vote_cols = list(classes) + ["unknown", "NF"]
    rows = _read_csv(votes, ["Usage", "Image name"] + vote_cols)
    with open(pixels, encoding="utf-8") as f:
        n_pixels = sum(1 for _ in f) - 1
    if n_pixels != len(rows):
        raise DatasetError(f"{votes}: {len(rows)} rows but {pixels} has {n_pixels}; the two files "
                           "must be row-aligned")
    samples, dropped = [], 0
    for i, r in enumerate(rows):
        if r["Usage"] != _FERPLUS_USAGE[split]:
            continue
        try:
            label = ferplus_majority([float(r[c]) for c in vote_cols])
        except ValueError:
            raise DatasetError(f"{votes}: row {i + 2} has a non-numeric vote count") from None
        if label is None or not r["Image name"]:
            dropped += 1
            continue
        samples.append(Sample(f"{pixels.resolve()}#{i}", label, "", {"name": r["Image name"]}))
    _log.info("%s: %s: dropped %d images without a FER+ majority label", root, split, dropped)
    return samples, classes


@functools.lru_cache(maxsize=2)
def _fer2013_pixels(path: str) -> Tuple[str, ...]:
    rows = _read_csv(Path(path), ("pixels",))
    return tuple(r["pixels"] for r in rows)


def table_image(path: str) -> np.ndarray:
    """Decode "TABLE.csv#ROW" (a FER2013 48x48 pixel string) -> RGB uint8 (H, W, 3)."""
    table, _, row = path.rpartition("#")
    if not Path(table).exists():
        raise DatasetError(f"{table}: file not found")
    pixels = _fer2013_pixels(table)
    if not row.isdigit() or int(row) >= len(pixels):
        raise DatasetError(f"{path}: row {row} not in {table} ({len(pixels)} rows)")
    try:
        a = np.array(pixels[int(row)].split(), dtype=np.float64)
    except ValueError:
        raise DatasetError(f"{path}: pixels are not numbers") from None
    side = int(round(len(a) ** 0.5))
    if side * side != len(a) or a.min(initial=0) < 0 or a.max(initial=0) > 255:
        raise DatasetError(f"{path}: {len(a)} pixel values are not a square 8-bit image")
    grey = a.reshape(side, side).astype(np.uint8)  # (H, W)
    return np.repeat(grey[:, :, None], 3, axis=2)  # grey replicated, as contract.to_rgb does


# --- FERG-DB --------------------------------------------------------------------------------------


def read_fergdb(root: Path, split: str, **_: object) -> Result:
    """FERG-DB <character>/<character>_<emotion>/*.png (see the module docstring)."""
    _check_split(split, ("train", "val", "test", "all"), root, "FERG-DB")
    classes = DATASET_CLASSES["fergdb"]
    characters = _subfolders(root)
    samples, empty, unknown, total = [], [], [], 0
    for char in characters:
        for folder in _subfolders(char):
            emotion = folder.name.rsplit("_", 1)[-1].lower()
            if emotion not in classes:
                unknown.append(str(folder))
                continue
            files = _image_files(folder)
            if not files:
                empty.append(str(folder))
            total += len(files)
            for p in files:
                if split in ("all", _stable_split(p.name)):
                    samples.append(Sample(str(p.resolve()), classes.index(emotion), char.name,
                                          {"character": char.name}))
    if unknown:
        raise DatasetError(f"{root}: folder(s) whose emotion is not one of {', '.join(classes)}: "
                           f"{_listing(unknown)}")
    if empty:
        raise DatasetError(f"{root}: {len(empty)} empty emotion folder(s): {_listing(empty)}")
    if not total:
        raise DatasetError(f"{root}: no FERG-DB images (layout ROOT/<character>/"
                           "<character>_<emotion>/*.png)")
    return samples, classes


# --- Aff-Wild2 ------------------------------------------------------------------------------------

_AFFWILD_HEADER = "neutral,anger,disgust,fear,happiness,sadness,surprise,other"


def _find_dir(root: Path, name: str, depth: int = 3) -> Optional[Path]:
    """The first folder called `name` up to `depth` levels under root (skipping frame folders)."""
    level = [root]
    for _ in range(depth):
        nxt = []
        for folder in level:
            for p in sorted(folder.iterdir()):
                if p.is_dir() and p.name not in ("cropped_aligned", "cropped", "batch1", "batch2"):
                    if p.name == name:
                        return p
                    nxt.append(p)
        level = nxt
    return None


def read_affwild2(root: Path, split: str, **_: object) -> Result:
    """Aff-Wild2 expression track (see the module docstring)."""
    _check_split(split, ("train", "val", "test"), root, "Aff-Wild2")
    frames = _need(root / "cropped_aligned", "frame folder cropped_aligned/<video>/<frame>.jpg")
    set_name = "Train_Set" if split == "train" else "Validation_Set"
    ann = _find_dir(root, set_name)
    if ann is None:
        raise DatasetError(f"{root}: no {set_name} folder of EXPR annotation .txt files found "
                           "(e.g. ROOT/annotations/EXPR_Set/{set_name})".replace("{set_name}",
                                                                                 set_name))
    files = sorted(ann.glob("*.txt"))
    if not files:
        raise DatasetError(f"{ann}: no per-video annotation .txt files")
    classes = DATASET_CLASSES["affwild2"]
    samples, no_image, bad = [], 0, []
    for txt in files:
        lines = read_user_text(txt, error=DatasetError).splitlines()
        if not lines or lines[0].replace(" ", "").lower() != _AFFWILD_HEADER:
            bad.append(f"{txt.name}: header {lines[0][:60] if lines else ''!r}")
            continue
        video = txt.stem
        for k, value in enumerate(lines[1:], start=1):
            value = value.strip()
            if value == "-1" or not value:
                continue
            if not value.isdigit() or int(value) >= len(classes):
                bad.append(f"{txt.name} line {k + 1}: {value!r}")
                continue
            image = frames / video / f"{k:05d}.jpg"
            if not image.exists():
                no_image += 1
                continue
            samples.append(Sample(str(image.resolve()), int(value), video))
    if bad:
        raise DatasetError(f"{ann}: expected the header '{_AFFWILD_HEADER}' and labels 0..7 or "
                           f"-1: {_listing(bad)}")
    if no_image:
        _log.warning("%s: %d annotated frames have no image in %s (no face found) and are "
                     "skipped", ann, no_image, frames)
    return samples, classes


# --- JAFFE ----------------------------------------------------------------------------------------

_JAFFE_CODES = {"NE": "neutral", "HA": "happiness", "SA": "sadness", "SU": "surprise",
                "AN": "anger", "DI": "disgust", "FE": "fear"}
_JAFFE_NAME = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d*)\.(\d+)\.tiff?$", re.IGNORECASE)


def read_jaffe(root: Path, split: str, fold: int = 0, **_: object) -> Result:
    """JAFFE <subject>.<EXPR><n>.<id>.tiff, leave-subject-out (see the module docstring)."""
    _check_split(split, ("train", "val", "test", "all"), root, "JAFFE")
    classes = DATASET_CLASSES["jaffe"]
    found, unknown = [], []
    for p in sorted(root.rglob("*.tif*")):
        m = _JAFFE_NAME.match(p.name)
        if not m or m.group(2).upper() not in _JAFFE_CODES:
            unknown.append(p.name)
            continue
        found.append((m.group(1).upper(), _JAFFE_CODES[m.group(2).upper()], p))
    if unknown:
        raise DatasetError(f"{root}: file name(s) not <subject>.<NE|HA|SA|SU|AN|DI|FE><n>.<id>"
                           f".tiff: {_listing(unknown)}")
    if not found:
        raise DatasetError(f"{root}: no JAFFE .tiff images (e.g. KA.AN1.39.tiff)")
    subjects = sorted({s for s, _, _ in found})
    if split != "all" and len(subjects) < 3:
        raise DatasetError(f"{root}: a leave-subject-out split needs 3+ subjects, found "
                           f"{', '.join(subjects)}")
    test = subjects[fold % len(subjects)]
    val = subjects[(fold + 1) % len(subjects)]
    which = {s: "test" if s == test else ("val" if s == val else "train") for s in subjects}
    samples = [Sample(str(p.resolve()), classes.index(c), s) for s, c, p in found
               if split in ("all", which[s])]
    return samples, classes


# --- detection ------------------------------------------------------------------------------------

READERS: Dict[str, Callable[..., Result]] = {
    "rafdb": read_rafdb, "affectnet7": read_affectnet7, "affectnet8": read_affectnet8,
    "ferplus": read_ferplus, "fergdb": read_fergdb, "affwild2": read_affwild2,
    "jaffe": read_jaffe, "imagefolder": read_imagefolder, "csv": read_csv_dataset,
    "muxspace": read_muxspace, "muxspace8": read_muxspace8,
}


def _looks_fergdb(root: Path) -> bool:
    classes = DATASET_CLASSES["fergdb"]
    for char in (p for p in root.iterdir() if p.is_dir()):
        subs = [p.name.rsplit("_", 1)[-1].lower() for p in char.iterdir() if p.is_dir()]
        if subs and all(s in classes for s in subs):
            return True
    return False


def detect_kind(root: Path, split: str = "train") -> str:
    """The layout `root` matches; affectnet8 for AffectNet (pass affectnet7 to drop contempt)."""
    checks = (
        ("muxspace", lambda: looks_muxspace(root)),
        ("csv", lambda: (root / f"{split}.csv").exists() or (root / "train.csv").exists()),
        ("rafdb", lambda: (root / "EmoLabel").is_dir() or (root / "basic" / "EmoLabel").is_dir()),
        ("affectnet8", lambda: (root / "training.csv").exists()
         or (root / "Manually_Annotated_file_lists").is_dir()),
        ("ferplus", lambda: (root / "fer2013new.csv").exists()),
        ("affwild2", lambda: (root / "cropped_aligned").is_dir()),
        ("imagefolder", lambda: (root / split).is_dir()),
        ("jaffe", lambda: any(_JAFFE_NAME.match(p.name) for p in root.glob("*.tif*"))
         or any(_JAFFE_NAME.match(p.name) for p in root.glob("*/*.tif*"))),
        ("fergdb", lambda: _looks_fergdb(root)),
    )
    for kind, check in checks:
        if check():
            return kind
    raise DatasetError(
        f"{root}: cannot tell the dataset layout; looked for data/legend.csv + images/ "
        f"(muxspace), {split}.csv (csv), "
        "EmoLabel/ (rafdb), training.csv (affectnet), fer2013new.csv (ferplus), "
        f"cropped_aligned/ (affwild2), {split}/<class>/ (imagefolder), *.tiff (jaffe), "
        "<character>/<character>_<emotion>/ (fergdb). Pass --dataset KIND to choose.")
