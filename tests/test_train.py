"""grefel.train: configs, pure schedule and RNG helpers, and `grefel train` end to end
(NaN stop, unreadable images, kill-and-resume in a subprocess, 2-process torchrun on CPU)."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from grefel.checkpoint import load_checkpoint, read_meta, sha256_file
from grefel.cli import cli
from grefel.config import DataConfig, TrainConfig
from grefel.train import TrainingError, apply_overrides, lr_at_epoch, run_training
from grefel.train_utils import recalibrate_batchnorm, rng_state, set_rng_state

CLASSES = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")
ROOT = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, n_train: int = 14, n_val: int = 7, n_test: int = 7,
                 corrupt: Sequence[int] = ()) -> Path:
    """A SynthFER-layout CSV dataset of small noisy PNGs (class = brightness), 7 classes; with
    fewer than 7 training images, the first `n_train` classes (at least 2): grefel train refuses
    a listed class without a training sample (issue 27.6).

    `corrupt`: train-split indices written as garbage bytes instead of a PNG.
    """
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    k = len(CLASSES) if n_train == 0 or n_train >= len(CLASSES) else max(n_train, 2)
    (root / "classes.txt").write_text("\n".join(CLASSES[:k]) + "\n")
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n == 0:
            continue
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "group", "skin"])
            for i in range(n):
                c = i % k
                rel = f"images/{split}_{i:03d}.png"
                if split == "train" and i in corrupt:
                    (root / rel).write_bytes(b"this is not a png")
                else:
                    img = (rng.random((32, 32, 3)) * 60 + 25 * c).astype(np.uint8)
                    Image.fromarray(img).save(root / rel)
                w.writerow([rel, CLASSES[c], f"person{i % 3}", "light" if i % 2 else "dark"])
    return root


def _rows(run: Path) -> List[Dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _env() -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _train_args(data: Path, out: Path, epochs: int, batch: int = 7) -> List[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs),
            "--batch-size", str(batch), "--device", "cpu", "--preset", "tiny",
            "--image-warmup", "0"]  # the warm-up is measured elsewhere; these test the run


def test_lr_at_epoch_matches_exponential_lr():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.995)
    for epoch in range(5):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at_epoch(3e-4, 0.995, epoch))
        opt.step()
        sched.step()
    assert lr_at_epoch(1.0, 0.5, 3) == 0.125


def test_configs_validate_override_and_build_model_config():
    d, t = apply_overrides(DataConfig(), TrainConfig(), ["lr=1e-3", "data.workers=2",
                                                         "epochs=3", "delta=2", "device=cpu"])
    assert (t.lr, d.workers, t.epochs, t.delta, t.device) == (1e-3, 2, 3, 2.0, "cpu")
    for bad in (["nope=1"], ["lr"], ["data.lr=1"]):
        with pytest.raises(ValueError):
            apply_overrides(DataConfig(), TrainConfig(), bad)
    with pytest.raises(ValueError, match="freeze"):
        TrainConfig(freeze="everything")
    with pytest.raises(ValueError, match="batch_size"):
        DataConfig(batch_size=1)
    cfg = TrainConfig(variant="anchors", anchors_per_class=3, freeze="none").model_config(CLASSES)
    assert (cfg.anchors_per_class, cfg.frozen, cfg.use_attention) == (3, (), False)
    assert cfg.class_names == CLASSES and cfg.delta == 1.0 and cfg.name == "tiny"


def test_rng_state_survives_weights_only_load(tmp_path):
    import random

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_train_writes_run_folder_and_refuses_to_overwrite(tmp_path):
    data = make_dataset(tmp_path / "ds", n_train=14, n_val=7)
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(cli, _train_args(data, out, 1) + ["--class-weights", "inverse",
                                                           "--set", "label_smoothing=0.11"])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["label_smoothing"] == 0.11 and config["model"]["num_classes"] == 7
    meta = read_meta(out / "best.safetensors")
    assert meta["epoch"] == 1 and meta["train_config"]["class_weights"] == "inverse"
    assert meta["data_config"]["root"] == str(data) and meta["class_names"] == list(CLASSES)
    assert "val_acc" in meta["metrics"]
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert [r["epoch"] for r in _rows(out)] == ["1"]
    res = runner.invoke(cli, _train_args(data, out, 1))
    assert res.exit_code == 1 and "--resume" in res.output and "Traceback" not in res.output


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from grefel.model.losses import GReFELLoss, LossTerms

    data = make_dataset(tmp_path / "ds", n_train=14, n_val=0)
    out = tmp_path / "run"
    forward = GReFELLoss.forward
    calls = {"n": 0}

    def poisoned(self, o, targets, model):
        calls["n"] += 1
        terms = forward(self, o, targets, model)
        if calls["n"] > 2:  # epoch 1 has 2 steps; the first step of epoch 2 turns NaN
            return LossTerms(terms.total * float("nan"), *terms[1:])
        return terms

    monkeypatch.setattr(GReFELLoss, "forward", poisoned)
    d = DataConfig(root=str(data), val_split="", batch_size=7)
    t = TrainConfig(out=str(out), epochs=3, device="cpu", image_warmup=0)
    with pytest.raises(TrainingError) as err:
        run_training(d, t)
    message = str(err.value)
    assert "non-finite loss" in message and "epoch 2, step 1" in message
    assert str(data / "images") in message  # names the batch's files
    assert "last.safetensors (epoch 1)" in message
    assert read_meta(out / "last.safetensors")["epoch"] == 1
    assert load_checkpoint(out / "last.safetensors")[1]["weights_sha256"] == sha256_file(
        out / "last.safetensors")


def test_unreadable_images_are_named_or_an_error_with_strict(tmp_path):
    data = make_dataset(tmp_path / "ds", n_train=14, n_val=0, corrupt=(3,))
    res = CliRunner().invoke(cli, _train_args(data, tmp_path / "a", 1) + ["--val-split", ""])
    assert res.exit_code == 0, res.output
    assert "skipped 1 unreadable" in res.output and "train_003.png" in res.output
    assert _rows(tmp_path / "a")[0]["skipped"] == "1"
    strict = ["--strict", "--val-split", ""]
    res = CliRunner().invoke(cli, _train_args(data, tmp_path / "b", 1) + strict)
    assert res.exit_code == 1 and "train_003.png" in res.output
    assert "Traceback" not in res.output


def test_bad_dataset_folder_is_a_click_error(tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, _train_args(tmp_path / "empty", tmp_path / "run", 1))
    assert res.exit_code == 1 and "Error" in res.output and "Traceback" not in res.output
    assert str(tmp_path / "empty") in res.output


# Runs `grefel ARGS` with grefel.train.optimizer_step wrapped to SIGKILL the process at its
# KILL_AT-th call (0 = never): a kill at a fixed point of training, not after a polled file.
KILL_AT_STEP = r"""
import os, signal, sys
import grefel.train as train
kill_at, calls, step = int(sys.argv[1]), [0], train.optimizer_step
def counted(*args, **kwargs):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(*args, **kwargs)
train.optimizer_step = counted
from grefel.cli import cli
cli(sys.argv[2:], prog_name="grefel")
"""


def _grefel_killed_at(step: int, args: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(step), *args], env=_env(),
                          capture_output=True, text=True, timeout=300)


def test_kill_mid_epoch_then_resume(tmp_path):
    """SIGKILL at the 3rd optimizer step (epoch 2 of 2, step 1 of 2), then --resume: the run
    ends bitwise where an uninterrupted one does (weights, optimizer, RNG, metrics)."""
    data = make_dataset(tmp_path / "ds", n_train=8, n_val=2)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    res = _grefel_killed_at(3, _train_args(data, killed, 2, batch=4))
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    state = killed / "last.state.pt"
    assert torch.load(state, weights_only=True)["epoch"] == 1  # killed inside epoch 2
    assert (killed / ".lock").exists()  # a SIGKILL leaves the lock behind
    res = _grefel_killed_at(0, _train_args(data, killed, 2, batch=4) + ["--resume"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed" in res.stderr and "took over the stale lock" in res.stderr
    res = _grefel_killed_at(0, _train_args(data, whole, 2, batch=4))
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("last.safetensors", "best.safetensors"):
        assert sha256_file(killed / name) == sha256_file(whole / name), name
    a, b = (torch.load(d / "last.state.pt", weights_only=True) for d in (killed, whole))
    assert a["epoch"] == b["epoch"] == 2 and a["scheduler"]["last_epoch"] == 2
    for key in ("model", "optimizer", "rng", "best"):
        assert _same(a[key], b[key]), key
    timing = ("epoch_seconds", "images_per_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"]) and len(a["history"]) == 2
    assert [r["epoch"] for r in _rows(killed)] == ["1", "2"]


def _same(a, b) -> bool:
    """Bitwise equality of nested dicts / lists of tensors and plain values."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(tmp_path):
    data = make_dataset(tmp_path / "ds", n_train=16, n_val=7)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "grefel"] + _train_args(data, out, 1, 4)
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == ["1"]
    assert float(rows[0]["val_acc"]) * 7 == pytest.approx(round(float(rows[0]["val_acc"]) * 7))
    assert res.stdout.count('"epochs": 1') == 1  # only rank 0 prints the summary
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    load_checkpoint(out / "last.safetensors")


