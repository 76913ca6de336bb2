"""`grefel predict`: run a backend over an image, a folder, a video file or a camera.

Per frame: detect faces (OpenCV Haar cascade; `aligned=True` takes the whole image as the face),
crop each with a margin, resize to 112 with antialiasing (decode, crop and resize are
`grefel.contract`'s, shared with the dataset path), and run all faces of the frame through the
backend in one batch (faces of consecutive frames share a batch up to `batch`). Each face gives
one record:

    source, frame, face, track, box [x1, y1, x2, y2], label, confidence, uncertain,
    probs {class: p}, primary {class: p}

`probs` is L_final (eq. 19) and `primary` is l (eq. 9); `confidence` is C_f(probs) (eq. 10) and
`uncertain` is `confidence < threshold`. When no face is detected the whole frame is classified
and the record says `"face": false` (nothing is dropped silently). In a video or camera stream a
face is matched to the previous frame's faces by IoU and its probabilities are smoothed
exponentially: p_t = s * p_{t-1} + (1 - s) * p (confidence recomputed from the smoothed p).

Frames are streamed: memory stays flat however large the folder. Undecodable files of a folder
are skipped, counted and listed in the summary; the rest of the folder is still processed.

Nothing is lost: each record is written and flushed as soon as its batch has run (a batch runs as
soon as it is full: `--batch 1` writes every frame's records before the next frame is read), so a
killed run leaves at most a partial last line. SIGTERM and SIGHUP (docker stop, systemd,
`timeout`, a closed SSH session) end a run as Ctrl-C does (`signals_end_run`): the queued faces
are run and written, the summary is given, and the command exits 128 + the signal number.
A file name that is not valid UTF-8 is processed; its record's `source` is the name with the bad
bytes escaped (`grefel.fileio.display_path`), an annotated copy keeps the original bytes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from grefel._lazy import require
from grefel.contract import Box, square_crop, to_model_input
from grefel.fileio import display_path
from grefel.runtime.base import Backend, Outputs
from grefel.runtime.preprocess import FaceDetector, whole_frame
from grefel.runtime.sources import Frame, Skipped, iter_source, source_kind

__all__ = [
    "Annotator",
    "OutputError",
    "PredictOptions",
    "PredictSummary",
    "RecordWriter",
    "StopSignal",
    "Tracker",
    "entropy_confidence",
    "run_predict",
    "signals_end_run",
    "stream_predictions",
]


class OutputError(OSError):
    """An output (--out records, --annotate images / video) that cannot be written; names it."""


class StopSignal(KeyboardInterrupt):
    """SIGTERM / SIGHUP, raised in the main thread to end a run the way Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_end_run(signums: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """While inside, the first of `signums` raises StopSignal in the main thread (later ones are
    ignored, so the queued records and the summary are still written); handlers are restored on
    exit. Outside the main thread it does nothing (Python delivers signals there only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {n: signal.getsignal(n) for n in signums}

    def stop(signum: int, frame: Any) -> None:
        for n in signums:
            signal.signal(n, signal.SIG_IGN)
        raise StopSignal(signum)

    for n in signums:
        signal.signal(n, stop)
    try:
        yield
    finally:
        for n, handler in previous.items():
            signal.signal(n, handler)


@dataclass(frozen=True)
class PredictOptions:
    aligned: bool = False  # inputs are face crops: no detection
    threshold: float = 0.3  # confidence below this marks a record `uncertain`
    smooth: float = 0.6  # weight of the previous frame in the per-face smoothing (0: off)
    batch: int = 32  # faces per backend call (faces of one frame are never split)
    max_frames: Optional[int] = None
    margin: float = 0.2  # crop margin, fraction of the face box side


@dataclass
class PredictSummary:
    frames: int = 0
    faces: int = 0
    no_face_frames: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason)
    seconds: float = 0.0
    interrupted: bool = False
    signal: Optional[int] = None  # the signal that ended the run (SIGINT for Ctrl-C), if any

    def describe(self) -> str:
        return (
            f"{self.frames} frames, {self.faces} faces, {self.no_face_frames} frames without a "
            f"face, {len(self.skipped)} files skipped ({self.seconds:.1f} s)"
            + (f" (interrupted by {signal.Signals(self.signal).name})" if self.signal
               else " (interrupted)" if self.interrupted else "")
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "frames": self.frames,
            "faces": self.faces,
            "no_face_frames": self.no_face_frames,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "signal": signal.Signals(self.signal).name if self.signal else None,
        }


def entropy_confidence(p: np.ndarray) -> np.ndarray:
    """Eqs. 10-11 in numpy: 1 - H(p) / log C, p (N, C) -> (N,), guarded like the model."""
    tiny = np.finfo(np.float32).tiny
    entropy = -(p * np.log(np.maximum(p, tiny))).sum(axis=-1)
    return np.clip(1.0 - entropy / math.log(p.shape[-1]), 0.0, 1.0)


def _iou(a: Box, b: Box) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Per-face exponential smoothing across consecutive frames of one stream.

    Faces are matched greedily to the previous frame's faces by IoU (>= `min_iou`); an unmatched
    face starts a new track. Args: smooth (weight of the past, 0 disables), min_iou.
    """

    def __init__(self, smooth: float, min_iou: float = 0.3) -> None:
        self.smooth, self.min_iou = smooth, min_iou
        self._source: Optional[str] = None
        self._tracks: List[Tuple[int, Box, np.ndarray]] = []  # (id, box, smoothed probs)
        self._next = 0

    def update(
        self, source: str, boxes: Sequence[Box], probs: np.ndarray
    ) -> Tuple[List[int], np.ndarray]:
        """boxes of one frame and their probs (F, C) -> track ids and smoothed probs (F, C)."""
        if source != self._source:
            self._source, self._tracks = source, []
        pairs = sorted(
            (
                (_iou(b, t[1]), i, j)
                for i, b in enumerate(boxes)
                for j, t in enumerate(self._tracks)
            ),
            reverse=True,
        )
        match: Dict[int, int] = {}
        used = set()
        for iou, i, j in pairs:
            if iou >= self.min_iou and i not in match and j not in used:
                match[i] = j
                used.add(j)
        ids, out, tracks = [], probs.copy(), []
        for i, box in enumerate(boxes):
            if i in match:
                tid, _, past = self._tracks[match[i]]
                out[i] = self.smooth * past + (1.0 - self.smooth) * probs[i]
            else:
                tid, self._next = self._next, self._next + 1
            ids.append(tid)
            tracks.append((tid, box, out[i]))
        self._tracks = tracks
        return ids, out


class RecordWriter:
    """Writes records as JSON lines or CSV (one header, columns per class) to a text stream,
    flushing after each line (records are on disk as they are produced)."""

    def __init__(
        self, stream: IO[str], fmt: str, classes: Sequence[str], name: str = "stdout"
    ) -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"unknown format {fmt!r} (jsonl or csv)")
        self.stream, self.fmt, self.classes, self.name = stream, fmt, list(classes), name
        self._csv: Any = None
        if fmt == "csv":
            head = ["source", "frame", "face", "track", "x1", "y1", "x2", "y2", "label"]
            head += ["confidence", "uncertain"] + [f"prob_{c}" for c in self.classes]
            head += [f"primary_{c}" for c in self.classes]
            self._csv = csv.writer(stream)
            self._guarded(self._csv.writerow, head)

    def _guarded(self, func: Callable[..., Any], *args: Any) -> None:
        try:
            func(*args)
            self.stream.flush()
        except OSError as exc:  # a full disk, a closed pipe
            raise OutputError(f"{self.name}: cannot write records "
                              f"({exc.strerror or exc})") from None

    def write(self, rec: Dict[str, Any]) -> None:
        self._guarded(self._write, rec)

    def _write(self, rec: Dict[str, Any]) -> None:
        if self._csv is None:
            self.stream.write(json.dumps(rec) + "\n")
        else:
            row = [rec["source"], rec["frame"], rec["face"], rec["track"], *rec["box"]]
            row += [rec["label"], rec["confidence"], rec["uncertain"]]
            row += [rec["probs"][c] for c in self.classes]
            self._csv.writerow(row + [rec["primary"][c] for c in self.classes])


