"""A third fresh black-box fault campaign: the commands the earlier campaigns touched least.

    python -m tools.fault_fresh3 --out DIR [--match S]  # -> DIR/fault_fresh3_<date>.json/.md

None of these cases is a case of `tools/fault_corpus.py`, `tools/fault_campaign.py`,
`tools/fault_fresh.py`, `tools/fault_fresh2.py`, `tools/fault_families/*.py`,
`tests/test_bad_input.py`, `tests/test_faults_train.py` or an example of issue 27. They go
through `grefel check` (and `--run`), `info`, `export --triton / --deepstream / --int8
--calib-data`, `bench --source`, `pretrain`, `data split` (a generated folder in
muxspace/facial_expressions' layout), `weights import`, `eval --reference`, `predict` with its
plot, CSV records, `--show` and `--cuda-graph` on a machine without a display or GPU, and the
environment variables GREFEL_CUDA, GREFEL_CRASH_DIR and GREFEL_MAX_PIXELS. Each case names the
family of issue 27 it tries ("27.N") or a new one ("new: <name>").

The machinery is the campaign's (`Case`, `Proc`, `grefel`, `run_cases`) and `fault_fresh`'s
(the judge with "ok or error" cases, protected files hashed before and compared after, the
record and its Markdown). Every check reads the result itself: the user's files byte-identical,
records and reports present and right, not only the exit status. Nothing is written outside the
campaign's temporary folder (a system path is reached only through a link inside it); a server
binds ports picked free by binding port 0 and is always stopped.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from tools.fault_campaign import (
    QUICK_BENCH,
    ROOT,
    SEVEN,
    TINY_TRAIN,
    Case,
    Proc,
    _csv_dataset,
    _tiny_checkpoint,
    grefel,
    run_cases,
)
from tools.fault_fresh import (
    EITHER,
    _both,
    _copy,
    _intact,
    _nan_checkpoint,
    _no_nonfinite,
    _png,
    _protect,
    _records,
    _said,
    _video,
    case_adder,
    fresh_main,
    fresh_record,
    judge,
    to_markdown,
    write,
)
from tools.fault_fresh2 import _named_onnx, _one_record

__all__ = ["cases", "main", "run_fresh3"]

SIDE = "fresh3"
TITLE = "Third fresh fault campaign"
BLURB = ("new cases through the CLI (`python -m tools.fault_fresh3`), none of them a case "
         "of the corpus, the campaign, the families, the first two fresh campaigns, the tests or "
         "issue 27's examples, over the commands those touched least; each is assigned one of "
         "issue 27's families or a new one.")
QUICK = ["--precise-bn", "0", "--threads", "1", "--batch-size", "4", "--steps", "1"]


# -- helpers -----------------------------------------------------------------------------------


def _mux(root: Path, people: int = 30, per: int = 4,
         classes: Sequence[str] = ("happiness", "neutral", "sadness")) -> Path:
    """ROOT/images + ROOT/data/legend.csv (user.id,image,emotion), muxspace's layout: `people`
    identities with `per` photos each (First_Last_000k.jpg), labels cycling over `classes`."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    rows = [["user.id", "image", "emotion"]]
    k = 0
    for p in range(people):
        for i in range(per):
            name = f"Person_{p:02d}_{i + 1:04d}.jpg"
            _png(root / "images" / name, size=(48, 48), seed=k)
            rows.append([f"u{p}", name, classes[k % len(classes)].upper()])
            k += 1
    with open(root / "data" / "legend.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def _free_ports(n: int) -> List[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (the kernel picks each: bind port 0)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _serve_start(work: Path, *args: Any, wait: float = 60.0,
                 env: Optional[Dict[str, str]] = None) -> Proc:
    """`grefel serve ARGS` on free ports: it must refuse (exit) within `wait` s; a server still
    up then is stopped (its whole process group) and recorded as exit 0 ("it started")."""
    http, grpc, metrics = _free_ports(3)
    argv = [sys.executable, "-m", "grefel", "serve", *[str(a) for a in args], "--http-port",
            str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--out",
            str(work / "serve")]
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                             start_new_session=True)
    try:
        out, err = child.communicate(timeout=wait)
        rc: Optional[int] = child.returncode
    except subprocess.TimeoutExpired:
        rc = 0
        out, err = b"", b"(still serving after the wait: it started)"
    finally:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    dec = lambda b: (b or b"").decode("utf-8", errors="backslashreplace")  # noqa: E731
    return Proc(argv, rc, dec(out), dec(err), time.perf_counter() - start)


