"""Face detectors for `grefel predict` and `grefel.pipeline`: boxes, scores and keypoints.

    haar            OpenCV's frontal-face Haar cascade, the XML inside the opencv-python wheel:
                    no keypoints (faces are square-cropped, not aligned); only by name.
    blazeface       MediaPipe's BlazeFace short-range model (faces within about 2 m, 128 px
                    input, 6 keypoints; Apache-2.0), a .tflite file that ships inside grefel
                    (grefel/runtime/models, NOTICE.md there), run by `ai-edge-litert` (grefel's
                    faces extra, docs/install.md), else `tflite-runtime`, else OpenCV's DNN module
                    (its TFLite reader, OpenCV >= 4.8; the same outputs to 1e-4).
    blazeface-full  the full-range model (faces up to about 5 m, 192 px input), shipped alike.
    auto            AutoDetector: blazeface-full; on a frame where it finds nothing, the
                    blazeface faces that blazeface-full confirms on the frame zoomed out (close-up
                    faces, which the full-range model misses; the short-range model alone also
                    fires on round objects). Measured in research/results/faces_2026-12-06.md.

Nothing is downloaded at run time. Every detector takes an RGB uint8 frame and returns `Face`s,
best first; a BlazeFace face has keypoints (right eye, left eye, nose tip, mouth centre, right
ear, left ear: the subject's right eye is on the left of the image), of which the first four
align the face onto the 5-point template (`grefel.contract.align_face`).

BlazeFace decoding follows MediaPipe's face_detection graphs: SSD anchors (short range: strides
8, 16, 16, 16 with two anchors per layer and cell -> 896 anchors; full range: stride 4, one
anchor per cell -> 2304), fixed anchor size, offsets divided by the input size, sigmoid scores
of logits clipped to +-100, and weighted non-maximum suppression at IoU 0.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from grefel._lazy import MissingDependency, require
from grefel.contract import Box

__all__ = [
    "DETECTORS",
    "MODELS",
    "AutoDetector",
    "BlazeFaceDetector",
    "Face",
    "HaarDetector",
    "OpenCVTFLite",
    "blazeface_model_path",
    "decode_blazeface",
    "make_detector",
    "ssd_anchors",
    "tflite_interpreter",
    "weighted_nms",
]

DETECTORS = ("auto", "blazeface", "blazeface-full", "haar")
# MediaPipe's model files, inside this package (NOTICE.md there: origin, sha256, licence)
MODELS = Path(__file__).with_name("models")


@dataclass
class Face:
    """One detected face: box [x1, y1, x2, y2) in pixels, detector score in [0, 1], and
    keypoints (K, 2) x, y in pixels or None (Haar)."""

    box: Box
    score: float
    keypoints: Optional[np.ndarray] = None

    def scaled(self, factor: float) -> Face:
        """Coordinates multiplied by `factor` (a detection on a resized frame -> the frame)."""
        x1, y1, x2, y2 = self.box
        box = (int(round(x1 * factor)), int(round(y1 * factor)), int(round(x2 * factor)),
               int(round(y2 * factor)))
        kp = None if self.keypoints is None else self.keypoints * factor
        return Face(box, self.score, kp)


class HaarDetector:
    """OpenCV Haar cascade (frontal faces), bundled with opencv-python.

    Args:
        scale_factor: image pyramid step.
        min_neighbors: detections needed to keep a face (higher: fewer false faces).
        min_size: smallest face side as a fraction of the shorter image side.
    """

    name = "haar"
    CASCADE = "haarcascade_frontalface_default.xml"

    def __init__(
        self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: float = 0.08
    ) -> None:
        cv2 = self._cv2 = require("cv2")
        path = Path(cv2.data.haarcascades) / self.CASCADE
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV's face cascade {path} could not be loaded")
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size

    def faces(self, image: np.ndarray) -> List[Face]:
        """RGB (H, W, 3) -> faces, largest first (score 1: the cascade gives none)."""
        cv2 = self._cv2
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        side = max(int(min(gray.shape) * self.min_size), 16)
        found = self._cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(side, side),
        )
        boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in found]
        boxes.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
        return [Face(b, 1.0, None) for b in boxes]

    def detect(self, image: np.ndarray) -> List[Box]:
        """RGB (H, W, 3) -> face boxes, largest first."""
        return [f.box for f in self.faces(image)]


# --- BlazeFace -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BlazeSpec:
    file: str
    size: int  # input side
    strides: Tuple[int, ...]
    anchors_per_layer: int  # 2: aspect ratio 1 + the interpolated scale
    min_score: float


_SPECS = {
    "blazeface": _BlazeSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.5),
    "blazeface-full": _BlazeSpec("face_detection_full_range.tflite", 192, (4,), 1, 0.6),
}
_SPECS_BY_FILE = {s.file: s.size for s in _SPECS.values()}
# AutoDetector's confirmation of a short-range face: the full-range model on the frame centred in
# a square twice its longer side finds a face there (research/results/faces_2026-12-06.md)
AUTO_ZOOM_OUT = 2.0
AUTO_CONFIRM_SCORE = 0.5
AUTO_CONFIRM_IOU = 0.5


def ssd_anchors(size: int, strides: Sequence[int], per_layer: int) -> np.ndarray:
    """Anchor centres (A, 2) in [0, 1], x then y (MediaPipe's SsdAnchorsCalculator with
    fixed_anchor_size: consecutive layers of one stride share their cells)."""
    out: List[np.ndarray] = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        n = per_layer * (j - i)
        fm = int(math.ceil(size / strides[i]))
        ys, xs = np.meshgrid((np.arange(fm) + 0.5) / fm, (np.arange(fm) + 0.5) / fm,
                             indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        out.append(np.repeat(cells, n, axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


def _iou_matrix(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = ix * iy
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou: float = 0.3
) -> List[Tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's WEIGHTED suppression: the best remaining detection and all that overlap it
    by IoU > `iou` are merged into their score-weighted mean (box and keypoints), keeping the
    best score. boxes (N, 4), keypoints (N, K, 2), scores (N,) -> [(box, keypoints, score)]."""
    order = np.argsort(-scores, kind="stable")
    out = []
    while order.size:
        best = order[0]
        overlap = _iou_matrix(boxes[order], boxes[best]) > iou
        group = order[overlap]
        w = scores[group][:, None]
        total = float(w.sum())
        out.append(((boxes[group] * w).sum(0) / total,
                    (keypoints[group] * w[:, :, None]).sum(0) / total, float(scores[best])))
        order = order[~overlap]
    return out


