"""The one base class of grefel's expected errors (no project imports: every layer may use it).

An expected error is one a user can cause and fix: a bad file, a bad option value, a dataset in
the wrong layout, a disk that is full. Each library module keeps its own class (CheckpointError,
DatasetError, ExportError, ...), and each of those also derives from `GrefelError`, so the
command line's top-level handler (grefel.cli.main) needs one clause to turn any of them into one
`Error: ...` line and exit status 1, and can tell them from a bug, which gets a crash report.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["ConfigError", "GrefelError", "OutputPathError", "first_line"]


class GrefelError(Exception):
    """An error a user can act on; its message names the file or option and what to do."""


class ConfigError(GrefelError, ValueError):
    """A settings dataclass (grefel.config, PredictOptions, ServeOptions, ExportOptions, ...)
    was given a value outside its declared range (grefel.ranges)."""


class OutputPathError(GrefelError, OSError):
    """An output a command was told to write (`--json PATH`, `--out PATH`) cannot be written;
    the message names the option and the path (grefel.fileio.write_record)."""


def first_line(exc: BaseException, limit: Optional[int] = None) -> str:
    """An unexpected error in one line: "Type: the first line of its message" (at most `limit`
    characters of it), the type alone when the message is empty."""
    text = (str(exc).strip().splitlines() or [""])[0][:limit]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