def test_recalibrate_batchnorm_averages_batches_and_spares_frozen_parts():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(3))
    batches = [torch.randn(4, 3) * 2 + 5 for _ in range(3)]
    assert recalibrate_batchnorm(net, batches, max_images=8) == 8  # stops after two batches
    bn = net[1]
    means = torch.stack([b.mean(0) for b in batches[:2]]).mean(0)  # plain average, not an EMA
    vars_ = torch.stack([b.var(0) for b in batches[:2]]).mean(0)  # unbiased, as BatchNorm
    assert torch.allclose(bn.running_mean, means) and torch.allclose(bn.running_var, vars_)
    assert bn.momentum == 0.1 and net.training

    from grefel.model.grefel import GReFEL

    model = GReFEL(TrainConfig(preset="tiny", freeze="landmark").model_config(CLASSES))
    frozen = next(m for m in model.landmark.modules() if isinstance(m, torch.nn.BatchNorm2d))
    head = model.head.net[2]  # BatchNorm1d of eq. 9's MLP
    before = frozen.running_mean.clone()
    recalibrate_batchnorm(model.eval(), [torch.rand(2, 3, 112, 112)], max_images=2)
    assert torch.equal(frozen.running_mean, before) and not model.training
    assert not torch.equal(head.running_mean, torch.zeros_like(head.running_mean))


