"""`grefel train`."""

from __future__ import annotations

import click
from click.core import ParameterSource

from grefel.cli.app import cli
from grefel.cli.common import (
    ALIGN,
    align_options,
    check_align_options,
    check_outputs,
    default_train_folder,
    ranged_type,
    user_error,
    write_json,
    wrote,
)
from grefel.config import DataConfig, TrainConfig


def _resume_epilog() -> str:
    """The --resume table of `grefel train --help`, from grefel.train_state (torch-free)."""
    from grefel.train_state import RESUME_MAY_CHANGE

    rows = "\n".join(f"  {k.split('.', 1)[1]:<9} {why}" for k, why in RESUME_MAY_CHANGE.items())
    return ("\n\b\n--resume: options not given keep the run's values (OUT/config.json); a "
            "resume may change\n" + rows + "\n  anything else (lr, gamma, batch size, preset, "
            "variant, loss weights, data,\n  augmentation, seed, ...) changes what the run "
            "means: refused, with the list\n  of differences. config.json records each resume "
            "and what it changed.\n")


def _train_options(func):
    """The `grefel train` options; defaults come from grefel.config.DataConfig / TrainConfig."""
    from grefel.config import (
        AUGMENT_POLICIES,
        AUTO_IMAGE_WARMUP,
        FREEZE_CHOICES,
    )
    from grefel.train_state import resume_help

    d, t = DataConfig(), TrainConfig()
    options = [
        click.option("--data", "root", type=click.Path(file_okay=False),
                     help="Dataset folder (e.g. from `grefel data synth`); required unless "
                          "--resume."),
        click.option("--dataset", default=d.dataset, help="Reader kind (auto detects)."),
        click.option("--val-split", default=d.val_split, help='Validation split; "" = none.'),
        click.option("--preset", type=click.Choice(["tiny", "paper"]), default=t.preset),
        click.option("--variant", type=click.Choice(["no_rb", "anchors", "mhsa", "both"]),
                     default=t.variant, help="Row of the paper's Table 2."),
        click.option("--epochs", type=ranged_type(TrainConfig, "epochs"), default=t.epochs),
        click.option("--batch-size", type=ranged_type(DataConfig, "batch_size"),
                     default=d.batch_size, help="Per process."),
        click.option("--out", type=click.Path(file_okay=False), default=t.out,
                     help="Run folder (checkpoints, metrics, config) [default: a new "
                          "runs/train/PRESET, -2, -3, ...; under torchrun runs/train/PRESET]."),
        click.option("--lr", type=ranged_type(TrainConfig, "lr"),
                     default=t.lr, help="Adam learning rate."),
        click.option("--gamma", type=ranged_type(TrainConfig, "gamma"),
                     default=t.gamma, help="LR decay per epoch."),
        click.option("--lambda-cls", type=ranged_type(TrainConfig, "lambda_cls"),
                     help="Eq. 23 weight [preset: 1]."),
        click.option("--lambda-anchor", type=ranged_type(TrainConfig, "lambda_anchor"),
                     help="Eq. 23 weight [preset: 1]."),
        click.option("--lambda-center", type=ranged_type(TrainConfig, "lambda_center"),
                     help="Eq. 23 weight [preset: 1]."),
        click.option("--anchors-per-class", type=ranged_type(TrainConfig, "anchors_per_class"),
                     help="K [preset: 10]."),
        click.option("--delta", type=ranged_type(TrainConfig, "delta"),
                     help="Eq. 14 softmax steepness [preset: 1]."),
        click.option("--head-dropout", type=ranged_type(TrainConfig, "head_dropout"),
                     help="Eq. 9 MLP dropout [preset: 0.5]."),
        click.option("--augment/--no-augment", default=d.augment,
                     help="Training augmentation (off: eval resize only)."),
        click.option("--augment-policy", type=click.Choice(list(AUGMENT_POLICIES)),
                     default=d.augment_policy,
                     help="paper: shift 8 px, rotation 10 deg, flip, colour jitter 0.3, erasing; "
                          "light: shift 4 px, flip, jitter 0.2."),
        click.option("--label-smoothing", type=ranged_type(TrainConfig, "label_smoothing"),
                     default=t.label_smoothing,
                     help="Eq. 20 smoothing; the paper supplement's \"smoothing term 11\" "
                          "reads as 0.11 to us."),
        click.option("--class-weights", type=click.Choice(["none", "inverse"]),
                     default=t.class_weights, help="inverse: inverse frequency, mean 1."),
        click.option("--clip-grad", type=ranged_type(TrainConfig, "clip_grad"),
                     default=t.clip_grad, help="Max grad norm; 0 off."),
        click.option("--precise-bn", type=ranged_type(TrainConfig, "precise_bn"),
                     default=t.precise_bn,
                     help="Training images to recompute BatchNorm statistics on after each "
                          "epoch; 0 = off."),
        click.option("--freeze", type=click.Choice(list(FREEZE_CHOICES)), default=t.freeze,
                     help="Stream kept frozen; only a stream with weights (--pretrained-"
                          "mobilefacenet, --pretrained-ir50, --init). auto: landmark when it has "
                          "them, else none."),
        click.option("--amp/--no-amp", default=t.amp, help="Mixed precision (CUDA only)."),
        click.option("--select", type=click.Choice(["accuracy", "macro_f1"]), default=t.select,
                     help="What best.safetensors is chosen by on the validation split "
                          "(macro_f1 for imbalanced data)."),
        click.option("--refine-per-class", type=ranged_type(DataConfig, "refine_per_class"),
                     default=d.refine_per_class,
                     help="Data refinement B per class per epoch (paper 4.1); 0 = plain shuffle."),
        click.option("--refine-per-group", type=ranged_type(DataConfig, "refine_per_group"),
                     default=d.refine_per_group,
                     help="Data refinement N_pg per face group / video; 0 = no cap."),
        click.option("--refine-repeat/--no-refine-repeat", default=d.refine_repeat,
                     help="A class with fewer than B images: repeat them up to B (the paper's "
                          "B per class), or take each once."),
        click.option("--workers", type=ranged_type(DataConfig, "workers"), default=d.workers,
                     help="DataLoader workers."),
        click.option("--seed", type=ranged_type(TrainConfig, "seed"), default=t.seed),
        click.option("--device", default=t.device, help="auto, cpu, cuda or cuda:N."),
        click.option("--threads", type=ranged_type(TrainConfig, "threads"), default=t.threads,
                     help="torch CPU threads per process; 0 = torch's default."),
        click.option("--resume", is_flag=True, help=resume_help()),
        click.option("--strict", is_flag=True, help="Unreadable images are an error."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override any DataConfig/TrainConfig field (data.KEY for data)."),
        click.option("--pretrained-ir50", default="", type=click.Path(dir_okay=False),
                     help="face.evoLVe / POSTER V2 IR-50 weights for the image stream."),
        click.option("--image-warmup", type=ranged_type(TrainConfig, "image_warmup"),
                     default=t.image_warmup,
                     show_default=False,
                     help="Steps that train the image stream alone (pooled linear classifier, "
                          "then dropped) before epoch 1: a stand-in for a pretrained IR-50 when "
                          "there is none (the tiny preset); 0: off [default: "
                          f"{AUTO_IMAGE_WARMUP}, 0 with --freeze image or --init]."),
        click.option("--pretrained-mobilefacenet", default="", type=click.Path(dir_okay=False),
                     help="pytorch_face_landmark MobileFaceNet weights (landmark stream)."),
        click.option("--init", default=t.init, type=click.Path(dir_okay=False),
                     help="Fine-tune from this grefel checkpoint (e.g. from `grefel weights "
                          "import --kind posterv2`): its architecture, every tensor that fits "
                          "(strict), fresh class-dependent tensors when the classes differ; "
                          "writes init.json."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False),
                     help="Write the run summary as JSON."),
    ]
    func = align_options(func)
    for option in reversed(options):
        func = option(func)
    return func


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
    from grefel.fileio import Input, Output, model_inputs
    from grefel.train import TrainingError, configs_from_options, run_training
    from grefel.train_state import RUN_FILES
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
    given = {k for k in opts if ctx.get_parameter_source(k) not in (None, ParameterSource.DEFAULT)}
    given |= {f"face.{name}" for name in ALIGN.given(ctx)}
    try:
        d, t = configs_from_options(opts, opts.pop("overrides"), given=given)
    except TrainingError as exc:
        raise user_error(exc) from None
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    check_align_options(ctx, d.face.mode, d.root, d.dataset)
    check_outputs(
        [Input("--data", d.root or None, "the dataset folder", folder=True),
         *model_inputs("--init", t.init or None, "the checkpoint"),
         *model_inputs("--pretrained-ir50", t.pretrained_ir50 or None, "the IR-50 weights"),
         *model_inputs("--pretrained-mobilefacenet", t.pretrained_mobilefacenet or None,
                       "the MobileFaceNet weights")],
        [Output("--out", t.out, folder=True, writes=RUN_FILES, owner="train"),
         Output("--json", json_path),
         Output("--align-cache", d.align_cache or None, folder=True)])
    try:
        summary = run_training(d, t)
    except (DatasetError, TrainingError, WeightsError, OSError) as exc:
        raise user_error(exc) from None
    if summary["rank"] == 0:
        click.echo(json.dumps(summary, indent=2))
        wrote(summary["out"], "run folder: best and last .safetensors, config.json, metrics")
        if json_path:
            write_json(json_path, summary, "summary JSON")
