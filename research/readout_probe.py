"""Where a trained GReFEL's head reads the expression from: the fusion ViT's cls readout.

    python -m research.readout_probe --data runs/demo/synthfer \\
        --model warmup=runs/x/warmup/best.safetensors --model plain=runs/x/plain/best.safetensors

For each checkpoint (`NAME=FILE`, a `grefel train` best/last file) and the images of --data
(eval transforms), the fusion ViT's input tokens Xo (eq. 6, (N, 147, D)) and the embedding e the
head reads (eq. 8: the SE of the normalised cls token) are collected, and:

- **cls attention entropy**: the entropy of each block's cls-query attention over the 148
  tokens, divided by ln 148 (1 = uniform: the cls token reads the average of the tokens), mean
  over heads and test images; with the largest weight any token gets.
- **linear probes** (`research.stream_probe.fit_probe`: multinomial logistic regression,
  fitted on the training split, scored on val and test) of three feature sets: Xo averaged over
  its tokens ("pooled tokens", D), Xo flattened ("all tokens", 147 D: where each token is, too),
  and e (D). All tokens >> pooled tokens ~ e means the expression is in the tokens but the
  head's readout only sees their average.
- **e from the pooled tokens**: R^2 (on test) of a ridge regression of e on the pooled tokens,
  fitted on the training split: near 1 means e is, to first order, a linear function of the
  tokens' average.

The record goes to research/results/readout_probe_<date>.json/.md (issue 16: why the recipe
without the image warm-up stays at chance).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

from benchmarks.report import probe_header, publish
from research.frozen_trunk import split_loader
from research.stream_probe import score_probe

RESULTS = Path(__file__).resolve().parent / "results"
SPLITS = ("train", "val", "test")


def parse_model(text: str) -> Tuple[str, Path]:
    """'NAME=FILE' -> (name, path); one clear error for a bad spec."""
    name, eq, path = text.partition("=")
    if not eq or not name or not path:
        raise argparse.ArgumentTypeError(f"--model {text!r}: expected NAME=FILE.safetensors")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--model {text!r}: {path} is not a file")
    return name, Path(path)


def cls_attention(block: torch.nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """The cls token's attention (B, heads, N) of one ViT block, from its normalised input
    (B, N, D): softmax(q_cls k^T * scale) with the block's own qkv weights (eq. 7's MHSA)."""
    attn = block.attn
    B, N, _ = normed.shape
    qkv = attn.qkv(normed).reshape(B, N, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = qkv[0][:, :, :1], qkv[1]  # (B, h, 1, d), (B, h, N, d)
    return ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)[:, :, 0]  # (B, h, N)


@torch.no_grad()
def collect(model: torch.nn.Module, data: Path, split: str, batch_size: int = 64
            ) -> Dict[str, torch.Tensor]:
    """Xo (N, 147, D), e (N, D), labels (N,) and each block's cls attention (N, blocks, h, T)."""
    loader, _ = split_loader(data, split, batch_size=batch_size)
    fusion = model.fusion
    xo: List[torch.Tensor] = []
    attn: List[torch.Tensor] = []
    per_block: List[torch.Tensor] = []

    def watch(block: torch.nn.Module) -> Any:
        def hook(_module: torch.nn.Module, _args: Any, normed: torch.Tensor) -> None:
            per_block.append(cls_attention(block, normed))
        return hook

    hooks = [block.norm1.register_forward_hook(watch(block)) for block in fusion.blocks]
    hooks.append(fusion.blocks.register_forward_pre_hook(  # input: [cls; Xo] + pos (eq. 6)
        lambda _m, args: xo.append(args[0][:, 1:] - fusion.pos_embed[:, 1:])))
    es, labels = [], []
    try:
        for images, y, _, _ in loader:
            per_block.clear()
            _, e = model.forward_features(images)
            attn.append(torch.stack(per_block, dim=1))  # (B, blocks, h, N)
            es.append(e)
            labels.append(y)
    finally:
        for h in hooks:
            h.remove()
    return {"xo": torch.cat(xo), "e": torch.cat(es), "labels": torch.cat(labels),
            "attn": torch.cat(attn)}


def attention_summary(attn: torch.Tensor) -> List[Dict[str, float]]:
    """Per block: mean normalised entropy (1 = uniform), mean largest weight and image
    dependence of the cls attention (N, blocks, h, T)."""
    T = attn.shape[-1]
    p = attn.clamp_min(torch.finfo(attn.dtype).tiny)
    entropy = -(attn * p.log()).sum(-1) / math.log(T)  # (N, blocks, h)
    # How much the pattern depends on the image: total-variation distance of each image's
    # attention from the mean pattern over the images (0: the same positions for every face).
    tv = 0.5 * (attn - attn.mean(0, keepdim=True)).abs().sum(-1)  # (N, blocks, h)
    return [{"block": b, "entropy": float(entropy[:, b].mean()),
             "max_weight": float(attn[:, b].amax(-1).mean()), "uniform_weight": 1.0 / T,
             "image_dependence": float(tv[:, b].mean())}
            for b in range(attn.shape[1])]


