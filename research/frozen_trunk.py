"""The ablation's frozen-trunk runs: one trained pair of streams per noise rate, the rest of
GReFEL trained on their cached maps (`python -m research.ablation --trunk frozen`).

A Table 2 variant differs from another only after the streams (Fig. 2): in the reliability
balancing on top of the same cross-attention levels, fusion ViT and MLP head. On a 2-core CPU
the tiny preset's streams are most of a training step, so a full run per (variant, seed) costs
~6 minutes and an ablation with enough seeds for an interval does not fit a working day. Here
the streams are trained once per label-noise rate and then frozen, the paper's way as far as
SynthFER allows (landmark stream pretrained on the 68 landmarks, image stream pretrained on
identities, `grefel pretrain`), plus the image-stream warm-up on that noise rate's training
labels (`grefel.train.warm_up_image_stream`: without it the head stays at chance within this
budget, recipe_2026-12-03.md). Their maps of every train/val/test image (eval transform, no
augmentation) are computed once and stored; each (variant, seed) then trains the levels,
`landmark_proj`, the fusion ViT, the head and the variant's balancing on them with the run's
loss (eq. 23), Adam and ExponentialLR as `grefel train` does (but no gradient clipping: its
clip_grad 5.0 is not applied here), precise BatchNorm statistics after
every epoch, keeps the epoch with the best validation accuracy and scores it on the test split.

Pairing: for one seed every variant starts from the same initial weights of every part they
share (the parts are created in the same order after `torch.manual_seed(seed)`: the balancing
modules come last, `initial_shared_weights_equal` in the tests), sees the same batches in the
same order, on the same frozen streams. What the interval of a paired difference then covers is
the randomness of the head's initialisation and of the batch order, for the one trunk per noise
rate: not the trunk's own seed.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from grefel.fileio import atomic_path

SPLITS = ("train", "val", "test")
MAPS = ("i1", "i2", "i3", "l1", "l2", "l3")  # image stream levels 1-3, landmark stream 1-3


def features_path(work: Path, noise: float, settings: Dict[str, Any]) -> Path:
    """Where the trunk of one noise rate and these trunk settings lives (a name per settings:
    another warm-up or other pretrained streams never reuse a stale trunk)."""
    import hashlib
    import json

    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return work / f"trunk_noise{noise:g}_{key}.safetensors"


def trunk_report(path: Path) -> Dict[str, Any]:
    """The warm-up report `build_trunk` stored with the trunk at `path`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return _report(f.metadata() or {})


def _report(meta: Dict[str, str]) -> Dict[str, Any]:
    import json

    return json.loads(meta.get("report", "{}"))


def build_trunk(data: Path, out: Path, *, seed: int, image_warmup: int, lr: float,
                batch_size: int, pretrained_mobilefacenet: str, pretrained_ir50: str,
                threads: int) -> Dict[str, Any]:
    """Train the streams of one noise rate and store their maps of every split at `out`.

    The streams: the pretrained weights given, then `image_warmup` steps of the image-stream
    warm-up on `data`'s training labels (the landmark stream stays as imported). `out` (a
    safetensors file, written atomically) holds "SPLIT/MAP" float16 maps, "SPLIT/labels", the
    stream weights ("weights/NAME") and, as metadata, the class names and the warm-up's report
    (returned; `trunk_report` reads it back).
    """
    import json
    import tempfile

    from safetensors.torch import save_file

    from grefel.config import DataConfig, TrainConfig
    from grefel.train import build_run, warm_up_image_stream

    start = time.perf_counter()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as scratch:  # build_run wants a run folder; nothing kept
        run = build_run(
            DataConfig(root=str(data), batch_size=batch_size, augment=False),
            TrainConfig(out=str(Path(scratch) / "run"), preset="tiny", variant="both",
                        epochs=1, lr=lr, seed=seed, device="cpu",
                        freeze="none",  # the warm-up trains the image stream only
                        image_warmup=image_warmup,
                        pretrained_mobilefacenet=pretrained_mobilefacenet,
                        pretrained_ir50=pretrained_ir50))
        warm = warm_up_image_stream(run) if image_warmup else {"steps": 0}
    model = run.raw.eval()
    tensors: Dict[str, torch.Tensor] = {
        f"weights/{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()
        if k.startswith(("image.", "landmark."))}
    classes: Tuple[str, ...] = ()
    for split in SPLITS:
        maps, labels, classes = stream_maps(model, data, split, batch_size=128)
        tensors.update({f"{split}/{name}": m for name, m in zip(MAPS, maps)})
        tensors[f"{split}/labels"] = labels
    report = {**warm, "image_warmup": image_warmup, "seed": seed,
              "pretrained_mobilefacenet": pretrained_mobilefacenet,
              "pretrained_ir50": pretrained_ir50,
              "seconds_with_maps": round(time.perf_counter() - start, 1)}
    meta = {"classes": ",".join(classes), "report": json.dumps(report)}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return report


@torch.no_grad()
def split_loader(data: Path, split: str, *, batch_size: int) -> Tuple[Any, Tuple[str, ...]]:
    """A loader of every image of `split` through the eval transform (in order, strict), and
    the class names."""
    from torch.utils.data import DataLoader

    from grefel.data import FERDataset, check_readable, collate_skip, load_samples, make_transforms

    samples, classes = load_samples(data, "auto", split)
    check_readable(samples, f"{data} split {split!r}")
    loader = DataLoader(FERDataset(samples, classes, make_transforms(False), strict=True),
                        batch_size, collate_fn=collate_skip)
    return loader, tuple(classes)


