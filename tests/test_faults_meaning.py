"""Issue 27, families 3 and 6: no non-finite model is ever written or read as weights, and a
training run never silently changes meaning (classes without samples, resumes on other data,
malformed CSV rows). In-process checks of the mechanisms; the CLI cases are
benchmarks/fault_families/training.py."""

from __future__ import annotations

import json
import math
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
    from benchmarks.fault_campaign import _csv_dataset

    return _csv_dataset(root, labels, classes)


def _good(n: int) -> list:
    return [i % 7 for i in range(n)]


def _tiny_train(data: Path, out: Path, **train) -> dict:
    d = DataConfig(root=str(data), batch_size=8, workers=0, augment=False)
    t = TrainConfig(out=str(out), preset="tiny", epochs=1, device="cpu", threads=1,
                    image_warmup=0, precise_bn=0, freeze="none", **train)
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


def test_train_with_infinite_lr_stops_at_the_step_and_saves_nothing(tmp_path):
    data = _dataset(tmp_path / "data", {"train": _good(14), "val": _good(7)})
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        _tiny_train(data, out, lr=math.inf)
    message = str(err.value)
    assert "epoch 1, step 1: the weights became non-finite" in message
    assert "lower --lr (now inf)" in message and "last good checkpoint: none yet" in message
    assert not list(out.glob("*.safetensors")) and not (out / "last.state.pt").exists()
