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
import signal
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

from grefel.errors import GrefelError, OutputPathError

__all__ = ["RUNS", "RUN_MARKER", "Input", "Output", "OutputClash", "UserTextError", "atomic_path",
           "atomic_write_bytes", "atomic_write_json", "cache_folder", "check_outputs",
           "claim_run_folder", "deferred_signals", "display_path", "left_by_dead_run",
           "model_inputs", "new_run_folder", "pid_alive", "read_user_text", "run_owner",
           "sha256_file", "why_unwritable", "write_record"]

RUNS = Path("runs")  # every command's default output folder: runs/<command>/<name>
RUN_MARKER = ".grefel-run"  # {"command": ...} in a run folder: the command that owns it


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
        claim_run_folder(path, command)
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


@contextlib.contextmanager
def deferred_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)
                     ) -> Iterator[None]:
    """Writes that belong together (a checkpoint and the resumable state beside it) finish
    before Ctrl-C or SIGTERM takes effect: a signal that arrives inside is held and delivered
    again, to the handler that was in place, once the block is done. Each file is atomic on its
    own (atomic_path); this keeps the set consistent, so an interrupted run can always resume
    from its last state. Outside the main thread it does nothing (signals go there only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: List[int] = []
    previous = {n: signal.getsignal(n) for n in signums}
    for n in signums:
        signal.signal(n, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for n, handler in previous.items():
            signal.signal(n, handler)
        if held:
            signal.raise_signal(held[0])


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


def left_by_dead_run(entry: Path, prefix: str) -> bool:
    """Whether `entry`, a work folder named `<prefix><pid>-...`, was left by a run whose process
    no longer runs (or has the older name without a pid, which no running grefel makes): a
    killed run's leftover that may be removed (export's `.export-<pid>-*`, the Triton
    repository's work folders). This process's own and another live one's are kept."""
    if not entry.is_dir() or entry.is_symlink():
        return False
    rest = entry.name[len(prefix):]
    head = rest.split("-", 1)[0]
    if not (head.isdigit() and "-" in rest):
        return True
    pid = int(head)
    return pid != os.getpid() and not pid_alive(pid)


def cache_folder(name: str) -> Path:
    """grefel's cache folder `name`: $XDG_CACHE_HOME/grefel/NAME, else ~/.cache/grefel/NAME
    (the aligned face crops, crash reports)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "grefel" / name


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (another user's live process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def why_unwritable(exc: OSError) -> str:
    """Why an output could not be written, in words for its one error line: a file where one
    of its folders should be (FileExistsError / NotADirectoryError from making the folders),
    else the system's reason (no permission, a full disk)."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return "a file stands where its folder should be"
    return exc.strerror or str(exc)


def write_record(path: PathLike, record: Any, option: str = "--json") -> None:
    """Write a command's JSON record (`--json PATH`) atomically: the one writer every command's
    `--json` goes through. Any OSError (a folder that is a file, no permission, a full disk) is
    an OutputPathError naming the option and the path, for one `Error:` line."""
    try:
        atomic_write_json(path, record)
    except OSError as exc:
        raise OutputPathError(f"{option} {display_path(path)}: cannot write "
                              f"({why_unwritable(exc)})") from None


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# --- outputs never alias inputs (issue 27.1) ---------------------------------------------------


class OutputClash(GrefelError, ValueError):
    """An output path that would replace one of the command's inputs, or another output; the
    message is one line naming both options and the path."""


