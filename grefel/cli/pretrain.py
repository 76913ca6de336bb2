"""`grefel pretrain landmarks` and `grefel pretrain identity`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from grefel.cli.app import pretrain
from grefel.cli.common import (
    ALIGN,
    align_options,
    check_align_options,
    check_outputs,
    ranged_type,
    write_json,
    wrote,
)
from grefel.config import PretrainConfig


def _pretrain_defaults() -> dict:
    """grefel.config.PretrainConfig's defaults (torch-free), for the option declarations."""
    import dataclasses

    from grefel.config import PretrainConfig

    return {f.name: f.default for f in dataclasses.fields(PretrainConfig)}


_PRETRAIN_DEFAULTS = _pretrain_defaults()


def _pretrain_options(func):
    """Options both pretraining commands share; defaults from grefel.config.PretrainConfig."""
    c = _PRETRAIN_DEFAULTS
    options = [
        click.option("--data", required=True, type=click.Path(file_okay=False),
                     help="Dataset folder with identities (SynthFER from grefel data synth, "
                          "muxspace/facial_expressions, or any reader's layout)."),
        click.option("--dataset", default=c["dataset"], help="Reader kind (auto detects)."),
        click.option("--out", required=True, type=click.Path(dir_okay=False),
                     help="Checkpoint to write (.safetensors + .json sidecar)."),
        click.option("--preset", type=click.Choice(["tiny", "paper"]), default=c["preset"],
                     help="GReFEL preset whose stream is trained (widths, depths)."),
        click.option("--steps", type=ranged_type(PretrainConfig, "steps"), default=c["steps"]),
        click.option("--batch-size", type=ranged_type(PretrainConfig, "batch_size"),
                     default=c["batch_size"]),
        click.option("--lr", type=ranged_type(PretrainConfig, "lr"), default=c["lr"],
                     help="Adam learning rate."),
        click.option("--seed", type=ranged_type(PretrainConfig, "seed"), default=c["seed"]),
        click.option("--device", default=c["device"], help="cpu, cuda or cuda:N."),
        click.option("--threads", type=ranged_type(PretrainConfig, "threads"), default=c["threads"],
                     help="torch CPU threads; 0 = torch's default."),
        click.option("--augment/--no-augment", default=c["augment"],
                     help="landmarks: brightness/contrast jitter; identity: flips and shifts."),
        click.option("--precise-bn", type=ranged_type(PretrainConfig, "precise_bn"),
                     default=c["precise_bn"],
                     help="Training images for the BatchNorm statistics before evaluation."),
        click.option("--reuse", is_flag=True,
                     help="Keep an existing --out made with the same settings from the same data."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False),
                     help="Also write the sidecar (metrics, settings) as JSON here."),
    ]
    func = align_options(func)
    for option in reversed(options):
        func = option(func)
    return func


def _run_pretrain(task: str, json_path: Optional[str], **opts: Any) -> None:
    import json

    from grefel.fileio import Input, Output
    from grefel.pretrain import PretrainError, make_config, pretrain

    alignment = ALIGN.build(opts)
    check_align_options(click.get_current_context(), alignment.mode, opts["data"],
                         opts["dataset"])
    check_outputs([Input("--data", opts["data"], "the dataset folder", folder=True)],
                   [Output("--out", opts["out"]),
                    Output("the sidecar of --out", Path(opts["out"]).with_suffix(".json"),
                           beside=Path(opts["out"])),
                    Output("--json", json_path),
                    Output("--align-cache", opts["align_cache"] or None, folder=True)])
    try:
        meta = pretrain(make_config(task=task, alignment=alignment, **opts))
    except PretrainError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(meta["metrics"], indent=2))
    if meta.get("reused"):
        click.echo(f"kept {opts['out']} (pretrained weights, reused)", err=True)
    else:
        wrote(opts["out"], "pretrained weights and their JSON sidecar")
    if json_path:
        write_json(json_path, meta, "metrics JSON")