def test_pretrained_mobilefacenet_flag_loads_the_frozen_landmark_stream(tmp_path):
    """--pretrained-mobilefacenet goes through grefel.weights.import_pretrained."""
    from grefel.model.grefel import GReFEL

    torch.manual_seed(123)
    donor = GReFEL(TrainConfig(preset="tiny").model_config(CLASSES))
    trunk = {k[len("landmark."):]: v for k, v in donor.state_dict().items()
             if k.startswith("landmark.")}
    torch.save({"state_dict": trunk}, tmp_path / "mfn.pth.tar")
    data = make_dataset(tmp_path / "ds", n_train=14, n_val=0)
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, _train_args(data, out, 1) + [
        "--val-split", "", "--pretrained-mobilefacenet", str(tmp_path / "mfn.pth.tar")])
    assert res.exit_code == 0, res.output
    assert "mobilefacenet tensors" in res.output
    model, _ = load_checkpoint(out / "last.safetensors")
    for k, v in trunk.items():  # frozen by default: still exactly the imported weights
        assert torch.equal(model.landmark.state_dict()[k], v), k


def test_tensorboard_scalars_when_installed(tmp_path, monkeypatch):
    """Checks our glue, not TensorBoard: a recording stand-in for torch.utils.tensorboard
    receives every epoch's numeric metrics (the real package is an optional extra)."""
    import types

    calls: List[tuple] = []

    class RecordingWriter:
        def __init__(self, log_dir: str) -> None:
            calls.append(("open", log_dir))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append(("scalar", tag, value, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            calls.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = RecordingWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    data = make_dataset(tmp_path / "ds", n_train=14, n_val=7)
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, _train_args(data, out, 2))
    assert res.exit_code == 0, res.output
    assert calls[0] == ("open", str(out / "tensorboard")) and calls[-1] == ("close",)
    scalars = {(c[1], c[3]): c[2] for c in calls if c[0] == "scalar"}
    rows = _rows(out)
    for epoch in (1, 2):
        row = rows[epoch - 1]
        assert scalars[("train/loss", epoch)] == pytest.approx(float(row["train_loss"]), rel=1e-5)
        assert scalars[("val/acc", epoch)] == pytest.approx(float(row["val_acc"]), rel=1e-5)
        assert ("lr", epoch) in scalars and ("images_per_s", epoch) in scalars


def test_image_warmup_trains_only_the_image_stream_and_is_not_repeated(tmp_path, monkeypatch):
    """The warm-up changes the image stream only, leaves GReFEL's keys as they are, is recorded
    (warmup.json, the resumable state) and a resumed run does not warm up again."""
    import grefel.train as train_mod
    from grefel.train import build_run, warm_up_image_stream

    data = make_dataset(tmp_path / "ds", n_train=14, n_val=7)
    d = DataConfig(root=str(data), batch_size=7)
    cfg = TrainConfig(out=str(tmp_path / "probe"), preset="tiny", epochs=1, image_warmup=3,
                      freeze="none", device="cpu", seed=0)
    run = build_run(d, cfg)
    before = {k: v.clone() for k, v in run.raw.state_dict().items()}
    warm = warm_up_image_stream(run)
    after = run.raw.state_dict()
    assert warm["steps"] == 3 and np.isfinite(warm["loss"]) and set(after) == set(before)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"image"}

    out = tmp_path / "run"
    runner = CliRunner()
    args = _train_args(data, out, 1) + ["--image-warmup", "3", "--freeze", "none"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "warmup.json").read_text())["steps"] == 3
    assert torch.load(out / "last.state.pt", weights_only=True)["warmed_up"] is True

    def no_second_warmup(run):
        raise AssertionError("the warm-up ran again on --resume")

    monkeypatch.setattr(train_mod, "warm_up_image_stream", no_second_warmup)
    res = runner.invoke(cli, _train_args(data, out, 2) + ["--image-warmup", "3", "--freeze",
                                                           "none", "--resume"])
    assert res.exit_code == 0, res.output
    assert [r["epoch"] for r in _rows(out)] == ["1", "2"]
    res = runner.invoke(cli, _train_args(data, tmp_path / "x", 1) + ["--image-warmup", "3",
                                                                      "--freeze", "image"])
    assert res.exit_code == 2 and "freeze=image" in res.output


