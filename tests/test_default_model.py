"""The model that ships inside grefel (grefel.runtime.default_model): what predict, eval, serve
and export use without a model file, and what `grefel info` names.

The resolution tests put a seeded tiny model in place of the packaged one (MODELS patched), so
they hold whatever is shipped; `test_the_shipped_default_model_*` checks the real files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from click.testing import CliRunner

from grefel.cli import cli
from grefel.runtime import detectors
from grefel.runtime.default_model import DEFAULT_MODEL, default_model, describe
from tests.test_runtime import make_models

PACKAGED = detectors.MODELS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def packaged(tiny: Dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A models folder holding the tiny model under the default model's names."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny["onnx"], folder / f"{DEFAULT_MODEL}.onnx")
    shutil.copy(tiny["ckpt"], folder / f"{DEFAULT_MODEL}.safetensors")
    meta = json.loads(tiny["ckpt"].with_suffix(".json").read_text())
    meta["model_card"] = {"data": "a test set", "test": {"macro_f1": 0.5, "accuracy": 0.75}}
    (folder / f"{DEFAULT_MODEL}.json").write_text(json.dumps(meta))
    for name in ("face_detection_full_range.tflite", "face_detection_short_range.tflite"):
        shutil.copy(PACKAGED / name, folder / name)
    monkeypatch.setattr(detectors, "MODELS", folder)
    return folder


def _photo(tmp_path: Path) -> Path:
    import cv2

    path = tmp_path / "face.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (112, 112, 3), np.uint8))
    return path


def test_predict_without_weights_runs_the_packaged_onnx_and_names_it(packaged: Path,
                                                                      tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["predict", str(_photo(tmp_path)), "--aligned"])
    assert res.exit_code == 0, res.output
    assert f"using the default model {DEFAULT_MODEL} ({packaged / DEFAULT_MODEL}.onnx)" in \
        res.output
    assert "test macro-F1 0.500, accuracy 0.750" in res.output
    record = json.loads(next(ln for ln in res.output.splitlines() if ln.startswith("{")))
    assert set(record["probs"]) == {"neutral", "happiness", "sadness", "surprise", "fear",
                                    "disgust", "anger"}


def test_eval_without_a_model_never_writes_into_the_package(packaged: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            synthfer: Path) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["eval", "--data", str(synthfer), "--split", "test"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "eval" / f"{DEFAULT_MODEL}-test" / "metrics.json").is_file()
    assert sorted(p.name for p in packaged.iterdir()) == sorted(
        [f"{DEFAULT_MODEL}{s}" for s in (".onnx", ".safetensors", ".json")]
        + ["face_detection_full_range.tflite", "face_detection_short_range.tflite"])


def test_a_missing_default_model_is_one_clear_error(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detectors, "MODELS", tmp_path)
    res = CliRunner().invoke(cli, ["predict", str(_photo(tmp_path)), "--aligned"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert f"{tmp_path / DEFAULT_MODEL}.onnx: the default model is missing" in line
    assert "pass a model file (--weights)" in line


def test_info_names_the_default_model(packaged: Path) -> None:
    res = CliRunner().invoke(cli, ["info"])
    assert res.exit_code == 0, res.output
    assert f"default model {DEFAULT_MODEL} ({packaged / DEFAULT_MODEL}.onnx): trained on a test " \
           "set" in res.output


def test_the_default_model_is_chosen_on_validation_macro_f1(tmp_path: Path) -> None:
    """research.default_model: the run with the best val macro-F1 (not accuracy, never a
    test figure); a tie keeps the run listed first; a run without val metrics is refused."""
    from research.default_model import choose

    def run(name: str, metrics: Dict[str, float]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "best.safetensors").write_bytes(b"")
        (folder / "best.json").write_text(json.dumps({"format": "grefel-checkpoint/1",
                                                     "metrics": metrics}))
        return folder

    a = run("a", {"epoch": 3, "val_acc": 0.80, "val_macro_f1": 0.30})
    b = run("b", {"epoch": 5, "val_acc": 0.70, "val_macro_f1": 0.34})
    c = run("c", {"epoch": 2, "val_acc": 0.60, "val_macro_f1": 0.34})
    ranked = choose([a, b, c])
    assert [Path(r["run"]).name for r in ranked] == ["b", "c", "a"]
    assert ranked[0]["epoch"] == 5 and ranked[0]["val_macro_f1"] == 0.34
    with pytest.raises(SystemExit, match="no val_macro_f1"):
        choose([run("d", {"epoch": 1, "train_acc": 0.9})])


def test_the_shipped_default_model_is_complete_and_its_files_agree() -> None:
    """The real packaged files: the ONNX is the checkpoint's export (same outputs within the
    export parity gate's tolerance), the sidecar carries the model card, the classes are the
    seven basic expressions."""
    import torch

    from grefel.checkpoint import load_checkpoint
    from grefel.runtime import open_backend

    onnx_path, ckpt = default_model("onnx"), default_model("checkpoint")
    card = json.loads(default_model("sidecar").read_text())["model_card"]
    assert {"data", "split", "recipe", "test"} <= set(card)
    assert DEFAULT_MODEL in describe(onnx_path)
    model, _ = load_checkpoint(ckpt)
    assert list(model.cfg.class_names) == ["neutral", "happiness", "sadness", "surprise", "fear",
                                           "disgust", "anger"]
    x = np.random.default_rng(0).random((3, 3, 112, 112), dtype=np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).probs.numpy()
    with open_backend(onnx_path, device="cpu") as backend:
        out = backend.infer(x)
        assert tuple(backend.classes) == tuple(model.cfg.class_names)
    assert np.abs(out["probs"] - ref).max() < 1e-4


def test_a_fresh_install_recognises_the_smiling_astronaut() -> None:
    """Done-when of the real-faces issue: `grefel predict` on the astronaut photo (a real,
    public-domain photo: benchmarks/data/astronaut.jpg) with no --weights answers happiness,
    with the face box the detector found around her face (hand-boxed [175, 70, 275, 175] in
    research/data/face_photos.json)."""
    photo = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "astronaut.jpg"
    res = CliRunner().invoke(cli, ["predict", str(photo)])
    assert res.exit_code == 0, res.output
    assert f"using the default model {DEFAULT_MODEL}" in res.output
    (record,) = [json.loads(ln) for ln in res.output.splitlines() if ln.startswith("{")]
    assert record["face"] is True and record["label"] == "happiness"
    probs = record["probs"]
    runner_up = max(v for k, v in probs.items() if k != "happiness")
    assert probs["happiness"] > 2 * runner_up  # not a near-tie
    x1, y1, x2, y2 = record["box"]
    ix = max(0, min(x2, 275) - max(x1, 175)) * max(0, min(y2, 175) - max(y1, 70))
    union = (x2 - x1) * (y2 - y1) + 100 * 105 - ix
    assert ix / union > 0.5