def stream_maps(model: nn.Module, data: Path, split: str, *, batch_size: int
                ) -> Tuple[List[torch.Tensor], torch.Tensor, Tuple[str, ...]]:
    """The six stream maps (float16) of every image of `split`, its labels, the class names."""
    loader, classes = split_loader(data, split, batch_size=batch_size)
    parts: List[List[torch.Tensor]] = [[] for _ in MAPS]
    labels = []
    for images, y, _, _ in loader:
        imgs, lms = model.forward_streams(images)
        for part, m in zip(parts, (*imgs, *lms)):
            part.append(m.half())  # float16: half the memory; the maps are O(1) after BN/PReLU
        labels.append(y)
    maps = [torch.cat(p) for p in parts]
    for name, m in zip(MAPS, maps):
        if not torch.isfinite(m).all():  # beyond float16's range (65504) or NaN
            raise FloatingPointError(f"{data} split {split!r}: stream map {name} is not finite "
                                     "in float16")
    return maps, torch.cat(labels), classes


def load_trunk(path: Path) -> Dict[str, Any]:
    """What `build_trunk` stored: {"report": {...}, "weights": {...}, "classes": (...),
    SPLIT: (maps, labels)}."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # one read: tensors and metadata
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    trunk: Dict[str, Any] = {
        "report": _report(meta),
        "weights": {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("weights/")},
        "classes": tuple(meta.get("classes", "").split(",")),
    }
    for split in SPLITS:
        trunk[split] = ([tensors[f"{split}/{m}"] for m in MAPS], tensors[f"{split}/labels"])
    return trunk


class OnMaps(nn.Module):
    """GReFEL after its streams: indices into the cached maps of one split -> GReFELOutput."""

    def __init__(self, model: nn.Module, maps: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.maps = maps

    def forward(self, index: torch.Tensor) -> Any:
        picked = [m[index].float() for m in self.maps]
        return self.model.forward_head(*self.model.fuse(picked[:3], picked[3:]))


def seeded_model(variant: str, seed: int, classes: Sequence[str], weights: Dict[str, Any]
                 ) -> nn.Module:
    """The tiny GReFEL of `variant` initialised under `seed`, with the trunk's frozen streams."""
    from grefel.model.grefel import create_model

    torch.manual_seed(seed)
    model = create_model("tiny", variant, num_classes=len(classes), class_names=tuple(classes))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(k.startswith(("image.", "landmark.")) for k in missing):
        raise ValueError(f"trunk weights do not fit the tiny model: {unexpected or missing}")
    model.set_frozen(("landmark", "image"))
    return model


@torch.no_grad()
def predict_split(model: nn.Module, maps: Sequence[torch.Tensor], batch: int = 256
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Top-1 of L_final and of the primary l for every cached sample (eval mode)."""
    model.eval()
    head = OnMaps(model, maps)
    final, primary = [], []
    for start in range(0, len(maps[0]), batch):
        out = head(torch.arange(start, min(start + batch, len(maps[0]))))
        final.append(out.probs.argmax(dim=1))
        primary.append(out.primary.argmax(dim=1))
    return torch.cat(final).numpy(), torch.cat(primary).numpy()


def train_variant(trunk: Dict[str, Any], *, variant: str, seed: int, epochs: int, lr: float,
                  batch_size: int, precise_bn: int) -> Dict[str, Any]:
    """Train one (variant, seed) on the trunk's maps; score the best-validation epoch on test."""
    from grefel.config import TrainConfig
    from grefel.metrics import confusion_matrix, macro_f1, majority_baseline, prediction_changes
    from grefel.model.losses import GReFELLoss
    from grefel.train_utils import recalibrate_batchnorm

    start = time.perf_counter()
    classes = trunk["classes"]
    model = seeded_model(variant, seed, classes, trunk["weights"])
    maps, labels = trunk["train"]
    head = OnMaps(model, maps)
    loss_fn = GReFELLoss(model.cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=TrainConfig().gamma)
    order = torch.Generator().manual_seed(seed)  # the same batches for every variant
    val_maps, val_labels = trunk["val"]
    best: Dict[str, Any] = {"val_acc": -1.0}
    history = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(labels), generator=order)
        total, steps = 0.0, 0
        for b in range(0, len(perm) - batch_size + 1, batch_size):  # drop the last, as train
            index = perm[b:b + batch_size]
            terms = loss_fn(head(index), labels[index], model)
            if not torch.isfinite(terms.total):
                raise FloatingPointError(f"{variant} seed {seed}: non-finite loss, epoch "
                                         f"{epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            total, steps = total + terms.total.item(), steps + 1
        scheduler.step()
        batches = (perm[b:b + batch_size] for b in range(0, len(perm), batch_size))
        recalibrate_batchnorm(head, batches, precise_bn)
        final, _ = predict_split(model, val_maps)
        val_acc = float((final == val_labels.numpy()).mean())
        history.append({"epoch": epoch + 1, "train_loss": total / max(steps, 1),
                        "val_acc": val_acc})
        if val_acc > best["val_acc"]:
            best = {"val_acc": val_acc, "epoch": epoch + 1,
                    "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best["state"])
    test_maps, test_labels = trunk["test"]
    y = test_labels.numpy()
    final, primary = predict_split(model, test_maps)
    c = len(classes)
    return {
        "variant": variant, "seed": seed,
        "test_acc": float((final == y).mean()),
        "test_macro_f1": macro_f1(confusion_matrix(y, final, c)),
        "primary_acc": float((primary == y).mean()),
        "primary_macro_f1": macro_f1(confusion_matrix(y, primary, c)),
        "changes": prediction_changes(y, primary, final),
        "best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
        "majority_acc": majority_baseline(labels.tolist(), y, c)[1],
        "history": history,
        "train_seconds": round(time.perf_counter() - start, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
