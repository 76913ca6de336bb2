"""Issue 27.4 / 27.5 mechanisms, in process: the one class-name check (`grefel.contract
.check_class_names`, run by every backend), the one user-text reader (`grefel.fileio
.read_user_text`), the one folder walk (`grefel.runtime.sources.walk_folder`) and the video
reader's damage handling (`grefel.runtime.sources.iter_source`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

from grefel.contract import ClassNamesError, check_class_names
from grefel.data.readers import read_csv_dataset
from grefel.data.samples import DatasetError
from grefel.fileio import UserTextError, read_user_text
from grefel.runtime import BackendError, open_backend
from grefel.runtime.sources import (
    ANNOTATED_MARKER,
    Frame,
    Skipped,
    SourceError,
    StreamEnd,
    iter_source,
    source_kind,
    walk_folder,
)
from tools import fault_corpus as corpus
from tools.fault_families import streams as family

# -- class names -------------------------------------------------------------------------------


@pytest.mark.parametrize("names, width, why", [
    (["a", "b", "c", "d", "e"], 7, "5 class names for 7 model outputs"),
    (["a", "a", "b"], 3, "given twice: a"),
    (["a", " b", "b "], 3, "given twice: b"),
    (["neutral", "Neutral", "happy"], 3, "differ only in case: Neutral, neutral"),
    (["a", "", "b"], 3, "empty name"),
    (["\ufeffneutral", "happy"], 2, "byte-order mark"),
    (["ne\tutral", "happy"], None, "control or invisible"),
    ("abc", None, "must be a list"),
    ([1, 2], None, "must be a list"),
])
def test_class_names_refused(names: object, width: object, why: str) -> None:
    with pytest.raises(ClassNamesError) as err:
        check_class_names(names, "model.onnx", width)
    assert str(err.value).startswith("model.onnx: ") and why in str(err.value)


def test_class_names_kept() -> None:
    assert check_class_names(["neutral", "happy", "sad"], "m", 3) == ("neutral", "happy", "sad")


def test_every_backend_checks_its_class_names(tmp_path: Path) -> None:
    mini = corpus.mini_onnx(tmp_path / "mini.onnx")
    bad = family.named_onnx(tmp_path / "bad.onnx", ["red", "red", "blue"], mini)
    with pytest.raises(BackendError, match=r"bad.onnx: name\(s\) given twice: red"), \
            open_backend(bad, device="cpu"):
        pass
    with open_backend(mini, device="cpu") as backend:
        assert backend.classes == ("red", "green", "blue") and backend.output_width == 3


def test_checkpoint_config_refuses_bad_class_names() -> None:
    from grefel.config import GReFELConfig

    with pytest.raises(ValueError, match="given twice"):
        GReFELConfig.preset("tiny", num_classes=2, class_names=("a", "a"))


# -- user text ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"\xef\xbb\xbfneutral\nhappy\n",            # UTF-8 with a BOM (Notepad, Excel)
    b"neutral\r\nhappy\r\n",                     # CRLF
    "neutral\nhappy\n".encode("utf-16"),         # UTF-16 with its BOM
])
def test_user_text_reads_boms_and_crlf(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "classes.txt").write_bytes(raw)
    lines = [x.strip() for x in read_user_text(tmp_path / "classes.txt").splitlines()]
    assert lines == ["neutral", "happy"]


@pytest.mark.parametrize("raw, why", [
    ("peur-\xe9\n".encode("latin-1"), "not UTF-8 text"),
    ("neutral\n".encode("utf-16-le"), "NUL characters"),
])
def test_user_text_refuses_other_encodings(tmp_path: Path, raw: bytes, why: str) -> None:
    (tmp_path / "x.txt").write_bytes(raw)
    with pytest.raises(UserTextError, match=why):
        read_user_text(tmp_path / "x.txt")


def _csv_root(root: Path, classes: bytes, csv_text: str) -> Path:
    (root / "img").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(root / "img" / f"{i}.png")
    (root / "classes.txt").write_bytes(classes)
    (root / "train.csv").write_bytes(csv_text.encode("utf-8-sig"))  # a BOM before "path"
    return root


def test_dataset_reader_drops_the_bom_of_classes_and_csv(tmp_path: Path) -> None:
    root = _csv_root(tmp_path / "d", b"\xef\xbb\xbfneutral\r\nhappy\r\n",
                     "path,label\r\nimg/0.png,neutral\r\nimg/1.png,happy\r\n")
    samples, classes = read_csv_dataset(root, "train")
    assert classes == ("neutral", "happy") and [s.label for s in samples] == [0, 1]


def test_dataset_reader_refuses_duplicate_class_names(tmp_path: Path) -> None:
    root = _csv_root(tmp_path / "d", b"happy\nhappy \n", "path,label\nimg/0.png,happy\n")
    with pytest.raises(DatasetError, match="classes.txt: name\\(s\\) given twice: happy"):
        read_csv_dataset(root, "train")


# -- the folder walk ---------------------------------------------------------------------------


def _walk(root: Path, exclude: List[Path] = ()) -> List[str]:  # type: ignore[assignment]
    return [f"skip {Path(e.source).name}: {e.reason.split(' (')[0]}" if isinstance(e, Skipped)
            else os.path.relpath(e, root) for e in walk_folder(root, exclude)]


def test_walk_opens_only_regular_files(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png", ".hidden.png"):
        (root / name).write_bytes(b"x")
    os.mkfifo(root / "fifo.png")
    os.symlink("/dev/zero", root / "zero.png")
    os.symlink("missing.png", root / "dangling.png")
    os.symlink("..", root / "sub" / "up")  # a loop of folder links
    other = tmp_path / "other"
    other.mkdir()
    (other / "c.png").write_bytes(b"x")
    os.symlink(other, root / "linked")  # followed
    assert _walk(root) == [
        "a.png",
        "skip dangling.png: a symbolic link to nothing",
        "skip fifo.png: not a regular file",
        "linked/c.png",
        "sub/b.png",
        "skip up: a link to a folder already walked",
        "skip zero.png: not a regular file",
    ]


def test_walk_skips_outputs_and_annotated_folders(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "annotated").mkdir(parents=True)
    (root / "a.png").write_bytes(b"x")
    (root / "p.jsonl").write_bytes(b"{}\n")
    (root / "annotated" / "a.png").write_bytes(b"x")
    (root / "annotated" / ANNOTATED_MARKER).write_text("x")
    assert _walk(root, [root / "p.jsonl"]) == [
        "a.png",
        "skip annotated: annotated copies written by `grefel predict --annotate`",
        "skip p.jsonl: an output of this run",
    ]


def test_fifo_given_as_an_image_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(SourceError, match="pipe.png: not a regular file \\(a named pipe\\)"):
        source_kind(str(tmp_path / "pipe.png"))
    os.mkfifo(tmp_path / "pipe.avi")  # a video name: a stream OpenCV reads
    assert source_kind(str(tmp_path / "pipe.avi")) == "video"


# -- videos ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return family.long_video(tmp_path_factory.mktemp("v") / "clip.avi", frames=30)


def _items(path: Path) -> list:
    return list(iter_source(str(path)))


def test_damaged_middle_frames_are_skipped_with_a_line(clip: Path, tmp_path: Path) -> None:
    items = _items(family.damaged_frames(clip, tmp_path / "d.avi", [10, 11]))
    frames = [i.index for i in items if isinstance(i, Frame)]
    assert frames == [*range(10), *range(12, 30)]
    skips = [i.reason for i in items if isinstance(i, Skipped)]
    assert len(skips) == 1 and skips[0].startswith("frames 10-11: could not be decoded")
    assert not any(isinstance(i, StreamEnd) for i in items)


def test_damaged_first_frame_is_skipped(clip: Path, tmp_path: Path) -> None:
    items = _items(family.damaged_frames(clip, tmp_path / "f.avi", [0]))
    assert [i.index for i in items if isinstance(i, Frame)] == list(range(1, 30))
    assert [i.reason.split(":")[0] for i in items if isinstance(i, Skipped)] == ["frame 0"]


def test_video_shorter_than_declared_ends_with_a_reason(clip: Path, tmp_path: Path) -> None:
    items = _items(family.cut_video(clip, tmp_path / "c.avi", 0.5))
    frames = [i for i in items if isinstance(i, Frame)]
    assert 5 <= len(frames) < 30 and isinstance(items[-1], StreamEnd)
    assert f"ended at frame {len(frames)} of the 30 its container declares" in items[-1].reason


def test_good_video_has_no_line(clip: Path) -> None:
    items = _items(clip)
    assert len(items) == 30 and all(isinstance(i, Frame) for i in items)


def test_predict_exit_and_records_for_a_cut_video(clip: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from grefel.cli import cli

    mini = corpus.mini_onnx(tmp_path / "mini.onnx")
    out = tmp_path / "p.jsonl"
    res = CliRunner().invoke(cli, ["predict", str(family.cut_video(clip, tmp_path / "c.avi",
                                                                   0.5)),
                                   "-w", str(mini), "--aligned", "--out", str(out)])
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert res.exit_code == 1 and "Traceback" not in res.output
    errors = [x for x in res.output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and f"ended at frame {len(recs)} of the 30" in errors[0]
    assert [r["frame"] for r in recs] == list(range(len(recs))) and np.all(
        [r["label"] == "red" for r in recs])


def test_a_model_whose_probs_are_no_distribution_is_refused(tmp_path: Path) -> None:
    """A graph that returns scores, not a softmax (the fresh campaign's records summed to 1.33):
    every backend refuses its outputs in one line instead of writing meaningless probabilities."""
    import onnx

    path = corpus.mini_onnx(tmp_path / "scores.onnx")
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type == "Softmax":  # the channel means themselves: rows sum to ~1.5
            node.op_type, node.name = "Identity", "no_softmax"
            del node.attribute[:]
    onnx.save(model, str(path))
    batch = np.full((2, 3, 112, 112), 0.5, dtype=np.float32)
    with open_backend(path, device="cpu") as backend:
        with pytest.raises(BackendError, match="`probs` are not probabilities"):
            backend.infer(batch)
        assert backend.infer(batch, finite_outputs=False)["probs"].shape == (2, 3)
    with open_backend(corpus.mini_onnx(tmp_path / "mini.onnx"), device="cpu") as backend:
        np.testing.assert_allclose(backend.infer(batch)["probs"], 1 / 3, rtol=1e-6)


def test_a_subfolder_that_cannot_be_opened_is_skipped_with_a_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subfolder without search permission refused the whole run with an error naming
    `.grefel-annotated` (the marker check raised PermissionError): it is one skip line and the
    rest of the folder is read. (Patched as a non-root user sees it: the tests may run as
    root, whom permissions do not stop.)"""
    import grefel.runtime.sources as sources

    root = tmp_path / "photos"
    (root / "locked").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "a.png")
    real_scandir, real_stat = os.scandir, os.stat

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    def stat(path, *args, **kwargs):
        if Path(path).parent.name == "locked":  # anything inside: no search permission
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(sources.os, "scandir", scandir)
    monkeypatch.setattr(os, "stat", stat)
    items = list(walk_folder(root))
    monkeypatch.undo()
    assert [p.name for p in items if isinstance(p, Path)] == ["a.png"]
    skipped = [item for item in items if isinstance(item, Skipped)]
    assert len(skipped) == 1 and skipped[0].source.endswith("locked")
    assert "cannot list the folder" in skipped[0].reason


def test_a_named_pipe_without_a_writer_can_be_interrupted(tmp_path: Path) -> None:
    """`grefel predict cam.avi` where cam.avi is a named pipe nobody writes to blocked inside
    OpenCV's open, where Ctrl-C and SIGTERM could not reach it (only SIGKILL ended it): the wait
    for a writer is Python's own open, which a signal interrupts."""
    import signal
    import subprocess
    import sys
    import time

    fifo = tmp_path / "cam.avi"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "grefel", "predict", str(fifo), "-w",
                             str(corpus.mini_onnx(tmp_path / "m.onnx")), "--aligned"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wchan = Path(f"/proc/{proc.pid}/wchan")
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None:  # until the kernel holds it in a pipe's open, for a writer
            try:
                if wchan.read_text().strip() == "wait_for_partner":
                    break
            except OSError:
                pytest.skip("no /proc/PID/wchan here")
            if time.monotonic() > deadline:
                pytest.skip("this kernel does not name the wait (/proc/PID/wchan)")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err and b"Traceback" not in err
