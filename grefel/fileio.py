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
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["RUNS", "atomic_path", "atomic_write_bytes", "atomic_write_json", "display_path",
           "new_run_folder", "sha256_file", "write_record"]

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
    if _special(dest):
        with _written_through(dest) as tmp:
            yield tmp
        return
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


def _special(dest: Path) -> bool:
    """Whether `dest` must be written into rather than replaced: an existing device, FIFO or
    socket (/dev/null, a shell's `>(...)`), followed through symlinks, or any path under /dev or
    /proc (/dev/stdout is a link to /proc/self/fd/1, which can be a regular file: replacing the
    name would replace the link, and the process's stdout would never see the bytes)."""
    if os.path.abspath(dest).startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(dest).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def _written_through(dest: Path) -> Iterator[Path]:
    """atomic_path for a device, FIFO or socket: it cannot be replaced (a rename over /dev/null
    by root would remove the device and leave a plain file), so the bytes written to the
    temporary path are copied into it, as a shell redirection would write them; a full device
    (/dev/full: ENOSPC) is an OSError naming `dest`."""
    folder = tempfile.mkdtemp(prefix=".grefel-")
    tmp_path = Path(folder) / "data"
    try:
        yield tmp_path
        try:
            with open(tmp_path, "rb") as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
        except OSError as exc:
            exc.filename = exc.filename or str(dest)
            raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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


def write_record(path: PathLike, record: Any, option: str = "--json") -> None:
    """Write a command's JSON record (`--json PATH`) atomically: the one writer every command's
    `--json` goes through. Any OSError (a folder that is a file, no permission, a full disk) is
    an OutputPathError naming the option and the path, for one `Error:` line."""
    from grefel.errors import OutputPathError

    try:
        atomic_write_json(path, record)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            why = "a file stands where its folder should be"
        raise OutputPathError(f"{option} {display_path(path)}: cannot write ({why})") from None


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
