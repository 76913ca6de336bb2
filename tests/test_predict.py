"""`grefel predict` over an image, a folder and a video; bad inputs give clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest
import test_runtime as rt  # the model files and TensorRT fakes (same module object as pytest's)
from click.testing import CliRunner

from grefel.cli import cli
from grefel.predict import Tracker, entropy_confidence

CLASSES = rt.CLASSES
models = rt.models
fake_trt = rt.fake_trt


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _chessboard(side: int = 240, squares: int = 8) -> np.ndarray:
    """A black-and-white chessboard, RGB uint8: no face in it."""
    cells = (np.indices((squares, squares)).sum(axis=0) % 2).astype(np.uint8) * 255
    board = np.kron(cells, np.ones((side // squares, side // squares), np.uint8))
    return np.repeat(board[:, :, None], 3, axis=2)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A folder of 4 images (one nested) plus a text file, a 6-frame MJPG video, a bad video."""
    root = tmp_path_factory.mktemp("media")
    folder = root / "faces"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png", "sub/d.bmp"]):
        cv2.imwrite(str(folder / name), _noise(96 + 8 * i, 112, i))
    (folder / "notes.txt").write_text("not an image")
    video = root / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    for i in range(6):
        writer.write(_noise(96, 128, 100 + i))
    writer.release()
    bad_video = root / "broken.avi"
    bad_video.write_bytes(b"RIFF0000AVI garbage")
    return {"folder": folder, "image": folder / "a.png", "video": video, "bad_video": bad_video}


def _invoke(*args: Any) -> Any:
    return CliRunner().invoke(cli, ["predict", *map(str, args)])


def _jsonl(text: str) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


NO_FACE_NULLS = ("track", "box", "keypoints", "label", "confidence", "uncertain", "probs",
                 "primary")


def _check_no_face(rec: Dict[str, Any]) -> None:
    """No face, no expression: face false, and every key but source/frame/aligned null."""
    assert rec["face"] is False and rec["aligned"] is False, rec
    assert {k: rec[k] for k in NO_FACE_NULLS} == dict.fromkeys(NO_FACE_NULLS), rec


def _check_record(rec: Dict[str, Any]) -> None:
    assert set(rec) >= {
        "source",
        "frame",
        "box",
        "label",
        "probs",
        "primary",
        "confidence",
        "uncertain",
        "face",
    }
    assert list(rec["probs"]) == list(CLASSES) and rec["label"] in CLASSES
    assert abs(sum(rec["probs"].values()) - 1.0) < 1e-4
    assert rec["uncertain"] == (rec["confidence"] < 0.3)


def test_predict_image_jsonl(models: Dict[str, Path], media: Dict[str, Path]) -> None:
    res = _invoke(media["image"], "--weights", models["onnx"], "--aligned")
    assert res.exit_code == 0, res.output
    (rec,) = _jsonl(res.stdout)
    _check_record(rec)
    assert rec["box"] == [0, 0, 112, 96] and rec["face"] is True and rec["frame"] == 0


def test_predict_folder_skips_non_image_and_writes_csv(
    models: Dict[str, Path], media: Dict[str, Path], tmp_path: Path
) -> None:
    out, summary = tmp_path / "p.csv", tmp_path / "summary.json"
    res = _invoke(
        media["folder"],
        "-w",
        models["ckpt"],
        "--aligned",
        "--format",
        "csv",
        "--out",
        out,
        "--json",
        summary,
        "--batch",
        "3",
    )
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "notes.txt: not a decodable image" in res.output
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["source"]).name for r in rows] == ["a.png", "b.jpg", "c.png", "d.bmp"]
    for r in rows:
        assert abs(sum(float(r[f"prob_{c}"]) for c in CLASSES) - 1.0) < 1e-4
        assert r["label"] in CLASSES
    info = json.loads(summary.read_text())
    assert info["frames"] == 4 and [Path(s["file"]).name for s in info["skipped"]] == ["notes.txt"]


def test_predict_backends_agree_on_a_folder(
    models: Dict[str, Path], media: Dict[str, Path], fake_trt: Any
) -> None:
    """Torch, ONNX Runtime and (fake) TensorRT give the same records for the same folder."""
    _, engine, _, _ = fake_trt
    runs = [
        _jsonl(_invoke(media["folder"], "-w", w, "--aligned").stdout)
        for w in (models["ckpt"], models["onnx"], engine)
    ]
    assert len(runs[0]) == 4
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a["label"] == b["label"] and a["box"] == b["box"]
            for c in CLASSES:
                assert abs(a["probs"][c] - b["probs"][c]) < 1e-4


