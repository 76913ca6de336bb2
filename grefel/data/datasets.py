"""Samples, the dataset-reader entry point, the dataset of decoded images and its skip-aware
collates.

`load_samples(root, kind, split)` turns a dataset folder into `(samples, class_names)`; the
per-dataset readers and their expected layouts live in `grefel.data.readers`, the `Sample` and
`DatasetError` they return in `grefel.data.samples` (torch-free). `FERDataset` decodes one image
per item with `grefel.contract.decode_image` (the decoder predict uses: EXIF orientation, every
mode -> RGB, the pixel limit), crops a face box with `grefel.contract.crop_box`, applies a
transform and returns `(image [3,S,S] in [0,1], label, index)`; an unreadable file is `None` (or
a `DatasetError` when strict), and `collate_skip` drops those and reports which dataset indices
they were. `FERDataset` is a map-style dataset (`__len__`, `__getitem__`) that torch's DataLoader
takes; `collate_arrays` and `batches` give the same batches as numpy arrays without torch (the
evaluation of an exported model on a torch-free Jetson). torch is imported by `collate_skip` only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from grefel import contract
from grefel.data import readers
from grefel.data.samples import DatasetError, Sample, class_counts, conflicting_labels
from grefel.fileio import display_path

__all__ = [
    "KINDS",
    "MIN_SIDE",
    "DatasetError",
    "batches",
    "check_readable",
    "FERDataset",
    "Sample",
    "class_counts",
    "collate_arrays",
    "collate_skip",
    "detect_kind",
    "is_table_row",
    "load_image",
    "load_samples",
    "resolve_kind",
]

_log = logging.getLogger("grefel.data")

MIN_SIDE = 16  # images smaller than this (either side, in pixels) are refused as unreadable
KINDS = (
    "auto", "rafdb", "affectnet7", "affectnet8", "ferplus", "fergdb", "affwild2", "jaffe",
    "imagefolder", "csv", "muxspace", "muxspace8",
)


# --- reading a dataset folder -------------------------------------------------------------------


def detect_kind(root: Union[str, Path], split: str = "train") -> str:
    """The reader kind whose layout `root` matches (see grefel.data.readers for the layouts)."""
    return readers.detect_kind(Path(root), split)


def resolve_kind(root: Union[str, Path], kind: str = "auto", split: str = "train") -> str:
    """`kind`, or the detected layout of `root` when it is "auto"."""
    return readers.detect_kind(Path(root).expanduser(), split) if kind == "auto" else kind


def load_samples(
    root: Union[str, Path], kind: str = "auto", split: str = "train", **kw: object
) -> Tuple[List[Sample], Tuple[str, ...]]:
    """Read the `split` of the dataset at `root` -> (samples, class names in label order).

    kind: one of KINDS; "auto" detects the layout. Extra keywords go to the reader
    (e.g. `fold=` for JAFFE). Raises DatasetError naming the missing or malformed file.
    """
    root = Path(root).expanduser()
    if kind not in KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if kind == "auto":
        kind = readers.detect_kind(root, split)
    samples, classes = readers.READERS[kind](root, split, **kw)
    if not samples:
        raise DatasetError(f"{root}: the {kind} reader found no samples for split {split!r}")
    if len(classes) < 2:
        raise DatasetError(f"{root}: one class only ({', '.join(classes)}); expression "
                           "recognition needs at least two (list them in classes.txt, one per "
                           "line, or add the other classes' images)")
    class_counts(samples, len(classes))  # validates every label index
    conflicts = conflicting_labels(samples, classes)
    if conflicts:
        first = sorted(conflicts)[:3]
        listing = "; ".join(f"{display_path(path)}: {' and '.join(conflicts[path])}"
                            for path in first)
        more = f" (and {len(conflicts) - len(first)} more)" if len(conflicts) > len(first) else ""
        raise DatasetError(f"{root}: split {split!r} lists {len(conflicts)} image(s) more than "
                           f"once with different labels: {listing}{more}; keep one label per "
                           "image")
    _log.info("%s: %d %s samples (%s)", root, len(samples), split, kind)
    return samples, tuple(classes)


# --- decoding one image -------------------------------------------------------------------------


def is_table_row(path: str) -> bool:
    """Whether `path` names an image stored in a table row (`FILE.csv#ROW`), not a file."""
    return "#" in path and Path(path).name.partition("#")[0].endswith(".csv")


def load_image(path: str) -> np.ndarray:
    """Decode `path` (or `TABLE#ROW`) -> RGB uint8 (H, W, 3); DatasetError naming the file if not.

    Files go through `grefel.contract.decode_image`, the decoder every path shares.
    """
    if is_table_row(path):
        image = readers.table_image(path)
    else:
        try:
            image = contract.decode_image(path)
        except contract.ImageError as e:
            raise DatasetError(str(e)) from None
    h, w = image.shape[:2]
    if min(w, h) < MIN_SIDE:
        raise DatasetError(f"{path}: image too small ({w}x{h} px; need at least {MIN_SIDE} px)")
    return image


def check_readable(samples: Sequence[Sample], what: str, show: int = 3) -> None:
    """DatasetError unless at least one image of `samples` decodes: called for every split
    before training starts, so that an all-unreadable split fails before epoch 1, not after.

    Stops at the first readable image (one decode for a healthy split).
    """
    reasons: List[str] = []
    for s in samples:
        try:
            load_image(s.path)
            return
        except DatasetError as e:
            reasons.append(str(e))
    more = f" (+{len(reasons) - show} more)" if len(reasons) > show else ""
    raise DatasetError(f"{what}: none of its {len(samples)} images can be read: "
                       + "; ".join(reasons[:show]) + more)


def _crop_box(image: np.ndarray, attrs: Dict[str, str]) -> np.ndarray:
    """Crop to attrs["box"] = "x,y,w,h" (AffectNet face boxes) when the sample has one."""
    if "box" not in attrs:
        return image
    x, y, w, h = (float(v) for v in attrs["box"].split(","))
    if w < MIN_SIDE or h < MIN_SIDE:
        return image
    return contract.crop_box(image, (int(x), int(y), int(x + w), int(y + h)))


# --- the dataset of decoded images ---------------------------------------------------------------

# Dataset indices whose image was unreadable, recorded in the process that decoded them. The
# DataLoader runs __getitem__ and the collate function of one batch in the same process (the main
# one, or the worker), so collate_skip can name the indices behind a batch's None items.
_SKIPPED: List[int] = []


class FERDataset:
    """Samples -> (transformed image, label, index), or None if unreadable: a map-style
    dataset, for torch's DataLoader or `batches`.

    Args:
        samples: from `load_samples`.
        class_names: the class names in label order.
        transform: RGB uint8 array (H, W, 3) -> image [3,S,S] in [0,1] (a FloatTensor, or a
            float32 array for `collate_arrays`); default the eval transform
            (`grefel.data.transforms.EvalTransform`, torch).
        strict: raise DatasetError on an unreadable image instead of returning None.
        read: sample index -> RGB uint8 image (or DatasetError), replacing the decode and the
            face-box crop of the sample's file (e.g. the aligned face crops of
            `grefel.align_data.AlignedImages`).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_names: Sequence[str],
        transform: Optional[Callable[[np.ndarray], Any]] = None,
        strict: bool = False,
        read: Optional[Callable[[int], np.ndarray]] = None,
    ) -> None:
        if transform is None:
            from grefel.data.transforms import make_transforms  # torch

            transform = make_transforms(False)
        self.samples = list(samples)
        self.class_names = tuple(class_names)
        self.transform = transform
        self.strict = strict
        self.read = read
        self.failures: Dict[int, str] = {}  # index -> reason, for items decoded in this process
        class_counts(self.samples, len(self.class_names))

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> List[int]:
        return [s.label for s in self.samples]

    @property
    def groups(self) -> List[str]:
        return [s.group for s in self.samples]

    def failure(self, i: int) -> str:
        """Why item i is unreadable ("" if it decodes): for logging indices that collate_skip
        reported from DataLoader workers, whose `failures` dicts the main process cannot see."""
        if i in self.failures:
            return self.failures[i]
        try:
            self.image(i)
        except DatasetError as e:
            return str(e)
        return ""

    def image(self, i: int) -> np.ndarray:
        """Item i's RGB uint8 image before the transform: `read(i)`, else the sample's file
        decoded and cropped to its face box; DatasetError naming the file if unreadable."""
        if self.read is not None:
            return self.read(i)
        s = self.samples[i]
        return _crop_box(load_image(s.path), s.attrs)

    def __getitem__(self, i: int) -> Optional[Tuple[Any, int, int]]:
        s = self.samples[i]
        try:
            img = self.image(i)
        except DatasetError as e:
            if self.strict:
                raise
            self.failures[i] = str(e)
            _SKIPPED.append(i)
            _log.warning("skipping %s", e)
            return None
        return self.transform(img), s.label, i


