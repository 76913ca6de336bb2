"""A fresh black-box fault campaign: cases nobody has run before, through the CLI, as a user would.

    python -m tools.fault_fresh --out DIR        # -> DIR/fault_fresh_<YYYY-mm-dd>.json/.md

None of these cases is a case of `tools/fault_corpus.py`, `tools/fault_campaign.py`,
`tests/test_bad_input.py`, `tests/test_faults_train.py` or an example written in issue 27: the
point is to find out whether issue 27's fixes hold for faults their authors did not see. Each case
is assigned one of issue 27's eight families ("27.N") or a new one ("new: <name>"), so a rerun
after the fixes tells a family that was fixed at its root from one that was fixed case by case.

The machinery is the campaign's (`Case`, `Proc`, `grefel`, `classify`): each case runs
`python -m grefel ...` in child processes and its check verifies the result itself (the user's
files byte-identical afterwards, the records right, the files present), not only the exit status.
A case whose right answer may be either a refusal or a correct result (a user could accept both)
is marked "ok or error": it is classified as "ok" first and, when that finds one clear `Error:`
line and a non-zero exit, as "error".
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from tools.fault_campaign import (
    CATEGORIES,
    QUICK_BENCH,
    ROOT,
    SEVEN,
    TINY_TRAIN,
    Case,
    Outcome,
    Proc,
    _csv_dataset,
    _default_sigint,
    _tiny_checkpoint,
    classify,
    grefel,
    latency_rows,
    run_cases,
    summary_line,
)

__all__ = ["cases", "main", "run_fresh"]

SIDE = "fresh"
EITHER = "ok or error"  # a refusal with one clear line, or the right result: both are fine
DEFAULT_ONNX = ROOT / "grefel" / "runtime" / "models" / "grefel-tiny-muxspace.onnx"
DEFAULT_CKPT = DEFAULT_ONNX.with_suffix(".safetensors")
FAMILIES = {
    "27.1": "outputs that destroy inputs",
    "27.2": "models read while being replaced",
    "27.3": "non-finite models saved as if fine",
    "27.4": "metadata trusted without a check",
    "27.5": "streams and folders that end or skip without a reason",
    "27.6": "training that silently changes meaning",
    "27.7": "serving that breaks batch-mate independence",
    "27.8": "tracebacks",
}
_EITHER: Dict[str, bool] = {}  # case name -> a refusal is as good as the right result
_BEFORE: Dict[str, Dict[str, Optional[str]]] = {}  # work folder -> {protected path: digest}


# -- helpers ---------------------------------------------------------------------------------


def _digest(path: Path) -> Optional[str]:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _tree(folder: Path) -> Dict[str, Optional[str]]:
    """{relative path: digest} of every file under `folder` (links not followed)."""
    out: Dict[str, Optional[str]] = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = Path(dirpath) / f
            out[os.fsdecode(p.relative_to(folder))] = _digest(p) if p.is_file() else "special"
    return out


def _protect(work: Path, *paths: Path) -> None:
    """Remember the bytes of `paths` (files, or folders: every file under them) before the
    commands run; `_unchanged` compares them afterwards."""
    before: Dict[str, Optional[str]] = {}
    for p in paths:
        if Path(p).is_dir():
            before.update({f"{p}/{k}": v for k, v in _tree(Path(p)).items()})
        else:
            before[str(p)] = _digest(Path(p))
    _BEFORE.setdefault(str(work), {}).update(before)


def _unchanged(work: Path) -> str:
    for path, digest in _BEFORE.get(str(work), {}).items():
        now = _digest(Path(path)) if digest != "special" else "special"
        if now is None:
            return f"lost: {Path(path).name} is gone"
        if now != digest:
            return f"lost: {Path(path).name} was overwritten"
    return ""


def _records(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stdout_records(proc: Proc) -> List[Dict[str, Any]]:
    out = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _png(path: Path, colour: Sequence[int] = (200, 40, 40), size: Sequence[int] = (120, 90),
         seed: int = 1) -> Path:
    """A PNG the mini model calls `red` (red dominates), made from noise so it is not flat."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    arr = (rng.integers(0, 40, (h, w, 3)) + np.array(colour)).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path)
    return path


def _video(path: Path, frames: int = 6) -> Path:
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    for i in range(frames):
        img = np.random.default_rng(i).integers(0, 40, (96, 128, 3)).astype(np.uint8)
        img[..., 2] += 180  # BGR: red dominates
        writer.write(img)
    writer.release()
    return path


def _both(*checks: Callable[[List[Proc], Path], str]) -> Callable[[List[Proc], Path], str]:
    def check(procs: List[Proc], work: Path) -> str:
        for c in checks:
            problem = c(procs, work)
            if problem:
                return problem
        return ""
    return check


def _intact(procs: List[Proc], work: Path) -> str:
    return _unchanged(work)


def _popen(*args: Any, env: Optional[Dict[str, str]] = None, cwd: Path = ROOT,
           stdout: Any = subprocess.PIPE) -> subprocess.Popen:
    argv = [sys.executable, "-m", "grefel", *[str(a) for a in args]]
    return subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, cwd=cwd,
                            env={**os.environ, **(env or {})}, preexec_fn=_default_sigint)


def _finish(proc: subprocess.Popen, start: float, timeout: float = 120) -> Proc:
    try:
        out, err = proc.communicate(timeout=timeout)
        rc: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        rc = None
    dec = lambda b: (b or b"").decode("utf-8", errors="backslashreplace")  # noqa: E731
    return Proc([str(a) for a in proc.args], rc, dec(out), dec(err), time.perf_counter() - start)


def _nonfinite_files(folder: Path) -> List[str]:
    """Names of the .safetensors under `folder` holding a NaN or inf."""
    import torch
    from safetensors.torch import load_file

    bad = []
    for p in sorted(Path(folder).rglob("*.safetensors")):
        try:
            tensors = load_file(str(p))
        except Exception:  # noqa: BLE001 - an unreadable file is not this check's business
            continue
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors.values()):
            bad.append(p.name)
    return bad


def _no_nonfinite(folder_of: Callable[[Path], Path]) -> Callable[[List[Proc], Path], str]:
    def check(procs: List[Proc], work: Path) -> str:
        folder = folder_of(work)
        bad = _nonfinite_files(folder) if folder.exists() else []
        return f"non-finite weights saved in {', '.join(bad)}" if bad else ""
    return check


def _said(*words: str) -> Callable[[List[Proc], Path], str]:
    """Exit 0 is only right when the run said one of `words` (a warning, case-insensitive)."""
    def check(procs: List[Proc], work: Path) -> str:
        last = procs[-1]
        if last.returncode == 0 and not any(w.lower() in last.output.lower() for w in words):
            return f"exit 0 and no word of {words[0]!r}"
        return ""
    return check


# -- the cases -------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    """A copy of `src` (a folder: links kept; a model: with its sidecar NAME.json)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True)
    else:
        shutil.copyfile(src, dst)
        side = src.with_suffix(".json")
        if side.exists() and src.suffix != ".json":
            shutil.copyfile(side, dst.with_suffix(".json"))
    return dst


