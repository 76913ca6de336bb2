"""The bad-input corpus: files a user's folder, model path or camera really holds, made on demand.

`tests/test_bad_input.py` runs each through the CLI command that meets it (mostly `grefel
predict`, also `export` and `bench`) and `tools/fault_campaign.py` classifies the outcomes.
Nothing is downloaded and nothing needs torch: the images come from PIL and OpenCV, the model
files from `onnx.helper`.

`mini_onnx` is a model with the grefel interface (input `images` (N, 3, 112, 112), outputs
probs, primary, confidence) whose output is known in closed form: probs = softmax of the three
channel means (classes red, green, blue), primary = probs, confidence = the max probability. So a
case's records can be checked for being right, not only for existing: a grey image gives equal
probabilities, an upright EXIF-rotated image gives the box of the rotated size.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import numpy as np
from PIL import Image

from grefel.contract import INPUT_SIZE

__all__ = [
    "MINI_CLASSES",
    "bomb_png",
    "fifo_video",
    "wrong_record",
    "foreign_onnx",
    "image_folder",
    "make_model_files",
    "mini_onnx",
    "video_files",
]

MINI_CLASSES = ("red", "green", "blue")
BOMB_SIDE = 20_000  # 400 M pixels declared in a PNG header of a few dozen bytes


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A PNG whose header declares side x side RGB pixels, with one tiny compressed IDAT (the
    decoder would allocate side * side * 3 bytes before finding the data short)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def image_folder(root: Path) -> Dict[str, List[str]]:
    """Write the bad and odd image files into `root` (made); return {"good": [...], "bad": [...]}
    of their names as bytes-safe `os.fsdecode` strings. Good files must be processed (a record
    each); bad ones must be skipped with a line naming them, the rest of the folder going on."""
    root.mkdir(parents=True, exist_ok=True)
    good: Dict[str, bytes] = {}
    bad: Dict[str, bytes] = {}
    reddish = _rgb(90, 120, 1) // 3
    reddish[..., 0] += 150  # red dominates: the mini model says "red" for it
    base = Image.fromarray(reddish, "RGB")
    good["plain.png"] = _encoded(base, "PNG")
    good["one_pixel.png"] = _encoded(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")
    good["gray.png"] = _encoded(base.convert("L"), "PNG")
    clear = base.convert("RGBA")
    clear.putalpha(0)  # fully transparent: composited over white it is white (equal probs)
    good["rgba.png"] = _encoded(clear, "PNG")
    good["palette.png"] = _encoded(base.convert("P"), "PNG")
    good["cmyk.jpg"] = _encoded(base.convert("CMYK"), "JPEG")
    gray16 = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # I;16
    good["gray16.png"] = _encoded(gray16, "PNG")
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    good["animated.gif"] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 270 to be upright: a 120 x 90 file is a 90 x 120 image
    good["exif_rotated.jpg"] = _encoded(base, "JPEG", exif=exif.tobytes())
    good["with space.png"] = _encoded(base, "PNG")
    good["näive-é.png"] = _encoded(base, "PNG")
    good[os.fsdecode(b"latin1-\xe9\xff.png")] = _encoded(base, "PNG")  # not valid UTF-8
    bad["zero_bytes.jpg"] = b""
    bad["text.jpg"] = b"this is a text file, not a JPEG\n"
    png, jpg = _encoded(base, "PNG"), _encoded(base, "JPEG")
    bad["truncated.png"] = png[: len(png) // 2]
    bad["truncated.jpg"] = jpg[: len(jpg) // 3]
    bad["bomb.png"] = bomb_png()
    for name, data in {**good, **bad}.items():
        with open(os.fsencode(root / name), "wb") as f:
            f.write(data)
    loop = root / "symlink_loop.png"
    os.symlink(loop.name, loop)  # a link to itself: ELOOP on open
    return {"good": sorted(good), "bad": sorted([*bad, loop.name])}


# What a right record of each good file says (the mini model, whole image as the face).
_UNIFORM = ("gray.png", "gray16.png", "rgba.png")  # grey, or transparent over white: p = 1/3
_SIZE = {"one_pixel.png": (1, 1), "gray16.png": (64, 64), "animated.gif": (40, 30),
         "exif_rotated.jpg": (90, 120)}  # upright: the 120 x 90 file rotated by its EXIF tag


def wrong_record(name: str, rec: Dict) -> str:
    """Why a record of the good file `name` (made by the mini model with --aligned) is wrong, or
    "" when it is right: the class, equal probabilities for grey / white, the upright size."""
    probs = rec["probs"]
    w, h = _SIZE.get(name, (120, 90))
    if rec["box"] != [0, 0, w, h]:
        return f"box {rec['box']}, expected [0, 0, {w}, {h}] (EXIF orientation / first frame)"
    if name in _UNIFORM:
        if max(probs.values()) - min(probs.values()) > 1e-5:
            return f"probs {probs}, expected equal (grey, or transparency over white)"
    elif rec["label"] != "red":
        return f"label {rec['label']}, expected red (probs {probs})"
    return ""


def _save(model, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def mini_onnx(path: Path, side: int = INPUT_SIZE, outputs: Sequence[str] = ("probs", "primary",
                                                                     "confidence")) -> Path:
    """The closed-form model of the module docstring; `side` != INPUT_SIZE or other `outputs` make a
    foreign ONNX (another input shape, other outputs)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, side, side])
    nodes = [  # opset 17: the reductions take `axes` as an attribute
        helper.make_node("ReduceMean", ["images"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("Softmax", ["means"], ["p"], axis=-1),
        helper.make_node("Identity", ["p"], ["probs"]),
        helper.make_node("Identity", ["p"], ["primary"]),
        helper.make_node("ReduceMax", ["p"], ["confidence"], axes=[1], keepdims=0),
        helper.make_node("Identity", ["p"], ["logits"]),
    ]
    shapes = {"probs": ["batch", 3], "primary": ["batch", 3], "confidence": ["batch"],
              "logits": ["batch", 3]}
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in outputs]
    graph = helper.make_graph(nodes, "mini", [x], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, {"grefel.class_names": json.dumps(list(MINI_CLASSES))})
    return _save(model, path)


def foreign_onnx(path: Path, kind: str) -> Path:
    """kind "shape": input (N, 3, 224, 224) with the grefel outputs; "outputs": the grefel input
    with one output `logits` (a classifier from elsewhere)."""
    if kind == "shape":
        return mini_onnx(path, side=224)
    if kind == "outputs":
        return mini_onnx(path, outputs=("logits",))
    raise ValueError(kind)


def make_model_files(root: Path) -> Dict[str, Path]:
    """Model files: the good mini ONNX, two foreign ONNX, random bytes as .onnx / .engine /
    .safetensors, a mini ONNX without class metadata whose sidecar is a JSON list, and an
    engine whose sidecar is a JSON string."""
    import onnx

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    files = {
        "mini": mini_onnx(root / "mini.onnx"),
        "foreign_shape": foreign_onnx(root / "foreign_shape.onnx", "shape"),
        "foreign_outputs": foreign_onnx(root / "foreign_outputs.onnx", "outputs"),
    }
    for key, name in (("random_onnx", "random.onnx"), ("random_engine", "random.engine"),
                      ("random_safetensors", "random.safetensors")):
        (root / name).write_bytes(rng.bytes(4096))
        files[key] = root / name
    proto = onnx.load(str(files["mini"]))
    del proto.metadata_props[:]
    nometa = root / "listsidecar.onnx"
    onnx.save(proto, str(nometa))
    nometa.with_suffix(".json").write_text("[1, 2, 3]\n")
    files["list_sidecar"] = nometa
    engine = root / "strsidecar.engine"
    engine.write_bytes(rng.bytes(512))
    engine.with_suffix(".json").write_text('"just a string"\n')
    files["str_sidecar_engine"] = engine
    return files


def video_files(root: Path) -> Dict[str, Path]:
    """A good 6-frame MJPG AVI, the same cut to 40 % of its bytes (corrupt tail), random bytes
    named .avi, and an AVI with a header and zero frames."""
    import cv2

    root.mkdir(parents=True, exist_ok=True)
    good = root / "clip.avi"
    writer = cv2.VideoWriter(str(good), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    for i in range(6):
        writer.write(_rgb(96, 128, 100 + i))
    writer.release()
    truncated = root / "truncated.avi"
    data = good.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.4)])
    corrupt = root / "corrupt.avi"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00AVI " + np.random.default_rng(3).bytes(3000))
    empty = root / "zero_frames.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    writer.release()
    long = root / "long.avi"  # 9 s: longer than FFmpeg's 5 s of probing on a pipe
    writer = cv2.VideoWriter(str(long), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(90):
        writer.write(_rgb(48, 64, 200 + i))
    writer.release()
    return {"good": good, "truncated": truncated, "corrupt": corrupt, "zero_frames": empty,
            "long": long}


@contextlib.contextmanager
def fifo_video(fifo: Path, video: Path, reader: subprocess.Popen[bytes]) -> Iterator[None]:
    """Write `video`'s bytes into the named pipe `fifo` once the process `reader` has opened it,
    and hold the pipe open for the block: the reader, having read every frame, waits for more,
    so a run is deterministically still going (for a signal) until the block ends and closes
    the pipe (the reader then sees the end). Nothing happens if `reader` exits first."""
    fd = None
    while fd is None and reader.poll() is None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader yet
            if exc.errno != errno.ENXIO:
                raise
            time.sleep(0.02)
    try:
        if fd is not None:
            os.set_blocking(fd, True)
            with contextlib.suppress(BrokenPipeError):
                data = memoryview(video.read_bytes())
                while data:
                    data = data[os.write(fd, data):]
        yield
    finally:
        if fd is not None:
            os.close(fd)
