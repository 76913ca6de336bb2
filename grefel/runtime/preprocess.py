"""Preprocessing for `grefel predict`; decoding, aligning, cropping and resizing are
`grefel.contract`'s, the face detectors `grefel.runtime.detectors`' (BlazeFace with keypoints,
its models inside grefel; OpenCV's frontal-face Haar cascade, the XML file inside the
opencv-python wheel, when asked for): nothing is downloaded at run time.
The frame is decoded by `grefel.contract.decode_image` (PIL, EXIF orientation, the pixel limit),
each face cut by `square_crop` and turned into model input by `to_model_input` (the antialiased
resize every path shares), so a face gives predict the tensor the dataset path gives eval.
"""

from __future__ import annotations

import numpy as np

from grefel.contract import Box, ImageError, decode_image
from grefel.runtime.detectors import HaarDetector

__all__ = ["Box", "FaceDetector", "ImageError", "decode_image", "whole_frame"]


def whole_frame(image: np.ndarray) -> Box:
    h, w = image.shape[:2]
    return (0, 0, w, h)


# The Haar cascade detector under its former name (the detectors are in grefel.runtime.detectors).
FaceDetector = HaarDetector
