"""The images every precision gate runs on (FP16 gate, `--verify`, INT8 gate and calibration).

Real images, not uniform noise: a folder given with `--calib-data` (every image is taken as an
aligned face crop, decoded and resized by `grefel.contract`, as `grefel predict --aligned` and
`grefel eval` feed the model), or, without one, SynthFER faces drawn on the fly (numpy + PIL,
no torch, no files), balanced over the seven classes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from export import ExportError

__all__ = ["calibration_split", "gate_images"]

SYNTH_DIFFICULTY = 0.3  # the demo's SynthFER setting


def gate_images(
    calib_dir: Optional[Union[str, Path]], *, n: int = 64, seed: int = 0
) -> Tuple[np.ndarray, str]:
    """(N, 3, 112, 112) float32 RGB in [0, 1] and a line saying what they are."""
    if calib_dir is not None:
        return _folder(Path(calib_dir), n)
    return _synthfer(n, seed), (f"{n} SynthFER faces drawn on the fly (seed {seed}, difficulty "
                                f"{SYNTH_DIFFICULTY})")


def _files(folder: Path) -> List[Path]:
    """The image files of the folder through grefel's one folder walk
    (`grefel.runtime.sources.walk_folder`: only regular files are opened, a link loop is not
    followed twice); each entry it will not open is a `skipped PATH: why` line on stderr, as
    in predict."""
    from grefel.data.readers import IMAGE_EXTS
    from grefel.runtime.sources import Skipped, walk_folder

    files = []
    for entry in walk_folder(folder):
        if isinstance(entry, Skipped):
            print(f"skipped {entry.source}: {entry.reason}", file=sys.stderr)
        elif entry.suffix.lower() in IMAGE_EXTS:
            files.append(entry)
    if not files:
        raise ExportError(f"{folder}: no images ({', '.join(IMAGE_EXTS)}) for the gates; "
                          "give a folder of face crops with --calib-data")
    return files


def _load(paths: Sequence[Path], folder: Path) -> np.ndarray:
    from grefel.contract import ImageError, load_model_input

    out = []
    for path in paths:
        try:
            out.append(load_model_input(path))  # the decode and resize of every path
        except ImageError as exc:
            raise ExportError(f"{exc}; remove it from --calib-data {folder}") from None
    return np.stack(out)


def _folder(folder: Path, limit: int) -> Tuple[np.ndarray, str]:
    files = _files(folder)
    step = max(1, len(files) // limit)
    picked = files[::step][:limit]
    what = f"{len(picked)} images of {folder} (every {step}. of {len(files)})"
    return _load(picked, folder), what


def calibration_split(
    calib_dir: Union[str, Path], *, n_calib: int = 128, n_gate: int = 64, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray, str]:
    """(calibration images, held-out gate images, a line saying what they are) from one folder.

    The folder's images are shuffled with a fixed seed and split without overlap: the first
    `n_calib` calibrate the INT8 ranges, the next `n_gate` are the INT8 gate's (with fewer files
    than both, two thirds calibrate and the rest are held out). At least two images are needed.
    """
    folder = Path(calib_dir)
    files = _files(folder)
    if len(files) < 2:
        raise ExportError(f"{folder}: INT8 needs at least 2 images (calibration and held-out "
                          f"gate images are disjoint), found {len(files)}")
    order = np.random.default_rng(seed).permutation(len(files))
    if len(files) < n_calib + n_gate:
        n_calib = min(len(files) - 1, max(1, (2 * len(files)) // 3))
        n_gate = len(files) - n_calib
    calib = sorted(files[i] for i in order[:n_calib])
    gate = sorted(files[i] for i in order[n_calib:n_calib + n_gate])
    what = (f"{len(calib)} calibration and {len(gate)} held-out images of {folder} "
            f"({len(files)} files, split with seed {seed})")
    return _load(calib, folder), _load(gate, folder), what


def _synthfer(n: int, seed: int) -> np.ndarray:
    from grefel.config import DATASET_CLASSES
    from grefel.contract import INPUT_SHAPE, INPUT_SIZE
    from grefel.data.faces import make_identity, render_face

    classes = DATASET_CLASSES["synthfer"]
    out = np.empty((n, *INPUT_SHAPE), np.float32)
    for k in range(n):
        ident = make_identity(np.random.default_rng([seed, 3, k // 4]))
        img, _, _ = render_face(np.random.default_rng([seed, 1, k]), ident,
                                classes[k % len(classes)], size=INPUT_SIZE,
                                difficulty=SYNTH_DIFFICULTY)
        out[k] = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return out