def decode_blazeface(
    regressors: np.ndarray,
    logits: np.ndarray,
    anchors: np.ndarray,
    size: int,
    min_score: float,
) -> List[Tuple[np.ndarray, np.ndarray, float]]:
    """Raw model outputs -> detections in input-relative coordinates [0, 1].

    regressors (A, 16): box centre offset, width, height, then 6 keypoint offsets, all in input
    pixels relative to the anchor centre; logits (A,) -> score = sigmoid(clip(logit, +-100)).
    Returns [(box x1 y1 x2 y2, keypoints (6, 2), score)] after weighted NMS.
    """
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100.0, 100.0)))
    keep = scores >= min_score
    if not keep.any():
        return []
    reg, anc, sc = regressors[keep].astype(np.float64) / size, anchors[keep], scores[keep]
    cx, cy = reg[:, 0] + anc[:, 0], reg[:, 1] + anc[:, 1]
    w, h = reg[:, 2], reg[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kps = reg[:, 4:16].reshape(-1, 6, 2) + anc[:, None, :]
    return weighted_nms(boxes, kps, sc)


def blazeface_model_path(name: str = "blazeface") -> Path:
    """The .tflite file of BlazeFace model `name` ("blazeface", "blazeface-full") that ships
    inside grefel (grefel/runtime/models); MissingDependency when an install lacks it."""
    path = MODELS / _SPECS[name].file
    if not path.is_file():
        raise MissingDependency(
            f"{path}: BlazeFace's model file is missing from this grefel install (it ships "
            "inside the package: reinstall grefel), or use --detector haar"
        )
    return path


class OpenCVTFLite:
    """The subset of tf.lite.Interpreter's API BlazeFaceDetector uses, on OpenCV's DNN module
    (`cv2.dnn.readNetFromTFLite`, OpenCV >= 4.8): the fallback runtime, nothing to install.
    Inputs are given NHWC like TFLite's and passed to OpenCV as NCHW."""

    def __init__(self, model_path: str, num_threads: Optional[int] = None,
                 input_side: Optional[int] = None) -> None:
        cv2 = require("cv2")
        if not hasattr(cv2.dnn, "readNetFromTFLite"):
            raise MissingDependency(
                f"no TFLite runtime for BlazeFace: OpenCV {cv2.__version__} cannot read .tflite "
                "files (4.8 or later can) and neither ai-edge-litert (`pip install "
                "'.[faces]'` in a clone of grefel) nor tflite-runtime is installed; or use "
                "--detector haar"
            )
        try:
            self._net = cv2.dnn.readNetFromTFLite(str(model_path))
        except cv2.error as exc:
            raise ValueError(f"{model_path}: OpenCV cannot read this TFLite model "
                             f"({str(exc).strip().splitlines()[-1]})") from None
        self._names = list(self._net.getUnconnectedOutLayersNames())
        self._size = input_side or _SPECS_BY_FILE.get(Path(model_path).name, 128)
        self._out: Dict[int, np.ndarray] = {}
        self._shapes: Optional[List[Tuple[int, ...]]] = None

    def allocate_tensors(self) -> None:
        pass

    def get_input_details(self) -> List[Dict[str, Any]]:
        return [{"index": 0, "shape": np.array([1, self._size, self._size, 3])}]

    def get_output_details(self) -> List[Dict[str, Any]]:
        # BlazeFace's outputs: "regressors" / "reshaped_regressor_face_4" (A, 16) and
        # "classificators" / "reshaped_classifier_face_4" (A, 1); any other model's outputs
        # (the face mesh's) have the shapes one run on zeros gives
        def shape(i: int, name: str) -> Tuple[int, ...]:
            if "regress" in name or "classif" in name:
                return (1, -1, 16 if "regress" in name else 1)
            if self._shapes is None:
                zeros = np.zeros((1, self._size, self._size, 3), np.float32)
                self.set_tensor(0, zeros)
                self.invoke()
                self._shapes = [self._out[k].shape for k in sorted(self._out)]
            return tuple(self._shapes[i])

        return [{"index": i + 1, "name": n, "shape": np.array(shape(i, n))}
                for i, n in enumerate(self._names)]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self._net.setInput(np.ascontiguousarray(value.transpose(0, 3, 1, 2)))

    def invoke(self) -> None:
        outs = self._net.forward(self._names)
        self._out = {i + 1: np.asarray(o) for i, o in enumerate(outs)}

    def get_tensor(self, index: int) -> np.ndarray:
        return self._out[index]


def tflite_interpreter(path: Path, threads: Optional[int] = None,
                       input_side: Optional[int] = None) -> Any:
    """A TFLite interpreter for `path`: ai-edge-litert, else tflite-runtime, else OpenCV DNN
    (which cannot tell a model's input size: `input_side`, else the BlazeFace file's)."""
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            mod = require(module)
        except MissingDependency:
            continue
        return mod.Interpreter(model_path=str(path), num_threads=threads)
    return OpenCVTFLite(str(path), num_threads=threads, input_side=input_side)


class BlazeFaceDetector:
    """MediaPipe BlazeFace through a TFLite runtime (see the module docstring).

    Args:
        name: "blazeface" (short range) or "blazeface-full".
        min_score: score threshold (default: MediaPipe's, 0.5 short / 0.6 full range).
        threads: TFLite CPU threads (None: the runtime's default).
        model: the .tflite file (default: the one inside grefel, blazeface_model_path).
        interpreter: a factory (path, threads) -> an object with the tf.lite.Interpreter API
            (for tests and other runtimes).
    """

    def __init__(
        self,
        name: str = "blazeface",
        min_score: Optional[float] = None,
        threads: Optional[int] = None,
        model: Optional[Path] = None,
        interpreter: Optional[Callable[[Path, Optional[int]], Any]] = None,
    ) -> None:
        if name not in _SPECS:
            raise ValueError(f"unknown BlazeFace model {name!r}; one of {sorted(_SPECS)}")
        self.name, self.spec = name, _SPECS[name]
        self.min_score = self.spec.min_score if min_score is None else min_score
        self.model = Path(model) if model is not None else blazeface_model_path(name)
        make = interpreter or tflite_interpreter
        self._interp = make(self.model, threads)
        self._interp.allocate_tensors()
        inp = self._interp.get_input_details()[0]
        if tuple(inp["shape"][1:3]) != (self.spec.size, self.spec.size):
            raise ValueError(f"{self.model}: input {tuple(inp['shape'])}, expected "
                             f"(1, {self.spec.size}, {self.spec.size}, 3)")
        self._input = inp["index"]
        outs = self._interp.get_output_details()
        # regressors (1, A, 16) and classificators (1, A, 1), told apart by their last axis
        self._reg = next(o["index"] for o in outs if o["shape"][-1] == 16)
        self._cls = next(o["index"] for o in outs if o["shape"][-1] == 1)
        self.anchors = ssd_anchors(self.spec.size, self.spec.strides, self.spec.anchors_per_layer)
        self._cv2 = require("cv2")

    def faces(
        self, image: np.ndarray, zoom_out: float = 1.0, min_score: Optional[float] = None
    ) -> List[Face]:
        """RGB uint8 (H, W, 3) -> faces, best score first, with 6 keypoints each.

        The frame is letterboxed to a square (zero padding, as MediaPipe), resized to the
        input side with area averaging and scaled to [-1, 1]. `zoom_out` > 1 makes the square's
        side that many times the frame's longer side (the frame, centred, fills 1 / zoom_out of
        the input: how a face that fills the frame looks to the full-range model when small);
        `min_score` replaces the detector's threshold for this call.
        """
        if zoom_out < 1.0:
            raise ValueError(f"zoom_out must be >= 1, got {zoom_out}")
        min_score = self.min_score if min_score is None else min_score
        h, w = image.shape[:2]
        side = int(round(max(h, w) * zoom_out))
        top, left = (side - h) // 2, (side - w) // 2
        square = np.zeros((side, side, 3), np.uint8)
        square[top : top + h, left : left + w] = image
        n = self.spec.size
        small = self._cv2.resize(square, (n, n), interpolation=self._cv2.INTER_AREA)
        x = (small.astype(np.float32) / np.float32(127.5) - np.float32(1.0))[None]
        self._interp.set_tensor(self._input, x)
        self._interp.invoke()
        reg = self._interp.get_tensor(self._reg)[0]
        logits = self._interp.get_tensor(self._cls)[0, :, 0]
        found = []
        for box, kps, score in decode_blazeface(reg, logits, self.anchors, n, min_score):
            b = box * side - np.array([left, top, left, top])
            x1, y1 = max(int(round(b[0])), 0), max(int(round(b[1])), 0)
            x2, y2 = min(int(round(b[2])), w), min(int(round(b[3])), h)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            found.append(Face((x1, y1, x2, y2), score, kps * side - np.array([left, top])))
        return found

    def detect(self, image: np.ndarray) -> List[Box]:
        return [f.box for f in self.faces(image)]


class AutoDetector:
    """`auto`: BlazeFace full range, and the short-range model for faces that fill the frame.

    The full-range model is made for small, far faces and misses close-ups (on tight face crops
    it found 13 of 500); the short-range model finds those (494 of 500) but also fires on round
    objects (15 of 114 photos without a face). So: the full-range model's faces when it finds
    any; else the short-range model's faces that the full-range model confirms on the frame
    zoomed out (`AUTO_ZOOM_OUT`: the close-up face made small), at score >= `AUTO_CONFIRM_SCORE`
    and IoU >= `AUTO_CONFIRM_IOU`. A frame costs one full-range run when it has a face the
    full-range model sees, two when the short-range model finds nothing, three otherwise.
    Measured: research/results/faces_2026-12-06.md (docs/predict.md, "Measured").

    Args:
        threads: TFLite CPU threads of each model (None: the runtime's default).
        interpreter: as BlazeFaceDetector's (tests, other runtimes).
        short_min_score: the short-range model's threshold (None: MediaPipe's, 0.5).
        zoom_out, confirm_score, confirm_iou: the confirmation (zoom_out None: none, every
            short-range face is kept); the other values are the variants that
            `research.detectors --variants` measures beside the defaults.
    """

    name = "blazeface-auto"

    def __init__(
        self,
        threads: Optional[int] = None,
        interpreter: Optional[Callable[[Path, Optional[int]], Any]] = None,
        short_min_score: Optional[float] = None,
        zoom_out: Optional[float] = AUTO_ZOOM_OUT,
        confirm_score: float = AUTO_CONFIRM_SCORE,
        confirm_iou: float = AUTO_CONFIRM_IOU,
    ) -> None:
        self.full = BlazeFaceDetector("blazeface-full", threads=threads, interpreter=interpreter)
        self.short = BlazeFaceDetector("blazeface", min_score=short_min_score, threads=threads,
                                       interpreter=interpreter)
        self.zoom_out, self.confirm_score, self.confirm_iou = zoom_out, confirm_score, confirm_iou

    def faces(self, image: np.ndarray) -> List[Face]:
        """RGB uint8 (H, W, 3) -> faces, best score first, with 6 keypoints each (a confirmed
        close-up face keeps the short-range model's box, keypoints and score)."""
        found = self.full.faces(image)
        if found:
            return found
        close = self.short.faces(image)
        if not close or self.zoom_out is None:
            return close
        far = self.full.faces(image, zoom_out=self.zoom_out, min_score=self.confirm_score)
        boxes = np.array([f.box for f in far], np.float64).reshape(-1, 4)
        return [f for f in close
                if (_iou_matrix(boxes, np.asarray(f.box, np.float64)) >= self.confirm_iou).any()]

    def detect(self, image: np.ndarray) -> List[Box]:
        return [f.box for f in self.faces(image)]


def make_detector(name: str = "auto", threads: Optional[int] = None) -> Any:
    """A detector by name (DETECTORS): "auto" is AutoDetector (BlazeFace full range, then short
    range for close-ups); Haar only by name."""
    if name == "haar":
        return HaarDetector()
    if name == "auto":
        return AutoDetector(threads=threads)
    if name in _SPECS:
        return BlazeFaceDetector(name, threads=threads)
    raise ValueError(f"unknown detector {name!r}; one of {', '.join(DETECTORS)}")
