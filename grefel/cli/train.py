"""`grefel train`."""

from __future__ import annotations

from typing import Any, Callable, Optional

import click

from grefel.cli.app import cli
from grefel.cli.common import (
    ALIGN,
    TRAIN,
    TRAIN_DATA,
    check_align_options,
    check_outputs,
    default_train_folder,
    user_error,
    write_json,
    wrote,
)
from grefel.cli.options import was_given


def _resume_epilog() -> str:
    """The --resume table of `grefel train --help`, from grefel.train_state (torch-free)."""
    from grefel.train_state import RESUME_MAY_CHANGE

    rows = "\n".join(f"  {k.split('.', 1)[1]:<9} {why}" for k, why in RESUME_MAY_CHANGE.items())
    return ("\n\b\n--resume: options not given keep the run's values (OUT/config.json); a "
            "resume may change\n" + rows + "\n  anything else (lr, gamma, batch size, preset, "
            "variant, loss weights, data,\n  augmentation, seed, ...) changes what the run "
            "means: refused, with the list\n  of differences. config.json records each resume "
            "and what it changed.\n")


def _train_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The `grefel train` options: DataConfig's (its face settings the ALIGN group) and
    TrainConfig's, generated from their fields; then the command's own."""
    from grefel.train_state import resume_help

    func = click.option("--json", "json_path", type=click.Path(dir_okay=False),
                        help="Write the run summary as JSON.")(func)
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override any DataConfig/TrainConfig field (data.KEY for data, "
                             "data.face.KEY for the face settings).")(func)
    func = click.option("--resume", is_flag=True, help=resume_help())(func)
    return TRAIN_DATA(TRAIN(func))


@cli.command(
    epilog="""\b
Examples:
  grefel train --data runs/demo/synthfer --preset tiny --epochs 8 --batch-size 32 --lr 1e-3 \\
      --freeze landmark --pretrained-mobilefacenet runs/demo/pretrained/mobilefacenet.safetensors \\
      --pretrained-ir50 runs/demo/pretrained/ir50.safetensors --image-warmup 150 --no-augment \\
      --out runs/demo/train   # make demo
  grefel train --data data/facial_expressions --preset tiny --freeze landmark --image-warmup 400 \\
      --refine-per-class 300 --no-refine-repeat --augment-policy light --select macro_f1 \\
      --epochs 20 --gamma 0.85 --batch-size 48 --lr 1e-3 --out runs/real/seed0 \\
      --pretrained-mobilefacenet runs/real/pretrained/mobilefacenet_mesh.safetensors \\
      --pretrained-ir50 runs/real/pretrained/ir50_mesh.safetensors       # make real-model
  grefel train --out runs/demo/train --resume --epochs 12
  grefel train --data data/rafdb --preset paper --refine-per-class 32 --label-smoothing 0.11
  grefel train --data data/rafdb --preset paper --init ckpt/poster_raf.safetensors --lr 1e-5 \\
      --out runs/finetune
  torchrun --nproc_per_node 2 -m grefel train --data data/rafdb --preset paper --out runs/ddp
"""
    + _resume_epilog()
)
@_train_options
def train(**opts) -> None:
    """Train GReFEL on a dataset folder (Adam, exponential LR decay, eq. 23 loss).

    Under torchrun it runs DDP (gloo on CPU, nccl on GPU); only rank 0 writes files.
    """
    import json

    from grefel.data import DatasetError
    from grefel.train import TrainingError, configs_from_options, run_training
    from grefel.weights import WeightsError

    json_path = opts.pop("json_path")
    if opts["root"] is None and not opts["resume"]:
        raise click.UsageError("Missing option '--data' (needed unless --resume).")
    if not opts["out"]:
        if opts["resume"]:
            raise click.UsageError("Missing option '--out' (the run folder to resume).")
        opts["out"] = default_train_folder(opts["preset"])
    ctx = click.get_current_context()
    opts["face"] = ALIGN.build(opts)
    given = {k for k in opts if was_given(ctx, k)}
    given |= {f"face.{name}" for name in ALIGN.given(ctx)}
    try:
        d, t = configs_from_options(opts, opts.pop("overrides"), given=given)
    except TrainingError as exc:
        raise user_error(exc) from None
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    check_align_options(ctx, d.face.mode, d.root, d.dataset)
    _check_io(d, t, json_path)
    try:
        summary = run_training(d, t)
    except (DatasetError, TrainingError, WeightsError, OSError) as exc:
        raise user_error(exc) from None
    if summary["rank"] == 0:
        click.echo(json.dumps(summary, indent=2))
        wrote(summary["out"], "run folder: best and last .safetensors, config.json, metrics")
        if json_path:
            write_json(json_path, summary, "summary JSON")


def _check_io(d: Any, t: Any, json_path: Optional[str]) -> None:
    """The data and the weights a run reads against what it writes, before anything is
    opened."""
    from grefel.fileio import Input, Output, model_inputs
    from grefel.train_state import RUN_FILES

    check_outputs(
        [Input("--data", d.root or None, "the dataset folder", folder=True),
         *model_inputs("--init", t.init or None, "the checkpoint"),
         *model_inputs("--pretrained-ir50", t.pretrained_ir50 or None, "the IR-50 weights"),
         *model_inputs("--pretrained-mobilefacenet", t.pretrained_mobilefacenet or None,
                       "the MobileFaceNet weights")],
        [Output("--out", t.out, folder=True, writes=RUN_FILES, owner="train"),
         Output("--json", json_path),
         Output("--align-cache", d.align_cache or None, folder=True)])