@dataclass(frozen=True)
class Input:
    """A path a command reads.

    Args:
        option: how the command line names it ("SRC", "--data", "-w").
        path: the path as given (None: not given, or not a path, e.g. a camera index).
        what: what it is, for the message ("the input image", "the sidecar of the model m.onnx").
        folder: a folder whose files are read (a dataset, a predicted folder): an existing file
            anywhere under it is an input too.
        suffixes: for a folder whose files are read by kind (predict reads images and videos,
            not its own earlier records), the suffixes (lower case, with the dot) of the files
            that count as inputs; empty: every file.
    """

    option: str
    path: Optional[PathLike]
    what: str
    folder: bool = False
    suffixes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Output:
    """A path a command writes.

    Args:
        option: how the command line names it ("--out", "--json").
        path: the path as given (None: not given).
        folder: a folder written into rather than a file replaced.
        writes: for a folder, the names (files or folders, replaced whole) it writes there that
            an earlier file may already have; names the command makes new (timestamped, or
            mirroring a source) need not be listed.
        owner: for a run folder, the command it belongs to ("train", "eval", ...): a folder
            that another command's run owns (its RUN_MARKER, written by `claim_run_folder`
            where the command makes its folder) is refused.
        beside: for a companion file the user did not name (a checkpoint's sidecar, the plot
            beside --out), the output it goes with: an existing companion is replaced only
            where that output exists too (an earlier run's pair), never a file of the user's
            that merely has the name (notes.json beside a new notes.safetensors).
    """

    option: str
    path: Optional[PathLike]
    folder: bool = False
    writes: Tuple[str, ...] = ()
    owner: Optional[str] = None
    beside: Optional[PathLike] = None


def model_inputs(option: str, path: Optional[PathLike], what: str = "the model") -> List[Input]:
    """A model file and the sidecar `NAME.json` its reader opens beside it (a checkpoint's
    config and hash, an ONNX model's or engine's class names): both are inputs."""
    if path is None:
        return []
    side = Path(path).with_suffix(".json")
    return [Input(option, path, what),
            Input(option, side, f"the sidecar of {what} {display_path(Path(path).name)}")]


def check_outputs(inputs: Sequence[Input], outputs: Sequence[Output]) -> None:
    """Refuse, before anything is opened for writing, an output that would destroy an input or
    another output: OutputClash with one line naming both options and the path.

    Paths are compared as the files they are (os.path.realpath: `./`, relative and absolute
    spellings, symbolic links; the device and inode: hard links), existing or not. An output
    file may not be an input file, an input folder, an existing file inside an input folder,
    or another output (or be inside a folder another output replaces); an output folder may not
    be an input, and the names it `writes` are outputs files in their own right. An output
    folder that merely contains an input (export --out into the model's folder), or lies
    inside an input folder (predict DIR --annotate DIR/annotated), is fine.
    """
    claims: List[Tuple[Output, Path, bool]] = []  # (owner, path, replaced: False = written into)
    for out in outputs:
        if out.path is None:
            continue
        claims.append((out, Path(out.path), not out.folder))
        claims += [(out, Path(out.path) / name, True) for name in out.writes]
    given = [i for i in inputs if i.path is not None]
    for out, path, replaced in claims:
        for inp in given:
            _refuse_input(out, path, replaced, inp)
    for k, (first, a, a_replaced) in enumerate(claims):
        for second, b, b_replaced in claims[k + 1:]:
            if second is first or not (a_replaced or b_replaced):
                continue
            if _same(a, b):
                verb = "is also"
            elif a_replaced and _within(b, a):
                verb = "is inside"
            elif b_replaced and _within(a, b):
                verb = "would replace"
            else:
                continue
            its = "" if b == Path(second.path) else f"its {display_path(b)} "  # type: ignore
            what = (f"{first.option} writes it too" if verb == "is also"
                    and a != Path(first.path) else f"{verb} {_claim(first, a)}")  # type: ignore
            raise OutputClash(f"{second.option} {display_path(second.path)}: {its}{what}; give "
                              "each output its own path")
    for out in outputs:
        if (out.beside is not None and out.path is not None and os.path.lexists(out.path)
                and not os.path.lexists(out.beside)):
            raise OutputClash(f"{out.option} {display_path(out.path)}: exists without "
                              f"{display_path(Path(out.beside).name)} beside it, so it is not "
                              "an earlier run's; it would be replaced: move it, or choose "
                              "another name")
    owned = [out for out in outputs if out.owner and out.path is not None]
    for out in owned:
        other = run_owner(Path(out.path))  # type: ignore[arg-type]
        if other is not None and other != out.owner:
            raise OutputClash(f"{out.option} {display_path(out.path)}: is the folder of a "
                              f"`grefel {other}` run; `grefel {out.owner}` would write its own "
                              "files there (" + ", ".join(out.writes[:3] or ("its files",))
                              + "); choose another folder")


