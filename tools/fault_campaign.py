"""The fault campaign of issue 13: each corpus case through the CLI in a child process, classified.

    python -m tools.fault_campaign                 # all cases -> tools/results/
    python -m tools.fault_campaign --only infer    # predict / export / bench cases only
    python -m tools.fault_campaign --only families # issue 27's families (or one: --only NAME)

Each case is one `python -m grefel ...` command (a few set up a folder or run two commands, as a
user would) run in its own process with a time limit, and its outcome is one of:

    clear error      exit != 0, exactly one `Error:` line, no traceback (a refusal that was due)
    handled          exit 0 and the result checked right (records, files, the folder's rest)
    traceback        a Python traceback on stdout / stderr
    segfault         killed by SIGSEGV / SIGBUS / SIGABRT / SIGFPE
    silently wrong   exit 0 where an error was due, or a result that the check finds wrong
    lost             records, checkpoints or datasets that should be on disk are not
    unclear error    exit != 0 without exactly one `Error:` line (or a refusal of valid input)
    hang             still running at the time limit (killed)

The inference cases (predict, export, bench: issue 13 items 3, 5, 6, 7, 9, 10, 14, 15) use
`tools/fault_corpus.py`; the train-side ones (items 1, 2, 4, 12, 13, 14, 15) build tiny CSV
datasets and a tiny checkpoint; issue 27's families are the modules of
`tools/fault_families/` (one per family, each its own side in the record). The record goes to
`tools/results/fault_campaign_<YYYY-mm-dd>.json` and `.md`: per case its command, exit
status, category and the first lines of its output; and the count per category.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from tools.fault_families import family_modules

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("clear error", "handled", "traceback", "segfault", "silently wrong", "lost",
              "unclear error", "hang")
INTERNAL = "Error: internal error"  # grefel.cli.main's line for a bug (a saved crash report)
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE}
TINY_TRAIN = ["--preset", "tiny", "--epochs", "1", "--batch-size", "8", "--image-warmup", "0",
              "--workers", "0", "--device", "cpu", "--threads", "1", "--no-augment",
              "--precise-bn", "0", "--freeze", "none"]


@dataclass
class Proc:
    """What a command did."""

    argv: List[str]
    returncode: Optional[int]  # None: killed at the time limit
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def error_lines(self) -> List[str]:
        return [line for line in self.output.splitlines() if line.startswith("Error:")]


@dataclass
class Case:
    name: str
    side: str  # "infer" or "train"
    item: str  # issue 13 item(s)
    expect: str  # "error" or "ok"
    run: Callable[[Path], List[Proc]]  # runs the commands in a work folder; the last one counts
    check: Callable[[List[Proc], Path], str] = lambda procs, work: ""  # "" or what is wrong;
    # "lost: ..." for missing records / files
    ok_codes: Sequence[int] = (0,)  # exit statuses of a handled run (128 + signal for a signal)
    ci: bool = True  # False: a slower variant of a case CI already runs; the campaign runs all


@dataclass
class Outcome:
    name: str
    side: str
    item: str
    expect: str
    category: str
    returncode: Optional[int]
    seconds: float
    note: str
    command: str
    output_head: List[str] = field(default_factory=list)


def grefel(*args: Any, timeout: float = 300.0, env: Optional[Dict[str, str]] = None,
           cwd: Path = ROOT) -> Proc:
    """`python -m grefel ARGS` in a child process, its bytes output decoded with escapes."""
    argv = [sys.executable, "-m", "grefel", *[os.fsdecode(a) if isinstance(a, bytes) else str(a)
                                               for a in args]]
    start = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=cwd,
                           env={**os.environ, **(env or {})})
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, exc.stdout or b"", exc.stderr or b""
    dec = lambda b: b.decode("utf-8", errors="backslashreplace")  # noqa: E731
    return Proc(argv, rc, dec(out), dec(err), time.perf_counter() - start)


def classify(case: Case, procs: List[Proc], work: Path) -> Outcome:
    last = procs[-1]
    note = ""
    if last.returncode is None:
        category = "hang"
    elif -last.returncode in CRASH_SIGNALS:
        category, note = "segfault", f"killed by {signal.Signals(-last.returncode).name}"
    elif any("Traceback (most recent call last)" in p.output for p in procs):
        category = "traceback"
        note = next(line for line in reversed([x for p in procs for x in p.output.splitlines()])
                    if line.strip())
    elif any(line.startswith(INTERNAL) for p in procs for line in p.error_lines()):
        # the net in grefel.cli.main caught a bug: one line and a report, still a traceback
        category = "traceback"
        note = next(line for p in procs for line in p.error_lines()
                    if line.startswith(INTERNAL))[:300]
    else:
        try:
            problem = case.check(procs, work)
        except Exception as exc:  # the check itself could not read the result: count it wrong
            problem = f"check failed: {type(exc).__name__}: {exc}"
        if problem.startswith("lost"):
            category, note = "lost", problem
        elif problem:
            category, note = "silently wrong", problem
        elif last.returncode in case.ok_codes:
            category = "handled" if case.expect == "ok" else "silently wrong"
            note = "" if case.expect == "ok" else "exit 0 where an error was due"
        elif len(last.error_lines()) == 1 and case.expect == "error":
            category, note = "clear error", last.error_lines()[0][:300]
        else:
            category = "unclear error"
            note = (f"refused valid input: {last.error_lines()[:1]}" if case.expect == "ok"
                    else f"{len(last.error_lines())} Error: lines")
    head = [line[:240] for line in last.output.splitlines() if line.strip()][-6:]
    command = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(last.argv))
    tmp = str(work.parents[1])  # the campaign's temporary folder: T in the record
    return Outcome(case.name, case.side, case.item, case.expect, category, last.returncode,
                   round(sum(p.seconds for p in procs), 2), note.replace(tmp, "T"),
                   command.replace(str(work), "W").replace(tmp, "T"),
                   [line.replace(tmp, "T") for line in head])


# -- inference cases -------------------------------------------------------------------------


# `grefel bench` as quick as it goes: one batch size, one timed call, the tiny preset's table
QUICK_BENCH = ("--batch-sizes", "1", "--iters", "1", "--seconds", "0", "--presets", "tiny")


def latency_rows(folder: Path) -> List[Dict[str, Any]]:
    """The latency rows of the bench records in `folder` (none where it holds none)."""
    return [r for p in folder.glob("bench_*.json")
            for r in json.loads(p.read_text()).get("latency", [])]


def _records(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def infer_cases(corpus_dir: Path) -> List[Case]:
    from grefel.fileio import display_path
    from tools import fault_corpus as fc

    images = corpus_dir / "images"
    names = fc.image_folder(images)
    models = fc.make_model_files(corpus_dir / "models")
    videos = fc.video_files(corpus_dir / "videos")
    mini = models["mini"]
    cases: List[Case] = []

    def folder_check(procs: List[Proc], work: Path) -> str:
        out = work / "p.jsonl"
        if not out.exists():
            return "lost: no records file"
        recs = {Path(r["source"]).name: r for r in _records(out)}
        want = {display_path(n): n for n in names["good"]}
        missing = sorted(set(want) - set(recs))
        if missing:
            return f"lost: no record of {missing}"
        extra = sorted(set(recs) - set(want))
        if extra:
            return f"records of files that are not images: {extra}"
        for shown, name in want.items():
            why = fc.wrong_record(name, recs[shown])
            if why:
                return f"{shown}: {why}"
        skipped = [x for x in procs[-1].stderr.splitlines() if x.startswith("skipped ")]
        if len(skipped) != len(names["bad"]):
            return f"{len(skipped)} skip lines for {len(names['bad'])} bad files"
        return ""

    cases.append(Case("folder of bad and odd images (jsonl)", "infer", "5 6 15", "ok",
                      lambda w: [grefel("predict", images, "-w", mini, "--aligned", "--out",
                                        w / "p.jsonl")], folder_check))

    def csv_annotate(w: Path) -> List[Proc]:
        return [grefel("predict", images, "-w", mini, "--aligned", "--format", "csv", "--out",
                       w / "p.csv", "--annotate", w / "annotated")]

    def csv_check(procs: List[Proc], work: Path) -> str:
        if not (work / "p.csv").exists():
            return "lost: no records file"
        rows = list(csv.DictReader((work / "p.csv").open(encoding="utf-8")))
        if len(rows) != len(names["good"]):
            return f"lost: {len(rows)} CSV rows for {len(names['good'])} images"
        made = len([n for n in os.listdir(os.fsencode(work / "annotated"))
                    if not n.startswith(b".")])  # .grefel-annotated marks the folder
        return "" if made == len(names["good"]) else f"lost: {made} annotated images"

    cases.append(Case("non-UTF-8 name, --format csv --annotate", "infer", "6", "ok",
                      csv_annotate, csv_check))
    single = {
        "zero-byte .jpg": "zero_bytes.jpg", "text named .jpg": "text.jpg",
        "truncated PNG": "truncated.png", "truncated JPEG": "truncated.jpg",
        "bomb-sized PNG header": "bomb.png", "symlink loop": "symlink_loop.png",
    }
    for label, name in single.items():
        cases.append(Case(f"image: {label}", "infer", "5 15", "error",
                          lambda w, n=name: [grefel("predict", images / n, "-w", mini)]))
    for name in names["good"]:
        def one(w: Path, n: str = name) -> List[Proc]:
            return [grefel("predict", os.fsencode(images / n), "-w", mini, "--aligned",
                           "--out", w / "p.jsonl")]

        def right(procs: List[Proc], work: Path, n: str = name) -> str:
            recs = _records(work / "p.jsonl") if (work / "p.jsonl").exists() else []
            return fc.wrong_record(n, recs[0]) if len(recs) == 1 else f"lost: {len(recs)} records"

        cases.append(Case(f"image: {display_path(name)}", "infer", "6 15", "ok", one, right))

    def bomb_raised(w: Path) -> List[Proc]:
        return [grefel("predict", images / "bomb.png", "-w", mini, "--max-pixels", "400000000")]

    cases.append(Case("bomb with --max-pixels raised (decode tried, data short)", "infer", "5",
                      "error", bomb_raised,
                      lambda p, w: "" if "not a decodable image" in p[-1].output
                      else "the raised limit was not applied"))
    cases.append(Case("video over --max-pixels", "infer", "5", "error",
                      lambda w: [grefel("predict", videos["good"], "-w", mini, "--max-pixels",
                                        "10000")]))
    for key in ("corrupt", "zero_frames"):
        cases.append(Case(f"video: {key}", "infer", "15", "error",
                          lambda w, k=key: [grefel("predict", videos[k], "-w", mini)]))

    def truncated_video(procs: List[Proc], work: Path) -> str:
        n = len(_records(work / "p.jsonl")) if (work / "p.jsonl").exists() else 0
        if not 1 <= n < 6:
            return f"lost: {n} frames of a video cut at 40 %"
        return "" if f"ended at frame {n} of the 6" in procs[-1].output else "no word of the end"

    cases.append(Case("video: truncated (frames before the cut, then where it ended)", "infer",
                      "15 27.5", "error",
                      lambda w: [grefel("predict", videos["truncated"], "-w", mini, "--aligned",
                                        "--out", w / "p.jsonl")], truncated_video))
    cases.append(Case("missing camera", "infer", "15", "error",
                      lambda w: [grefel("predict", "97", "-w", mini)]))
    plain = images / "plain.png"
    for key in ("random_onnx", "random_engine", "foreign_shape", "foreign_outputs",
                "list_sidecar", "str_sidecar_engine"):
        cases.append(Case(f"predict -w {models[key].name} ({key})", "infer", "14 15", "error",
                          lambda w, k=key: [grefel("predict", plain, "-w", models[k])]))
        if key in ("random_onnx", "foreign_shape", "foreign_outputs"):
            cases.append(Case(f"export {models[key].name}", "infer", "14 15", "error",
                              lambda w, k=key: [grefel("export", models[k], "--onnx-only",
                                                       "--fp32", "--out", w / "e")]))

            def bench_row(w: Path, k: str = key) -> List[Proc]:
                return [grefel("bench", "-w", models[k], "--backends", "onnx", *QUICK_BENCH,
                               "--out", w / "r")]

            def bench_says(procs: List[Proc], work: Path) -> str:
                rows = latency_rows(work / "r")
                bad = [r for r in rows if r["status"] != "ok" and r["backend"] == "onnx"]
                return "" if bad else "lost: no row saying why the model cannot run"

            cases.append(Case(f"bench -w {models[key].name} (a row saying why)", "infer",
                              "7 14", "ok", bench_row, bench_says))
    cases.append(Case("bench -w random.safetensors", "infer", "7 15", "error",
                      lambda w: [grefel("bench", "-w", models["random_safetensors"],
                                        "--backends", "onnx", "--presets", "tiny", "--out",
                                        w / "r")]))
    blocker = corpus_dir / "a_file"
    blocker.write_text("x")
    cases.append(Case("predict --out unwritable", "infer", "14", "error",
                      lambda w: [grefel("predict", plain, "-w", mini, "--out",
                                        blocker / "p.jsonl")]))
    cases.append(Case("export --out unwritable", "infer", "14", "error",
                      lambda w: [grefel("export", mini, "--onnx-only", "--fp32", "--out",
                                        blocker / "e")]))
    cases.append(Case("bench --out unwritable (before timing)", "infer", "7 14", "error",
                      lambda w: [grefel("bench", "-w", mini, "--backends", "onnx", "--presets",
                                        "tiny", "--out", blocker / "r")],
                      lambda p, w: "timed before refusing" if "batch 1 ..." in p[-1].output
                      else ""))

    def nan_model(w: Path) -> List[Proc]:
        import onnx
        from onnx import helper

        proto = onnx.load(str(mini))
        for node in proto.graph.node:
            if node.output[0] == "probs":
                node.op_type, node.input[0] = "Sqrt", "negp"
        proto.graph.node.insert(2, helper.make_node("Neg", ["p"], ["negp"]))
        onnx.save(proto, str(w / "nan.onnx"))
        return [grefel("predict", plain, "-w", w / "nan.onnx", "--aligned")]

    cases.append(Case("model returning NaN", "infer", "9", "error", nan_model))

    def stale_export(w: Path) -> List[Proc]:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (w / "e" / f".export-{dead.pid}-killed").mkdir(parents=True)
        (w / "e" / ".export-oldlayout").mkdir()
        return [grefel("export", mini, "--onnx-only", "--fp32", "--out", w / "e")]

    cases.append(Case("export after killed exports (stale work folders)", "infer", "10", "ok",
                      stale_export,
                      lambda p, w: "stale work folders left: " + ", ".join(
                          x.name for x in (w / "e").glob(".export-*"))
                      if list((w / "e").glob(".export-*")) else ""))
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        cases.append(Case(f"predict --out, {sig.name} after 3 records", "infer", "3", "ok",
                          lambda w, s=sig: [_signalled_predict(w, mini, videos["long"], s)],
                          lambda p, w, s=sig: _signal_check(p[-1], w, s),
                          ok_codes=(128 + sig,)))
    return cases


def _default_sigint() -> None:
    """In the child: SIGINT as a terminal delivers it (a shell starts background jobs with it
    ignored, and Python then keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signalled_predict(work: Path, model: Path, video: Path, sig: int) -> Proc:
    """predict over a 90-frame video read from a named pipe its writer holds open (the run
    waits there, deterministically, after its last frame), `sig` once 3 records are on disk,
    then the pipe closed."""
    from tools.fault_corpus import fifo_video

    fifo = work / "stream.avi"
    os.mkfifo(fifo)
    out = work / "p.jsonl"
    argv = [sys.executable, "-m", "grefel", "predict", str(fifo), "-w", str(model), "--aligned",
            "--batch", "1", "--out", str(out), "--json", str(work / "s.json")]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                 preexec_fn=_default_sigint)
    end = time.monotonic() + 120
    with fifo_video(fifo, video, proc):
        while time.monotonic() < end and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 3:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(sig)
    try:
        stdout, stderr = proc.communicate(timeout=60)
        rc: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        rc = None
    dec = lambda b: b.decode("utf-8", errors="backslashreplace")  # noqa: E731
    return Proc(argv, rc, dec(stdout), dec(stderr), time.perf_counter() - start)


