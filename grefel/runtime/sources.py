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
be opened at all (missing path, unreadable video, absent camera, a named pipe or device given
as an image) raises `SourceError`.

Folders: `walk_folder` is the one folder walk (predict's folders, export's --calib-data). It
opens only regular files (and links to them): a named pipe, socket or device file would block
or never end, so it is a `Skipped` item "not a regular file" and never opened. Hidden entries
(a leading dot) are left out. A link to a folder is followed, once: a link to a folder already
walked (a loop of links, or the same folder twice) is skipped with a line. A link to nothing is
skipped with a line. A folder holding `ANNOTATED_MARKER` (written by `predict --annotate` into
its folder of annotated copies) is skipped with a line, and so is any path of `exclude` (this
run's own outputs: --out, --annotate, the plot), so a run never reads grefel's outputs as photos.

Videos: a frame that cannot be decoded is not the end. Reading goes on to the number of frames
the container declares: a damaged stretch followed by good frames is one `Skipped` item naming
the frames ("frames 39-41: could not be decoded"), the rest is read; a video that stops before
its declared end (cut short, or damaged to the end) ends with a `StreamEnd` item saying at which
frame and why, which `grefel predict` turns into its error line (non-zero exit) after writing
the records of every frame it read. Cameras and network streams declare no length: they end
when they stop sending. A shortfall of up to `FRAME_COUNT_SLACK` frames is taken as the
container's estimate (some containers declare duration x fps), not as damage.

Every decoder is held to the contract's one pixel limit (`grefel.contract.max_pixels`): images
from their header, video and camera frames from the capture's frame size before the first frame
is read. A file name that is not valid UTF-8 is read by its bytes; `Frame.source` keeps the name
Python gives it (for file operations) and messages, `Skipped.source` and records carry
`grefel.fileio.display_path` of it (bad bytes escaped as \\xNN).
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Set, Tuple, Union

import numpy as np

from grefel._lazy import require
from grefel.contract import check_pixels
from grefel.errors import GrefelError
from grefel.fileio import display_path
from grefel.runtime.preprocess import ImageError, decode_image

__all__ = [
    "ANNOTATED_MARKER",
    "FRAME_COUNT_SLACK",
    "STREAM_KINDS",
    "URL_SCHEMES",
    "VIDEO_SUFFIXES",
    "Frame",
    "Skipped",
    "Source",
    "SourceError",
    "StreamEnd",
    "classify_source",
    "iter_source",
    "media_suffixes",
    "source_kind",
    "walk_folder",
]

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
STREAM_KINDS = ("camera", "stream", "gstreamer")  # live sources: read until they end
VIDEO_SUFFIXES = {".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
ANNOTATED_MARKER = ".grefel-annotated"  # in a folder of `predict --annotate` copies
FRAME_COUNT_SLACK = 2  # frames a declared count may be over the real one (an estimate)
MAX_BAD_FRAMES = 100  # consecutive undecodable frames before a video is taken as ended


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


class StreamEnd(NamedTuple):
    """A video that ended before its declared end: `reason` is the one line saying where and
    why (the caller writes the frames read, then fails with it)."""

    source: str  # printable (display_path)
    reason: str


Item = Union[Frame, Skipped, StreamEnd]


def media_suffixes() -> Tuple[str, ...]:
    """The suffixes of the files a folder walk reads as photos or videos (PIL's image formats
    and VIDEO_SUFFIXES): an existing file of such a name inside a predicted folder is an input,
    which no output may replace (grefel.fileio.Input.suffixes); a file of another name (an
    earlier run's records) is not."""
    from PIL import Image

    return tuple(sorted({*Image.registered_extensions(), *VIDEO_SUFFIXES}))


@dataclass(frozen=True)
class Source:
    """A source as `classify_source` found it, once per run: every step after (the output
    checks, the annotator, the plot, the frame reader) reads `kind` instead of looking at the
    text or the file system again, so they cannot disagree about what the source is."""

    kind: str  # "camera", "stream", "gstreamer", "folder", "video" or "image"
    target: str  # as given: a path, a URL, a GStreamer pipeline or a camera index

    @property
    def is_path(self) -> bool:
        """An image, a video or a folder: a path on this machine (an input no output may be)."""
        return self.kind in ("image", "video", "folder")

    @property
    def is_video(self) -> bool:
        """Frames in time (a video file, a camera or a stream): a timeline, an annotated video."""
        return self.kind == "video" or self.kind in STREAM_KINDS


def classify_source(src: Union[str, Source]) -> Source:
    """What `src` is: a camera (an integer), a stream (a URL), a GStreamer pipeline (any text
    with " ! "), a folder, a video (by suffix) or an image; a Source is returned as it is. A path
    that is missing, a link to nothing or not a regular file (a FIFO would block, a device never
    end) is a SourceError."""
    if isinstance(src, Source):
        return src
    if src.strip().isdigit():
        return Source("camera", src)
    if src.strip().lower().startswith(URL_SCHEMES):
        return Source("stream", src)
    if " ! " in src:
        return Source("gstreamer", src)
    path = Path(src)
    if not path.exists():
        if path.is_symlink():
            raise SourceError(f"{display_path(src)}: a symbolic link to nothing (broken, or a "
                              "loop of links)")
        raise SourceError(f"{display_path(src)}: no such file or folder")
    if path.is_dir():
        return Source("folder", src)
    video = path.suffix.lower() in VIDEO_SUFFIXES
    if not video and not path.is_file():  # a FIFO would block, a device never end
        raise SourceError(f"{display_path(src)}: not a regular file ({_file_type(path)}); give "
                          "an image file, a folder, a video (a named pipe with a video suffix "
                          "is read as a stream) or a camera index")
    return Source("video" if video else "image", src)


def source_kind(src: Union[str, Source]) -> str:
    """ "camera", "stream", "gstreamer", "folder", "video" or "image" (classify_source's kind)."""
    return classify_source(src).kind


def _file_type(path: Union[str, Path]) -> str:
    """What a non-regular file is, in words."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "unreadable"
    for test, what in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a file"


def iter_source(source: Union[str, Source], max_frames: Optional[int] = None,
                exclude: Iterable[Union[str, Path]] = ()) -> Iterator[Item]:
    """Frames of `source` in order (a folder: sorted, recursive), at most `max_frames` of them;
    `exclude`: paths a folder walk skips with a line (the run's own outputs). A str is
    classified here (classify_source); a Source is read as it was classified."""
    source = classify_source(source)
    kind, src = source.kind, source.target
    if kind == "image":
        items: Iterator[Item] = iter([_image(Path(src), strict=True)])
    elif kind == "folder":
        items = _folder(Path(src), exclude)
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


def _folder(root: Path, exclude: Iterable[Union[str, Path]] = ()) -> Iterator[Item]:
    """Every regular file under `root` decoded, in `walk_folder`'s order, one at a time."""
    for entry in walk_folder(root, exclude):
        yield entry if isinstance(entry, Skipped) else _image(entry, strict=False)


def _identity(path: Union[str, Path]) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def walk_folder(root: Union[str, Path], exclude: Iterable[Union[str, Path]] = ()
                ) -> Iterator[Union[Path, Skipped]]:
    """The one folder walk: the regular files under `root` (recursive, sorted by name, hidden
    entries left out) as paths, and a `Skipped` item for each entry it will not open (the module
    docstring: not a regular file, a link to nothing, a folder already walked, grefel's own
    outputs). Nothing but a regular file is ever opened, so no entry can block the walk."""
    excluded = {ident for ident in map(_identity, exclude) if ident is not None}
    seen: Set[Tuple[int, int]] = set()

    def walk(folder: Path) -> Iterator[Union[Path, Skipped]]:
        ident = _identity(folder)
        if ident is not None:
            seen.add(ident)
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            yield Skipped(display_path(folder), f"cannot list the folder ({exc.strerror or exc})")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            name = display_path(path)
            ident = _identity(path)
            if ident is None:
                why = ("a symbolic link to nothing (broken, or a loop of links)"
                       if entry.is_symlink() else "cannot be read")
                yield Skipped(name, why)
            elif ident in excluded:
                yield Skipped(name, "an output of this run (--out / --annotate), not read")
            elif entry.is_dir():
                if ident in seen:
                    yield Skipped(name, "a link to a folder already walked (a loop of links, "
                                        "or the same folder twice); not followed")
                elif os.path.exists(path / ANNOTATED_MARKER):  # False where it cannot look
                    yield Skipped(name, f"annotated copies written by `grefel predict "
                                        f"--annotate` (it holds {ANNOTATED_MARKER}); not read "
                                        "as photos")
                else:
                    yield from walk(path)
            elif entry.is_file():
                yield path
            else:
                yield Skipped(name, f"not a regular file ({_file_type(path)}); not opened")

    yield from walk(Path(root))


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
    with _writer_present(target):
        cap = (cv2.VideoCapture(target) if api is None
               else cv2.VideoCapture(target, getattr(cv2, api)))
    try:
        if not cap.isOpened():
            raise SourceError(cannot_open)
        size = (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        try:
            check_pixels(name, size)  # the contract's one limit, before a frame is decoded
        except ImageError as exc:
            raise SourceError(str(exc)) from None
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if isinstance(target, str) \
            and what is None else 0  # a video file's container count; streams declare none
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        yield from _frames(cap, cv2, label, name, declared, fps, no_frame)
    finally:
        cap.release()


@contextlib.contextmanager
def _writer_present(target: Union[str, int]) -> Iterator[None]:
    """For a named pipe (`mkfifo x.avi`): wait in Python until a writer opens it, holding the
    pipe open while OpenCV opens it too. OpenCV's open of a pipe without a writer blocks inside
    native code, where neither Ctrl-C nor SIGTERM can stop it (the run hung until SIGKILL);
    Python's own open is interrupted by both. Anything else: nothing to do."""
    if not isinstance(target, str) or not _is_fifo(target):
        yield
        return
    fd = os.open(target, os.O_RDONLY)  # blocks for a writer; a signal interrupts it
    try:
        yield
    finally:
        os.close(fd)


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _stretch(first: int, end: int) -> str:
    """ "frame 7" or "frames 7-9" for the frames first .. end - 1."""
    return f"frame {first}" if end - first == 1 else f"frames {first}-{end - 1}"


def _frames(cap: Any, cv2: Any, label: str, name: str, declared: int, fps: float,
            no_frame: str) -> Iterator[Item]:
    """The frames of an opened capture; with a declared frame count, undecodable frames are
    skipped (one `Skipped` per stretch) up to that count, and an early end is a `StreamEnd`."""
    index = read = 0
    bad: Optional[int] = None  # the first frame of the current undecodable stretch
    while True:
        ok, frame = cap.read()
        if ok and frame is not None:
            if bad is not None:
                yield Skipped(name, _stretch(bad, index) + ": could not be decoded (damaged); "
                              "skipped, the frames after it are read")
                bad = None
            yield Frame(label, index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), fps)
            index += 1
            read += 1
            continue
        if index >= declared - (FRAME_COUNT_SLACK if bad is None else 0):
            break  # the declared end (or a live source's end)
        bad = index if bad is None else bad
        index += 1
        if index - bad >= MAX_BAD_FRAMES:
            break
    if read == 0:
        raise SourceError(no_frame)
    if bad is not None:  # the loop ends without a bad stretch only at the declared end
        yield StreamEnd(name, f"{name}: the video ended at frame {bad} of the {declared} its "
                              f"container declares (frame {bad} and after could not be read: "
                              f"a damaged or cut-short file); the {read} frames read before it "
                              "have records")
