"""`grefel predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from grefel.cli.app import cli
from grefel.cli.common import (
    PREDICT,
    check_outputs,
    model_or_default,
    write_json,
    wrote,
)


@cli.command(
    "predict",
    epilog="""\b
Examples:
  grefel predict photo.jpg                 # the model that ships inside grefel
  grefel predict photo.jpg --weights engines/best_fp16_b8.engine
  grefel predict faces/ -w runs/demo/train/best.safetensors --aligned --format csv --out p.csv
  grefel predict clip.mp4 --weights model.onnx --annotate clip_annotated.avi
  grefel predict 0 --weights engines/best_fp16_b8.engine --max-frames 300   # camera 0
  grefel predict clip.mp4 -w model.onnx --det-every 3 --det-size 320 --json summary.json
  grefel predict rtsp://camera.local:554/stream1 -w engines/best_fp16_b8.engine --show
  grefel predict group.jpg -w model.onnx --detector haar --margin 0.3
"""
)
@click.argument("src")
@click.option(
    "--weights",
    "-w",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A .engine (TensorRT), .onnx (ONNX Runtime) or .safetensors checkpoint [default: the "
         "model that ships inside grefel, docs/models.md].",
)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Records file, written line by line as produced; stdout when absent.",
)
@click.option(
    "--annotate",
    type=click.Path(path_type=Path),
    help="Annotated copy, written to exactly this name: .png/.jpg for an image, a folder for "
         "a folder, .avi/.mp4 for a video or camera (anything else is refused).",
)
@PREDICT
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    help="ONNX Runtime / PyTorch device (an engine always runs on the GPU).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the run summary (counts, skipped files, FPS, ms per stage) as JSON.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=0),
    help="Largest image or video frame decoded, in pixels (0 = no limit) [default: "
         "$GREFEL_MAX_PIXELS, else 89,478,485].",
)  # fmt: skip
@click.pass_context
def predict_command(
    ctx: click.Context,
    src: str,
    weights: Path,
    fmt: str,
    out: Optional[Path],
    annotate: Optional[Path],
    device: str,
    json_path: Optional[Path],
    max_pixels: Optional[int],
    **opts: Any,
) -> None:
    """Classify the faces in SRC: an image, a folder (recursive), a video file or a camera index.

    SIGTERM, SIGHUP and Ctrl-C end the run after writing the records so far and the summary;
    the exit status is then 128 + the signal number (143, 129, 130).
    """
    from grefel.runtime.torch_backend import prefer_passive_openmp

    prefer_passive_openmp()  # before anything imports torch (docs/predict.md, --threads)
    from grefel._lazy import MissingDependency
    from grefel.contract import ImageError, set_max_pixels
    from grefel.predict import OutputError, ShowError, run_predict, signals_end_run
    from grefel.runtime import BackendError
    from grefel.runtime.sources import SourceError, classify_source

    if max_pixels is not None:
        set_max_pixels(max_pixels)
    weights = model_or_default(weights)
    try:
        source = classify_source(src)
        _check_io(source, weights, out, annotate, json_path)
        with signals_end_run():
            summary = run_predict(
                source, weights, PREDICT.build(opts), fmt=fmt, out=out, annotate=annotate,
                device=None if device == "auto" else device,
                on_skip=lambda file, why: click.echo(f"skipped {file}: {why}", err=True),
            )  # fmt: skip
    except (BackendError, SourceError, MissingDependency, OutputError, ImageError,
            ShowError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt as exc:  # a signal before the stream began (loading the model)
        signum = getattr(exc, "signum", 2)
        click.echo(f"interrupted before any record was written (signal {signum})", err=True)
        ctx.exit(128 + signum)
    _report(ctx, summary, source, fmt, out, annotate, json_path)


def _check_io(source: Any, weights: Path, out: Optional[Path], annotate: Optional[Path],
              json_path: Optional[Path]) -> None:
    """The inputs (SRC, the model) against the outputs, before anything is opened."""
    from grefel.fileio import Input, Output, model_inputs
    from grefel.predict import plot_target
    from grefel.runtime.sources import media_suffixes

    kind = source.kind
    check_outputs(
        [Input("SRC", source.target if source.is_path else None, f"the input {kind}"
               if kind != "folder" else "the source folder", folder=kind == "folder",
               suffixes=media_suffixes()),
         *model_inputs("--weights", weights)],
        [Output("--out", out), Output("--annotate", annotate, folder=kind == "folder"),
         Output("--json", json_path),
         Output("the expression plot of --out", plot_target(out, source), beside=out)])


def _report(ctx: click.Context, summary: Any, source: Any, fmt: str, out: Optional[Path],
            annotate: Optional[Path], json_path: Optional[Path]) -> None:
    """The summary line, a line per file written, the --json record and the exit status."""
    from grefel.fileio import display_path
    from grefel.predict import annotated_what, plot_target

    click.echo(summary.describe(), err=True)
    if out is not None:
        wrote(out, f"records, {fmt}")
    if annotate is not None and summary.frames:
        wrote(annotate, annotated_what(source))
    if summary.plot is not None:
        wrote(summary.plot, "expression-over-time plot, PNG")
    elif summary.faces == 0 and plot_target(out, source) is not None:
        click.echo("no expression-over-time plot: no face was found in any frame", err=True)
    if json_path:
        write_json(json_path, summary.to_dict(), "summary JSON")
    if summary.signal:
        ctx.exit(128 + int(summary.signal))
    if summary.ended:  # a video that stopped before its declared end: records kept, exit 1
        raise click.ClickException(summary.ended)
    if summary.frames == 0:
        raise click.ClickException(f"{display_path(source.target)}: no readable image or frame")