def _nan_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of the checkpoint `src` at `dst` whose first large weight is all NaN, with a
    sidecar whose SHA-256 matches (so only the finiteness check can refuse it)."""
    import torch
    from safetensors.torch import load_file, save_file

    from grefel.fileio import sha256_file

    model = _copy(src, dst)
    tensors = load_file(str(model))
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 10
               and "weight" in k)
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(model))
    side = model.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["weights_sha256"] = sha256_file(model)
    side.write_text(json.dumps(meta))
    return model


def case_adder(out: List[Case], side: str) -> Callable[..., None]:
    """`add(name, family, expect, run, check=_intact, ok_codes=(0,))`, appending a Case to `out`;
    `expect` EITHER marks a case whose refusal is as good as its right result (judge)."""
    def add(name: str, family: str, expect: str, run: Callable[[Path], List[Proc]],
            check: Callable[[List[Proc], Path], str] = _intact,
            ok_codes: Sequence[int] = (0,)) -> None:
        if expect == EITHER:
            _EITHER[name] = True
        out.append(Case(name, side, family, "ok" if expect == EITHER else expect, run, check,
                        ok_codes))
    return add


def cases(scratch: Path) -> List[Case]:
    """The fresh campaign's cases; shared inputs are made under `scratch`."""
    from tools.fault_corpus import mini_onnx

    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "models").mkdir(parents=True, exist_ok=True)
    mini = mini_onnx(scratch / "models" / "mini.onnx")
    plain = _png(scratch / "img" / "plain.png")
    clip = _video(scratch / "video" / "clip.avi")
    ckpt = _tiny_checkpoint(scratch / "ckpt" / "tiny.safetensors")
    synth = scratch / "synth"
    p = grefel("data", "synth", "--out", synth, "--n", "40", "--size", "32", "--imbalance",
               "uniform")  # every class in every split: train refuses a class without samples
    assert p.returncode == 0, p.output
    good = {"train": [i % 7 for i in range(14)], "val": [i % 7 for i in range(7)],
            "test": [i % 7 for i in range(7)]}
    csvdata = _csv_dataset(scratch / "csvdata", good, SEVEN)
    rgbdata = _csv_dataset(scratch / "rgbdata", {s: [i % 3 for i in range(6)] for s in good},
                           ["red", "green", "blue"])  # the mini model's classes
    out: List[Case] = []

    add = case_adder(out, SIDE)

    copy = _copy

    def train(w: Path, data: Path, *extra: Any, run: str = "run") -> Proc:
        return grefel("train", "--data", data, "--out", w / run, *TINY_TRAIN, *extra)

    # ---- 27.1 outputs that destroy inputs (new shapes of the same fault) ----------------------

    def annotate_over_source(w: Path) -> List[Proc]:
        img = copy(plain, w / "face.png")
        _protect(w, img)
        return [grefel("predict", img, "-w", mini, "--aligned", "--annotate", img)]

    add("predict img.png --annotate img.png (the source image)", "27.1", "error",
        annotate_over_source)

    def out_is_folder_member(w: Path) -> List[Proc]:
        folder = w / "photos"
        copy(plain, folder / "a.png")
        copy(plain, folder / "b.png")
        _protect(w, folder)
        return [grefel("predict", folder, "-w", mini, "--aligned", "--out", folder / "b.png")]

    add("predict DIR --out DIR/b.png (a photo inside the folder)", "27.1", "error",
        out_is_folder_member)

    def out_hardlink(w: Path) -> List[Proc]:
        img = copy(plain, w / "face.png")
        os.link(img, w / "records.jsonl")
        _protect(w, img)
        return [grefel("predict", img, "-w", mini, "--aligned", "--out", w / "records.jsonl")]

    add("predict img --out HARDLINK-of-img (other name, same file)", "27.1", EITHER,
        out_hardlink)

    def out_symlink(w: Path) -> List[Proc]:
        img = copy(plain, w / "face.png")
        os.symlink("face.png", w / "records.jsonl")
        _protect(w, img)
        return [grefel("predict", img, "-w", mini, "--aligned", "--out", w / "records.jsonl")]

    add("predict img --out SYMLINK-to-img", "27.1", EITHER, out_symlink)

    def json_over_model(w: Path) -> List[Proc]:
        model = copy(mini, w / "m.onnx")
        _protect(w, model)
        return [grefel("predict", plain, "-w", model, "--aligned", "--json", model)]

    add("predict -w m.onnx --json m.onnx (summary over the model)", "27.1", "error",
        json_over_model)

    def json_over_video(w: Path) -> List[Proc]:
        video = copy(clip, w / "clip.avi")
        _protect(w, video)
        return [grefel("predict", video, "-w", mini, "--aligned", "--json", video)]

    add("predict clip.avi --json clip.avi", "27.1", "error", json_over_video)

    def annotate_equals_out(w: Path) -> List[Proc]:
        return [grefel("predict", plain, "-w", mini, "--aligned", "--out", w / "x.png",
                       "--annotate", w / "x.png")]

    def both_outputs(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        return "exit 0 with --out and --annotate the same file: one of them is lost"

    add("predict --out x.png --annotate x.png (two outputs, one file)", "27.1", "error",
        annotate_equals_out, both_outputs)

    def annotate_folder_is_source(w: Path) -> List[Proc]:
        folder = w / "photos"
        copy(plain, folder / "a.png")
        _png(folder / "b.png", colour=(30, 200, 30))
        _protect(w, folder)
        return [grefel("predict", folder, "-w", mini, "--aligned", "--annotate", folder)]

    add("predict DIR --annotate DIR (annotated copies into the source folder)", "27.1",
        "error", annotate_folder_is_source)

    def eval_into_run(w: Path) -> List[Proc]:
        first = train(w, synth)
        _protect(w, w / "run")
        return [first, grefel("eval", w / "run" / "best.safetensors", "--data", synth, "--out",
                              w / "run")]

    add("eval run/best.safetensors --out run (the training run's own folder)", "27.1",
        EITHER, eval_into_run)

    def eval_json_over_csv(w: Path) -> List[Proc]:
        data = copy(synth, w / "ds")
        _protect(w, data)
        return [grefel("eval", ckpt, "--data", data, "--out", w / "ev", "--json",
                       data / "test.csv")]

    add("eval --json DATA/test.csv (the split it reads)", "27.1", "error", eval_json_over_csv)

    def export_into_ckpt_folder(w: Path) -> List[Proc]:
        model = copy(ckpt, w / "m" / "tiny.safetensors")
        _protect(w, w / "m")
        return [grefel("export", model, "--onnx-only", "--fp32", "--out", w / "m")]

    add("export m/tiny.safetensors --out m (the sidecar tiny.json beside it)", "27.1", EITHER,
        export_into_ckpt_folder)

    def export_onnx_onto_itself(w: Path) -> List[Proc]:
        model = copy(mini, w / "m" / "mini.onnx")
        _protect(w, model)
        return [grefel("export", model, "--onnx-only", "--fp32", "--out", w / "m")]

    def still_onnx(procs: List[Proc], work: Path) -> str:
        import onnx

        try:
            onnx.checker.check_model(onnx.load(str(work / "m" / "mini.onnx")))
        except Exception as exc:  # noqa: BLE001
            return f"lost: mini.onnx is no longer a valid model ({type(exc).__name__})"
        return ""

    add("export m/mini.onnx --out m (artifact name = source name)", "27.1", EITHER,
        export_onnx_onto_itself, _both(_intact, still_onnx))

    def pretrain_over_landmarks(w: Path) -> List[Proc]:
        data = copy(synth, w / "ds")
        _protect(w, data)
        return [grefel("pretrain", "landmarks", "--data", data, "--out", data / "landmarks.csv",
                       "--steps", "1", "--batch-size", "2", "--precise-bn", "0", "--threads",
                       "1", "--no-augment")]

    add("pretrain landmarks --out DATA/landmarks.csv (its own targets)", "27.1", "error",
        pretrain_over_landmarks)

    def train_into_dataset(w: Path) -> List[Proc]:
        data = copy(synth, w / "ds")
        _protect(w, data)
        return [grefel("train", "--data", data, "--out", data, *TINY_TRAIN)]

    add("train --data DS --out DS (run folder = dataset folder)", "27.1", EITHER,
        train_into_dataset)

    def import_over_source(w: Path) -> List[Proc]:
        import torch

        from grefel.model import create_model
        from grefel.weights import export_posterv2_state_dict

        torch.manual_seed(0)
        sd = export_posterv2_state_dict(create_model("tiny", class_names=SEVEN))
        src = w / "poster.safetensors"
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(src))
        _protect(w, src)
        return [grefel("weights", "import", src, "--kind", "posterv2", "--preset", "tiny",
                       "--out", src)]

    add("weights import X.safetensors --out X.safetensors", "27.1", "error",
        import_over_source)

    def timing_cache_is_model(w: Path) -> List[Proc]:
        model = copy(mini, w / "mini.onnx")
        _protect(w, model)
        return [grefel("export", model, "--onnx-only", "--fp32", "--out", w / "e",
                       "--timing-cache", model)]

    add("export --timing-cache SOURCE.onnx", "27.1", EITHER, timing_cache_is_model)

    def deepstream_into_dataset(w: Path) -> List[Proc]:
        model = copy(ckpt, w / "tiny.safetensors")
        data = copy(synth, w / "ds")
        (data / "labels.txt").write_text("my own labels\n")
        _protect(w, data, model)
        return [grefel("export", model, "--onnx-only", "--fp32", "--out", w / "e",
                       "--deepstream", data)]

    add("export --deepstream DIR holding the user's labels.txt", "27.1", EITHER,
        deepstream_into_dataset)

    # ---- 27.2 models read while being replaced ------------------------------------------------

    def mid_run(mutate: Callable[[Path], None], model_src: Path, name: str,
                aligned: bool = True) -> Callable[[Path], List[Proc]]:
        """predict over a 6-frame video read from a named pipe (`stream.avi`) with --batch 1:
        the pipe is held open (tools.fault_corpus.fifo_video), so the run is still going
        when `mutate(model)` runs once the first record is on disk; closing the pipe ends it.
        (A FIFO inside a predicted folder paused the walk before issue 27.5; the walk now
        skips it, as it should.)"""
        from tools.fault_corpus import fifo_video

        def run(w: Path) -> List[Proc]:
            model = copy(model_src, w / name)
            stream = w / "stream.avi"
            os.mkfifo(stream)
            records = w / "p.jsonl"
            start = time.perf_counter()
            proc = _popen("predict", stream, "-w", model, *(["--aligned"] if aligned else []),
                          "--batch", "1", "--out", records)
            with fifo_video(stream, clip, proc):
                end = time.monotonic() + 90
                while time.monotonic() < end and proc.poll() is None:
                    if records.exists() and records.read_text().count("\n") >= 1:
                        break
                    time.sleep(0.05)
                mutate(model)
            return [_finish(proc, start, timeout=90)]
        return run

    def kept_model(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        recs = _records(work / "p.jsonl")
        if len(recs) != 6:
            return f"lost: {len(recs)} records of 6 frames"
        return ""

    def truncate(model: Path) -> None:
        os.truncate(model, 0)

    def scribble(model: Path) -> None:
        size = model.stat().st_size
        with open(model, "r+b") as f:
            f.write(os.urandom(size))

    add("ONNX truncated to 0 bytes in place during predict", "27.2", EITHER,
        mid_run(truncate, DEFAULT_ONNX, "m.onnx"), kept_model)
    add("ONNX overwritten in place with random bytes during predict", "27.2", EITHER,
        mid_run(scribble, DEFAULT_ONNX, "m.onnx"), kept_model)
    add("checkpoint truncated in place during predict -w .safetensors", "27.2", EITHER,
        mid_run(truncate, DEFAULT_CKPT, "m.safetensors"), kept_model)
    add("checkpoint sidecar rewritten during predict -w .safetensors", "27.2", EITHER,
        mid_run(lambda m: m.with_suffix(".json").write_text("{"), DEFAULT_CKPT,
                "m.safetensors"), kept_model)

    def model_deleted(w: Path) -> List[Proc]:
        return mid_run(lambda m: m.unlink(), DEFAULT_ONNX, "m.onnx")(w)

    add("ONNX deleted during predict (unlink)", "27.2", EITHER, model_deleted, kept_model)

    # ---- 27.3 non-finite models ----------------------------------------------------------------

    for label, extra in (("--lr nan", ["--lr", "nan"]),
                         ("--gamma inf", ["--gamma", "inf", "--epochs", "2"]),
                         ("--lambda-center 1e38", ["--lambda-center", "1e38"]),
                         ("--set delta=nan", ["--set", "delta=nan"])):
        add(f"train {label}", "27.3", "error",
            lambda w, e=extra: [train(w, synth, *e)],
            _no_nonfinite(lambda w: w / "run"))

    def nan_checkpoint(w: Path) -> Path:
        return _nan_checkpoint(ckpt, w / "nan.safetensors")

    def export_nan(w: Path) -> List[Proc]:
        return [grefel("export", nan_checkpoint(w), "--onnx-only", "--fp32", "--out", w / "e")]

    def no_onnx_of_nan(procs: List[Proc], work: Path) -> str:
        made = sorted(p.name for p in (work / "e").glob("*.onnx")) if (work / "e").exists() \
            else []
        return f"wrote {made} from a NaN checkpoint" if made and procs[-1].returncode == 0 \
            else ""

    add("export of a checkpoint with an all-NaN weight", "27.3", "error", export_nan,
        no_onnx_of_nan)

    def train_init_nan(w: Path) -> List[Proc]:
        return [train(w, synth, "--set", f"init={nan_checkpoint(w)}")]

    add("train --set init=<checkpoint with a NaN weight>", "27.3", "error", train_init_nan,
        _no_nonfinite(lambda w: w / "run"))

    def import_nan(w: Path) -> List[Proc]:
        import torch

        from grefel.model import create_model
        from grefel.weights import export_posterv2_state_dict

        torch.manual_seed(0)
        sd = export_posterv2_state_dict(create_model("tiny", class_names=SEVEN))
        key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 10)
        sd[key] = torch.full_like(sd[key], float("inf"))
        torch.save({"state_dict": sd}, w / "poster.pth")
        return [grefel("weights", "import", w / "poster.pth", "--kind", "posterv2", "--preset",
                       "tiny", "--out", w / "out" / "x.safetensors")]

    add("weights import of a file with an inf tensor", "27.3", "error", import_nan,
        _no_nonfinite(lambda w: w / "out"))

    def nan_initializer_onnx(w: Path) -> Path:
        import numpy as np
        import onnx
        from onnx import helper, numpy_helper

        proto = onnx.load(str(mini))
        proto.graph.initializer.append(numpy_helper.from_array(
            np.array([float("nan"), 0.0, 0.0], dtype=np.float32), "bias"))
        for node in proto.graph.node:
            if node.op_type == "Softmax":
                node.input[0] = "means_b"
        proto.graph.node.insert(1, helper.make_node("Add", ["means", "bias"], ["means_b"]))
        path = w / "nanbias.onnx"
        onnx.save(proto, str(path))
        return path

    add("export of an ONNX with a NaN initializer", "27.3", "error",
        lambda w: [grefel("export", nan_initializer_onnx(w), "--onnx-only", "--fp32", "--out",
                          w / "e")], no_onnx_of_nan)
    add("eval of an ONNX whose outputs are NaN", "27.3", "error",
        lambda w: [grefel("eval", nan_initializer_onnx(w), "--data", rgbdata, "--out",
                          w / "ev")])

    def bench_nan(w: Path) -> List[Proc]:
        return [grefel("bench", "-w", nan_checkpoint(w), "--backends", "torch", *QUICK_BENCH,
                       "--out", w / "r")]

    def bench_says_nan(procs: List[Proc], work: Path) -> str:
        rows = latency_rows(work / "r")
        if procs[-1].returncode == 0 and all(r.get("status") == "ok" for r in rows):
            text = procs[-1].output.lower()
            if "nan" not in text and "finite" not in text:
                return "timed a NaN checkpoint as ok, no word of NaN"
        return ""

    add("bench -w checkpoint with a NaN weight", "27.3", EITHER, bench_nan, bench_says_nan)

    # ---- 27.4 metadata trusted without a check -------------------------------------------------

    def onnx_meta(w: Path, value: str, name: str = "meta.onnx") -> Path:
        import onnx

        proto = onnx.load(str(mini))
        for prop in proto.metadata_props:
            if prop.key == "grefel.class_names":
                prop.value = value
        path = w / name
        onnx.save(proto, str(path))
        return path

    def records_right(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        recs = _stdout_records(procs[-1])
        if len(recs) != 1 or len(recs[0].get("probs", {})) != 3:
            return f"record without the model's 3 classes: {recs[:1]}"
        if any(not str(k).strip() for k in recs[0]["probs"]):
            return f"a class without a name: {list(recs[0]['probs'])}"
        return ""

    for label, value in (("names not JSON (a comma list)", "red,green,blue"),
                         ("an empty class name", json.dumps(["", "green", "blue"])),
                         ("names that are numbers", "[1, 2, 3]"),
                         ("names as a JSON object", '{"0": "red"}')):
        add(f"ONNX class metadata: {label}", "27.4", EITHER,
            lambda w, v=value: [grefel("predict", plain, "-w", onnx_meta(w, v), "--aligned")],
            records_right)

    def probs_not_normalised(w: Path) -> List[Proc]:
        import onnx

        proto = onnx.load(str(mini))
        for node in proto.graph.node:
            if node.output[0] in ("probs", "primary"):
                node.input[0] = "means"
        onnx.save(proto, str(w / "raw.onnx"))
        return [grefel("predict", plain, "-w", w / "raw.onnx", "--aligned")]

    def sums_to_one(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        recs = _stdout_records(procs[-1])
        total = sum(recs[0]["probs"].values()) if recs and recs[0].get("probs") else 1.0
        return f"records with probs summing to {total:.3f}" if abs(total - 1) > 1e-3 else ""

    add("ONNX whose probs are not probabilities (sum 1.6)", "27.4", "error",
        probs_not_normalised, sums_to_one)

    def sidecar_names(w: Path, names: List[str]) -> Path:
        model = copy(ckpt, w / "m.safetensors")
        side = model.with_suffix(".json")
        meta = json.loads(side.read_text())
        meta["class_names"] = names
        side.write_text(json.dumps(meta))
        return model

    def seven_distinct(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        recs = _stdout_records(procs[-1])
        if not recs or len(recs[0].get("probs", {})) != 7:
            return f"records with {len(recs[0].get('probs', {})) if recs else 0} classes " \
                   "of the model's 7"
        return ""

    add("checkpoint sidecar class_names duplicated (hash still right)", "27.4", "error",
        lambda w: [grefel("predict", plain, "-w",
                          sidecar_names(w, ["a", "a", "b", "c", "d", "e", "f"]), "--aligned")],
        seven_distinct)
    add("checkpoint sidecar class_names: 5 for 7 outputs", "27.4", "error",
        lambda w: [grefel("predict", plain, "-w",
                          sidecar_names(w, ["a", "b", "c", "d", "e"]), "--aligned")],
        seven_distinct)

    def crlf_classes(w: Path) -> List[Proc]:
        data = copy(csvdata, w / "ds")
        (data / "classes.txt").write_bytes(("\r\n".join(SEVEN) + "\r\n").encode())
        return [train(w, data)]

    def clean_names(procs: List[Proc], work: Path) -> str:
        side = work / "run" / "best.json"
        if procs[-1].returncode != 0 or not side.exists():
            return ""
        names = json.loads(side.read_text())["class_names"]
        odd = [n for n in names if n != n.strip()]
        return f"class names with stray characters: {odd}" if odd else ""

    add("classes.txt with Windows CRLF line ends", "27.4", EITHER, crlf_classes, clean_names)

    def utf16_classes(w: Path) -> List[Proc]:
        data = copy(csvdata, w / "ds")
        (data / "classes.txt").write_bytes(("\n".join(SEVEN) + "\n").encode("utf-16"))
        return [train(w, data)]

    def sane_names(procs: List[Proc], work: Path) -> str:
        side = work / "run" / "best.json"
        if procs[-1].returncode != 0 or not side.exists():
            return ""
        names = json.loads(side.read_text())["class_names"]
        return "" if names == SEVEN else f"class names {names!r}"

    add("classes.txt saved as UTF-16", "27.4", EITHER, utf16_classes, sane_names)

    def padded_label(w: Path) -> List[Proc]:
        data = copy(csvdata, w / "ds")
        rows = (data / "train.csv").read_text().splitlines()
        rows[1] = rows[1].rsplit(",", 1)[0] + ", 3 "
        (data / "train.csv").write_text("\n".join(rows) + "\n")
        return [train(w, data)]

    add("train.csv label with spaces around it (' 3 ')", "27.4", EITHER, padded_label)

    def bom_csv(w: Path) -> List[Proc]:
        data = copy(csvdata, w / "ds")
        for split in ("train", "val", "test"):
            f = data / f"{split}.csv"
            f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
        return [train(w, data)]

    add("train/val/test.csv saved with a UTF-8 BOM (Excel)", "27.4", EITHER, bom_csv)

    def onnx_input_renamed(w: Path) -> List[Proc]:
        import onnx

        proto = onnx.load(str(mini))
        proto.graph.input[0].name = "input"
        for node in proto.graph.node:
            for i, name in enumerate(node.input):
                if name == "images":
                    node.input[i] = "input"
        onnx.save(proto, str(w / "renamed.onnx"))
        return [grefel("predict", plain, "-w", w / "renamed.onnx", "--aligned")]

    add("ONNX input named 'input', not 'images'", "27.4", EITHER, onnx_input_renamed,
        records_right)

    def onnx_static_batch(w: Path) -> List[Proc]:
        import onnx

        proto = onnx.load(str(mini))
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
        onnx.save(proto, str(w / "static.onnx"))
        folder = w / "f"
        for n in "abcd":
            copy(plain, folder / f"{n}.png")
        return [grefel("predict", folder, "-w", w / "static.onnx", "--aligned", "--batch-frames",
                       "4", "--out", w / "p.jsonl")]

    def four_red(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        recs = _records(work / "p.jsonl")
        if len(recs) != 4 or any(r.get("label") != "red" for r in recs):
            return f"lost: {len(recs)} records (of 4), labels {[r.get('label') for r in recs]}"
        return ""

    add("ONNX with a static batch of 1, --batch-frames 4", "27.4", EITHER, onnx_static_batch,
        four_red)

    # ---- 27.5 streams and folders that end or skip without a reason ---------------------------

    def folder_with(w: Path, extra: Callable[[Path], None]) -> Path:
        folder = w / "f"
        copy(plain, folder / "a.png")
        copy(plain, folder / "c.png")
        extra(folder)
        return folder

    def two_records_and_word(word: str) -> Callable[[List[Proc], Path], str]:
        def check(procs: List[Proc], work: Path) -> str:
            if procs[-1].returncode not in (0,):
                return ""
            recs = _records(work / "p.jsonl")
            names = sorted(Path(r["source"]).name for r in recs)
            if names[:1] != ["a.png"] or "c.png" not in names:
                return f"lost: records of {names}, a.png and c.png expected"
            if word and word not in procs[-1].stderr:
                return f"no line naming {word}"
            return ""
        return check

    def dev_zero(w: Path) -> List[Proc]:
        folder = folder_with(w, lambda f: os.symlink("/dev/zero", f / "b.png"))
        return [grefel("predict", folder, "-w", mini, "--aligned", "--out", w / "p.jsonl",
                       timeout=40)]

    add("folder holding b.png -> /dev/zero (endless device)", "27.5", "ok", dev_zero,
        two_records_and_word("b.png"))

    def unix_socket(w: Path) -> List[Proc]:
        def make(folder: Path) -> None:
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(folder / "b.png"))
            s.close()
        folder = folder_with(w, make)
        return [grefel("predict", folder, "-w", mini, "--aligned", "--out", w / "p.jsonl",
                       timeout=40)]

    add("folder holding a UNIX socket named b.png", "27.5", "ok", unix_socket,
        two_records_and_word("b.png"))

    def fifo_source(w: Path) -> List[Proc]:
        os.mkfifo(w / "cam.png")
        return [grefel("predict", w / "cam.png", "-w", mini, "--aligned", timeout=30)]

    add("SRC is a FIFO nobody writes to", "27.5", "error", fifo_source)

    def fifo_model(w: Path) -> List[Proc]:
        os.mkfifo(w / "m.onnx")
        return [grefel("predict", plain, "-w", w / "m.onnx", "--aligned", timeout=30)]

    add("-w is a FIFO nobody writes to", "27.5", "error", fifo_model)

    def empty_folder(w: Path) -> List[Proc]:
        (w / "empty").mkdir()
        return [grefel("predict", w / "empty", "-w", mini, "--aligned", "--out", w / "p.jsonl")]

    add("predict an empty folder", "27.5", EITHER, empty_folder,
        _said("no image", "nothing", "empty", "0 files", "0 frames"))

    def only_text(w: Path) -> List[Proc]:
        (w / "f").mkdir()
        (w / "f" / "notes.txt").write_text("hi")
        (w / "f" / "data.csv").write_text("a,b")
        return [grefel("predict", w / "f", "-w", mini, "--aligned", "--out", w / "p.jsonl")]

    add("predict a folder of text files only", "27.5", EITHER, only_text,
        _said("no image", "skipped", "not an image", "nothing"))

    def no_extension(w: Path) -> List[Proc]:
        folder = folder_with(w, lambda f: shutil.copyfile(plain, f / "b"))
        return [grefel("predict", folder, "-w", mini, "--aligned", "--out", w / "p.jsonl")]

    def b_recorded_or_named(procs: List[Proc], work: Path) -> str:
        recs = _records(work / "p.jsonl")
        names = {Path(r["source"]).name for r in recs}
        if procs[-1].returncode == 0 and "b" not in names and " b" not in procs[-1].stderr \
                and "/b" not in procs[-1].stderr:
            return "a PNG without an extension skipped without a word"
        return ""

    add("folder with a PNG named without extension", "27.5", "ok", no_extension,
        b_recorded_or_named)

    def upper_ext(w: Path) -> List[Proc]:
        folder = folder_with(w, lambda f: (shutil.copyfile(plain, f / "B.PNG"),
                                           shutil.copyfile(plain, f / "D.JpEg")))
        return [grefel("predict", folder, "-w", mini, "--aligned", "--out", w / "p.jsonl")]

    def four_records(procs: List[Proc], work: Path) -> str:
        names = sorted(Path(r["source"]).name for r in _records(work / "p.jsonl"))
        return "" if len(names) == 4 else f"lost: records of {names}, 4 images"

    add("folder with .PNG / .JpEg upper-case extensions", "27.5", "ok", upper_ext, four_records)

    def apple_double(w: Path) -> List[Proc]:
        folder = folder_with(w, lambda f: (f / "._a.png").write_bytes(b"\x00\x05\x16\x07" * 64))
        return [grefel("predict", folder, "-w", mini, "--aligned", "--out", w / "p.jsonl")]

    add("folder holding macOS ._a.png resource-fork junk", "27.5", "ok", apple_double,
        two_records_and_word(""))

    def bigger_batch(w: Path) -> List[Proc]:
        return [grefel("predict", clip, "-w", mini, "--aligned", "--batch-frames", "64",
                       "--out", w / "p.jsonl")]

    add("video of 6 frames, --batch-frames 64", "27.5", "ok", bigger_batch,
        lambda p, w: "" if len(_records(w / "p.jsonl")) == 6
        else f"lost: {len(_records(w / 'p.jsonl'))} records of 6 frames")

    def concatenated_video(w: Path) -> List[Proc]:
        (w / "double.avi").write_bytes(clip.read_bytes() * 2)
        return [grefel("predict", w / "double.avi", "-w", mini, "--aligned", "--out",
                       w / "p.jsonl")]

    add("two AVIs concatenated into one file (12 frames of bytes)", "27.5", "ok",
        concatenated_video,
        lambda p, w: "" if len(_records(w / "p.jsonl")) == 12
        or any(k in p[-1].stderr.lower() for k in ("trailing", "ignored", "stopped", "damaged"))
        else f"{len(_records(w / 'p.jsonl'))} records of 12 frames, no word on the rest")

    def eval_unreadable_test(w: Path) -> List[Proc]:
        data = copy(csvdata, w / "ds")
        for p in data.glob("img/test_*.png"):
            p.write_text("not an image")
        return [grefel("eval", ckpt, "--data", data, "--out", w / "ev")]

    add("eval where no test image can be read", "27.5", "error", eval_unreadable_test)

    def eval_half_unreadable(w: Path) -> List[Proc]:
        data = copy(csvdata, w / "ds")
        for p in sorted(data.glob("img/test_*.png"))[:3]:
            p.write_text("not an image")
        return [grefel("eval", ckpt, "--data", data, "--out", w / "ev")]

    def n_counted(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        metrics = json.loads((work / "ev" / "metrics.json").read_text())
        text = json.dumps(metrics)
        if "skipped" not in procs[-1].output.lower() and "unreadable" not in text \
                and "skipped" not in text:
            return "3 of 7 test images unreadable, no word in output or metrics"
        return ""

    add("eval where 3 of 7 test images are unreadable", "27.5", EITHER, eval_half_unreadable,
        n_counted)

    def deep_folder(w: Path) -> List[Proc]:
        d = w / "deep"
        for i in range(60):
            d = d / f"d{i}"
        copy(plain, d / "x.png")
        return [grefel("predict", w / "deep", "-w", mini, "--aligned", "--out", w / "p.jsonl")]

    add("image 60 folders deep", "27.5", "ok", deep_folder,
        lambda p, w: "" if len(_records(w / "p.jsonl")) == 1 else "lost: no record")

    # ---- 27.6 training that silently changes meaning -------------------------------------------

    for label, extra in (("--lr -1e-3 (gradient ascent)", ["--lr", "-1e-3"]),
                         ("--gamma -0.5 (negative LR after epoch 1)", ["--gamma", "-0.5"]),
                         ("--label-smoothing 1.5", ["--label-smoothing", "1.5"]),
                         ("--delta -1", ["--delta", "-1"]),
                         ("--clip-grad -1", ["--clip-grad", "-1"]),
                         ("--lambda-anchor -2", ["--lambda-anchor", "-2"]),
                         ("--refine-per-class -3", ["--refine-per-class", "-3"])):
        add(f"train {label}", "27.6", "error",
            lambda w, e=extra: [train(w, synth, *e)],
            lambda p, w: "" if not (w / "run" / "best.safetensors").exists()
            or p[-1].returncode == 0 else "a refused run left best.safetensors")

    def twice_labelled(w: Path) -> List[Proc]:
        data = copy(csvdata, w / "ds")
        rows = (data / "train.csv").read_text().splitlines()
        path, label = rows[1].split(",")
        rows.append(f"{path},{(int(label) + 1) % 7}")
        (data / "train.csv").write_text("\n".join(rows) + "\n")
        return [train(w, data)]

    add("one image listed twice in train.csv with two labels", "27.6", EITHER, twice_labelled,
        _said("twice", "duplicate", "conflict", "two labels"))

    def leak(w: Path) -> List[Proc]:
        data = copy(csvdata, w / "ds")
        rows = (data / "test.csv").read_text().splitlines()
        train_rows = (data / "train.csv").read_text().splitlines()
        (data / "test.csv").write_text("\n".join([rows[0], *train_rows[1:8]]) + "\n")
        return [grefel("eval", ckpt, "--data", data, "--out", w / "ev")]

    add("eval where test.csv lists the train images", "27.6", EITHER, leak,
        _said("train", "overlap", "leak", "also in"))

    def duplicate_class(w: Path) -> List[Proc]:
        data = copy(csvdata, w / "ds")
        names = [*SEVEN[:6], "neutral"]  # 7 lines, "neutral" twice
        (data / "classes.txt").write_text("\n".join(names) + "\n")
        return [train(w, data)]

    add("classes.txt naming one class twice (7 lines, 6 names)", "27.6", "error",
        duplicate_class)

    # ---- 27.7 serve ----------------------------------------------------------------------------

    def serve_same_ports(w: Path) -> List[Proc]:
        return [grefel("serve", "-w", mini, "--http-port", "18731", "--grpc-port", "18731",
                       "--metrics-port", "18733", "--out", w / "s", "--device", "cpu",
                       timeout=60)]

    add("serve --http-port N --grpc-port N (one port twice)", "27.7", "error", serve_same_ports)

    def serve_bad_host(w: Path) -> List[Proc]:
        return [grefel("serve", "-w", mini, "--host", "256.300.1.1", "--http-port", "18741",
                       "--grpc-port", "18742", "--metrics-port", "18743", "--out", w / "s",
                       timeout=60)]

    add("serve --host 256.300.1.1", "27.7", "error", serve_bad_host)

    # ---- 27.8 tracebacks (options and values nobody tried) -------------------------------------

    for label, args in (
        ("predict --margin nan", ["predict", plain, "-w", mini, "--margin", "nan"]),
        ("predict --threshold nan", ["predict", plain, "-w", mini, "--aligned", "--threshold",
                                     "nan"]),
        ("predict --smooth nan", ["predict", clip, "-w", mini, "--aligned", "--smooth", "nan"]),
        ("export --workspace -4", ["export", mini, "--workspace", "-4", "--onnx-only", "--fp32",
                                   "--out", "{w}/e"]),
        ("export --opset 3", ["export", mini, "--opset", "3", "--onnx-only", "--fp32", "--out",
                              "{w}/e"]),
        ("export --name ''", ["export", mini, "--name", "", "--onnx-only", "--fp32", "--out",
                              "{w}/e"]),
        ("bench --batch-sizes 0,-2", ["bench", "-w", mini, "--backends", "onnx",
                                      "--batch-sizes", "0,-2", "--out", "{w}/r"]),
        ("bench --backends bogus", ["bench", "-w", mini, "--backends", "bogus", "--out",
                                    "{w}/r"]),
        ("bench --det-every 0 --source clip", ["bench", "-w", mini, "--source", clip,
                                               "--det-every", "0", "--out", "{w}/r"]),
        ("data synth --seed -1", ["data", "synth", "--out", "{w}/ds", "--n", "10", "--size",
                                  "32", "--seed", "-1"]),
        ("eval --split nosuch", ["eval", ckpt, "--data", synth, "--split", "nosuch", "--out",
                                 "{w}/ev"]),
        ("eval --dataset bogus", ["eval", ckpt, "--data", synth, "--dataset", "bogus", "--out",
                                  "{w}/ev"]),
        ("eval --reference model.onnx", ["eval", ckpt, "--data", synth, "--reference", mini,
                                         "--out", "{w}/ev"]),
        ("weights import --num-classes 0", ["weights", "import", "{w}/x.pth", "--kind",
                                            "posterv2", "--preset", "tiny", "--num-classes",
                                            "0", "--out", "{w}/o.safetensors"]),
        ("pretrain identity --scale nan", ["pretrain", "identity", "--data", synth, "--out",
                                           "{w}/i.safetensors", "--steps", "1", "--batch-size",
                                           "2", "--precise-bn", "0", "--scale", "nan"]),
        ("pretrain landmarks --precise-bn -1", ["pretrain", "landmarks", "--data", synth,
                                                "--out", "{w}/l.safetensors", "--steps", "1",
                                                "--batch-size", "2", "--precise-bn", "-1"]),
        ("train --set nosuchfield=1", ["train", "--data", synth, "--out", "{w}/run",
                                       *TINY_TRAIN, "--set", "nosuchfield=1"]),
        ("train --device cuda (no GPU here)", ["train", "--data", synth, "--out", "{w}/run",
                                               *_without(TINY_TRAIN, "--device"), "--device",
                                               "cuda"]),
    ):
        def run_args(w: Path, a: Sequence[Any] = args) -> List[Proc]:
            if any("x.pth" in str(x) for x in a):
                import torch

                from grefel.model import create_model
                from grefel.weights import export_posterv2_state_dict

                torch.save({"state_dict": export_posterv2_state_dict(
                    create_model("tiny", class_names=SEVEN))}, w / "x.pth")
            return [grefel(*[str(x).replace("{w}", str(w)) for x in a])]

        add(label, "27.8", "error", run_args)

    def split_synth(w: Path) -> List[Proc]:
        data = copy(synth, w / "ds")
        _protect(w, data)
        return [grefel("data", "split", data)]

    add("data split of a SynthFER folder", "27.8", "error", split_synth)

    def device_cuda(w: Path) -> List[Proc]:
        return [grefel("predict", plain, "-w", ckpt, "--aligned", "--device", "cuda")]

    add("predict -w ckpt --device cuda (no GPU here)", "27.8", EITHER, device_cuda,
        records_or_gpu)

    # ---- new kinds ---------------------------------------------------------------------------

    def broken_pipe(w: Path) -> List[Proc]:
        folder = w / "f"
        for i in range(40):
            copy(plain, folder / f"{i:02d}.png")
        start = time.perf_counter()
        proc = _popen("predict", folder, "-w", mini, "--aligned", "--batch", "1")
        proc.stdout.readline()
        proc.stdout.close()
        try:
            err = proc.stderr.read()
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            err = b""
        return [Proc([str(a) for a in proc.args], proc.returncode, "",
                     err.decode(errors="backslashreplace"), time.perf_counter() - start)]

    add("predict DIR | head -1 (reader closes stdout)", "new: closed stdout", "ok", broken_pipe,
        lambda p, w: "" if "Exception ignored" not in p[-1].stderr else
        "'Exception ignored' noise on stderr", ok_codes=(0, 1, 141, -13, 120))

    def dev_full_stdout(w: Path) -> List[Proc]:
        start = time.perf_counter()
        with open("/dev/full", "wb") as full:
            proc = _popen("predict", plain, "-w", mini, "--aligned", stdout=full)
            return [_finish(proc, start, 60)]

    add("predict > /dev/full (records to a full stdout)", "new: full stdout", "error",
        dev_full_stdout)

    def json_dev_full(w: Path) -> List[Proc]:
        # Never /dev/full itself: run as root, a write-then-rename replaces the device node.
        os.symlink("/dev/full", w / "full")
        return [grefel("eval", ckpt, "--data", synth, "--out", w / "ev", "--json", w / "full")]

    def link_kept(procs: List[Proc], work: Path) -> str:
        if not (work / "full").is_symlink():
            return "lost: the output path (a link to /dev/full) was replaced by a regular file"
        return ""

    add("eval --json LINK-to-/dev/full (a full disk)", "new: output path is a special file",
        "error", json_dev_full, link_kept)

    def json_fifo(w: Path) -> List[Proc]:
        os.mkfifo(w / "summary.fifo")
        got: Dict[str, bytes] = {}

        def read() -> None:
            with open(w / "summary.fifo", "rb") as f:
                got["data"] = f.read()

        threading.Thread(target=read, daemon=True).start()
        proc = grefel("predict", plain, "-w", mini, "--aligned", "--json", w / "summary.fifo",
                      timeout=40)
        (w / "got.json").write_bytes(got.get("data", b""))
        return [proc]

    def fifo_fed(procs: List[Proc], work: Path) -> str:
        if not stat_is_fifo(work / "summary.fifo"):
            return "lost: the FIFO given as --json was replaced by a regular file"
        if procs[-1].returncode == 0 and not (work / "got.json").read_bytes():
            return "exit 0, nothing written into the FIFO"
        return ""

    add("predict --json FIFO (a reader waiting on a named pipe)",
        "new: output path is a special file", EITHER, json_fifo, fifo_fed)

    def ascii_terminal(w: Path) -> List[Proc]:
        img = copy(plain, w / "visage-é.png")
        return [grefel("predict", img, "-w", mini, "--aligned",
                       env={"PYTHONIOENCODING": "ascii", "LC_ALL": "C", "LANG": "C"})]

    add("non-ASCII file name on an ASCII terminal", "new: terminal encoding", EITHER,
        ascii_terminal, records_right)

    def cwd_gone(w: Path) -> List[Proc]:
        gone = w / "gone"
        gone.mkdir()
        start = time.perf_counter()
        proc = subprocess.Popen(
            ["sh", "-c", f"cd {gone} && rmdir {gone} && exec {sys.executable} -m grefel "
             f"predict {plain} -w {mini} --aligned"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        return [_finish(proc, start, 60)]

    add("predict with absolute paths from a deleted working folder", "new: cwd gone", EITHER,
        cwd_gone, records_right)

    def env_garbage(value: str) -> Callable[[Path], List[Proc]]:
        return lambda w: [grefel("predict", plain, "-w", mini, "--aligned",
                                 env={"GREFEL_MAX_PIXELS": value})]

    add("GREFEL_MAX_PIXELS=lots", "new: garbage environment", "error", env_garbage("lots"))
    add("GREFEL_MAX_PIXELS=-5", "new: garbage environment", "error", env_garbage("-5"))
    add("GREFEL_MAX_PIXELS='' (set, empty)", "new: garbage environment", EITHER,
        env_garbage(""), records_right)

    def cache_under_file(w: Path) -> List[Proc]:
        (w / "file").write_text("x")
        return [grefel("eval", ckpt, "--data", synth, "--align-faces", "detect", "--out",
                       w / "ev", env={"XDG_CACHE_HOME": str(w / "file" / "cache")})]

    add("XDG_CACHE_HOME under a file, eval --align-faces detect", "new: garbage environment",
        "error", cache_under_file)

    def out_is_file(cmd: str) -> Callable[[Path], List[Proc]]:
        def run(w: Path) -> List[Proc]:
            target = w / "mine.txt"
            target.write_text("my notes\n")
            _protect(w, target)
            args = {
                "eval": ["eval", ckpt, "--data", synth, "--out", target],
                "export": ["export", mini, "--onnx-only", "--fp32", "--out", target],
                "bench": ["bench", "-w", mini, "--backends", "onnx", *QUICK_BENCH, "--out",
                          target],
                "train": ["train", "--data", synth, "--out", target, *TINY_TRAIN],
                "serve": ["serve", "-w", mini, "--out", target, "--http-port", "18751",
                          "--grpc-port", "18752", "--metrics-port", "18753"],
            }[cmd]
            return [grefel(*args, timeout=90)]
        return run

    for cmd in ("eval", "export", "bench", "train", "serve"):
        add(f"{cmd} --out EXISTING-FILE", "new: output folder is a file", "error",
            out_is_file(cmd))

    def out_trailing_slash(w: Path) -> List[Proc]:
        return [grefel("predict", plain, "-w", mini, "--aligned", "--out", f"{w}/newdir/")]

    add("predict --out newdir/ (a folder name)", "new: output folder is a file", EITHER,
        out_trailing_slash)

    def csv_odd_names(w: Path) -> List[Proc]:
        folder = w / "f"
        for name in ("a,b.png", 'quo"te.png', "new\nline.png", "semi;colon.png"):
            copy(plain, folder / name)
        return [grefel("predict", folder, "-w", mini, "--aligned", "--format", "csv", "--out",
                       w / "p.csv")]

    def csv_rows(procs: List[Proc], work: Path) -> str:
        if not (work / "p.csv").exists():
            return "lost: no CSV"
        rows = list(csv.DictReader((work / "p.csv").open(encoding="utf-8", newline="")))
        names = sorted(Path(r["source"]).name for r in rows)
        want = sorted(["a,b.png", 'quo"te.png', "new\nline.png", "semi;colon.png"])
        return "" if names == want else f"CSV rows name {names}"

    add("CSV output of names with , \" newline ;", "new: unusual file names", "ok",
        csv_odd_names, csv_rows)

    def long_name_annotate(w: Path) -> List[Proc]:
        folder = w / "f"
        copy(plain, folder / ("x" * 246 + ".png"))
        return [grefel("predict", folder, "-w", mini, "--aligned", "--annotate", w / "ann",
                       "--out", w / "p.jsonl")]

    def annotated_or_said(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        made = list((work / "ann").rglob("*")) if (work / "ann").exists() else []
        return "" if made or "annot" in procs[-1].stderr else "lost: no annotated copy, no word"

    add("250-byte file name with --annotate folder", "new: unusual file names", EITHER,
        long_name_annotate, annotated_or_said)

    def dash_name(w: Path) -> List[Proc]:
        copy(plain, w / "-photo.png")
        return [grefel("predict", "-w", mini, "--aligned", "--", "-photo.png", cwd=w)]

    add("predict -- -photo.png (name starting with a dash)", "new: unusual file names", "ok",
        dash_name, records_right)

    def symlink_parent(w: Path) -> List[Proc]:
        real = w / "real" / "deep"
        copy(plain, real / "x.png")
        (w / "cwd").mkdir()
        os.symlink(real, w / "cwd" / "link")
        return [grefel("predict", "link/../deep/x.png", "-w", mini, "--aligned",
                       cwd=w / "cwd")]

    add("predict link/../deep/x.png (.. through a symlink, as the kernel resolves it)",
        "new: unusual file names", EITHER, symlink_parent, records_right)

    def model_no_ext(w: Path) -> List[Proc]:
        copy(mini, w / "model")
        return [grefel("predict", plain, "-w", w / "model", "--aligned")]

    add("-w an ONNX saved without extension", "new: unusual file names", EITHER, model_no_ext,
        records_right)

    def model_upper(w: Path) -> List[Proc]:
        copy(mini, w / "MODEL.ONNX")
        return [grefel("predict", plain, "-w", w / "MODEL.ONNX", "--aligned")]

    add("-w MODEL.ONNX (upper-case extension)", "new: unusual file names", EITHER, model_upper,
        records_right)

    def concurrent_synth(w: Path) -> List[Proc]:
        start = time.perf_counter()
        a = _popen("data", "synth", "--out", w / "ds", "--n", "300", "--size", "32")
        b = _popen("data", "synth", "--out", w / "ds", "--n", "300", "--size", "32", "--seed",
                   "5")
        pa, pb = _finish(a, start), _finish(b, start)
        return [pa, pb]

    def consistent_dataset(procs: List[Proc], work: Path) -> str:
        ok = [p for p in procs if p.returncode == 0]
        if len(ok) == 2:
            return "both concurrent synths into one folder exit 0"
        if not ok:
            return "lost: neither synth made the dataset"
        rows = sum(len(list(csv.reader((work / "ds" / f"{s}.csv").open()))) - 1
                   for s in ("train", "val", "test"))
        imgs = len(list((work / "ds" / "images").iterdir()))
        if rows != 300 or imgs != 300:
            return f"dataset mixed: {rows} CSV rows, {imgs} images"
        return ""

    def synth_last(procs: List[Proc], work: Path) -> str:
        return consistent_dataset(procs, work)

    c = Case("two data synth into one --out at once", SIDE, "new: concurrent commands", "ok",
             concurrent_synth, synth_last, ok_codes=(0, 1, 2))
    out.append(c)

    def concurrent_export(w: Path) -> List[Proc]:
        start = time.perf_counter()
        a = _popen("export", ckpt, "--onnx-only", "--fp32", "--out", w / "e")
        b = _popen("export", ckpt, "--onnx-only", "--fp32", "--out", w / "e")
        return [_finish(a, start, 200), _finish(b, start, 200)]

    def export_result(procs: List[Proc], work: Path) -> str:
        import onnx

        if not any(p.returncode == 0 for p in procs):
            return "lost: neither export finished"
        for p in procs:
            if p.returncode not in (0,) and len(p.error_lines()) != 1:
                return f"a concurrent export failed without one clear line (exit {p.returncode})"
        try:
            onnx.checker.check_model(onnx.load(str(work / "e" / "tiny.onnx")))
        except Exception as exc:  # noqa: BLE001
            return f"lost: tiny.onnx not a valid model ({type(exc).__name__})"
        left = [x.name for x in (work / "e").glob(".export-*")]
        return f"work folders left: {left}" if left else ""

    out.append(Case("two exports into one --out at once", SIDE, "new: concurrent commands",
                    "ok", concurrent_export, export_result, ok_codes=(0, 1)))

    def concurrent_predict_out(w: Path) -> List[Proc]:
        folder = w / "f"
        for i in range(12):
            copy(plain, folder / f"{i:02d}.png")
        start = time.perf_counter()
        a = _popen("predict", folder, "-w", mini, "--aligned", "--batch", "1", "--out",
                   w / "p.jsonl")
        b = _popen("predict", folder, "-w", mini, "--aligned", "--batch", "1", "--out",
                   w / "p.jsonl")
        return [_finish(a, start), _finish(b, start)]

    def whole_records(procs: List[Proc], work: Path) -> str:
        try:
            recs = _records(work / "p.jsonl")
        except json.JSONDecodeError:
            return "records file interleaved: lines that are not JSON"
        if all(p.returncode == 0 for p in procs) and len(recs) != 12:
            return f"both exit 0, the file holds {len(recs)} records (12 expected)"
        return ""

    out.append(Case("two predict --out one file at once", SIDE, "new: concurrent commands",
                    "ok", concurrent_predict_out, whole_records, ok_codes=(0, 1)))

    def synth_interrupted(w: Path) -> Proc:
        """`data synth --n 3000` Ctrl-C'd once 200 images are drawn."""
        start = time.perf_counter()
        proc = _popen("data", "synth", "--out", w / "ds", "--n", "3000", "--size", "32")
        end = time.monotonic() + 60
        while time.monotonic() < end and proc.poll() is None:
            if (w / "ds" / "images").exists() and len(os.listdir(w / "ds" / "images")) > 200:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        return _finish(proc, start, 60)

    def synth_interrupted_then_train(w: Path) -> List[Proc]:
        return [synth_interrupted(w), train(w, w / "ds")]

    add("data synth Ctrl-C'd, then train on its folder", "new: interrupted then rerun", "error",
        synth_interrupted_then_train)

    def synth_interrupted_then_rerun(w: Path) -> List[Proc]:
        first = synth_interrupted(w)
        return [first, grefel("data", "synth", "--out", w / "ds", "--n", "40", "--size", "32")]

    def complete_or_refused(procs: List[Proc], work: Path) -> str:
        if procs[0].returncode == 0:
            return ""  # finished before the signal: nothing to say
        if procs[-1].returncode != 0:
            return ""
        imgs = len(list((work / "ds" / "images").iterdir()))
        return "" if imgs == 40 else f"rerun exit 0, folder holds {imgs} images (40 made)"

    add("data synth Ctrl-C'd, then the same command again", "new: interrupted then rerun",
        EITHER, synth_interrupted_then_rerun, complete_or_refused)

    def train_interrupted_resume(w: Path) -> List[Proc]:
        start = time.perf_counter()
        proc = _popen("train", "--data", synth, "--out", w / "run", *TINY_TRAIN, "--epochs",
                      "30")
        end = time.monotonic() + 90
        while time.monotonic() < end and proc.poll() is None:
            if (w / "run" / "last.safetensors").exists():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        first = _finish(proc, start, 60)
        return [first, grefel("train", "--out", w / "run", "--resume", "--epochs", "2")]

    def resumed(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        metrics = json.loads((work / "run" / "metrics.json").read_text())
        return "" if metrics else "lost: no metrics after resume"

    add("train Ctrl-C'd after epoch 1, then --resume --epochs 2", "new: interrupted then rerun",
        EITHER, train_interrupted_resume, resumed)

    def huge_strip(w: Path) -> List[Proc]:
        img = _png(w / "strip.png", size=(30000, 2))
        return [grefel("predict", img, "-w", mini, "--out", w / "p.jsonl")]

    add("a 30000 x 2 pixel strip, with face detection", "new: odd input sizes", "ok", huge_strip,
        lambda p, w: "" if len(_records(w / "p.jsonl")) == 1 else "lost: no record")

    def empty_csv(w: Path) -> List[Proc]:
        data = copy(csvdata, w / "ds")
        (data / "val.csv").write_text("")
        return [train(w, data)]

    add("val.csv of 0 bytes (no header)", "new: odd input sizes", "error", empty_csv)

    def header_only(w: Path) -> List[Proc]:
        data = copy(csvdata, w / "ds")
        (data / "test.csv").write_text("path,label\n")
        return [grefel("eval", ckpt, "--data", data, "--out", w / "ev")]

    add("eval of a test.csv with a header and no row", "new: odd input sizes", "error",
        header_only)

    def weights_dir(w: Path) -> List[Proc]:
        (w / "model.onnx").mkdir()
        return [grefel("predict", plain, "-w", w / "model.onnx", "--aligned")]

    add("-w a folder named model.onnx", "new: odd input sizes", "error", weights_dir)

    def annotate_existing_folder_for_image(w: Path) -> List[Proc]:
        (w / "ann").mkdir()
        (w / "ann" / "keep.txt").write_text("keep")
        _protect(w, w / "ann")
        return [grefel("predict", plain, "-w", mini, "--aligned", "--annotate", w / "ann")]

    add("predict img --annotate EXISTING-FOLDER", "new: output folder is a file", "error",
        annotate_existing_folder_for_image)

    def info_json_nested(w: Path) -> List[Proc]:
        return [grefel("info", "--json", w / "nested" / "deeper" / "info.json")]

    add("info --json into folders that do not exist yet", "new: output folder is a file",
        EITHER, info_json_nested,
        lambda p, w: "" if p[-1].returncode != 0 or (w / "nested" / "deeper" / "info.json")
        .exists() else "lost: exit 0, no info.json")

    return out


def stat_is_fifo(path: Path) -> bool:
    import stat

    try:
        return stat.S_ISFIFO(os.lstat(path).st_mode)
    except OSError:
        return False


def _without(args: Sequence[str], option: str) -> List[str]:
    """`args` less `option` and its value."""
    i = list(args).index(option)
    return [*args[:i], *args[i + 2:]]


def records_or_gpu(procs: List[Proc], work: Path) -> str:
    """--device cuda where there is no GPU: a refusal, or records computed (on a GPU)."""
    if procs[-1].returncode != 0:
        return ""
    recs = _stdout_records(procs[-1])
    return "" if len(recs) == 1 and recs[0].get("probs") else "exit 0 without a record"


# -- run and record --------------------------------------------------------------------------


def judge(case: Case, procs: List[Proc], work: Path) -> Outcome:
    """The campaign's `classify`; a case marked "ok or error" (EITHER) that ended in one clear
    `Error:` line and a non-zero exit is judged as a refusal."""
    outcome = classify(case, procs, work)
    if _EITHER.get(case.name) and outcome.category == "unclear error" \
            and len(procs[-1].error_lines()) == 1:
        as_error = Case(case.name, case.side, case.item, "error", case.run, case.check,
                        case.ok_codes)
        outcome = classify(as_error, procs, work)
    if _EITHER.get(case.name):
        outcome.expect = EITHER
    return outcome


def fresh_record(outcomes: List[Outcome]) -> Dict[str, Any]:
    """The record of a fresh campaign: counts, counts per family (a case's `item`), outcomes."""
    from tools.fault_campaign import _git

    return {
        "schema": "grefel-fault-fresh/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": _git(),
        "cases": len(outcomes),
        "counts": {c: sum(o.category == c for o in outcomes) for c in CATEGORIES},
        "counts_by_family": {
            fam: {c: sum(o.category == c and o.item == fam for o in outcomes)
                  for c in CATEGORIES}
            for fam in dict.fromkeys(o.item for o in outcomes)},
        "outcomes": [asdict(o) for o in outcomes],
    }


def run_fresh(out_dir: Path, match: str = "", log: Callable[[str], None] = print
              ) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="grefel-fresh-") as tmp:
        tmp_path = Path(tmp)
        chosen = [c for c in cases(tmp_path / "scratch") if match in c.name]
        record = fresh_record(run_cases(chosen, tmp_path / "work", log, judge))
    write(record, out_dir)
    return record


TITLE = "Fresh fault campaign"
BLURB = ("new cases through the CLI (`python -m tools.fault_fresh`), none of them a case of "
         "the corpus, the campaign, the tests or issue 27's examples; each is assigned one of "
         "issue 27's families or a new one.")


def to_markdown(record: Dict[str, Any], title: str = TITLE, blurb: str = BLURB) -> str:
    lines = [f"# {title}, {record['created']} ({record['git']})", "",
             f"{record['cases']} {blurb}", "",
             summary_line(record), "",
             "| category | count |", "|---|---|"]
    lines += [f"| {c} | {record['counts'][c]} |" for c in CATEGORIES]
    lines += ["", "| family | cases | defects |", "|---|---|---|"]
    for fam, counts in record["counts_by_family"].items():
        bad = sum(n for c, n in counts.items() if c not in ("clear error", "handled"))
        title_ = f"{fam} {FAMILIES[fam]}" if fam in FAMILIES else fam
        lines.append(f"| {title_} | {sum(counts.values())} | {bad} |")
    lines += ["", "| # | family | case | expected | outcome | exit | note |",
              "|---|---|---|---|---|---|---|"]
    for i, o in enumerate(record["outcomes"], 1):
        note = o["note"].replace("|", "\\|").replace("\n", " ")[:200]
        name = o["name"].replace("|", "\\|")
        lines.append(f"| {i} | {o['item']} | {name} | {o['expect']} | {o['category']} | "
                     f"{o['returncode']} | {note} |")
    return "\n".join(lines) + "\n"


def write(record: Dict[str, Any], out_dir: Path, stem: str = "fault_fresh",
          markdown: Optional[str] = None) -> Path:
    from benchmarks.report import write_json_and_markdown

    path = Path(out_dir) / f"{stem}_{time.strftime('%Y-%m-%d')}"
    write_json_and_markdown(path.with_suffix(".json"), path.with_suffix(".md"), record,
                            markdown if markdown is not None else to_markdown(record))
    return path


def fresh_main(run: Callable[..., Dict[str, Any]], doc: Optional[str],
               argv: Optional[Sequence[str]] = None) -> int:
    """The command line of a fresh campaign: `--out DIR` (its record), `--match S` (a subset);
    prints the summary line."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results")
    parser.add_argument("--match", default="", help="Only cases whose name contains this.")
    args = parser.parse_args(argv)
    print(summary_line(run(args.out, match=args.match)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return fresh_main(run_fresh, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