def _signal_check(proc: Proc, work: Path, sig: int) -> str:
    n = len(_records(work / "p.jsonl")) if (work / "p.jsonl").exists() else 0
    if n < 3:
        return f"lost: {n} of the 3 records produced before {signal.Signals(sig).name}"
    if not (work / "s.json").exists():
        return "lost: no summary"
    if proc.returncode != 128 + sig:
        return f"exit {proc.returncode}, expected {128 + sig}"
    return ""


# -- train-side cases ------------------------------------------------------------------------


def _csv_dataset(root: Path, labels: Dict[str, Sequence[Any]], classes: Optional[Sequence[str]],
                 bad_rows: Optional[Dict[str, List[str]]] = None) -> Path:
    """ROOT/<split>.csv (path,label) over small coloured PNGs; `classes` -> classes.txt."""
    import numpy as np
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, labs in labels.items():
        rows = []
        for i, lab in enumerate(labs):
            name = f"img/{split}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name)
            rows.append([name, str(lab)])
        rows += [[p, "0"] for p in (bad_rows or {}).get(split, [])]
        with open(root / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([["path", "label"], *rows])
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


SEVEN = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]


def _good_labels(n: int = 14) -> List[int]:
    return [i % 7 for i in range(n)]


def _tiny_checkpoint(path: Path) -> Path:
    import torch

    from grefel.checkpoint import save_checkpoint
    from grefel.model import create_model

    torch.manual_seed(0)
    return save_checkpoint(path, create_model("tiny", class_names=SEVEN).eval())


