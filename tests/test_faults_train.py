"""Faults and bad input on the training side (issue 13), through the CLI as users meet them.

`grefel train`, `grefel eval`, `grefel data synth` and `grefel weights import` under: a second run
into a held folder and a stale lock, `--resume` with changed settings, splits without a readable
image, checkpoints whose weights and sidecar disagree, the umask, stray labels, an existing
`data synth --out`, an unwritable `--out`, a full disk, bad option values, and a corpus of bad
datasets and bad checkpoints (truncated, other preset, corrupt sidecars, malicious pickles).
Every case asserts the exit status, one `Error:` line naming the file or option, and no
traceback; the corpus is generated here, at run time.

Kept small for the suite's time: one 1-epoch run of 4 images (module fixture) is copied for the
resume and state cases; everything else fails before a training step.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest
import torch
from click.testing import CliRunner, Result

from grefel.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from grefel.cli import cli
from grefel.config import TrainConfig
from grefel.model.grefel import GReFEL
from grefel.train_state import LOCK_NAME, STATE_FORMAT, lock_run_folder
from tests.test_train import CLASSES, _env, _rows, make_dataset


def _args(data: Path, out: Path, *extra: str) -> List[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size",
            "2", "--device", "cpu", "--preset", "tiny", "--precise-bn", "0", "--image-warmup", "0",
            *extra]


def one_error(res: Result, code: int, *fragments: str) -> str:
    """Exit `code`, no traceback, exactly one `Error:` line holding every fragment."""
    out = res.output
    assert res.exit_code == code, out
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, out
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def invoke(args: Sequence[str]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def run1(tmp_path_factory) -> Path:
    """A finished 1-epoch run (lr 1e-3) of 7 training images (one per class) and 2 validation
    images, read-only."""
    base = tmp_path_factory.mktemp("run1")
    data = make_dataset(base / "ds", n_train=7, n_val=2, n_test=2)
    res = invoke(_args(data, base / "run", "--lr", "1e-3"))
    assert res.exit_code == 0, res.output
    assert f"wrote {base / 'run'} (run folder: " in res.output  # where it wrote, one line
    return base / "run"


def _copy_run(run1: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run1, dest))


def _tiny_model(seed: int = 0) -> GReFEL:
    torch.manual_seed(seed)
    return GReFEL(TrainConfig(preset="tiny").model_config(CLASSES))


# --- item 1: one owner per run folder -----------------------------------------------------------


HOLD = ("import sys; from pathlib import Path; from grefel.train_state import lock_run_folder; "
        "lock_run_folder(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()")


def test_a_held_run_folder_is_refused_and_a_stale_lock_taken_over(run1, tmp_path):
    out = _copy_run(run1, tmp_path / "run")
    before = (out / "config.json").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_error(invoke(["train", "--out", out, "--resume"]), 1, str(out),
                         "in use by another grefel train", f"pid {holder.pid}")
        assert "choose another --out" in line
        data = Path(json.loads(before)["data"]["root"])
        one_error(invoke(_args(data, out)), 1, "in use by another grefel train")
    finally:
        holder.kill()  # SIGKILL: no chance to remove its lock file
        holder.wait()
    assert (out / "config.json").read_bytes() == before  # the refused runs wrote nothing
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # stale, left behind
    res = invoke(["train", "--out", out, "--resume"])  # 1 of 1 epochs done: nothing to train
    assert res.exit_code == 0, res.output
    assert f"took over the stale lock of {out} (pid {holder.pid}" in res.output
    assert not (out / LOCK_NAME).exists()  # released at the end of the run


def test_lock_without_flock_checks_the_recorded_pid(tmp_path, monkeypatch):
    """Where the file system has no flock (ENOLCK), the recorded pid decides: alive on this host
    is refused, dead is taken over."""
    import fcntl
    import socket

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)
    try:
        owner = {"pid": sleeper.pid, "host": socket.gethostname(), "started": "earlier"}
        (tmp_path / LOCK_NAME).write_text(json.dumps(owner))
        with pytest.raises(RuntimeError, match=f"pid {sleeper.pid} on"):
            lock_run_folder(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = lock_run_folder(tmp_path)  # the recorded owner is dead now
    assert lock.previous["pid"] == sleeper.pid
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_run_refused_before_writing_removes_only_the_folders_it_created(tmp_path):
    """Folders the lock created go again when the run stops before writing a file; a folder
    that was there before stays."""
    missing = tmp_path / "nope"
    one_error(invoke(_args(missing, tmp_path / "a" / "b" / "run")), 1, "does not exist")
    assert not (tmp_path / "a").exists()
    (tmp_path / "given").mkdir()
    one_error(invoke(_args(missing, tmp_path / "given")), 1, "does not exist")
    assert (tmp_path / "given").is_dir() and not any((tmp_path / "given").iterdir())


# --- item 2: --resume with changed settings -----------------------------------------------------


def test_resume_refuses_settings_that_change_the_run_and_lists_them(run1, tmp_path):
    out = _copy_run(run1, tmp_path / "run")
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    line = one_error(invoke(["train", "--out", out, "--resume", "--epochs", "2", "--lr", "1e-2",
                             "--batch-size", "4", "--set", "lambda_center=2"]), 1,
                     "--resume:", "train.lr: run 0.001, now 0.01",
                     "data.batch_size: run 2, now 4", "model.lambda_center: run 1.0, now 2.0",
                     "a resume may change only epochs, device, threads, workers, strict")
    assert "train.epochs" not in line  # allowed, so not among the differences
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files
    one_error(invoke(["train", "--out", out, "--resume", "--preset", "paper"]), 1,
              "train.preset: run 'tiny', now 'paper'", "model.dims")


def test_resume_rules_are_documented_in_docs_and_help():
    from grefel.train_state import RESUME_MAY_CHANGE

    page = (Path(__file__).resolve().parents[1] / "docs" / "train.md").read_text()
    shown = invoke(["train", "--help"]).output
    for key in RESUME_MAY_CHANGE:
        assert f"| `{key}` | allowed" in page, key
        assert f"  {key.split('.', 1)[1]} " in shown, key
    assert "refused" in shown and "anything else" in shown


def test_resume_keeps_the_run_settings_and_records_what_it_changed(run1, tmp_path):
    out = _copy_run(run1, tmp_path / "run")
    res = invoke(["train", "--out", out, "--resume", "--epochs", "2", "--device", "cpu",
                  "--workers", "0"])  # no --data, no --lr: the run's own values
    assert res.exit_code == 0, res.output
    assert "resumed" in res.output and "train.epochs 1 -> 2" in res.output
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["lr"] == 1e-3 and config["train"]["epochs"] == 2
    assert config["resumed"] == [{"after_epoch": 1, "amp": False,
                                  "changed": {"train.epochs": {"was": 1, "now": 2}}}]
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["lr"]) == pytest.approx(1e-3 * 0.995)  # the run's lr, decayed once
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.995**2)
    one_error(invoke(["train", "--out", out, "--resume", "--epochs", "1"]), 1,
              "has trained 2 epochs; --epochs 1 would end before that")
    one_error(invoke(["train", "--out", tmp_path / "nothing", "--resume"]), 1,
              "config.json does not exist; nothing to resume")


def test_a_cpu_run_resumed_with_amp_starts_a_fresh_loss_scale(run1):
    """--device cuda on a CPU run turns AMP on: the CPU run saved a disabled scaler ({}), which
    an enabled GradScaler refuses to load; the resume starts a fresh scale instead of failing
    (an enabled CPU GradScaler stands in for CUDA's: the same class and load_state_dict)."""
    from types import SimpleNamespace

    from grefel.train_state import load_state

    raw = _tiny_model()
    optimizer = torch.optim.Adam([p for p in raw.parameters() if p.requires_grad], lr=1e-3)
    run = SimpleNamespace(out=run1, raw=raw, optimizer=optimizer, sampler=object(), rank=0,
                          world=1, scaler=torch.amp.GradScaler("cpu", enabled=True),
                          scheduler=torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.995))
    load_state(run)
    assert run.epoch == 1 and run.scaler.get_scale() == 65536.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.995)


