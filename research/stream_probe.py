"""What each stream's features say about the expression: linear probes on the cached maps.

    python -m research.stream_probe --data runs/demo/synthfer --work runs/probe \\
        --trunk random: --trunk identity:ir50=runs/pre/ir50_150.safetensors \\
        --trunk identity+warmup:ir50=runs/pre/ir50_150.safetensors,warmup=150 ...

Each `--trunk NAME:KEY=VALUE,...` (keys: ir50, mobilefacenet, warmup, seed) is a pair of
streams built by `research.frozen_trunk.build_trunk` on --data (stored under --work, reused
when present): the pretrained weights named, then `warmup` steps of the image-stream warm-up
on the training labels. For each trunk and stream (image: IR-50 level 3; landmark:
MobileFaceNet level 3) two linear probes are fitted on the training split (multinomial
logistic regression, standardised features, L2 1e-3, L-BFGS) and scored on val and test:
"pooled" (the level-3 map averaged over its 7 x 7 positions, what the warm-up's classifier
sees) and "map" (the whole 7 x 7 map flattened: where the features are, too). The record
(research/results/stream_probe_<date>.json/.md) also holds chance and the majority baseline.

Why it matters (issue 16): GReFEL's window cross-attention takes its keys and values from the
image stream and only its queries from the landmark stream (eqs. 1-3), so what the fused tokens
can say about the expression must be in the image stream's features (or in where the landmark
queries look). A probe near chance on the image stream means the head has nothing to read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

from benchmarks.report import probe_header, publish
from research.frozen_trunk import MAPS

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = {"ir50": "", "mobilefacenet": "", "warmup": "0", "seed": "0"}


def parse_trunk(text: str) -> Tuple[str, Dict[str, str]]:
    """'NAME:KEY=VALUE,...' -> (name, settings); one clear error for a bad spec."""
    name, _, rest = text.partition(":")
    spec = dict(KEYS)
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in KEYS:
            raise argparse.ArgumentTypeError(
                f"--trunk {text!r}: expected NAME:KEY=VALUE,... with keys {', '.join(KEYS)}")
        spec[key] = value
    if not name:
        raise argparse.ArgumentTypeError(f"--trunk {text!r}: the trunk needs a NAME before ':'")
    return name, spec


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, *, l2: float = 1e-3,
              iters: int = 200) -> Tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardised x (N, F) -> (layer, mean, std)."""
    mean = x.mean(dim=0)
    std = x.std(dim=0).clamp_min(1e-6)  # guarded: constant features stay 0 after scaling
    z = (x - mean) / std
    layer = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(z), y) + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return layer, mean, std


@torch.no_grad()
def probe_accuracy(layer: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor,
                   x: torch.Tensor, y: torch.Tensor) -> float:
    return float((layer((x - mean) / std).argmax(dim=1) == y).float().mean())


def features(maps: Sequence[torch.Tensor], stream: str, kind: str) -> torch.Tensor:
    """Level 3 of one stream ("image": i3, "landmark": l3), pooled or flattened, float32."""
    level3 = maps[MAPS.index("i3" if stream == "image" else "l3")].float()  # (N, C, 7, 7)
    return level3.mean(dim=(2, 3)) if kind == "pooled" else level3.flatten(1)


def score_probe(splits: Dict[str, Tuple[torch.Tensor, torch.Tensor]], classes: int
                ) -> Dict[str, Any]:
    """A probe fitted on splits["train"] (features (N, F), labels (N,)) and its accuracy on
    every split given: {"dims", "train_acc", "val_acc", ...}."""
    x, y = splits["train"]
    layer, mean, std = fit_probe(x, y, classes)
    return {"dims": x.shape[1], **{f"{split}_acc": probe_accuracy(layer, mean, std, fx, fy)
                                   for split, (fx, fy) in splits.items()}}


def probe_trunk(trunk: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The four probes (2 streams x pooled/map) of a trunk (`frozen_trunk.load_trunk`)."""
    c = len(trunk["classes"])
    return [{"stream": stream, "features": kind, **score_probe(
                {split: (features(trunk[split][0], stream, kind), trunk[split][1])
                 for split in ("train", "val", "test")}, c)}
            for stream in ("image", "landmark") for kind in ("pooled", "map")]


def markdown(record: Dict[str, Any]) -> str:
    lines = [f"# Linear probes of the streams' features ({record['date']})", "",
             f"Data: `{record['data']}`; chance {record['chance']:.3f}, majority baseline "
             f"(test) {record['majority_test']:.3f}. Command:", "",
             "    " + record["command"], "",
             "| trunk | image stream | landmark stream | warm-up | stream | features | dims | "
             "train acc | val acc | test acc |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in record["trunks"]:
        s = t["spec"]
        for r in t["probes"]:
            lines.append(f"| {t['name']} | {s['ir50'] or 'random'} | "
                         f"{s['mobilefacenet'] or 'random'} | {s['warmup']} | {r['stream']} | "
                         f"{r['features']} | {r['dims']} | {r['train_acc']:.3f} | "
                         f"{r['val_acc']:.3f} | {r['test_acc']:.3f} |")
    lines += ["", f"Time: {record['seconds'] / 60:.1f} min (building the missing trunks and "
              "fitting the probes)."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] = ()) -> int:
    p = argparse.ArgumentParser(prog="python -m research.stream_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a SynthFER-layout dataset")
    p.add_argument("--trunk", type=parse_trunk, action="append", required=True)
    p.add_argument("--work", default="runs/probe", help="where the trunks are stored")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv or sys.argv[1:])
    from grefel.metrics import majority_baseline
    from research.frozen_trunk import build_trunk, features_path, load_trunk

    torch.set_num_threads(args.threads)
    start, data = time.perf_counter(), Path(args.data)
    trunks = []
    for name, spec in args.trunk:
        path = features_path(Path(args.work), 0.0, {"data": str(data), **spec})
        if not path.is_file():
            print(f"building trunk {name} -> {path} ...", file=sys.stderr, flush=True)
            build_trunk(data, path, seed=int(spec["seed"]), image_warmup=int(spec["warmup"]),
                        lr=1e-3, batch_size=32, pretrained_mobilefacenet=spec["mobilefacenet"],
                        pretrained_ir50=spec["ir50"], threads=args.threads)
        trunk = load_trunk(path)
        probes = probe_trunk(trunk)
        for r in probes:
            print(f"{name:18s} {r['stream']:8s} {r['features']:6s} val {r['val_acc']:.3f} "
                  f"test {r['test_acc']:.3f}", file=sys.stderr, flush=True)
        trunks.append({"name": name, "spec": spec, "file": str(path),
                       "report": trunk["report"], "probes": probes})
    c = len(trunk["classes"])  # chance and majority of the last trunk's data (one --data)
    record = {
        **probe_header("research.stream_probe", argv or sys.argv[1:]), "data": str(data),
        "chance": 1.0 / c,
        "majority_test": majority_baseline(trunk["train"][1].tolist(),
                                           trunk["test"][1].numpy(), c)[1],
        "trunks": trunks, "seconds": round(time.perf_counter() - start, 1),
    }
    publish(Path(args.out) / f"stream_probe_{record['date']}", record, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
