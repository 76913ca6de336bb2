"""Face detectors, alignment and the streaming pipeline (issue 14).

The real BlazeFace models are the .tflite files that ship inside grefel (grefel/runtime/models),
run through OpenCV's DNN module; LiteRT's interpreter is replaced by a fake with its API where
its absence or presence must not matter.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import cv2
import numpy as np
import pytest
import test_runtime as rt
from click.testing import CliRunner

from grefel import contract
from grefel._lazy import MissingDependency
from grefel.cli import cli
from grefel.pipeline import FaceFollower, FaceResult, Pipeline, Tracker
from grefel.predict import PredictOptions, RecordWriter, stream_predictions
from grefel.runtime import detectors, open_backend, sources
from grefel.runtime.detectors import (
    BlazeFaceDetector,
    Face,
    HaarDetector,
    decode_blazeface,
    make_detector,
    ssd_anchors,
)

ROOT = Path(__file__).resolve().parents[1]
models = rt.models
CLASSES = rt.CLASSES


# --- the real BlazeFace files --------------------------------------------------------------------


def _drawn_face(seed: int, size: int = 224) -> tuple:
    """A SynthFER face (grefel.data.faces) and its 68 landmarks in pixels."""
    from grefel.data.faces import _EXPRESSIONS, make_identity, render_face

    rng = np.random.default_rng(seed)
    names = list(_EXPRESSIONS)
    img, lm, _ = render_face(rng, make_identity(rng), names[seed % len(names)], size=size,
                             difficulty=0.0)
    return np.asarray(img), lm


@pytest.mark.parametrize("name", ["blazeface", "blazeface-full"])
def test_blazeface_finds_drawn_faces_with_keypoints(name: str) -> None:
    """The real model on drawn faces, letterboxed into a wide frame: one face each, its eye
    keypoints (the subject's right eye on the image's left) within 8 % of the face's width of
    the drawn eye centres."""
    det = BlazeFaceDetector(name, interpreter=detectors.OpenCVTFLite)
    for seed in range(3):
        face, lm = _drawn_face(seed)
        frame = np.full((224, 400, 3), 90, np.uint8)
        frame[:, 100:324] = face
        found = det.faces(frame)
        assert len(found) == 1, (seed, found)
        f = found[0]
        x1, y1, x2, y2 = f.box
        assert 100 <= x1 < x2 <= 324 and f.score >= det.min_score
        assert f.keypoints is not None and f.keypoints.shape == (6, 2)
        eyes = np.stack([lm[36:42].mean(0), lm[42:48].mean(0)]) + [100, 0]
        err = np.linalg.norm(f.keypoints[:2] - eyes, axis=1)
        assert (err < 0.08 * (x2 - x1)).all(), (seed, err)


def test_blazeface_finds_nothing_in_noise() -> None:
    det = BlazeFaceDetector(interpreter=detectors.OpenCVTFLite)
    noise = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    assert det.faces(noise) == []


def _close_up(seed: int) -> tuple:
    """A drawn face cropped to its landmarks (a face that fills the frame, as a tight face crop
    or a face close to the camera) and its 68 landmarks in the crop's pixels."""
    img, lm = _drawn_face(seed)
    x1, y1 = lm.min(0).astype(int) - [5, 10]
    x2, y2 = lm.max(0).astype(int) + 5
    return img[max(y1, 0) : y2, max(x1, 0) : x2], lm - [max(x1, 0), max(y1, 0)]


@pytest.mark.parametrize("seed", range(5))
def test_auto_finds_close_up_faces_the_full_range_model_misses(seed: int) -> None:
    """On a face that fills the frame the full-range model finds nothing; `auto` gives the
    short-range model's face (confirmed on the zoomed-out frame) with its keypoints."""
    auto = detectors.AutoDetector(interpreter=detectors.OpenCVTFLite)
    crop, lm = _close_up(seed)
    assert auto.full.faces(crop) == []
    (face,) = auto.faces(crop)
    assert face.score >= auto.short.min_score and face.keypoints is not None
    x1, y1, x2, y2 = face.box
    eyes = np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])
    assert (np.linalg.norm(face.keypoints[:2] - eyes, axis=1) < 0.08 * (x2 - x1)).all()


