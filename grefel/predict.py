"""`grefel predict`: run a backend over an image, a folder, a video file or a camera.

Per frame, `grefel.pipeline.Pipeline` detects the faces (`--detector`: BlazeFace with
keypoints, or OpenCV's Haar cascade when asked for; `aligned=True` takes the whole image as
the face), aligns each face with keypoints onto the 5-point template (else a square crop with a
margin), resizes to 112 with antialiasing (decode, align, crop and resize are
`grefel.contract`'s, shared with the dataset path), and runs all faces of the frame through the
backend in one call. A frame's records are written (and the stream flushed) before the next
frame is read; `batch_frames` > 1 puts the faces of that many frames in one call. Each face
gives one record:

    source, frame, face, track, box [x1, y1, x2, y2], keypoints [[x, y], ...] or null, aligned,
    label, confidence, uncertain, probs {class: p}, primary {class: p}

`probs` is L_final (eq. 19) and `primary` is l (eq. 9); `confidence` is C_f(probs) (eq. 10) and
`uncertain` is `confidence < threshold`. No face, no expression: a frame where no face is found
gives one record with `"face": false` and null box, keypoints, label, confidence, uncertain,
probs and primary (empty cells in the CSV); nothing of it is classified, nothing is dropped
silently, and the summary counts these frames. `aligned=True` (`--aligned`) is the opt-in for
inputs that are already face crops: no detection, the whole image is the face and is
classified. The record is built in one place, `grefel.pipeline.FaceResult.record`; the schema
is in docs/contract.md. In a video, camera or network
stream a face is matched to the previous frame's faces by IoU (its `track` id, whatever the
smoothing) and its probabilities are smoothed exponentially: p_t = s * p_{t-1} + (1 - s) * p
(confidence recomputed from the smoothed p; `smooth` 0: no smoothing). The summary has the mean
milliseconds per frame of each stage (decode, detect, align, infer, post) and the frame rate.

Frames are streamed: memory stays flat however large the folder. Undecodable files of a folder
are skipped, counted and listed in the summary; the rest of the folder is still processed.

Nothing is lost: records go straight to `--out` and are flushed after each frame (with
`batch_frames` > 1, after each backend call), so a killed run leaves at most a partial last line.
SIGTERM and SIGHUP (docker stop, systemd, `timeout`, a closed SSH session) end a run as Ctrl-C
does (`signals_end_run`): the queued frames are run and written, the summary is given, and the
command exits 128 + the signal number. A file name that is not valid UTF-8 is processed; its
record's `source` is the name with the bad bytes escaped (`grefel.fileio.display_path`), an
annotated copy keeps the original bytes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from grefel._lazy import require
from grefel.config import INFERENCE_THREADS, FaceAlignment
from grefel.errors import GrefelError
from grefel.fileio import deferred_signals, display_path, why_unwritable
from grefel.pipeline import (
    SMOOTH,
    STAGES,
    THRESHOLD,
    FaceResult,
    Pipeline,
    Tracker,
    entropy_confidence,
    face_pipeline,
)
from grefel.progress import Progress
from grefel.ranges import check_ranges, setting
from grefel.runtime.base import Backend
from grefel.runtime.sources import (
    ANNOTATED_MARKER,
    Frame,
    Skipped,
    Source,
    StreamEnd,
    classify_source,
    iter_source,
)
from grefel.timeline import Timeline, plot_path

__all__ = [
    "STAGES",
    "Annotator",
    "OutputError",
    "PredictOptions",
    "PredictSummary",
    "RecordWriter",
    "ShowError",
    "StopSignal",
    "Tracker",
    "entropy_confidence",
    "predict_pipeline",
    "run_predict",
    "signals_end_run",
    "stream_predictions",
]


class OutputError(GrefelError, OSError):
    """An output (--out records, --annotate images / video) that cannot be written; names it."""


ANNOTATED_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ANNOTATED_VIDEO_CODECS = {".avi": "MJPG", ".mp4": "mp4v"}  # suffix -> OpenCV fourcc


def check_annotate(out: Path, source: Union[str, Source]) -> Path:
    """`out` itself, when it is a name `--annotate` can write for `source` exactly as given; else
    an OutputError saying what to give. An image gets an image file (.png, .jpg, .jpeg, .bmp), a
    folder a folder (mirroring it), a video, camera or stream a .avi (MJPG) or .mp4 (mp4v)
    file; never the source itself or a path inside the source folder."""
    source = classify_source(source)
    kind, src, name = source.kind, source.target, display_path(out)
    out = Path(out)
    if kind == "folder":
        if out.exists() and not out.is_dir():
            raise OutputError(f"--annotate {name}: is a file; a folder source needs a folder "
                              "for its annotated copies")
        inside = out.resolve() == Path(src).resolve() or Path(src).resolve() in out.resolve(
            ).parents
        if inside:
            raise OutputError(f"--annotate {name}: is inside the source folder {src}; give a "
                              "folder outside it (the copies would replace or join the inputs)")
        if (out.is_dir() and not (out / ANNOTATED_MARKER).exists()
                and any(not entry.name.startswith(".") for entry in out.iterdir())):
            raise OutputError(f"--annotate {name}: holds files that grefel did not write (no "
                              f"{ANNOTATED_MARKER}); the annotated copies would replace those "
                              "of the same name: give a new or empty folder")
        return out
    if out.is_dir():
        what = "an image file (.png, .jpg)" if kind == "image" else "a .avi or .mp4 file"
        raise OutputError(f"--annotate {name}: is a folder; give {what}")
    if kind == "image":
        if out.suffix.lower() not in ANNOTATED_IMAGE_SUFFIXES:
            raise OutputError(f"--annotate {name}: an image source gets an annotated image; "
                              "give a .png, .jpg, .jpeg or .bmp name")
        if out.exists() and out.resolve() == Path(src).resolve():
            raise OutputError(f"--annotate {name}: is the source image; give another name")
        return out
    if out.suffix.lower() not in ANNOTATED_VIDEO_CODECS:
        raise OutputError(f"--annotate {name}: a {kind} source gets an annotated video; give a "
                          ".avi (MJPG) or .mp4 (mp4v) name")
    if kind == "video" and out.exists() and out.resolve() == Path(src).resolve():
        raise OutputError(f"--annotate {name}: is the source video; give another name")
    return out


def annotated_what(source: Union[str, Source]) -> str:
    """What `--annotate` wrote for `source`, for the `wrote PATH (...)` line."""
    kind = classify_source(source).kind
    if kind == "folder":
        return "annotated copies, mirroring the source folder"
    return "annotated image" if kind == "image" else "annotated video"


# The signals that end a predict run (Ctrl-C, and those signals_end_run turns into StopSignal)
END_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
    """`grefel predict`'s settings (its options are generated from these fields); how faces
    are found and prepared is `face`, the FaceAlignment that training and serve share."""

    aligned: bool = setting(
        False, help="Inputs are face crops: no face detection, the whole image is classified "
                    "(without it, a frame where no face is found gets a record with face false "
                    "and no label).")
    threshold: float = setting(THRESHOLD, min=0, max=1,
                               help="Records with confidence below this are marked uncertain.")
    smooth: float = setting(SMOOTH, min=0, max=1, max_open=True,
                            help="Per-face smoothing across video frames (weight of the past; "
                                 "0 = off).")
    batch: int = setting(32, min=1, help="Most faces per backend call when --batch-frames > 1 "
                                         "(a frame is not split).")
    batch_frames: int = setting(1, min=1, help="Frames per backend call; 1: each frame's "
                                               "records are written before the next frame is "
                                               "read.")
    max_frames: Optional[int] = setting(None, kind=int, min=1,
                                        help="Stop after this many frames.")
    face: FaceAlignment = setting(default_factory=FaceAlignment,
                                  help="How faces are found and prepared.")
    det_every: int = setting(1, min=1, help="Video: detect every N frames, follow the faces in "
                                            "between.")
    threads: Optional[int] = setting(
        None, like=INFERENCE_THREADS,
        help="CPU threads of the backend, the detector and OpenCV (default: all).")
    show: bool = setting(False, help="Show the annotated frames in a window (q quits).")
    low_memory: bool = setting(
        False, help="ONNX Runtime: skip the NCHWc layout optimisation (its re-laid copy of the "
                    "convolution weights): less memory, 2-3x slower CPU convolutions.")
    cuda_graph: bool = setting(
        False, help="TensorRT engine: replay each batch shape as a CUDA graph (cuda-bindings; "
                    "one warning and plain runs where capture is not possible).")

    def __post_init__(self) -> None:
        check_ranges(self)
        object.__setattr__(self, "face", FaceAlignment.coerce(self.face))


@dataclass
class PredictSummary:
    frames: int = 0
    faces: int = 0
    no_face_frames: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (file, reason)
    seconds: float = 0.0
    interrupted: bool = False
    signal: Optional[int] = None  # the signal that ended the run (SIGINT for Ctrl-C), if any
    detector: str = ""
    stages_ms: Dict[str, float] = field(default_factory=dict)  # mean ms per frame
    plot: Optional[str] = None  # the expression-over-time PNG of a video run (grefel.timeline)
    ended: Optional[str] = None  # why a video ended before its declared end (an error line)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.stages_ms.items())
        return (
            f"{self.frames} frames, {self.faces} faces, {self.no_face_frames} frames without a "
            f"face, {len(self.skipped)} files skipped ({self.seconds:.1f} s, {self.fps:.1f} FPS)"
            + (f" (interrupted by {signal.Signals(self.signal).name})" if self.signal
               else " (interrupted)" if self.interrupted else "")
            + (f"\ndetector {self.detector}; ms per frame: {stages}" if stages else "")
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "frames": self.frames,
            "faces": self.faces,
            "no_face_frames": self.no_face_frames,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 3),
            "interrupted": self.interrupted,
            "signal": signal.Signals(self.signal).name if self.signal else None,
            "detector": self.detector,
            "stages_ms_per_frame": dict(self.stages_ms),
            "plot": self.plot,
            "ended": self.ended,
        }


class RecordWriter:
    """Writes records as JSON lines or CSV (one header, columns per class) to a text stream;
    `flush` after each frame puts them on disk as they are produced. A failed write or flush is
    an OutputError naming the output."""

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
        except OSError as exc:  # a full disk, a closed pipe
            raise OutputError(f"{self.name}: cannot write records "
                              f"({exc.strerror or exc})") from None

    def write(self, rec: Dict[str, Any]) -> None:
        self._guarded(self._write, rec)

    def _write(self, rec: Dict[str, Any]) -> None:
        if self._csv is None:
            self.stream.write(json.dumps(rec) + "\n")
        else:
            # a frame without a face: empty cells for its nulls (csv writes None as "")
            row = [rec["source"], rec["frame"], rec["face"], rec["track"],
                   *(rec["box"] or [None] * 4)]
            row += [rec["label"], rec["confidence"], rec["uncertain"]]
            row += [(rec["probs"] or {}).get(c) for c in self.classes]
            self._csv.writerow(row + [(rec["primary"] or {}).get(c) for c in self.classes])

    def flush(self) -> None:
        """Push the records written so far to the file (after each frame)."""
        self._guarded(self.stream.flush)

    @staticmethod
    def close_stream(stream: IO[str], name: str) -> None:
        """Close a records file: its last buffered bytes are written here, so a full disk
        (ENOSPC) or a lost device is an OutputError naming the output, as a failed write is."""
        try:
            stream.close()
        except OSError as exc:
            raise OutputError(f"{name}: cannot write records ({exc.strerror or exc})") from None


class Annotator:
    """Draws boxes, keypoints and labels: one image per input image (mirroring a folder's layout
    under `out`), or one video (MJPG for .avi, mp4v otherwise) for a video, camera or stream;
    with `show`, also in a window (`q` or Esc stops the run).

    The label ("#track label confidence", "?" for an uncertain face) is drawn on a filled
    background in text scaled to the frame (about 1/40 of its shorter side); uncertain faces
    are orange, the others green. A frame without a face gets "no face" in grey at its top left
    corner, and no box.
    """

    WINDOW = "grefel"

    def __init__(self, out: Optional[Path], source: Union[str, Source],
                 show: bool = False) -> None:
        self.cv2 = require("cv2")
        self.source = classify_source(source)
        self.out = check_annotate(out, self.source) if out is not None else None
        self.root = Path(self.source.target) if self.source.kind == "folder" else None
        self._video: Any = None
        self._marked = False
        self.show, self.stopped = show, False
        if show:
            import os
            import sys

            if sys.platform.startswith("linux") and not (
                os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
            ):
                raise ShowError("--show: no display (DISPLAY is not set); run on the machine's "
                                "desktop, or write the frames with --annotate out.avi instead")
            try:
                self.cv2.namedWindow(self.WINDOW, self.cv2.WINDOW_NORMAL)
            except self.cv2.error as exc:
                raise ShowError(
                    "--show: OpenCV cannot open a window here (no display, or the "
                    "opencv-python-headless build without GUI; `pip install opencv-python` "
                    f"on a machine with a display): {str(exc).strip().splitlines()[-1]}"
                ) from None

    def render(self, frame: Frame, records: Sequence[Dict[str, Any]]) -> np.ndarray:
        """The annotated frame, BGR uint8."""
        cv2 = self.cv2
        image = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
        h, w = image.shape[:2]
        scale = max(min(h, w) / 800.0, 0.4)  # FONT_HERSHEY_SIMPLEX at 1.0 is ~22 px tall
        thick = max(int(round(scale * 2)), 1)
        for rec in records:
            if not rec["face"]:
                x1, y1, color, text = 0, 0, (160, 160, 160), "no face"
            else:
                x1, y1, x2, y2 = rec["box"]
                color = (0, 165, 255) if rec["uncertain"] else (0, 200, 0)
                cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), color, thick + 1)
                for x, y in rec.get("keypoints") or []:
                    cv2.circle(image, (int(round(x)), int(round(y))), thick + 1, (255, 255, 0),
                               -1)
                track = "" if rec["track"] is None else f"#{rec['track']} "
                mark = "?" if rec["uncertain"] else ""
                text = f"{track}{rec['label']}{mark} {rec['confidence']:.2f}"
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
            top = y1 - th - base - 4 if y1 - th - base - 4 >= 0 else min(y1 + 1, h - th - base)
            cv2.rectangle(image, (x1, top), (x1 + tw + 4, top + th + base + 4), color, -1)
            cv2.putText(image, text, (x1 + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (0, 0, 0), thick, cv2.LINE_AA)
        return image

    def add(self, frame: Frame, records: Sequence[Dict[str, Any]]) -> None:
        cv2 = self.cv2
        image = self.render(frame, records)
        if self.show:
            cv2.imshow(self.WINDOW, image)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.stopped = True
        if self.out is None:
            return
        if self.source.is_video:
            self._write_video(image, frame.fps)
            return
        dest = (
            self.out if self.root is None else self.out / Path(frame.source).relative_to(self.root)
        )
        if self.root is not None and dest.suffix.lower() not in ANNOTATED_IMAGE_SUFFIXES:
            dest = dest.with_suffix(".png")  # a folder's .tif, .webp, ... copies: PNG
        if self.root is not None:
            self._mark()
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

    def _mark(self) -> None:
        """Write `ANNOTATED_MARKER` into the folder of annotated copies (once), so a later
        folder walk over it, or over a folder holding it, skips the copies with a line instead
        of reading them as photos."""
        if self._marked:
            return
        assert self.out is not None
        marker = self.out / ANNOTATED_MARKER
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"annotated copies of {display_path(self.root)} written by "
                              "`grefel predict --annotate`; grefel's folder walk skips this "
                              "folder\n", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"--annotate {display_path(marker)}: cannot write "
                              f"({exc.strerror or exc})") from None
        self._marked = True

    def _write_video(self, image: np.ndarray, fps: float) -> None:
        if self._video is None:
            assert self.out is not None
            name = display_path(self.out)
            try:
                self.out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"--annotate {name}: cannot write "
                                  f"({exc.strerror or exc})") from None
            if name != str(self.out):
                raise OutputError(f"--annotate {name}: OpenCV writes videos only to names that "
                                  "are valid UTF-8")
            code = ANNOTATED_VIDEO_CODECS[self.out.suffix.lower()]
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
        if self.show:
            self.cv2.destroyAllWindows()


class ShowError(GrefelError, RuntimeError):
    """--show where no window can be opened; the message says why and what to do."""


def predict_pipeline(
    backend: Optional[Backend], opts: PredictOptions, video: bool, detector: Any = None
) -> Pipeline:
    """The Pipeline of `grefel predict` for `opts` (grefel.pipeline.face_pipeline).

    detector: a detector object replacing `opts.face.detector` (tests, other detectors)."""
    return face_pipeline(backend, opts.face, video=video, aligned=opts.aligned,
                         det_every=opts.det_every, threshold=opts.threshold, smooth=opts.smooth,
                         threads=opts.threads, detector=detector)


class _Predictor:
    """Runs the pipeline frame by frame (or `batch_frames` frames per backend call) and writes
    the records of each frame in order, flushing the stream after each frame."""

    def __init__(
        self,
        backend: Backend,
        writer: RecordWriter,
        opts: PredictOptions,
        annotator: Optional[Annotator],
        video: bool,
        detector: Any = None,
    ) -> None:
        self.backend, self.writer, self.opts, self.annotator = backend, writer, opts, annotator
        self.pipeline = predict_pipeline(backend, opts, video=video, detector=detector)
        self.summary = PredictSummary(detector=self.pipeline.detector_name)
        self.frames: List[Frame] = []
        self.post = 0.0  # writing and annotating, seconds
        self.timeline: Optional[Timeline] = None

    def add(self, frame: Frame) -> None:
        self.frames.append(frame)
        if len(self.frames) >= max(self.opts.batch_frames, 1):
            self.flush()

    def flush(self) -> None:
        frames, self.frames = self.frames, []
        start = 0
        while start < len(frames):  # frames of one call: at most `batch` faces unless a frame
            chunk = frames[start : start + 1]  # has more on its own
            preps = [self.pipeline.prepare(chunk[0].image, chunk[0].source, None, None)]
            faces = len(preps[0].classified)
            start += 1
            while start < len(frames):
                nxt = self.pipeline.prepare(frames[start].image, frames[start].source,
                                             None, None)
                if faces + len(nxt.classified) > self.opts.batch:
                    self._write(chunk, self.pipeline.finish(preps))
                    chunk, preps, faces = [], [], 0
                chunk.append(frames[start])
                preps.append(nxt)
                faces += len(nxt.classified)
                start += 1
            self._write(chunk, self.pipeline.finish(preps))

    def _write(self, frames: Sequence[Frame], results: Sequence[List[FaceResult]]) -> None:
        t0 = time.perf_counter()
        for frame, faces in zip(frames, results):
            recs = [f.record(display_path(frame.source), frame.index) for f in faces]
            found = faces[0].face  # a frame without a face has one result, FaceResult.no_face()
            # A frame's records and its count in the summary go together: a stop signal that
            # arrives while they are written takes effect after both (the summary never
            # disagrees with the records file).
            with deferred_signals(END_SIGNALS):
                for rec in recs:
                    self.writer.write(rec)
                self.writer.flush()
                self.summary.frames += 1
                self.summary.faces += len(faces) if found else 0
                self.summary.no_face_frames += 0 if found else 1
            if self.annotator is not None:
                self.annotator.add(frame, recs)
            if self.timeline is not None:
                self.timeline.add(frame.index, recs, fps=frame.fps)
        self.post += time.perf_counter() - t0

    @property
    def stopped(self) -> bool:
        return self.annotator is not None and self.annotator.stopped


def stream_predictions(
    source: Union[str, Source],
    backend: Backend,
    writer: RecordWriter,
    opts: PredictOptions = PredictOptions(),
    annotator: Optional[Annotator] = None,
    on_skip: Callable[[str, str], None] = lambda f, r: None,
    detector: Any = None,
    progress: Optional[Progress] = None,
    timeline: Optional[Timeline] = None,
    exclude: Sequence[Path] = (),
) -> PredictSummary:
    """Stream `source` (a str is classified here) through `backend` (opened), writing one
    record per face to `writer`.

    detector: a detector object replacing `opts.detector` (tests, other detectors).
    exclude: the run's own output paths, which a folder walk skips with a line.
    progress: told the frames done after each frame read.
    timeline: given each frame's records (the expression-over-time plot)."""
    start = time.perf_counter()
    source = classify_source(source)
    runner = _Predictor(backend, writer, opts, annotator, source.is_video, detector=detector)
    runner.timeline = timeline
    decode = 0.0
    try:
        items = iter_source(source, opts.max_frames, exclude=exclude)
        while not runner.stopped:
            t0 = time.perf_counter()
            item = next(items, None)
            decode += time.perf_counter() - t0
            if item is None:
                break
            if isinstance(item, StreamEnd):
                runner.summary.ended = item.reason
            elif isinstance(item, Skipped):
                runner.summary.skipped.append((item.source, item.reason))
                on_skip(item.source, item.reason)
            else:
                runner.add(item)
            if progress is not None:
                progress.update(runner.summary.frames + len(runner.frames))
    except KeyboardInterrupt as exc:  # Ctrl-C ends a camera stream; SIGTERM / SIGHUP likewise
        runner.summary.interrupted = True
        runner.summary.signal = getattr(exc, "signum", signal.SIGINT)
    runner.flush()
    if progress is not None:
        progress.close()
    summary = runner.summary
    summary.seconds = time.perf_counter() - start
    pipe = runner.pipeline
    n = max(summary.frames, 1)
    totals = dict(pipe.times, decode=decode)
    totals["post"] += runner.post
    summary.stages_ms = {k: round(1000.0 * totals[k] / n, 3) for k in STAGES}
    return summary


