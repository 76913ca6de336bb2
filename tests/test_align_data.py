"""`grefel train` / `grefel eval --align-faces detect` (issue 14 item 2): dataset images are
detected and aligned by the code `grefel predict` runs on a still image, once, through a cache.

The dataset is made on the fly: SynthFER faces pasted at different places and scales into larger
noisy frames, and frames without a face. The detector is a fake with the real detector API
(`name`, `faces(rgb) -> [Face]`) that knows where each frame's face was pasted (by the frame's
pixels) and counts its calls; nothing depends on an installed face detector.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from grefel import contract, pipeline
from grefel.align_data import AlignError, align_samples
from grefel.checkpoint import read_meta, save_checkpoint
from grefel.cli import cli
from grefel.config import DataConfig, FaceAlignment, GReFELConfig, TrainConfig
from grefel.data import load_samples
from grefel.model.grefel import GReFEL
from grefel.pipeline import Pipeline
from grefel.predict import PredictOptions, RecordWriter, stream_predictions
from grefel.runtime.base import Backend
from grefel.runtime.detectors import Face

CLASSES = ("neutral", "happiness", "sadness")
# (frame height, width, face side, x, y, keypoints?) per image; None: no face in the frame
LAYOUT = [(240, 320, 150, 20, 40, True), (260, 300, 96, 180, 120, True),
          (200, 360, 120, 230, 10, True), (240, 240, 110, 60, 70, False), None, None]


def _key(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


class PastedFaces:
    """A detector with the real API that finds the faces this test pasted: it looks the frame's
    pixels up; a frame it does not know has no face. Counts its calls."""

    name = "pasted"

    def __init__(self) -> None:
        self.known: Dict[str, List[Face]] = {}
        self.calls = 0

    def faces(self, image: np.ndarray) -> List[Face]:
        self.calls += 1
        return [Face(f.box, f.score, None if f.keypoints is None else f.keypoints.copy())
                for f in self.known.get(_key(image), [])]

    def detect(self, image: np.ndarray) -> List[Tuple[int, int, int, int]]:
        return [f.box for f in self.faces(image)]


def _face(seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A 112 px SynthFER face and its 5 alignment points (eye centres, nose tip, mouth corners)."""
    from grefel.data.faces import _EXPRESSIONS, make_identity, render_face

    rng = np.random.default_rng(seed)
    img, lm, _ = render_face(rng, make_identity(rng), list(_EXPRESSIONS)[seed % 7], size=112,
                             difficulty=0.0)
    five = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    return np.asarray(img), five


