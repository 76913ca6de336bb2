"""The `grefel` command group and its sub-groups (data, weights, pretrain); the commands add
themselves from their modules."""

from __future__ import annotations

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


@click.group(
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  grefel predict photo.jpg                 # the model that ships inside grefel
  grefel data synth --out runs/demo/synthfer --n 3000 --imbalance uniform --difficulty 0.3
  grefel pretrain landmarks --data runs/demo/synthfer --steps 200 \\
      --out runs/demo/pretrained/mobilefacenet.safetensors
  grefel pretrain identity --data runs/demo/synthfer --steps 150 \\
      --out runs/demo/pretrained/ir50.safetensors
  grefel train --data runs/demo/synthfer --preset tiny --epochs 8 --batch-size 32 --lr 1e-3 \\
      --freeze landmark --pretrained-mobilefacenet runs/demo/pretrained/mobilefacenet.safetensors \\
      --pretrained-ir50 runs/demo/pretrained/ir50.safetensors --image-warmup 150 --no-augment \\
      --out runs/demo/train
  grefel eval runs/demo/train/best.safetensors --data runs/demo/synthfer
  grefel export runs/demo/train/best.safetensors --fp16
  grefel predict photo.jpg --weights engines/best_fp16_b8.engine
  grefel bench --weights runs/demo/train/best.safetensors
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


@cli.group(context_settings=CONTEXT)
def pretrain() -> None:
    """Pretrain the landmark / image stream on landmarks / identities (paper 3.1)."""