@pretrain.command(
    "landmarks",
    epilog="""\b
Examples:
  grefel pretrain landmarks --data runs/demo/synthfer --steps 200 \\
      --out runs/demo/pretrained/mobilefacenet.safetensors                       # make demo
  grefel pretrain landmarks --data data/facial_expressions --steps 1000 --batch-size 64 \\
      --out runs/real/pretrained/mobilefacenet_mesh.safetensors                  # make real-model
  grefel pretrain landmarks --data data/facial_expressions --stream image --steps 1000 \\
      --batch-size 64 --out runs/real/pretrained/ir50_mesh.safetensors           # make real-model
  (then grefel train --pretrained-mobilefacenet / --pretrained-ir50 FILE: see grefel train -h)
""",
)
@_pretrain_options
@click.option("--landmarks", type=click.Choice(["auto", "file", "mesh"]),
              default=_PRETRAIN_DEFAULTS["landmarks"],
              help="Targets: file = the dataset's landmarks.csv (SynthFER's 68 ground-truth "
                   "points); mesh = MediaPipe's 468-point face mesh (shipped in grefel) run on "
                   "each face; auto = the file where there is one and faces are not aligned.")
@click.option("--stream", type=click.Choice(["landmark", "image"]), default="landmark",
              help="landmark: the MobileFaceNet trunk (the paper's landmark stream; "
                   "--pretrained-mobilefacenet); image: IR-50 stages 1-3, the image stream "
                   "(--pretrained-ir50), where no face-recognition IR-50 exists (tiny).")
def pretrain_landmarks(json_path: Optional[str], **opts: Any) -> None:
    """MobileFaceNet trunk (or, with --stream image, IR-50 stages 1-3) + GDC head regressing
    facial landmarks.

    The targets are a dataset's own landmarks (SynthFER's 68 ground-truth points), or, for
    real photos without them, the 468 points of MediaPipe's face mesh on each (aligned) face.
    Reports the NME on the validation split (held-out identities), normalised by the
    inter-ocular distance, beside the NME of the mean training shape.
    """
    _run_pretrain("landmarks", json_path, **opts)


@pretrain.command(
    "identity",
    epilog="""\b
Examples:
  grefel pretrain identity --data runs/demo/synthfer --steps 150 \\
      --out runs/demo/pretrained/ir50.safetensors                                # make demo
  grefel pretrain identity --data data/synthfer --margin-head cosface --out ir.safetensors
  (then grefel train --pretrained-ir50 FILE: see grefel train -h)
""",
)
@_pretrain_options
@click.option("--margin-head", type=click.Choice(["arcface", "cosface"]),
              default=_PRETRAIN_DEFAULTS["margin_head"], help="face.evoLVe's margin heads.")
@click.option("--scale", type=ranged_type(PretrainConfig, "scale"),
              default=_PRETRAIN_DEFAULTS["scale"],
              help="s of the margin head.")
@click.option("--head-margin", "margin", type=ranged_type(PretrainConfig, "margin"), default=None,
              help="m of the margin head [default: 0.5 ArcFace, 0.35 CosFace].")
@click.option("--embedding", type=ranged_type(PretrainConfig, "embedding"),
              default=_PRETRAIN_DEFAULTS["embedding"],
              help="Embedding size of the output layer.")
@click.option("--holdout-every", type=ranged_type(PretrainConfig, "holdout_every"),
              default=_PRETRAIN_DEFAULTS["holdout_every"],
              help="Every k-th image of each training identity is held out for the accuracy.")
def pretrain_identity(json_path: Optional[str], **opts: Any) -> None:
    """IR-50 stages 1-3 on identity classification with an ArcFace / CosFace margin loss.

    Reports the identification accuracy on held-out images of the training identities.
    """
    _run_pretrain("identity", json_path, **opts)
