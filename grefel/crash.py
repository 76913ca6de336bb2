"""Crash reports: what the command line saves when a command fails with an unexpected error.

An expected error (grefel.errors.GrefelError, an OSError, a bad option) ends a command in one
`Error: ...` line. Anything else is a bug in grefel or a library under it; the user then gets
one line too, `Error: internal error (<Type>: <message>); a report was saved to <path>`, and the
full story goes to a file they can attach to an issue: the traceback, the command line, the
versions of Python, grefel and the libraries that matter, and the platform.

Where: $GREFEL_CRASH_DIR, else $XDG_CACHE_HOME/grefel/crash, else ~/.cache/grefel/crash (beside
the aligned-face cache, grefel.align_data.default_cache), one `<timestamp>-<pid>.txt` per crash,
written atomically (grefel.fileio). Torch-free: the versions are read from package metadata, so
saving a report imports nothing that could fail again.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

from grefel.fileio import atomic_write_bytes, cache_folder

__all__ = ["CRASH_DIR_ENV", "crash_dir", "report_text", "save_report"]

CRASH_DIR_ENV = "GREFEL_CRASH_DIR"
# Distributions whose versions go into a report (the first installed name of each group).
PACKAGES = (("grefel",), ("torch",), ("onnxruntime", "onnxruntime-gpu"), ("onnx",),
            ("tensorrt",), ("numpy",), ("opencv-python", "opencv-python-headless"), ("click",))


def crash_dir() -> Path:
    """The folder crash reports go to (see the module docstring)."""
    if os.environ.get(CRASH_DIR_ENV):
        return Path(os.environ[CRASH_DIR_ENV]).expanduser()
    return cache_folder("crash")


def _version(names: Sequence[str]) -> str:
    for name in names:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{names[0]} not installed"


def report_text(exc: BaseException, argv: Optional[Sequence[str]] = None) -> str:
    """The report of `exc`: command line, versions, platform, then the full traceback."""
    argv = list(sys.argv if argv is None else argv)
    lines = [
        "grefel crash report",
        f"time: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"command: {' '.join(argv)}",
        f"cwd: {os.getcwd()}",
        f"python: {platform.python_version()} ({sys.executable})",
        f"platform: {platform.platform()} ({platform.machine()})",
        "packages: " + ", ".join(_version(names) for names in PACKAGES),
        "",
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip(),
        "",
    ]
    return "\n".join(lines)


def save_report(exc: BaseException, argv: Optional[Sequence[str]] = None) -> Path:
    """Write the report of `exc` into crash_dir() and return its path (OSError when it cannot
    be written: the caller then shows the traceback instead)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = crash_dir() / f"{stamp}-{os.getpid()}.txt"
    atomic_write_bytes(path, report_text(exc, argv).encode("utf-8", errors="backslashreplace"))
    return path
