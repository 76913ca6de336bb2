"""Face alignment of dataset images for `grefel train` / `grefel eval` (`--align-faces detect`).

    aligned = align_samples(samples, FaceAlignment(mode="detect"), cache="runs/aligned")
    dataset = FERDataset(samples, classes, transform, read=aligned)
    print(aligned.describe("train split"))

A dataset of unaligned photos (RAF-DB's original images, one's own folder) is prepared the way
`grefel predict` prepares a still image, by the same code: each image is decoded
(`grefel.data.datasets.load_image`, i.e. `grefel.contract.decode_image`), then
`grefel.pipeline.Pipeline.prepare` of predict's still-image pipeline
(`grefel.predict.predict_pipeline`) runs the detector on it (shrunk to `det_size`; faces under
`min_face` px dropped), warps a face with keypoints onto the 5-point template
(`grefel.contract.align_face`) or square-crops a face without (`square_crop`), and takes the
whole image, resized, when no face is found (a labelled image is still scored and trained on;
`grefel predict` classifies nothing there: no face, no expression). The first face (the
detector's best: the highest score for BlazeFace, the largest for Haar) is the image's face: its
112 x 112 uint8 crop, exactly what predict feeds a backend for it, is what the eval transform
(`to_model_input`, a no-op resize) and the training augmentation (its first resize to 128) start
from. A reader's face box (AffectNet) is not used: the detector sees the whole image, as predict
does.

Each image is aligned once; its crop is cached as a PNG:

    CACHE/KEY/settings.json         the settings KEY stands for
    CACHE/KEY/SH/SHA256.png         the crop of the image whose bytes hash to SHA256 (SH: its
                                    first 2 hex digits); PNG text chunks say whether a face was
                                    found and whether it was warped or square-cropped

KEY is a hash of the cache format, the detector as resolved (`auto` -> the one that ran),
det_size, align, margin, min_face and the crop size: a changed setting makes a new folder, an
edited image a new file, and a second run reads every crop back without running the detector.
Each file is written atomically (grefel.fileio), so runs and DDP ranks can share a cache.
CACHE is `--align-cache`, else $XDG_CACHE_HOME/grefel/aligned, else ~/.cache/grefel/aligned.

Nothing is dropped silently: images without a face (whole image) and unreadable ones are counted
in `AlignedImages.report()`, which `grefel train` logs and records (run summary, alignment.json,
checkpoint sidecars) and `grefel eval` writes into metrics.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, PngImagePlugin

from grefel._lazy import MissingDependency
from grefel.config import FaceAlignment
from grefel.contract import INPUT_SIZE
from grefel.data.datasets import is_table_row, load_image
from grefel.data.samples import DatasetError, Sample
from grefel.errors import GrefelError
from grefel.fileio import atomic_write_bytes, atomic_write_json, cache_folder, sha256_file
from grefel.pipeline import Pipeline, face_pipeline
from grefel.runtime.detectors import DETECTORS

__all__ = [
    "CACHE_FORMAT",
    "AlignError",
    "AlignedImages",
    "align_samples",
    "alignment_settings",
    "default_cache",
]

CACHE_FORMAT = "grefel-aligned/1"  # bump when the crops of the same settings would change
PROGRESS_EVERY = 10.0  # seconds between progress lines
_FACE, _ALIGNED = "grefel-face", "grefel-aligned"  # PNG text chunks of a cached crop

PathLike = Union[str, Path]


class AlignError(GrefelError, ValueError):
    """Alignment settings that cannot run (a detector that is not installed, a bad name)."""


def default_cache() -> Path:
    """$XDG_CACHE_HOME/grefel/aligned, else ~/.cache/grefel/aligned."""
    return cache_folder("aligned")


def alignment_settings(alignment: FaceAlignment, detector: str) -> Dict[str, Any]:
    """What the cache key stands for: every FaceAlignment setting, its detector as resolved
    (a setting added to FaceAlignment is part of the key without an edit here)."""
    return {"format": CACHE_FORMAT, **dataclasses.asdict(alignment), "detector": detector,
            "size": INPUT_SIZE}


@dataclass
class AlignedImages:
    """The aligned crops of a list of samples; calling it with a sample index gives the crop
    (FERDataset's `read`), or raises the DatasetError of an unreadable image."""

    settings: Dict[str, Any]
    folder: Path  # CACHE/KEY
    requested: str  # the detector asked for ("auto" or a name)
    files: Dict[int, str] = field(default_factory=dict)  # sample index -> cached crop
    failures: Dict[int, str] = field(default_factory=dict)  # sample index -> why unreadable
    faces: int = 0  # images where a face was found
    aligned: int = 0  # ... of which warped onto the 5-point template (keypoints)
    no_face: int = 0  # images without a face: the whole image, resized
    computed: int = 0  # crops made by the detector in this call
    reused: int = 0  # crops read back from the cache

    def __call__(self, index: int) -> np.ndarray:
        if index in self.failures:
            raise DatasetError(self.failures[index])
        return load_image(self.files[index])

    def report(self) -> Dict[str, Any]:
        """Settings and counts, for summaries, sidecars and metrics.json."""
        return {**self.settings, "detector_requested": self.requested,
                "cache": str(self.folder), "images": len(self.files) + len(self.failures),
                "faces": self.faces, "aligned": self.aligned,
                "square_crops": self.faces - self.aligned, "no_face": self.no_face,
                "unreadable": len(self.failures), "computed": self.computed,
                "reused": self.reused}

    def describe(self, what: str) -> str:
        """One log line: what was found, and how much came from the cache."""
        r = self.report()
        margin = "auto" if r["margin"] is None else r["margin"]
        return (f"{what}: {r['images']} images aligned by {r['detector']} (det-size "
                f"{r['det_size']}, margin {margin}, min-face {r['min_face']}): {r['faces']} "
                f"faces ({r['aligned']} aligned to the 5-point template, {r['square_crops']} "
                f"square crops), {r['no_face']} without a face (whole image), "
                f"{r['unreadable']} unreadable; {r['computed']} detected now, {r['reused']} "
                f"from the cache {self.folder}")


def align_samples(
    samples: Sequence[Sample],
    alignment: FaceAlignment,
    cache: Optional[PathLike] = None,
    *,
    indices: Optional[Iterable[int]] = None,
    detector: Any = None,
    progress: Optional[Callable[[str], None]] = None,
) -> AlignedImages:
    """Align `samples` (those at `indices`, default all; e.g. a DDP rank's share) as predict
    does a still image (module docstring), through the cache at `cache` (default
    `default_cache()`).

    detector: a detector object replacing `alignment.detector`, with the
        grefel.runtime.detectors API (`name`, `faces(rgb) -> [Face]`).
    progress: called with a line every PROGRESS_EVERY seconds while faces are detected (the
        first alignment of a large set takes minutes; the cache makes later runs quick).
    Raises AlignError for a detector that cannot run.
    """
    if alignment.mode != "detect":
        raise AlignError(f"align_samples aligns with mode 'detect', not {alignment.mode!r}")
    pipe = _pipeline(alignment, detector)
    settings = alignment_settings(alignment, pipe.detector_name)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache if cache else default_cache()).expanduser() / key
    if not (folder / "settings.json").is_file():
        atomic_write_json(folder / "settings.json", settings)
    out = AlignedImages(settings, folder, alignment.detector)
    todo = list(range(len(samples)) if indices is None else indices)
    start = last = time.monotonic()
    for done, i in enumerate(todo):
        if progress is not None and time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            progress(f"aligning faces: {done}/{len(todo)} images ({out.computed} detected, "
                     f"{out.reused} from the cache) in {last - start:.0f} s")
        path = samples[i].path
        try:
            file, flags = _cached(folder, path)
            if flags is None:
                flags = _align_one(pipe, path, file)
                out.computed += 1
            else:
                out.reused += 1
        except DatasetError as e:  # unreadable: skipped (or an error with --strict) as usual
            out.failures[i] = str(e)
            continue
        out.files[i] = str(file)
        out.faces += int(flags[0])
        out.aligned += int(flags[0] and flags[1])
        out.no_face += int(not flags[0])
    return out