# --- item 4: every split is checked before epoch 1 ----------------------------------------------


def _corrupt(root: Path, split: str) -> None:
    for p in (root / "images").glob(f"{split}_*.png"):
        p.write_bytes(b"not an image")


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_without_a_readable_image_fails_before_epoch_1(split, tmp_path, monkeypatch):
    import grefel.train as train_mod

    def no_epoch(run, epoch):
        raise AssertionError("an epoch was trained")

    monkeypatch.setattr(train_mod, "train_one_epoch", no_epoch)
    data = make_dataset(tmp_path / "ds", n_train=4, n_val=2, n_test=0)
    _corrupt(data, split)
    n = 4 if split == "train" else 2
    one_error(invoke(_args(data, tmp_path / "run")), 1, f"split {split!r}",
              f"none of its {n} images can be read", f"{split}_000.png")
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_a_split_unreadable_after_the_check_stops_before_its_epoch_is_saved(tmp_path, monkeypatch):
    """The validation guard: no AxisError and nothing saved for that epoch."""
    import grefel.data.datasets as datasets

    monkeypatch.setattr(datasets, "check_readable", lambda samples, what: None)
    data = make_dataset(tmp_path / "ds", n_train=4, n_val=2, n_test=0)
    _corrupt(data, "val")
    one_error(invoke(_args(data, tmp_path / "run")), 1, "no image of split 'val' could be read "
              "at epoch 1", "the run stops before saving it")
    assert not (tmp_path / "run" / "last.safetensors").exists()


