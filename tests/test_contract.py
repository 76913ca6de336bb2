"""grefel.contract: one decode / crop / resize for every path, the pixel limit, the sidecar, opset.

The parity tests feed the same files (448 px, EXIF-rotated, RGBA, 16-bit, CMYK, palette, grey)
through the dataset path (`FERDataset`, as `grefel eval` reads them) and through predict (the
tensor handed to the backend by `grefel predict --aligned`), and compare `grefel eval` accuracy
with the accuracy of `grefel predict --aligned` labels on a random-init tiny checkpoint.
"""

from __future__ import annotations

import csv
import json
import struct
import sys
import zlib
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import test_runtime as rt  # the model files (same module object as pytest's)
from click.testing import CliRunner
from PIL import Image

from grefel import contract
from grefel.cli import cli
from grefel.data import FERDataset, load_samples
from grefel.data.faces import make_identity, render_face
from grefel.predict import PredictOptions, RecordWriter, stream_predictions
from grefel.runtime.base import Backend, Outputs

CLASSES = ("neutral", "happiness", "sadness")
models = rt.models
SIDE = 448


def _face(seed: int, h: int = SIDE, w: int = SIDE) -> np.ndarray:
    """A drawn face at 448 px (RGB uint8), cropped to (h, w)."""
    rng = np.random.default_rng(seed)
    img, _, _ = render_face(rng, make_identity(rng), CLASSES[seed % 3], size=SIDE)
    return np.asarray(img)[:h, :w].copy()