def _pipeline(alignment: FaceAlignment, detector: Any) -> Pipeline:
    """`grefel predict`'s pipeline of a still image with these settings, without a backend."""
    name = alignment.detector
    if detector is None and name not in DETECTORS:
        raise AlignError(f"unknown face detector {name!r}; one of {', '.join(DETECTORS)}")
    try:
        return face_pipeline(None, alignment, video=False, detector=detector)
    except (MissingDependency, RuntimeError, ValueError) as exc:
        raise AlignError(f"face detector {name!r}: {exc}") from None


def _cached(folder: Path, path: str) -> Tuple[Path, Optional[Tuple[bool, bool]]]:
    """The cache file of image `path` and its (face found, aligned) flags, None if not cached."""
    if is_table_row(path):  # an image stored in a table: hash its pixels
        image = load_image(path)
        h = hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()
    else:
        try:
            h = sha256_file(path)
        except OSError:
            load_image(path)  # the DatasetError naming the file (missing, a folder, no access)
            raise DatasetError(f"{path}: cannot be read") from None
    file = folder / h[:2] / f"{h}.png"
    try:
        with Image.open(file) as im:
            text = dict(getattr(im, "text", {}))
    except (OSError, ValueError, SyntaxError):  # not cached yet, or a damaged file: redo it
        return file, None
    if text.get(_FACE) not in ("0", "1") or text.get(_ALIGNED) not in ("0", "1"):
        return file, None
    return file, (text[_FACE] == "1", text[_ALIGNED] == "1")


def _align_one(pipe: Pipeline, path: str, file: Path) -> Tuple[bool, bool]:
    """Decode, detect and align image `path`; write its first face's crop to `file`."""
    image = load_image(path)
    prep = pipe.prepare(image, path, None, None)
    flags = (bool(prep.found), bool(prep.aligned[0]))
    info = PngImagePlugin.PngInfo()
    info.add_text(_FACE, str(int(flags[0])))
    info.add_text(_ALIGNED, str(int(flags[1])))
    buf = io.BytesIO()
    Image.fromarray(prep.crops[0], "RGB").save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(file, buf.getvalue())
    return flags
