"""MediaPipe's face mesh (468 points) on aligned faces: real landmarks to pretrain the landmark
stream on (`grefel pretrain landmarks` on a dataset without ground-truth landmarks).

    mesh = FaceMesh()                          # the face_landmark.tflite that ships in grefel
    points, presence = mesh.points(crop)       # crop: an aligned 112 x 112 RGB uint8 face

The model is `face_landmark.tflite` of MediaPipe 0.10.14 (Apache-2.0; grefel/runtime/models/,
NOTICE there): input 192 x 192 RGB in [0, 1], NHWC; outputs 468 x (x, y, z) in input pixels and
a face-presence logit. MediaPipe feeds it the face box enlarged 1.5 times and rotated upright. An
aligned crop is already upright with the face filling it (the 5-point template), so the crop is
placed in the middle of a canvas 1.5 times its side (the border replicated, as MediaPipe's
image-to-tensor crop does at image borders), resized to 192, and the points are mapped back to
crop pixels. Run through the same TFLite runtimes as BlazeFace (`tflite_interpreter`:
ai-edge-litert, tflite-runtime, else OpenCV's DNN module).

Indices of the mesh used by grefel: RIGHT_EYE_OUTER = 33 and LEFT_EYE_OUTER = 263 (the subject's
outer eye corners, for the inter-ocular NME), from MediaPipe's canonical face model.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from grefel._lazy import require

__all__ = ["MESH_POINTS", "EYE_CORNERS", "FaceMesh", "face_mesh_model_path"]

MESH_POINTS = 468
EYE_CORNERS = (33, 263)  # the subject's right and left outer eye corners
INPUT = 192
SCALE = 1.5  # the canvas around the face, as MediaPipe's face-landmark ROI
MODEL_FILE = "face_landmark.tflite"


def face_mesh_model_path() -> Path:
    """The face_landmark.tflite that ships inside grefel."""
    from grefel.runtime.detectors import MODELS

    path = MODELS / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the face-mesh model is missing from this grefel "
                                "install; reinstall grefel")
    return path


class FaceMesh:
    """MediaPipe's face mesh on aligned face crops (module docstring).

    Args:
        model: the .tflite file (default: the one in grefel).
        threads: TFLite CPU threads (None: the runtime's default).
        interpreter: a factory (path, threads) -> an object with tf.lite.Interpreter's API.
    """

    def __init__(self, model: Optional[Path] = None, threads: Optional[int] = None,
                 interpreter: Any = None) -> None:
        from grefel.runtime.detectors import tflite_interpreter

        self.model = Path(model) if model is not None else face_mesh_model_path()
        make = interpreter or functools.partial(tflite_interpreter, input_side=INPUT)
        self._interp = make(self.model, threads)
        self._interp.allocate_tensors()
        inp = self._interp.get_input_details()[0]
        if tuple(inp["shape"][1:3]) != (INPUT, INPUT):
            raise ValueError(f"{self.model}: input {tuple(inp['shape'])}, expected "
                             f"(1, {INPUT}, {INPUT}, 3)")
        self._input = inp["index"]
        outs = self._interp.get_output_details()
        self._points = next(o["index"] for o in outs if int(np.prod(o["shape"])) == 3 * MESH_POINTS)
        self._presence = next(o["index"] for o in outs if int(np.prod(o["shape"])) == 1)
        self._cv2 = require("cv2")

    def points(self, crop: np.ndarray) -> Tuple[np.ndarray, float]:
        """An aligned RGB uint8 face (S, S, 3) -> (468, 3) points (x, y in crop pixels, z in
        the same scale) and the face-presence probability."""
        cv2 = self._cv2
        side = crop.shape[0]
        pad = int(round(side * (SCALE - 1) / 2))
        canvas = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x = cv2.resize(canvas, (INPUT, INPUT), interpolation=cv2.INTER_AREA)
        self._interp.set_tensor(self._input, (x.astype(np.float32) / np.float32(255.0))[None])
        self._interp.invoke()
        raw = np.asarray(self._interp.get_tensor(self._points), np.float32).reshape(MESH_POINTS, 3)
        logit = float(np.asarray(self._interp.get_tensor(self._presence)).reshape(-1)[0])
        scale = canvas.shape[0] / INPUT
        pts = raw * scale
        pts[:, :2] -= pad
        presence = 1.0 / (1.0 + float(np.exp(-np.clip(logit, -100.0, 100.0))))
        return pts, presence
