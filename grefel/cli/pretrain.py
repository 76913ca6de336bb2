"""`grefel pretrain landmarks` and `grefel pretrain identity`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import click

from grefel.cli.app import pretrain
from grefel.cli.common import (
    ALIGN,
    align_options,
    check_align_options,
    check_outputs,
    write_json,
    wrote,
)
from grefel.cli.options import OptionGroup
from grefel.config import PretrainConfig

# The options generated from grefel.config.PretrainConfig: those both commands share, and each
# command's own (the face settings: ALIGN and --align-cache, as train's).
_LANDMARKS = ("landmarks", "stream")
_IDENTITY = ("margin_head", "scale", "margin", "embedding", "holdout_every")
PRETRAIN = OptionGroup(PretrainConfig, skip=("task", "alignment", "align_cache", *_LANDMARKS,
                                             *_IDENTITY))
LANDMARKS = OptionGroup(PretrainConfig, only=_LANDMARKS)
IDENTITY = OptionGroup(PretrainConfig, only=_IDENTITY)


def _pretrain_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options both pretraining commands share (PRETRAIN, the face settings, --json)."""
    func = click.option("--json", "json_path", type=click.Path(dir_okay=False),
                        help="Also write the sidecar (metrics, settings) as JSON here.")(func)
    return PRETRAIN(align_options(func))


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
@LANDMARKS
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
@IDENTITY
def pretrain_identity(json_path: Optional[str], **opts: Any) -> None:
    """IR-50 stages 1-3 on identity classification with an ArcFace / CosFace margin loss.

    Reports the identification accuracy on held-out images of the training identities.
    """
    _run_pretrain("identity", json_path, **opts)