def _write_variants(folder: Path) -> Dict[str, np.ndarray]:
    """Files of every kind the contract converts -> the upright RGB image each must decode to."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: Dict[str, np.ndarray] = {}
    plain = _face(0)
    Image.fromarray(plain).save(folder / "a_plain.png")
    expected["a_plain.png"] = plain

    upright = _face(1, h=SIDE, w=336)  # not square: a missed rotation changes the shape
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(folder / "b_exif.png", exif=exif.tobytes())
    expected["b_exif.png"] = upright

    rgb = _face(2)
    alpha = np.tile(np.linspace(0, 255, SIDE).astype(np.uint8), (SIDE, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "c_rgba.png")
    a = alpha[..., None].astype(np.float64) / 255.0
    expected["c_rgba.png"] = np.rint(rgb * a + 255.0 * (1 - a)).astype(np.uint8)

    grey16 = (np.asarray(Image.fromarray(_face(3)).convert("L"), dtype=np.uint16) * 257
              + np.uint16(100))  # 16-bit samples with low bits set
    Image.fromarray(grey16).save(folder / "d_grey16.png")  # mode I;16
    g8 = np.rint(grey16 / 257.0).clip(0, 255).astype(np.uint8)
    expected["d_grey16.png"] = np.repeat(g8[..., None], 3, axis=2)

    Image.fromarray(_face(4)).convert("CMYK").save(folder / "e_cmyk.jpg", quality=95)
    expected["e_cmyk.jpg"] = np.asarray(Image.open(folder / "e_cmyk.jpg").convert("RGB"))

    pal = Image.fromarray(_face(5)).quantize(colors=64)
    pal.save(folder / "f_palette.png")
    expected["f_palette.png"] = np.asarray(pal.convert("RGB"))

    Image.fromarray(_face(6)).convert("L").save(folder / "g_grey.png")
    expected["g_grey.png"] = np.asarray(Image.open(folder / "g_grey.png").convert("RGB"))
    return expected


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A csv dataset: ROOT/images/* (every variant, twice with different labels) + test.csv."""
    root = tmp_path_factory.mktemp("contract_data")
    expected = _write_variants(root / "images")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    with open(root / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, name in enumerate(sorted(expected)):
            w.writerow([f"images/{name}", CLASSES[i % 3]])
    return root


class _Recorder(Backend):
    """A backend that keeps every batch predict hands it (and answers uniform probabilities)."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__(None)
        self.batches: List[np.ndarray] = []

    def _open(self) -> None:
        self.classes = CLASSES

    def _close(self) -> None:
        pass

    def _infer(self, batch: np.ndarray) -> Outputs:
        self.batches.append(batch.copy())
        n, c = len(batch), len(CLASSES)
        p = np.full((n, c), 1.0 / c, dtype=np.float32)
        return {"probs": p, "primary": p, "confidence": np.zeros(n, dtype=np.float32)}


def test_decode_converts_every_mode_and_honours_exif(dataset: Path) -> None:
    expected = _write_variants(dataset / "check")
    for name, want in expected.items():
        got = contract.decode_image(dataset / "check" / name)
        assert got.dtype == np.uint8 and got.shape == want.shape, name
        assert np.array_equal(got, want), name


def test_dataset_and_predict_give_the_same_model_input(dataset: Path) -> None:
    """The same file -> the same float32 (3, 112, 112) through eval's dataset and predict."""
    samples, classes = load_samples(dataset, "csv", "test")
    ds = FERDataset(samples, classes, strict=True)
    through_data = {Path(s.path).name: ds[i][0].numpy() for i, s in enumerate(samples)}

    backend = _Recorder()
    import io

    with backend:
        summary = stream_predictions(
            str(dataset / "images"), backend, RecordWriter(io.StringIO(), "jsonl", CLASSES),
            opts=PredictOptions(aligned=True, batch=64),
        )
    assert summary.frames == len(samples) and not summary.skipped
    fed = np.concatenate(backend.batches)  # folder order = sorted names = CSV order
    assert fed.dtype == np.float32 and fed.shape == (len(samples), *contract.INPUT_SHAPE)
    for row, name in zip(fed, sorted(through_data)):
        assert np.array_equal(row, through_data[name]), name
        assert np.array_equal(row, contract.load_model_input(dataset / "images" / name)), name


def test_eval_accuracy_equals_predict_aligned_accuracy(dataset: Path, tmp_path: Path) -> None:
    """`grefel eval` and `grefel predict --aligned` on the same files agree, label by label."""
    import torch

    from grefel.checkpoint import save_checkpoint
    from grefel.model import create_model

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "rand.safetensors",
                           create_model("tiny", num_classes=3, class_names=CLASSES).eval())
    runner = CliRunner()
    res = runner.invoke(cli, ["eval", str(ckpt), "--data", str(dataset), "--split", "test",
                              "--out", str(tmp_path / "eval"), "--batch-size", "64",
                              "--device", "cpu", "--strict"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    res = runner.invoke(cli, ["predict", str(dataset / "images"), "--weights", str(ckpt),
                              "--aligned", "--batch", "64", "--device", "cpu",
                              "--out", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader((dataset / "test.csv").read_text().splitlines()))
    truth = {(dataset / r["path"]).name: r["label"] for r in rows}
    assert len(records) == len(truth)
    correct = [truth[Path(r["source"]).name] == r["label"] for r in records]
    assert report["final"]["accuracy"] == pytest.approx(sum(correct) / len(correct), abs=0)


# --- the pixel limit -----------------------------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header says width x height (a decompression bomb needs no more to be refused)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))


def test_every_decoder_refuses_a_bomb_and_the_limit_can_be_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 20000, 20000)
    with pytest.raises(contract.ImageError, match=r"20000x20000 = 400,000,000 pixels is over"):
        contract.decode_image(bomb)
    from grefel.data.datasets import DatasetError, load_image

    with pytest.raises(DatasetError, match="GREFEL_MAX_PIXELS"):
        load_image(str(bomb))
    monkeypatch.setenv(contract.MAX_PIXELS_ENV, str(500_000_000))  # raised: decoding is tried
    with pytest.raises(contract.ImageError, match="not a decodable image"):
        contract.decode_image(bomb)
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 48)).save(small)
    monkeypatch.setenv(contract.MAX_PIXELS_ENV, "1000")
    with pytest.raises(contract.ImageError, match="64x48 = 3,072 pixels"):
        contract.decode_image(small)
    monkeypatch.setenv(contract.MAX_PIXELS_ENV, "0")  # 0 = no limit
    assert contract.decode_image(small).shape == (48, 64, 3)
    monkeypatch.setenv(contract.MAX_PIXELS_ENV, "many")
    with pytest.raises(contract.ImageError, match="GREFEL_MAX_PIXELS='many'"):
        contract.decode_image(small)