# --- items 8 and 11: checkpoint files ------------------------------------------------------------


def test_a_weights_file_that_does_not_match_its_sidecar_is_refused(tmp_path):
    data = make_dataset(tmp_path / "ds", n_train=2, n_val=0, n_test=2)
    a = save_checkpoint(tmp_path / "a.safetensors", _tiny_model(0))
    b = save_checkpoint(tmp_path / "b.safetensors", _tiny_model(1))
    shutil.copyfile(b, a)  # a's sidecar, b's weights: same shapes, other numbers
    line = one_error(invoke(["eval", a, "--data", data]), 1, str(a), str(tmp_path / "a.json"),
                     "does not match its sidecar")
    assert "SHA-256" in line
    with pytest.raises(CheckpointError, match="does not match its sidecar"):
        load_checkpoint(a)
    load_checkpoint(b)  # an untouched pair loads


def test_checkpoints_and_state_follow_the_umask(run1, tmp_path):
    old = os.umask(0o027)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", _tiny_model())
        modes = {p.name: p.stat().st_mode & 0o777 for p in (path, path.with_suffix(".json"))}
    finally:
        os.umask(old)
    assert modes == {"m.safetensors": 0o640, "m.json": 0o640}
    for name in ("last.safetensors", "best.safetensors", "last.state.pt", "config.json"):
        assert (run1 / name).stat().st_mode & 0o777 == 0o666 & ~old, name  # not 0600


# --- items 12, 13: labels without classes.txt, data synth into an existing folder ----------------


def _csv_dataset(root: Path, labels: Sequence[object], classes: Sequence[str] = ()) -> Path:
    make_dataset(root, n_train=len(labels), n_val=0, n_test=0)
    (root / "classes.txt").unlink()
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([f"images/train_{i:03d}.png", label] for i, label in enumerate(labels))
    return root


def test_a_stray_integer_label_without_classes_txt_is_an_error(tmp_path):
    data = _csv_dataset(tmp_path / "ds", [0, 1, 2, 3, 4, 5, 6, 12])
    one_error(invoke(_args(data, tmp_path / "run", "--val-split", "")), 1,
              "integer labels 0, 1, 2, 3, 4, 5, 6, 12 and no classes.txt",
              "indices 7, 8, 9, 10, 11 have no sample", str(data / "classes.txt"))


