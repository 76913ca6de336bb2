"""The bad-input corpus (tools/fault_corpus.py) through the CLI commands that meet it.

Each case asserts the exit status, one message line naming the file or option, no traceback,
and, for a folder, that the rest of it is processed (and processed right: the corpus model's
outputs are known in closed form). The dataset / checkpoint / training cases are in
tests/test_faults_train.py.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from click.testing import CliRunner

from grefel import contract
from grefel.cli import cli
from grefel.fileio import RUN_MARKER, display_path
from tools import fault_corpus as corpus

ROOT = Path(__file__).resolve().parents[1]
BAD_BYTES_NAME = os.fsdecode(b"latin1-\xe9\xff.png")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    root = tmp_path_factory.mktemp("corpus")
    names = corpus.image_folder(root / "images")
    return {"root": root, "images": root / "images", "names": names,
            "models": corpus.make_model_files(root / "models"),
            "videos": corpus.video_files(root / "videos")}


@pytest.fixture(autouse=True)
def _own_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-pixels sets the process's limit; restore it after each test."""
    monkeypatch.setenv(contract.MAX_PIXELS_ENV, "")


def _run(*args: Any) -> Any:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception  # an exception the CLI let through is a traceback for the user
    return res


def _one_error(res: Any, code: int = 1) -> str:
    """The one `Error:` line of a failed command."""
    assert res.exit_code == code, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, res.output
    return lines[0]