def test_predict_refuses_a_bomb_with_one_line_and_goes_on(
    tmp_path: Path, models: Dict[str, Path]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _png_header_only(folder / "bomb.png", 20000, 20000)
    Image.fromarray(_face(0)).save(folder / "face.png")
    res = CliRunner().invoke(cli, ["predict", str(folder), "--weights", str(models["onnx"]),
                                   "--aligned", "--out", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert "bomb.png: 20000x20000 = 400,000,000 pixels is over the limit" in res.output
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 1
    res = CliRunner().invoke(cli, ["predict", str(folder / "bomb.png"), "--weights",
                                   str(models["onnx"]), "--aligned"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "GREFEL_MAX_PIXELS" in res.output


# --- the rest of the contract --------------------------------------------------------------------


def test_resize_is_antialiased_and_shared_by_the_train_transform() -> None:
    from grefel.data.transforms import TrainTransform

    checker = (np.indices((448, 448)).sum(0) % 2 * 255).astype(np.uint8)
    x = contract.to_model_input(np.repeat(checker[..., None], 3, axis=2))
    assert x.shape == contract.INPUT_SHAPE and x.dtype == np.float32
    assert abs(float(x.mean()) - 0.5) < 0.02 and float(x.std()) < 0.05  # no aliasing stripes
    t = TrainTransform(max_shift=0, flip_p=0.0, max_degrees=0.0, jitter=0.0, erase_p=0.0)
    face = _face(7)
    import torch

    out = t(face, generator=torch.Generator().manual_seed(0))
    # with its random parts off, the training transform is the contract's input, exactly: the
    # face the model trains on has the scale it has at eval and in deployment
    # (to float rounding of the identity colour jitter; one 8-bit step is 3.9e-3)
    assert np.abs(out.numpy() - contract.to_model_input(face)).max() < 1e-6


def test_the_training_shift_moves_the_eval_input_by_whole_pixels() -> None:
    import torch

    from grefel.data.transforms import TrainTransform

    face = _face(3)
    base = contract.to_model_input(face)
    t = TrainTransform(max_shift=8, flip_p=0.0, max_degrees=0.0, jitter=0.0, erase_p=0.0)
    shifted = 0
    for seed in range(6):
        out = t(face, generator=torch.Generator().manual_seed(seed)).numpy()
        # some (dx, dy) in [-8, 8]^2 maps the eval input onto out away from the reflected edges
        match = [(dx, dy) for dx in range(-8, 9) for dy in range(-8, 9) if np.abs(
            out[:, 8 + dy:104 + dy, 8 + dx:104 + dx] - base[:, 8:104, 8:104]).max() < 1e-5]
        assert len(match) == 1, seed
        shifted += match[0] != (0, 0)
    assert shifted >= 4  # the shift is drawn, not always zero


def test_image_size_is_fixed_by_the_contract() -> None:
    from grefel.config import GReFELConfig

    assert GReFELConfig.preset("tiny").image_size == contract.INPUT_SIZE == 112
    with pytest.raises(ValueError, match="image_size is fixed at 112"):
        GReFELConfig.preset("tiny", image_size=224)


def test_opset_per_target_is_one_rule() -> None:
    from export.lint import TARGETS, target_table
    from export.onnx_export import opset_for_target

    assert opset_for_target is contract.opset_for_target
    assert {t: contract.opset_for_target(t) for t in TARGETS} == {
        "trt8.5": 16, "trt8.6": 17, "trt10": 17, "trt10.15": 17, "trt11": 17}
    for target in TARGETS:  # the opset we export is one the target's ONNX parser accepts
        _, lo, hi = target_table(target)
        assert lo <= contract.opset_for_target(target) <= hi, target


def test_engine_sidecar_round_trip_and_format_check(tmp_path: Path) -> None:
    doc = contract.engine_sidecar_doc(
        engine="m.engine", engine_sha256="e", onnx="m.onnx", onnx_sha256="o",
        onnx_fp32_sha256="f", class_names=CLASSES, model_config=None,
        versions={"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": [8, 7]},
        build={}, gates={}, created_utc="2026-01-01T00:00:00Z",
    )
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    side = contract.read_engine_sidecar(path)
    assert side.class_names == CLASSES and side.tensorrt_version == "10.3.0"
    assert side.gpu_name == "Orin" and side.compute_capability == "8.7"
    flat = {"tensorrt_version": "10.3.0", "classes": list(CLASSES)}  # the old flat layout
    path.write_text(json.dumps(flat))
    with pytest.raises(contract.SidecarError, match="sidecar format None"):
        contract.read_engine_sidecar(path)
    path.write_text("[1, 2]")
    with pytest.raises(contract.SidecarError, match="a sidecar is a JSON object"):
        contract.read_engine_sidecar(path)
    doc["input"]["shape"] = ["batch", 3, 224, 224]
    path.write_text(json.dumps(doc))
    with pytest.raises(contract.SidecarError, match="input"):
        contract.read_engine_sidecar(path)


def test_contract_imports_no_torch() -> None:
    import subprocess

    code = "import sys, grefel.contract; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "False"


def test_decode_image_bytes_is_decode_image_for_a_request(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`grefel serve`'s encoded-image model decodes request bytes with the same steps."""
    expected = _write_variants(dataset / "bytes")
    for name, want in expected.items():
        data = (dataset / "bytes" / name).read_bytes()
        assert np.array_equal(contract.decode_image_bytes(data, name="req"), want), name
    with pytest.raises(contract.ImageError, match=r"^req 3: not a decodable image"):
        contract.decode_image_bytes(b"GIF89a junk", name="req 3")
    with pytest.raises(contract.ImageError, match=r"^req 4: empty"):
        contract.decode_image_bytes(b"", name="req 4")
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 20000, 20000)
    with pytest.raises(contract.ImageError, match=r"^req 5: 20000x20000 = 400,000,000 pixels"):
        contract.decode_image_bytes(bomb.read_bytes(), name="req 5")
