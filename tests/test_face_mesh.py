"""MediaPipe's face mesh (grefel.runtime.face_mesh), the model that ships inside grefel, run by
OpenCV's DNN module on aligned faces: the labels of `grefel pretrain landmarks --landmarks mesh`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from grefel import contract
from grefel.runtime import detectors
from grefel.runtime.face_mesh import EYE_CORNERS, INPUT, MESH_POINTS, FaceMesh


def _aligned_drawn_face(seed: int) -> np.ndarray:
    """A SynthFER face, found and aligned as predict does (BlazeFace keypoints -> template)."""
    from grefel.data.faces import _EXPRESSIONS, make_identity, render_face

    rng = np.random.default_rng(seed)
    img, _, _ = render_face(rng, make_identity(rng), list(_EXPRESSIONS)[seed % 7], size=224,
                            difficulty=0.0)
    face = detectors.make_detector("auto").faces(np.asarray(img))[0]
    return contract.align_face(np.asarray(img), face.keypoints[:4])


def test_the_mesh_finds_an_aligned_face_where_the_template_puts_its_eyes() -> None:
    mesh = FaceMesh(interpreter=lambda path, threads: detectors.OpenCVTFLite(
        str(path), threads, input_side=INPUT))
    template = contract.align_template(5)  # the eyes of an aligned crop, pixels
    for seed in range(3):
        crop = _aligned_drawn_face(seed)
        points, presence = mesh.points(crop)
        assert points.shape == (MESH_POINTS, 3) and np.isfinite(points).all()
        assert presence > 0.5
        right, left = points[EYE_CORNERS[0], :2], points[EYE_CORNERS[1], :2]
        # outer eye corners: beyond the template's eye centres, on the same side, same height
        assert right[0] < template[0, 0] < template[1, 0] < left[0], (seed, right, left)
        assert abs(right[1] - template[0, 1]) < 10 and abs(left[1] - template[1, 1]) < 10
        assert (points[:, :2] > -10).all() and (points[:, :2] < 122).all()


def test_the_mesh_sees_no_face_in_noise() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    _, presence = FaceMesh().points(noise)
    assert presence < 0.5


class FakeLiteRT:
    """tf.lite.Interpreter's API as ai_edge_litert 2.3's Interpreter answers it for the face
    mesh: NHWC float input 'input_1' (1, 192, 192, 3) at index 0, outputs 'conv2d_21'
    (1, 1, 1, 1404) at index 213 and 'conv2d_31' (1, 1, 1, 1) at 210. Every point at the
    input's centre, presence logit +3. (The real runtime and OpenCV's DNN module agree within
    1.1e-4 px on 50 aligned faces of muxspace.)"""

    def __init__(self, model_path: str, num_threads: Any = None) -> None:
        self.seen: List[np.ndarray] = []

    def allocate_tensors(self) -> None:
        pass

    def get_input_details(self) -> List[Dict[str, Any]]:
        return [{"name": "input_1", "index": 0, "shape": np.array([1, INPUT, INPUT, 3]),
                 "dtype": np.float32}]

    def get_output_details(self) -> List[Dict[str, Any]]:
        return [{"name": "conv2d_21", "index": 213,
                 "shape": np.array([1, 1, 1, 3 * MESH_POINTS])},
                {"name": "conv2d_31", "index": 210, "shape": np.array([1, 1, 1, 1])}]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        assert index == 0 and value.shape == (1, INPUT, INPUT, 3) and value.dtype == np.float32
        self.seen.append(value)

    def invoke(self) -> None:
        pass

    def get_tensor(self, index: int) -> np.ndarray:
        if index == 213:
            return np.full((1, 1, 1, 3 * MESH_POINTS), INPUT / 2, np.float32)
        return np.full((1, 1, 1, 1), 3.0, np.float32)


def test_points_are_mapped_back_from_the_padded_input_to_the_crop() -> None:
    """The crop sits in the middle of a canvas 1.5 times its side (MediaPipe's ROI scale), so
    the input's centre is the crop's centre; values reach the model in [0, 1]."""
    fake: Dict[str, FakeLiteRT] = {}

    def make(path: Path, threads: Any) -> FakeLiteRT:
        fake["it"] = FakeLiteRT(str(path), threads)
        return fake["it"]

    crop = np.full((112, 112, 3), 255, np.uint8)
    points, presence = FaceMesh(interpreter=make).points(crop)
    assert np.allclose(points[:, :2], 56.0, atol=1e-4)
    assert presence == pytest.approx(1 / (1 + np.exp(-3.0)))
    (x,) = fake["it"].seen
    assert x.min() >= 0.0 and x.max() == pytest.approx(1.0)


def test_a_missing_mesh_model_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setattr(detectors, "MODELS", tmp_path)
    with pytest.raises(FileNotFoundError, match="face_landmark.tflite: the face-mesh model is "
                                                "missing from this grefel install"):
        FaceMesh()