class Annotator:
    """Draws boxes and labels: one image per input image (mirroring a folder's layout under
    `out`), or one video (MJPG for .avi, mp4v otherwise) for a video or camera source."""

    def __init__(self, out: Path, src: str) -> None:
        self.cv2 = require("cv2")
        self.out, self.kind = Path(out), source_kind(src)
        self.root = Path(src) if self.kind == "folder" else None
        self._video: Any = None

    def add(self, frame: Frame, records: Sequence[Dict[str, Any]]) -> None:
        cv2 = self.cv2
        image = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
        for rec in records:
            x1, y1, x2, y2 = rec["box"]
            color = (0, 165, 255) if rec["uncertain"] else (0, 200, 0)
            cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), color, 2)
            text = f"{rec['label']} {rec['confidence']:.2f}" + ("" if rec["face"] else " (no face)")
            cv2.putText(
                image,
                text,
                (x1 + 2, max(y1 - 4, 12)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                color,
                1,
                cv2.LINE_AA,
            )
        if self.kind in ("video", "camera"):
            self._write_video(image, frame.fps)
            return
        dest = (
            self.out if self.root is None else self.out / Path(frame.source).relative_to(self.root)
        )
        if dest.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp"):
            dest = dest.with_suffix(".png")
        # Encoded here and written by Python, so a name that is not UTF-8 keeps its bytes (OpenCV
        # takes only UTF-8 names) and a failed write is an error, not imwrite's silent False.
        ok, data = cv2.imencode(dest.suffix.lower(), image)
        try:
            if not ok:
                raise OSError("OpenCV could not encode the image")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(os.fsencode(dest), "wb") as f:
                f.write(data.tobytes())
        except OSError as exc:
            raise OutputError(f"--annotate {display_path(dest)}: cannot write "
                              f"({exc.strerror or exc})") from None

    def _write_video(self, image: np.ndarray, fps: float) -> None:
        if self._video is None:
            name = display_path(self.out)
            try:
                self.out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"--annotate {name}: cannot write "
                                  f"({exc.strerror or exc})") from None
            if name != str(self.out):
                raise OutputError(f"--annotate {name}: OpenCV writes videos only to names that "
                                  "are valid UTF-8")
            code = "MJPG" if self.out.suffix.lower() == ".avi" else "mp4v"
            h, w = image.shape[:2]
            fourcc = self.cv2.VideoWriter_fourcc(*code)
            self._video = self.cv2.VideoWriter(str(self.out), fourcc, fps or 25.0, (w, h))
            if not self._video.isOpened():
                raise OutputError(f"--annotate {name}: OpenCV cannot write this video (use a "
                                  ".avi or .mp4 name in a writable folder)")
        self._video.write(image)

    def close(self) -> None:
        if self._video is not None:
            self._video.release()


