"""Issue 27.1-2: an output never destroys an input (or another output), and a running command
keeps the model it loaded whatever happens to the file.

27.1: each case gives a command an output path that is one of its inputs (the photo, the model,
a checkpoint's sidecar, a dataset's file, the source folder), spelled directly or through a
symbolic link, a hard link, `./` or an absolute path, or two outputs that are one path. Every
one must be refused with one `Error:` line before anything is written, and every input must be
byte-identical afterwards (hashed before). A few are legal look-alikes (an annotate folder inside
the source folder is one, its walk is another helper's: tests/test_output_paths.py; an export
into the source's own folder) that must run and keep the inputs.

27.2: `grefel predict` over a video while the ONNX model (weights memory-mapped) is truncated
and rewritten in place: it must go on with the records of an undisturbed run (never SIGBUS).
The child's stdout is a pipe shrunk to one page, so it is still mid-video when the model is
rewritten (it blocks on the full pipe after a few records): no timing involved.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Union

from tools.fault_campaign import (
    ROOT,
    SEVEN,
    TINY_TRAIN,
    Case,
    Proc,
    _csv_dataset,
    _good_labels,
    _tiny_checkpoint,
    grefel,
)

FAMILY = "27.1-2 outputs never alias inputs; a loaded model is kept"
SIDE = "outputs"
F_SETPIPE_SZ = 1031  # linux/fcntl.h
ENV = {"PYTHONPATH": str(ROOT)}  # the cases run in their work folders: grefel from this tree
Args = Union[Sequence[str], Callable[[Path], Sequence[str]]]


def _hashes(paths: Sequence[Path]) -> Dict[Path, str]:
    """SHA-256 of every file under `paths` (files or folders)."""
    out: Dict[Path, str] = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            out[f] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _kept(paths: Sequence[Path]) -> Callable[[Path], Callable[[List[Proc], Path], str]]:
    """A check factory: the inputs under `paths` (relative to the work folder) are hashed when
    the case sets up and must be byte-identical afterwards."""
    def make(work: Path) -> Callable[[List[Proc], Path], str]:
        before = _hashes([work / p for p in paths])

        def check(procs: List[Proc], w: Path) -> str:
            after = _hashes([w / p for p in paths])
            changed = sorted(str(p.relative_to(w)) for p in before if before[p] != after.get(p))
            return f"lost: {', '.join(changed)} changed or gone" if changed else ""

        return check
    return make


class _Setup:
    """Scratch files made once (models, a photo, a video, a checkpoint, datasets) and copied
    into each case's work folder, so a case that fails destroys only its own copies."""

    def __init__(self, scratch: Path) -> None:
        import cv2
        import numpy as np

        from tools.fault_corpus import mini_onnx

        scratch.mkdir(parents=True, exist_ok=True)
        self.root = scratch
        mini_onnx(scratch / "mini.onnx")
        photo = np.zeros((60, 80, 3), np.uint8)
        photo[..., 2] = 200  # BGR: red
        cv2.imwrite(str(scratch / "img.jpg"), photo)
        writer = cv2.VideoWriter(str(scratch / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                                 (64, 48))
        rng = np.random.default_rng(0)
        for _ in range(90):
            writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        writer.release()
        (scratch / "faces").mkdir()
        for i in range(3):
            shutil.copyfile(scratch / "img.jpg", scratch / "faces" / f"f{i}.jpg")
        _tiny_checkpoint(scratch / "ck" / "X.safetensors")
        self._ir50(scratch / "ir" / "ir50.safetensors")
        good = {"train": _good_labels(), "val": _good_labels(7), "test": _good_labels(7)}
        _csv_dataset(scratch / "data", good, SEVEN)
        from grefel.data.synthfer import generate_synthfer

        generate_synthfer(scratch / "ds", 30, seed=0, size=32)  # landmarks and identities
        mux = scratch / "mux"
        (mux / "images").mkdir(parents=True)
        (mux / "data").mkdir()
        rows = ["user.id,image,emotion"]
        for i in range(40):
            name = f"p{i % 10}_{i}.jpg"
            shutil.copyfile(scratch / "img.jpg", mux / "images" / name)
            rows.append(f"p{i % 10},{name},{['happiness', 'neutral'][i % 2]}")
        (mux / "data" / "legend.csv").write_text("\n".join(rows) + "\n")
        shipped = ROOT / "grefel" / "runtime" / "models" / "grefel-tiny-muxspace"
        (scratch / "mapped").mkdir()
        for suffix in (".onnx", ".json"):  # weights large enough to be memory-mapped
            shutil.copyfile(shipped.with_suffix(suffix),
                            scratch / "mapped" / f"model{suffix}")

    @staticmethod
    def _ir50(path: Path) -> None:
        """IR-50 stages in face.evoLVe's names (tiny widths), as `weights import --kind ir50
        --preset tiny` reads them."""
        import torch
        from safetensors.torch import save_file

        from grefel.config import GReFELConfig
        from grefel.pretrain import IdentityNet

        torch.manual_seed(0)
        path.parent.mkdir(parents=True)
        state = IdentityNet(GReFELConfig.preset("tiny"), 16).stream_state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    def fp16_pair(self, work: Path) -> None:
        """E/m.onnx (FP32) and E/m.fp16.onnx (FP16-typed), as an earlier export left them."""
        from export.fp16 import convert_to_fp16

        (work / "E").mkdir()
        shutil.copyfile(self.root / "mini.onnx", work / "E" / "m.onnx")
        convert_to_fp16(work / "E" / "m.onnx", work / "E" / "m.fp16.onnx")

    def triton_repo(self, work: Path) -> None:
        """repo/: a Triton model repository whose model is the mini ONNX."""
        (work / "repo" / "grefel" / "1").mkdir(parents=True)
        shutil.copyfile(self.root / "mini.onnx", work / "repo" / "grefel" / "1" / "model.onnx")
        (work / "repo" / "grefel" / "config.pbtxt").write_text('name: "grefel"\n')

    def copy(self, work: Path, *names: str) -> None:
        for name in names:
            src, dest = self.root / name, work / name
            if src.is_dir():
                shutil.copytree(src, dest, symlinks=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)


def _case(setup: _Setup, name: str, args: Args, copies: Sequence[str],
          kept: Sequence[str], expect: str = "error",
          prepare: Callable[[Path], None] = lambda w: None,
          extra: Callable[[List[Proc], Path], str] = lambda p, w: "") -> Case:
    """A case run in its work folder (as the working directory): `copies` are copied there,
    `prepare` makes links, the files under `kept` are hashed and must be unchanged after
    `grefel ARGS` (ARGS: a list, or made from the work folder), and `extra` checks the rest of a
    legal case's result."""
    checks: Dict[Path, Callable[[List[Proc], Path], str]] = {}

    def run(work: Path) -> List[Proc]:
        setup.copy(work, *copies)
        prepare(work)
        checks[work] = _kept([Path(k) for k in kept])(work)
        argv = args(work) if callable(args) else args
        return [grefel(*argv, cwd=work, env=ENV)]

    def check(procs: List[Proc], work: Path) -> str:
        return checks[work](procs, work) or extra(procs, work)

    return Case(name, SIDE, "27.1", expect, run, check)


def _links(work: Path) -> None:
    os.symlink("img.jpg", work / "link.jpg")
    os.link(work / "img.jpg", work / "hard.jpg")


def _exists(*names: str) -> Callable[[List[Proc], Path], str]:
    return lambda p, w: "".join(f"lost: no {n}; " for n in names if not (w / n).exists())


def _cases_27_1(s: _Setup) -> List[Case]:
    mini = ["-w", "mini.onnx", "--aligned"]
    ck = ["ck/X.safetensors", "--data", "data"]
    pre = ["pretrain", "landmarks", "--data", "ds", "--steps", "1", "--preset", "tiny",
           "--batch-size", "4", "--precise-bn", "0", "--threads", "1"]
    imp = ["weights", "import", "ir/ir50.safetensors", "--kind", "ir50", "--preset", "tiny"]
    return [
        _case(s, "predict img.jpg --out img.jpg (the photo)",
              ["predict", "img.jpg", *mini, "--out", "img.jpg"], ["img.jpg", "mini.onnx"],
              ["img.jpg"]),
        _case(s, "predict --out the model given with -w (./ spelling)",
              ["predict", "img.jpg", *mini, "--out", "./mini.onnx"], ["img.jpg", "mini.onnx"],
              ["mini.onnx"]),
        _case(s, "predict --out a symbolic link to the photo",
              ["predict", "img.jpg", *mini, "--out", "link.jpg"], ["img.jpg", "mini.onnx"],
              ["img.jpg"], prepare=_links),
        _case(s, "predict --out a hard link to the photo",
              ["predict", "img.jpg", *mini, "--out", "hard.jpg"], ["img.jpg", "mini.onnx"],
              ["img.jpg"], prepare=_links),
        _case(s, "predict video --annotate the source video (absolute path)",
              lambda w: ["predict", "clip.avi", *mini, "--max-frames", "3", "--annotate",
                         str(w / "clip.avi")],
              ["clip.avi", "mini.onnx"], ["clip.avi"]),
        _case(s, "predict --out r.json --json r.json", ["predict", "img.jpg", *mini, "--out",
              "r.json", "--json", "r.json"], ["img.jpg", "mini.onnx"], ["img.jpg"]),
        _case(s, "predict --annotate equal to --out",
              ["predict", "img.jpg", *mini, "--out", "a.png", "--annotate", "./a.png"],
              ["img.jpg", "mini.onnx"], ["img.jpg"]),
        _case(s, "predict --json onto the model's sidecar",
              ["predict", "img.jpg", "-w", "mapped/model.onnx", "--aligned", "--json",
               "mapped/model.json"], ["img.jpg", "mapped"], ["mapped"]),
        _case(s, "predict DIR --out a photo inside DIR",
              ["predict", "faces", *mini, "--out", "faces/f1.jpg"], ["faces", "mini.onnx"],
              ["faces"]),
        _case(s, "predict DIR --annotate DIR (the source folder)",
              ["predict", "faces", *mini, "--annotate", "faces/."], ["faces", "mini.onnx"],
              ["faces"]),
        _case(s, "eval X.safetensors --json X.json (its sidecar)",
              ["eval", *ck, "--out", "ev", "--json", "ck/X.json"], ["ck", "data"], ["ck"]),
        _case(s, "eval --json equal to a file of --out (metrics.json)",
              ["eval", *ck, "--out", "ev", "--json", "ev/metrics.json"], ["ck", "data"],
              ["ck", "data"]),
        _case(s, "eval --out the dataset folder", ["eval", *ck, "--out", "data"],
              ["ck", "data"], ["data"]),
        _case(s, "weights import --json onto the new checkpoint's sidecar",
              [*imp, "--out", "ck/Y.safetensors", "--json", "ck/Y.json"], ["ir", "ck"],
              ["ir", "ck"]),
        _case(s, "weights import --out equal to SRC (through a symbolic link)",
              [*imp, "--out", "alias.safetensors"], ["ir"], ["ir"],
              prepare=lambda w: os.symlink("ir/ir50.safetensors", w / "alias.safetensors")),
        _case(s, "export NAME.fp16.onnx --fp32 --out DIR keeps DIR/NAME.onnx",
              ["export", "E/m.fp16.onnx", "--fp32", "--onnx-only", "--out", "E"], [],
              ["E/m.onnx", "E/m.fp16.onnx"], expect="ok",
              prepare=s.fp16_pair, extra=_exists("E/m.fp16.checks.json")),
        _case(s, "export m.onnx --out its own folder (legal: the source is used in place)",
              ["export", "E/m.onnx", "--fp32", "--onnx-only", "--out", "E"], [],
              ["E/m.onnx", "E/m.fp16.onnx"], expect="ok", prepare=s.fp16_pair,
              extra=_exists("E/m.checks.json")),
        _case(s, "export --json equal to an artifact in --out (NAME.checks.json)",
              ["export", "E/m.onnx", "--fp32", "--onnx-only", "--out", "E", "--json",
               "E/m.checks.json"], [], ["E"], prepare=s.fp16_pair),
        _case(s, "export --json onto the source model", ["export", "E/m.onnx", "--fp32",
              "--onnx-only", "--out", "out", "--json", "E/m.onnx"], [], ["E"],
              prepare=s.fp16_pair),
        _case(s, "export --triton REPO whose grefel/1/model.onnx is the source",
              ["export", "repo/grefel/1/model.onnx", "--fp32", "--onnx-only", "--out", "out",
               "--triton", "repo"], [], ["repo"], prepare=s.triton_repo),
        _case(s, "train --out the data folder (through ./)",
              ["train", "--data", "data", "--out", "./data", *TINY_TRAIN], ["data"], ["data"]),
        _case(s, "train --json onto the --init checkpoint's sidecar",
              ["train", "--data", "data", "--out", "run", "--init", "ck/X.safetensors",
               "--json", "ck/X.json", *TINY_TRAIN], ["data", "ck"], ["data", "ck"]),
        _case(s, "pretrain --json onto a file of the dataset (train.csv)",
              [*pre, "--out", "p.safetensors", "--json", "ds/train.csv"], ["ds"], ["ds"]),
        _case(s, "pretrain --json onto the sidecar of its own --out",
              [*pre, "--out", "p.safetensors", "--json", "p.json"], ["ds"], ["ds"]),
        _case(s, "data split --json onto legend.csv",
              ["data", "split", "mux", "--json", "mux/data/legend.csv"], ["mux"],
              ["mux/data/legend.csv"]),
    ]


# -- 27.2 --------------------------------------------------------------------------------------


def _predict_while_rewritten(work: Path, setup: _Setup) -> List[Proc]:
    """The reference run, then the same run during which the model is truncated and rewritten
    in place once the first record has come out (the child blocks on its one-page stdout)."""
    setup.copy(work, "mapped", "clip.avi")
    model = work / "mapped" / "model.onnx"
    args = ["predict", "clip.avi", "-w", str(model), "--aligned", "--threads", "1"]
    reference = grefel(*args, cwd=work, env=ENV)
    (work / "reference.jsonl").write_text(reference.stdout)
    argv = [sys.executable, "-m", "grefel", *args]
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, F_SETPIPE_SZ, 4096)
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=write_fd, stderr=subprocess.PIPE, cwd=work,
                             env={**os.environ, **ENV})
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as records:
        first = records.readline()
        data = model.read_bytes()
        with open(model, "wb") as f:  # what `cp other.onnx model.onnx` does: O_TRUNC, write
            f.write(b"not a model any more\n")
        rest = records.read()
    stderr = child.communicate(timeout=120)[1]
    (work / "rewritten_model_bytes").write_text(str(len(data)))
    dec = lambda b: b.decode("utf-8", errors="backslashreplace")  # noqa: E731
    return [reference, Proc(argv, child.returncode, dec(first + rest), dec(stderr),
                            time.perf_counter() - start)]


def _same_records(procs: List[Proc], work: Path) -> str:
    want = (work / "reference.jsonl").read_text().splitlines()
    got = procs[-1].stdout.splitlines()
    if len(want) < 60:
        return f"the reference run gave {len(want)} records for 90 frames"
    if got != want:
        same = sum(a == b for a, b in zip(got, want))
        return f"lost: {len(got)} records, {same} equal to the undisturbed run's {len(want)}"
    return ""


def cases(scratch: Path) -> List[Case]:
    setup = _Setup(scratch)
    found = _cases_27_1(setup)
    found.append(Case("predict a video while its ONNX model is rewritten in place", SIDE,
                      "27.2", "ok", lambda w: _predict_while_rewritten(w, setup),
                      _same_records))
    return found
