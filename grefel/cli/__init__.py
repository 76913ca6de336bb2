"""The `grefel` command line: train, eval, export, predict, bench, info and helpers.

One module per command (grefel/cli/train.py, predict.py, ...), each a thin callback that maps
its options to one library call; what they share is grefel/cli/common.py, the options generated
from the settings dataclasses grefel/cli/options.py, the group grefel/cli/app.py. Heavy
libraries (torch, onnxruntime, TensorRT) are imported inside the callbacks, so `grefel --help`
and the engine-only commands run on a Jetson without torch.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import click

from grefel.cli import (  # noqa: F401 - each module adds its commands to the group
    bench,
    data,
    evaluate,
    export,
    info,
    predict,
    pretrain,
    serve,
    train,
    weights,
)
from grefel.cli.app import cli

# tests/test_run_folders.py reads the default run folder under its older name
from grefel.cli.common import default_train_folder as _default_train_folder  # noqa: F401

__all__ = ["cli", "main"]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The `grefel` console script, and the net under every command: no error escapes as a
    traceback.

    - a bad option or usage: Click's own message, exit status 2;
    - an expected error (grefel.errors.GrefelError: every library error class derives from it;
      an OSError; an optional package that is missing: MissingDependency, or a
      ModuleNotFoundError of one in grefel._lazy.OPTIONAL): one `Error: ...` line, exit 1;
    - Ctrl-C: `interrupted`, exit 130 (predict ends its run itself and says so);
    - stdout closed by its reader (`grefel ... | head`): a quiet exit;
    - anything else is a bug: one line `Error: internal error (<Type>: <message>); a report was
      saved to <path>` (grefel.crash: the traceback, command line and versions), exit 1.
    """
    import errno

    from grefel._lazy import OPTIONAL, MissingDependency, install_hint
    from grefel.errors import GrefelError
    from grefel.fileio import display_path

    def fail(line: str, code: int = 1) -> None:
        click.echo(line, err=True)
        sys.exit(code)

    try:
        from grefel.environment import check_environment

        check_environment()  # a bad GREFEL_* value is one line, before any command reads it
        code = cli.main(args=None if argv is None else list(argv), standalone_mode=False)
    except click.exceptions.Abort as exc:  # Click's form of KeyboardInterrupt and EOFError
        interrupted = isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt)
        fail("interrupted" if interrupted else "Aborted!", 130 if interrupted else 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MissingDependency as exc:
        fail(f"Error: {exc}")
    except ModuleNotFoundError as exc:
        name = (exc.name or "").split(".")[0]
        if name not in OPTIONAL:
            _internal_error(exc, argv)
        fail(f"Error: this command needs {name}, which is not installed. Install "
             f"{install_hint(name)}.")
    except GrefelError as exc:
        fail(f"Error: {exc}")
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # the reader of stdout went away: nothing left to say
            _silence_stdout()
            sys.exit(1)
        where = f"{display_path(exc.filename)}: " if exc.filename else ""
        fail(f"Error: {where}{exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - the net: a bug, reported once, with its report
        _internal_error(exc, argv)
    sys.exit(code if isinstance(code, int) else 0)


def _internal_error(exc: BaseException, argv: Optional[Sequence[str]]) -> None:
    """One line naming the unexpected error and the saved crash report (grefel.crash); exit 1.
    When the report cannot be saved, the traceback is shown instead: it is the only record."""
    import traceback

    from grefel.crash import crash_dir, save_report
    from grefel.errors import first_line
    from grefel.fileio import display_path

    what = first_line(exc)
    args = None if argv is None else [sys.argv[0], *argv]
    try:
        path = save_report(exc, args)
    except OSError as why:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        click.echo(f"Error: internal error ({what}); the report could not be saved to "
                   f"{display_path(crash_dir())} ({why.strerror or why}): the traceback is "
                   "above", err=True)
        sys.exit(1)
    click.echo(f"Error: internal error ({what}); a report was saved to {display_path(path)}",
               err=True)
    sys.exit(1)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe does not
    print "Exception ignored ... BrokenPipeError" (Python's documented remedy)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    main()
