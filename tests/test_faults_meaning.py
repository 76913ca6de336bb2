"""Issue 27, families 3 and 6: no non-finite model is ever written or read as weights, and a
training run never silently changes meaning (classes without samples, resumes on other data,
malformed CSV rows). In-process checks of the mechanisms; the CLI cases are
tools/fault_families/training.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from grefel.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from grefel.config import DataConfig, TrainConfig
from grefel.finite import NonFiniteError, nonfinite_counts, require_finite
from grefel.model import create_model
from grefel.train import run_training
from grefel.train_state import TrainingError

SEVEN = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]


def _dataset(root: Path, labels: dict, classes=SEVEN) -> Path:
    """ROOT/<split>.csv over tiny PNGs (the fault campaign's own builder)."""
    from tools.fault_campaign import _csv_dataset

    return _csv_dataset(root, labels, classes)


def _good(n: int) -> list:
    return [i % 7 for i in range(n)]


def _tiny_train(data: Path, out: Path, **train) -> dict:
    d = DataConfig(root=str(data), batch_size=8, workers=0, augment=False)
    t = TrainConfig(**{"out": str(out), "preset": "tiny", "epochs": 1, "device": "cpu",
                       "threads": 1, "image_warmup": 0, "precise_bn": 0, "freeze": "none",
                       **train})
    return run_training(d, t)


# --- 27.3: the finiteness guard ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_guard_finds_nan_and_inf_in_every_float_dtype(dtype, bad):
    t = torch.zeros(4, 3, dtype=dtype)
    t[1, 2] = bad
    counts = nonfinite_counts({"a": torch.ones(2, dtype=dtype), "b": t})
    assert counts == {"b": (1, 12)}
    with pytest.raises(NonFiniteError, match=r"X: 1 of 14 values in 1 tensor \(b\) are NaN"):
        require_finite({"a": torch.ones(2, dtype=dtype), "b": t}, "X")


def test_guard_passes_zero_large_finite_and_integer_state():
    big = torch.full((3,), torch.finfo(torch.float32).max)
    state = {"zero": torch.zeros(5), "big": big, "half_max": torch.full((2,), 65504.0).half(),
             "steps": torch.tensor(7, dtype=torch.int64), "np": np.array([1e300, 0.0])}
    require_finite(state, "fine")  # no error
    assert nonfinite_counts(state) == {}


def test_guard_walks_an_optimizer_state_and_numpy_arrays():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.ones(3)
    opt.step()
    opt.state[p]["exp_avg_sq"][0] = math.inf
    assert nonfinite_counts(opt.state_dict()) == {"state.0.exp_avg_sq": (1, 3)}
    assert nonfinite_counts({"probs": np.array([[0.5, np.nan]], np.float32)}) == {
        "probs": (1, 2)}


def test_save_checkpoint_refuses_nan_and_keeps_the_existing_file(tmp_path):
    model = create_model("tiny", class_names=SEVEN).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    before = path.read_bytes(), path.with_suffix(".json").read_bytes()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = math.nan
    with pytest.raises(NonFiniteError, match="not written"):
        save_checkpoint(path, model)
    assert (path.read_bytes(), path.with_suffix(".json").read_bytes()) == before
    assert not list(tmp_path.glob(".m.safetensors.*"))  # no temporary file left


def test_save_checkpoint_checks_half_precision_state(tmp_path):
    model = create_model("tiny", class_names=SEVEN).eval().half()
    save_checkpoint(tmp_path / "ok.safetensors", model)  # a finite FP16 model is saved
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = math.inf
    with pytest.raises(NonFiniteError):
        save_checkpoint(tmp_path / "bad.safetensors", model)
    assert not (tmp_path / "bad.safetensors").exists()


def _poisoned_copy(src: Path, dst: Path, value: float) -> Path:
    """`src` with one weight set to `value`, written as a checkpoint a foreign tool could write
    (safetensors + a sidecar with the matching SHA-256), since grefel's writer refuses it."""
    from safetensors.torch import load_file, save_file

    from grefel.fileio import sha256_file

    state = load_file(str(src))
    key = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = value
    save_file(state, str(dst), metadata={"format": "grefel-checkpoint/1"})
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["weights_sha256"] = sha256_file(dst)
    dst.with_suffix(".json").write_text(json.dumps(meta))
    return dst


def test_every_checkpoint_reader_refuses_one_nan_weight(tmp_path):
    good = save_checkpoint(tmp_path / "good.safetensors",
                           create_model("tiny", class_names=SEVEN).eval())
    bad = _poisoned_copy(good, tmp_path / "bad.safetensors", math.nan)
    with pytest.raises(CheckpointError, match=r"bad.safetensors: 1 of [\d,]+ values in 1 tensor"):
        load_checkpoint(bad)
    load_checkpoint(good)  # the same file without the NaN loads


def test_train_with_a_huge_lr_stops_at_the_step_and_saves_nothing(tmp_path):
    """(An infinite --lr is refused by the option's range before anything runs; a finite but
    huge one makes the weights non-finite within the first epoch.)"""
    data = _dataset(tmp_path / "data", {"train": _good(14), "val": _good(7)})
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        _tiny_train(data, out, lr=1e30)
    message = str(err.value)
    assert re.search(r"epoch 1, (step \d+: the (weights|loss) became non-finite|validation: "
                     r"the model's outputs .* are NaN or inf)", message), message
    assert "lower --lr (now 1e+30)" in message and "last good checkpoint: none yet" in message
    assert not list(out.glob("*.safetensors")) and not (out / "last.state.pt").exists()


# --- 27.6: training never silently changes meaning ---------------------------------------------


def test_a_class_without_training_samples_is_refused_by_name(tmp_path):
    data = _dataset(tmp_path / "data", {"train": [i % 6 for i in range(14)], "val": _good(7)})
    with pytest.raises(TrainingError, match=r"split 'train' has no sample of class\(es\) anger"):
        _tiny_train(data, tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.safetensors"))


def test_a_class_without_validation_samples_is_a_warning(tmp_path, capsys):
    data = _dataset(tmp_path / "data", {"train": _good(14), "val": [i % 6 for i in range(6)]})
    _tiny_train(data, tmp_path / "run")
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "split 'val' has no sample of class(es) anger" in warnings[0]
    assert (tmp_path / "run" / "last.safetensors").exists()


def _fingerprint(root: Path, rows: list, classes=("a", "b"), write: bool = True) -> dict:
    from grefel.data import Sample
    from grefel.train_state import data_fingerprint

    samples = []
    for name, label in rows:
        if write:
            (root / name).write_bytes(b"x" * 10)
        samples.append(Sample(str(root / name), label))
    return data_fingerprint(root, classes, {"train": samples})


def test_data_fingerprint_names_what_changed(tmp_path):
    from grefel.train_state import data_differences

    rows = [("i0.png", 0), ("i1.png", 1), ("i2.png", 1)]
    base = _fingerprint(tmp_path, rows)
    assert data_differences(base, _fingerprint(tmp_path, rows[::-1])) == []  # order: same data
    flipped = _fingerprint(tmp_path, [("i0.png", 1), *rows[1:]])
    assert data_differences(base, flipped) == ["split 'train': images per class a 1 -> 0, "
                                               "b 2 -> 3"]
    swapped = _fingerprint(tmp_path, [("i0.png", 1), ("i1.png", 0), ("i2.png", 1)])
    assert "the same 3 images per class, but other paths, labels" in \
        data_differences(base, swapped)[0]
    added = _fingerprint(tmp_path, [*rows, ("i3.png", 0)])
    assert data_differences(base, added) == ["split 'train': 3 -> 4 images"]
    assert data_differences(base, _fingerprint(tmp_path, rows, ("a", "c"))) == [
        "classes ['a', 'b'] -> ['a', 'c']"]
    (tmp_path / "i2.png").write_bytes(b"another image, of another size")
    assert data_differences(base, _fingerprint(tmp_path, rows, write=False)) == [
        "split 'train': the same 3 images per class, but other paths, labels, groups or file "
        "sizes"]


def test_resume_on_relabelled_data_is_refused_and_same_data_resumes(tmp_path):
    data = _dataset(tmp_path / "data", {"train": _good(14), "val": _good(7)})
    out = tmp_path / "run"
    _tiny_train(data, out)
    assert json.loads((out / "config.json").read_text())["data_fingerprint"]["splits"][
        "train"]["images"] == 14
    rows = (data / "train.csv").read_text().splitlines()
    path, label = rows[1].rsplit(",", 1)
    (data / "train.csv").write_text("\n".join([rows[0], f"{path},{(int(label) + 1) % 7}",
                                               *rows[2:]]) + "\n")
    with pytest.raises(TrainingError, match=r"not the data .* started on \(split 'train': "
                                            r"images per class neutral 2 -> 1, happiness 2 -> 3"):
        _tiny_train(data, out, resume=True, epochs=2)
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    assert _tiny_train(data, out, resume=True, epochs=2)["epochs"] == 2


@pytest.mark.parametrize("row, line, why", [
    ("img/a,b.png,0", "line 3: 3 field(s)", "must be quoted"),
    ("img/a.png", "line 3: 1 field(s)", "every row needs a field"),
])
def test_a_malformed_csv_row_is_named_by_file_and_line(tmp_path, row, line, why):
    from grefel.data import DatasetError, load_samples

    data = _dataset(tmp_path / "data", {"train": _good(1)})
    with open(data / "train.csv", "a") as f:
        f.write(row + "\n")
    with pytest.raises(DatasetError) as err:
        load_samples(data, "csv", "train")
    assert f"train.csv: {line}" in str(err.value) and why in str(err.value)


@pytest.mark.parametrize("text, says", [
    ("a\nb\na\n", "name(s) given twice: a"),
    ("a\n\nb\n", "line 2 is empty"),
    ("\na\nb\n", "line 1 is empty"),
])
def test_a_class_list_that_would_shift_labels_is_refused(tmp_path, text, says):
    from grefel.data import DatasetError, load_samples

    data = _dataset(tmp_path / "data", {"train": [0, 1]}, classes=None)
    (data / "classes.txt").write_text(text)
    with pytest.raises(DatasetError, match=re.escape(says)):
        load_samples(data, "csv", "train")


def test_blank_lines_at_the_end_of_the_class_list_are_fine(tmp_path):
    from grefel.data import load_samples

    data = _dataset(tmp_path / "data", {"train": [0, 1]}, classes=None)
    (data / "classes.txt").write_text("a\nb\n\n\n")
    assert load_samples(data, "csv", "train")[1] == ("a", "b")


# --- found by the fresh campaign (tools/fault_fresh.py) -----------------------------------


def test_an_image_listed_twice_with_two_labels_is_refused(tmp_path):
    from grefel.data import DatasetError, load_samples

    data = _dataset(tmp_path / "data", {"train": _good(14)})
    with open(data / "train.csv", "a") as f:
        f.write("img/train_0.png,5\n")  # train_0 is listed with label 0 already
    with pytest.raises(DatasetError, match=r"train_0.png: neutral and disgust; keep one label"):
        load_samples(data, "csv", "train")
    with open(data / "train.csv", "a") as f:  # the same label twice is no conflict
        f.write("img/train_1.png,1\n")
    lines = (data / "train.csv").read_text().splitlines()
    (data / "train.csv").write_text("\n".join(lines[:-2] + lines[-1:]) + "\n")
    assert len(load_samples(data, "csv", "train")[0]) == 15


def test_splits_that_share_images_are_warned_about_in_train_and_eval(tmp_path, capsys):
    import shutil

    from grefel.evaluate import _warn_shared_with_train

    data = _dataset(tmp_path / "data", {"train": _good(14), "val": _good(7)})
    shutil.copy(data / "train.csv", data / "test.csv")  # a test split of training images
    lines = (data / "train.csv").read_text().splitlines()
    (data / "val.csv").write_text("\n".join(lines[:8]) + "\n")  # header + 7 training images
    _tiny_train(data, tmp_path / "run")
    warnings = [x for x in capsys.readouterr().err.splitlines() if "shares" in x]
    assert len(warnings) == 1 and "split 'val' shares 7 image(s) with split 'train'" in warnings[0]
    from grefel.data import load_samples

    _warn_shared_with_train(data, "csv", "test", load_samples(data, "csv", "test")[0])
    err = capsys.readouterr().err
    assert "warning:" in err and "split 'test' shares 14 image(s) with split 'train'" in err


def test_export_refuses_an_onnx_with_a_nan_weight(tmp_path):
    """`grefel export m.onnx --onnx-only` wrote the artifacts of a model whose weight was NaN,
    exit 0, while predict and eval refused it: the ONNX source goes through grefel.finite too."""
    import onnx
    from onnx import helper, numpy_helper

    from export.pipeline import ExportError, _check_onnx_source
    from tools import fault_corpus as corpus

    path = corpus.mini_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.initializer.append(
        numpy_helper.from_array(np.array([math.nan, 0, 0], np.float32), "bias"))
    model.graph.node.insert(list(model.graph.node).index(softmax),
                            helper.make_node("Add", ["means", "bias"], ["shifted"]))
    softmax.input[0] = "shifted"
    onnx.save(model, str(path))
    with pytest.raises(ExportError, match=r"m.onnx: 1 of 3 values .* are NaN or inf"):
        _check_onnx_source(path)
    from click.testing import CliRunner

    from grefel.cli import cli

    result = CliRunner().invoke(cli, ["export", str(path), "--onnx-only", "--fp32", "--out",
                                      str(tmp_path / "e")])
    assert result.exit_code == 1 and "NaN or inf" in result.output
    assert not list(tmp_path.glob("e/*.onnx"))  # no artifact of the broken model


def test_ctrl_c_while_an_epoch_is_saved_still_leaves_a_resumable_run(tmp_path, monkeypatch):
    """Ctrl-C just after last.safetensors was written (before last.state.pt) left a run that
    could not resume ("last.state.pt does not exist"): the epoch's files are written as a set
    (grefel.fileio.deferred_signals), the interrupt taking effect after them."""
    import signal

    import grefel.train as train_module

    data = _dataset(tmp_path / "data", {"train": _good(14), "val": _good(7)})
    real = train_module.save_checkpoint

    def save_then_interrupt(path, *args, **kwargs):
        written = real(path, *args, **kwargs)
        if Path(path).name == "last.safetensors":
            signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, right here
        return written

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _tiny_train(data, tmp_path / "run")
    assert (tmp_path / "run" / "last.state.pt").is_file()
    monkeypatch.setattr(train_module, "save_checkpoint", real)
    _tiny_train(data, tmp_path / "run", resume=True, epochs=2)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())


@pytest.mark.parametrize("names", [SEVEN[:5], [*SEVEN[:6], "neutral"]])
def test_a_sidecar_whose_class_names_disagree_with_its_config_is_refused(tmp_path, names):
    """The sidecar's top-level class_names (5 for 7 outputs, or one name twice) were ignored
    silently while the records used config.class_names: the two copies must agree."""
    path = save_checkpoint(tmp_path / "m.safetensors", create_model("tiny", class_names=SEVEN))
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["class_names"] = names
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="disagrees with config.class_names"):
        load_checkpoint(path)