def _jsonl(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_folder_records(recs: List[Dict[str, Any]], names: Dict[str, List[str]]) -> None:
    """One right record per good file, none for the bad ones."""
    by_name = {Path(r["source"]).name: r for r in recs}
    want = {display_path(n) for n in names["good"]}
    assert set(by_name) == want
    for name in names["good"]:
        assert corpus.wrong_record(name, by_name[display_path(name)]) == ""


# -- images in a folder -------------------------------------------------------------------------


def test_folder_of_bad_and_odd_images(files: Dict[str, Any], tmp_path: Path) -> None:
    """Every odd but valid file gives a right record; every bad one one skip line naming it."""
    out, summary = tmp_path / "p.jsonl", tmp_path / "s.json"
    res = _run("predict", files["images"], "-w", files["models"]["mini"], "--aligned",
               "--out", out, "--json", summary)
    assert res.exit_code == 0, res.output
    _check_folder_records(_jsonl(out), files["names"])
    skips = [line for line in res.output.splitlines() if line.startswith("skipped ")]
    assert sorted(Path(line.split(": ")[0][8:]).name for line in skips) == files["names"]["bad"]
    assert any("bomb.png: 20000x20000" in line and "--max-pixels" in line for line in skips)
    info = json.loads(summary.read_text())
    assert info["frames"] == len(files["names"]["good"]) and not info["interrupted"]
    bad = next(r for r in _jsonl(out) if "latin1" in r["source"])
    assert bad["source"].endswith("latin1-\\xe9\\xff.png")  # escaped, recognisable


def test_non_utf8_name_with_csv_and_annotate(files: Dict[str, Any], tmp_path: Path) -> None:
    """In a child process (the old code crashed in OpenCV): CSV records and annotated copies of
    every good file, the non-UTF-8 one under its own bytes."""
    out, annotated = tmp_path / "p.csv", tmp_path / "annotated"
    proc = subprocess.run(
        [sys.executable, "-m", "grefel", "predict", str(files["images"]), "-w",
         str(files["models"]["mini"]), "--aligned", "--format", "csv", "--out", str(out),
         "--annotate", str(annotated)],
        capture_output=True, cwd=ROOT, timeout=900,
    )
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == 0 and "Traceback" not in err, err
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert {Path(r["source"]).name for r in rows} == {
        display_path(n) for n in files["names"]["good"]
    }
    written = {os.fsdecode(p) for p in os.listdir(os.fsencode(annotated))
               if not p.startswith(b".")}  # .grefel-annotated: the marker of the copies' folder
    assert BAD_BYTES_NAME in written
    assert written == {n if Path(n).suffix in (".png", ".jpg") else str(Path(n).with_suffix(
        ".png")) for n in files["names"]["good"]}


# -- the pixel limit -----------------------------------------------------------------------------


def test_bomb_is_refused_from_its_header_and_the_option_raises_the_limit(
    files: Dict[str, Any]
) -> None:
    bomb, model = files["images"] / "bomb.png", files["models"]["mini"]
    line = _one_error(_run("predict", bomb, "-w", model, "--aligned"))
    assert "bomb.png" in line and "over the limit" in line and "--max-pixels 400000000" in line
    # raised: the header passes and decoding is tried (the file holds only 1 KB of pixel data)
    line = _one_error(_run("predict", bomb, "-w", model, "--aligned", "--max-pixels",
                           "400000000"))
    assert "bomb.png: not a decodable image" in line


def test_video_frames_are_held_to_the_pixel_limit(files: Dict[str, Any]) -> None:
    clip, model = files["videos"]["good"], files["models"]["mini"]
    line = _one_error(_run("predict", clip, "-w", model, "--aligned", "--max-pixels", "10000"))
    assert "128x96 = 12,288 pixels is over the limit of 10,000" in line
    assert _run("predict", clip, "-w", model, "--aligned", "--max-pixels", "12288").exit_code == 0


def test_camera_frames_are_checked_before_the_first_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera that opens at 10000 x 10000: refused from the capture's frame size, unread."""
    import cv2

    from grefel.runtime import sources

    reads: List[int] = []

    class Capture:
        def __init__(self, index: int) -> None:
            self.index = index

        def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
            return True

        def get(self, prop: int) -> float:
            return {cv2.CAP_PROP_FRAME_WIDTH: 1e4, cv2.CAP_PROP_FRAME_HEIGHT: 1e4}.get(prop,
                                                                                             0.0)

        def read(self) -> Any:
            reads.append(1)
            return False, None

        def release(self) -> None:
            pass

    monkeypatch.setattr(cv2, "VideoCapture", Capture)
    with pytest.raises(sources.SourceError, match="camera:0: 10000x10000 = 100,000,000 pixels"):
        list(sources.iter_source("0"))
    assert reads == []


# -- videos and cameras --------------------------------------------------------------------------


def test_symlink_loop_as_the_source(files: Dict[str, Any]) -> None:
    line = _one_error(_run("predict", files["images"] / "symlink_loop.png", "-w",
                           files["models"]["mini"]))
    assert "symlink_loop.png: a symbolic link to nothing (broken, or a loop of links)" in line


@pytest.mark.parametrize("case, message", [
    ("corrupt", "corrupt.avi: unreadable video"),
    ("zero_frames", "zero_frames.avi: no frame could be decoded"),
    ("camera", "camera index 97 does not exist or cannot be opened"),
])
def test_videos_that_cannot_be_read(files: Dict[str, Any], case: str, message: str) -> None:
    src = "97" if case == "camera" else files["videos"][case]
    assert message in _one_error(_run("predict", src, "-w", files["models"]["mini"]))


def test_truncated_video_gives_the_frames_it_has(files: Dict[str, Any], tmp_path: Path) -> None:
    """A video cut short: the frames before the cut get records, then one line says where it
    ended of the frames its container declares, exit 1 (docs/reliability: streams)."""
    out = tmp_path / "p.jsonl"
    res = _run("predict", files["videos"]["truncated"], "-w", files["models"]["mini"],
               "--aligned", "--out", out)
    line = _one_error(res)
    frames = [r["frame"] for r in _jsonl(out)]
    assert 1 <= len(frames) < 6 and frames == list(range(len(frames)))
    assert f"ended at frame {len(frames)} of the 6 its container declares" in line


# -- model files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model, message", [
    ("random_onnx", "random.onnx: not a loadable ONNX model"),
    ("foreign_shape", "foreign_shape.onnx: not a grefel model: its input 'images' is"),
    ("foreign_outputs", "foreign_outputs.onnx: not a grefel model"),
    ("list_sidecar", "listsidecar.json: a sidecar is a JSON object, got list"),
    ("str_sidecar_engine", "strsidecar.json: a sidecar is a JSON object, got str"),
])
def test_predict_with_bad_model_files(files: Dict[str, Any], model: str, message: str) -> None:
    line = _one_error(_run("predict", files["images"] / "plain.png", "-w",
                           files["models"][model], "--aligned"))
    assert message in line


