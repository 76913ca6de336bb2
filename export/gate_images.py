"""The images every precision gate runs on (FP16 gate, `--verify`, INT8 gate and calibration).

Real images, not uniform noise: a folder given with `--calib-data` (every image is taken as an
aligned face crop, decoded and resized by `grefel.contract`, as `grefel predict --aligned` and
`grefel eval` feed the model), or, without one, SynthFER faces drawn on the fly (numpy + PIL,
no torch, no files), balanced over the seven classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from export import ExportError

__all__ = ["gate_images"]

SYNTH_DIFFICULTY = 0.3  # the demo's SynthFER setting


def gate_images(
    calib_dir: Optional[Union[str, Path]], *, n: int = 64, seed: int = 0
) -> Tuple[np.ndarray, str]:
    """(N, 3, 112, 112) float32 RGB in [0, 1] and a line saying what they are."""
    if calib_dir is not None:
        return _folder(Path(calib_dir), n)
    return _synthfer(n, seed), (f"{n} SynthFER faces drawn on the fly (seed {seed}, difficulty "
                                f"{SYNTH_DIFFICULTY})")


def _folder(folder: Path, limit: int) -> Tuple[np.ndarray, str]:
    from grefel.contract import ImageError, load_model_input
    from grefel.data.readers import IMAGE_EXTS

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ExportError(f"{folder}: no images ({', '.join(IMAGE_EXTS)}) for the gates; "
                          "give a folder of face crops with --calib-data")
    step = max(1, len(files) // limit)
    picked = files[::step][:limit]
    out = []
    for path in picked:
        try:
            out.append(load_model_input(path))  # the decode and resize of every path
        except ImageError as exc:
            raise ExportError(f"{exc}; remove it from --calib-data {folder}") from None
    return np.stack(out), f"{len(out)} images of {folder} (every {step}. of {len(files)})"


def _synthfer(n: int, seed: int) -> np.ndarray:
    from grefel.config import DATASET_CLASSES
    from grefel.data.faces import make_identity, render_face

    classes = DATASET_CLASSES["synthfer"]
    out = np.empty((n, 3, 112, 112), np.float32)
    for k in range(n):
        ident = make_identity(np.random.default_rng([seed, 3, k // 4]))
        img, _, _ = render_face(np.random.default_rng([seed, 1, k]), ident,
                                classes[k % len(classes)], size=112, difficulty=SYNTH_DIFFICULTY)
        out[k] = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return out
