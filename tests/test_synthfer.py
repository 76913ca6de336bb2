"""SynthFER: determinism, identity-disjoint splits, label noise, imbalance, landmark geometry
and the `grefel data synth` command."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from click.testing import CliRunner

from grefel.cli import cli
from grefel.config import DATASET_CLASSES
from grefel.data import load_samples
from grefel.data.faces import (
    Pose,
    expression_params,
    landmarks68,
    make_identity,
    project,
    render_face,
)
from grefel.data.synthfer import RAFDB_TRAIN_COUNTS, _plan, generate_synthfer


def _rows(root: Path, split: str) -> List[Dict[str, str]]:
    with open(root / f"{split}.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return generate_synthfer(tmp_path_factory.mktemp("sf") / "clean", 24, seed=3)


def test_same_arguments_give_the_same_bytes(clean, tmp_path):
    again = _files(generate_synthfer(tmp_path / "again", 24, seed=3))
    assert again == _files(clean)
    other = _files(generate_synthfer(tmp_path / "other", 24, seed=4))
    assert other["images/000000.png"] != again["images/000000.png"]


def test_layout_is_read_by_the_csv_reader_with_identity_disjoint_splits(clean):
    assert (clean / "classes.txt").read_text().split() == list(DATASET_CLASSES["synthfer"])
    groups = {}
    total = 0
    for split in ("train", "val", "test"):
        samples, classes = load_samples(clean, split=split)
        assert classes == DATASET_CLASSES["synthfer"]
        groups[split] = {s.group for s in samples}
        total += len(samples)
        assert {"clean_label", "skin", "occlusion", "intensity"} <= set(samples[0].attrs)
        assert all(Path(s.path).exists() for s in samples)
    assert total == 24
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    with open(clean / "landmarks.csv", newline="") as f:
        lm = list(csv.reader(f))
    assert len(lm) == 25 and len(lm[0]) == 1 + 136
    xy = np.array([[float(v) for v in row[1:]] for row in lm[1:]])
    assert np.median(xy) > 20 and np.median(xy) < 92  # faces sit inside the 112 px frame


def test_label_noise_flips_train_only_and_keeps_the_pictures(clean, tmp_path):
    noisy = generate_synthfer(tmp_path / "noisy", 24, seed=3, noise=0.5)
    train = _rows(noisy, "train")
    flipped = [r for r in train if r["label"] != r["clean_label"]]
    assert len(flipped) == round(0.5 * len(train))
    assert [r["clean_label"] for r in train] == [r["label"] for r in _rows(clean, "train")]
    for split in ("val", "test"):
        assert _rows(noisy, split) == _rows(clean, split)
    a, b = _files(noisy), _files(clean)
    assert {k: v for k, v in a.items() if k.startswith("images/")} == {
        k: v for k, v in b.items() if k.startswith("images/")}


def test_rafdb_imbalance_and_uniform_class_counts():
    classes = DATASET_CLASSES["synthfer"]
    labels, identity, split = _plan(12271, 0, classes, "rafdb")
    counts = np.bincount(labels, minlength=7)
    assert counts.tolist() == [RAFDB_TRAIN_COUNTS[c] for c in classes]
    assert len(set(identity)) == len(split) and set(split) == {"train", "val", "test"}
    per_id = np.bincount(identity)
    assert per_id.max() > 3 * np.median(per_id)  # uneven group sizes: the N_pg cap matters
    images_in = {s: sum(per_id[i] for i in range(len(split)) if split[i] == s) for s in split}
    assert 0.6 < images_in["train"] / 12271 < 0.8
    uniform, _, _ = _plan(700, 0, DATASET_CLASSES["synthfer8"], "uniform")
    assert np.bincount(uniform).tolist() == [88] * 4 + [87] * 4


def test_contempt_adds_an_eighth_class(tmp_path):
    root = generate_synthfer(tmp_path / "c8", 12, seed=1, imbalance="uniform", contempt=True)
    _, classes = load_samples(root, split="test")
    assert classes == DATASET_CLASSES["synthfer8"]


def test_landmark_order_and_expression_geometry():
    ident = make_identity(np.random.default_rng(11))
    rng = np.random.default_rng(0)
    frontal = Pose(yaw=0.0, pitch=0.0, roll=0.0, scale=60.0, cx=112.0, cy=100.0)

    def points(name: str) -> np.ndarray:
        e = expression_params(name, 1.0, rng)
        return project(ident, frontal, landmarks68(ident, e))  # [68,2] pixels

    n = points("neutral")
    assert n[8, 1] == n[0:17, 1].max()  # chin is the lowest jaw point
    assert n[36, 0] < n[39, 0] < n[42, 0] < n[45, 0]  # eye corners left to right
    assert n[48, 0] < n[51, 0] < n[54, 0] and n[60, 0] < n[64, 0]
    assert n[17:27, 1].max() < n[36:48, 1].min() < n[30, 1] < n[51, 1] < n[57, 1] < n[8, 1]
    assert np.isfinite(n).all()
    assert abs((n[36, 0] + n[45, 0]) / 2 - 112.0) < 1e-6  # symmetric at zero pose

    def eye_open(p):
        return (p[41, 1] - p[37, 1] + p[40, 1] - p[38, 1]) / 2

    def mouth_open(p):
        return p[66, 1] - p[62, 1]

    def corner_lift(p):
        return (p[51, 1] + p[57, 1]) / 2 - (p[48, 1] + p[54, 1]) / 2

    surprise, happy, sad, anger = (points(c) for c in ("surprise", "happiness", "sadness",
                                                        "anger"))
    assert eye_open(surprise) > 1.3 * eye_open(n) and mouth_open(surprise) > 8
    assert corner_lift(happy) > corner_lift(n) + 3 > corner_lift(sad) + 3
    assert anger[21, 1] > n[21, 1] + 3  # inner brow lowered
    assert sad[21, 1] < n[21, 1] - 3  # inner brow raised


def test_render_face_returns_landmarks_in_output_pixels():
    ident = make_identity(np.random.default_rng(2))
    img, lm, attrs = render_face(np.random.default_rng(5), ident, "happiness", size=96)
    assert img.size == (96, 96) and img.mode == "RGB" and lm.shape == (68, 2)
    assert attrs["skin"] in {"very_light", "light", "medium", "brown", "dark"}
    assert (lm > -10).all() and (lm < 106).all()


def test_cli_data_synth(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(cli, ["data", "synth", "--out", str(out), "--n", "9", "--seed", "2",
                                 "--noise", "0.2"])
    assert result.exit_code == 0, result.output
    assert "n=9 seed=2 noise=0.2" in result.output and (out / "train.csv").exists()
    bad = runner.invoke(cli, ["data", "synth", "--out", str(out), "--imbalance", "skewed"])
    assert bad.exit_code == 2 and "skewed" in bad.output
    assert runner.invoke(cli, ["data", "synth", "--help"]).exit_code == 0
    clash = tmp_path / "file"
    clash.write_text("x")
    res = runner.invoke(cli, ["data", "synth", "--out", str(clash / "sub"), "--n", "3"])
    assert res.exit_code == 1 and "Error" in res.output and "Traceback" not in res.output


def test_difficulty_zero_removes_nuisances(tmp_path) -> None:
    """--difficulty 0: no occlusions and full-strength expressions; out of range is refused."""
    import csv

    import pytest

    from grefel.data.synthfer import generate_synthfer

    out = generate_synthfer(tmp_path / "easy", n=12, seed=1, imbalance="uniform", difficulty=0.0)
    rows = [r for split in ("train", "val", "test")
            for r in csv.DictReader((out / f"{split}.csv").read_text().splitlines())]
    assert len(rows) == 12
    assert {r["occlusion"] for r in rows} == {"none"}
    assert {r["intensity"] for r in rows if r["label"] != "neutral"} == {"1.00"}
    with pytest.raises(ValueError, match="difficulty"):
        generate_synthfer(tmp_path / "bad", n=12, difficulty=1.5)


def test_cli_data_synth_warns_of_a_one_identity_split(tmp_path) -> None:
    """--n 200 makes a test split of one identity (it said nothing); --n 400 does not."""
    from grefel.data.synthfer import split_identities

    res = CliRunner().invoke(cli, ["data", "synth", "--out", str(tmp_path / "a"), "--n", "200",
                                   "--size", "64"])
    assert res.exit_code == 0, res.output
    assert split_identities(tmp_path / "a")["test"] == 1
    warnings = [line for line in res.stderr.splitlines()
                if line.startswith("warning: one identity")]  # (a class-less split has its own)
    assert warnings == ["warning: one identity in a split (test 1): its metrics measure one "
                        "face, not faces the model never saw; a larger --n gives each split more"]
    res = CliRunner().invoke(cli, ["data", "synth", "--out", str(tmp_path / "b"), "--n", "400",
                                   "--size", "64"])
    assert res.exit_code == 0 and "warning: one identity" not in res.output
    assert min(split_identities(tmp_path / "b").values()) >= 2