def _files(*names: str) -> Callable[[List[Proc], Path], str]:
    """On exit 0, each of `names` (relative to the work folder) must exist and not be empty."""
    def check(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        missing = [n for n in names if not (work / n).is_file() or (work / n).stat().st_size == 0]
        return f"lost: {', '.join(missing)} not written" if missing else ""
    return check


def _json_ok(name: str, key: str) -> Callable[[List[Proc], Path], str]:
    """On exit 0, `name` must be a JSON object holding `key`."""
    def check(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        path = work / name
        if not path.is_file():
            return f"lost: {name} not written"
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            return f"{name} is not JSON: {exc}"
        return "" if isinstance(data, dict) and key in data else f"{name} has no {key!r}"
    return check


def _line_names(*words: str) -> Callable[[List[Proc], Path], str]:
    """A refusal must name one of `words` in its Error: line (the option or file at fault)."""
    def check(procs: List[Proc], work: Path) -> str:
        lines = procs[-1].error_lines()
        if procs[-1].returncode == 0 or not lines:
            return ""
        return "" if any(w in lines[0] for w in words) else \
            f"the Error: line names none of {words}: {lines[0][:160]}"
    return check


# -- the cases ---------------------------------------------------------------------------------


def cases(scratch: Path) -> List[Case]:  # noqa: C901 - one list of cases, read top to bottom
    """The third fresh campaign's cases; shared inputs are made under `scratch`."""
    from tools.fault_corpus import mini_onnx
    from tools.fault_families.outputs import _Setup

    (scratch / "models").mkdir(parents=True, exist_ok=True)
    mini = mini_onnx(scratch / "models" / "mini.onnx")
    plain = _png(scratch / "img" / "plain.png")
    clip = _video(scratch / "video" / "clip.avi", frames=8)
    ckpt = _tiny_checkpoint(scratch / "ckpt" / "tiny.safetensors")
    nan_ckpt = _nan_checkpoint(ckpt, scratch / "nan" / "nan.safetensors")
    ir50 = scratch / "ir" / "ir50.safetensors"
    _Setup._ir50(ir50)
    good = {"train": [i % 7 for i in range(14)], "val": [i % 7 for i in range(7)],
            "test": [i % 7 for i in range(7)]}
    csvdata = _csv_dataset(scratch / "csvdata", good, SEVEN)
    rgbdata = _csv_dataset(scratch / "rgbdata", {s: [i % 3 for i in range(6)] for s in good},
                           ["red", "green", "blue"])
    mux = _mux(scratch / "mux")
    synth = scratch / "synth"
    p = grefel("data", "synth", "--out", synth, "--n", "120", "--size", "32", "--imbalance",
               "uniform")
    assert p.returncode == 0, p.output
    p = grefel("export", ckpt, "--onnx-only", "--fp32", "--no-simplify", "--out",
               scratch / "exported")
    assert p.returncode == 0, p.output
    tiny_onnx = scratch / "exported" / "tiny.onnx"  # grefel's metadata: Triton / DeepStream can
    calib = scratch / "calib"
    for i in range(8):
        _png(calib / f"c{i}.png", colour=(40 * (i % 4), 120, 60), size=(64, 64), seed=i)
    out: List[Case] = []

    add = case_adder(out, SIDE)

    # ---- grefel check / check --run ------------------------------------------------------------

    for value in ("nan", "inf"):
        add(f"check --run --time-limit {value}", "27.8", "error",
            lambda w, v=value: [grefel("check", "--run", "--time-limit", v, "--out", w / "c")],
            _line_names("--time-limit"))

    def check_json_model(w: Path) -> List[Proc]:
        model = _copy(mini, w / "m.onnx")
        _protect(w, model)
        return [grefel("check", "--run", "--model", model, "--json", model, "--out", w / "c")]

    add("check --run --model m.onnx --json m.onnx", "27.1", "error", check_json_model)

    def check_out_calib(w: Path) -> List[Proc]:
        folder = _copy(calib, w / "faces")
        (folder / "check.md").write_text("my own notes\n")
        _protect(w, folder)
        return [grefel("check", "--run", "--calib-data", folder, "--out", folder)]

    add("check --run --calib-data DIR --out DIR (DIR holds the user's check.md)", "27.1", EITHER,
        check_out_calib)

    def check_json_link_full(w: Path) -> List[Proc]:
        os.symlink("/dev/full", w / "facts.json")
        return [grefel("check", "--json", w / "facts.json")]

    add("check --json LINK-to-/dev/full (disk full)", "27.8", "error", check_json_link_full,
        _both(_line_names("--json"),
              lambda p, w: "" if (w / "facts.json").is_symlink() else "the link was replaced"))

    add("check --run --out a file", "27.8", "error",
        lambda w: [(w / "f").write_text("x"), grefel("check", "--run", "--out", w / "f")][1:],
        lambda p, w: "lost: the file was replaced" if (w / "f").read_text() != "x" else "")

    def check_model_fifo(w: Path) -> List[Proc]:
        os.mkfifo(w / "m.onnx")
        return [grefel("check", "--run", "--model", w / "m.onnx", "--out", w / "c", timeout=60)]

    add("check --run --model FIFO.onnx nobody writes to", "27.5", EITHER, check_model_fifo,
        lambda p, w: "", ok_codes=(0, 2))

    def check_model_text(w: Path) -> List[Proc]:
        (w / "m.onnx").write_text("not a model\n")
        return [grefel("check", "--run", "--model", w / "m.onnx", "--out", w / "c")]

    def check_model_named(procs: List[Proc], work: Path) -> str:
        """Exit 2 (sections skipped) is fine without TensorRT, but the report must not call the
        text file a usable model: some line says it is not one, or sections were skipped."""
        last = procs[-1]
        if last.returncode != 0:
            return ""
        return "exit 0: every section passed on a text file named .onnx"

    add("check --run --model a text file named .onnx", "27.8", EITHER, check_model_text,
        check_model_named, ok_codes=(0, 2))

    add("check --run --sections 'engine-fp16,,latency-b1' (an empty name)", "27.8", EITHER,
        lambda w: [grefel("check", "--run", "--sections", "engine-fp16,,latency-b1", "--out",
                          w / "c")],
        lambda p, w: "" if p[-1].returncode not in (0, 2) or (w / "c" / "check.json").is_file()
        else "lost: no check.json", ok_codes=(0, 2))

    def check_twice(w: Path) -> List[Proc]:
        first = grefel("check", "--run", "--sections", "trtexec", "--out", w / "c")
        (w / "c" / "mine.txt").write_text("keep")
        _protect(w, w / "c" / "mine.txt")
        return [first, grefel("check", "--run", "--sections", "trtexec", "--out", w / "c")]

    add("check --run twice into one --out (a file of the user's there)", "27.1", EITHER,
        check_twice, _both(_intact, _files("c/check.json", "c/check.md")), ok_codes=(0, 2))

    add("GREFEL_CUDA=bogus, grefel check (says the variable is wrong)", "27.8", EITHER,
        lambda w: [grefel("check", env={"GREFEL_CUDA": "bogus"})], _said("GREFEL_CUDA"))

    # ---- grefel info ---------------------------------------------------------------------------

    def info_json_dir(w: Path) -> List[Proc]:
        (w / "d").mkdir()
        (w / "d" / "x.txt").write_text("keep")
        _protect(w, w / "d")
        return [grefel("info", "--json", w / "d")]

    add("info --json EXISTING-FOLDER", "27.8", "error", info_json_dir)

    def info_json_fifo(w: Path) -> List[Proc]:
        fifo = w / "env.json"
        os.mkfifo(fifo)
        reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
        try:
            proc = grefel("info", "--json", fifo, timeout=60)
            body = reader.communicate(timeout=30)[0]
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
        (w / "read.json").write_bytes(body)
        return [proc]

    add("info --json FIFO with a reader (written into, kept a FIFO)", "27.8", "ok", info_json_fifo,
        lambda p, w: "" if stat_fifo(w / "env.json") and (w / "read.json").read_bytes().strip()
        .startswith(b"{") else "the FIFO was replaced or got no JSON")

    def info_json_sidecar(w: Path) -> List[Proc]:
        model = _copy(ckpt, w / "m.safetensors")
        _protect(w, model, model.with_suffix(".json"))
        return [grefel("info", "--json", model)]

    add("info --json a checkpoint (m.safetensors; an output the user named: JSON or a refusal)",
        "27.1", EITHER, info_json_sidecar,
        lambda p, w: "" if p[-1].returncode != 0 or (w / "m.safetensors").read_bytes()
        .lstrip().startswith(b"{") else "exit 0 and no JSON record")

    add("GREFEL_CRASH_DIR=relative/new, info (no crash: nothing written there)", "27.8", "ok",
        lambda w: [grefel("info", env={"GREFEL_CRASH_DIR": "crash-here"}, cwd=w)],
        lambda p, w: "a crash report was written" if (w / "crash-here").exists() else "")

    # ---- export --triton / --deepstream / --int8 -----------------------------------------------

    def export_(w: Path, *extra: Any, src: Path = tiny_onnx) -> Proc:
        return grefel("export", src, "--onnx-only", "--fp32", "--no-simplify", "--out",
                      w / "e", *extra)

    add("export --triton R --deepstream R (one folder for both)", "27.1", "ok",
        lambda w: [export_(w, "--triton", w / "R", "--deepstream", w / "R")],
        _files("R/grefel/config.pbtxt", "R/grefel/1/model.onnx",
               "R/config_infer_secondary_grefel.txt", "R/labels_grefel.txt"))

    add("export --deepstream equal to --out", "27.1", "ok",
        lambda w: [export_(w, "--deepstream", w / "e")],
        _files("e/tiny.onnx", "e/config_infer_secondary_grefel.txt", "e/labels_grefel.txt"))

    def triton_hardlink(w: Path) -> List[Proc]:
        src = _copy(tiny_onnx, w / "tiny.onnx")
        (w / "R" / "grefel" / "1").mkdir(parents=True)
        os.link(src, w / "R" / "grefel" / "1" / "model.onnx")
        _protect(w, src)
        return [grefel("export", src, "--onnx-only", "--fp32", "--no-simplify", "--out",
                       w / "e", "--triton", w / "R")]

    add("export --triton REPO whose model.onnx is a hard link of the source", "27.1", EITHER,
        triton_hardlink)

    add("export --out REPO/grefel/1 --triton REPO (out inside the repository)", "27.1", EITHER,
        lambda w: [grefel("export", tiny_onnx, "--onnx-only", "--fp32", "--no-simplify",
                          "--out", w / "R" / "grefel" / "1", "--triton", w / "R")],
        _files("R/grefel/1/model.onnx", "R/grefel/config.pbtxt"))

    def triton_into_calib(w: Path) -> List[Proc]:
        folder = _copy(calib, w / "faces")
        _protect(w, folder)
        return [export_(w, "--triton", folder, "--calib-data", folder)]

    add("export --triton the --calib-data folder", "27.1", EITHER, triton_into_calib)

    def ds_dup_names(w: Path) -> List[Proc]:
        src = _named_onnx(tiny_onnx, w / "dup.onnx", ["a", "b", "c", "d", "e", "f", "a"])
        return [grefel("export", src, "--onnx-only", "--fp32", "--no-simplify", "--out",
                       w / "e", "--deepstream", w / "ds")]

    add("export --deepstream of an ONNX naming a class twice", "27.4", "error", ds_dup_names,
        lambda p, w: "labels written" if (w / "ds" / "labels_grefel.txt").exists() else "")

    def triton_names_newline(w: Path) -> List[Proc]:
        src = _named_onnx(tiny_onnx, w / "nl.onnx",
                          ["neutral", "happy\nsad", "x", "y", "z", "u", "v"])
        return [grefel("export", src, "--onnx-only", "--fp32", "--no-simplify", "--out",
                       w / "e", "--triton", w / "R")]

    add("export --triton of an ONNX whose class name holds a newline", "27.4", "error",
        triton_names_newline,
        lambda p, w: "labels.txt written" if (w / "R" / "grefel" / "labels.txt").exists() else "")

    for label, value in (("'0,-1' (a negative id)", "0,-1"), ("'0,0' (an id twice)", "0,0"),
                         ("'' (none)", "")):
        add(f"export --deepstream-face-classes {label}", "27.8", EITHER,
            lambda w, v=value: [export_(w, "--deepstream", w / "ds",
                                        "--deepstream-face-classes", v)],
            lambda p, w: "" if p[-1].returncode != 0 else _ds_ids(w / "ds"))

    def json_eq_cache(w: Path) -> List[Proc]:
        return [export_(w, "--json", w / "t.cache", "--timing-cache", w / "t.cache")]

    add("export --json X --timing-cache X (two outputs, one file)", "27.1", "error",
        json_eq_cache)

    def int8_json_into_calib(w: Path) -> List[Proc]:
        folder = _copy(calib, w / "faces")
        _protect(w, folder)
        return [grefel("export", ckpt, "--onnx-only", "--int8", "--calib-data", folder,
                       "--calib-method", "minmax", "--out", w / "e", "--json", folder / "c0.png")]

    add("export --int8 --calib-data DIR --json DIR/c0.png (a calibration image)", "27.1", "error",
        int8_json_into_calib)

    def int8_out_is_calib(w: Path) -> List[Proc]:
        folder = _copy(calib, w / "faces")
        _protect(w, folder)
        return [grefel("export", ckpt, "--onnx-only", "--int8", "--calib-data", folder,
                       "--calib-method", "minmax", "--out", folder)]

    add("export --int8 --calib-data DIR --out DIR", "27.1", EITHER, int8_out_is_calib,
        _both(_intact, _files("faces/tiny.int8.onnx")))

    def int8_one_image(w: Path) -> List[Proc]:
        folder = w / "one"
        folder.mkdir()
        shutil.copyfile(calib / "c0.png", folder / "c0.png")
        return [grefel("export", ckpt, "--onnx-only", "--int8", "--calib-data", folder,
                       "--calib-method", "minmax", "--out", w / "e")]

    add("export --int8 --calib-data with one image (no disjoint gate images)", "27.6", EITHER,
        int8_one_image, _said("gate", "held-out", "one image", "too few"))

    def int8_nan_ckpt(w: Path) -> List[Proc]:
        return [grefel("export", nan_ckpt, "--onnx-only", "--int8", "--calib-data", calib,
                       "--calib-method", "minmax", "--out", w / "e")]

    add("export --int8 of a checkpoint with a NaN weight", "27.3", "error", int8_nan_ckpt,
        lambda p, w: "an int8 ONNX was written" if (w / "e" / "nan.int8.onnx").exists() else "")

    def calib_odd_images(w: Path) -> List[Proc]:
        from PIL import Image

        folder = _copy(calib, w / "faces")
        Image.new("L", (50, 50), 128).save(folder / "gray.png")
        Image.new("RGBA", (50, 50), (10, 200, 10, 100)).save(folder / "rgba.png")
        Image.new("I;16", (50, 50), 40000).save(folder / "deep16.png")
        (folder / "cut.png").write_bytes((calib / "c1.png").read_bytes()[:200])
        os.symlink("nowhere.png", folder / "dangling.png")
        return [grefel("export", ckpt, "--onnx-only", "--int8", "--calib-data", folder,
                       "--calib-method", "minmax", "--out", w / "e")]

    add("export --int8 --calib-data with gray, RGBA, 16-bit, cut and dangling files", "27.5",
        EITHER, calib_odd_images,
        _both(_files("e/tiny.int8.onnx"), _said("cut.png")))

    add("GREFEL_MAX_PIXELS=1000, export --calib-data (every image over the limit)", "27.5",
        "error",
        lambda w: [grefel("export", ckpt, "--onnx-only", "--int8", "--calib-data", calib,
                          "--calib-method", "minmax", "--out", w / "e",
                          env={"GREFEL_MAX_PIXELS": "1000"})])

    def export_name_dotdot(w: Path) -> List[Proc]:
        (w / "keep.onnx").write_text("mine")
        _protect(w, w / "keep.onnx")
        return [export_(w, "--name", "../keep")]

    add("export --name ../keep (a file beside --out)", "27.1", "error", export_name_dotdot)

    # ---- bench --source --------------------------------------------------------------------------

    def bench_src(w: Path, source: Any, *extra: Any, model: Path = mini) -> Proc:
        return grefel("bench", "-w", model, "--source", source, "--detectors", "haar",
                      "--det-every", "1", "--max-frames", "4", "--out", w / "b", *extra)

    def bench_rows(want_ok: bool) -> Callable[[List[Proc], Path], str]:
        def check(procs: List[Proc], work: Path) -> str:
            if procs[-1].returncode != 0:
                return ""
            files = sorted((work / "b").glob("bench_*.json"))
            if not files:
                return "lost: no bench record"
            rec = json.loads(files[-1].read_text())
            rows = rec.get("pipeline") or []
            if not rows:
                return f"no pipeline row (keys {sorted(rec)})"
            ok = [r for r in rows if r.get("status") == "ok"]
            if want_ok and not ok:
                return f"no ok row: {rows[0].get('status')}"
            if not want_ok and ok:
                return f"an ok row for a source that cannot be timed: {ok[0]}"
            return ""
        return check

    add("bench --source a still image (.png)", "27.5", EITHER,
        lambda w: [bench_src(w, plain)], lambda p, w: "")

    def bench_cut_video(w: Path) -> List[Proc]:
        data = clip.read_bytes()
        (w / "cut.avi").write_bytes(data[: len(data) // 3])
        return [bench_src(w, w / "cut.avi", "--max-frames", "8")]

    add("bench --source a video cut at a third", "27.5", EITHER, bench_cut_video,
        _said("ended", "declares", "frame"))

    add("bench --source a folder of photos", "27.5", EITHER,
        lambda w: [bench_src(w, calib)], lambda p, w: "")
    add("bench --source a missing file", "27.8", EITHER,
        lambda w: [bench_src(w, w / "nope.avi")], bench_rows(False))
    add("bench --source camera 93 (none here)", "27.8", EITHER,
        lambda w: [bench_src(w, "93")], bench_rows(False))
    add("bench --source video -w checkpoint with a NaN weight", "27.3", EITHER,
        lambda w: [bench_src(w, clip, model=nan_ckpt)], bench_rows(False))

    def bench_compare_video(w: Path) -> List[Proc]:
        video = _copy(clip, w / "clip.avi")
        _protect(w, video)
        return [bench_src(w, video, "--compare", video)]

    add("bench --source V --compare V (a video as the earlier run)", "27.8", "error",
        bench_compare_video)

    def bench_out_holds_video(w: Path) -> List[Proc]:
        video = _copy(clip, w / "b" / "clip.avi")
        _protect(w, video)
        return [bench_src(w, video)]

    add("bench --source b/clip.avi --out b (the video's folder)", "27.1", "ok",
        bench_out_holds_video, _both(_intact, bench_rows(True)))

    # ---- pretrain ------------------------------------------------------------------------------

    def pretrain(w: Path, kind: str, data: Path, *extra: Any,
                 out: Optional[Path] = None) -> Proc:
        return grefel("pretrain", kind, "--data", data, "--out", out or (w / "p.safetensors"),
                      *QUICK, *extra)

    add("pretrain identity on a muxspace folder (--align-faces off)", "27.6", "ok",
        lambda w: [pretrain(w, "identity", _copy(mux, w / "mux"), "--align-faces", "off",
                            "--holdout-every", "2")],
        _both(_files("p.safetensors", "p.json"), _no_nonfinite(lambda w: w)))
    add("pretrain landmarks --landmarks file on a CSV dataset (none there)", "27.8", "error",
        lambda w: [pretrain(w, "landmarks", csvdata, "--landmarks", "file")])

    def pretrain_out_split(w: Path) -> List[Proc]:
        root = _copy(mux, w / "mux")
        grefel("data", "split", root)
        _protect(w, root)
        return [pretrain(w, "identity", root, "--align-faces", "off",
                         out=root / "grefel_split.csv")]

    add("pretrain identity --out ROOT/grefel_split.csv (the split it reads)", "27.1", "error",
        pretrain_out_split)

    def pretrain_reuse_changed(w: Path) -> List[Proc]:
        data = _copy(synth, w / "ds")
        first = pretrain(w, "landmarks", data)
        lm = data / "landmarks.csv"
        lines = lm.read_text().splitlines()
        lines[1] = lines[1].rsplit(",", 1)[0] + ",0.123"  # one target moved
        lm.write_text("\n".join(lines) + "\n")
        return [first, pretrain(w, "landmarks", data, "--reuse")]

    def retrained(procs: List[Proc], work: Path) -> str:
        last = procs[-1]
        if last.returncode != 0:
            return ""
        said = last.output.lower()
        return "kept the earlier --out made from other data" if (
            "reus" in said or "kept" in said or "keep" in said) and "differ" not in said \
            and "changed" not in said else ""

    add("pretrain landmarks --reuse after landmarks.csv changed", "27.6", EITHER,
        pretrain_reuse_changed, retrained)
    add("pretrain identity --device cuda (no GPU here)", "27.8", EITHER,
        lambda w: [pretrain(w, "identity", synth, "--device", "cuda")],
        _no_nonfinite(lambda w: w))

    def pretrain_json_is_out(w: Path) -> List[Proc]:
        return [pretrain(w, "identity", synth, "--json", w / "p.safetensors")]

    def pretrain_sidecar_over_notes(w: Path) -> List[Proc]:
        (w / "notes.json").write_text('{"mine": true}\n')
        _protect(w, w / "notes.json")
        return [pretrain(w, "landmarks", synth, out=w / "notes.safetensors")]

    add("pretrain landmarks --out notes.safetensors beside the user's notes.json", "27.1",
        EITHER, pretrain_sidecar_over_notes)
    add("pretrain identity --json equal to --out", "27.1", "error", pretrain_json_is_out,
        lambda p, w: "")
    add("GREFEL_MAX_PIXELS=100, pretrain landmarks (every image over it)", "27.5", "error",
        lambda w: [grefel("pretrain", "landmarks", "--data", synth, "--out",
                          w / "p.safetensors", *QUICK, env={"GREFEL_MAX_PIXELS": "100"})],
        lambda p, w: "wrote weights from no readable image" if p[-1].returncode == 0 else "")

    # ---- data split ----------------------------------------------------------------------------

    def split_with(mutate: Callable[[Path], None]) -> Callable[[Path], List[Proc]]:
        def run(w: Path) -> List[Proc]:
            root = _copy(mux, w / "mux")
            mutate(root)
            _protect(w, root / "data", root / "images")
            return [grefel("data", "split", root, "--json", w / "split.json")]
        return run

    def legend_rows(root: Path) -> List[List[str]]:
        return list(csv.reader((root / "data" / "legend.csv").open(encoding="utf-8")))

    def write_legend(root: Path, rows: List[List[str]], encoding: str = "utf-8") -> None:
        with open(root / "data" / "legend.csv", "w", newline="", encoding=encoding) as f:
            csv.writer(f).writerows(rows)

    def split_total(n: int) -> Callable[[List[Proc], Path], str]:
        def check(procs: List[Proc], work: Path) -> str:
            if procs[-1].returncode != 0:
                return ""
            rows = list(csv.DictReader((work / "mux" / "grefel_split.csv").open()))
            return "" if len(rows) == n else f"{len(rows)} split rows for {n} usable images"
        return check

    def traversal(root: Path) -> None:
        rows = legend_rows(root)
        outside = root.parent / "secret.jpg"
        _png(outside, seed=99)
        rows.append(["u99", "../../secret.jpg", "HAPPINESS"])
        write_legend(root, rows)

    def no_traversal(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        text = (work / "mux" / "grefel_split.csv").read_text()
        return "an image outside images/ was put into the split" if "secret" in text else ""

    add("data split: legend.csv row '../../secret.jpg' (outside images/)", "new: paths", EITHER,
        split_with(traversal), _both(_intact, no_traversal))

    def absolute(root: Path) -> None:
        rows = legend_rows(root)
        _png(root.parent / "abs.jpg", seed=98)
        rows.append(["u98", str(root.parent / "abs.jpg"), "HAPPINESS"])
        write_legend(root, rows)

    def no_absolute(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        text = (work / "mux" / "grefel_split.csv").read_text()
        return "an absolute path outside images/ was put into the split" if "abs.jpg" in text \
            else ""

    add("data split: legend.csv row with an absolute image path", "new: paths", EITHER,
        split_with(absolute), _both(_intact, no_absolute))

    def latin1(root: Path) -> None:
        rows = legend_rows(root)
        name = "Jos\u00e9_Garc\u00eda_0001.jpg"
        _png(root / "images" / name, seed=97)
        rows.append(["u97", name, "HAPPINESS"])
        write_legend(root, rows, encoding="latin-1")

    add("data split: legend.csv saved in Latin-1 (an accented name)", "27.4", "error",
        split_with(latin1), _line_names("legend.csv"))

    def utf16(root: Path) -> None:
        write_legend(root, legend_rows(root), encoding="utf-16")

    add("data split: legend.csv saved as UTF-16 with its mark", "27.4", "ok", split_with(utf16),
        _both(_intact, split_total(120)))

    def missing_images(root: Path) -> None:
        for name in sorted(os.listdir(root / "images"))[:5]:
            os.remove(root / "images" / name)

    # The split is the legend's (deterministic, identity-stratified: an image that is missing
    # now keeps its place, so the split does not move when it comes back); `data split` names
    # the missing ones and every reader leaves them out (grefel.data.muxspace).
    add("data split: 5 listed images missing on disk", "27.5", "ok", split_with(missing_images),
        _both(_said("missing", "not found", "left out"), split_total(120)))

    def header_spaced(root: Path) -> None:
        rows = legend_rows(root)
        rows[0] = [" user.id", "Image ", " EMOTION"]
        write_legend(root, rows)

    add("data split: legend.csv header ' user.id,Image , EMOTION'", "27.4", EITHER,
        split_with(header_spaced), split_total(120))

    def image_is_text(root: Path) -> None:
        (root / "images" / "Person_00_0001.jpg").write_text("not a photo")

    add("data split: a listed image that is a text file", "27.5", EITHER, split_with(image_is_text),
        lambda p, w: "")

    def legend_changed(w: Path) -> List[Proc]:
        root = _copy(mux, w / "mux")
        first = grefel("data", "split", root)
        _protect(w, root / "grefel_split.csv", root / "grefel_split.json")
        rows = legend_rows(root)
        rows[5][2] = "SADNESS" if rows[5][2] != "SADNESS" else "NEUTRAL"  # a label changed
        write_legend(root, rows)
        return [first, grefel("data", "split", root)]

    add("data split again after a label changed in legend.csv", "27.6", "error", legend_changed,
        _line_names("legend.csv", "grefel_split"))

    def split_json_broken(w: Path) -> List[Proc]:
        root = _copy(mux, w / "mux")
        grefel("data", "split", root)
        (root / "grefel_split.json").write_text("{not json")
        return [grefel("data", "split", root)]

    add("data split with grefel_split.json cut to '{not json'", "27.8", "error",
        split_json_broken, _line_names("grefel_split.json"))

    def legend_dir(w: Path) -> List[Proc]:
        root = _copy(mux, w / "mux")
        os.remove(root / "data" / "legend.csv")
        (root / "data" / "legend.csv").mkdir()
        return [grefel("data", "split", root)]

    add("data split where data/legend.csv is a folder", "27.8", "error", legend_dir)

    def split_out_json_images(w: Path) -> List[Proc]:
        root = _copy(mux, w / "mux")
        _protect(w, root / "images")
        return [grefel("data", "split", root, "--json", root / "images" / "Person_00_0001.jpg")]

    add("data split --json ROOT/images/<a photo>", "27.1", "error", split_out_json_images)

    def split_then_train(w: Path) -> List[Proc]:
        root = _copy(mux, w / "mux")
        return [grefel("train", "--data", root, "--out", w / "run", *TINY_TRAIN,
                       "--align-faces", "off")]

    add("train on a muxspace folder of 3 of its 8 classes", "27.6", EITHER, split_then_train,
        _both(_said("no sample", "without", "missing", "absent", "contempt"),
              _no_nonfinite(lambda w: w / "run")))

    # ---- weights import ------------------------------------------------------------------------

    def wimport(w: Path, src: Path, *extra: Any, out: Optional[Path] = None) -> Proc:
        return grefel("weights", "import", src, "--kind", "ir50", "--preset", "tiny", "--out",
                      out or (w / "x.safetensors"), *extra)

    def sidecar_over_user_file(w: Path) -> List[Proc]:
        (w / "notes.json").write_text('{"mine": true}\n')
        _protect(w, w / "notes.json")
        return [wimport(w, ir50, out=w / "notes.safetensors")]

    add("weights import --out notes.safetensors beside the user's notes.json", "27.1", EITHER,
        sidecar_over_user_file)

    def empty_pth(w: Path) -> List[Proc]:
        (w / "e.pth").write_bytes(b"")
        return [wimport(w, w / "e.pth")]

    add("weights import of a 0-byte .pth", "27.8", "error", empty_pth)

    def bad_header(w: Path) -> List[Proc]:
        import struct

        (w / "h.safetensors").write_bytes(struct.pack("<Q", 10 ** 15) + b"{}")
        return [wimport(w, w / "h.safetensors")]

    add("weights import of a .safetensors whose header claims a petabyte", "27.8", "error",
        bad_header)

    def wrong_shapes(w: Path) -> List[Proc]:
        import torch
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(ir50))
        key = next(k for k, v in tensors.items() if v.ndim == 4)
        tensors[key] = torch.zeros(*[s + 1 for s in tensors[key].shape])
        save_file(tensors, str(w / "shapes.safetensors"))
        return [wimport(w, w / "shapes.safetensors")]

    add("weights import of an IR-50 file with one tensor of the wrong shape", "27.8", "error",
        wrong_shapes, lambda p, w: "wrote a checkpoint" if (w / "x.safetensors").exists() else "")

    def lenient_nothing(w: Path) -> List[Proc]:
        import torch
        from safetensors.torch import save_file

        save_file({"unrelated.weight": torch.zeros(3, 3)}, str(w / "other.safetensors"))
        return [wimport(w, w / "other.safetensors", "--lenient")]

    add("weights import --lenient of a file sharing no tensor name", "27.6", EITHER,
        lenient_nothing, _said("nothing", "no tensor", "0 of", "dropped"))

    def import_fp16_nan(w: Path) -> List[Proc]:
        from safetensors.torch import load_file, save_file

        tensors = {k: v.half() if v.is_floating_point() else v
                   for k, v in load_file(str(ir50)).items()}
        key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 10)
        tensors[key][0] = float("inf")
        save_file(tensors, str(w / "half.safetensors"))
        return [wimport(w, w / "half.safetensors")]

    add("weights import of an FP16 file with one inf row", "27.3", "error", import_fp16_nan,
        lambda p, w: "wrote a checkpoint" if (w / "x.safetensors").exists() else "")

    def import_out_json_eq(w: Path) -> List[Proc]:
        return [wimport(w, ir50, "--json", w / "x.safetensors")]

    add("weights import --json equal to --out", "27.1", "error", import_out_json_eq,
        lambda p, w: "")

    # ---- eval --reference ----------------------------------------------------------------------

    def ev(w: Path, model: Path, *extra: Any, data: Path = csvdata) -> Proc:
        return grefel("eval", model, "--data", data, "--out", w / "ev", "--threads", "1", *extra)

    add("eval tiny.onnx --reference checkpoint with a NaN weight", "27.3", "error",
        lambda w: [ev(w, tiny_onnx, "--reference", nan_ckpt)], _line_names("nan.safetensors",
                                                                           "--reference"))
    add("eval --reference an ONNX (a checkpoint is due)", "27.8", EITHER,
        lambda w: [ev(w, tiny_onnx, "--reference", tiny_onnx)], lambda p, w: "")

    def ref_other_classes(w: Path) -> List[Proc]:
        import torch

        from grefel.checkpoint import save_checkpoint
        from grefel.model import create_model

        torch.manual_seed(0)
        other = save_checkpoint(w / "abc.safetensors", create_model(
            "tiny", class_names=["a", "b", "c", "d", "e", "f", "g"]).eval())
        return [ev(w, ckpt, "--reference", other)]

    add("eval --reference a checkpoint with other class names (same count)", "27.4", "error",
        ref_other_classes)

    def ref_itself(w: Path) -> List[Proc]:
        return [ev(w, ckpt, "--reference", ckpt, "--json", w / "m.json")]

    def agree_fully(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        text = (work / "m.json").read_text() if (work / "m.json").exists() else ""
        return "" if text else "lost: no --json record"

    add("eval CKPT --reference CKPT (itself: full agreement)", "27.6", "ok", ref_itself,
        agree_fully)

    def ref_sidecarless(w: Path) -> List[Proc]:
        bare = w / "bare.safetensors"
        shutil.copyfile(ckpt, bare)
        return [ev(w, tiny_onnx, "--reference", bare)]

    add("eval --reference a checkpoint without its sidecar", "27.8", "error", ref_sidecarless)

    def ref_json_over_ref(w: Path) -> List[Proc]:
        ref = _copy(ckpt, w / "ref.safetensors")
        _protect(w, ref, ref.with_suffix(".json"))
        return [ev(w, tiny_onnx, "--reference", ref, "--json", w / "ref.json")]

    add("eval --reference R.safetensors --json R.json (the reference's sidecar)", "27.1",
        "error", ref_json_over_ref)

    add("eval --reference on a 3-class dataset (7-class models)", "27.4", "error",
        lambda w: [ev(w, tiny_onnx, "--reference", ckpt, data=rgbdata)])

    def eval_cache_is_out(w: Path) -> List[Proc]:
        return [ev(w, ckpt, "--align-faces", "detect", "--detector", "haar", "--align-cache",
                   w / "ev")]

    add("eval --align-cache equal to --out", "27.1", EITHER, eval_cache_is_out,
        _files("ev/metrics.json"))

    # ---- predict: plot, CSV, --show, --cuda-graph, environment ----------------------------------

    def pr(*args: Any, env: Optional[Dict[str, str]] = None) -> Proc:
        return grefel("predict", *args, env=env)

    def json_on_plot(w: Path) -> List[Proc]:
        return [pr(clip, "-w", mini, "--aligned", "--out", w / "r.jsonl", "--json",
                   w / "r.expressions.png")]

    add("predict video --out r.jsonl --json r.expressions.png (the plot's name)", "27.1",
        "error", json_on_plot)

    def plot_over_source(w: Path) -> List[Proc]:
        (w / "v").mkdir()
        video = _copy(clip, w / "v" / "r.expressions.png.avi")
        img = _copy(plain, w / "r.expressions.png")
        _protect(w, video, img)
        return [pr(video, "-w", mini, "--aligned", "--out", w / "r.csv", "--format", "csv")]

    add("predict video --out r.csv beside the user's r.expressions.png", "27.1", EITHER,
        plot_over_source)

    def plot_annotate(w: Path) -> List[Proc]:
        return [pr(clip, "-w", mini, "--aligned", "--out", w / "r.jsonl", "--annotate",
                   w / "r.expressions.png")]

    add("predict video --annotate r.expressions.png --out r.jsonl", "27.1", "error",
        plot_annotate)

    def csv_video(w: Path) -> List[Proc]:
        return [pr(clip, "-w", mini, "--aligned", "--format", "csv", "--out", w / "r.csv")]

    def eight_rows_and_plot(procs: List[Proc], work: Path) -> str:
        rows = list(csv.DictReader((work / "r.csv").open())) if (work / "r.csv").exists() else []
        if len(rows) != 8:
            return f"lost: {len(rows)} CSV rows for 8 frames"
        if not (work / "r.expressions.png").exists():
            return "lost: no expression plot"
        bad = [r for r in rows if r.get("label") not in ("red", "green", "blue")]
        return f"rows without a label: {bad[:1]}" if bad else ""

    add("predict video --format csv --out r.csv (rows and plot)", "27.5", "ok", csv_video,
        eight_rows_and_plot)

    def csv_stdout_video(w: Path) -> List[Proc]:
        return [pr(clip, "-w", mini, "--aligned", "--format", "csv", "--max-frames", "3")]

    def three_rows(procs: List[Proc], work: Path) -> str:
        rows = list(csv.DictReader(procs[-1].stdout.splitlines()))
        return "" if len(rows) == 3 else f"lost: {len(rows)} CSV rows on stdout for 3 frames"

    add("predict video --format csv to stdout --max-frames 3", "27.5", "ok", csv_stdout_video,
        three_rows)

    add("predict --show with DISPLAY=:99 (no X server there)", "27.8", "error",
        lambda w: [pr(plain, "-w", mini, "--aligned", "--show", env={"DISPLAY": ":99"})],
        _line_names("--show"))

    def show_video_no_display(w: Path) -> List[Proc]:
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        argv = [sys.executable, "-m", "grefel", "predict", str(clip), "-w", str(mini),
                "--aligned", "--show", "--out", str(w / "r.jsonl")]
        start = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, cwd=ROOT, env=env, timeout=120)
        dec = lambda b: b.decode("utf-8", errors="backslashreplace")  # noqa: E731
        return [Proc(argv, p.returncode, dec(p.stdout), dec(p.stderr),
                     time.perf_counter() - start)]

    add("predict video --show --out r.jsonl without DISPLAY (before any record)", "27.8",
        "error", show_video_no_display,
        lambda p, w: "records were written before the refusal" if _records(w / "r.jsonl")
        else "")

    add("predict -w ONNX --cuda-graph (no engine, no GPU: a word)", "27.8", EITHER,
        lambda w: [pr(plain, "-w", mini, "--aligned", "--cuda-graph")],
        _both(_one_record, _said("cuda-graph", "cuda graph", "CUDA graph")))
    add("bench -w ONNX --backends onnx --cuda-graph (no GPU: a word)", "27.8", EITHER,
        lambda w: [grefel("bench", "-w", mini, "--backends", "onnx", *QUICK_BENCH,
                          "--cuda-graph", "--out", w / "b")],
        _said("cuda-graph", "cuda graph", "CUDA graph"))
    add("GREFEL_CUDA=bogus, bench --backends trt (a row or a line naming the variable)", "27.8",
        EITHER,
        lambda w: [grefel("bench", "-w", mini, "--backends", "trt", *QUICK_BENCH, "--out",
                          w / "b", env={"GREFEL_CUDA": "bogus"})],
        lambda p, w: "")
    add("GREFEL_MAX_PIXELS=1000, predict a 120x90 photo", "27.5", "error",
        lambda w: [pr(plain, "-w", mini, "--aligned", env={"GREFEL_MAX_PIXELS": "1000"})],
        _line_names("plain.png", "pixels"))
    add("GREFEL_MAX_PIXELS=1000 with --max-pixels 0 (the option wins)", "27.5", "ok",
        lambda w: [pr(plain, "-w", mini, "--aligned", "--max-pixels", "0",
                      env={"GREFEL_MAX_PIXELS": "1000"})], _one_record)
    add("GREFEL_MAX_PIXELS=0x100 (hex)", "27.8", EITHER,
        lambda w: [pr(plain, "-w", mini, "--aligned", env={"GREFEL_MAX_PIXELS": "0x100"})],
        _line_names("GREFEL_MAX_PIXELS"))
    add("GREFEL_MAX_PIXELS=1e9 (float notation)", "27.8", EITHER,
        lambda w: [pr(plain, "-w", mini, "--aligned", env={"GREFEL_MAX_PIXELS": "1e9"})],
        _both(_one_record, _line_names("GREFEL_MAX_PIXELS")))
    add("GREFEL_MAX_PIXELS=lots, eval (not predict)", "27.8", "error",
        lambda w: [grefel("eval", ckpt, "--data", csvdata, "--out", w / "ev",
                          env={"GREFEL_MAX_PIXELS": "lots"})],
        _line_names("GREFEL_MAX_PIXELS"))
    add("GREFEL_MAX_PIXELS=lots, serve (refused at start)", "27.8", "error",
        lambda w: [_serve_start(w, "-w", mini, env={"GREFEL_MAX_PIXELS": "lots"})],
        _line_names("GREFEL_MAX_PIXELS"))

    def crash_dir_fifo(w: Path) -> List[Proc]:
        os.mkfifo(w / "crashes")
        return [pr(w / "none.png", "-w", mini, env={"GREFEL_CRASH_DIR": str(w / "crashes")})]

    add("GREFEL_CRASH_DIR a FIFO, predict a missing file (an expected error)", "27.8", "error",
        crash_dir_fifo, lambda p, w: "" if stat_fifo(w / "crashes") else "the FIFO was replaced")

    # ---- serve: refusals at start (any server that starts is stopped) --------------------------

    add("serve -w checkpoint with a NaN weight", "27.3", "error",
        lambda w: [_serve_start(w, "-w", nan_ckpt)], _line_names("nan.safetensors"))

    def serve_dup(w: Path) -> List[Proc]:
        src = _named_onnx(mini, w / "dup.onnx", ["red", "red", "blue"])
        return [_serve_start(w, "-w", src)]

    add("serve -w ONNX naming a class twice", "27.4", "error", serve_dup)

    def serve_out_model_folder(w: Path) -> List[Proc]:
        model = _copy(mini, w / "m" / "tritonserver.log")
        _protect(w, model)
        return [_serve_start(w, "-w", model, "--out", w / "m")]

    add("serve -w m/tritonserver.log (an ONNX so named) --out m", "27.1", "error",
        serve_out_model_folder)

    # ---- train / eval through the commands' other outputs --------------------------------------

    def train_json_classes(w: Path) -> List[Proc]:
        data = _copy(csvdata, w / "data")
        _protect(w, data)
        return [grefel("train", "--data", data, "--out", w / "run", *TINY_TRAIN, "--json",
                       data / "classes.txt")]

    add("train --json DATA/classes.txt", "27.1", "error", train_json_classes)

    def eval_out_is_ckpt_folder(w: Path) -> List[Proc]:
        model = _copy(ckpt, w / "m" / "metrics.safetensors")  # its sidecar: m/metrics.json
        _protect(w, w / "m")
        return [grefel("eval", model, "--data", csvdata, "--out", w / "m")]

    add("eval m/metrics.safetensors --out m (its sidecar is metrics.json)", "27.1", "error",
        eval_out_is_ckpt_folder)

    def predict_plot_is_model(w: Path) -> List[Proc]:
        model = _copy(mini, w / "r.expressions.png")
        _protect(w, model)
        return [pr(clip, "-w", model, "--aligned", "--out", w / "r.jsonl")]

    add("predict video -w r.expressions.png (an ONNX so named) --out r.jsonl", "27.1", "error",
        predict_plot_is_model)
    return out


def _ds_ids(folder: Path) -> str:
    """The DeepStream config's operate-on-class-ids must be a non-empty list of distinct ids
    >= 0 (what nvinfer accepts)."""
    cfg = folder / "config_infer_secondary_grefel.txt"
    if not cfg.exists():
        return "lost: no DeepStream config"
    for line in cfg.read_text().splitlines():
        if line.startswith("operate-on-class-ids"):
            value = line.split("=", 1)[1].strip()
            ids = [x for x in value.split(";") if x.strip()]
            try:
                nums = [int(x) for x in ids]
            except ValueError:
                return f"operate-on-class-ids={value!r}"
            if not nums or len(set(nums)) != len(nums) or min(nums) < 0:
                return f"operate-on-class-ids={value!r} written"
            return ""
    return "no operate-on-class-ids line"


def stat_fifo(path: Path) -> bool:
    import stat

    try:
        return stat.S_ISFIFO(os.lstat(path).st_mode)
    except OSError:
        return False


# -- run and record ------------------------------------------------------------------------------


def run_fresh3(out_dir: Path, match: str = "", log: Callable[[str], None] = print
               ) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="grefel-fresh3-") as tmp:
        tmp_path = Path(tmp)
        chosen = [c for c in cases(tmp_path / "scratch") if match in c.name]
        record = fresh_record(run_cases(chosen, tmp_path / "work", log, judge))
    write(record, out_dir, "fault_fresh3", to_markdown(record, TITLE, BLURB))
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    return fresh_main(run_fresh3, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
