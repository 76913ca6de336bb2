"""Frame in, faces out: detect, align, classify and track the faces of one frame.

    from grefel.pipeline import Pipeline
    from grefel.runtime import open_backend

    with open_backend("engines/best_fp16_b8.engine") as backend:
        pipe = Pipeline(backend, detector="auto")
        for face in pipe.process(rgb_frame):          # RGB uint8 (H, W, 3)
            print(face.box, face.keypoints, face.label, face.confidence, face.track)
        pipe.process(rgb_frame, boxes=[(10, 20, 110, 120)])   # boxes from another detector

Per frame (times of each stage are summed in `Pipeline.times`):
    detect  the detector (`grefel.runtime.detectors`) on the frame resized so that its longer
            side is at most `det_size`; every `det_every`-th frame of a stream, the faces being
            followed in between by template matching of each face on a small grey frame
            (`FaceFollower`); faces smaller than `min_face` px are dropped.
    align   a face with keypoints is warped onto the canonical 5-point template
            (`grefel.contract.align_face`, margin `margin`, default 0); one without (Haar, given
            boxes) is square-cropped with margin `margin` (default 0.2, `square_crop`); then the
            antialiased resize to 112 (`to_model_input`): the one preprocessing path of
            docs/contract.md.
    infer   all faces of the frame (of `process_many`'s frames) in one backend call.
    post    per-face tracks (IoU matching, independent of smoothing) and exponential smoothing
            p_t = s p_{t-1} + (1 - s) p, confidence C_f (eqs. 10-11) of the smoothed p, the
            label and `uncertain` = confidence < threshold.

No face, no expression: a frame where no face is found gives one result with `face = False`
and no box, label, probabilities or confidence (`FaceResult.no_face`); nothing of it is
classified. A pipeline without a detector (`detector="none"`: inputs that are already face
crops, `grefel predict --aligned`) takes the whole frame as the face and classifies it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from grefel._lazy import require
from grefel.config import FaceAlignment
from grefel.contract import Box, align_face, resize, square_crop, to_model_input
from grefel.runtime.base import Backend
from grefel.runtime.detectors import Face, make_detector

__all__ = [
    "SMOOTH",
    "STAGES",
    "THRESHOLD",
    "FaceFollower",
    "FaceResult",
    "Pipeline",
    "Tracker",
    "face_pipeline",
    "entropy_confidence",
]

STAGES = ("decode", "detect", "align", "infer", "post")


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
    """Track ids and per-face exponential smoothing across consecutive frames of one stream.

    Faces are matched greedily to the previous frame's faces by IoU (>= `min_iou`); an unmatched
    face starts a new track. Ids are given whatever `smooth` is (0: ids only, no smoothing).
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


class FaceFollower:
    """Moves the last detected faces to the next frame without the detector: each face's grey
    patch (on the frame resized to `side` px on its longer side) is searched for by normalised
    cross-correlation (cv2.matchTemplate, TM_CCOEFF_NORMED) within `reach` of its side around
    its last place; box and keypoints shift by the best match. The patch is renewed every frame.
    """

    def __init__(self, side: int = 192, reach: float = 0.5) -> None:
        self.cv2 = require("cv2")
        self.side, self.reach = side, reach
        self._gray: Optional[np.ndarray] = None
        self._scale = 1.0
        self.faces: List[Face] = []

    def _small(self, image: np.ndarray) -> Tuple[np.ndarray, float]:
        cv2 = self.cv2
        h, w = image.shape[:2]
        scale = min(1.0, self.side / float(max(h, w)))
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return gray, scale

    def reset(self, image: np.ndarray, faces: Sequence[Face]) -> None:
        self._gray, self._scale = self._small(image)
        self.faces = list(faces)

    def follow(self, image: np.ndarray) -> List[Face]:
        if self._gray is None or not self.faces:
            return []
        cv2 = self.cv2
        gray, s = self._small(image)
        gh, gw = gray.shape
        moved = []
        for f in self.faces:
            x1, y1, x2, y2 = (int(round(v * s)) for v in f.box)
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, gw), min(y2, gh)
            if x2 - x1 < 4 or y2 - y1 < 4:
                moved.append(f)
                continue
            r = int(math.ceil(self.reach * max(x2 - x1, y2 - y1)))
            sx1, sy1, sx2, sy2 = max(x1 - r, 0), max(y1 - r, 0), min(x2 + r, gw), min(y2 + r, gh)
            score = cv2.matchTemplate(gray[sy1:sy2, sx1:sx2], self._gray[y1:y2, x1:x2],
                                      cv2.TM_CCOEFF_NORMED)
            _, _, _, (bx, by) = cv2.minMaxLoc(score)
            dx, dy = (sx1 + bx - x1) / s, (sy1 + by - y1) / s
            b = f.box
            box = (int(round(b[0] + dx)), int(round(b[1] + dy)), int(round(b[2] + dx)),
                   int(round(b[3] + dy)))
            kp = None if f.keypoints is None else f.keypoints + np.array([dx, dy])
            moved.append(Face(box, f.score, kp))
        self._gray, self._scale, self.faces = gray, s, moved
        return moved


