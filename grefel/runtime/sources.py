"""Frame sources for `grefel predict`: an image, a folder (recursive), a video file, a camera,
or a network stream / GStreamer pipeline.

    0, 1, ...                     a camera index (OpenCV's default capture backend)
    rtsp://host:554/path          RTSP, RTSPS, HTTP(S) and other URLs: OpenCV's FFmpeg backend
    http://host:8080/video.mjpg   (an MJPEG or HLS stream, an IP camera)
    "nvarguscamerasrc ! ... ! appsink"   a GStreamer pipeline (any text with " ! "), opened with
                                  OpenCV's GStreamer backend. A Jetson CSI camera:
        nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,
        framerate=30/1 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert !
        video/x-raw,format=BGR ! appsink drop=true max-buffers=1
      (one line; JetPack's OpenCV is built with GStreamer, the PyPI wheels are not).

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
from grefel.errors import GrefelError
from grefel.fileio import display_path
from grefel.runtime.preprocess import ImageError, decode_image

__all__ = [
    "STREAM_KINDS",
    "URL_SCHEMES",
    "VIDEO_SUFFIXES",
    "Frame",
    "Skipped",
    "SourceError",
    "iter_source",
    "source_kind",
]

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
STREAM_KINDS = ("camera", "stream", "gstreamer")  # live sources: read until they end
VIDEO_SUFFIXES = {".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


class SourceError(GrefelError, ValueError):
    """The source as a whole cannot be read; the message names it and the problem."""


class Frame(NamedTuple):
    source: str  # file path (display_path for printing), "camera:N", a URL or GStreamer pipeline
    index: int  # frame number within a video / camera, 0 for images
    image: np.ndarray  # RGB uint8 (H, W, 3)
    fps: float  # frames per second of a video or camera, 0 for images


class Skipped(NamedTuple):
    source: str  # printable (display_path)
    reason: str


Item = Union[Frame, Skipped]


def source_kind(src: str) -> str:
    """ "camera" (an integer), "stream" (a URL), "gstreamer" (a pipeline), "folder", "video"
    (by suffix) or "image"."""
    if src.strip().isdigit():
        return "camera"
    if src.strip().lower().startswith(URL_SCHEMES):
        return "stream"
    if " ! " in src:
        return "gstreamer"
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
    elif kind == "stream":
        items = _capture(src, src, f"{src}: cannot open the stream (check the address, the "
                         "network and that this OpenCV has FFmpeg: `python -c \"import cv2; "
                         "print(cv2.getBuildInformation())\"`)", api="CAP_FFMPEG")
    elif kind == "gstreamer":
        items = _capture(src, src, f"{src}: cannot open the GStreamer pipeline (this OpenCV "
                         "needs GStreamer support: JetPack's python3-opencv has it, the PyPI "
                         "wheels do not; check the pipeline with gst-launch-1.0)",
                         api="CAP_GSTREAMER")
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


def _capture(
    target: Union[str, int], label: str, what: Optional[str] = None, api: Optional[str] = None
) -> Iterator[Item]:
    """Frames of a video file (`target` its path), a stream (`target` its URL or GStreamer
    pipeline, `what` the error when it cannot be opened, `api` the OpenCV backend) or a camera
    (`target` its index)."""
    cv2 = require("cv2")
    if isinstance(target, str):
        name = display_path(target)
        if name != target:
            raise SourceError(f"{name}: OpenCV cannot open a video whose name is not valid "
                              "UTF-8; rename the file")
        cannot_open = what or f"{name}: unreadable video (OpenCV cannot decode it)"
        no_frame = f"{name}: no frame could be decoded (an empty or corrupt video)"
    else:
        name = label
        cannot_open = no_frame = f"camera index {target} does not exist or cannot be opened"
    cap = cv2.VideoCapture(target) if api is None else cv2.VideoCapture(target, getattr(cv2, api))
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