def plot_target(out: Optional[Path], source: Union[str, Source]) -> Optional[Path]:
    """Where a run writes its expression-over-time plot: beside `out` for a video, camera or
    stream source (a .png is never such a source nor its --annotate video), else nowhere."""
    if out is None or not classify_source(source).is_video:
        return None
    return plot_path(out)


def run_predict(
    source: Union[str, Source],
    weights: Path,
    opts: PredictOptions,
    fmt: str = "jsonl",
    out: Optional[Path] = None,
    annotate: Optional[Path] = None,
    device: Optional[str] = None,
    on_skip: Callable[[str, str], None] = lambda f, r: None,
) -> PredictSummary:
    """`grefel predict`: open the backend for `weights`, stream `source`, write records to `out`
    (line by line as produced, flushed after each frame; stdout when None) and optionally
    annotated images / video to `annotate`. An `out` that cannot be written is an OutputError
    naming it. A str source is classified here, once (a missing path is a SourceError before
    the model is loaded); every step after reads that Source."""
    import sys

    from grefel.runtime import open_backend

    source = classify_source(source)  # a missing path, or an --annotate name that cannot be
    if annotate is not None:  # written as given, fails before the model is loaded
        check_annotate(annotate, source)
    plot = plot_target(out, source)
    if opts.threads:
        require("cv2").setNumThreads(opts.threads)
    if out is None and sys.stdout is None:  # `grefel predict x.jpg >&-`: descriptor 1 closed
        raise OutputError("standard output is closed, so the records have nowhere to go; give "
                          "--out FILE")
    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(
            open_backend(weights, device=device, threads=opts.threads, low_memory=opts.low_memory,
                         cuda_graph=opts.cuda_graph)
        )
        if out is None:
            stream: IO[str] = sys.stdout
        else:
            try:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                stream = open(out, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise OutputError(f"--out {display_path(out)}: cannot write "
                                  f"({why_unwritable(exc)})") from None
            # closing flushes the last buffered records: a full disk can fail it too
            stack.callback(RecordWriter.close_stream, stream, f"--out {display_path(out)}")
        annotator = (
            Annotator(annotate, source, show=opts.show)
            if annotate is not None or opts.show else None
        )
        if annotator is not None:
            stack.callback(annotator.close)
        name = "stdout" if out is None else f"--out {display_path(out)}"
        writer = RecordWriter(stream, fmt, backend.classes, name=name)
        # Redrawn in place only where no records go to the same terminal.
        tty = sys.stderr.isatty() and not (out is None and sys.stdout.isatty())
        timeline = Timeline(backend.classes) if plot is not None else None
        summary = stream_predictions(
            source, backend, writer, opts=opts, annotator=annotator, on_skip=on_skip,
            progress=Progress("predict", "frames", tty=tty), timeline=timeline,
            exclude=[p for p in (out, annotate, plot) if p is not None],
        )
    if timeline is not None and plot is not None:
        try:
            if timeline.save(plot, title=display_path(source.target)):
                summary.plot = str(plot)
        except OSError as exc:
            raise OutputError(f"--out {display_path(out)}: cannot write its expression plot "
                              f"{display_path(plot)} ({exc.strerror or exc})") from None
    return summary
