"""The `grefel` command line: train, eval, export, predict, bench, info and helpers.

Heavy libraries (torch, onnxruntime, TensorRT) are imported inside the command callbacks, so
`grefel --help` and the engine-only commands run on a Jetson without torch. Each callback maps
its options to one library call.
"""

from __future__ import annotations

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


@data.command(
    "synth",
    epilog="""\b
Examples:
  grefel data synth --out data/synthfer --n 2000
  grefel data synth --out data/synthfer_noisy --n 2000 --noise 0.2
  grefel data synth --out data/synthfer8 --n 4000 --imbalance uniform --contempt
""",
)
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="Folder to write images/, train/val/test.csv, classes.txt, landmarks.csv.")
@click.option("--n", "n", type=click.IntRange(min=3), default=2000, help="Number of images.")
@click.option("--seed", type=int, default=0, help="Same seed and options give the same bytes.")
@click.option("--noise", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0,
              help="Fraction of TRAIN labels flipped to another class (val/test stay clean).")
@click.option("--imbalance", type=click.Choice(["rafdb", "uniform"]), default="rafdb",
              help="Class frequencies: RAF-DB basic train counts, or equal.")
@click.option("--contempt/--no-contempt", default=False, help="Add contempt as an 8th class.")
@click.option("--size", type=click.IntRange(min=32), default=112, help="Image side in pixels.")
def data_synth(out: str, n: int, seed: int, noise: float, imbalance: str, contempt: bool,
               size: int) -> None:
    """Generate SynthFER, the bundled procedurally drawn expression dataset."""
    import time

    from grefel.data.synthfer import generate_synthfer

    start = time.perf_counter()
    click.echo(f"drawing {n} faces into {out} ...", err=True)
    try:
        path = generate_synthfer(out, n, seed=seed, noise=noise, imbalance=imbalance,
                                 contempt=contempt, size=size)
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"done in {time.perf_counter() - start:.1f} s", err=True)
    click.echo((path / "README.txt").read_text(), nl=False)


# --- weights import (issue 4) ------------------------------------------------------------------


# --- export (issue 5) --------------------------------------------------------------------------


# --- predict, bench, info (issue 6) ------------------------------------------------------------


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
