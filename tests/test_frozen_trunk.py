"""research.frozen_trunk and `python -m research.ablation --trunk frozen`: the cached
stream maps are the model's, the variants of one seed are paired, and the grid resumes."""

from __future__ import annotations

import json

import pytest
import torch

from research import ablation
from research.frozen_trunk import (
    OnMaps,
    build_trunk,
    load_trunk,
    seeded_model,
    stream_maps,
    train_variant,
    trunk_report,
)


@pytest.fixture(scope="module")
def trunk_file(synthfer, tmp_path_factory):
    path = tmp_path_factory.mktemp("trunk") / "trunk.safetensors"
    report = build_trunk(synthfer, path, seed=0, image_warmup=3, lr=1e-3, batch_size=16,
                         pretrained_mobilefacenet="", pretrained_ir50="", threads=2)
    assert report["steps"] == 3 and trunk_report(path)["steps"] == 3
    return path


def _weights(trunk_file):
    return load_trunk(trunk_file)["weights"]


def test_every_variant_of_a_seed_starts_from_the_same_shared_weights(trunk_file):
    weights = _weights(trunk_file)
    classes = load_trunk(trunk_file)["classes"]
    base = seeded_model("no_rb", 3, classes, weights).state_dict()
    for variant in ("anchors", "mhsa", "both"):
        other = seeded_model(variant, 3, classes, weights).state_dict()
        shared = set(base) & set(other)
        assert len(shared) == len(base)  # no_rb's parameters are a subset of every variant's
        assert all(torch.equal(base[k], other[k]) for k in shared), variant
        assert set(other) - set(base)  # the variant's own balancing module
    other_seed = seeded_model("no_rb", 4, classes, weights).state_dict()
    assert not torch.equal(base["head.net.0.weight"], other_seed["head.net.0.weight"])
    # the streams are the trunk's, whatever the seed
    assert torch.equal(weights["image.input_layer.0.weight"],
                       other_seed["image.input_layer.0.weight"])

def test_the_stored_maps_are_the_frozen_streams_and_give_the_models_prediction(
        synthfer, trunk_file):
    trunk = load_trunk(trunk_file)
    model = seeded_model("both", 0, trunk["classes"], trunk["weights"]).eval()
    maps, labels = trunk["val"]
    again, again_labels, _ = stream_maps(model, synthfer, "val", batch_size=7)
    assert torch.equal(labels, again_labels)
    for stored, fresh in zip(maps, again):
        assert stored.dtype == torch.float16 and torch.equal(stored, fresh)
    from grefel.data import FERDataset, load_samples, make_transforms

    samples, classes = load_samples(synthfer, "auto", "val")
    dataset = FERDataset(samples, classes, make_transforms(False))
    images = torch.stack([dataset[i][0] for i in range(4)])
    with torch.no_grad():
        direct = model(images).probs
        cached = OnMaps(model, maps)(torch.arange(4)).probs
    assert torch.allclose(direct, cached, atol=5e-3)  # float16 storage of the maps


def test_a_seed_trains_reproducibly_and_reports_the_test_scores(trunk_file):
    trunk = load_trunk(trunk_file)
    kw = {"seed": 1, "epochs": 2, "lr": 1e-3, "batch_size": 16, "precise_bn": 32}
    first = train_variant(trunk, variant="both", **kw)
    second = train_variant(trunk, variant="both", **kw)
    for key in ("test_acc", "test_macro_f1", "primary_acc", "best_epoch", "history"):
        assert first[key] == second[key], key
    assert len(first["history"]) == 2 and 1 <= first["best_epoch"] <= 2
    n_test = len(trunk["test"][1])
    assert 0 <= first["test_acc"] <= 1 and first["changes"]["changed"] <= n_test
    no_rb = train_variant(trunk, variant="no_rb", **kw)
    assert no_rb["test_acc"] == no_rb["primary_acc"]  # no balancing: L_final is l


def test_the_frozen_grid_resumes_and_records_the_trunk(tmp_path, monkeypatch):
    argv = ["--trunk", "frozen", "--n", "70", "--noise", "0", "--seeds", "0", "1",
            "--epochs", "1", "--image-warmup", "2", "--variants", "no_rb", "both",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
            "--precise-bn", "16"]
    assert ablation.main(argv) == 0
    (record_file,) = (tmp_path / "out").glob("ablation_*.json")
    record = json.loads(record_file.read_text())
    assert {(r["variant"], r["seed"]) for r in record["runs"]} == {
        ("no_rb", 0), ("both", 0), ("no_rb", 1), ("both", 1)}
    assert record["trunks"]["0"]["steps"] == 2 and record["settings"]["trunk"] == "frozen"
    accuracy, macro_f1 = record["paired"]  # both - no_rb, of each metric
    assert (accuracy["metric"], macro_f1["metric"]) == ("test_acc", "test_macro_f1")
    for row in (accuracy, macro_f1):
        assert row["variant"] == "both" and row["seeds"] == [0, 1] and row["ci95"] is not None
    assert "frozen" in (tmp_path / "out" / record_file.with_suffix(".md").name).read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(ablation, "frozen_runs", no_training)
    monkeypatch.setattr("research.frozen_trunk.build_trunk", no_training)
    assert ablation.main(argv) == 0  # everything is in the partial record and on disk
    again = json.loads(record_file.read_text())
    assert len(again["runs"]) == 4 and again["trunks"]["0"]["steps"] == 2
    monkeypatch.undo()
    cut = argv.index("both") + 1
    more = argv[:cut] + ["mhsa"] + argv[cut:]  # --variants no_rb both mhsa: only mhsa trains
    assert ablation.main(more) == 0
    grown = json.loads(record_file.read_text())
    assert len(grown["runs"]) == 6 and grown["settings"]["variants"] == ["no_rb", "mhsa", "both"]
    assert [r["seed"] for r in grown["runs"] if r["variant"] == "mhsa"] in ([0, 1], [1, 0])
    assert {r["variant"] for r in grown["paired"]} == {"mhsa", "both"}