def _faces(frame: Frame, detector: Optional[FaceDetector]) -> Tuple[List[Box], bool]:
    """Detected boxes and True, or the whole frame and False when no face is found."""
    if detector is None:
        return [whole_frame(frame.image)], True
    boxes = detector.detect(frame.image)
    return (boxes, True) if boxes else ([whole_frame(frame.image)], False)


def _records(
    frame: Frame,
    boxes: List[Box],
    found: bool,
    out: Outputs,
    classes: Sequence[str],
    tracker: Optional[Tracker],
    opts: PredictOptions,
) -> List[Dict[str, Any]]:
    probs, primary, conf = out["probs"], out["primary"], out["confidence"]
    tracks: List[Optional[int]] = [None] * len(boxes)
    if tracker is not None:
        ids, probs = tracker.update(frame.source, boxes, probs)
        tracks, conf = list(ids), entropy_confidence(probs)
    recs = []
    for i, box in enumerate(boxes):
        c = float(conf[i])
        recs.append(
            {
                "source": display_path(frame.source),
                "frame": frame.index,
                "face": found,
                "track": tracks[i],
                "box": [int(v) for v in box],
                "label": classes[int(np.argmax(probs[i]))],
                "confidence": round(c, 6),
                "uncertain": bool(c < opts.threshold),
                "probs": {k: round(float(p), 6) for k, p in zip(classes, probs[i])},
                "primary": {k: round(float(p), 6) for k, p in zip(classes, primary[i])},
            }
        )
    return recs


