"""`grefel weights import`."""

from __future__ import annotations

from pathlib import Path

import click

from grefel.cli.app import weights
from grefel.cli.common import (
    check_outputs,
    ranged_type,
    user_error,
    write_json,
)
from grefel.config import GReFELConfig


@weights.command(
    "import",
    epilog="""\b
Examples:
  grefel weights import backbone_ir50_ms1m_epoch120.pth --kind ir50 --out ckpt/ir50.safetensors
  grefel weights import mobilefacenet_model_best.pth.tar --kind mobilefacenet --out mfn.safetensors
  grefel weights import raf-db-model_best.pth --kind posterv2 --out ckpt/poster_raf.safetensors
  grefel weights import raf-db-model_best.pth --kind posterv2 --linear-head --out ckpt/p.safetensors
""",
)
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["ir50", "mobilefacenet", "posterv2"]), required=True,
              help="Source layout family (face.evoLVe or POSTER V2 IR-50 / MobileFaceNet / full).")
@click.option("--preset", type=click.Choice(["paper", "tiny"]), default="paper")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Checkpoint to write (.safetensors + .json sidecar with the report).")
@click.option("--num-classes", type=ranged_type(GReFELConfig, "num_classes"), default=None,
              help="Classes of the new model [default: the POSTER V2 head's, else 7].")
@click.option("--linear-head", is_flag=True,
              help="Primary head = one Linear (head_hidden=()), so POSTER V2's classifier fits.")
@click.option("--lenient", is_flag=True, help="Load what fits and list what was dropped.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the import report as JSON.")
def weights_import(src, kind, preset, out, num_classes, linear_head, lenient, json_path):
    """Import pretrained weights from SRC into a new GReFEL checkpoint, strictly and safely."""
    from grefel.checkpoint import save_checkpoint
    from grefel.fileio import Output, model_inputs
    from grefel.weights import WeightsError, import_weights

    if out.suffix != ".safetensors":
        raise click.BadParameter("must end in .safetensors", param_hint="--out")
    check_outputs(model_inputs("SRC", src, "the source weights"),
                   [Output("--out", out),
                    Output("the sidecar of --out", out.with_suffix(".json"), beside=out),
                    Output("--json", json_path)])
    click.echo(f"reading {src} ({kind}) ...", err=True)
    overrides = {"head_hidden": ()} if linear_head else None
    try:
        model, report = import_weights(src, kind, preset, num_classes, lenient, overrides)
    except WeightsError as exc:
        if exc.report is not None:
            click.echo(exc.report.format(), err=True)
        raise click.ClickException(str(exc)) from None
    try:
        save_checkpoint(out, model, import_report=report.to_dict())
    except OSError as exc:
        raise user_error(exc) from None
    click.echo(report.format())
    if json_path:
        write_json(json_path, report.to_dict(), "import report JSON")
    click.echo(f"wrote {out} and {out.with_suffix('.json').name}")
