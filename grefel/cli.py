"""The `grefel` command line: train, eval, export, predict, bench, info and helpers.

Heavy libraries (torch, onnxruntime, TensorRT) are imported inside the command callbacks, so
`grefel --help` and the engine-only commands run on a Jetson without torch. Each callback maps
its options to one library call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


@click.group(
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  grefel data synth --out data/synthfer --n 2000
  grefel train --data data/synthfer --preset tiny --epochs 5 --out runs/demo
  grefel eval runs/demo/best.safetensors --data data/synthfer
  grefel export runs/demo/best.safetensors --fp16
  grefel predict photo.jpg --weights engines/best_fp16_b8.engine
  grefel bench --weights runs/demo/best.safetensors
""",
)
@click.version_option(package_name="grefel")
def cli() -> None:
    """GReFEL facial-expression recognition: train, export to TensorRT, run and benchmark."""


@cli.group(context_settings=CONTEXT)
def data() -> None:
    """Datasets: generate the bundled synthetic SynthFER dataset."""


@cli.group(context_settings=CONTEXT)
def weights() -> None:
    """Pretrained weights: import face.evoLVe / MobileFaceNet / POSTER V2 files."""


# --- train, eval, data synth (issue 3) ---------------------------------------------------------


# --- weights import (issue 4) ------------------------------------------------------------------


# --- export (issue 5) --------------------------------------------------------------------------


def _opset(ctx: click.Context, param: click.Parameter, value: str) -> Optional[int]:
    if value == "auto":
        return None
    if not value.isdigit() or not 13 <= int(value) <= 20:
        raise click.BadParameter("auto, or an opset from 13 to 20 (TorchScript exporter)")
    return int(value)


@cli.command(
    "export",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  grefel export runs/demo/best.safetensors --fp16
  grefel export runs/demo/best.safetensors --target trt8.5 --onnx-only
  grefel export engines/best.onnx --fp16 --max-batch 8 --verify   (on the Jetson)
""",
)
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--fp16/--fp32", default=True, help="FP16 engine (with the FP16 gate) or FP32.")
@click.option("--batch", default=1, type=click.IntRange(1), help="Profile opt batch.")
@click.option("--max-batch", default=8, type=click.IntRange(1), help="Profile max batch.")
@click.option("--dynamic/--static", default=True, help="Symbolic batch in the ONNX.")
@click.option("--opset", default="auto", callback=_opset, help="auto (trt8.5: 16, else 17) or N.")
@click.option("--simplify/--no-simplify", default=True, help="onnxsim (a failure is an error).")
@click.option("--workspace", "workspace_gib", type=float, help="Builder workspace limit, GiB.")
@click.option("--dla-core", type=click.IntRange(0), help="Build for this DLA core (GPU fallback).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="TensorRT timing cache, loaded and saved.")
@click.option("--target", default="auto",
              type=click.Choice(["auto", "trt8.5", "trt8.6", "trt10", "trt10.15", "trt11"]),
              help="TensorRT version to export and lint for (auto: the installed one).")
@click.option("--onnx-only", is_flag=True, help="Stop after the checked ONNX artifacts.")
@click.option("--force", is_flag=True, help="Continue past a failed lint / FP16 gate / verify.")
@click.option("--verify", is_flag=True, help="Run the engine vs ONNX Runtime after the build.")
@click.option("--out", default="engines", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="Artifact name (default: the source file's stem).")
@click.option("--embedding", is_flag=True, help="Also output the pooled embedding.")
@click.option("--calib-data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Image folder (e.g. SynthFER) for the FP16 gate and --verify.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the gate results as JSON here.")
@click.pass_context
def export_cmd(ctx: click.Context, source: Path, json_path: Optional[Path], **options) -> None:
    """Checkpoint (.safetensors) or ONNX -> checked ONNX -> TensorRT engine + sidecar."""
    from export import ExportError
    from export.pipeline import ExportOptions, run_export
    from grefel.fileio import atomic_write_json

    try:
        result = run_export(source, ExportOptions(**options), log=lambda s: click.echo(s, err=True))
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    if json_path is not None:
        atomic_write_json(json_path, {"exit_code": result.exit_code, **result.gates})
    click.echo(result.message)
    for path in result.artifacts:
        click.echo(str(path))
    ctx.exit(result.exit_code)



# --- predict, bench, info (issue 6) ------------------------------------------------------------


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
