"""research.real_ablation: the recipe's settings reused for every run, the minority classes,
the paired differences over seeds and on the same bootstrap resamples (no training here: the
training is grefel.train's, tested in tests/test_train.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from research import real_ablation as ra


def test_minority_classes_are_all_but_the_two_largest() -> None:
    classes = ("neutral", "happiness", "sadness", "surprise")
    labels = [0] * 50 + [1] * 40 + [2] * 3 + [3] * 5
    assert ra.minority_classes(labels, classes) == ["sadness", "surprise"]


def test_paired_over_seeds_takes_the_same_seed_of_each_variant() -> None:
    runs = [{"variant": "no_rb", "seed": s, "macro_f1": 0.30 + 0.01 * s} for s in range(3)]
    runs += [{"variant": "both", "seed": s, "macro_f1": 0.32 + 0.01 * s + 0.001 * s * s}
             for s in (0, 1, 2, 5)]  # seed 5 has no no_rb run: not paired
    (row,) = ra.paired_over_seeds(runs, "macro_f1")
    assert row["seeds"] == [0, 1, 2]
    assert row["diffs"] == pytest.approx([0.02, 0.021, 0.024])
    assert row["mean"] == pytest.approx(np.mean([0.02, 0.021, 0.024]))
    lo, hi = row["ci95"]
    assert lo < row["mean"] < hi and row["effect"] is True  # every difference > 0, small spread
    (one,) = ra.paired_over_seeds([runs[0], runs[3]], "macro_f1")
    assert one["ci95"] is None and one["effect"] is None  # one pair: no interval


def test_minority_bootstrap_difference_is_zero_for_the_same_predictions() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    scored = {"classes": ["a", "b", "c", "d"], "minority": ["c", "d"], "y_true": y,
              "groups": [f"p{i // 4}" for i in range(200)],
              "preds": {"both_seed0": pred.tolist(), "no_rb_seed0": pred.tolist()}}
    out = ra.minority_bootstrap(scored, "both_seed0", "no_rb_seed0", 300, seed=0)
    assert out["diff_ci95"] == [0.0, 0.0]
    lo, hi = out["ci95"]
    point = np.mean([np.mean(pred[y == k] == k) for k in (2, 3)])
    assert lo <= point <= hi


def test_recipe_configs_read_the_run_and_refuse_a_folder_without_one(tmp_path: Path) -> None:
    from grefel.train import TrainingError

    run = tmp_path / "train"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "model": {}, "data": {"root": "/d", "refine_per_class": 300},
        "train": {"epochs": 8, "image_warmup": 400}}))
    got = ra.recipe_configs(run)
    assert got["data"]["refine_per_class"] == 300 and got["train"]["image_warmup"] == 400
    with pytest.raises(TrainingError, match="config.json does not exist"):
        ra.recipe_configs(tmp_path / "none")


def test_recipe_parts_change_one_setting_where_it_lives() -> None:
    from research.recipe_parts import PARTS, with_changes

    recipe = {"data": {"root": "/d", "refine_repeat": False, "augment_policy": "light"},
              "train": {"epochs": 8, "image_warmup": 400, "pretrained_ir50": "ir.safetensors",
                        "pretrained_mobilefacenet": "mfn.safetensors", "variant": "both"}}
    got = with_changes(recipe, PARTS["random_image"][1], epochs=None)
    assert got["train"]["pretrained_ir50"] == "" and got["train"]["image_warmup"] == 400
    assert recipe["train"]["pretrained_ir50"] == "ir.safetensors"  # the recipe is not changed
    got = with_changes(recipe, PARTS["repeat"][1], epochs=3)
    assert got["data"]["refine_repeat"] is True and got["train"]["epochs"] == 3
    with pytest.raises(KeyError, match="not a DataConfig or TrainConfig field"):
        with_changes(recipe, {"sharpness": 2}, None)
