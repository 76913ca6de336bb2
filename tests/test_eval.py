"""grefel.metrics (pure functions against hand-computed cases) and `grefel eval` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from grefel.cli import cli
from grefel.evaluate import score_predictions
from grefel.metrics import (
    accuracy,
    calinski_harabasz,
    confusion_matrix,
    davies_bouldin,
    expected_calibration_error,
    group_accuracy,
    inverse_frequency_weights,
    macro_f1,
    majority_baseline,
    pca_2d,
    per_class_scores,
    prediction_changes,
    reliability_bins,
)
from tests.test_train import CLASSES, make_dataset


def test_confusion_and_accuracy():
    cm = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert accuracy([0, 0, 1, 2], [0, 1, 1, 0]) == 0.5
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 0], 3)


def test_macro_f1_leaves_out_absent_classes():
    # class 0: P 1, R 1/2, F1 2/3; class 1: P 2/3, R 1, F1 4/5; class 2 never occurs.
    cm = confusion_matrix([0, 0, 1, 1], [0, 1, 1, 1], 3)
    assert macro_f1(cm) == pytest.approx((2 / 3 + 4 / 5) / 2)
    s = per_class_scores(cm)
    assert s["precision"].tolist() == pytest.approx([1.0, 2 / 3, 0.0])
    assert s["recall"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    # a class that is predicted but never true counts, with F1 0
    assert macro_f1(confusion_matrix([0, 0], [0, 2], 3)) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1(np.zeros((3, 3))) == 0.0


def test_ece_and_reliability_bins():
    conf = [0.9, 0.9, 0.6, 0.6]
    correct = [1, 0, 1, 1]
    # bin 0.9: acc 0.5 vs conf 0.9; bin 0.6: acc 1 vs conf 0.6; each half the samples
    assert expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(0.4)
    bins = reliability_bins([1.0, 0.0], [1, 0], n_bins=4)
    assert bins["count"].tolist() == [1, 0, 0, 1]  # a confidence of 1 lands in the last bin
    assert expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0
    assert expected_calibration_error([], []) == 0.0


def test_davies_bouldin_and_calinski_harabasz_by_hand():
    # clusters {0, 2} and {10, 12} on a line: centroids 1 and 11, scatter 1 each, distance 10
    x = np.array([[0.0], [2.0], [10.0], [12.0]])
    labels = [0, 0, 1, 1]
    assert davies_bouldin(x, labels) == pytest.approx(0.2)
    # between = 2 * 5^2 + 2 * 5^2 = 100, within = 4, n = 4, k = 2: 100 * 2 / (4 * 1) = 50
    assert calinski_harabasz(x, labels) == pytest.approx(50.0)
    assert davies_bouldin(x, [0, 0, 0, 0]) is None
    assert calinski_harabasz(x, [0, 1, 2, 3]) is None  # k == n
    same = np.array([[1.0], [1.0], [3.0], [3.0]])  # every point on its centroid
    assert calinski_harabasz(same, labels) == 1.0
    assert davies_bouldin(same, labels) == 0.0
    coincident = np.array([[0.0], [2.0], [0.0], [2.0]])  # equal centroids: finite, not inf
    assert math.isfinite(davies_bouldin(coincident, labels))


def test_pca_2d_finds_the_main_axis():
    rng = np.random.default_rng(0)
    t = rng.normal(size=200)
    x = np.stack([3 * t, 0.1 * rng.normal(size=200), np.zeros(200)], axis=1)
    xy = pca_2d(x)
    assert xy.shape == (200, 2)
    assert abs(np.corrcoef(xy[:, 0], t)[0, 1]) > 0.99
    assert xy[:, 0].var() > 100 * xy[:, 1].var()
    assert pca_2d(np.ones((1, 4))).tolist() == [[0.0, 0.0]]


def test_baseline_changes_groups_and_weights():
    assert majority_baseline([1, 1, 0], [1, 0, 0, 0], 3) == (1, 0.25)
    ch = prediction_changes([0, 1, 2, 0], primary=[0, 0, 1, 1], final=[1, 1, 2, 2])
    assert ch == {"changed": 4, "fixed": 2, "broken": 1, "wrong_to_wrong": 1}
    g = group_accuracy([0, 1, 1], [0, 0, 1], ["a", "b", "b"])
    assert g == {"a": {"n": 1, "accuracy": 1.0}, "b": {"n": 2, "accuracy": 0.5}}
    w = inverse_frequency_weights([10, 40, 0, 50])
    assert np.mean([w[0], w[1], w[3]]) == pytest.approx(1.0)
    assert w[0] == pytest.approx(4 * w[1]) and w[2] == 0.0
    with pytest.raises(ValueError):
        inverse_frequency_weights([0, 0])


def test_score_predictions_is_consistent():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])
    primary = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]])
    pred = {"labels": np.array([0, 1, 1, 2]), "probs": probs, "primary": primary,
            "confidence": np.array([0.7, 0.5, 0.1, 0.7]),
            "embedding": np.array([[0.0, 0.0], [1.0, 1.0], [1.2, 0.8], [5.0, 5.0]])}
    attrs = [{"skin": "dark"}, {"skin": "light"}, {"skin": "light"}, {}]
    r = score_predictions(pred, ("a", "b", "c"), attrs, train_labels=[2, 2, 1])
    assert r["final"]["accuracy"] == 0.75 and r["primary"]["accuracy"] == 0.75
    assert r["balancing_changes"] == {"changed": 2, "fixed": 1, "broken": 1, "wrong_to_wrong": 0}
    assert r["majority_baseline"] == {"class": "c", "accuracy": 0.25, "majority_from": "train"}
    assert r["per_group"]["skin"]["light"] == {"n": 2, "accuracy": 0.5}
    assert r["per_group"]["skin"][""]["n"] == 1
    json.dumps(r)  # plain types only


def _checkpoint(tmp_path: Path) -> Path:
    """An untrained tiny checkpoint for the test dataset's classes."""
    from grefel.checkpoint import save_checkpoint
    from grefel.config import TrainConfig
    from grefel.model.grefel import GReFEL

    model = GReFEL(TrainConfig(preset="tiny").model_config(CLASSES)).eval()
    return save_checkpoint(tmp_path / "m.safetensors", model)


