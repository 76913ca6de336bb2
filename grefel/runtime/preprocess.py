"""Face detection for `grefel predict`; decoding, cropping and resizing are `grefel.contract`'s.

Face detection uses OpenCV's frontal-face Haar cascade, the XML file that ships inside the
opencv-python(-headless) wheel (`cv2.data.haarcascades`): nothing is downloaded at run time.
The frame is decoded by `grefel.contract.decode_image` (PIL, EXIF orientation, the pixel limit),
each face cut by `square_crop` and turned into model input by `to_model_input` (the antialiased
resize every path shares), so a face gives predict the tensor the dataset path gives eval.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from grefel._lazy import require
from grefel.contract import Box, ImageError, decode_image

__all__ = ["Box", "FaceDetector", "ImageError", "decode_image", "whole_frame"]


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
