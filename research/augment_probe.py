"""Which part of the training augmentation stops the tiny image stream from learning SynthFER?

    python -m research.augment_probe --data runs/synthfer --steps 150 --threads 1

A fixed-step probe (issue 16): for each augmentation setting, a fresh tiny image stream (same
seed, same batches of indices) plus a linear classifier on its mean-pooled level-3 map, as
`grefel train --image-warmup` trains it, Adam lr 1e-3, batch 32; each sample passes through
`TrainTransform` with the setting's parameters (the transform draws from torch's seeded global
RNG). Prints the mean cross-entropy and training accuracy of the last quarter of the steps
(chance: ln 7 = 1.946 and 0.143), wall and CPU (`time.process_time`) seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

SETTINGS = {
    "none": None,
    "full": {},
    "flip_shift": {"max_degrees": 0.0, "jitter": 0.0, "erase_p": 0.0},
    "flip_only": {"max_shift": 0, "max_degrees": 0.0, "jitter": 0.0, "erase_p": 0.0},
    "shift_only": {"flip_p": 0.0, "max_degrees": 0.0, "jitter": 0.0, "erase_p": 0.0},
    "rotate_only": {"flip_p": 0.0, "max_shift": 0, "jitter": 0.0, "erase_p": 0.0},
    "jitter_only": {"flip_p": 0.0, "max_shift": 0, "max_degrees": 0.0, "erase_p": 0.0},
    "erase_only": {"flip_p": 0.0, "max_shift": 0, "max_degrees": 0.0, "jitter": 0.0},
    "mild": {"max_shift": 2, "max_degrees": 0.0, "jitter": 0.0},  # flip, erase, +-2 px shift
    "light": {"max_shift": 2, "max_degrees": 5.0},  # all five kinds, smaller shift and rotation
}


def main(argv: Sequence[str] = ()) -> int:
    p = argparse.ArgumentParser(prog="python -m research.augment_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a SynthFER (CSV layout) folder")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"from {', '.join(SETTINGS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv or sys.argv[1:])
    names = a.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"--settings: unknown {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")

    from grefel.config import GReFELConfig
    from grefel.data import FERDataset, load_samples, make_transforms
    from grefel.data.transforms import TrainTransform
    from grefel.model.grefel import GReFEL
    from research.learnability import train_image_probe

    torch.set_num_threads(a.threads)
    root = Path(a.data)
    classes = (root / "classes.txt").read_text().split()
    samples, _ = load_samples(str(root), "auto", "train")
    for name in names:
        kw = SETTINGS[name]
        tf = make_transforms(False) if kw is None else TrainTransform(**kw)
        ds = FERDataset(samples, list(classes), tf, strict=True)
        torch.manual_seed(a.seed)
        cfg = GReFELConfig.preset("tiny", num_classes=len(classes), class_names=tuple(classes),
                                  frozen=())
        model = GReFEL(cfg)
        gen = torch.Generator().manual_seed(a.seed)

        def batch(ds=ds, gen=gen):
            items = [ds[i] for i in torch.randint(0, len(ds), (32,), generator=gen).tolist()]
            return (torch.stack([it[0] for it in items]),
                    torch.tensor([int(it[1]) for it in items]))

        start, cpu = time.perf_counter(), time.process_time()
        hist = train_image_probe(model, batch, a.steps, lr=1e-3)
        q = hist[-max(a.steps // 4, 1):]
        print(f"{name:12s} loss first {hist[0][0]:.3f} last-quarter "
              f"{sum(h[0] for h in q) / len(q):.3f}  train acc {sum(h[1] for h in q) / len(q):.3f}"
              f"  {time.perf_counter() - start:.0f}s wall {time.process_time() - cpu:.0f}s cpu",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
