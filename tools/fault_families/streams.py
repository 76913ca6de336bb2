"""Issue 27.4 and 27.5: metadata is checked before it is trusted; streams and folders end or skip
with a reason.

27.4: class names (ONNX metadata, a sidecar, a checkpoint, classes.txt) that do not fit the model
(too few or too many for its outputs, duplicated, empty, with a byte-order mark) are refused in
one line naming the file (`grefel.contract.check_class_names`, called by every backend); a
classes.txt or CSV saved with a BOM, CRLF line ends or as UTF-16 is read right
(`grefel.fileio.read_user_text`), never giving a class named "\\ufeffneutral".

27.5: a folder walk opens only regular files and says what it skipped (a FIFO, a device, a link
to nothing, a loop of folder links, grefel's own annotated copies and this run's outputs); a
video reads on past damaged frames with a line per stretch, and a video that stops before its
declared end fails with one line after writing the records of the frames it read.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from tools.fault_campaign import (
    SEVEN,
    TINY_TRAIN,
    Case,
    Proc,
    _csv_dataset,
    _good_labels,
    _records,
    _tiny_checkpoint,
    grefel,
)

FAMILY = "27.4+5 metadata checked; streams and folders end or skip with a reason"
SIDE = "streams"


# -- material ------------------------------------------------------------------------------------


def named_onnx(path: Path, names: Any, mini: Path) -> Path:
    """The closed-form mini model (3 outputs: red, green, blue) with `names` as its
    grefel.class_names metadata (any JSON value)."""
    import onnx

    proto = onnx.load(str(mini))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {"grefel.class_names": json.dumps(names)})
    onnx.save(proto, str(path))
    return path


def long_video(path: Path, frames: int = 90, size: tuple = (64, 48)) -> Path:
    """An MJPG AVI of `frames` frames (10 fps), each a different colour (red dominant)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    rng = np.random.default_rng(11)
    for _ in range(frames):
        img = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
        img[..., 2] += 150  # BGR: red dominates, the mini model says "red"
        writer.write(img)
    writer.release()
    return path


def _frame_chunks(data: bytes) -> List[int]:
    """Offsets of the AVI's frame chunks ("00dc") inside its movi list."""
    movi, out, at = data.find(b"movi"), [], 0
    while True:
        at = data.find(b"00dc", at + 1)
        if at < 0:
            return out
        if at > movi:
            out.append(at)


def damaged_frames(src: Path, dest: Path, frames: Sequence[int]) -> Path:
    """`src` with the JPEG data of `frames` overwritten by noise (the container intact)."""
    data = bytearray(src.read_bytes())
    chunks = _frame_chunks(bytes(data))
    rng = np.random.default_rng(5)
    for k in frames:
        at = chunks[k]
        size = struct.unpack("<I", data[at + 4:at + 8])[0]
        data[at + 8:at + 8 + size] = rng.bytes(size)
    dest.write_bytes(bytes(data))
    return dest


def cut_video(src: Path, dest: Path, fraction: float) -> Path:
    """`src` cut to `fraction` of its bytes: the container still declares every frame."""
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * fraction)])
    return dest


