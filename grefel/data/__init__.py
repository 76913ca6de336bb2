"""Datasets for grefel: readers, the synthetic SynthFER set, data refinement and transforms.

    from grefel.data import load_samples, FERDataset, collate_skip, make_transforms, RefinedSampler
    samples, classes = load_samples("data/synthfer", split="train")

Names are loaded on first use, so `grefel.data.synthfer` (numpy + PIL only) does not import torch.
"""

from __future__ import annotations

from grefel._lazy import lazy_exports

__all__ = [
    "DatasetError",
    "FERDataset",
    "RefinedSampler",
    "Sample",
    "absent_classes",
    "check_readable",
    "class_counts",
    "collate_skip",
    "generate_synthfer",
    "load_samples",
    "make_transforms",
    "shared_images",
    "shared_warning",
]

_LAZY = {
    "DatasetError": "grefel.data.samples",
    "FERDataset": "grefel.data.datasets",
    "Sample": "grefel.data.samples",
    "absent_classes": "grefel.data.samples",
    "class_counts": "grefel.data.samples",
    "shared_images": "grefel.data.samples",
    "shared_warning": "grefel.data.samples",
    "check_readable": "grefel.data.datasets",
    "collate_skip": "grefel.data.datasets",
    "load_samples": "grefel.data.datasets",
    "RefinedSampler": "grefel.data.sampler",
    "make_transforms": "grefel.data.transforms",
    "generate_synthfer": "grefel.data.synthfer",
}

__getattr__ = lazy_exports(__name__, _LAZY)