def test_data_synth_refuses_an_existing_folder_unless_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    one_error(invoke(["data", "synth", "--out", out, "--n", "3"]), 2, "--out", str(out),
              "--overwrite")
    assert (out / "mine.txt").read_text() == "keep me" and not (out / "images").exists()
    res = invoke(["data", "synth", "--out", out, "--n", "3", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert len(list((out / "images").glob("*.png"))) == 3
    res = invoke(["data", "synth", "--out", tmp_path / "empty", "--n", "3"])  # new: fine
    assert res.exit_code == 0, res.output
    assert f"wrote {tmp_path / 'empty'} (3 images, " in res.output  # where it wrote, one line


# --- item 14: unwritable --out, a full disk, bad option values ----------------------------------


def test_an_unwritable_out_is_one_line(tmp_path):
    data = make_dataset(tmp_path / "ds", n_train=7, n_val=0, n_test=2)  # the 7 classes
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder cannot be made inside a file, even by root
    one_error(invoke(_args(data, blocker / "run")), 1, f"--out {blocker / 'run'}",
              "choose a writable folder")
    ckpt = save_checkpoint(tmp_path / "m.safetensors", _tiny_model())
    one_error(invoke(["eval", ckpt, "--data", data, "--out", blocker / "ev"]), 1,
              str(blocker / "ev"), "Not a directory")
    one_error(invoke(["data", "synth", "--out", blocker / "sf", "--n", "3"]), 1, str(blocker))
    pth = tmp_path / "mfn.pth"
    trunk = {k[len("landmark."):]: v for k, v in _tiny_model().state_dict().items()
             if k.startswith("landmark.")}
    torch.save(trunk, pth)
    one_error(invoke(["weights", "import", pth, "--kind", "mobilefacenet", "--preset", "tiny",
                      "--out", blocker / "w.safetensors"]), 1, str(blocker / "w.safetensors"))


def test_a_full_disk_stops_the_run_and_keeps_the_last_good_checkpoint(run1, tmp_path,
                                                                      monkeypatch):
    out = _copy_run(run1, tmp_path / "run")
    write_bytes = pathlib.Path.write_bytes

    def full(self: Path, data: bytes) -> int:  # the kernel's answer on a full disk
        if self.name.startswith(".last.safetensors."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    one_error(invoke(["train", "--out", out, "--resume", "--epochs", "2"]), 1,
              str(out / "last.safetensors"), "No space left on device",
              f"Last good state: {out / 'last.state.pt'} (epoch 1)", "--resume")
    monkeypatch.undo()
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_NAME).exists()
    assert read_meta(out / "last.safetensors")["epoch"] == 1
    load_checkpoint(out / "last.safetensors")  # whole, and its sidecar agrees
    assert torch.load(out / "last.state.pt", weights_only=True)["epoch"] == 1
    res = invoke(["train", "--out", out, "--resume", "--epochs", "2"])  # space freed
    assert res.exit_code == 0, res.output
    assert [r["epoch"] for r in _rows(out)] == ["1", "2"]


BAD_OPTIONS = [
    (["eval", "{ckpt}", "--data", "{data}", "--batch-size", "0"], 2, "--batch-size"),
    (["eval", "{ckpt}", "--data", "{data}", "--workers", "-1"], 2, "--workers"),
    (["eval", "{ckpt}", "--data", "{data}", "--device", "bogus"], 1, "--device 'bogus'"),
    (["eval", "{onnx}", "--data", "{data}"], 1, "not a loadable ONNX model"),
    (["train", "--data", "{data}", "--out", "{out}", "--workers", "-1"], 2, "--workers"),
    (["train", "--data", "{data}", "--out", "{out}", "--batch-size", "0"], 2, "--batch-size"),
    (["train", "--data", "{data}", "--out", "{out}", "--device", "bogus"], 2, "'bogus'"),
    (["train", "--data", "{data}", "--out", "{out}", "--device", "cuda:x"], 1, "cuda:x"),
    (["train", "--data", "{data}", "--out", "{out}", "--set", "lr=fast"], 2,
     "lr takes a float, not 'fast'"),
    (["train", "--data", "{data}", "--out", "{out}", "--set", "data.workers=1.5"], 2,
     "data.workers takes an int, not '1.5'"),
    (["train", "--data", "{data}", "--out", "{out}", "--set", "amp=maybe"], 2,
     "amp takes a bool, not 'maybe'"),
    (["train", "--data", "{data}", "--out", "{out}", "--set", "delta=[1]"], 2,
     "delta takes a float or null, not '[1]'"),
    (["train", "--out", "{out}"], 2, "--data"),
]


@pytest.mark.parametrize("args,code,fragment", BAD_OPTIONS,
                         ids=[f"{a[0]} {' '.join(a[-2:])}" for a, _, _ in BAD_OPTIONS])
def test_bad_option_values_are_one_line(args, code, fragment, tmp_path):
    data = make_dataset(tmp_path / "ds", n_train=2, n_val=0, n_test=2)
    ckpt = tmp_path / "m.safetensors"
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x07")  # not an ONNX model: eval runs .onnx files, this one fails
    if "{ckpt}" in args:
        save_checkpoint(ckpt, _tiny_model())
    values = {"data": data, "out": tmp_path / "run", "ckpt": ckpt, "onnx": onnx}
    one_error(invoke([a.format(**values) for a in args]), code, fragment)
    assert not (tmp_path / "run" / "config.json").exists()


# --- item 15: the dataset corpus, through grefel train -------------------------------------------


def _imagefolder(root: Path, classes: Sequence[str], empty: Sequence[str] = ()) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            if c not in empty:
                Image.new("RGB", (32, 32), (40 * len(c), 80, 120)).save(folder / "0.png")
    return root


def _symlink_loop(root: Path) -> Path:
    data = _csv_dataset(root, [0, 1, 2, 3], CLASSES)
    (data / "images" / "train_001.png").unlink()
    os.symlink(data / "images" / "loop_b.png", data / "images" / "train_001.png")
    os.symlink(data / "images" / "train_001.png", data / "images" / "loop_b.png")
    return data


def _imagefolder_broken_link(root: Path) -> Path:
    data = _imagefolder(root, ["anger", "joy"])
    os.symlink(data / "nowhere.png", data / "train" / "joy" / "1.png")
    return data


DATASETS = {
    "broken link, imagefolder": (_imagefolder_broken_link,
                                 ["symbolic link(s) to nothing", "joy/1.png"]),
    "empty class folder": (lambda r: _imagefolder(r, ["anger", "joy"], empty=["joy"]),
                           ["empty class folder", "joy"]),
    "unknown label": (lambda r: _csv_dataset(r, ["happiness", "angry"], CLASSES),
                      ["1 unknown label", "line 3: 'angry'", "train.csv"]),
    "label out of range": (lambda r: _csv_dataset(r, [0, 9], CLASSES),
                           ["1 unknown label", "line 3: '9'"]),
    "negative label": (lambda r: _csv_dataset(r, [0, -1], CLASSES), ["line 3: '-1'"]),
    "stray label": (lambda r: _csv_dataset(r, [0, 1, 5]), ["indices 2, 3, 4 have no sample"]),
    "missing files": (lambda r: (_csv_dataset(r, [0, 1], CLASSES) / "images" /
                                 "train_001.png").unlink() or r,
                      ["1 images listed in train.csv missing", "train_001.png"]),
    "symlink loop": (_symlink_loop, ["broken links or symlink loops", "train_001.png"]),
    "missing split": (lambda r: (make_dataset(r, n_train=2, n_val=2) / "val.csv").unlink() or r,
                      ["val.csv"]),
    "one class, csv": (lambda r: _csv_dataset(r, ["happy", "happy"]),
                       ["one class only (happy)", "classes.txt"]),
    "one class, classes.txt": (lambda r: _csv_dataset(r, [0, 0], ["happy"]),
                               ["classes.txt: needs at least two distinct class names"]),
    "one class, imagefolder": (lambda r: _imagefolder(r, ["joy"]), ["one class only (joy)"]),
    "no such folder": (lambda r: r / "nope", ["dataset folder does not exist"]),
    "unknown layout": (lambda r: r.mkdir() or r, ["cannot tell the dataset layout"]),
}


@pytest.mark.parametrize("case", sorted(DATASETS))
def test_dataset_corpus_through_train(case, tmp_path):
    build, fragments = DATASETS[case]
    data = build(tmp_path / "ds")
    one_error(invoke(_args(data, tmp_path / "run")), 1, *fragments)
    assert not (tmp_path / "run").exists()  # a refused run leaves no (empty) run folder behind


def test_missing_split_through_eval(tmp_path):
    data = make_dataset(tmp_path / "ds", n_train=2, n_val=0, n_test=0)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", _tiny_model())
    one_error(invoke(["eval", ckpt, "--data", data]), 1, "test.csv")


# --- item 15: the checkpoint corpus, through eval, train --resume and weights import ------------


class Payload:
    """A pickle that would create `marker` when unpickled by an unrestricted loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _sidecar_edit(path: Path, edit) -> None:
    side = path.with_suffix(".json")
    side.write_text(edit(side.read_text()))


def _other_preset(text: str) -> str:
    meta = json.loads(text)
    meta["config"] = TrainConfig(preset="paper").model_config(CLASSES).to_dict()
    return json.dumps(meta)


CHECKPOINTS = {
    "truncated": (lambda p, m: p.write_bytes(p.read_bytes()[: 4000]), "does not match its sidecar"),
    "other preset": (lambda p, m: _sidecar_edit(p, _other_preset), "weights do not fit the model"),
    "sidecar not JSON": (lambda p, m: _sidecar_edit(p, lambda t: t[:50]), "not valid JSON"),
    "sidecar a JSON list": (lambda p, m: _sidecar_edit(p, lambda t: "[1, 2]"),
                            "holds a JSON list, not the object"),
    "sidecar without hash": (lambda p, m: _sidecar_edit(p, lambda t: json.dumps(
        {k: v for k, v in json.loads(t).items() if k != "weights_sha256"})), "no weights_sha256"),
    "sidecar missing": (lambda p, m: p.with_suffix(".json").unlink(), "sidecar m.json is missing"),
    "malicious pickle": (lambda p, m: _malicious_safetensors(p, m), "not a readable safetensors"),
}


def _malicious_safetensors(path: Path, marker: Path) -> None:
    """A pickle named .safetensors, with a sidecar that vouches for it (hash and all)."""
    from grefel.fileio import sha256_file

    path.write_bytes(pickle.dumps(Payload(marker)))
    _sidecar_edit(path, lambda t: json.dumps({**json.loads(t),
                                              "weights_sha256": sha256_file(path)}))


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_checkpoint_corpus_through_eval(case, tmp_path):
    data = make_dataset(tmp_path / "ds", n_train=2, n_val=0, n_test=2)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", _tiny_model())
    damage, fragment = CHECKPOINTS[case]
    marker = tmp_path / "pwned"
    damage(ckpt, marker)
    one_error(invoke(["eval", ckpt, "--data", data]), 1, fragment)
    assert not marker.exists()


def _state_payload(path: Path, marker: Path) -> None:
    torch.save({"format": STATE_FORMAT, "model": Payload(marker)}, path)


def _state_other_model(path: Path, marker: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["model"] = _tiny_model().state_dict()
    state["model"].pop(next(iter(state["model"])))
    state["model"]["extra.weight"] = torch.zeros(3)
    torch.save(state, path)


STATES = {
    "truncated": (lambda p, m: p.write_bytes(p.read_bytes()[: 3000]),
                  "cannot read the training state"),
    "random bytes": (lambda p, m: p.write_bytes(os.urandom(2048)), "cannot read the training"),
    "malicious pickle": (_state_payload, "cannot read the training state"),
    "another model's state": (_state_other_model, "the saved model does not fit this config"),
    "foreign dict": (lambda p, m: torch.save({"epoch": 3}, p), "not a grefel training state"),
    "missing keys": (lambda p, m: torch.save({"format": STATE_FORMAT, "model": torch.load(
        p, weights_only=True)["model"]}, p), "an incomplete or damaged training state"),
    "config.json corrupt": (lambda p, m: (p.parent / "config.json").write_text("{"),
                            "config.json cannot be read"),
}


@pytest.mark.parametrize("case", sorted(STATES))
def test_state_corpus_through_train_resume(case, run1, tmp_path):
    out = _copy_run(run1, tmp_path / "run")
    damage, fragment = STATES[case]
    marker = tmp_path / "pwned"
    damage(out / "last.state.pt", marker)
    one_error(invoke(["train", "--out", out, "--resume", "--epochs", "2"]), 1,
              str(out), fragment)
    assert not marker.exists() and not (out / LOCK_NAME).exists()
    assert read_meta(out / "last.safetensors")["epoch"] == 1  # nothing was overwritten


def _weights_file(kind: str, path: Path, marker: Path) -> Path:
    from grefel.weights import export_posterv2_state_dict

    if kind == "malicious pickle":
        torch.save({"state_dict": Payload(marker)}, path)
    elif kind == "truncated":
        torch.save(export_posterv2_state_dict(_tiny_model()), path)
        path.write_bytes(path.read_bytes()[: 5000])
    elif kind == "other preset":  # a tiny model's POSTER V2 file, imported as the paper preset
        torch.save(export_posterv2_state_dict(_tiny_model()), path)
    return path


@pytest.mark.parametrize("kind,fragment", [("malicious pickle", "posix.system"),
                                           ("truncated", "weights.pth"),
                                           ("other preset", "shape")])
def test_weights_corpus_through_import_and_pretrained(kind, fragment, tmp_path):
    marker = tmp_path / "pwned"
    src = _weights_file(kind, tmp_path / "weights.pth", marker)
    out = tmp_path / "imported.safetensors"
    one_error(invoke(["weights", "import", src, "--kind", "posterv2", "--out", out]), 1,
              fragment)
    assert not out.exists() and not marker.exists()
    if kind != "other preset":
        data = make_dataset(tmp_path / "ds", n_train=2, n_val=0, n_test=0)
        one_error(invoke(_args(data, tmp_path / "run", "--val-split", "",
                               "--pretrained-ir50", src)), 1, fragment)
        assert not marker.exists()