def test_random_bytes_as_engine(files: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without TensorRT: what to install; with TensorRT (the shared fake): not an engine."""
    from fakes.trt import Gpu, install

    image, engine = files["images"] / "plain.png", files["models"]["random_engine"]
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # absent, whatever this machine has
    assert "tensorrt is not available" in _one_error(_run("predict", image, "-w", engine))
    install(monkeypatch, Gpu(gen="10.3", engines={}))
    assert "not a TensorRT engine" in _one_error(_run("predict", image, "-w", engine))


def test_model_returning_nan_is_a_clear_error(files: Dict[str, Any], tmp_path: Path) -> None:
    """Backend.infer refuses non-finite outputs (the FP16 overflow of issue 13 item 9)."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(files["models"]["mini"]))
    graph = proto.graph
    for node in graph.node:  # probs = sqrt(-p): NaN
        if node.output[0] == "probs":
            node.op_type, node.input[0] = "Sqrt", "negp"
    graph.node.insert(2, helper.make_node("Neg", ["p"], ["negp"]))
    nan_model = tmp_path / "nan.onnx"
    onnx.save(proto, str(nan_model))
    line = _one_error(_run("predict", files["images"] / "plain.png", "-w", nan_model,
                           "--aligned"))
    assert "nan.onnx: the model returned NaN or inf (probs: 3 of 3 values)" in line


def test_infer_checks_the_documented_input_range(files: Dict[str, Any]) -> None:
    import numpy as np

    from grefel.runtime import BackendError, open_backend

    with open_backend(files["models"]["mini"]) as backend:
        ok = backend.infer(np.ones((1, 3, 112, 112), np.float32))  # 1.0 is in range
        assert ok["probs"].shape == (1, 3)
        for bad in (255.0, -0.5):
            with pytest.raises(BackendError, match=r"the model takes RGB in \[0, 1\]"):
                backend.infer(np.full((1, 3, 112, 112), bad, np.float32))


# -- export --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, message", [
    ("random_onnx", "random.onnx: not a valid ONNX model"),
    ("foreign_shape", "foreign_shape.onnx: not a grefel model: expected one input 'images' "
                      "(N, 3, 112, 112), got 'images' ('N', 3, 224, 224)"),
    ("foreign_outputs", "foreign_outputs.onnx: not a grefel model: it has no output(s)"),
])
def test_export_refuses_foreign_onnx(files: Dict[str, Any], tmp_path: Path, model: str,
                                     message: str) -> None:
    line = _one_error(_run("export", files["models"][model], "--onnx-only", "--fp32",
                           "--out", tmp_path / "engines"))
    assert message in line
    assert not [p for p in (tmp_path / "engines").iterdir() if not p.name.startswith(".")]


def test_export_removes_work_folders_of_killed_exports(files: Dict[str, Any],
                                                      tmp_path: Path) -> None:
    out = tmp_path / "engines"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer runs
    stale = out / f".export-{dead.pid}-abc123"
    legacy = out / ".export-k2j4h5g6"  # the layout before the pid was in the name
    live = out / f".export-{os.getppid()}-xyz789"  # a running process's (pytest's parent)
    for folder in (stale, legacy, live):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "model.onnx").write_bytes(b"x" * 1000)
    res = _run("export", files["models"]["mini"], "--onnx-only", "--fp32", "--out", out)
    assert res.exit_code == 0, res.output
    assert not stale.exists() and not legacy.exists() and live.exists()
    assert f"removed {stale}" in res.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [live.name, "mini.onnx", "mini.checks.json", RUN_MARKER])


def test_export_failure_keeps_the_earlier_good_file(files: Dict[str, Any],
                                                    tmp_path: Path) -> None:
    out = tmp_path / "engines"
    good = out / "mini.onnx"
    assert _run("export", files["models"]["mini"], "--onnx-only", "--fp32", "--out",
                out).exit_code == 0
    before = good.read_bytes()
    foreign = tmp_path / "mini.onnx"  # same name, foreign content
    foreign.write_bytes(files["models"]["foreign_shape"].read_bytes())
    _one_error(_run("export", foreign, "--onnx-only", "--fp32", "--out", out))
    assert good.read_bytes() == before


# -- unwritable outputs --------------------------------------------------------------------------


