"""What the commands share: the generated option groups (grefel.cli.options), the one --json
writer, the one line per written output, the checks of inputs against outputs, and small option
types."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import click

from benchmarks.options import BenchOptions
from export.options import ExportOptions, TritonRepoOptions
from grefel.cli.options import OptionGroup
from grefel.config import DataConfig, EvalOptions, FaceAlignment, TrainConfig
from grefel.predict import PredictOptions
from grefel.serve import ServeOptions

# The options generated from the settings dataclasses (grefel.cli.options): how faces are found
# and prepared (predict, serve), the same with the dataset mode --align-faces (train, eval,
# pretrain), and the commands' own settings around them.
FACE = OptionGroup(FaceAlignment, prefix="face_", skip=("mode",))
ALIGN = OptionGroup(FaceAlignment, prefix="face_", when="[--align-faces detect/auto] ",
                    plain=("mode",))
ALIGN_CACHE = OptionGroup(DataConfig, only=("align_cache",))
TRAIN_DATA = OptionGroup(DataConfig, nested={"face": ALIGN})
TRAIN = OptionGroup(TrainConfig)
PREDICT = OptionGroup(PredictOptions, nested={"face": FACE})
SERVE = OptionGroup(ServeOptions, nested={"face": FACE})
BENCH = OptionGroup(BenchOptions)
EVAL = OptionGroup(EvalOptions)
EXPORT = OptionGroup(ExportOptions,
                     nested={"triton_repo": OptionGroup(TritonRepoOptions, prefix="triton_")})


def ranged_type(cls: type, name: str) -> Any:
    """The Click type of the option for field `name` of the dataclass `cls` that owns it: its
    declared range (grefel.ranges), so the command line refuses a value while parsing with the
    rule the dataclass applies as a library; never retyped here."""
    from grefel.ranges import click_type

    return click_type(cls, name)


def model_or_default(path: Optional[Any], kind: str = "onnx") -> Path:
    """`path`, or the model that ships inside grefel (grefel.runtime.default_model), named on
    stderr."""
    if path is not None:
        return Path(path)
    from grefel.runtime.default_model import DefaultModelError, default_model, describe

    try:
        found = default_model(kind)
    except DefaultModelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"using the {describe(found)}", err=True)
    return found


def default_train_folder(preset: str) -> str:
    """A new runs/train/PRESET (-2, ...); under torchrun every rank must name the same folder,
    so there it is runs/train/PRESET itself (rank 0 locks it; a second run there is refused)."""
    import os

    from grefel.fileio import RUNS, new_run_folder

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return str(RUNS / "train" / preset)
    return str(new_run_folder("train", preset))


def wrote(path: Any, what: str) -> None:
    """The one line per output that every command prints on stderr: `wrote PATH (what)`."""
    from grefel.fileio import display_path

    click.echo(f"wrote {display_path(str(path))} ({what})", err=True)


def write_json(path: Any, record: Any, what: str) -> None:
    """Write a command's `--json` record: the one writer every command uses (atomic, through
    grefel.fileio.write_record); a path that cannot be written ends the command in one line
    naming --json and the path. Then the usual `wrote PATH (what)` line."""
    from grefel.errors import OutputPathError
    from grefel.fileio import write_record

    try:
        write_record(path, record, "--json")
    except OutputPathError as exc:
        raise click.ClickException(str(exc)) from None
    wrote(path, what)


def user_error(exc: BaseException) -> click.ClickException:
    """A ClickException from a library error; a DataLoader worker's traceback is cut off, an
    OSError becomes "FILE: what went wrong"."""
    if isinstance(exc, OSError) and exc.strerror:
        return click.ClickException(f"{exc.filename or ''}: {exc.strerror}".lstrip(": "))
    text = str(exc).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker process
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return click.ClickException(text)


def check_outputs(inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
    """grefel.fileio.check_outputs, its refusal as the one error line: every command that writes
    calls this once, before it opens anything for writing, with its inputs (a model's sidecar
    and a dataset folder included) and its outputs."""
    from grefel.fileio import OutputClash, check_outputs

    try:
        check_outputs(inputs, outputs)
    except OutputClash as exc:
        raise click.ClickException(str(exc)) from None


def align_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """eval and pretrain: `--align-faces` and the face options (ALIGN, generated from
    grefel.config.FaceAlignment, the settings predict and serve share), and `--align-cache`
    (DataConfig's)."""
    return ALIGN(ALIGN_CACHE(func))


def check_align_options(ctx: click.Context, mode: str, data: Optional[str],
                         dataset: str) -> None:
    """UsageError for face alignment settings given while --align-faces is off, or auto on a
    dataset where auto means off (a layout the library then reports if it cannot tell)."""
    given = [name for name in ALIGN.given_options(ctx) + ALIGN_CACHE.given_options(ctx)
             if name != "--align-faces"]
    if not given or mode == "detect":
        return
    if mode == "auto" and data:
        from grefel.data import DatasetError
        from grefel.data.datasets import resolve_kind

        try:
            kind = resolve_kind(data, dataset)
        except DatasetError:
            return
        if FaceAlignment(mode=mode).for_dataset(kind).mode == "detect":
            return
        raise click.UsageError(f"{', '.join(given)}: face alignment settings, but --align-faces "
                               f"auto is off for a {kind} dataset (faces as given): pass "
                               "--align-faces detect to align them")
    raise click.UsageError(f"{', '.join(given)}: face alignment settings, used with "
                           "--align-faces detect or auto (it is off)")


def inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies inside it (both resolved; neither need exist)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents
