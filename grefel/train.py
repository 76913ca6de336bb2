"""Training GReFEL: configs, the epoch loop, checkpoints and resume (paper §4.1-4.2).

    run_training(DataConfig(root="data/synthfer"), TrainConfig(preset="tiny", epochs=5))

`DataConfig` and `TrainConfig` are the only home of the training defaults (Adam lr 3e-4,
exponential decay 0.995 per epoch, gradient clipping 5); model defaults (K, delta, the lambdas
of eq. 23) stay in `GReFELConfig`, and a `TrainConfig` field set to None keeps the preset's value.
Everything a run writes lands in its folder:

    config.json            the resolved model, data and train configs
    metrics.csv / .json    one row per finished epoch
    tensorboard/           the same rows as TensorBoard scalars, when `tensorboard` is installed
    last.safetensors       weights after the latest epoch (+ .json sidecar)
    best.safetensors       weights of the best validation accuracy, or macro-F1 (--select)
                           (+ .json sidecar)
    warmup.json            the image-stream warm-up's losses, when TrainConfig.warmup_steps() > 0
    alignment.json         with `--align-faces detect` (grefel.align_data): per split, the
                           alignment settings and counts (faces found, none found, unreadable)
    init.json              what `TrainConfig.init` (`--init CKPT`) loaded and re-initialised
    last.state.pt          the resumable state: model, optimizer, scheduler, AMP scaler, epoch,
                           sampler, RNG states, best metric and the metric history; read back
                           with torch.load(weights_only=True)

Under `torchrun` the run is DDP (gloo on CPU, nccl on GPU): every rank draws its share of the
epoch, metrics are all-reduced and only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
import torch.distributed as dist

from grefel.checkpoint import save_checkpoint
from grefel.config import (
    LEGACY_FACE_KEYS,
    MODEL_OVERRIDES,
    VARIANTS,
    DataConfig,
    FaceAlignment,
    GReFELConfig,
    TrainConfig,
    upgrade_data_dict,
)
from grefel.devices import DeviceError, resolve_device
from grefel.evaluate import collect_outputs as predict
from grefel.fileio import atomic_write_bytes, atomic_write_json, deferred_signals
from grefel.finite import NonFiniteError, require_finite
from grefel.metrics import confusion_matrix, inverse_frequency_weights, macro_f1
from grefel.model.grefel import GReFEL, GReFELOutput
from grefel.model.losses import GReFELLoss
from grefel.train_state import (
    RESUME_MAY_CHANGE,
    STATE_FORMAT,
    TrainingError,
    data_differences,
    data_fingerprint,
    flat_settings,
    load_state,
    lock_run_folder,
    read_run_config,
    resume_differences,
    write_state,
)
from grefel.train_utils import recalibrate_batchnorm, rng_state, seed_everything

__all__ = [
    "STATE_FORMAT",
    "DataConfig",
    "TrainConfig",
    "TrainingError",
    "apply_overrides",
    "configs_from_options",
    "init_from_checkpoint",
    "lr_at_epoch",
    "run_training",
]

def _typed_value(pair: str, key: str, raw: str, type_name: str) -> Any:
    """The value of `--set KEY=RAW` for a field annotated `type_name` (str, int, float, bool,
    Optional[...]); ValueError naming the key when it is of the wrong type."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    optional = type_name.startswith("Optional[")
    base = type_name[len("Optional["):-1] if optional else type_name
    if value is None and optional:
        return None
    if base == "str":
        return value if isinstance(value, str) else raw
    kinds = {"int": (int,), "float": (int, float), "bool": (bool,)}[base]
    if not isinstance(value, kinds) or (base != "bool" and isinstance(value, bool)):
        article = "an" if base == "int" else "a"
        raise ValueError(f"--set {pair!r}: {key} takes {article} {base}"
                         f"{' or null' if optional else ''}, not {raw!r}")
    return float(value) if base == "float" else value


def apply_overrides(
    data_cfg: DataConfig, train_cfg: TrainConfig, pairs: Sequence[str]
) -> Tuple[DataConfig, TrainConfig]:
    """Apply `key=value` overrides (`lr=1e-3`, `data.workers=2`, `data.face.min_face=20`, or
    the older `data.face_min_face=20`); values are JSON or strings, checked against the field's
    type (a wrong type is a ValueError naming the key)."""
    changes: Dict[str, Dict[str, Any]] = {"data": {}, "train": {}, "face": {}}
    fields = {name: {f.name: f for f in dataclasses.fields(c)}
              for name, c in (("data", data_cfg), ("train", train_cfg), ("face", FaceAlignment))}
    del fields["data"]["face"]
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        scope, _, name = key.strip().rpartition(".")
        if scope == "data.face":
            scope = "face"
        elif scope in ("data", "") and name in LEGACY_FACE_KEYS:
            scope, name = "face", LEGACY_FACE_KEYS[name]
        scopes = [scope] if scope else [s for s in ("train", "data") if name in fields[s]]
        if not sep or not scopes or scopes[0] not in fields or name not in fields[scopes[0]]:
            raise ValueError(f"bad override {pair!r}: use KEY=VALUE with a DataConfig or "
                             f"TrainConfig field ({', '.join(sorted(fields['train']))}; "
                             f"data.{', data.'.join(sorted(fields['data']))}; "
                             f"data.face.{', data.face.'.join(sorted(fields['face']))})")
        field = fields[scopes[0]][name]
        changes[scopes[0]][name] = _typed_value(pair, key.strip(), raw, str(field.type))
    face = dataclasses.replace(data_cfg.face, **changes["face"])
    return (dataclasses.replace(data_cfg, face=face, **changes["data"]),
            dataclasses.replace(train_cfg, **changes["train"]))


def configs_from_options(
    options: Dict[str, Any], overrides: Sequence[str] = (), given: Optional[Set[str]] = None
) -> Tuple[DataConfig, TrainConfig]:
    """Split `grefel train` options between the two configs, then apply KEY=VALUE. `face` is a
    FaceAlignment (or its dict); the other options are fields of DataConfig or TrainConfig.

    With `resume` set and `given` (the names of the settings the command line gave; a face
    setting as `face.NAME`), the settings not given take the run's values from OUT/config.json:
    `--resume --epochs 8` continues the run as it was started. What a given option may change
    is checked when the run is built (grefel.train_state.RESUME_MAY_CHANGE).
    """
    data_keys = {f.name for f in dataclasses.fields(DataConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    options = dict(options)
    face = dataclasses.asdict(FaceAlignment.coerce(options.pop("face", FaceAlignment())))
    if options.get("resume") and given is not None:
        saved = read_run_config(Path(options["out"]))
        saved_data = upgrade_data_dict(saved["data"])
        run_values = {k: v for scope in (saved_data, saved["train"]) for k, v in scope.items()
                      if k in (data_keys | train_keys) - {"face"}}
        options = {**options, **run_values,
                   **{k: v for k, v in options.items() if k in given},
                   "out": options["out"], "resume": True}
        face = {**face, **{k: v for k, v in saved_data.get("face", {}).items()
                           if f"face.{k}" not in given}}
    d = DataConfig(face=FaceAlignment.coerce(face),
                   **{k: v for k, v in options.items() if k in data_keys - {"face"}})
    t = TrainConfig(**{k: v for k, v in options.items() if k in train_keys})
    return apply_overrides(d, t, overrides)


def lr_at_epoch(base_lr: float, gamma: float, epoch: int) -> float:
    """The learning rate of (0-based) `epoch` under ExponentialLR: base_lr * gamma^epoch."""
    return base_lr * gamma**epoch


@dataclass
class Run:
    """Everything the epoch loop touches."""

    model: torch.nn.Module  # DDP-wrapped under torchrun
    raw: GReFEL
    loss_fn: GReFELLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    params: List[torch.nn.Parameter]
    device: torch.device
    amp: bool
    rank: int
    world: int
    train_set: Any
    train_loader: Any
    sampler: Any
    val_loader: Any
    cfg: TrainConfig
    data_cfg: DataConfig
    history: List[Dict[str, Any]]
    best: Dict[str, Any]
    out: Path
    epoch: int = 0  # epochs completed
    warmed_up: bool = False  # the image-stream warm-up (TrainConfig.image_warmup) is done
    config: Dict[str, Any] = dataclasses.field(default_factory=dict)  # for config.json
    resume_changes: Dict[str, List[Any]] = dataclasses.field(default_factory=dict)
    saved_epoch: Optional[int] = None  # the epoch of OUT/last.state.pt, once there is one
    init_report: Optional[Dict[str, Any]] = None  # what --init loaded, for init.json
    # --align-faces: {"mode": "off"}, or per split the settings and counts (alignment.json)
    alignment: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"mode": "off"})


def log(run_or_rank: Any, message: str) -> None:
    """A line on stderr, from rank 0 only."""
    if getattr(run_or_rank, "rank", run_or_rank) == 0:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: List[torch.nn.Parameter],
    clip_grad: float,
    average_over: int = 1,
) -> None:
    """Backward (scaled for AMP), optional all-reduce mean of the gradients over `average_over`
    ranks (for parameters trained outside DDP), clipping at `clip_grad` (0 = off), step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if average_over > 1:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= average_over
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    scaler.step(optimizer)
    scaler.update()


def train_one_epoch(run: Run, epoch: int) -> Dict[str, Any]:
    """One pass over this epoch's draw, with AMP, clipping and the LR schedule inline."""
    run.model.train()
    run.sampler.set_epoch(epoch)
    sums = torch.zeros(6, dtype=torch.float64)  # loss terms total/cls/anchor/center x n, hits, n
    skipped: List[int] = []
    start = time.perf_counter()
    steps = len(run.train_loader)
    for step, (images, labels, indices, bad) in enumerate(run.train_loader):
        skipped.extend(bad)
        if len(labels) < 2:  # the MLP head's BatchNorm (eq. 9) needs two samples
            continue
        images = images.to(run.device, non_blocking=True)  # (B, 3, 112, 112)
        labels = labels.to(run.device, non_blocking=True)  # (B,)
        with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.amp):
            out = run.model(images)
        out = GReFELOutput(*(t.float() if t is not None else None for t in out))
        terms = run.loss_fn(out, labels, run.raw)  # eq. 23, in float32
        _check_finite(run, terms, indices, epoch, step)
        optimizer_step(terms.total, run.optimizer, run.scaler, run.params, run.cfg.clip_grad)
        check_weights(run, f"epoch {epoch + 1}, step {step + 1}: the weights became "
                           f"non-finite in the optimizer step (the loss, "
                           f"{terms.total.item():.4g}, was finite)",
                      {n: p for n, p in run.raw.named_parameters() if p.requires_grad})
        n = len(labels)
        hits = (out.probs.argmax(dim=1) == labels).sum().item()
        sums += torch.tensor([*(t.item() * n for t in terms), hits, n], dtype=torch.float64)
        _show_progress(run, epoch, step + 1, steps, sums, time.perf_counter() - start)
    run.scheduler.step()  # ExponentialLR, once per epoch: see lr_at_epoch
    return _epoch_summary(run, sums, skipped, time.perf_counter() - start)