def test_predict_video_tracks_smooths_and_annotates(
    models: Dict[str, Path], media: Dict[str, Path], tmp_path: Path
) -> None:
    annotated = tmp_path / "annotated.avi"
    res = _invoke(
        media["video"], "-w", models["onnx"], "--annotate", annotated, "--max-frames", "5"
    )
    assert res.exit_code == 0, res.output
    recs = _jsonl(res.stdout)
    assert [r["frame"] for r in recs] == [0, 1, 2, 3, 4]
    for r in recs:  # the detector finds no face in noise: no face, no expression
        _check_no_face(r)
    assert "5 frames, 0 faces, 5 frames without a face" in res.stderr
    aligned = _jsonl(_invoke(media["video"], "-w", models["onnx"], "--aligned",
                             "--max-frames", "5").stdout)
    for r in aligned:  # --aligned: each frame is the face, classified, tracked, smoothed
        _check_record(r)
    assert [r["box"] for r in aligned] == [[0, 0, 128, 96]] * 5
    assert {r["track"] for r in aligned} == {0}  # the same box across frames is one track
    cap = cv2.VideoCapture(str(annotated))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()


def test_no_face_gets_no_expression_in_jsonl_csv_and_summary(
    models: Dict[str, Path], tmp_path: Path
) -> None:
    """A chessboard (no face) through predict's default detector: one record with face false
    and no box, label, confidence or probabilities (JSONL and CSV), counted by the summary;
    an annotated copy is still written. --aligned classifies the whole image."""
    board = tmp_path / "chessboard.png"
    cv2.imwrite(str(board), _chessboard())
    summary, annotated = tmp_path / "summary.json", tmp_path / "annotated.png"
    res = _invoke(board, "-w", models["onnx"], "--json", summary, "--annotate", annotated)
    assert res.exit_code == 0, res.output
    (rec,) = _jsonl(res.stdout)
    _check_no_face(rec)
    assert (rec["source"], rec["frame"]) == (str(board), 0)
    info = json.loads(summary.read_text())
    assert (info["frames"], info["faces"], info["no_face_frames"]) == (1, 0, 1)
    assert "1 frames, 0 faces, 1 frames without a face" in res.stderr
    assert cv2.imread(str(annotated)).shape == (240, 240, 3)

    out = tmp_path / "p.csv"
    res = _invoke(board, "-w", models["onnx"], "--format", "csv", "--out", out)
    assert res.exit_code == 0, res.output
    (row,) = list(csv.DictReader(out.open()))
    assert row["face"] == "False" and row["source"] == str(board)
    empty = ["track", "x1", "y1", "x2", "y2", "label", "confidence", "uncertain"]
    empty += [f"{kind}_{c}" for kind in ("prob", "primary") for c in CLASSES]
    assert {k: row[k] for k in empty} == dict.fromkeys(empty, "")

    (whole,) = _jsonl(_invoke(board, "-w", models["onnx"], "--aligned").stdout)
    _check_record(whole)
    assert whole["face"] is True and whole["box"] == [0, 0, 240, 240]


def test_tracker_smooths_matched_faces_only() -> None:
    tr = Tracker(smooth=0.6)
    p0 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    ids, s0 = tr.update("v", [(0, 0, 10, 10), (50, 50, 60, 60)], p0)
    assert ids == [0, 1] and np.allclose(s0, p0)
    p1 = np.array([[0.0, 1.0], [0.5, 0.5]], np.float32)
    ids, s1 = tr.update("v", [(1, 1, 11, 11), (200, 200, 210, 210)], p1)
    assert ids == [0, 2]  # first matches track 0 by IoU; the far box is a new face
    assert np.allclose(s1[0], [0.6, 0.4]) and np.allclose(s1[1], [0.5, 0.5])
    ids, _ = tr.update("other", [(1, 1, 11, 11)], p1[:1])
    assert ids == [3]  # a new source starts fresh


def test_entropy_confidence_guards() -> None:
    c = entropy_confidence(np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], np.float32))
    assert np.allclose(c, [1.0, 0.0], atol=1e-6) and np.isfinite(c).all()


