"""`grefel eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from grefel.cli.app import cli
from grefel.cli.common import (
    ALIGN,
    EVAL,
    align_options,
    check_align_options,
    check_outputs,
    model_or_default,
    user_error,
    write_json,
    wrote,
)


@cli.command(
    "eval",
    epilog="""\b
Examples:
  grefel eval runs/demo/train/best.safetensors --data runs/demo/synthfer
  grefel eval --data data/facial_expressions   # the model that ships inside grefel
  grefel eval runs/demo/train/best.safetensors --data data/rafdb --split test --out runs/demo/eval
  grefel eval engines/best.onnx --data runs/demo/synthfer \\
      --reference runs/demo/train/best.safetensors
  grefel eval engines/best.int8.onnx --data runs/demo/synthfer --threads 2 \\
      --reference runs/demo/train/best.safetensors
  grefel eval engines/best_fp16_b8.engine --data runs/demo/synthfer   # on the GPU that built it
""",
)
@click.argument("checkpoint", metavar="[MODEL]", type=click.Path(dir_okay=False), required=False)
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@EVAL
@click.option("--out", type=click.Path(file_okay=False),
              help="Report folder [default: a new runs/eval/MODEL-SPLIT, -2, -3, ...].")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="FP32 checkpoint to compare with over the same images: both accuracies and "
                   "the export gates' agreement (decisive flips, |dp|, NaN).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write JSON here.")
@align_options
def eval_(checkpoint: Optional[str], data: str, out: Optional[str], reference: Optional[str],
          json_path: Optional[str], align_cache: str, **params: Any) -> None:
    """Accuracy, macro-F1, confusion, calibration, embedding and per-group bias of MODEL.

    MODEL is a checkpoint (.safetensors, PyTorch), an exported .onnx (FP32, FP16 or INT8; ONNX
    Runtime) or a TensorRT .engine, fed by the one preprocessing path; without MODEL, the
    default model that ships inside grefel (its ONNX). Prints a table on stdout; writes
    metrics.json, confusion.json and PNG plots to --out.
    """
    from grefel.runtime.torch_backend import prefer_passive_openmp

    prefer_passive_openmp()  # before anything imports torch (docs/predict.md, --threads)
    from grefel.checkpoint import CheckpointError
    from grefel.data import DatasetError
    from grefel.evaluate import (
        EvalError,
        alignment_mismatch,
        evaluate_model,
        format_report,
    )
    from grefel.progress import Progress
    from grefel.train_state import TrainingError

    alignment, opts = ALIGN.build(params), EVAL.build(params)
    check_align_options(click.get_current_context(), alignment.mode, data, opts.dataset)
    model = _check_io(checkpoint, data, out, reference, json_path, align_cache)
    if out is None:
        from grefel.fileio import new_run_folder

        out = str(new_run_folder("eval", f"{model.stem}-{opts.split}"))
    try:
        report = evaluate_model(model, data, opts, out=out, reference=reference,
                                alignment=alignment, align_cache=align_cache or None,
                                progress=lambda what, total: Progress(what, "images", total))
    except (CheckpointError, DatasetError, EvalError, TrainingError, OSError) as exc:
        raise user_error(exc) from None
    click.echo(format_report(report))
    if alignment_mismatch(report):
        click.echo(f"\n{alignment_mismatch(report)}", err=True)
    wrote(out, "metrics.json, confusion.json, PNG plots")
    if json_path:
        write_json(json_path, report, "report JSON")


def _check_io(checkpoint: Optional[str], data: str, out: Optional[str],
              reference: Optional[str], json_path: Optional[str], align_cache: str) -> Path:
    """The model (MODEL, or the one that ships inside grefel), the data and the reference
    against the outputs, before anything is opened; returns the model's path."""
    from grefel.evaluate import OUTPUT_NAMES
    from grefel.fileio import Input, Output, model_inputs

    model = model_or_default(checkpoint)
    if not model.is_file():
        raise click.ClickException(f"{model}: no such model file")
    check_outputs(
        [*model_inputs("MODEL", model), Input("--data", data, "the dataset folder", folder=True),
         *model_inputs("--reference", reference, "the reference checkpoint")],
        [Output("--out", out, folder=True, writes=OUTPUT_NAMES, owner="eval"),
         Output("--json", json_path),
         Output("--align-cache", align_cache or None, folder=True)])
    if reference is not None and not Path(reference).is_file():
        raise click.BadParameter(f"{reference}: no such checkpoint", param_hint="--reference")
    return model