@dataclass
class FaceResult:
    """One face of a frame, or the one result of a frame without a face (`face` False: every
    field below `face` is None or False, nothing was classified): what `Pipeline.process`
    returns, and the one source of `grefel predict`'s records and `grefel_image`'s answers."""

    face: bool  # a face was found (or the frame is the face: a pipeline without a detector)
    box: Optional[Box] = None  # x1, y1, x2, y2 px
    keypoints: Optional[np.ndarray] = None  # (K, 2) x, y px
    label: Optional[str] = None  # the class of the largest prob
    probs: Optional[Dict[str, float]] = None  # L_final (eq. 19), smoothed over the track
    primary: Optional[Dict[str, float]] = None  # l (eq. 9)
    confidence: Optional[float] = None  # C_f(probs) (eq. 10)
    uncertain: Optional[bool] = None  # confidence < threshold
    track: Optional[int] = None  # the stream's face id (None outside a stream)
    aligned: bool = False  # warped onto the 5-point template (else square-cropped)
    score: Optional[float] = None  # the detector's score

    @classmethod
    def no_face(cls) -> FaceResult:
        """A frame without a face: no box, no label, no probabilities."""
        return cls(face=False)

    def record(self, source: str, frame: int) -> Dict[str, Any]:
        """The JSON record of `grefel predict` (docs/contract.md, "The prediction record"):
        the same keys for every record, null where a frame has no face."""

        def rounded(p: Optional[Dict[str, float]]) -> Optional[Dict[str, float]]:
            return None if p is None else {k: round(v, 6) for k, v in p.items()}

        return {
            "source": source,
            "frame": frame,
            "face": self.face,
            "track": self.track,
            "box": None if self.box is None else [int(v) for v in self.box],
            "keypoints": None if self.keypoints is None
            else [[round(float(x), 1), round(float(y), 1)] for x, y in self.keypoints],
            "aligned": self.aligned,
            "label": self.label,
            "confidence": None if self.confidence is None else round(self.confidence, 6),
            "uncertain": self.uncertain,
            "probs": rounded(self.probs),
            "primary": rounded(self.primary),
        }


@dataclass
class _Prepared:
    """The faces of one frame, prepared for the model. Without a face found (`found` False)
    the whole frame stands in as the one face: what the dataset path (grefel.align_data,
    research.side_by_side) scores a labelled image by; `Pipeline.finish` classifies none of
    it (`classified`)."""

    source: str
    faces: List[Face]
    found: bool
    aligned: List[bool]
    inputs: List[np.ndarray] = field(default_factory=list)  # float32 (3, 112, 112) per face
    crops: List[np.ndarray] = field(default_factory=list)  # the same as RGB uint8 (112, 112, 3)

    @property
    def classified(self) -> List[np.ndarray]:
        """The inputs `finish` sends to the backend: the faces found, none without a face."""
        return self.inputs if self.found else []

    def first(self) -> _Prepared:
        """Only the first face (the detector's best): grefel_image answers for it alone."""
        return _Prepared(self.source, self.faces[:1], self.found, self.aligned[:1],
                         self.inputs[:1], self.crops[:1])


# The defaults of what a pipeline does with a face's prediction (grefel predict's --threshold
# and --smooth: grefel.predict.PredictOptions).
THRESHOLD = 0.3  # confidence below this marks a face uncertain
SMOOTH = 0.6  # weight of the past in the per-track smoothing of a stream