@pytest.mark.parametrize(
    "src, message",
    [
        ("bad_video", "unreadable video"),
        ("97", "camera index 97 does not exist or cannot be opened"),
        ("missing.png", "no such file or folder"),
        ("text", "not a decodable image"),
    ],
)
def test_predict_bad_sources_fail_clearly(
    models: Dict[str, Path], media: Dict[str, Path], src: str, message: str
) -> None:
    target = {"bad_video": media["bad_video"], "text": media["folder"] / "notes.txt"}.get(src, src)
    res = _invoke(target, "-w", models["onnx"])
    assert res.exit_code == 1 and message in res.output
    assert "Traceback" not in res.output


def test_predict_engine_that_is_not_an_engine(fake_trt: Any, media: Dict[str, Path]) -> None:
    """With the TensorRT fakes (checks our glue): a non-engine file is a clear error."""
    _, engine, _, _ = fake_trt
    engine.write_bytes(b"\x00garbage")
    res = _invoke(media["folder"], "-w", engine, "--aligned")
    assert res.exit_code == 1 and "not a TensorRT engine" in res.output


def test_predict_engine_without_tensorrt_says_what_to_install(
    tmp_path: Path, media: Dict[str, Path], no_tensorrt: None
) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    res = _invoke(media["image"], "-w", engine)
    assert res.exit_code == 1 and "tensorrt is not available" in res.output


_SPY_TORCH_IMPORT = """
import importlib.abc, json, os, sys
seen = []
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
sys.meta_path.insert(0, Spy())
from click.testing import CliRunner
from grefel.cli import cli
result = CliRunner().invoke(cli, sys.argv[1:])
print(json.dumps({"exit": result.exit_code, "policy_at_torch_import": seen}))
"""