def make_unaligned(root: Path, detector: PastedFaces) -> Path:
    """A csv-layout dataset (train, val, test: the same six frames) of unaligned photos."""
    rng = np.random.default_rng(7)
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rows = []
    for i, spec in enumerate(LAYOUT):
        h, w = (spec[0], spec[1]) if spec else (180, 250)
        frame = (rng.random((h, w, 3)) * 80 + 60).astype(np.uint8)
        if spec:
            _, _, side, x, y, with_kp = spec
            face, five = _face(i)
            frame[y:y + side, x:x + side] = np.asarray(
                Image.fromarray(face).resize((side, side), Image.Resampling.BILINEAR))
            kp = five * (side / 112.0) + [x, y] if with_kp else None
            detector.known[_key(frame)] = [Face((x, y, x + side, y + side), 0.9, kp)]
        Image.fromarray(frame).save(root / "images" / f"{i}.png")
        rows.append([f"images/{i}.png", CLASSES[i % 3]])
    for split in ("train", "val", "test"):
        with open(root / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([["path", "label"], *rows])
    return root


class Recording(Backend):
    """A backend that records the batches `grefel predict` feeds it (uniform outputs)."""

    name = "recording"

    def _open(self) -> None:
        self.classes, self.batches = CLASSES, []

    def _close(self) -> None:
        pass

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        self.batches.append(batch.copy())
        p = np.full((len(batch), len(CLASSES)), 1.0 / len(CLASSES), np.float32)
        return {"probs": p, "primary": p, "confidence": np.zeros(len(batch), np.float32)}


@pytest.fixture()
def dataset(tmp_path: Path) -> Tuple[Path, PastedFaces]:
    det = PastedFaces()
    return make_unaligned(tmp_path / "photos", det), det


def _predict_inputs(path: str, detector: Any) -> np.ndarray:
    """The first face's input `grefel predict IMAGE` gives the backend (float32 (3, 112, 112)).
    Where predict finds no face it classifies nothing (no face, no expression): then the whole
    image, resized, which the dataset path scores a labelled image by (`_Prepared`)."""
    with Recording() as backend:
        out = io.StringIO()
        stream_predictions(path, backend, RecordWriter(out, "jsonl", CLASSES), PredictOptions(),
                           detector=detector)
        if json.loads(out.getvalue().splitlines()[0])["face"]:
            return backend.batches[0][0]
        assert backend.batches == [], "a frame without a face was classified"
        return contract.to_model_input(contract.resize(contract.decode_image(path)))


def test_cache_holds_the_crops_predict_feeds(dataset, tmp_path: Path) -> None:
    root, det = dataset
    samples, _ = load_samples(root, "csv", "train")
    aligned = align_samples(samples, FaceAlignment(mode="detect"), tmp_path / "cache",
                            detector=det)
    for i, s in enumerate(samples):
        crop = aligned(i)
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        expect = _predict_inputs(s.path, det)
        assert np.allclose(contract.to_model_input(crop), expect, atol=1e-6), s.path
    r = aligned.report()
    assert (r["images"], r["faces"], r["aligned"], r["square_crops"], r["no_face"]) == (
        6, 4, 3, 1, 2)
    assert (r["computed"], r["reused"], r["unreadable"], r["detector"]) == (6, 0, 0, "pasted")
    assert "2 without a face (whole image)" in aligned.describe("train")
    settings = json.loads((aligned.folder / "settings.json").read_text())
    assert settings["detector"] == "pasted" and settings["margin"] is None


def test_cache_is_reused_and_a_changed_setting_or_image_is_aligned_again(
    dataset, tmp_path: Path
) -> None:
    root, det = dataset
    samples, _ = load_samples(root, "csv", "train")
    cache = tmp_path / "cache"
    first = align_samples(samples, FaceAlignment(mode="detect"), cache, detector=det)
    assert det.calls == 6
    again = align_samples(samples, FaceAlignment(mode="detect"), cache, detector=det)
    assert det.calls == 6 and (again.computed, again.reused) == (0, 6)
    assert again.folder == first.folder and again.report()["no_face"] == 2
    assert all(np.array_equal(first(i), again(i)) for i in range(6))
    wider = align_samples(samples, FaceAlignment(mode="detect", margin=0.3), cache, detector=det)
    assert det.calls == 12 and wider.folder != first.folder and wider.computed == 6
    assert not np.array_equal(wider(0), first(0))  # the margin shrinks the face
    square = align_samples(samples, FaceAlignment(mode="detect", align=False), cache,
                           detector=det)  # --no-align: square crops around the boxes
    assert det.calls == 18 and square.folder not in (first.folder, wider.folder)
    assert (square.report()["aligned"], square.report()["square_crops"]) == (0, 4)
    edited = np.asarray(Image.open(samples[4].path)).copy()
    edited[0, 0] = 255 - edited[0, 0]
    Image.fromarray(edited).save(samples[4].path)
    third = align_samples(samples, FaceAlignment(mode="detect"), cache, detector=det)
    assert det.calls == 19 and (third.computed, third.reused) == (1, 5)


def test_a_long_alignment_reports_its_progress(dataset, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The first alignment of a real set takes minutes: a line every PROGRESS_EVERY seconds
    (here 0: before every image) says how far it is."""
    import grefel.align_data as align_data

    root, det = dataset
    samples, _ = load_samples(root, "csv", "train")
    monkeypatch.setattr(align_data, "PROGRESS_EVERY", 0.0)
    lines: List[str] = []
    align_samples(samples, FaceAlignment(mode="detect"), tmp_path / "c", detector=det,
                  progress=lines.append)
    assert len(lines) == 6
    assert lines[0].startswith("aligning faces: 0/6 images (0 detected, 0 from the cache)")
    assert lines[-1].startswith("aligning faces: 5/6 images (5 detected, 0 from the cache)")


def test_unreadable_images_are_counted_and_raise_when_read(dataset, tmp_path: Path) -> None:
    from grefel.data import DatasetError

    root, det = dataset
    (root / "images" / "5.png").write_bytes(b"not a png")
    samples, _ = load_samples(root, "csv", "train")
    aligned = align_samples(samples, FaceAlignment(mode="detect"), tmp_path / "c", detector=det)
    assert aligned.report()["unreadable"] == 1 and aligned.report()["images"] == 6
    with pytest.raises(DatasetError, match="5.png: not a decodable image"):
        aligned(5)


def test_pipeline_without_a_backend_prepares_faces_only(dataset) -> None:
    root, det = dataset
    image = contract.decode_image(root / "images" / "0.png")
    pipe = Pipeline(None, detector=det, track=False)
    prep = pipe.prepare(image, "x", None, None)
    assert prep.found and prep.aligned == [True] and prep.crops[0].shape == (112, 112, 3)
    assert np.array_equal(prep.inputs[0], contract.to_model_input(prep.crops[0]))
    with pytest.raises(ValueError, match="without a backend"):
        pipe.finish([prep])


def test_an_unknown_or_missing_detector_is_an_align_error(
    dataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from grefel.runtime import detectors

    samples, _ = load_samples(dataset[0], "csv", "train")
    with pytest.raises(AlignError, match="unknown face detector 'yolo'"):
        align_samples(samples, FaceAlignment(mode="detect", detector="yolo"))

    monkeypatch.setattr(detectors, "MODELS", tmp_path)  # an install without the model files
    with pytest.raises(AlignError, match="missing from this grefel install"):
        align_samples(samples, FaceAlignment(mode="detect", detector="blazeface"))


# --- the commands ----------------------------------------------------------------------------


@pytest.fixture()
def patched(dataset, monkeypatch: pytest.MonkeyPatch) -> Tuple[Path, PastedFaces]:
    """The dataset, with the fake standing in for every detector the pipeline makes by name."""
    root, det = dataset
    monkeypatch.setattr(pipeline, "make_detector", lambda name, threads=None: det)
    return root, det


def _checkpoint(path: Path, face_alignment: Optional[Dict[str, Any]] = None) -> Path:
    cfg = GReFELConfig.preset("tiny", num_classes=len(CLASSES), class_names=CLASSES)
    return save_checkpoint(path, GReFEL(cfg).eval(), face_alignment=face_alignment)


def test_eval_align_faces_records_settings_and_no_face_count(patched, tmp_path: Path) -> None:
    root, det = patched
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    args = ["eval", str(ckpt), "--data", str(root), "--dataset", "csv", "--device", "cpu",
            "--align-faces", "detect", "--detector", "haar", "--align-cache",
            str(tmp_path / "cache"), "--out", str(tmp_path / "ev")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "faces found / without a face" in res.output and "4 / 2" in res.output
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    a = report["alignment"]
    assert (a["mode"], a["detector"], a["detector_requested"], a["no_face"]) == (
        "detect", "pasted", "haar", 2)
    assert a["det_size"] == FaceAlignment.det_size and a["min_face"] == FaceAlignment.min_face
    res = CliRunner().invoke(cli, args[:-1] + [str(tmp_path / "ev2")])
    assert res.exit_code == 0 and det.calls == 6  # the second eval read the cache
    plain = CliRunner().invoke(cli, args[:8] + ["--out", str(tmp_path / "ev3")])
    assert plain.exit_code == 0, plain.output
    assert json.loads((tmp_path / "ev3" / "metrics.json").read_text())["alignment"] == {
        "mode": "off"}


def test_eval_notes_a_model_trained_on_faces_prepared_otherwise(patched, tmp_path: Path) -> None:
    root, _ = patched
    trained = {"mode": "detect", "detector": "pasted", "det_size": 640, "align": True,
               "margin": None, "min_face": 16}
    ckpt = _checkpoint(tmp_path / "m.safetensors", face_alignment=trained)
    args = ["eval", str(ckpt), "--data", str(root), "--dataset", "csv", "--device", "cpu",
            "--out", str(tmp_path / "ev")]
    align = ["--align-faces", "detect", "--align-cache", str(tmp_path / "cache")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "was trained on faces prepared otherwise than this eval's (training vs eval: mode " \
           "'detect' vs 'off')" in res.output
    res = CliRunner().invoke(cli, args + align)
    assert res.exit_code == 0 and "prepared otherwise" not in res.output, res.output
    res = CliRunner().invoke(cli, args + align + ["--margin", "0.3"])
    assert "(training vs eval: margin None vs 0.3)" in res.output, res.output
    plain = _checkpoint(tmp_path / "old.safetensors")  # a sidecar without face_alignment
    res = CliRunner().invoke(cli, [*args[:1], str(plain), *args[2:]])
    assert res.exit_code == 0 and "prepared otherwise" not in res.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())[
        "trained_face_alignment"] is None


def test_train_align_faces_records_alignment(patched, tmp_path: Path) -> None:
    root, det = patched
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, [
        "train", "--data", str(root), "--dataset", "csv", "--out", str(out), "--epochs", "1",
        "--batch-size", "3", "--device", "cpu", "--preset", "tiny", "--precise-bn", "0",
        "--align-faces", "detect", "--align-cache", str(tmp_path / "cache"), "--min-face", "20"])
    assert res.exit_code == 0, res.output
    assert "split 'train': 6 images aligned by pasted" in res.output
    assert "2 without a face (whole image)" in res.output
    summary = json.loads(res.stdout[res.stdout.index("{\n"):])
    assert summary["alignment"]["train"]["no_face"] == 2
    assert summary["alignment"]["val"]["reused"] == 6  # the same files: aligned once
    assert json.loads((out / "alignment.json").read_text()) == summary["alignment"]
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["face"]["mode"] == "detect" and config["data"]["face"]["min_face"] == 20
    face = read_meta(out / "best.safetensors")["preprocessing"]["face_alignment"]
    assert (face["mode"], face["detector"], face["min_face"]) == ("detect", "pasted", 20)
    assert det.calls == 6


def test_bad_alignment_options_are_one_line(dataset, tmp_path: Path) -> None:
    root, _ = dataset
    runner = CliRunner()
    base = ["train", "--data", str(root), "--out", str(tmp_path / "r"), "--device", "cpu"]
    for extra, message in (
        (["--align-faces", "sideways"], "Invalid value for '--align-faces': 'sideways' is not"),
        (["--margin", "0.3"], "--margin: face alignment settings, but --align-faces auto is "
                              "off for a csv dataset (faces as given)"),
        (["--align-faces", "off", "--margin", "0.3"], "--margin: face alignment settings, used "
                                                      "with --align-faces detect or auto (it is "
                                                      "off)"),
        (["--set", "data.align_faces=sideways"], "align_faces must be one of auto, off, detect, "
                                                 "got 'sideways'"),
        (["--align-faces", "detect", "--margin", "-1"], "Invalid value for '--margin'"),
    ):
        res = runner.invoke(cli, base + extra)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        (line,) = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
        assert message in line, res.output
    res = runner.invoke(cli, ["eval", str(tmp_path / "m.safetensors"), "--data", str(root),
                              "--detector", "haar"])
    assert res.exit_code == 2 and "--detector: face alignment settings" in res.output


def test_a_run_saved_before_alignment_resumes(tmp_path: Path) -> None:
    """config.json of a run from before the alignment settings: they take their defaults."""
    from grefel.train import _check_out

    out = tmp_path / "run"
    out.mkdir()
    (out / "last.state.pt").write_bytes(b"")
    d, t = DataConfig(root="x"), TrainConfig(out=str(out), resume=True)
    now = {"model": {}, "data": json.loads(json.dumps(dataclasses.asdict(d))),
           "train": json.loads(json.dumps(dataclasses.asdict(t)))}
    saved = json.loads(json.dumps(now))
    for key in [k for k in saved["data"] if k.startswith(("align_", "face"))]:
        del saved["data"][key]
    (out / "config.json").write_text(json.dumps(saved))
    assert _check_out(out, t, now) == {}
    moved = DataConfig(root="x", align_cache=str(tmp_path / "c"))
    now["data"] = json.loads(json.dumps(dataclasses.asdict(moved)))
    assert _check_out(out, t, now) == {"data.align_cache": ["", str(tmp_path / "c")]}


def test_real_blazeface_crops_are_what_predict_feeds(dataset, tmp_path: Path) -> None:
    """With the real BlazeFace full-range model (the file inside grefel, run by OpenCV's TFLite
    reader)."""
    from grefel.runtime.detectors import BlazeFaceDetector, OpenCVTFLite

    det = BlazeFaceDetector("blazeface-full", interpreter=OpenCVTFLite)
    samples, _ = load_samples(dataset[0], "csv", "train")
    aligned = align_samples(samples, FaceAlignment(mode="detect"), tmp_path / "cache",
                            detector=det)
    r = aligned.report()
    assert (r["detector"], r["faces"], r["aligned"], r["no_face"]) == ("blazeface-full", 4, 4, 2)
    for i, s in enumerate(samples):
        expect = _predict_inputs(s.path, det)
        assert np.allclose(contract.to_model_input(aligned(i)), expect, atol=1e-6), s.path