def _photos(folder: Path, n: int = 3) -> List[str]:
    """`n` reddish PNGs in `folder`; their names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = [f"p{i}.png" for i in range(n)]
    for i, name in enumerate(names):
        Image.new("RGB", (40, 30), (200, 20 + i, 20)).save(folder / name)
    return names


# -- checks --------------------------------------------------------------------------------------


def _sources(work: Path, out: str = "p.jsonl") -> List[str]:
    path = work / out
    return [r["source"] for r in _records(path)] if path.exists() else []


def _expect_records(work: Path, want: Sequence[str], out: str = "p.jsonl") -> str:
    got = sorted(os.path.relpath(s, work) if os.path.isabs(s) else s for s in _sources(work, out))
    got = [Path(s).name for s in got]
    if sorted(want) != sorted(got):
        missing = sorted(set(want) - set(got))
        return (f"lost: no record of {missing}" if missing else
                f"{len(got)} records ({got}) for the {len(want)} photos {sorted(want)}")
    return ""


def _says(procs: List[Proc], *parts: str) -> str:
    out = procs[-1].output
    absent = [p for p in parts if p not in out]
    return f"no line saying {absent}" if absent else ""


def _labels_red(work: Path, classes: Sequence[str] = ("red", "green", "blue")) -> str:
    recs = _records(work / "p.jsonl") if (work / "p.jsonl").exists() else []
    if not recs:
        return "lost: no records"
    for r in recs:
        if sorted(r["probs"]) != sorted(classes):
            return f"record classes {sorted(r['probs'])}, expected {sorted(classes)}"
        if r["label"] != "red":
            return f"label {r['label']!r}, expected 'red'"
    return ""


# -- cases ---------------------------------------------------------------------------------------


def cases(scratch: Path) -> List[Case]:
    from tools import fault_corpus as fc

    scratch.mkdir(parents=True, exist_ok=True)
    mini = fc.mini_onnx(scratch / "mini.onnx")
    photo = scratch / _photos(scratch, 1)[0]
    out: List[Case] = []

    def add(name: str, item: str, expect: str, run: Any, check: Any = None) -> None:
        out.append(Case(name, SIDE, item, expect, run, check or (lambda p, w: "")))

    # 27.4: class names in a model file -----------------------------------------------------
    bad_names: Dict[str, Any] = {
        "5 names for 3 outputs": ["red", "green", "blue", "x", "y"],
        "2 names for 3 outputs": ["red", "green"],
        "a name twice": ["red", "red", "blue"],
        "a name twice after stripping": ["red", "green ", " green"],
        "an empty name": ["red", "", "blue"],
        "a name with a byte-order mark": ["\ufeffred", "green", "blue"],
        "names not a list": {"0": "red"},
    }
    for label, names in bad_names.items():
        def run(w: Path, n: Any = names) -> List[Proc]:
            return [grefel("predict", photo, "-w", named_onnx(w / "m.onnx", n, mini),
                           "--aligned", "--out", w / "p.jsonl")]

        add(f"ONNX class names: {label}", "27.4", "error", run,
            lambda p, w: "" if "m.onnx" in (p[-1].error_lines() or [""])[0]
            else "the error does not name the model file")

    def sidecar_dup(w: Path) -> List[Proc]:
        import onnx

        proto = onnx.load(str(mini))
        del proto.metadata_props[:]
        onnx.save(proto, str(w / "m.onnx"))
        (w / "m.json").write_text(json.dumps({"format": "grefel-checkpoint/1",
                                              "class_names": ["red", "red", "blue"]}))
        return [grefel("predict", photo, "-w", w / "m.onnx", "--aligned")]

    add("ONNX without metadata, sidecar with a name twice", "27.4", "error", sidecar_dup)

    def reordered(w: Path) -> List[Proc]:  # another order is another model: its own names
        return [grefel("predict", photo, "-w",
                       named_onnx(w / "m.onnx", ["blue", "green", "red"], mini), "--aligned",
                       "--out", w / "p.jsonl")]

    def own_order(p: List[Proc], w: Path) -> str:  # output 0 (the red mean) is named "blue"
        recs = _records(w / "p.jsonl") if (w / "p.jsonl").exists() else []
        if not recs:
            return "lost: no records"
        return "" if recs[0]["label"] == "blue" else f"label {recs[0]['label']!r}, expected the " \
            "model's own name for output 0, 'blue'"

    add("ONNX class names in another order (records use the model's order)", "27.4", "ok",
        reordered, own_order)

    # 27.4: user text files (classes.txt, CSV) -------------------------------------------------
    ckpt = _tiny_checkpoint(scratch / "ckpt" / "tiny.safetensors")
    good = {"train": _good_labels(), "val": _good_labels(7), "test": _good_labels(7)}

    def dataset(w: Path, classes_bytes: bytes) -> Path:
        root = _csv_dataset(w / "data", good, None)
        (root / "classes.txt").write_bytes(classes_bytes)
        return root

    text = "\n".join(SEVEN) + "\n"
    encodings = {
        "UTF-8 with a byte-order mark": b"\xef\xbb\xbf" + text.encode(),
        "CRLF line ends": text.replace("\n", "\r\n").encode(),
        "UTF-16 (with its mark)": text.encode("utf-16"),
    }
    for label, raw in encodings.items():
        def run_eval(w: Path, raw: bytes = raw) -> List[Proc]:
            return [grefel("eval", ckpt, "--data", dataset(w, raw), "--split", "test",
                           "--device", "cpu", "--out", w / "ev")]

        def names_clean(p: List[Proc], w: Path) -> str:
            reports = list((w / "ev").rglob("*.json"))
            blob = " ".join(r.read_text(encoding="utf-8") for r in reports)
            if not reports:
                return "lost: no eval report"
            return "a class name kept the byte-order mark" if "\\ufeff" in blob or \
                "\ufeff" in blob else ""

        add(f"classes.txt in {label} (eval reads the checkpoint's classes)", "27.4", "ok",
            run_eval, names_clean)

    def bom_train(w: Path) -> List[Proc]:
        root = dataset(w, encodings["UTF-8 with a byte-order mark"])
        return [grefel("train", "--data", root, "--out", w / "run", *TINY_TRAIN)]

    def trained_clean(p: List[Proc], w: Path) -> str:
        sides = [s for s in (w / "run").glob("*.json")
                 if "class_names" in s.read_text(encoding="utf-8")]
        if not sides:
            return "lost: no checkpoint sidecar"
        names = json.loads(sides[0].read_text(encoding="utf-8"))["class_names"]
        return "" if names == SEVEN else f"checkpoint class names {names}"

    add("train on classes.txt with a byte-order mark (the issue's example)", "27.4", "ok",
        bom_train, trained_clean)
    invalid = {
        "a name twice after stripping": text.replace("fear", "anger ").encode(),
        "a tab inside a name": text.replace("fear", "fe\tar").encode(),
        "not UTF-8 (Latin-1)": text.replace("fear", "peur-\xe9").encode("latin-1"),
        "UTF-16 without a mark": text.encode("utf-16-le"),
    }
    for label, raw in invalid.items():
        def run_bad(w: Path, raw: bytes = raw) -> List[Proc]:
            return [grefel("eval", ckpt, "--data", dataset(w, raw), "--split", "test",
                           "--device", "cpu", "--out", w / "ev")]

        add(f"classes.txt with {label}", "27.4", "error", run_bad,
            lambda p, w: "" if "classes.txt" in (p[-1].error_lines() or [""])[0]
            else "the error does not name classes.txt")

    # 27.5: folders -------------------------------------------------------------------------------
    def folder_with(w: Path, make: Any) -> Path:
        root = w / "photos"
        _photos(root)
        make(root)
        return root

    specials = {
        "a FIFO": (lambda r: os.mkfifo(r / "pipe.png"), ["pipe.png: not a regular file"]),
        "a link to a character device": (lambda r: os.symlink("/dev/zero", r / "zero.png"),
                                         ["zero.png: not a regular file"]),
        "a dangling link": (lambda r: os.symlink("gone.png", r / "gone_link.png"),
                            ["gone_link.png: a symbolic link to nothing"]),
        "a loop of folder links": (lambda r: (r / "sub").mkdir() or os.symlink("..",
                                                                                r / "sub" / "up"),
                                   ["up: a link to a folder already walked"]),
    }
    for label, (make, lines) in specials.items():
        def run_folder(w: Path, make: Any = make) -> List[Proc]:
            return [grefel("predict", folder_with(w, make), "-w", mini, "--aligned", "--out",
                           w / "p.jsonl")]

        add(f"folder with {label}", "27.5", "ok", run_folder,
            lambda p, w, lines=lines: _expect_records(w, ["p0.png", "p1.png", "p2.png"])
            or _says(p, *lines))

    def linked_folder(w: Path) -> List[Proc]:
        other = w / "elsewhere"
        _photos(other, 1)
        (other / "p0.png").rename(other / "far.png")
        root = folder_with(w, lambda r: os.symlink(other, r / "linked"))
        return [grefel("predict", root, "-w", mini, "--aligned", "--out", w / "p.jsonl")]

    add("folder with a symlinked subfolder (followed)", "27.5", "ok", linked_folder,
        lambda p, w: _expect_records(w, ["p0.png", "p1.png", "p2.png", "far.png"]))

    def second_annotate(w: Path) -> List[Proc]:
        root = w / "photos"
        _photos(root)
        first = grefel("predict", root, "-w", mini, "--aligned", "--annotate", w / "ann")
        shutil.move(str(w / "ann"), str(root / "annotated"))  # the copies moved in by hand
        return [first, grefel("predict", root, "-w", mini, "--aligned", "--out",
                              root / "p.jsonl")]

    add("second predict over a folder holding its earlier annotated copies", "27.5", "ok",
        second_annotate,
        lambda p, w: _expect_records(w / "photos", ["p0.png", "p1.png", "p2.png"])
        or _says(p, "annotated copies written by", "p.jsonl: an output of this run"))
    add("a FIFO given as the image source", "27.5", "error",
        lambda w: [os.mkfifo(w / "pipe.png"), grefel("predict", w / "pipe.png", "-w", mini)][1:],
        lambda p, w: _says(p, "not a regular file (a named pipe)"))

    def calib_fifo(w: Path) -> List[Proc]:
        root = w / "calib"
        _photos(root, 4)
        os.mkfifo(root / "pipe.png")
        return [grefel("export", mini, "--onnx-only", "--calib-data", root, "--out", w / "e")]

    add("export --calib-data folder with a FIFO (the same walk)", "27.5", "ok", calib_fifo,
        lambda p, w: _says(p, "pipe.png: not a regular file", "on 4 images"))

    # 27.5: videos ------------------------------------------------------------------------------
    videos = scratch / "videos"
    videos.mkdir(exist_ok=True)
    clip = long_video(videos / "clip90.avi")
    middle = damaged_frames(clip, videos / "middle.avi", range(39, 42))
    first = damaged_frames(clip, videos / "first.avi", [0])
    cut = cut_video(clip, videos / "cut.avi", 0.34)

    def predict_video(v: Path) -> Any:
        return lambda w: [grefel("predict", v, "-w", mini, "--aligned", "--out", w / "p.jsonl")]

    def frames_check(want: Sequence[int], *lines: str) -> Any:
        def check(p: List[Proc], w: Path) -> str:
            recs = _records(w / "p.jsonl") if (w / "p.jsonl").exists() else []
            got = [r["frame"] for r in recs]
            if got != list(want):
                return f"lost: frames {got[:5]}... ({len(got)}), expected {len(want)}"
            return _labels_red(w) or _says(p, *lines)
        return check

    add("video with damaged middle frames 39-41 (skipped, the rest read)", "27.5", "ok",
        predict_video(middle), frames_check([*range(39), *range(42, 90)],
                                            "frames 39-41: could not be decoded"))
    add("video with a damaged first frame", "27.5", "ok", predict_video(first),
        frames_check(range(1, 90), "frame 0: could not be decoded"))

    def cut_check(p: List[Proc], w: Path) -> str:
        n = len(_records(w / "p.jsonl")) if (w / "p.jsonl").exists() else 0
        if not 10 <= n < 90:
            return f"lost: {n} records of the frames before the cut"
        return _says(p, f"ended at frame {n} of the 90 its container declares")

    add("video declaring 90 frames holding a third of them", "27.5", "error",
        predict_video(cut), cut_check)
    add("good 90-frame video (no false alarm)", "27.5", "ok", predict_video(clip),
        frames_check(range(90)))
    return out