@pytest.mark.parametrize("user_policy", [None, "ACTIVE"])
def test_predict_torch_backend_loads_torch_with_passive_openmp(
    models: Dict[str, Path], media: Dict[str, Path], user_policy: Any
) -> None:
    """Spinning OpenMP threads cost 5-20x per frame on a busy CPU (torch_backend.py): predict
    sets OMP_WAIT_POLICY=PASSIVE before torch loads, and keeps a policy the user chose."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_policy is not None:
        env["OMP_WAIT_POLICY"] = user_policy
    args = ["predict", str(media["image"]), "--weights", str(models["ckpt"]), "--aligned"]
    proc = subprocess.run([sys.executable, "-c", _SPY_TORCH_IMPORT, *args], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"exit": 0, "policy_at_torch_import": [user_policy or "PASSIVE"]}, proc.stderr


def _error_line(res: Any) -> str:
    """The one line of a refused command (exit 1, no traceback)."""
    assert res.exit_code == 1 and res.exception is None or isinstance(res.exception, SystemExit)
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


@pytest.mark.parametrize(
    "source, given, says",
    [
        ("image", "x.mp4", "give a .png, .jpg, .jpeg or .bmp name"),
        ("image", "existing_dir", "is a folder; give an image file"),
        ("video", "x.png", "give a .avi (MJPG) or .mp4 (mp4v) name"),
        ("video", "existing_dir", "is a folder; give a .avi or .mp4 file"),
        ("folder", "inside", "is inside the source folder"),
    ],
)
def test_annotate_writes_the_path_given_or_refuses_it(
    models: Dict[str, Path], media: Dict[str, Path], tmp_path: Path, source: str, given: str,
    says: str,
) -> None:
    """`--annotate x.mp4` on an image wrote x.png, an existing folder DIR got DIR.png beside it,
    and a video's `--annotate x.png` got MPEG-4 bytes with exit 0: now one line, nothing
    written, before the model loads."""
    (tmp_path / "existing_dir").mkdir()
    target = media["folder"] / "annotated" if given == "inside" else tmp_path / given
    before = sorted(p.name for p in tmp_path.iterdir())
    res = _invoke(media[source], "-w", models["onnx"], "--annotate", target)
    line = _error_line(res)
    assert f"--annotate {target}" in line and says in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no x.png, no existing_dir.png
    assert not (media["folder"] / "annotated").exists()


def test_annotate_and_every_output_named_once(
    models: Dict[str, Path], media: Dict[str, Path], tmp_path: Path
) -> None:
    """The exact --annotate name (a .jpg stays a .jpg) and one `wrote PATH (what)` line per
    output."""
    annotated, out, summary = tmp_path / "a.jpg", tmp_path / "r.csv", tmp_path / "s.json"
    res = CliRunner().invoke(cli, [
        "predict", str(media["image"]), "-w", str(models["onnx"]), "--aligned", "--format",
        "csv", "--out", str(out), "--annotate", str(annotated), "--json", str(summary)])
    assert res.exit_code == 0, res.output + res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "r.csv", "s.json"]
    assert cv2.imread(str(annotated)) is not None
    wrote = [line for line in res.stderr.splitlines() if line.startswith("wrote ")]
    assert wrote == [f"wrote {out} (records, csv)", f"wrote {annotated} (annotated image)",
                     f"wrote {summary} (summary JSON)"]


def test_predict_reports_progress_on_a_video(models: Dict[str, Path], media: Dict[str, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A 33 s video printed nothing until the end."""
    import functools

    import grefel.predict
    from grefel.progress import Progress

    monkeypatch.setattr(grefel.predict, "Progress", functools.partial(Progress, every=0.0))
    res = CliRunner().invoke(cli, ["predict", str(media["video"]), "-w", str(models["onnx"]),
                                   "--aligned"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("predict: ")]
    assert [line.split(",")[0] for line in lines] == [f"predict: {i} frames" for i in range(1, 7)]


def test_a_video_run_writes_its_expression_plot_beside_the_records(
    models: Dict[str, Path], media: Dict[str, Path], tmp_path: Path
) -> None:
    """A video with --out R also writes R's stem + .expressions.png (the probabilities of the
    longest track per frame) and says where; without a face in any frame it writes none and
    says why."""
    out = tmp_path / "clip.jsonl"
    res = _invoke(media["video"], "-w", models["onnx"], "--aligned", "--out", out)
    assert res.exit_code == 0, res.output
    plot = tmp_path / "clip.expressions.png"
    assert f"wrote {plot} (expression-over-time plot, PNG)" in res.stderr
    image = cv2.imread(str(plot))
    assert image is not None and image.shape == (400, 1000, 3)
    assert json.loads(_invoke(media["video"], "-w", models["onnx"], "--aligned", "--out", out,
                              "--json", tmp_path / "s.json").exit_code == 0 and
                      (tmp_path / "s.json").read_text())["plot"] == str(plot)
    faceless = tmp_path / "faceless.jsonl"
    res = _invoke(media["video"], "-w", models["onnx"], "--out", faceless)  # noise: no face
    assert res.exit_code == 0, res.output
    assert "no expression-over-time plot: no face was found in any frame" in res.stderr
    assert not (tmp_path / "faceless.expressions.png").exists()


def test_the_timeline_plots_the_longest_track_with_gaps(tmp_path: Path) -> None:
    from grefel.timeline import Timeline

    line = Timeline(["a", "b"])
    face = {"face": True, "track": 3, "probs": {"a": 0.2, "b": 0.8}}
    other = {"face": True, "track": 5, "probs": {"a": 0.9, "b": 0.1}}
    line.add(0, [face, other], fps=10.0)
    line.add(1, [{"face": False, "track": None, "probs": None}])
    line.add(2, [face])
    assert line.main_track() == 3 and line.last_frame == 2 and line.fps == 10.0
    assert line.save(tmp_path / "t.png", title="clip") and (tmp_path / "t.png").stat().st_size
    assert not Timeline(["a"]).save(tmp_path / "none.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.png"]  # no temporary left


def test_a_run_classifies_its_source_once(models: Dict[str, Path], media: Dict[str, Path],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """The command classifies SRC once (a Source) and every step after (output checks,
    --annotate, the plot, the annotator, the frame reader) reads that Source instead of
    looking at the text and the file system again."""
    import grefel.predict
    from grefel.runtime import sources

    classified: List[Any] = []
    real = sources.classify_source

    def counting(src: Any) -> Any:
        if not isinstance(src, sources.Source):
            classified.append(src)
        return real(src)

    for module in (sources, grefel.predict):
        monkeypatch.setattr(module, "classify_source", counting)
    res = _invoke(media["video"], "-w", models["onnx"], "--aligned", "--max-frames", "2",
                  "--out", tmp_path / "r.jsonl", "--annotate", tmp_path / "a.avi")
    assert res.exit_code == 0, res.output
    assert classified == [str(media["video"])]