def _readable(batch: Sequence[Optional[Tuple[Any, int, int]]]
              ) -> Tuple[List[Tuple[Any, int, int]], List[int]]:
    """The readable items of a batch, and the dataset indices of its None items."""
    items = [b for b in batch if b is not None]
    n_bad = len(batch) - len(items)
    skipped = _SKIPPED[max(len(_SKIPPED) - n_bad, 0):] if n_bad else []
    del _SKIPPED[:]
    return items, list(skipped)


def collate_skip(
    batch: Sequence[Optional[Tuple[Any, int, int]]],
) -> Tuple[Any, Any, Any, List[int]]:
    """Stack the readable items -> (images [B,3,S,S], labels [B], indices [B], skipped indices),
    torch tensors.

    `skipped` lists the dataset indices of the None items (unreadable images) in this batch. A
    batch with no readable item gives empty tensors of shape [0,3,112,112] / [0].
    """
    import torch

    items, skipped = _readable(batch)
    if not items:
        empty = torch.empty(0, dtype=torch.int64)
        return torch.empty(0, *contract.INPUT_SHAPE), empty, empty.clone(), skipped
    images = torch.stack([b[0] for b in items])  # [B,3,S,S]
    labels = torch.tensor([b[1] for b in items], dtype=torch.int64)
    indices = torch.tensor([b[2] for b in items], dtype=torch.int64)
    return images, labels, indices, skipped


def collate_arrays(
    batch: Sequence[Optional[Tuple[Any, int, int]]],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[int]]:
    """`collate_skip` in numpy: images float32 [B,3,S,S], labels and indices int64 [B]."""
    items, skipped = _readable(batch)
    if not items:
        empty = np.empty(0, dtype=np.int64)
        return np.empty((0, *contract.INPUT_SHAPE), np.float32), empty, empty.copy(), skipped
    images = np.stack([np.asarray(b[0], dtype=np.float32) for b in items])  # [B,3,S,S]
    labels = np.asarray([b[1] for b in items], dtype=np.int64)
    indices = np.asarray([b[2] for b in items], dtype=np.int64)
    return images, labels, indices, skipped


def batches(
    dataset: FERDataset, batch_size: int, collate: Callable[[List[Any]], Any] = collate_arrays
) -> Iterator[Any]:
    """`dataset` in order, `batch_size` items per collated batch: what torch's DataLoader
    yields with shuffle off and no workers, without torch."""
    for start in range(0, len(dataset), batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