def test_data_synth_warns_of_a_split_without_a_class(tmp_path):
    """`grefel data synth --n 30` wrote a training split without fear, which `grefel train`
    then refused: the synth says so at once, with the fix."""
    from click.testing import CliRunner

    from grefel.cli import cli

    result = CliRunner().invoke(cli, ["data", "synth", "--out", str(tmp_path / "s"), "--n", "30",
                                      "--size", "32"])
    assert result.exit_code == 0, result.output
    lines = [x for x in result.output.splitlines() if x.startswith("warning: split 'train'")]
    assert len(lines) == 1 and "grefel train will refuse it" in lines[0]
    result = CliRunner().invoke(cli, ["data", "synth", "--out", str(tmp_path / "u"), "--n", "70",
                                      "--size", "32", "--imbalance", "uniform"])
    assert "warning: split 'train'" not in result.output


def test_choosing_on_the_test_split_is_warned_about(tmp_path, capsys):
    data = _dataset(tmp_path / "data", {"train": _good(14), "test": _good(7)})
    run_training(DataConfig(root=str(data), batch_size=8, workers=0, augment=False,
                            val_split="test"),
                 TrainConfig(out=str(tmp_path / "run"), preset="tiny", epochs=1, device="cpu",
                             threads=1, image_warmup=0, precise_bn=0, freeze="none"))
    warnings = [x for x in capsys.readouterr().err.splitlines() if "--val-split test" in x]
    assert len(warnings) == 1 and "optimistic" in warnings[0]