def test_best_checkpoint_is_chosen_by_the_selected_metric():
    """--select macro_f1: on imbalanced data an epoch that predicts the majority class only has
    the best accuracy and the worst macro-F1; best.safetensors must follow the selection."""
    from grefel.train import best_metric

    row = {"train_acc": 0.9, "val_acc": 0.7, "val_macro_f1": 0.2}
    assert best_metric(TrainConfig(), row) == "val_acc"
    assert best_metric(TrainConfig(select="macro_f1"), row) == "val_macro_f1"
    assert best_metric(TrainConfig(select="macro_f1"), {"train_acc": 0.9}) == "train_acc"
    with pytest.raises(ValueError, match="select: accuracy or macro_f1"):
        TrainConfig(select="loss")


def test_train_records_best_by_macro_f1(tmp_path, monkeypatch):
    """End to end: the epoch rows' val_macro_f1 decides `best` (and best.safetensors' epoch)."""
    import grefel.train as train_mod

    data = make_dataset(tmp_path / "d")
    scores = iter([(0.6, 0.1), (0.4, 0.3), (0.5, 0.2)])  # (acc, macro-F1) of epochs 1-3

    def fake_validate(run):
        acc, f1 = next(scores)
        return {"val_acc": acc, "val_macro_f1": f1}

    monkeypatch.setattr(train_mod, "validate", fake_validate)
    out = tmp_path / "run"
    summary = run_training(DataConfig(root=str(data), batch_size=7),
                           TrainConfig(out=str(out), epochs=3, select="macro_f1", device="cpu",
                                       precise_bn=0, image_warmup=0))
    assert summary["best"] == {"metric": "val_macro_f1", "value": 0.3, "epoch": 2}
    assert read_meta(out / "best.safetensors")["metrics"]["epoch"] == 2