def test_auto_finds_nothing_in_noise_and_keeps_full_range_faces() -> None:
    auto = make_detector("auto")
    assert isinstance(auto, detectors.AutoDetector) and auto.name == "blazeface-auto"
    # the rule measured in research/results/faces_2026-12-06.md
    assert (auto.short.min_score, auto.zoom_out, auto.confirm_score, auto.confirm_iou) == (
        0.5, 2.0, 0.5, 0.5)
    noise = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    assert auto.faces(noise) == []
    face, _ = _drawn_face(1)
    frame = np.full((224, 400, 3), 90, np.uint8)
    frame[:, 100:324] = face
    assert [f.box for f in auto.faces(frame)] == [f.box for f in auto.full.faces(frame)] != []


class Scripted:
    """A stand-in for one BlazeFaceDetector inside AutoDetector: fixed faces per call kind,
    and a log of the calls (zoom_out, min_score)."""

    def __init__(self, faces: List[Face], zoomed: Optional[List[Face]] = None) -> None:
        self._faces, self._zoomed, self.calls = faces, zoomed or [], []
        self.min_score = 0.5

    def faces(self, image: np.ndarray, zoom_out: float = 1.0,
              min_score: Optional[float] = None) -> List[Face]:
        self.calls.append((zoom_out, min_score))
        return self._faces if zoom_out == 1.0 else self._zoomed


def test_auto_keeps_only_short_range_faces_the_zoomed_out_full_range_model_confirms() -> None:
    auto = detectors.AutoDetector.__new__(detectors.AutoDetector)  # models set below
    auto.zoom_out, auto.confirm_score, auto.confirm_iou = 2.0, 0.5, 0.5
    image = np.zeros((100, 100, 3), np.uint8)
    a, b = Face((0, 0, 50, 50), 0.7), Face((50, 50, 100, 100), 0.6)
    far = Face((2, 0, 52, 50), 0.55)  # IoU 0.92 with a, 0 with b
    auto.full, auto.short = Scripted([], [far]), Scripted([a, b])
    assert auto.faces(image) == [a]
    assert auto.full.calls == [(1.0, None), (2.0, 0.5)]
    auto.full, auto.short = Scripted([b]), Scripted([a])  # the full-range model found one
    assert auto.faces(image) == [b] and auto.short.calls == []
    auto.full, auto.short = Scripted([]), Scripted([])  # nothing: no zoomed-out run
    assert auto.faces(image) == [] and auto.full.calls == [(1.0, None)]
    auto.full, auto.short, auto.zoom_out = Scripted([], [far]), Scripted([a, b]), None
    assert auto.faces(image) == [a, b] and auto.full.calls == [(1.0, None)]  # no confirmation


def test_the_models_ship_inside_grefel() -> None:
    """No other package is needed for BlazeFace: its files are grefel's own."""
    folder = ROOT / "grefel" / "runtime" / "models"
    for name, file in [("blazeface", "face_detection_short_range.tflite"),
                       ("blazeface-full", "face_detection_full_range.tflite")]:
        assert detectors.blazeface_model_path(name) == folder / file
        assert BlazeFaceDetector(name, interpreter=detectors.OpenCVTFLite).model == folder / file


def test_every_packaged_model_is_in_the_notice_and_the_package_data() -> None:
    """Each .tflite of grefel/runtime/models is named in its NOTICE.md with its size and sha256
    (the licence record stays true), and pyproject's package data puts it in the wheel."""
    import fnmatch
    import hashlib

    tomllib = pytest.importorskip("tomllib")
    folder = ROOT / "grefel" / "runtime" / "models"
    notice = (folder / "NOTICE.md").read_text()
    files = sorted(folder.glob("*.tflite"))
    assert {"face_detection_short_range.tflite", "face_detection_full_range.tflite",
            "face_landmark.tflite"} <= {f.name for f in files}
    for f in files:
        data = f.read_bytes()
        row = f"| `{f.name}` | {len(data)} | `{hashlib.sha256(data).hexdigest()}` |"
        assert row in notice, row
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["grefel"]
    for f in [*files, folder / "NOTICE.md", folder / "LICENSE"]:
        rel = f.relative_to(ROOT / "grefel").as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), rel
    assert (folder / "LICENSE").read_text().lstrip().startswith("Apache License")


