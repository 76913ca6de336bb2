"""What a dataset reader returns, torch-free: `Sample`, `DatasetError` and `class_counts`.

The readers (`grefel.data.readers`) and the torch Dataset (`grefel.data.datasets`) both import
this module, so neither imports the other at module level (no import cycle) and reading a
dataset folder needs no torch. The class lists of the public datasets are in
`grefel.config.DATASET_CLASSES` (torch-free as well).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Set

from grefel.errors import GrefelError

__all__ = ["DatasetError", "Sample", "absent_classes", "class_counts", "conflicting_labels",
           "shared_images", "shared_warning"]


class DatasetError(GrefelError, ValueError):
    """A dataset folder or file does not match what its reader expects; the message names it."""


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    path: absolute file path, or `FILE#ROW` for images stored inside a table (FER2013 pixels).
    label: class index into the reader's class names.
    group: the video / identity / face group for data refinement ("" = its own group).
    attrs: extra string attributes (RAF-DB gender/race/age, SynthFER skin, clean_label, ...).
    """

    path: str
    label: int
    group: str = ""
    attrs: Dict[str, str] = field(default_factory=dict)


def class_counts(samples: Sequence[Sample], num_classes: int) -> List[int]:
    """Number of samples per class index 0..num_classes-1."""
    counts = [0] * num_classes
    for s in samples:
        if not 0 <= s.label < num_classes:
            raise DatasetError(f"{s.path}: label {s.label} outside 0..{num_classes - 1}")
        counts[s.label] += 1
    return counts


def absent_classes(samples: Sequence[Sample], class_names: Sequence[str]) -> List[str]:
    """The class names that no sample of `samples` has (in class order).

    A class without a training sample is one the model is asked to output but never sees: its
    head row, anchors and class weight train on nothing, and every metric over the classes
    changes meaning (grefel train refuses it; a validation or test split without it is warned
    about)."""
    counts = class_counts(samples, len(class_names))
    return [name for name, n in zip(class_names, counts) if n == 0]


def conflicting_labels(samples: Sequence[Sample],
                       class_names: Sequence[str]) -> Dict[str, List[str]]:
    """{path: its labels} for every image listed more than once with different labels (a CSV
    row copied and relabelled): which label it trains or scores under would depend on row order,
    so `load_samples` refuses it. The same image listed twice with one label is not a conflict."""
    labels: Dict[str, Set[int]] = {}
    for s in samples:
        labels.setdefault(s.path, set()).add(s.label)
    return {path: [class_names[i] for i in sorted(found)]
            for path, found in labels.items() if len(found) > 1}


def shared_images(first: Sequence[Sample], second: Sequence[Sample]) -> List[str]:
    """The image paths that both lists hold (sorted): a validation or test split that shares
    images with the training split measures memory, not recognition."""
    return sorted({s.path for s in first} & {s.path for s in second})


def shared_warning(root: object, split: str, train_split: str, shared: Sequence[str],
                   scores: str = "its scores") -> str:
    """The warning line for `split` sharing the images `shared` with `train_split` (train's
    validation split, eval's evaluated one): what they measure then, and the fix."""
    from grefel.fileio import display_path

    return (f"warning: {root}: split {split!r} shares {len(shared)} image(s) with split "
            f"{train_split!r} (e.g. {display_path(shared[0])}): {scores} measure memory of "
            "training images, not recognition; make the splits disjoint")