class Pipeline:
    """Detect, align, classify and track the faces of frames (module docstring).

    Args:
        backend: an opened `grefel.runtime` backend; None for a pipeline that only prepares
            faces (`prepare`, e.g. `grefel.align_data` for dataset images), not `finish`.
        detector: a DETECTORS name, "none" (the whole frame is the face), or an object with
            `faces(rgb) -> [Face]` (or `detect(rgb) -> [Box]`); None: `face.detector`.
        face: how faces are found and prepared (grefel.config.FaceAlignment: det_size, align,
            margin, min_face; its `mode` is the dataset path's and is not read here).
        det_every: run the detector on every N-th frame of a stream, follow faces in between.
        threshold: confidence below this marks a face uncertain.
        smooth: weight of the past in the per-track smoothing (0: off; tracks still given).
        track: give track ids across consecutive frames of one source.
        threads: CPU threads of the detector (None: its default).
    """

    def __init__(
        self,
        backend: Optional[Backend],
        detector: Union[str, Any, None] = None,
        *,
        face: Optional[FaceAlignment] = None,
        det_every: int = 1,
        threshold: float = THRESHOLD,
        smooth: float = SMOOTH,
        track: bool = True,
        threads: Optional[int] = None,
    ) -> None:
        face = face if face is not None else FaceAlignment()
        if det_every < 1:
            raise ValueError("det_every >= 1 is required")
        self.backend, self.face = backend, face
        detector = face.detector if detector is None else detector
        if isinstance(detector, str):
            self.detector = None if detector == "none" else make_detector(detector, threads)
        else:
            self.detector = detector
        self.det_every, self.threshold = det_every, threshold
        self.tracker = Tracker(smooth) if track else None
        self.follower = FaceFollower() if det_every > 1 else None
        self.times: Dict[str, float] = {s: 0.0 for s in STAGES}
        self.frames = 0
        self._seen = 0  # frames of the current source (for det_every)
        self._source: Optional[str] = None

    @property
    def detector_name(self) -> str:
        if self.detector is None:
            return "none"
        return str(getattr(self.detector, "name", type(self.detector).__name__))

    # --- stages ---------------------------------------------------------------------------------

    def _detect(self, image: np.ndarray) -> List[Face]:
        det = self.detector
        h, w = image.shape[:2]
        scale = 1.0
        if self.face.det_size and max(h, w) > self.face.det_size:
            scale = self.face.det_size / float(max(h, w))
            cv2 = require("cv2")
            size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if hasattr(det, "faces"):
            faces = list(det.faces(image))
        else:
            faces = [Face(tuple(int(v) for v in b), 1.0, None) for b in det.detect(image)]
        return [f.scaled(1.0 / scale) for f in faces] if scale != 1.0 else faces

    def locate(self, image: np.ndarray, source: str = "frame") -> List[Face]:
        """The faces of a frame: detected (every det_every-th frame of a source) or followed."""
        if source != self._source:
            self._source, self._seen = source, 0
        fresh = self.follower is None or self._seen % self.det_every == 0
        self._seen += 1
        if fresh:
            faces = self._detect(image)
            faces = [f for f in faces
                     if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= self.face.min_face]
            if self.follower is not None:
                self.follower.reset(image, faces)
            return faces
        return self.follower.follow(image)  # type: ignore[union-attr]

    def prepare(
        self,
        image: np.ndarray,
        source: str,
        boxes: Optional[Sequence[Box]],
        keypoints: Optional[Sequence[Optional[np.ndarray]]],
    ) -> _Prepared:
        t0 = time.perf_counter()
        if boxes is not None:
            kps = list(keypoints) if keypoints is not None else [None] * len(boxes)
            if len(kps) != len(boxes):
                raise ValueError(f"{len(boxes)} boxes but {len(kps)} keypoint sets")
            faces = [Face(tuple(int(v) for v in b), 1.0,
                          None if k is None else np.asarray(k, np.float64))
                     for b, k in zip(boxes, kps)]
        elif self.detector is None:
            faces = []
        else:
            faces = self.locate(image, source)
        t1 = time.perf_counter()
        found = bool(faces) or (self.detector is None and boxes is None)
        prep = _Prepared(source, faces, found, [])
        if not faces:
            h, w = image.shape[:2]
            prep.faces = [Face((0, 0, w, h), 0.0, None)]
            prep.aligned = [False]
            prep.crops = [resize(image)]
        for f in faces:
            kp = f.keypoints
            if self.face.align and kp is not None and len(kp) >= 4:
                crop = align_face(image, kp[:5] if len(kp) == 5 else kp[:4],
                                  margin=0.0 if self.face.margin is None else self.face.margin)
                prep.aligned.append(True)
            else:
                crop = square_crop(image, f.box, margin=0.2 if self.face.margin is None
                                   else self.face.margin)
                prep.aligned.append(False)
            prep.crops.append(resize(crop))
        prep.inputs = [to_model_input(c) for c in prep.crops]  # resize(c) is c: 112 already
        t2 = time.perf_counter()
        self.times["detect"] += t1 - t0
        self.times["align"] += t2 - t1
        return prep

    def finish(self, preps: Sequence[_Prepared]) -> List[List[FaceResult]]:
        if self.backend is None:
            raise ValueError("this Pipeline was made without a backend: it prepares faces "
                             "(`prepare`) but cannot classify them")
        t0 = time.perf_counter()
        batch = [x for p in preps for x in p.classified]
        out = self.backend.infer(np.stack(batch)) if batch else {}
        t1 = time.perf_counter()
        classes = self.backend.classes
        results: List[List[FaceResult]] = []
        row = 0
        for p in preps:
            if not p.found:  # no face, no expression; a track is matched to the last frame only
                if self.tracker is not None:
                    self.tracker.update(p.source, [], np.zeros((0, len(classes)), np.float32))
                results.append([FaceResult.no_face()])
                continue
            n = len(p.faces)
            probs = out["probs"][row : row + n]
            primary, conf = out["primary"][row : row + n], out["confidence"][row : row + n]
            row += n
            tracks: List[Optional[int]] = [None] * n
            if self.tracker is not None:
                ids, probs = self.tracker.update(p.source, [f.box for f in p.faces], probs)
                tracks, conf = list(ids), entropy_confidence(probs)
            faces = []
            for i, f in enumerate(p.faces):
                c = float(conf[i])
                faces.append(FaceResult(
                    face=True,
                    box=f.box,
                    keypoints=f.keypoints,
                    label=classes[int(np.argmax(probs[i]))],
                    probs={k: float(v) for k, v in zip(classes, probs[i])},
                    primary={k: float(v) for k, v in zip(classes, primary[i])},
                    confidence=c,
                    uncertain=bool(c < self.threshold),
                    track=tracks[i],
                    aligned=p.aligned[i],
                    score=f.score,
                ))
            results.append(faces)
        self.times["infer"] += t1 - t0
        self.times["post"] += time.perf_counter() - t1
        self.frames += len(preps)
        return results

    # --- public ---------------------------------------------------------------------------------

    def process(
        self,
        frame: np.ndarray,
        boxes: Optional[Sequence[Box]] = None,
        keypoints: Optional[Sequence[Optional[np.ndarray]]] = None,
        source: str = "frame",
    ) -> List[FaceResult]:
        """One RGB uint8 frame (H, W, 3) -> its faces, in one backend call.

        boxes (and optionally keypoints, 5 or 4 points per box in template order, or None)
        from another detector replace this pipeline's detector for the frame. Consecutive
        calls with the same `source` form one stream (tracks, det_every).
        """
        return self.process_many([(frame, source, boxes, keypoints)])[0]

    def process_many(
        self,
        frames: Sequence[Tuple[np.ndarray, str, Optional[Sequence[Box]],
                               Optional[Sequence[Optional[np.ndarray]]]]],
    ) -> List[List[FaceResult]]:
        """Several frames (frame, source, boxes, keypoints) in one backend call."""
        preps = []
        for image, source, boxes, kps in frames:
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {image.dtype} "
                                 f"{image.shape}")
            preps.append(self.prepare(image, source, boxes, kps))
        return self.finish(preps)

    def stage_ms(self) -> Dict[str, float]:
        """Mean milliseconds per frame of each stage so far."""
        n = max(self.frames, 1)
        return {k: round(1000.0 * v / n, 3) for k, v in self.times.items()}


def face_pipeline(
    backend: Optional[Backend],
    face: FaceAlignment,
    *,
    video: bool,
    aligned: bool = False,
    det_every: int = 1,
    threshold: float = THRESHOLD,
    smooth: float = SMOOTH,
    threads: Optional[int] = None,
    detector: Any = None,
) -> Pipeline:
    """The one factory of the face pipeline, from a FaceAlignment: `grefel predict` (for a
    video, camera or stream (`video`): detection every `det_every` frames, tracks and
    smoothing; for still images every image detected on its own, no tracks), `grefel serve`'s
    grefel_image, and without a backend the dataset images of `grefel train` / `eval
    --align-faces detect` (grefel.align_data).

    aligned: the inputs are face crops: no detector, the whole image is the face.
    detector: a detector object replacing `face.detector` (tests, other detectors).
    """
    return Pipeline(
        backend,
        "none" if aligned else detector,
        face=face,
        det_every=det_every if video else 1,
        threshold=threshold,
        smooth=smooth,
        track=video,
        threads=threads,
    )