# --- decoding with made-up outputs ---------------------------------------------------------------


def test_ssd_anchor_counts_and_centres() -> None:
    short = ssd_anchors(128, (8, 16, 16, 16), 2)
    full = ssd_anchors(192, (4,), 1)
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    assert np.allclose(short[0], [0.5 / 16, 0.5 / 16]) and np.allclose(short[1], short[0])
    assert np.allclose(short[512], [0.5 / 8, 0.5 / 8])  # first cell of the 8 x 8 layers
    assert np.allclose(short[512:518], short[512])  # 6 anchors per cell (3 layers x 2)


def test_decode_blazeface_and_weighted_nms() -> None:
    anchors = ssd_anchors(128, (8, 16, 16, 16), 2)
    reg = np.zeros((896, 16), np.float32)
    logits = np.full(896, -10.0, np.float32)
    i = 600  # a stride-16 anchor
    reg[i, :4] = [6.4, -3.2, 32.0, 38.4]  # pixels of the 128 input
    reg[i, 4:] = np.arange(12) - 6.0
    logits[i] = 3.0
    reg[i + 1] = reg[i]  # the same cell's next anchor, 1.28 px to the right: merged by weight
    reg[i + 1, 0] += 1.28
    logits[i + 1] = 1.0
    (box, kps, score), = decode_blazeface(reg, logits, anchors, 128, 0.5)
    s1, s2 = 1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(-1.0))
    cx = anchors[i, 0] + (0.05 * s1 + 0.06 * s2) / (s1 + s2)
    cy = anchors[i, 1] - 0.025
    assert np.allclose(box, [cx - 0.125, cy - 0.15, cx + 0.125, cy + 0.15], atol=1e-6)
    assert np.isclose(score, s1)
    assert np.allclose(kps[0], anchors[i] + np.array([-6.0, -5.0]) / 128, atol=1e-6)
    assert decode_blazeface(reg, np.full(896, -1e9, np.float32), anchors, 128, 0.5) == []


class FakeInterpreter:
    """tf.lite.Interpreter's API (ai_edge_litert.interpreter.Interpreter): one face at a given
    place of the 128 px input; records the input it was given."""

    def __init__(self, path: Any = None, threads: Optional[int] = None, centre=(0.5, 0.5)):
        self.centre, self.inputs = centre, []
        self.anchors = ssd_anchors(128, (8, 16, 16, 16), 2)

    def allocate_tensors(self) -> None:
        pass

    def get_input_details(self) -> List[Dict[str, Any]]:
        return [{"index": 0, "shape": np.array([1, 128, 128, 3], np.int32)}]

    def get_output_details(self) -> List[Dict[str, Any]]:
        return [{"index": 1, "name": "regressors", "shape": np.array([1, 896, 16], np.int32)},
                {"index": 2, "name": "classificators", "shape": np.array([1, 896, 1], np.int32)}]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        assert value.dtype == np.float32 and value.shape == (1, 128, 128, 3)
        self.inputs.append(value)

    def invoke(self) -> None:
        pass

    def get_tensor(self, index: int) -> np.ndarray:
        a = int(np.argmin(np.linalg.norm(self.anchors - self.centre, axis=1)))
        if index == 2:
            out = np.full((1, 896, 1), -20.0, np.float32)
            out[0, a, 0] = 5.0
            return out
        out = np.zeros((1, 896, 16), np.float32)
        off = (np.array(self.centre) - self.anchors[a]) * 128
        out[0, a, :4] = [*off, 25.6, 25.6]  # a 0.2-wide box
        out[0, a, 4:] = np.tile(off, 6)
        return out


def test_blazeface_maps_the_letterbox_back_to_the_frame(tmp_path: Path) -> None:
    """A 200 x 400 frame is padded to 400 x 400: the input's centre is the frame's centre and
    the box 0.2 of the padded side (80 px); the input is scaled to [-1, 1]."""
    fake = FakeInterpreter()
    det = BlazeFaceDetector(model=tmp_path / "m.tflite", interpreter=lambda p, t: fake)
    frame = np.full((200, 400, 3), 255, np.uint8)
    (face,) = det.faces(frame)
    assert face.box == (160, 60, 240, 140)
    assert np.allclose(face.keypoints, [[200, 100]] * 6, atol=1e-3)
    x = fake.inputs[0]
    assert x.max() == 1.0 and x.min() == -1.0  # white frame, black padding