class _Predictor:
    """Queues the faces of consecutive frames (up to `opts.batch`), runs the backend on them in
    one call, and writes the records of each frame in order."""

    def __init__(
        self,
        backend: Backend,
        writer: RecordWriter,
        opts: PredictOptions,
        annotator: Optional[Annotator],
        video: bool,
    ) -> None:
        self.backend, self.writer, self.opts, self.annotator = backend, writer, opts, annotator
        self.detector = None if opts.aligned else FaceDetector()
        self.tracker = Tracker(opts.smooth) if video and opts.smooth > 0 else None
        self.summary = PredictSummary()
        self.frames: List[Tuple[Frame, List[Box], bool]] = []  # (frame, boxes, face found)
        self.inputs: List[np.ndarray] = []  # (3, 112, 112) per queued face

    def add(self, frame: Frame) -> None:
        boxes, found = _faces(frame, self.detector)
        if len(self.inputs) + len(boxes) > self.opts.batch:
            self.flush()  # all faces of a frame go in the same backend call
        for box in boxes:
            crop = (
                square_crop(frame.image, box, margin=self.opts.margin)
                if found and self.detector
                else None
            )
            self.inputs.append(to_model_input(frame.image if crop is None else crop))
        self.frames.append((frame, boxes, found))
        self.summary.frames += 1
        self.summary.faces += len(boxes) if found else 0
        self.summary.no_face_frames += 0 if found else 1
        if len(self.inputs) >= self.opts.batch:
            self.flush()  # a full batch runs now: its records reach the disk before the next read

    def flush(self) -> None:
        if not self.inputs:
            return
        out = self.backend.infer(np.stack(self.inputs))  # (F, 3, 112, 112) -> (F, C) ...
        # The queue is taken before writing: a signal while writing cannot write a record twice.
        frames, self.frames, self.inputs = self.frames, [], []
        row = 0
        for frame, boxes, found in frames:
            part = {k: v[row : row + len(boxes)] for k, v in out.items()}
            row += len(boxes)
            recs = _records(
                frame, boxes, found, part, self.backend.classes, self.tracker, self.opts
            )
            for rec in recs:
                self.writer.write(rec)
            if self.annotator is not None:
                self.annotator.add(frame, recs)


def stream_predictions(
    src: str,
    backend: Backend,
    writer: RecordWriter,
    opts: PredictOptions = PredictOptions(),
    annotator: Optional[Annotator] = None,
    on_skip: Callable[[str, str], None] = lambda f, r: None,
) -> PredictSummary:
    """Stream `src` through `backend` (opened), writing one record per face to `writer`."""
    start = time.perf_counter()
    video = source_kind(src) in ("video", "camera")
    runner = _Predictor(backend, writer, opts, annotator, video)
    try:
        for item in iter_source(src, opts.max_frames):
            if isinstance(item, Skipped):
                runner.summary.skipped.append((item.source, item.reason))
                on_skip(item.source, item.reason)
            else:
                runner.add(item)
    except KeyboardInterrupt as exc:  # Ctrl-C ends a camera stream; SIGTERM / SIGHUP likewise
        runner.summary.interrupted = True
        runner.summary.signal = getattr(exc, "signum", signal.SIGINT)
    runner.flush()
    runner.summary.seconds = time.perf_counter() - start
    return runner.summary


def run_predict(
    src: str,
    weights: Path,
    opts: PredictOptions,
    fmt: str = "jsonl",
    out: Optional[Path] = None,
    annotate: Optional[Path] = None,
    device: Optional[str] = None,
    on_skip: Callable[[str, str], None] = lambda f, r: None,
) -> PredictSummary:
    """`grefel predict`: open the backend for `weights`, stream `src`, write records to `out`
    (line by line as produced, flushed; stdout when None) and optionally annotated images /
    video to `annotate`. An `out` that cannot be written is an OutputError naming it."""
    import sys

    from grefel.runtime import open_backend

    source_kind(src)  # a missing path fails before the model is loaded
    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(open_backend(weights, device=device))
        if out is None:
            stream: IO[str] = sys.stdout
        else:
            try:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                stream = stack.enter_context(open(out, "w", newline="", encoding="utf-8"))
            except OSError as exc:
                why = ("a file stands where its folder should be"
                       if isinstance(exc, (FileExistsError, NotADirectoryError))
                       else exc.strerror or exc)
                raise OutputError(f"--out {display_path(out)}: cannot write ({why})") from None
        annotator = Annotator(annotate, src) if annotate is not None else None
        if annotator is not None:
            stack.callback(annotator.close)
        name = "stdout" if out is None else f"--out {display_path(out)}"
        writer = RecordWriter(stream, fmt, backend.classes, name=name)
        return stream_predictions(
            src, backend, writer, opts=opts, annotator=annotator, on_skip=on_skip
        )
