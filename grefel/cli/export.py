"""`grefel export`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from grefel.cli.app import CONTEXT, cli
from grefel.cli.common import (
    EXPORT,
    check_outputs,
    inside,
    model_or_default,
    write_json,
)


@cli.command(
    "export",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  grefel export runs/demo/train/best.safetensors --fp16
  grefel export --onnx-only                # the model that ships inside grefel
  grefel export runs/demo/train/best.safetensors --target trt8.5 --onnx-only
  grefel export engines/best.onnx --fp16 --max-batch 8 --verify   # on the Jetson
  grefel export runs/demo/train/best.safetensors --int8 --calib-data runs/demo/synthfer --onnx-only
  grefel export engines/best.int8.onnx --int8 --max-batch 8 --verify   # on the Jetson
  grefel export runs/demo/train/best.safetensors --fp16 --triton model_repository
  grefel export runs/demo/train/best.safetensors --deepstream deepstream
""",
)
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                required=False)
@EXPORT
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the gate results as JSON here.")
@click.option("--max-pixels", type=click.IntRange(min=0),
              help="Largest --calib-data image decoded, in pixels (0 = no limit) [default: "
                   "$GREFEL_MAX_PIXELS, else 89,478,485].")
@click.option("-v", "--verbose", is_flag=True,
              help="Also print each stage's details (lint reports, per-batch parity, captured "
                   "third-party warnings); NAME.checks.json keeps them either way.")
@click.pass_context
def export_cmd(ctx: click.Context, source: Path, json_path: Optional[Path],
               max_pixels: Optional[int], verbose: bool, **params: Any) -> None:
    """Checkpoint (.safetensors) or ONNX -> checked ONNX -> TensorRT engine + sidecar.

    Without SOURCE, the default model that ships inside grefel: its checkpoint where torch is
    installed, else its ONNX. Work happens in a hidden `.export-<pid>-*` folder inside --out;
    the ones that killed exports left behind are removed first.
    """
    import dataclasses

    from export import ExportError
    from export.pipeline import run_export
    from grefel.contract import set_max_pixels
    from grefel.fileio import new_run_folder

    if max_pixels is not None:
        set_max_pixels(max_pixels)
    source = source if source is not None else _default_source()
    opts = EXPORT.build(params)
    _check_io(source, opts, json_path)
    if opts.out is None:  # a new run folder: nothing in it to replace
        opts = dataclasses.replace(opts, out=new_run_folder("export", opts.name or source.stem))
    try:
        result = run_export(source, opts, log=lambda s: click.echo(s, err=True), verbose=verbose)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    if json_path is not None:
        write_json(json_path, {"exit_code": result.exit_code, **result.gates}, "gate results JSON")
    click.echo(result.message)
    for path in result.artifacts:
        click.echo(str(path))
    ctx.exit(result.exit_code)


def _default_source() -> Path:
    """The model that ships inside grefel: its checkpoint where torch is installed, else its
    ONNX."""
    import importlib.util

    has_torch = importlib.util.find_spec("torch") is not None
    return model_or_default(None, "checkpoint" if has_torch else "onnx")


def _check_io(source: Path, opts: Any, json_path: Optional[Path]) -> None:
    """The inputs against every output the export will write, and the Triton rules, before
    anything is opened."""
    from export.deepstream import CONFIG_NAME, LABELS_NAME
    from export.pipeline import planned_outputs
    from export.triton import MODEL_NAME
    from grefel.fileio import Input, Output, display_path, model_inputs

    if opts.triton is not None and not opts.dynamic:
        raise click.BadParameter("a Triton repository with dynamic batching needs a dynamic "
                                 "batch: drop --static", param_hint="--triton")
    given = opts.out is not None
    check_outputs(
        [*model_inputs("SOURCE", source),
         Input("--calib-data", opts.calib_data, "the calibration images", folder=True)],
        [Output("--out", opts.out, folder=True, owner="export",
                writes=planned_outputs(source, opts) if given else ()),
         Output("--json", json_path), Output("--timing-cache", opts.timing_cache),
         Output("--triton", opts.triton, folder=True, writes=(MODEL_NAME,)),
         Output("--deepstream", opts.deepstream, folder=True, writes=(CONFIG_NAME, LABELS_NAME))])
    if opts.triton is not None and given and inside(opts.out, opts.triton):
        raise click.BadParameter(f"{display_path(opts.out)} is in the Triton repository "
                                 f"{display_path(opts.triton)}, where Triton takes every folder "
                                 "(the export's work folder too) for a model: give --out "
                                 "another folder", param_hint="--out")
