"""How fast does the tiny preset start to learn SynthFER? A fixed-step, in-memory probe.

    python -m research.learnability --data runs/demo/synthfer --steps 300 --lr 1e-3
    python -m research.learnability --data runs/demo/synthfer --warmup-steps 100 --lr 1e-3

Loads the train and val splits into memory (eval resize only, random horizontal flips in
training), builds the tiny preset (overrides with --set KEY=JSON, e.g. --set head_dropout=0),
optionally trains the image stream alone first with a pooled linear classifier (what
`grefel train --image-warmup` does), then trains the whole model with Adam on the eq. 23 loss
for --steps steps and prints, every --every steps, the mean eq. 20 loss and training accuracy
of those steps and the val accuracy of the final and primary predictions (eval mode, BatchNorm
running statistics as they are). It isolates optimisation from the data pipeline. The numbers
in research/results/warmup_2026-11-29.md came from the scratch version this script cleans up
(same data, batches, Adam, clipping and warm-up; the rewrite itself was only smoke-tested).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn


def load_split(root: Path, split: str, classes: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 112, 112) float in [0, 1] and (N,) labels of one SynthFER-layout split."""
    from grefel.data import FERDataset, load_samples, make_transforms

    samples, _ = load_samples(str(root), "auto", split)
    ds = FERDataset(samples, list(classes), make_transforms(False), strict=True)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])


def train_image_probe(
    model: nn.Module, next_batch: Callable[[], Tuple[torch.Tensor, torch.Tensor]], steps: int,
    lr: float,
) -> List[Tuple[float, float]]:
    """Train `model`'s image stream alone for `steps` steps with a temporary linear classifier on
    its mean-pooled level-3 map (what `grefel train --image-warmup` does; cross-entropy, Adam at
    `lr`); the (loss, training accuracy) of every step."""
    probe = nn.Linear(model.cfg.dims[2], model.cfg.num_classes)
    opt = torch.optim.Adam([*model.image.parameters(), *probe.parameters()], lr=lr)
    model.image.train()
    hist = []
    for _ in range(steps):
        x, y = next_batch()
        logits = probe(model.image((x - model.image_mean) / model.image_std)[2].mean(dim=(2, 3)))
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append((loss.item(), (logits.argmax(1) == y).float().mean().item()))
    return hist


def main(argv: Sequence[str] = ()) -> int:
    p = argparse.ArgumentParser(prog="python -m research.learnability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a SynthFER (CSV layout) folder")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam lr of the whole model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--variant", default="both", choices=["no_rb", "anchors", "mhsa", "both"])
    p.add_argument("--lambdas", default="1,1,1", help="lambda_cls,lambda_anchor,lambda_center")
    p.add_argument("--warmup-steps", type=int, default=0, help="image-stream warm-up steps")
    p.add_argument("--warmup-lr", type=float, default=2e-3)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=JSON", help="GReFELConfig override, e.g. head_dropout=0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv or sys.argv[1:])

    from grefel.config import VARIANTS, GReFELConfig
    from grefel.model.grefel import GReFEL
    from grefel.model.losses import GReFELLoss

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    root = Path(a.data)
    classes = (root / "classes.txt").read_text().split()
    xtr, ytr = load_split(root, "train", classes)
    xva, yva = load_split(root, "val", classes)
    lam = [float(v) for v in a.lambdas.split(",")]
    over = {k: json.loads(v) for k, v in (o.split("=", 1) for o in a.overrides)}
    cfg = GReFELConfig.preset("tiny", **VARIANTS[a.variant], num_classes=len(classes),
                              class_names=tuple(classes), frozen=(), lambda_cls=lam[0],
                              lambda_anchor=lam[1], lambda_center=lam[2], **over)
    model, loss_fn = GReFEL(cfg), GReFELLoss(cfg)
    gen = torch.Generator().manual_seed(a.seed)

    def batch() -> Tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(xtr), (a.batch_size,), generator=gen)
        flip = torch.rand(a.batch_size, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], xtr[idx].flip(-1), xtr[idx])
        return x, ytr[idx]

    start = time.perf_counter()
    if a.warmup_steps:
        warm = train_image_probe(model, batch, a.warmup_steps, a.warmup_lr)
        print(f"warm-up {a.warmup_steps} steps: last loss {warm[-1][0]:.3f} "
              f"({time.perf_counter() - start:.0f}s)", flush=True)

    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    hist = []
    for step in range(1, a.steps + 1):
        model.train()
        x, y = batch()
        out = model(x)
        terms = loss_fn(out, y, model)
        opt.zero_grad()
        terms.total.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        hist.append((terms.cls.item(), (out.probs.argmax(1) == y).float().mean().item()))
        if step % a.every == 0 or step == a.steps:
            model.eval()
            with torch.inference_mode():
                outs = [model(xva[i : i + 128]) for i in range(0, len(xva), 128)]
            final = torch.cat([o.probs for o in outs]).argmax(1)
            primary = torch.cat([o.primary for o in outs]).argmax(1)
            h = np.array(hist[-a.every:])
            print(f"step {step} {time.perf_counter() - start:.0f}s  cls loss {h[:, 0].mean():.3f}"
                  f"  train acc {h[:, 1].mean():.3f}  val acc final "
                  f"{(final == yva).float().mean():.3f} primary "
                  f"{(primary == yva).float().mean():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
