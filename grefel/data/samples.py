"""What a dataset reader returns, torch-free: `Sample`, `DatasetError` and `class_counts`.

The readers (`grefel.data.readers`) and the torch Dataset (`grefel.data.datasets`) both import
this module, so neither imports the other at module level (no import cycle) and reading a
dataset folder needs no torch. The class lists of the public datasets are in
`grefel.config.DATASET_CLASSES` (torch-free as well).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from grefel.errors import GrefelError

__all__ = ["DatasetError", "Sample", "absent_classes", "class_counts"]


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