def run_owner(folder: Path) -> Optional[str]:
    """The command whose run `folder` is (its RUN_MARKER), or None: no marker (a new folder, or
    one written before markers existed) or an unreadable one."""
    try:
        command = json.loads((folder / RUN_MARKER).read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    return command if isinstance(command, str) else None


def claim_run_folder(folder: Path, command: str) -> Path:
    """Make `folder` (and its parents) and mark it as a run of `command`, unless it is marked
    already: where train, eval, export, bench and serve make their output folder, so a run
    folder has one owner (another command's check_outputs refuses it). Returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if run_owner(folder) is None:
        atomic_write_json(folder / RUN_MARKER, {"command": command})
    return folder


def _refuse_input(out: Output, path: Path, replaced: bool, inp: Input) -> None:
    """OutputClash when the output claim `path` of `out` (a file or folder it replaces, or a
    folder it writes into) would destroy the input `inp`."""
    src = Path(inp.path)  # type: ignore[arg-type]
    head = f"{out.option} {display_path(out.path)}"
    via = "" if path == Path(out.path) else f"would replace {display_path(path)}, which "
    fix = "choose another folder" if out.folder else "choose another path"
    if _same(path, src):
        raise OutputClash(f"{head}: {via}is {inp.what} ({inp.option}); {fix}")
    if not replaced:
        return
    if _within(src, path):
        raise OutputClash(f"{head}: {via or 'would replace a folder that '}holds {inp.what} "
                          f"{display_path(src)} ({inp.option}); {fix}")
    if (inp.folder and os.path.lexists(path) and _within(path, src)
            and (not inp.suffixes or path.suffix.lower() in inp.suffixes)):
        raise OutputClash(f"{head}: {via}is a file in {inp.what} {display_path(src)} "
                          f"({inp.option}); {fix} outside it")


def _claim(out: Output, path: Path) -> str:
    """An output claim as the message names it: the option, or a path the option writes."""
    if path == Path(out.path):  # type: ignore[arg-type]
        return out.option
    return f"{display_path(path)}, written by {out.option}"


def _real(path: Path) -> str:
    """The path with every symbolic link resolved in order, before a `..` after it is applied
    (`link/../x` is x beside the link's target, as the kernel opens it; os.path.abspath first
    would drop `link/..` as text and miss the file the kernel writes)."""
    return os.path.realpath(path)


def _same(a: Path, b: Path) -> bool:
    """The same file or folder: one real path, or (existing) one device and inode."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist
        return False


def _within(child: Path, parent: Path) -> bool:
    """`child` lies strictly inside the folder `parent` (real paths)."""
    real_child, real_parent = _real(child), _real(parent)
    return real_child.startswith(real_parent.rstrip(os.sep) + os.sep)


# --- the one reader of text files a user gives (issue 27.4) -------------------------------------


class UserTextError(GrefelError, ValueError):
    """A text file a user gave that cannot be read as text; the message names it and says what
    to do."""


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_user_text(path: PathLike,
                   error: Optional[Callable[[str], BaseException]] = None) -> str:
    """The text of a file a user gave (classes.txt, a dataset's CSV splits and label lists,
    legend files, landmarks CSV): the one reader every such file goes through, so each gets the
    same decoding. UTF-8, with or without a byte-order mark (Excel's and Notepad's "UTF-8 with
    BOM": the mark is dropped, never part of the first name), or UTF-16 with its byte-order mark
    (Windows' "Unicode"); CRLF line ends are read as line ends by `str.splitlines` and `csv`.
    Anything else is a UserTextError naming the file: bytes that are not UTF-8, or NUL
    characters (UTF-16 without a mark); `error`: the caller's own error class raised instead (a
    dataset reader's DatasetError). Callers strip the fields they take."""
    name, fail = display_path(path), error or UserTextError
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise fail(f"{name}: cannot read ({exc.strerror or exc})") from None
    encoding = "utf-16" if raw.startswith(_UTF16_BOMS) else "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise fail(f"{name}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it "
                            "as UTF-8") from None
    if "\x00" in text:
        raise fail(f"{name}: holds NUL characters (UTF-16 without a byte-order mark, "
                            "or not a text file); save it as UTF-8")
    return text