def spread(x: torch.Tensor) -> float:
    """How much x (N, D) varies between images relative to its size: the RMS over dims of the
    std across images, divided by the RMS of x (0: the same vector for every image)."""
    return float(x.std(0).pow(2).mean().sqrt() / x.pow(2).mean().sqrt().clamp_min(1e-12))


def ridge_r2(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
             y_test: torch.Tensor, l2: float = 1e-3) -> float:
    """R^2 on test of a ridge regression y ~ x (standardised x, intercept) fitted on train."""
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    a = torch.cat([(x_train - mean) / std, torch.ones(len(x_train), 1)], 1).double()
    w = torch.linalg.solve(a.T @ a + l2 * len(a) * torch.eye(a.shape[1], dtype=a.dtype),
                           a.T @ y_train.double())
    b = torch.cat([(x_test - mean) / std, torch.ones(len(x_test), 1)], 1).double()
    resid = (y_test.double() - b @ w).pow(2).sum()
    total = (y_test.double() - y_test.double().mean(0)).pow(2).sum().clamp_min(1e-12)
    return float(1.0 - resid / total)


def feature_sets(c: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {"pooled tokens": c["xo"].mean(1), "all tokens": c["xo"].flatten(1),
            "embedding e": c["e"]}


def probe_model(path: Path, data: Path) -> Dict[str, Any]:
    from grefel.checkpoint import load_checkpoint

    model, _ = load_checkpoint(path)
    col = {split: collect(model, data, split) for split in SPLITS}
    classes = len(model.cfg.class_names)
    sets = {split: feature_sets(col[split]) for split in SPLITS}
    probes = [{"features": name, **score_probe(
                  {split: (sets[split][name].float(), col[split]["labels"]) for split in SPLITS},
                  classes)}
              for name in sets["train"]]
    return {"classes": classes, "attention": attention_summary(col["test"]["attn"]),
            "probes": probes,
            "e_spread": spread(col["test"]["e"]),
            "pooled_spread": spread(sets["test"]["pooled tokens"]),
            "e_from_pooled_r2": ridge_r2(sets["train"]["pooled tokens"], col["train"]["e"],
                                         sets["test"]["pooled tokens"], col["test"]["e"])}


def markdown(record: Dict[str, Any]) -> str:
    tokens = round(1.0 / record["models"][0]["attention"][0]["uniform_weight"])  # cls + Xo
    lines = [f"# The fusion ViT's cls readout of trained models ({record['date']})", "",
             f"Data: `{record['data']}`; chance {record['chance']:.3f}. Command:", "",
             "    " + record["command"], "",
             f"| model | cls attention entropy / ln {tokens} (block 0) | largest weight "
             f"(uniform {1 / tokens:.4f}) | its dependence on the image (TV) | "
             "spread of e | spread of pooled tokens | e from pooled tokens, R^2 | "
             "probe: pooled tokens | probe: all tokens | probe: e |", "|---" * 10 + "|"]
    for m in record["models"]:
        a = m["attention"][0]
        acc = {p["features"]: p["test_acc"] for p in m["probes"]}
        lines.append(f"| {m['name']} | {a['entropy']:.3f} | {a['max_weight']:.4f} | "
                     f"{a['image_dependence']:.3f} | {m['e_spread']:.3f} | "
                     f"{m['pooled_spread']:.3f} | {m['e_from_pooled_r2']:.3f} | "
                     f"{acc['pooled tokens']:.3f} | "
                     f"{acc['all tokens']:.3f} | {acc['embedding e']:.3f} |")
    lines += ["", "Probes: test accuracy of a linear classifier fitted on the training split. "
              f"Time: {record['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] = ()) -> int:
    p = argparse.ArgumentParser(prog="python -m research.readout_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a SynthFER-layout dataset")
    p.add_argument("--model", type=parse_model, action="append", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv or sys.argv[1:])
    torch.set_num_threads(args.threads)
    start, data = time.perf_counter(), Path(args.data)
    models = []
    for name, path in args.model:
        result = probe_model(path, data)
        print(f"{name}: {result}", file=sys.stderr, flush=True)
        models.append({"name": name, "file": str(path), **result})
    record = {
        **probe_header("research.readout_probe", argv or sys.argv[1:]), "data": str(data),
        "chance": 1.0 / models[-1]["classes"], "models": models,
        "seconds": round(time.perf_counter() - start, 1),
    }
    publish(Path(args.out) / f"readout_probe_{record['date']}", record, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