def train_cases(scratch: Path) -> List[Case]:
    cases: List[Case] = []
    good = {"train": _good_labels(), "val": _good_labels(7), "test": _good_labels(7)}
    data = _csv_dataset(scratch / "data_good", good, SEVEN)
    ckpt = _tiny_checkpoint(scratch / "ckpt" / "tiny.safetensors")

    def train(w: Path, root: Path, *extra: Any, out: Optional[Path] = None) -> Proc:
        return grefel("train", "--data", root, "--out", out or (w / "run"), *TINY_TRAIN, *extra)

    def synth_twice(w: Path) -> List[Proc]:
        first = grefel("data", "synth", "--out", w / "ds", "--n", "30", "--size", "32")
        (w / "ds" / "mine.txt").write_text("keep me")
        return [first, grefel("data", "synth", "--out", w / "ds", "--n", "20", "--size", "32")]

    cases.append(Case("data synth --out EXISTING", "train", "13", "error", synth_twice,
                      lambda p, w: "" if (w / "ds" / "mine.txt").exists() else
                      "lost: the existing dataset folder was deleted"))

    def two_trains(w: Path) -> List[Proc]:
        out = w / "run"
        argv = [sys.executable, "-m", "grefel", "train", "--data", str(data), "--out", str(out),
                *TINY_TRAIN, "--epochs", "2"]
        first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                 preexec_fn=_default_sigint)
        end = time.monotonic() + 120
        while time.monotonic() < end and first.poll() is None and not (
                out.exists() and any(out.iterdir())):
            time.sleep(0.1)
        second = train(w, data, "--epochs", "1")
        first.communicate(timeout=600)
        return [second]

    cases.append(Case("two train into one --out", "train", "1", "error", two_trains))

    def resume_changed(w: Path) -> List[Proc]:
        first = train(w, data, "--lr", "1e-3")
        return [first, train(w, data, "--resume", "--epochs", "2", "--lr", "1e-2")]

    def resume_truthful(procs: List[Proc], work: Path) -> str:
        last = procs[-1]
        if last.returncode == 0 and "lr" not in last.stderr.lower().replace("lr_", ""):
            return "exit 0 and nothing said about the changed --lr"
        return ""

    cases.append(Case("--resume with a changed --lr", "train", "2", "error", resume_changed,
                      resume_truthful))
    unreadable = _csv_dataset(scratch / "data_badval", {"train": _good_labels(),
                                                        "val": [], "test": _good_labels(7)},
                              SEVEN)
    for i in range(3):
        (unreadable / "img" / f"text_{i}.jpg").write_text("not an image")
    with open(unreadable / "val.csv", "a", newline="") as f:
        csv.writer(f).writerows([[f"img/text_{i}.jpg", "0"] for i in range(3)])
    cases.append(Case("a split with no readable image", "train", "4", "error",
                      lambda w: [train(w, unreadable)]))
    stray = _csv_dataset(scratch / "data_stray", {"train": [*_good_labels(), 12],
                                                  "val": _good_labels(7),
                                                  "test": _good_labels(7)}, None)
    cases.append(Case("one stray integer label, no classes.txt", "train", "12", "error",
                      lambda w: [train(w, stray)]))
    one_class = _csv_dataset(scratch / "data_one", {"train": [0] * 8, "val": [0] * 4,
                                                    "test": [0] * 4}, None)
    cases.append(Case("one-class dataset", "train", "14 15", "error",
                      lambda w: [train(w, one_class)]))
    loop = _csv_dataset(scratch / "data_loop", good, SEVEN, {"train": ["img/loop.png"]})
    os.symlink("loop.png", loop / "img" / "loop.png")
    cases.append(Case("CSV listing a symlink loop (--strict)", "train", "14 15", "error",
                      lambda w: [train(w, loop, "--strict")]))
    missing = _csv_dataset(scratch / "data_missing", good, SEVEN, {"train": ["img/nope.png"]})
    cases.append(Case("CSV listing a missing file", "train", "15", "error",
                      lambda w: [train(w, missing)]))
    unknown = _csv_dataset(scratch / "data_unknown", {**good, "train": [*_good_labels(),
                                                                        "joyful"]}, SEVEN)
    cases.append(Case("unknown label", "train", "15", "error", lambda w: [train(w, unknown)]))
    out_of_range = _csv_dataset(scratch / "data_range", {**good, "train": [*_good_labels(), 9]},
                                SEVEN)
    cases.append(Case("label index out of range", "train", "15", "error",
                      lambda w: [train(w, out_of_range)]))
    nosplit = _csv_dataset(scratch / "data_nosplit", {"train": _good_labels()}, SEVEN)
    cases.append(Case("missing val split", "train", "15", "error",
                      lambda w: [train(w, nosplit)]))
    empty_class = scratch / "data_folder"
    for split in ("train", "val", "test"):
        for c in ("happy", "sad"):
            (empty_class / split / c).mkdir(parents=True)
        _csv_dataset(scratch / "tmp_imgs", {split: [0, 0]}, None)
        for i, p in enumerate(sorted((scratch / "tmp_imgs" / "img").glob(f"{split}_*.png"))):
            shutil.copyfile(p, empty_class / split / "happy" / f"{i}.png")
    cases.append(Case("empty class folder", "train", "15", "error",
                      lambda w: [train(w, empty_class, "--dataset", "imagefolder")]))
    blocker = scratch / "a_file"
    blocker.write_text("x")
    cases.append(Case("train --out unwritable", "train", "14", "error",
                      lambda w: [train(w, data, out=blocker / "run")]))
    for label, extra in (("--workers -1", ["--workers", "-1"]),
                         ("--device bogus", ["--device", "bogus"]),
                         ("--set epochs=many", ["--set", "epochs=many"])):
        cases.append(Case(f"train {label}", "train", "14", "error",
                          lambda w, e=extra: [train(w, data, *e)]))
    cases.append(Case("eval --batch-size 0", "train", "14", "error",
                      lambda w: [grefel("eval", ckpt, "--data", data, "--batch-size", "0",
                                        "--out", w / "ev")]))
    cases.append(Case("eval of an ONNX", "train", "14", "error",
                      lambda w: [grefel("eval", scratch / "m.onnx", "--data", data,
                                        "--out", w / "ev")]))
    from tools.fault_corpus import mini_onnx

    mini_onnx(scratch / "m.onnx")

    def truncated_ckpt(w: Path) -> List[Proc]:
        shutil.copyfile(ckpt.with_suffix(".json"), w / "t.json")
        (w / "t.safetensors").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        return [grefel("eval", w / "t.safetensors", "--data", data, "--out", w / "ev")]

    cases.append(Case("truncated checkpoint", "train", "15", "error", truncated_ckpt))

    def list_sidecar(w: Path) -> List[Proc]:
        shutil.copyfile(ckpt, w / "s.safetensors")
        (w / "s.json").write_text("[1, 2]")
        return [grefel("eval", w / "s.safetensors", "--data", data, "--out", w / "ev")]

    cases.append(Case("checkpoint sidecar that is not a JSON object", "train", "14 15",
                      "error", list_sidecar))

    def swapped_weights(w: Path) -> List[Proc]:
        import torch

        from grefel.checkpoint import save_checkpoint
        from grefel.model import create_model

        torch.manual_seed(1)
        other = save_checkpoint(w / "other.safetensors",
                                create_model("tiny", class_names=SEVEN).eval())
        shutil.copyfile(ckpt.with_suffix(".json"), w / "x.json")
        shutil.copyfile(other, w / "x.safetensors")
        return [grefel("eval", w / "x.safetensors", "--data", data, "--out", w / "ev")]

    cases.append(Case("weights that are not the sidecar's (sha256)", "train", "8", "error",
                      swapped_weights))

    def malicious(w: Path) -> List[Proc]:
        marker = w / "pwned"
        payload = (b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
        (w / "evil.pth").write_bytes(payload)
        return [grefel("weights", "import", w / "evil.pth", "--kind", "ir50", "--out",
                       w / "x.safetensors")]

    cases.append(Case("malicious pickle (weights import)", "train", "15", "error", malicious,
                      lambda p, w: "the pickle ran code" if (w / "pwned").exists() else ""))
    return cases


# -- the record ------------------------------------------------------------------------------


def run_cases(cases: Sequence[Case], work_root: Path, log: Callable[[str], None] = print,
              judge: Callable[[Case, List[Proc], Path], Outcome] = None,  # type: ignore
              prepare: Optional[Callable[[Path], None]] = None) -> List[Outcome]:
    """Run each case in its own work folder (`work_root/NNN`, made; `prepare(work)` first) and
    judge it (`classify` unless another judge is given), logging one line per case. A case
    whose own setup raises is recorded as the harness's failure ("unclear error", exit 99),
    not a crash of the campaign."""
    judge = judge or classify
    outcomes: List[Outcome] = []
    for i, case in enumerate(cases):
        work = work_root / f"{i:03d}"
        work.mkdir(parents=True)
        if prepare is not None:
            prepare(work)
        try:
            procs = case.run(work)
        except Exception as exc:  # noqa: BLE001 - the harness's failure: say so, go on
            procs = [Proc(["setup"], 99, "", f"harness: {type(exc).__name__}: {exc}", 0.0)]
        outcome = judge(case, procs, work)
        outcomes.append(outcome)
        log(f"[{i + 1}/{len(cases)}] {outcome.category:14s} {case.item:28s} {case.name}"
            + (f"  -- {outcome.note[:200]}" if outcome.note else ""))
    return outcomes


def run_campaign(only: Optional[str], out_dir: Path, log: Callable[[str], None] = print,
                 match: str = "") -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="grefel-faults-") as tmp:
        tmp_path = Path(tmp)
        cases: List[Case] = []
        if only in (None, "infer"):
            cases += infer_cases(tmp_path / "corpus")
        if only in (None, "train"):
            cases += train_cases(tmp_path / "train")
        for module in family_modules():
            side = module.__name__.rsplit(".", 1)[1]
            if only in (None, "families", side):
                cases += module.cases(tmp_path / "families" / side)
        outcomes = run_cases([c for c in cases if match in c.name], tmp_path / "work", log)
    sides = list(dict.fromkeys(o.side for o in outcomes))
    counts = {side: {c: sum(o.category == c and o.side == side for o in outcomes)
                     for c in CATEGORIES} for side in sides}
    record = {
        "schema": "grefel-fault-campaign/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": _git(),
        "cases": len(outcomes),
        "counts": {c: sum(o.category == c for o in outcomes) for c in CATEGORIES},
        "counts_by_side": counts,
        "outcomes": [asdict(o) for o in outcomes],
    }
    write(record, out_dir)
    return record


