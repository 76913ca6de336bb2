"""Frame sources for `grefel predict`: an image, a folder (recursive), a video file, a camera.

Every source is a lazy iterator of `Frame`s (one decoded RGB frame at a time), so a folder of
any size is streamed with flat memory. A file in a folder that cannot be decoded comes out as a
`Skipped` item (the caller logs, counts and lists it) and the walk goes on. A source that cannot
be opened at all (missing path, unreadable video, absent camera) raises `SourceError`.

Every decoder is held to the contract's one pixel limit (`grefel.contract.max_pixels`): images
from their header, video and camera frames from the capture's frame size before the first frame
is read. A file name that is not valid UTF-8 is read by its bytes; `Frame.source` keeps the name
Python gives it (for file operations) and messages, `Skipped.source` and records carry
`grefel.fileio.display_path` of it (bad bytes escaped as \\xNN).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Union

import numpy as np

from grefel._lazy import require
from grefel.contract import check_pixels
from grefel.fileio import display_path
from grefel.runtime.preprocess import ImageError, decode_image

__all__ = ["VIDEO_SUFFIXES", "Frame", "Skipped", "SourceError", "iter_source", "source_kind"]

VIDEO_SUFFIXES = {".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


class SourceError(ValueError):
    """The source as a whole cannot be read; the message names it and the problem."""


class Frame(NamedTuple):
    source: str  # file path (as Python names it; display_path for printing), or "camera:N"
    index: int  # frame number within a video / camera, 0 for images
    image: np.ndarray  # RGB uint8 (H, W, 3)
    fps: float  # frames per second of a video or camera, 0 for images


class Skipped(NamedTuple):
    source: str  # printable (display_path)
    reason: str


Item = Union[Frame, Skipped]


def source_kind(src: str) -> str:
    """ "camera" (an integer), "folder", "video" (by suffix) or "image"."""
    if src.strip().isdigit():
        return "camera"
    path = Path(src)
    if not path.exists():
        if path.is_symlink():
            raise SourceError(f"{display_path(src)}: a symbolic link to nothing (broken, or a "
                              "loop of links)")
        raise SourceError(f"{display_path(src)}: no such file or folder")
    if path.is_dir():
        return "folder"
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"


def iter_source(src: str, max_frames: Optional[int] = None) -> Iterator[Item]:
    """Frames of `src` in order (a folder: sorted, recursive), at most `max_frames` of them."""
    kind = source_kind(src)
    if kind == "image":
        items: Iterator[Item] = iter([_image(Path(src), strict=True)])
    elif kind == "folder":
        items = _folder(Path(src))
    elif kind == "video":
        items = _capture(src, src)
    else:
        index = int(src)
        items = _capture(index, f"camera:{index}")
    frames = 0
    for item in items:
        if max_frames is not None and frames >= max_frames:
            break
        frames += isinstance(item, Frame)
        yield item


def _image(path: Path, strict: bool) -> Item:
    try:
        return Frame(str(path), 0, decode_image(path), 0.0)
    except ImageError as exc:
        if strict:
            raise SourceError(str(exc)) from None
        name = display_path(path)
        reason = str(exc)
        return Skipped(name, reason[len(name) + 2:] if reason.startswith(f"{name}: ") else reason)


def _folder(root: Path) -> Iterator[Item]:
    """Every regular file under `root` (hidden ones excluded), sorted, one at a time."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield _image(Path(dirpath) / name, strict=False)


def _capture(target: Union[str, int], label: str) -> Iterator[Item]:
    """Frames of a video file (`target` its path) or a camera (`target` its index)."""
    cv2 = require("cv2")
    if isinstance(target, str):
        name = display_path(target)
        if name != target:
            raise SourceError(f"{name}: OpenCV cannot open a video whose name is not valid "
                              "UTF-8; rename the file")
        cannot_open = f"{name}: unreadable video (OpenCV cannot decode it)"
        no_frame = f"{name}: no frame could be decoded (an empty or corrupt video)"
    else:
        name = label
        cannot_open = no_frame = f"camera index {target} does not exist or cannot be opened"
    cap = cv2.VideoCapture(target)
    try:
        if not cap.isOpened():
            raise SourceError(cannot_open)
        size = (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        try:
            check_pixels(name, size)  # the contract's one limit, before a frame is decoded
        except ImageError as exc:
            raise SourceError(str(exc)) from None
        ok, frame = cap.read()
        if not ok or frame is None:
            raise SourceError(no_frame)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        index = 0
        while ok and frame is not None:
            yield Frame(label, index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), fps)
            index += 1
            ok, frame = cap.read()
    finally:
        cap.release()