def test_a_fresh_run_freezes_only_a_stream_with_weights(tmp_path):
    """Freezing a stream without weights keeps it random for the whole run: refused in one line
    naming the option that gives it weights and --freeze none, before the run folder exists;
    a resumed run keeps what it was started with (issue 26)."""
    from grefel.train import check_frozen_streams

    data = make_dataset(tmp_path / "ds", n_train=14, n_val=7)
    for stream, option in (("landmark", "--pretrained-mobilefacenet"),
                           ("image", "--pretrained-ir50")):
        out = tmp_path / stream
        res = CliRunner().invoke(cli, _train_args(data, out, 1) + ["--freeze", stream])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1, res.output
        assert f"--freeze {stream}" in lines[0] and option in lines[0]
        assert "--freeze none" in lines[0] and not out.exists()
    check_frozen_streams(TrainConfig(out="old", freeze="landmark", resume=True))


def test_the_defaults_freeze_only_what_has_weights_and_warm_up_the_image_stream():
    """auto: the landmark stream frozen when it has weights, else none; the image-stream
    warm-up (without which the tiny preset stays at chance) unless that stream is frozen or
    comes from --init."""
    from grefel.config import AUTO_IMAGE_WARMUP

    def resolved(**fields):
        t = TrainConfig(**fields)
        return t.frozen_stream(), t.warmup_steps()

    assert resolved() == ("none", AUTO_IMAGE_WARMUP) == ("none", 150)
    assert resolved(pretrained_mobilefacenet="m.safetensors") == ("landmark", AUTO_IMAGE_WARMUP)
    assert resolved(init="ckpt.safetensors") == ("landmark", 0)
    assert resolved(freeze="image", pretrained_ir50="ir.safetensors") == ("image", 0)
    assert resolved(image_warmup=0) == ("none", 0)
    assert resolved(freeze="none", pretrained_mobilefacenet="m.safetensors") == ("none", 150)


def test_grefel_train_warms_the_image_stream_up_by_default(tmp_path, monkeypatch):
    """Without --image-warmup the run warms the image stream up for AUTO_IMAGE_WARMUP steps
    (the real warm-up replaced by a fake with its API: 150 real steps take a while on a CPU)."""
    import grefel.train as train_mod

    steps = []

    def fake_warm_up(run):
        steps.append(run.cfg.warmup_steps())
        return {"steps": steps[-1], "first_loss": 1.9, "loss": 1.5, "acc": 0.4, "seconds": 0.0}

    monkeypatch.setattr(train_mod, "warm_up_image_stream", fake_warm_up)
    data = make_dataset(tmp_path / "ds", n_train=14, n_val=7)
    out = tmp_path / "run"
    args = [a for a in _train_args(data, out, 1) if a not in ("--image-warmup", "0")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert steps == [150] and json.loads((out / "warmup.json").read_text())["steps"] == 150
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["freeze"] == "auto" and config["image_warmup"] is None