def _git() -> str:
    """The commit the cases ran at, `-dirty` when files other than the records of
    tools/results/ differ from it (a campaign's own earlier records are not the code)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT,
                              timeout=10).stdout.strip()
    try:
        head = git("describe", "--always")
        changed = git("status", "--porcelain", "--", ".", ":(exclude)tools/results")
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{head}-dirty" if head and changed else head


def summary_line(record: Dict[str, Any]) -> str:
    """One line: the number of cases and the count of each outcome that occurred."""
    counts = ", ".join(f"{n} {c}" for c, n in record["counts"].items() if n)
    bad = sum(n for c, n in record["counts"].items() if c not in ("clear error", "handled"))
    return (f"{record['cases']} cases: {counts}; "
            + ("all held" if not bad else f"{bad} defect(s)") + f" ({record['git']})")


def to_markdown(record: Dict[str, Any]) -> str:
    lines = [f"# Fault campaign, {record['created']} ({record['git']})", "",
             f"{record['cases']} cases through the CLI (`python -m tools.fault_campaign`), "
             "each in its own process.", "",
             summary_line(record), ""]
    by = record["counts_by_side"]
    lines += ["| category | all | " + " | ".join(by) + " |", "|---" * (len(by) + 2) + "|"]
    for c in CATEGORIES:
        lines.append(f"| {c} | {record['counts'][c]} | "
                     + " | ".join(str(by[side][c]) for side in by) + " |")
    lines += ["", "| # | side | item | case | expected | outcome | exit | note |",
              "|---|---|---|---|---|---|---|---|"]
    for i, o in enumerate(record["outcomes"], 1):
        note = o["note"].replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(f"| {i} | {o['side']} | {o['item']} | {o['name']} | {o['expect']} | "
                     f"{o['category']} | {o['returncode']} | {note} |")
    return "\n".join(lines) + "\n"


def write(record: Dict[str, Any], out_dir: Path) -> Path:
    from benchmarks.report import write_json_and_markdown

    stem = Path(out_dir) / f"fault_campaign_{time.strftime('%Y-%m-%d')}"
    write_json_and_markdown(stem.with_suffix(".json"), stem.with_suffix(".md"), record,
                            to_markdown(record))
    return stem


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sides = ["infer", "train", "families", *(m.__name__.rsplit(".", 1)[1]
                                             for m in family_modules())]
    parser.add_argument("--only", choices=sides,
                        help="One side's cases only (families: all of issue 27's; or one family).")
    parser.add_argument("--match", default="", help="Only cases whose name contains this.")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results")
    args = parser.parse_args(argv)
    record = run_campaign(args.only, args.out, match=args.match)
    print(summary_line(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