def test_eval_cli_writes_report(tmp_path):
    data = make_dataset(tmp_path / "ds", n_train=7, n_val=0, n_test=10)
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["eval", str(ckpt), "--data", str(data), "--out", str(out),
                                   "--batch-size", "4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "macro-F1 (final)" in res.output and "majority baseline" in res.output
    assert f"wrote {out} (metrics.json, confusion.json, PNG plots)" in res.output.splitlines()
    for name in ("metrics.json", "confusion.json", "confusion_final.png",
                 "confusion_primary.png", "reliability.png", "embedding.png"):
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    cm = np.array(json.loads((out / "confusion.json").read_text())["final"])
    assert cm.sum() == m["n"] == 10
    assert m["final"]["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert set(m["per_group"]["skin"]) == {"light", "dark"}
    assert m["majority_baseline"]["majority_from"] == "train"


def test_eval_cli_bad_input_is_a_clear_error(tmp_path):
    data = make_dataset(tmp_path / "ds", n_train=7, n_val=0, n_test=7)
    runner = CliRunner()
    res = runner.invoke(cli, ["eval", str(tmp_path / "none.safetensors"), "--data", str(data)])
    assert res.exit_code == 1 and "none.safetensors" in res.output
    assert "Traceback" not in res.output
    from grefel.checkpoint import save_checkpoint
    from grefel.model.grefel import GReFEL

    other = GReFEL(tmp_config(("x", "y", "z")))
    ckpt = save_checkpoint(tmp_path / "other.safetensors", other)
    res = runner.invoke(cli, ["eval", str(ckpt), "--data", str(data), "--device", "cpu"])
    assert res.exit_code == 1 and "classes" in res.output and "Traceback" not in res.output


def tmp_config(classes):
    from grefel.config import TrainConfig

    return TrainConfig(preset="tiny").model_config(classes)


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help(command):
    res = CliRunner().invoke(cli, [command, "--help"])
    assert res.exit_code == 0 and "Examples:" in res.output
    if command == "train":
        assert "0.11" in res.output  # the label-smoothing reading of the supplement


def test_eval_reports_progress_over_the_split(tmp_path, monkeypatch):
    """`grefel eval` tells how far it is on stderr (grefel.progress, as predict does): here a
    line per batch (the interval set to 0; 10 s in use), the last one at all 10 images."""
    import grefel.progress

    class EveryBatch(grefel.progress.Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "tty": False, "every": 0.0})

    monkeypatch.setattr(grefel.progress, "Progress", EveryBatch)
    data = make_dataset(tmp_path / "ds", n_train=7, n_val=0, n_test=10)
    res = CliRunner().invoke(cli, ["eval", str(_checkpoint(tmp_path)), "--data", str(data),
                                   "--out", str(tmp_path / "report"), "--batch-size", "4",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("eval: ")]
    assert [line.split(",")[0] for line in lines] == [
        "eval: 4/10 images (40 %)", "eval: 8/10 images (80 %)", "eval: 10/10 images (100 %)"]
    assert "eval:" not in res.stdout


def test_evaluate_model_takes_one_eval_options_and_a_comparator_seam(tmp_path):
    """evaluate_model reads its settings from one EvalOptions and compares with a reference
    through the Comparator seam: by default the export gates' agreement held to the criteria
    opts.criteria names (recorded in the report), or the caller's own comparator."""
    from grefel.agreement import FP16_CRITERIA, INT8_CRITERIA
    from grefel.errors import ConfigError
    from grefel.evaluate import EvalOptions, agreement_comparator, criteria_for, evaluate_model

    data = make_dataset(tmp_path / "ds", n_train=7, n_val=0, n_test=6)
    ckpt = _checkpoint(tmp_path)
    opts = EvalOptions(batch_size=4, device="cpu", criteria="int8")
    report = evaluate_model(ckpt, data, opts, reference=ckpt)
    assert report["n"] == 6 and report["reference"]["criteria"] == "int8"
    assert report["reference"]["agreement"]["passed"]  # the model against itself

    seen = []

    class Mine:
        def to_dict(self):
            return {"mine": True}

    def mine(reference, candidate):
        seen.append((len(reference["probs"]), len(candidate["probs"])))
        return Mine()

    report = evaluate_model(ckpt, data, opts, reference=ckpt, comparator=mine)
    assert seen == [(6, 6)] and report["reference"]["agreement"] == {"mine": True}
    assert criteria_for("auto", ckpt) == "fp16" and criteria_for("int8", ckpt) == "int8"
    assert agreement_comparator("int8").keywords["criteria"] is INT8_CRITERIA
    assert agreement_comparator("fp16").keywords["criteria"] is FP16_CRITERIA
    with pytest.raises(ConfigError, match="batch_size: 0"):
        EvalOptions(batch_size=0)
    with pytest.raises(ConfigError, match="criteria must be one of auto, fp16, int8"):
        EvalOptions(criteria="fp8")
