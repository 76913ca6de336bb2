"""research.ablation: the paired differences and their Student-t intervals (no training)."""

from __future__ import annotations

import pytest

from research.ablation import markdown, paired_differences, t_quantile


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622),
                                         (30, 2.0423)])
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-4)


def _runs(pairs):
    """(seed, no_rb acc, both acc) -> run rows at noise 0."""
    rows = []
    for seed, base, both in pairs:
        rows.append({"noise": 0.0, "variant": "no_rb", "seed": seed, "test_acc": base})
        rows.append({"noise": 0.0, "variant": "both", "seed": seed, "test_acc": both})
    return rows


def test_paired_differences_pair_by_seed_and_say_whether_the_interval_excludes_zero():
    consistent = paired_differences(_runs([(0, 0.50, 0.60), (1, 0.30, 0.42), (2, 0.70, 0.79)]))
    (row,) = consistent
    assert row["variant"] == "both" and row["seeds"] == [0, 1, 2]
    assert row["diffs"] == pytest.approx([0.10, 0.12, 0.09])
    half = t_quantile(0.975, 2) * row["std"] / 3 ** 0.5
    assert row["ci95"] == pytest.approx([row["mean"] - half, row["mean"] + half])
    assert row["effect"] is True  # the seed spread of the accuracies (0.3-0.7) does not matter
    mixed = paired_differences(_runs([(0, 0.5, 0.6), (1, 0.5, 0.4), (2, 0.5, 0.55)]))
    assert mixed[0]["effect"] is False and mixed[0]["ci95"][0] < 0 < mixed[0]["ci95"][1]
    unpaired = _runs([(0, 0.5, 0.6)]) + [{"noise": 0.0, "variant": "both", "seed": 1,
                                          "test_acc": 0.9}]
    (single,) = paired_differences(unpaired)  # seed 1 has no no_rb run: not a pair
    assert single["seeds"] == [0] and single["ci95"] is None and single["effect"] is None


def test_the_record_prints_the_paired_table():
    runs = [dict(r, test_macro_f1=0.5, primary_acc=0.5, primary_macro_f1=0.5, majority_acc=0.14,
                 total_seconds=1.0) for r in _runs([(0, 0.5, 0.6), (1, 0.4, 0.45)])]
    from research.ablation import summarise

    record = {"date": "d", "summary": summarise(runs), "paired": paired_differences(runs),
              "runs": runs, "run_seconds": 2.0, "wall_seconds": 2.0, "env": {"cpus": 2},
              "settings": {"n": 1, "imbalance": "uniform", "difficulty": 0.3, "image_warmup": 0,
                           "augment": True, "epochs": 1, "batch_size": 2, "lr": 1e-3,
                           "freeze": "landmark", "precise_bn": 0, "seeds": [0, 1],
                           "threads": 1}}
    text = markdown(record)
    assert "Paired differences" in text and "| 0 | both | accuracy | +0.075 |" in text
