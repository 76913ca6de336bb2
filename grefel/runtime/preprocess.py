"""Decode, detect faces, crop with a margin and resize to the model input (numpy + OpenCV).

Face detection uses OpenCV's frontal-face Haar cascade, the XML file that ships inside the
opencv-python(-headless) wheel (`cv2.data.haarcascades`): nothing is downloaded at run time.
Resizing is antialiased: `cv2.INTER_AREA` when shrinking (an area average, no aliasing),
bilinear when enlarging. Output: float32 (3, 112, 112) RGB in [0, 1] (normalisation is inside
the model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Tuple

import numpy as np

from grefel._lazy import require

__all__ = [
    "SIZE",
    "Box",
    "FaceDetector",
    "ImageError",
    "crop_face",
    "decode_image",
    "to_input",
    "whole_frame",
]

SIZE = 112
Box = Tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2/y2 exclusive


class ImageError(ValueError):
    """A file that is not a decodable image; the message names the file."""


def decode_image(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3). Non-ASCII paths work (np.fromfile)."""
    cv2 = require("cv2")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageError(f"{path}: not a decodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def whole_frame(image: np.ndarray) -> Box:
    h, w = image.shape[:2]
    return (0, 0, w, h)


class FaceDetector:
    """OpenCV Haar cascade (frontal faces), bundled with opencv-python.

    Args:
        scale_factor: image pyramid step.
        min_neighbors: detections needed to keep a face (higher: fewer false faces).
        min_size: smallest face side as a fraction of the shorter image side.
    """

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

    def detect(self, image: np.ndarray) -> List[Box]:
        """RGB (H, W, 3) -> face boxes, largest first."""
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
        return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def crop_face(image: np.ndarray, box: Box, margin: float = 0.2) -> np.ndarray:
    """A square crop around `box`, grown by `margin` of its side on every side; parts outside
    the image are filled by replicating the border. Returns RGB uint8 (S, S, 3)."""
    cv2 = require("cv2")
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(int(round(side)), 1)
    h, w = image.shape[:2]
    pad = max(0, -left, -top, left + s - w, top + s - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return image[top + pad : top + pad + s, left + pad : left + pad + s]


def to_input(crop: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, 112, 112) in [0, 1], antialiased resize."""
    cv2 = require("cv2")
    h, w = crop.shape[:2]
    shrink = h > SIZE or w > SIZE
    resized: Any = cv2.resize(
        crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