def test_blazeface_zoom_out_maps_back_to_the_frame(tmp_path: Path) -> None:
    """zoom_out 2: the 200 x 400 frame is centred in an 800 px square, so the fake's face (0.2
    of the input at its centre) is 160 px at the frame's centre."""
    fake = FakeInterpreter()
    det = BlazeFaceDetector(model=tmp_path / "m.tflite", interpreter=lambda p, t: fake)
    frame = np.full((200, 400, 3), 255, np.uint8)
    (face,) = det.faces(frame, zoom_out=2.0)
    assert face.box == (120, 20, 280, 180)
    assert np.allclose(face.keypoints, [[200, 100]] * 6, atol=1e-3)
    assert det.faces(frame, min_score=0.999) == []  # the fake's score is sigmoid(5) = 0.993
    with pytest.raises(ValueError, match="zoom_out must be >= 1"):
        det.faces(frame, zoom_out=0.5)


def test_a_missing_model_file_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, models: Dict[str, Path], tmp_path: Path
) -> None:
    """A broken install without the packaged file: every BlazeFace detector, `auto` included,
    is an error naming the file (never a silent switch to Haar); Haar runs when asked."""
    monkeypatch.setattr(detectors, "MODELS", tmp_path / "models")
    missing = str(tmp_path / "models" / "face_detection_full_range.tflite")
    for name in ("auto", "blazeface-full", "blazeface"):
        with pytest.raises(MissingDependency, match="missing from this grefel install"):
            make_detector(name)
    assert isinstance(make_detector("haar"), HaarDetector)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    res = CliRunner().invoke(cli, ["predict", str(image), "-w", str(models["onnx"])])
    assert res.exit_code == 1 and "Traceback" not in res.output
    (line,) = res.output.strip().splitlines()
    assert missing in line and "--detector haar" in line
    res = CliRunner().invoke(cli, ["predict", str(image), "-w", str(models["onnx"]),
                                   "--detector", "haar"])
    assert res.exit_code == 0 and "detector haar" in res.output


def test_runtime_order_litert_then_opencv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    made: List[Any] = []

    class Module:
        class Interpreter(FakeInterpreter):
            def __init__(self, model_path: str, num_threads: Optional[int] = None) -> None:
                super().__init__()
                made.append((model_path, num_threads))

    def fake_require(name: str) -> Any:
        if name == "ai_edge_litert.interpreter":
            return Module
        raise MissingDependency(name)

    monkeypatch.setattr(detectors, "require", fake_require)
    interp = detectors.tflite_interpreter(tmp_path / "m.tflite", 2)
    assert isinstance(interp, Module.Interpreter) and made == [(str(tmp_path / "m.tflite"), 2)]

    def none(name: str) -> Any:
        if name == "cv2":
            return cv2
        raise MissingDependency(name)

    monkeypatch.setattr(detectors, "require", none)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="OpenCV cannot read this TFLite model"):
        detectors.tflite_interpreter(bad)


