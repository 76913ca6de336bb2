"""Atomic file writes and hashes (no torch: the engine-only Jetson path uses these too).

Every artifact grefel writes (checkpoints, sidecars, ONNX files, engines, reports) goes through
`atomic_writer`: the bytes land in a temporary file in the destination folder, are flushed to
disk, and replace the destination in one `os.replace`. A crash or a failed step leaves the
previous file intact and no half-written one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["RUNS", "UserTextError", "atomic_path", "atomic_write_bytes", "atomic_write_json",
           "display_path", "new_run_folder", "read_user_text", "sha256_file"]

RUNS = Path("runs")  # every command's default output folder: runs/<command>/<name>


def new_run_folder(command: str, name: str, root: Path = RUNS) -> Path:
    """Create and return `root/command/name`, or `name-2`, `name-3`, ... when that exists (as
    ultralytics' `increment_path`): the default output of a command is a folder no earlier run
    wrote, so it has one owner and nothing in it is replaced. An explicit `--out` bypasses this.
    """
    parent = Path(root) / command
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = parent / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()  # exclusive: two runs started together get different folders
        except FileExistsError:
            n += 1
            continue
        return path

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    For writers that want a file name (torch.save, onnx.save, safetensors.save_file). The file
    gets the permissions the umask gives any new file (mkstemp's are 0600, and some writers,
    safetensors' save_file among them, replace the temporary file with their own 0600 one, so
    the mode is set after the writer). An OSError without a file name (a full disk: ENOSPC from
    write or fsync) is given `path`'s.
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file where a folder of the path should be
        raise OSError(exc.errno, f"cannot make its folder ({exc.filename}: {exc.strerror})",
                      str(dest)) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        exc.filename = str(dest)
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
    except OSError as exc:
        exc.filename = exc.filename or str(dest)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def display_path(path: PathLike) -> str:
    """`path` as printable text: a file name whose bytes are not valid UTF-8 (Python holds them as
    lone surrogates, PEP 383) shows its bad bytes escaped as \\xNN, so it can be logged, put in a
    CSV / JSON record or a message without an encoding error, and still be recognised."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class UserTextError(ValueError):
    """A text file a user gave that cannot be read as text; the message names it and says what
    to do."""


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_user_text(path: PathLike) -> str:
    """The text of a file a user gave (classes.txt, a dataset's CSV splits and label lists,
    legend files, landmarks CSV): the one reader every such file goes through, so each gets the
    same decoding. UTF-8, with or without a byte-order mark (Excel's and Notepad's "UTF-8 with
    BOM": the mark is dropped, never part of the first name), or UTF-16 with its byte-order mark
    (Windows' "Unicode"); CRLF line ends are read as line ends by `str.splitlines` and `csv`.
    Anything else is a UserTextError naming the file: bytes that are not UTF-8, or NUL
    characters (UTF-16 without a mark). Callers strip the fields they take."""
    name = display_path(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UserTextError(f"{name}: cannot read ({exc.strerror or exc})") from None
    encoding = "utf-16" if raw.startswith(_UTF16_BOMS) else "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UserTextError(f"{name}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it "
                            "as UTF-8") from None
    if "\x00" in text:
        raise UserTextError(f"{name}: holds NUL characters (UTF-16 without a byte-order mark, "
                            "or not a text file); save it as UTF-8")
    return text