def warm_up_image_stream(run: Run) -> Dict[str, Any]:
    """Train the image stream alone for `image_warmup` steps before epoch 1.

    The paper starts the image stream from an IR-50 pretrained on MS-Celeb-1M. A preset without
    pretrained weights (tiny) starts from random convolutions, and the gradient that reaches
    them through the cross-attention levels, the fusion ViT and the MLP head trains them
    slowly: on SynthFER the whole tiny model sits at chance for ~200 steps at lr 1e-3, and
    learns from the first steps after 100 steps of this warm-up
    (research/results/warmup_2026-11-29.md). The warm-up trains the stream with a temporary
    linear classifier on its mean-pooled level-3 map (cross-entropy with the run's class weights
    and label smoothing, Adam at the run's lr, the training split's own labels) and then drops
    that classifier: the model and its checkpoints stay exactly GReFEL. Its batches are drawn
    as the epochs' are (`train_sampler`: class-balanced under data refinement), from another
    seed. Under DDP the gradients are averaged across ranks.
    """
    from torch.utils.data import DataLoader

    from grefel.data import collate_skip

    raw, cfg, steps = run.raw, run.cfg, run.cfg.warmup_steps()
    probe = torch.nn.Linear(raw.cfg.dims[2], raw.cfg.num_classes).to(run.device)
    params = list(raw.image.parameters()) + list(probe.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp)
    sampler = train_sampler(run.data_cfg, run.train_set, cfg.seed + 1, run.rank,
                            run.world)  # the epochs' kind of draw, not their draw
    loader = DataLoader(run.train_set, run.data_cfg.batch_size, sampler=sampler,
                        drop_last=len(sampler) > run.data_cfg.batch_size,
                        collate_fn=collate_skip, num_workers=run.data_cfg.workers)
    raw.image.train()
    weights = run.loss_fn.class_weights
    sums, first, step, start = torch.zeros(3, dtype=torch.float64), None, 0, time.perf_counter()
    while step < steps:
        sampler.set_epoch(step)
        for images, labels, _, _ in loader:
            if step == steps:
                break
            if len(labels) < 2:
                continue
            images, labels = images.to(run.device), labels.to(run.device)
            with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.amp):
                x = (images - raw.image_mean) / raw.image_std
                logits = probe(raw.image(x)[2].mean(dim=(2, 3)))  # (B, C)
            loss = torch.nn.functional.cross_entropy(
                logits.float(), labels, weight=weights, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingError(f"image-stream warm-up, step {step + 1}: non-finite loss "
                                    f"({loss.item()}); {stop_hint(run)}")
            optimizer_step(loss, optimizer, scaler, params, cfg.clip_grad,
                           average_over=run.world)  # the stream runs outside the DDP wrapper
            check_weights(run, f"image-stream warm-up, step {step + 1}: the weights became "
                               f"non-finite in the optimizer step (the loss, {loss.item():.4g}, "
                               "was finite)", dict(raw.image.named_parameters()))
            step += 1
            first = loss.item() if first is None else first
            if step > steps - max(steps // 4, 1):  # the last quarter's mean
                hits = (logits.argmax(dim=1) == labels).sum().item()
                sums += torch.tensor([loss.item() * len(labels), hits, len(labels)],
                                     dtype=torch.float64)
    sums = _all_sum(run, sums)
    n = max(sums[2].item(), 1.0)
    return {"steps": steps, "first_loss": first, "loss": sums[0].item() / n,
            "acc": sums[1].item() / n, "seconds": time.perf_counter() - start}


def stop_hint(run: Run) -> str:
    """What a run stopped by NaN/inf says it kept and what to do (the end of its one line)."""
    kept = (f"{run.out / 'last.safetensors'} (epoch {run.saved_epoch})" if run.saved_epoch
            else "none yet")
    return (f"the run stops and saves nothing non-finite (last good checkpoint: {kept}); "
            f"lower --lr (now {run.cfg.lr:g})")


def check_weights(run: Run, when: str, values: Any) -> None:
    """TrainingError "WHEN: N of M values in K tensors (...) are NaN or inf; the run stops ..."
    unless every floating tensor of `values` is finite (grefel.finite, the check of every model
    writer): a run stops at the step that broke its weights, before evaluating or saving them."""
    require_finite(values, when, stop_hint(run), error=TrainingError)


def _check_finite(run: Run, terms: Any, indices: torch.Tensor, epoch: int, step: int):
    """Stop on a NaN/inf loss (on any rank), naming the loss terms and this rank's batch files."""
    loss = terms.total
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=run.device)
    if run.world > 1:
        dist.all_reduce(bad)
    if bad.item() == 0:
        return
    files = [run.train_set.samples[int(i)].path for i in indices]
    where = "this batch" if not torch.isfinite(loss) else "another rank's batch"
    parts = ", ".join(f"{name} {value.item():.4g}" for name, value in terms._asdict().items()
                      if name != "total" and torch.is_tensor(value))
    raise TrainingError(
        f"epoch {epoch + 1}, step {step + 1}: non-finite loss ({loss.item()}; {parts}) on "
        f"{where}; {stop_hint(run)}. Files of rank {run.rank}'s batch: {', '.join(files)}"
    )


def _show_progress(run: Run, epoch: int, step: int, steps: int, sums: torch.Tensor, secs: float):
    if run.rank != 0 or not sys.stderr.isatty():
        return
    n = max(sums[5].item(), 1.0)
    sys.stderr.write(
        f"\repoch {epoch + 1}/{run.cfg.epochs} {step}/{steps}  loss {sums[0] / n:.4f}  "
        f"acc {sums[4] / n:.3f}  {sums[5] * run.world / max(secs, 1e-9):.1f} img/s "
    )
    if step == steps:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _all_sum(run: Run, t: torch.Tensor) -> torch.Tensor:
    if run.world > 1:
        t = t.to(run.device)
        dist.all_reduce(t)
    return t.cpu()


def _epoch_summary(run: Run, sums: torch.Tensor, skipped: List[int], secs: float) -> Dict:
    """All-reduced training metrics of one epoch; logs the unreadable images it skipped."""
    sums = _all_sum(run, sums)
    if run.world > 1:
        gathered: List[Any] = [None] * run.world
        dist.all_gather_object(gathered, skipped)
        skipped = [i for part in gathered for i in part]
    if skipped:
        names = sorted({run.train_set.samples[i].path for i in skipped})
        log(run, f"skipped {len(skipped)} unreadable image(s) (use --strict to stop on them): "
                 + ", ".join(names))
    n = max(sums[5].item(), 1.0)
    return {
        "train_loss": sums[0].item() / n,
        "train_cls": sums[1].item() / n,
        "train_anchor": sums[2].item() / n,
        "train_center": sums[3].item() / n,
        "train_acc": sums[4].item() / n,
        "images_per_s": sums[5].item() / max(secs, 1e-9),
        "epoch_seconds": secs,
        "skipped": len(skipped),
    }


def precise_bn(run: Run) -> None:
    """Recompute the trainable BatchNorm statistics on this epoch's training batches."""
    images = (batch[0].to(run.device) for batch in run.train_loader)
    reduce = (lambda t: _all_sum(run, t)) if run.world > 1 else None
    recalibrate_batchnorm(run.raw, images, run.cfg.precise_bn, reduce)


def best_metric(cfg: TrainConfig, row: Dict[str, Any]) -> str:
    """The epoch row's key that picks best.safetensors: val accuracy or macro-F1
    (`TrainConfig.select`), train accuracy without a validation split."""
    if "val_acc" not in row:
        return "train_acc"
    return "val_macro_f1" if cfg.select == "macro_f1" else "val_acc"


def validate(run: Run) -> Dict[str, float]:
    """Accuracy and macro-F1 of L_final on the validation split (confusion all-reduced)."""
    if run.val_loader is None:
        return {}
    try:
        pred = predict(run.raw, run.val_loader, run.device, amp=run.amp)
    except NonFiniteError as exc:
        raise TrainingError(f"epoch {run.epoch + 1}, validation: {exc}; {stop_hint(run)}") from None
    c = run.raw.cfg.num_classes
    cm = np.zeros((c, c), dtype=np.int64)
    if len(pred["labels"]):  # a rank's share can be empty (fewer images than ranks)
        cm = confusion_matrix(pred["labels"], pred["probs"].argmax(axis=1), c)
    cm = _all_sum(run, torch.from_numpy(cm)).numpy()
    if cm.sum() == 0:  # all readable before epoch 1 (check_readable), unreadable now
        raise TrainingError(
            f"{run.data_cfg.root}: no image of split {run.data_cfg.val_split!r} could be read at "
            f"epoch {run.epoch + 1}; the run stops before saving it. Last good state: "
            f"{run.out / 'last.state.pt'} (epoch {run.epoch})")
    return {"val_acc": float(np.trace(cm) / max(cm.sum(), 1)), "val_macro_f1": macro_f1(cm)}


def save_epoch(run: Run, row: Dict[str, Any], rngs: List[Dict[str, Any]]) -> None:
    """Rank 0: best/last checkpoints, the resumable state (last), then the metric files."""
    meta = {"epoch": run.epoch, "data_config": dataclasses.asdict(run.data_cfg),
            "train_config": dataclasses.asdict(run.cfg),
            "face_alignment": face_alignment_record(run.alignment)}
    try:  # the writers refuse NaN/inf themselves (grefel.finite); checked before, as a last net
        with deferred_signals():  # Ctrl-C between last.safetensors and its state: after both
            if run.best.get("epoch") == run.epoch:
                save_checkpoint(run.out / "best.safetensors", run.raw, metrics=row, **meta)
            save_checkpoint(run.out / "last.safetensors", run.raw, metrics=row, **meta)
            write_state(run, rngs)
    except NonFiniteError as exc:
        raise TrainingError(f"epoch {run.epoch}: {exc}; {stop_hint(run)}") from None
    run.saved_epoch = run.epoch
    write_metrics(run.out, run.history)


def face_alignment_record(alignment: Dict[str, Any]) -> Dict[str, Any]:
    """How the training images became faces, for the checkpoint sidecar's preprocessing:
    {"mode": "off"}, or the alignment settings of the training split (no counts)."""
    train = alignment.get("train")
    if not isinstance(train, dict):
        return {"mode": "off"}
    keys = ("mode", "detector", "detector_requested", "det_size", "align", "margin",
            "min_face", "size", "format")
    return {k: train[k] for k in keys if k in train}


def _gather_rng(run: Run) -> List[Dict[str, Any]]:
    """Every rank's RNG state, in rank order (collective: all ranks call it)."""
    if run.world == 1:
        return [rng_state()]
    gathered: List[Any] = [None] * run.world
    dist.all_gather_object(gathered, rng_state())
    return gathered


def open_tensorboard(out: Path) -> Any:
    """A SummaryWriter on OUT/tensorboard when the `tensorboard` package is installed, else None
    (the metric files hold the same numbers)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard needs the optional tensorboard package
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def write_tensorboard(writer: Any, row: Dict[str, Any]) -> None:
    """One epoch's numeric metrics as scalars (train/..., val/..., lr), step = epoch."""
    for key, value in row.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        tag = key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key
        writer.add_scalar(tag, value, row["epoch"])
    writer.flush()


def write_metrics(out: Path, history: List[Dict[str, Any]]) -> None:
    """metrics.csv and metrics.json, rewritten atomically from the history (one row per epoch)."""
    atomic_write_json(out / "metrics.json", history)
    keys: List[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    lines = [",".join(keys)]
    cell = lambda v: f"{v:.6g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines += [",".join(cell(row.get(k, "")) for k in keys) for row in history]
    atomic_write_bytes(out / "metrics.csv", ("\n".join(lines) + "\n").encode())




def _epoch_line(run: Run, row: Dict[str, Any]) -> str:
    val = (f"  val acc {row['val_acc']:.3f}  val macro-F1 {row['val_macro_f1']:.3f}"
           if "val_acc" in row else "")
    return (f"epoch {row['epoch']}/{run.cfg.epochs}  loss {row['train_loss']:.4f}  "
            f"train acc {row['train_acc']:.3f}{val}  {row['images_per_s']:.1f} img/s  "
            f"{row['epoch_seconds']:.0f}s")


# Setup: devices, data, model and optimiser from the configs -----------------------------------


def setup_distributed(device_name: str) -> Tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    except DeviceError as exc:
        raise TrainingError(str(exc)) from None
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def build_loaders(d: DataConfig, seed: int, rank: int, world: int) -> Dict[str, Any]:
    """Train and validation loaders; each rank reads a disjoint share of both."""
    from torch.utils.data import DataLoader

    from grefel.data import (
        FERDataset,
        absent_classes,
        check_readable,
        collate_skip,
        load_samples,
        make_transforms,
        shared_images,
        shared_warning,
    )

    samples, classes = load_samples(d.root, d.dataset, d.train_split)
    absent = absent_classes(samples, classes)
    if absent:  # the model would be asked to output a class it never sees
        raise TrainingError(
            f"{d.root}: split {d.train_split!r} has no sample of class(es) {', '.join(absent)} "
            f"(of the classes {', '.join(classes)}); remove them from the class list "
            "(classes.txt) or add their images")
    check_readable(samples, f"{d.root} split {d.train_split!r}")  # before epoch 1, not after
    aligned = {"train": align_split(d, samples, rank, world, d.train_split)}
    train_set = FERDataset(samples, classes, make_transforms(d.augment, policy=d.augment_policy),
                           strict=d.strict, read=aligned["train"])
    sampler = train_sampler(d, train_set, seed, rank, world)
    common = {"num_workers": d.workers, "collate_fn": collate_skip,
              "pin_memory": torch.cuda.is_available()}
    train_loader = DataLoader(train_set, d.batch_size, sampler=sampler,
                              drop_last=len(sampler) > d.batch_size, **common)
    val_loader = None
    if d.val_split:
        val_samples, val_classes = load_samples(d.root, d.dataset, d.val_split)
        if tuple(val_classes) != tuple(classes):
            raise TrainingError(f"{d.root}: split {d.val_split!r} has classes {val_classes}, "
                                f"split {d.train_split!r} has {classes}")
        absent = absent_classes(val_samples, classes)
        if absent:  # a warning, not an error: see docs/reliability (small validation splits)
            log(rank, f"warning: {d.root}: split {d.val_split!r} has no sample of class(es) "
                      f"{', '.join(absent)}: its accuracy and macro-F1 (--select macro_f1 picks "
                      "best.safetensors by it) leave them out, and every prediction of them "
                      "counts as an error; add their images to the split for a full measure")
        if d.val_split == "test":  # the user asked for it; the test scores must say so
            log(rank, f"warning: --val-split test: best.safetensors (and --select) is chosen on "
                      f"the test split of {d.root}, so its test scores are optimistic; keep the "
                      "test split for the final measure and choose on val")
        shared = shared_images(samples, val_samples)
        if shared:  # a warning: the user may mean it (a smoke run), but must know
            log(rank, shared_warning(d.root, d.val_split, d.train_split, shared,
                                     "its scores, and the choice of best.safetensors,"))
        check_readable(val_samples, f"{d.root} split {d.val_split!r}")
        aligned["val"] = align_split(d, val_samples, rank, world, d.val_split)
        val_set = FERDataset(val_samples, classes, make_transforms(False), strict=d.strict,
                             read=aligned["val"])
        val_loader = DataLoader(val_set, d.batch_size, sampler=range(rank, len(val_set), world),
                                **common)
    alignment = {"mode": "off"} if aligned["train"] is None else {
        split: a.report() for split, a in aligned.items() if a is not None}
    splits = {d.train_split: samples, **({d.val_split: val_samples} if d.val_split else {})}
    return {"train_set": train_set, "train_loader": train_loader, "sampler": sampler,
            "val_loader": val_loader, "classes": classes, "alignment": alignment,
            "fingerprint": data_fingerprint(Path(d.root).expanduser(), classes, splits)}


def train_sampler(d: DataConfig, train_set: Any, seed: int, rank: int, world: int) -> Any:
    """The draw of the training images: data refinement (paper §4.1: B per class, N_pg per
    group, anew every epoch) when refine_per_class is set, else a plain shuffle; this rank's
    share under DDP."""
    from torch.utils.data import DistributedSampler

    from grefel.data import RefinedSampler

    if not d.refine_per_class:
        return DistributedSampler(train_set, world, rank, shuffle=True, seed=seed)
    return RefinedSampler(train_set.labels, train_set.groups, len(train_set.class_names),
                          d.refine_per_class, d.refine_per_group, seed=seed, rank=rank,
                          world_size=world, repeat=d.refine_repeat)


def align_split(d: DataConfig, samples: Sequence[Any], rank: int, world: int,
                split: str) -> Any:
    """The aligned face crops of a split under `--align-faces detect` (grefel.align_data), or
    None when alignment is off. Under DDP each rank aligns its share first, then every rank
    reads the whole split back from the cache (the counts are then all "from the cache")."""
    from grefel.data.datasets import resolve_kind

    alignment = d.face.for_dataset(resolve_kind(d.root, d.dataset, split))
    if alignment.mode == "off":
        return None
    from grefel.align_data import AlignError, align_samples

    try:
        if world > 1:
            align_samples(samples, alignment, d.align_cache,
                          indices=range(rank, len(samples), world),
                          progress=lambda line: log(rank, f"{split}: {line}"))
            dist.barrier()
        aligned = align_samples(samples, alignment, d.align_cache,
                                progress=lambda line: log(rank, f"{split}: {line}"))
    except AlignError as exc:
        raise TrainingError(f"--align-faces {alignment.mode}: {exc}") from None
    log(rank, aligned.describe(f"{d.root} split {split!r}"))
    return aligned


def build_model(model_cfg: GReFELConfig, cfg: TrainConfig, rank: int = 0) -> GReFEL:
    """The network of `model_cfg`, with the pretrained stream weights `cfg` names.

    An import also sets that stream's input normalisation in `model.cfg` (grefel.weights).
    (`TrainConfig.init` is `init_from_checkpoint`'s, called by `build_run`.)
    """
    model = GReFEL(model_cfg)
    for path, kind in ((cfg.pretrained_ir50, "ir50"), (cfg.pretrained_mobilefacenet,
                                                        "mobilefacenet")):
        if path:
            from grefel.weights import import_pretrained

            report = import_pretrained(model, path, kind)
            log(rank, f"imported {len(report.loaded)} {kind} tensors from {path}")
    return model


# GReFELConfig fields a fine-tuning run sets itself; every other field (the architecture, the
# input normalisation an import wrote) is the checkpoint's.
_RUN_FIELDS = ("num_classes", "class_names", "frozen")


def _shapes(model: GReFEL) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def init_from_checkpoint(
    path: str, run_cfg: GReFELConfig, cfg: TrainConfig
) -> Tuple[GReFEL, Dict[str, Any]]:
    """A model to fine-tune from the grefel checkpoint `path` (e.g. `grefel weights import`'s).

    The network is the checkpoint's architecture with the run's classes, frozen parts and
    explicit loss/head overrides (`TrainConfig` fields not None). The preset and the Table 2
    variant must be the checkpoint's. Strict about what fits: every tensor of the file must exist
    in the model with its shape, and every model tensor must come from the file, except the
    class-dependent ones (those whose shape follows the class count) when the run's classes
    differ from the checkpoint's: those keep their fresh initialisation and are reported.

    Returns (model, report): loaded / reinitialised tensor names and a one-line summary.
    """
    from safetensors.torch import load_file

    from grefel.checkpoint import CheckpointError, read_meta, verify_weights

    try:
        meta = read_meta(path)
        verify_weights(path, meta)
        ck = GReFELConfig.from_dict(meta["config"])
    except CheckpointError as exc:
        raise TrainingError(f"--init: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(f"--init {path}: bad config in its sidecar ({exc})") from None
    if ck.name != cfg.preset:
        raise TrainingError(f"--init {path} is a {ck.name!r} checkpoint; pass --preset {ck.name}")
    variant = {k: getattr(ck, k) for k in VARIANTS[cfg.variant]}
    if variant != VARIANTS[cfg.variant]:
        have = next(n for n, v in VARIANTS.items() if v == variant)
        raise TrainingError(f"--init {path} is variant {have!r}; pass --variant {have}")
    overrides = {k: getattr(run_cfg, k) for k in _RUN_FIELDS}
    overrides.update({k: getattr(cfg, k) for k in MODEL_OVERRIDES if getattr(cfg, k) is not None})
    try:
        model_cfg = dataclasses.replace(ck, **overrides)
    except ValueError as exc:
        raise TrainingError(f"--init {path}: {exc}") from None
    same_classes = tuple(ck.class_names) == tuple(model_cfg.class_names)
    # Tensors whose shape follows the class count: compare with one more class.
    probe = dataclasses.replace(model_cfg, num_classes=model_cfg.num_classes + 1,
                                class_names=(*model_cfg.class_names, "_probe"))
    model = GReFEL(model_cfg)
    own = _shapes(model)
    per_class: set = set()
    if not same_classes:
        other = _shapes(GReFEL(probe))
        per_class = {k for k in own if own[k] != other[k]}
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise TrainingError(f"--init {path}: not a readable safetensors file ({exc})") from None
    # the check of every model reader (grefel.finite)
    require_finite(state, f"--init {path}", "a broken checkpoint that cannot be trained on; use "
                   "another file", error=TrainingError)
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if k not in per_class)
    misfit = sorted(f"{k}: file {tuple(state[k].shape)} vs model {own[k]}"
                    for k in set(own) & set(state)
                    if tuple(state[k].shape) != own[k] and k not in per_class)
    if unexpected or missing or misfit:
        parts = []
        for label, items in (("unexpected", unexpected), ("missing", missing),
                             ("shape", misfit)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
        raise TrainingError(f"--init {path}: the weights do not fit the model: "
                            + "; ".join(parts))
    fresh = model.state_dict()
    loaded = sorted(k for k in own if k not in per_class)
    fresh.update({k: state[k] for k in loaded})
    model.load_state_dict(fresh, strict=True)
    reinit = sorted(per_class)
    n_loaded = sum(int(np.prod(own[k])) for k in loaded)
    n_all = sum(int(np.prod(s)) for s in own.values())
    why = ("" if same_classes else
           f"; classes {list(model_cfg.class_names)} differ from the checkpoint's "
           f"{list(ck.class_names)}: the class-dependent tensors start fresh")
    report = {
        "checkpoint": str(path), "loaded": loaded, "reinitialised": reinit,
        "loaded_values": n_loaded, "total_values": n_all,
        "summary": (f"{len(loaded)} of {len(own)} tensors ({n_loaded / max(n_all, 1):.1%} of "
                    f"the values) loaded, {len(reinit)} re-initialised"
                    + (f" ({', '.join(reinit)})" if reinit else "") + why),
    }
    return model, report


def _check_out(out: Path, cfg: TrainConfig, config: Dict[str, Any]) -> Dict[str, List[Any]]:
    """Refuse to overwrite a run, or to resume a missing one or with settings that change what
    it means (grefel.train_state.RESUME_MAY_CHANGE); returns the allowed changes."""
    state = out / "last.state.pt"
    if cfg.resume and not state.is_file():
        raise TrainingError(f"--resume: {state} does not exist; nothing to resume")
    if not cfg.resume and state.is_file():
        raise TrainingError(f"{out} already holds a run ({state.name}); pass --resume to "
                            "continue it or choose another --out")
    if not cfg.resume:
        return {}
    saved = read_run_config(out)
    saved["data"] = upgrade_data_dict(saved["data"])  # face settings saved before they nested
    for scope, defaults in (("data", DataConfig()), ("train", TrainConfig())):
        # a setting added after the run was saved is compared with its default (what it ran)
        saved[scope] = {**flat_settings(dataclasses.asdict(defaults)),
                        **flat_settings(saved[scope])}
    refused, allowed = resume_differences(saved, config)
    if refused:
        raise TrainingError(
            f"--resume: {out / 'config.json'} was trained with other settings; a resume may "
            f"change only {', '.join(k.split('.')[1] for k in RESUME_MAY_CHANGE)}. Differences: "
            + "; ".join(refused) + ". Resume without them, or start a new run in another --out")
    if "data_fingerprint" in saved:  # runs from before the fingerprint resume unchecked
        changed = data_differences(saved["data_fingerprint"], config["data_fingerprint"])
        if changed:
            raise TrainingError(
                f"--resume: the data in {config['data']['root']} is not the data {out} started "
                f"on ({'; '.join(changed)}); resume on the data the run started with, or start "
                "a new run in another --out")
    return allowed


def _write_config(run: Run, config: Dict[str, Any], allowed: Dict[str, List[Any]]) -> None:
    """OUT/config.json: the configs this process trains with, and on a resume the history of
    resumes with what each changed (rank 0)."""
    if run.rank != 0:
        return
    if run.cfg.resume:
        resumed = read_run_config(run.out).get("resumed", [])
        config = {**config, "resumed": resumed + [{"after_epoch": run.epoch, "amp": run.amp,
                                                   "changed": {k: {"was": b, "now": a}
                                                               for k, (b, a) in allowed.items()}}]}
    atomic_write_json(run.out / "config.json", config)
    if run.init_report is not None and not run.cfg.resume:
        atomic_write_json(run.out / "init.json", run.init_report)
    if run.alignment.get("mode") != "off":
        atomic_write_json(run.out / "alignment.json", run.alignment)


def build_run(d: DataConfig, cfg: TrainConfig) -> Run:
    """Everything a run needs, from the configs (checked against OUT's run on --resume)."""
    rank, world, device = setup_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed + rank)
    data = build_loaders(d, cfg.seed, rank, world)
    init = None
    if cfg.init:
        raw, init = init_from_checkpoint(cfg.init, cfg.model_config(data["classes"]), cfg)
        log(rank, f"initialised from {cfg.init}: {init['summary']}")
    else:
        raw = build_model(cfg.model_config(data["classes"]), cfg, rank)
    raw = raw.to(device)
    model_cfg, out = raw.cfg, Path(cfg.out)
    config = {"model": model_cfg.to_dict(), "data": dataclasses.asdict(d),
              "train": dataclasses.asdict(cfg), "world_size": world,
              "data_fingerprint": data["fingerprint"]}
    allowed = _check_out(out, cfg, config)
    model: torch.nn.Module = raw
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=ids)
    weights = None
    if cfg.class_weights == "inverse":
        from grefel.data import class_counts

        counts = class_counts(data["train_set"].samples, model_cfg.num_classes)
        weights = torch.tensor(inverse_frequency_weights(counts), dtype=torch.float32)
    loss_fn = GReFELLoss(model_cfg, weights, cfg.label_smoothing).to(device)
    params = [p for p in raw.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    amp = cfg.amp and device.type == "cuda"
    return Run(model, raw, loss_fn, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=amp),
               params, device, amp, rank, world, data["train_set"], data["train_loader"],
               data["sampler"], data["val_loader"], cfg, d, [], {}, out, config=config,
               resume_changes=allowed, init_report=init, alignment=data["alignment"])


def finish_distributed(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()


# What gives a frozen stream its weights: the option, and the command that writes such a file
STREAM_WEIGHTS = {
    "landmark": ("--pretrained-mobilefacenet", "grefel pretrain landmarks"),
    "image": ("--pretrained-ir50", "grefel pretrain identity"),
}


def check_frozen_streams(cfg: TrainConfig) -> None:
    """TrainingError when a fresh run would freeze a stream without weights: it would stay
    randomly initialised for the whole run (the record of such runs: docs/research.md). A
    resumed run keeps what it was started with (runs from before the check included)."""
    stream = None if cfg.resume else cfg.unweighted_frozen_stream()
    if stream is None:
        return
    option, command = STREAM_WEIGHTS[stream]
    raise TrainingError(
        f"--freeze {stream}: the {stream} stream has no pretrained weights, so freezing keeps it "
        f"random; give {option} FILE (`{command}` writes one) or --init CKPT, or --freeze none")


def run_training(data_cfg: DataConfig, cfg: TrainConfig) -> Dict[str, Any]:
    """Train (or resume) one run; returns the best metric and the last epoch's row.

    Rank 0 owns the run folder for the whole run (OUT/.lock, grefel.train_state): a second run
    into the same folder stops before it reads or writes anything there.
    """
    if not cfg.out:  # Path("") is the working directory: never train into it by accident
        raise TrainingError("TrainConfig.out is empty: give the run folder (grefel train makes "
                            "a new runs/train/PRESET)")
    check_frozen_streams(cfg)
    out = Path(cfg.out)
    lock = None
    if int(os.environ.get("RANK", "0")) == 0:
        try:
            lock = lock_run_folder(out)
        except OSError as exc:
            raise TrainingError(f"--out {out}: cannot create or lock the run folder "
                                f"({exc.strerror or exc}); choose a writable folder") from None
        if lock.previous:
            log(0, f"took over the stale lock of {out} (pid {lock.previous.get('pid')} on "
                   f"{lock.previous.get('host')}, started {lock.previous.get('started')}, "
                   "no longer holds it)")
    try:
        try:
            run = build_run(data_cfg, cfg)
        except OSError as exc:
            raise TrainingError(f"{exc.filename or cfg.out}: {exc.strerror or exc}") from None
        try:
            return _train(run)
        except OSError as exc:  # a full disk, a folder gone: every file is whole (fileio)
            then = (f"Last good state: {run.out / 'last.state.pt'} (epoch {run.saved_epoch}); "
                    "free space (or fix the folder) and pass --resume"
                    if run.saved_epoch is not None else
                    "No state was saved yet: free space (or fix the folder) and run it again")
            raise TrainingError(
                f"{exc.filename or run.out}: {exc.strerror or exc}; the run stops and every "
                f"file it wrote before is intact. {then}") from None
        finally:
            finish_distributed(run.world)
    finally:
        if lock is not None:
            lock.release()


def _train(run: Run) -> Dict[str, Any]:
    """The run's body: resume, warm-up, then the epoch loop (checkpoints after every epoch)."""
    cfg, tensorboard = run.cfg, None
    try:
        if cfg.resume:
            load_state(run)
            run.saved_epoch = run.epoch
            if cfg.epochs < run.epoch:
                raise TrainingError(f"--resume: {run.out} has trained {run.epoch} epochs; "
                                    f"--epochs {cfg.epochs} would end before that")
            log(run, f"resumed {run.out} after epoch {run.epoch} of {cfg.epochs}"
                     + "".join(f"; {k} {b!r} -> {a!r}"
                               for k, (b, a) in run.resume_changes.items()))
        _write_config(run, run.config, run.resume_changes)
        if run.rank == 0:
            write_metrics(run.out, run.history)
            tensorboard = open_tensorboard(run.out)
        if cfg.warmup_steps() and not run.warmed_up and run.epoch == 0:
            warm = warm_up_image_stream(run)
            run.warmed_up = True
            rngs = _gather_rng(run)
            if run.rank == 0:
                atomic_write_json(run.out / "warmup.json", warm)
                write_state(run, rngs)  # a kill from here on resumes after the warm-up
                run.saved_epoch = 0
            log(run, f"image-stream warm-up: {warm['steps']} steps, loss {warm['first_loss']:.3f}"
                     f" -> {warm['loss']:.3f}, train acc {warm['acc']:.3f} (last quarter), "
                     f"{warm['seconds']:.0f}s")
        for epoch in range(run.epoch, cfg.epochs):
            lr = run.optimizer.param_groups[0]["lr"]
            row = {"epoch": epoch + 1, "lr": lr, **train_one_epoch(run, epoch)}
            precise_bn(run)  # eval-mode statistics that match the weights (train_utils)
            check_weights(run, f"epoch {epoch + 1}, before validation: the model's weights and "
                               "BatchNorm statistics", run.raw.state_dict())
            row.update(validate(run))
            run.epoch = epoch + 1
            run.history.append(row)
            metric = best_metric(cfg, row)
            if not run.best or row[metric] > run.best["value"]:
                run.best = {"metric": metric, "value": row[metric], "epoch": run.epoch}
            rngs = _gather_rng(run)
            if run.rank == 0:
                save_epoch(run, row, rngs)
                if tensorboard is not None:
                    write_tensorboard(tensorboard, row)
            log(run, _epoch_line(run, row))
        return {"out": str(run.out), "rank": run.rank, "epochs": run.epoch, "best": run.best,
                "last": run.history[-1] if run.history else {}, "alignment": run.alignment}
    finally:
        if tensorboard is not None:
            tensorboard.close()