def test_unwritable_out_is_one_line(files: Dict[str, Any], tmp_path: Path) -> None:
    """--out below a regular file (root writes anywhere else) for predict, export and bench."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    image, model = files["images"] / "plain.png", files["models"]["mini"]
    line = _one_error(_run("predict", image, "-w", model, "--aligned", "--out",
                           blocker / "p.jsonl"))
    assert "--out" in line and "cannot write" in line
    line = _one_error(_run("predict", image, "-w", model, "--aligned", "--annotate",
                           blocker / "a.png"))
    assert "--annotate" in line and "a_file/a.png: cannot write" in line
    line = _one_error(_run("export", model, "--onnx-only", "--fp32", "--out", blocker / "e"))
    assert "--out" in line and "cannot write" in line
    res = _run("bench", "-w", model, "--backends", "onnx", "--batch-sizes", "1", "--iters", "1",
               "--seconds", "0", "--presets", "tiny", "--out", blocker / "r")
    line = _one_error(res)
    assert "--out" in line and "cannot write" in line
    assert "batch 1 ..." not in res.output  # refused before anything was timed


# -- bench ---------------------------------------------------------------------------------------


def _bench(out: Path, *weights: Path, batches: str = "1") -> Any:
    args = ["bench", "--backends", "onnx", "--batch-sizes", batches, "--iters", "1",
            "--seconds", "0", "--presets", "tiny", "--threads", "1", "--out", out]
    for w in weights:
        args += ["-w", w]
    return _run(*args)


def test_bench_bad_safetensors_is_one_line(files: Dict[str, Any], tmp_path: Path) -> None:
    line = _one_error(_bench(tmp_path / "r", files["models"]["random_safetensors"]))
    assert "random.safetensors" in line
    assert not list((tmp_path / "r").glob("bench_*"))


def test_bench_rows_say_why_a_model_cannot_run(files: Dict[str, Any], tmp_path: Path) -> None:
    m = files["models"]
    res = _bench(tmp_path / "r", m["mini"], m["random_onnx"], m["foreign_shape"], batches="1,3")
    assert res.exit_code == 0, res.output
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("bench_*.json")]
    rows = {(r["model"], r["batch"]): r["status"] for r in record["latency"]}
    assert rows[("mini.onnx", 1)] == rows[("mini.onnx", 3)] == "ok"
    assert all("not a loadable ONNX model" in rows[("random.onnx", b)] for b in (1, 3))
    assert all("not a grefel model" in rows[("foreign_shape.onnx", b)] for b in (1, 3))
    # its size row says why too (once a protobuf DecodeError escaped as a traceback)
    sizes = {t["model"]: t for t in record["timed_sizes"]}
    assert "not a loadable ONNX model" in sizes["random.onnx"]["note"]


def test_bench_writes_each_row_as_measured(files: Dict[str, Any], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing batch gets a row; a run stopped at its third row keeps the first two on disk."""
    from benchmarks import latency
    from grefel.runtime import BackendError

    real, calls = latency.measure_latency, []

    def measure(backend: Any, batch: int, *a: Any, **kw: Any) -> Any:
        calls.append(batch)
        if batch == 2:
            raise BackendError("out of memory at batch 2")
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third measurement
        return real(backend, batch, *a, **kw)

    monkeypatch.setattr(latency, "measure_latency", measure)
    out = tmp_path / "r"
    res = CliRunner().invoke(cli, ["bench", "--backends", "onnx", "--batch-sizes", "1,2,4",
                                   "--iters", "1", "--seconds", "0", "--presets", "tiny",
                                   "-w", str(files["models"]["mini"]), "--out", str(out)])
    assert res.exit_code == 1 and "Aborted!" in res.output  # click's answer to Ctrl-C
    (path,) = out.glob("bench_*.json")
    rows = json.loads(path.read_text())["latency"]
    assert [(r["batch"], r["status"]) for r in rows] == [
        (1, "ok"), (2, "failed: out of memory at batch 2")]
    assert (out / path.name.replace(".json", ".md")).is_file()


# -- signals: records on disk as produced, the run ended like Ctrl-C ----------------------------


def _default_sigint() -> None:
    """In the child: SIGINT as a terminal delivers it (a shell starts background jobs with it
    ignored, and Python then keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_lines(path: Path, n: int, proc: subprocess.Popen, limit: float = 900.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: {n} records never appeared (exit {proc.poll()})")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_ends_predict_with_records_and_summary(files: Dict[str, Any], tmp_path: Path,
                                                      signum: int) -> None:
    """A 90-frame video read from a named pipe that its writer holds open: the run has read
    every frame and waits for more, deterministically, when the signal comes (--batch 1); the
    writer then closes the pipe. Exit 128 + signal, every record read and the summary
    (interrupted, the signal's name) are written."""
    fifo = tmp_path / "stream.avi"
    os.mkfifo(fifo)
    out, summary = tmp_path / "p.jsonl", tmp_path / "s.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "grefel", "predict", str(fifo), "-w",
         str(files["models"]["mini"]), "--aligned", "--batch", "1", "--out", str(out),
         "--json", str(summary)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        preexec_fn=_default_sigint,
    )
    try:
        with corpus.fifo_video(fifo, files["videos"]["long"], proc):
            _wait_lines(out, 3, proc)
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=900)  # a hang guard only (a loaded machine is slow)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err.decode()
    assert b"Traceback" not in err
    recs = _jsonl(out)
    assert len(recs) >= 3 and [r["frame"] for r in recs] == list(range(len(recs)))
    info = json.loads(summary.read_text())
    assert info["interrupted"] and info["signal"] == signal.Signals(signum).name
    assert info["frames"] == len(recs)