def test_detector_bench_counts_one_face_photos(tmp_path: Path) -> None:
    """research.detectors --one-face: the face is the detection covering the photo's centre,
    every other detection a false positive; the sample is drawn with its seed, sorted."""
    from research.detectors import evaluate_one_face, one_face_sample

    centre, corner = Face((20, 20, 80, 60), 0.9), Face((0, 0, 10, 10), 0.6)
    found = {10: [centre], 20: [corner], 30: [centre, corner], 40: []}
    for value in found:
        cv2.imwrite(str(tmp_path / f"{value}.png"), np.full((80, 100, 3), value, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")

    class ByValue:
        def faces(self, image: np.ndarray) -> List[Face]:
            return found[int(image[0, 0, 0])]

    three = one_face_sample(tmp_path, 3, seed=0)
    assert three == one_face_sample(tmp_path, 3, seed=0) == sorted(three) and len(three) == 3
    files = one_face_sample(tmp_path, 0, seed=0)
    assert [f.name for f in files] == ["10.png", "20.png", "30.png", "40.png"]
    r = evaluate_one_face(ByValue(), files, tmp_path)
    assert (r["images"], r["found"], r["false_positives"], r["images_with_false_positives"]) == (
        4, 2, 2, 2)
    assert r["missed"] == ["20.png", "40.png"]
    assert [row["photo"] for row in r["false_positive_rows"]] == ["20.png", "30.png"]


def test_no_tflite_runtime_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OpenCV older than 4.8 (JetPack 5's apt build) and no LiteRT / tflite-runtime: `auto`
    says what to install or to use Haar (it no longer falls back to Haar by itself)."""
    from types import SimpleNamespace

    old_cv2 = SimpleNamespace(__version__="4.5.4", dnn=SimpleNamespace())

    def fake_require(name: str) -> Any:
        if name == "cv2":
            return old_cv2
        raise MissingDependency(name)

    monkeypatch.setattr(detectors, "require", fake_require)
    with pytest.raises(MissingDependency, match="OpenCV 4.5.4 cannot read .tflite") as err:
        make_detector("auto")
    assert "pip install '.[faces]'" in str(err.value) and "--detector haar" in str(err.value)
    assert "\n" not in str(err.value)


# --- alignment -----------------------------------------------------------------------------------


def test_similarity_transform_recovers_a_known_one() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    a, s, t = np.radians(23.0), 1.7, np.array([-12.0, 40.0])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = src @ (s * rot).T + t
    m = contract.similarity_transform(src, dst)
    assert np.allclose(m[:, :2], s * rot, atol=1e-9) and np.allclose(m[:, 2], t, atol=1e-7)
    mirrored = dst * [-1, 1]  # a reflection is not a similarity: no exact fit, det > 0
    assert np.linalg.det(contract.similarity_transform(src, mirrored)[:, :2]) > 0
    with pytest.raises(ValueError, match="coincide"):
        contract.similarity_transform(np.ones((5, 2)), dst)


@pytest.mark.parametrize("scale, points", [(0.6, 5), (3.1, 5), (5.0, 4)])
def test_align_face_puts_keypoints_on_the_template(scale: float, points: int) -> None:
    """Dots drawn where a rotated, scaled template lands in a big image come out at the
    template's places in the 112 px crop (also through the >2x box reduction)."""
    tmpl = contract.align_template(points)
    a = np.radians(-17.0)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = (tmpl - 56) @ (scale * rot).T + [300, 260]
    image = np.zeros((520, 640, 3), np.uint8)
    r = max(int(3 * scale), 2)
    for x, y in pts:  # continuous coordinates: pixel i spans [i, i + 1), OpenCV's centre i
        centre = (int(round((x - 0.5) * 16)), int(round((y - 0.5) * 16)))
        cv2.circle(image, centre, r * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
    out = contract.align_face(image, pts)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    grey = out[..., 0].astype(float)
    for x, y in tmpl:
        yy, xx = np.mgrid[int(y) - 5 : int(y) + 6, int(x) - 5 : int(x) + 6]
        w = grey[yy, xx]
        assert w.sum() > 0
        cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
        assert abs(cx + 0.5 - x) < 1.0 and abs(cy + 0.5 - y) < 1.0, (x, y, cx, cy)


def test_align_margin_shrinks_the_face_toward_the_centre() -> None:
    t0, t1 = contract.align_template(5), contract.align_template(5, margin=0.25)
    assert np.allclose((t1 - 56) * 1.5, t0 - 56)
    with pytest.raises(ValueError):
        contract.align_template(6)


# --- the pipeline --------------------------------------------------------------------------------


class CountingBackend:
    """Wraps an opened backend and counts its calls (batch sizes)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls, self.classes = inner, [], inner.classes

    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        self.calls.append(len(batch))
        return self.inner.infer(batch)


class BoxesDetector:
    """A detector with the `faces` API giving fixed faces (keypoints optional)."""

    name = "fixed"

    def __init__(self, faces: List[Face]) -> None:
        self._faces = faces

    def faces(self, image: np.ndarray) -> List[Face]:
        return [Face(f.box, f.score, f.keypoints) for f in self._faces]


def test_pipeline_process_aligns_with_keypoints_and_takes_boxes(
    models: Dict[str, Path],
) -> None:
    image, lm = _drawn_face(1)
    kp = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    with open_backend(models["onnx"]) as inner:
        backend = CountingBackend(inner)
        pipe = Pipeline(backend, detector=BoxesDetector([Face((40, 50, 180, 200), 0.9, kp)]))
        (face,) = pipe.process(image)
        assert face.aligned and face.face and face.track == 0 and backend.calls == [1]
        assert face.label in CLASSES and abs(sum(face.probs.values()) - 1) < 1e-4
        expect = inner.infer(contract.to_model_input(contract.align_face(image, kp))[None])
        assert np.allclose(list(face.primary.values()), expect["primary"][0], atol=1e-5)
        # boxes from another detector: two faces, square crops, one backend call
        faces = pipe.process(image, boxes=[(0, 0, 100, 100), (100, 100, 224, 224)])
        assert [f.aligned for f in faces] == [False, False] and backend.calls[-1] == 2
        assert [f.box for f in faces] == [(0, 0, 100, 100), (100, 100, 224, 224)]
        rec = faces[0].record("cam", 3)
        assert rec["frame"] == 3 and rec["keypoints"] is None and rec["face"] is True


def test_pipeline_without_a_face_classifies_nothing(models: Dict[str, Path]) -> None:
    """No face, no expression: a frame whose detector finds nothing (or given `boxes=[]`) gets
    one result with face False and no box, label or probabilities, and is not sent to the
    backend, alone or beside a frame with a face; the track of a face that comes back after a
    faceless frame is a new one (tracks match the previous frame's faces)."""
    image, _ = _drawn_face(1)
    found = {"faces": [Face((40, 50, 180, 200), 0.9, None)]}

    class Scripted(BoxesDetector):
        def faces(self, image: np.ndarray) -> List[Face]:
            return list(found["faces"])

    with open_backend(models["onnx"]) as inner:
        backend = CountingBackend(inner)
        pipe = Pipeline(backend, detector=Scripted([]))
        assert pipe.process(image, source="v")[0].track == 0
        found["faces"] = []
        (none,) = pipe.process(image, source="v")
        assert none == FaceResult.no_face() and backend.calls == [1]
        assert none.record("v", 1) == {
            "source": "v", "frame": 1, "face": False, "track": None, "box": None,
            "keypoints": None, "aligned": False, "label": None, "confidence": None,
            "uncertain": None, "probs": None, "primary": None}
        found["faces"] = [Face((40, 50, 180, 200), 0.9, None)]
        assert pipe.process(image, source="v")[0].track == 1
        mixed = pipe.process_many([(image, "a", [], None), (image, "b", None, None)])
        assert [[f.face for f in faces] for faces in mixed] == [[False], [True]]
        assert backend.calls[-1] == 1  # only the face of the second frame
        assert mixed[1][0].label in CLASSES and mixed[0][0].label is None


def test_pipeline_det_every_follows_a_moving_face(models: Dict[str, Path]) -> None:
    """Detect on frames 0 and 3 only; in between the face is followed as it moves 6 px/frame."""
    face, _ = _drawn_face(2, size=112)
    state = {"frame": 0, "calls": 0}

    class Moving(BoxesDetector):
        def faces(self, image: np.ndarray) -> List[Face]:
            state["calls"] += 1
            x = 20 + 6 * state["frame"]
            return [Face((x, 30, x + 112, 142), 1.0, None)]

    with open_backend(models["onnx"]) as backend:
        pipe = Pipeline(backend, detector=Moving([]), det_every=3)
        boxes = []
        for i in range(5):
            state["frame"] = i
            frame = np.full((200, 300, 3), 60, np.uint8)
            frame[30:142, 20 + 6 * i : 132 + 6 * i] = face
            (res,) = pipe.process(frame, source="v")
            boxes.append(res.box)
    assert state["calls"] == 2  # frames 0 and 3
    for i, b in enumerate(boxes):
        assert abs(b[0] - (20 + 6 * i)) <= 2 and abs(b[1] - 30) <= 2, (i, b)


def test_face_follower_keeps_keypoints_with_the_box() -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    f = FaceFollower(side=320)
    f.reset(img, [Face((100, 80, 160, 140), 1.0, np.array([[120.0, 100.0]]))])
    moved = np.roll(img, (7, -5), axis=(0, 1))
    (out,) = f.follow(moved)
    assert out.box == (95, 87, 155, 147) and np.allclose(out.keypoints, [[115.0, 107.0]])


def test_tracks_do_not_depend_on_smoothing() -> None:
    tr = Tracker(smooth=0.0)
    p = np.array([[0.2, 0.8]], np.float32)
    assert tr.update("v", [(0, 0, 10, 10)], p)[0] == [0]
    ids, out = tr.update("v", [(1, 0, 11, 10)], p[:, ::-1].copy())
    assert ids == [0] and np.allclose(out, [[0.8, 0.2]])  # same track, nothing smoothed


def _video(path: Path, frames: int = 6) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    rng = np.random.default_rng(1)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    writer.release()
    return path


def test_predict_smooth_zero_still_tracks(models: Dict[str, Path], tmp_path: Path) -> None:
    """`--smooth 0` used to switch tracking off (every track null). The noise frames have no
    face: --aligned makes each frame the face (no face, no expression, no track otherwise)."""
    video = _video(tmp_path / "v.avi")
    res = CliRunner().invoke(cli, ["predict", str(video), "-w", str(models["onnx"]),
                                   "--smooth", "0", "--aligned", "--max-frames", "3"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [r["track"] for r in recs] == [0, 0, 0]


def test_records_of_a_frame_are_written_before_the_next_is_read(
    models: Dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The source checks, before yielding frame k, that k frames' records were flushed; with
    --batch-frames 3 the backend gets 3 frames per call instead. (The noise frames have no
    face: `aligned` makes each frame the face, so each is classified.)"""
    video = _video(tmp_path / "v.avi")
    seen: List[int] = []

    class Stream(io.StringIO):
        flushed = 0

        def flush(self) -> None:
            self.flushed = self.getvalue().count("\n")

    out = Stream()
    real = sources.iter_source

    def checking(src: str, max_frames: Optional[int] = None, **kw: Any):
        for k, item in enumerate(real(src, max_frames, **kw)):
            seen.append(out.flushed)
            assert out.flushed == k
            yield item

    monkeypatch.setattr("grefel.predict.iter_source", checking)
    with open_backend(models["onnx"]) as inner:
        backend = CountingBackend(inner)
        writer = RecordWriter(out, "jsonl", backend.classes)
        opts = PredictOptions(aligned=True)
        summary = stream_predictions(str(video), backend, writer, opts=opts)  # type: ignore
        assert seen == [0, 1, 2, 3, 4, 5] and backend.calls == [1] * 6
        assert summary.frames == 6 and summary.fps > 0
        assert set(summary.stages_ms) == {"decode", "detect", "align", "infer", "post"}
        assert all(v >= 0 for v in summary.stages_ms.values())
        monkeypatch.setattr("grefel.predict.iter_source", real)
        backend.calls.clear()
        opts = PredictOptions(aligned=True, batch_frames=3)
        stream_predictions(str(video), backend, RecordWriter(io.StringIO(), "jsonl",
                                                             backend.classes), opts=opts)
        assert backend.calls == [3, 3]


def test_predict_json_has_stage_times(models: Dict[str, Path], tmp_path: Path) -> None:
    video = _video(tmp_path / "v.avi")
    summary = tmp_path / "s.json"
    res = CliRunner().invoke(cli, ["predict", str(video), "-w", str(models["onnx"]),
                                   "--detector", "haar", "--det-every", "2", "--json",
                                   str(summary), "--out", str(tmp_path / "r.jsonl")])
    assert res.exit_code == 0, res.output
    info = json.loads(summary.read_text())
    assert info["frames"] == 6 and info["detector"] == "haar" and info["fps"] > 0
    assert set(info["stages_ms_per_frame"]) == {"decode", "detect", "align", "infer", "post"}
    assert "ms per frame" in res.output


def test_stream_sources_and_show_fail_clearly(
    models: Dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert sources.source_kind("rtsp://cam.local:554/s") == "stream"
    assert sources.source_kind("HTTP://cam.local/video.mjpg") == "stream"
    assert sources.source_kind("videotestsrc ! videoconvert ! appsink") == "gstreamer"
    opened = []

    class Cap:
        def __init__(self, target: Any, api: Any = None) -> None:
            opened.append((target, api))

        def isOpened(self) -> bool:
            return False

        def release(self) -> None:
            pass

    class FakeCv2:
        CAP_FFMPEG, CAP_GSTREAMER = 1900, 1800
        VideoCapture = Cap

    monkeypatch.setattr(sources, "require", lambda name: FakeCv2)
    with pytest.raises(sources.SourceError, match="cannot open the stream"):
        list(sources.iter_source("rtsp://cam.local:554/s"))
    with pytest.raises(sources.SourceError, match="GStreamer"):
        list(sources.iter_source("videotestsrc ! appsink"))
    assert opened == [("rtsp://cam.local:554/s", 1900), ("videotestsrc ! appsink", 1800)]
    monkeypatch.undo()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    res = CliRunner().invoke(cli, ["predict", str(_video(tmp_path / "v.avi")), "-w",
                                   str(models["onnx"]), "--detector", "haar", "--show"])
    assert res.exit_code == 1 and "--show: no display" in res.output
    assert "Traceback" not in res.output


def test_annotation_label_scales_with_the_frame(tmp_path: Path) -> None:
    from grefel.predict import Annotator
    from grefel.runtime.sources import Frame

    def label_height(h: int, w: int) -> int:
        ann = Annotator(tmp_path / "x.png", str(ROOT / "README.md"))
        x1, y1 = w // 4, h // 3
        rec = {"box": [x1, y1, w // 2, 2 * h // 3], "face": True, "uncertain": True,
               "track": 7, "label": "happiness", "confidence": 0.2, "keypoints": None}
        img = ann.render(Frame("f", 0, np.zeros((h, w, 3), np.uint8), 0.0), [rec])
        orange = np.all(img[: y1 - 4, x1 + 1] == (0, 165, 255), axis=1)  # label background
        return int(orange.sum())

    small, big = label_height(240, 320), label_height(1080, 1920)
    assert small >= 8 and big >= 2 * small


def test_bench_source_records_pipeline_rows(models: Dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import functools

    import grefel.progress

    # progress on every frame of a pipeline row (plain lines every 10 s in real use)
    monkeypatch.setattr(grefel.progress.Progress, "__init__", functools.partialmethod(
        grefel.progress.Progress.__init__, every=0.0))
    video = _video(tmp_path / "v.avi", frames=4)
    res = CliRunner().invoke(cli, ["bench", "--weights", str(models["onnx"]), "--source",
                                   str(video), "--detectors", "haar", "--det-every", "1,2",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("bench_*.json")]
    rows = record["pipeline"]
    assert [(r["detector"], r["det_every"], r["status"]) for r in rows] == [
        ("haar", 1, "ok"), ("haar", 2, "ok")]
    assert all(r["frames"] == 4 and r["fps"] > 0 for r in rows)
    assert set(rows[0]["stages_ms"]) == {"decode", "detect", "align", "infer", "post"}
    md = next((tmp_path / "out").glob("bench_*.md")).read_text()
    assert "## Pipeline (end to end)" in md and "| tiny.onnx | onnx | haar | 2 |" in md
    lines = [ln.split(",")[0] for ln in res.output.splitlines() if ln.startswith("bench tiny")]
    assert lines == [f"bench tiny.onnx haar det_every={e}: {i} frames" for e in (1, 2)
                     for i in range(1, 5)]


def test_low_memory_onnx_gives_the_same_outputs(models: Dict[str, Path]) -> None:
    x = np.random.default_rng(0).random((2, 3, 112, 112)).astype(np.float32)
    with open_backend(models["onnx"], device="cpu") as a, \
            open_backend(models["onnx"], device="cpu", low_memory=True) as b:
        assert b.low_memory and not a.low_memory
        pa, pb = a.infer(x)["probs"], b.infer(x)["probs"]
    assert np.abs(pa - pb).max() < 1e-5
