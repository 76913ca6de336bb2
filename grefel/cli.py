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


# --- weights import (issue 4) ------------------------------------------------------------------


# --- export (issue 5) --------------------------------------------------------------------------


# --- predict, bench, info (issue 6) ------------------------------------------------------------


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
