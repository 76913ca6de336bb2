"""Mini-ablation: the paper's Tables 2 and 7 at small scale, on SynthFER.

    python -m research.ablation                      # 2 noise levels x 4 variants x 3 seeds
    python -m research.ablation --seeds 0 --noise 0  # a quick look
    python -m research.ablation --trunk frozen ...   # streams trained once: many seeds on a CPU
    python -m research.ablation --preset paper --device cuda ...   # a GPU's (docs/research.md)

For each label-noise rate a SynthFER dataset is drawn once (same pictures for every rate: the
noise only flips training labels; val and test stay clean). With `--trunk trained` every
Table 2 variant (no_rb, anchors, mhsa, both) is trained with `grefel.train.run_training` for
each seed, and the checkpoint with the best validation accuracy is scored on the clean test
split with `grefel.evaluate.evaluate_checkpoint`; with `--trunk frozen` the streams are trained
once per noise rate and every run trains the rest of the model on their cached maps
(`research.frozen_trunk`, tiny preset on the CPU). The record holds every run and, per
(noise, variant), the mean and sample standard deviation over seeds of test accuracy and
macro-F1 (of the final prediction L_final and of the primary l), written to
research/results/ablation_<preset>_<trunk>_<date>.json and .md. Runs already in the partial
record of the same settings are not repeated, so an interrupted ablation continues where it
stopped, and more seeds can be added later.

Paired seeds: every variant of one seed trains on the same data, in the same order (the sampler
is seeded by the seed), from the same initial weights of the parts the variants share
(`GReFEL` creates the balancing modules last) and, with `--pretrained-mobilefacenet` /
`--pretrained-ir50` (issue 16: `grefel pretrain`), from the same pretrained streams. The record
then gives, per noise rate and variant, the paired differences variant - no_rb of test accuracy
over the seeds that have both, their mean and a 95 % Student-t interval (`paired_differences`);
an interval that excludes 0 is reported as an effect, one that contains it as none found at
this budget.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, List, Sequence

from benchmarks.report import publish
from grefel.fileio import atomic_write_json

VARIANTS = ("no_rb", "anchors", "mhsa", "both")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m research.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1500, help="SynthFER images (all splits)")
    p.add_argument("--imbalance", default="uniform", choices=["uniform", "rafdb"])
    p.add_argument("--difficulty", type=float, default=0.3, help="SynthFER --difficulty")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", default="tiny", choices=["tiny", "paper"],
                   help="the network (paper: a GPU's job; --trunk trained only)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (--trunk trained)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-warmup", type=int, default=100,
                   help="image-stream warm-up steps (grefel.train.warm_up_image_stream)")
    p.add_argument("--augment", action="store_true",
                   help="the training augmentation (off: SynthFER draws new faces instead)")
    p.add_argument("--freeze", default="none", choices=["landmark", "image", "none"])
    p.add_argument("--pretrained-mobilefacenet", default="",
                   help="landmark stream weights for every run (grefel pretrain landmarks)")
    p.add_argument("--pretrained-ir50", default="",
                   help="image stream weights for every run (grefel pretrain identity)")
    p.add_argument("--trunk", default="trained", choices=["trained", "frozen"],
                   help="trained: every run trains the whole model (grefel.train); frozen: the "
                        "streams are trained once per noise rate, frozen, and every run trains "
                        "the rest on their cached maps (research.frozen_trunk)")
    p.add_argument("--trunk-seed", type=int, default=0,
                   help="--trunk frozen: the seed of the streams' warm-up")
    p.add_argument("--precise-bn", type=int, default=128, help="see grefel.train_utils")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs trained in parallel processes")
    p.add_argument("--work", default="runs/ablation", help="datasets and run folders")
    p.add_argument("--out", default=str(RESULTS), help="where the JSON/Markdown record goes")
    p.add_argument("--report-only", action="store_true",
                   help="write the record from the finished runs of the partial record, "
                        "train nothing (the table then says how many runs it has)")
    return p.parse_args(argv)


def dataset(work: Path, n: int, noise: float, imbalance: str, difficulty: float) -> Path:
    """The SynthFER dataset of this noise rate (drawn once, then reused)."""
    from grefel.data.synthfer import generate_synthfer

    root = work / f"synthfer_n{n}_{imbalance}_d{difficulty:g}_noise{noise:g}"
    if not (root / "test.csv").is_file():
        print(f"drawing {root} ...", file=sys.stderr, flush=True)
        generate_synthfer(root, n, seed=0, noise=noise, imbalance=imbalance,
                          difficulty=difficulty, overwrite=True)  # a draw that did not finish
    return root


def one_run(args: argparse.Namespace, data: Path, noise: float, variant: str, seed: int) -> Dict:
    """Train one (noise, variant, seed) cell and score its best checkpoint on the test split."""
    import shutil

    from grefel.config import DataConfig, TrainConfig
    from grefel.evaluate import evaluate_checkpoint
    from grefel.train import run_training

    out = Path(args.work) / f"noise{noise:g}_{variant}_seed{seed}"
    shutil.rmtree(out, ignore_errors=True)  # a run cut off earlier starts over
    start = time.perf_counter()
    summary = run_training(
        DataConfig(root=str(data), batch_size=args.batch_size, augment=args.augment),
        TrainConfig(out=str(out), preset=args.preset, variant=variant, epochs=args.epochs,
                    lr=args.lr, seed=seed, device=args.device, freeze=args.freeze,
                    precise_bn=args.precise_bn, image_warmup=args.image_warmup,
                    pretrained_mobilefacenet=args.pretrained_mobilefacenet,
                    pretrained_ir50=args.pretrained_ir50),
    )
    train_s = time.perf_counter() - start
    report = evaluate_checkpoint(out / "best.safetensors", data, split="test",
                                 device=args.device)
    return {
        "noise": noise, "variant": variant, "seed": seed,
        "test_acc": report["final"]["accuracy"], "test_macro_f1": report["final"]["macro_f1"],
        "primary_acc": report["primary"]["accuracy"],
        "primary_macro_f1": report["primary"]["macro_f1"],
        "changes": report["balancing_changes"], "best_epoch": summary["best"]["epoch"],
        "best_val_acc": summary["best"]["value"],
        "majority_acc": report["majority_baseline"]["accuracy"],
        "train_seconds": round(train_s, 1), "total_seconds": round(time.perf_counter() - start, 1),
    }


def frozen_runs(args: argparse.Namespace, noise: float, seed: int,
                variants: Sequence[str]) -> List[Dict]:
    """The (noise, variant, seed) cells of one noise rate and seed on its frozen trunk."""
    from research.frozen_trunk import load_trunk, train_variant

    trunk = load_trunk(trunk_path(args, noise))
    return [{"noise": noise, **train_variant(trunk, variant=variant, seed=seed,
                                             epochs=args.epochs, lr=args.lr,
                                             batch_size=args.batch_size,
                                             precise_bn=args.precise_bn)}
            for variant in variants]


def trunk_path(args: argparse.Namespace, noise: float) -> Path:
    """The trunk file of one noise rate under these settings (research.frozen_trunk)."""
    from research.frozen_trunk import features_path

    keys = ("n", "imbalance", "difficulty", "trunk_seed", "image_warmup", "lr", "batch_size",
            "pretrained_mobilefacenet", "pretrained_ir50")
    return features_path(Path(args.work), noise, {k: getattr(args, k) for k in keys})


def frozen_trunks(args: argparse.Namespace) -> Dict[str, Any]:
    """Build the missing trunks of `--trunk frozen` (one per noise rate, on all the run's
    cores); returns each noise rate's warm-up report."""
    from research.frozen_trunk import build_trunk, trunk_report

    reports = {}
    for noise in args.noise:
        path = trunk_path(args, noise)
        if not path.is_file() and not args.report_only:
            data = dataset(Path(args.work), args.n, noise, args.imbalance, args.difficulty)
            print(f"training the streams of noise {noise:g} -> {path} ...", file=sys.stderr,
                  flush=True)
            build_trunk(data, path, seed=args.trunk_seed, image_warmup=args.image_warmup,
                        lr=args.lr, batch_size=args.batch_size,
                        pretrained_mobilefacenet=args.pretrained_mobilefacenet,
                        pretrained_ir50=args.pretrained_ir50,
                        threads=max(args.threads * args.jobs, 1))
        if path.is_file():
            reports[f"{noise:g}"] = {"file": str(path), **trunk_report(path)}
    return reports


def _init(args: argparse.Namespace) -> None:
    """Worker start: its torch thread count."""
    import torch

    torch.set_num_threads(args.threads)


def _mean_std(values: List[float]) -> Dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarise(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean and sample std over seeds per (noise, variant)."""
    rows = []
    for noise in sorted({r["noise"] for r in runs}):
        for variant in VARIANTS:
            cell = [r for r in runs if r["noise"] == noise and r["variant"] == variant]
            if cell:
                rows.append({"noise": noise, "variant": variant, **{
                    k: _mean_std([r[k] for r in cell])
                    for k in ("test_acc", "test_macro_f1", "primary_acc", "primary_macro_f1")
                }})
    return rows


def _t_cdf(t: float, df: int, points: int = 4001) -> float:
    """Student-t CDF by Simpson integration of the density on [0, |t|] (df >= 1)."""
    x = [abs(t) * i / (points - 1) for i in range(points)]
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    f = [c * (1 + v * v / df) ** (-(df + 1) / 2) for v in x]
    h = abs(t) / (points - 1)
    area = h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    return 0.5 + math.copysign(area, t)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom, by bisection."""
    lo, hi = 0.0, 1000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def paired_differences(runs: List[Dict[str, Any]], baseline: str = "no_rb",
                       key: str = "test_acc") -> List[Dict[str, Any]]:
    """Per (noise, variant != baseline): differences variant - baseline over the seeds run with
    both, their mean, sample std and 95 % Student-t interval (None with fewer than 2 pairs)."""
    rows = []
    for noise in sorted({r["noise"] for r in runs}):
        base = {r["seed"]: r[key] for r in runs if r["noise"] == noise and r["variant"] == baseline}
        for variant in VARIANTS:
            if variant == baseline:
                continue
            other = {r["seed"]: r[key] for r in runs
                     if r["noise"] == noise and r["variant"] == variant}
            seeds = sorted(set(base) & set(other))
            if not seeds:
                continue
            diffs = [other[s] - base[s] for s in seeds]
            mean = statistics.fmean(diffs)
            row = {"noise": noise, "variant": variant, "baseline": baseline, "metric": key,
                   "seeds": seeds, "diffs": diffs, "mean": mean, "std": None,
                   "ci95": None, "effect": None}
            if len(diffs) > 1:
                std = statistics.stdev(diffs)
                half = t_quantile(0.975, len(diffs) - 1) * std / math.sqrt(len(diffs))
                row.update(std=std, ci95=[mean - half, mean + half],
                           effect=bool(mean - half > 0 or mean + half < 0))
            rows.append(row)
    return rows


METRIC_NAMES = {"test_acc": "accuracy", "test_macro_f1": "macro-F1"}


def _paired_lines(record: Dict[str, Any]) -> List[str]:
    rows = record.get("paired", [])
    if not rows:
        return []
    lines = ["", "Paired differences on the test split, variant - no_rb (same seed: same data, "
             "order, initial shared weights and streams), mean and 95 % Student-t interval over "
             "seeds (each interval on its own, no correction for the number of comparisons):",
             "", "| noise | variant | metric | mean diff | 95 % interval | pairs | "
             "effect at this budget |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "n/a (1 pair)" if r["ci95"] is None else f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
        effect = {None: "undecided (1 pair)", True: "yes (interval excludes 0)",
                  False: "none found (interval contains 0)"}[r["effect"]]
        metric = METRIC_NAMES.get(r.get("metric", "test_acc"), r.get("metric"))
        lines.append(f"| {r['noise']:g} | {r['variant']} | {metric} | {r['mean']:+.3f} | {ci} | "
                     f"{len(r['diffs'])} | {effect} |")
    return lines


def _trunk_lines(record: Dict[str, Any]) -> List[str]:
    """What `--trunk frozen` trained once per noise rate (research.frozen_trunk)."""
    if record["settings"].get("trunk", "trained") != "frozen":
        return []
    s = record["settings"]
    lines = ["", "**Trunk frozen** (`research/frozen_trunk.py`): per noise rate the streams "
             f"were trained once (seed {s.get('trunk_seed', 0)}): landmark stream "
             f"`{s['pretrained_mobilefacenet'] or 'random'}`, image stream "
             f"`{s['pretrained_ir50'] or 'random'}`, then {s['image_warmup']} warm-up steps of "
             "the image stream on that rate's training labels; then frozen, their maps of "
             "every image cached (float16), and each run trained the cross-attention levels, "
             "the fusion ViT, the head and its balancing on them (the freeze setting above "
             "does not apply). Paired runs share the initial weights of every shared part, "
             "the batch order and the trunk; the intervals cover the head's seed, not the "
             "trunk's.", ""]
    for noise, t in sorted(record.get("trunks", {}).items()):
        lines.append(f"- noise {noise}: warm-up train accuracy {t.get('acc', float('nan')):.3f}"
                     f" (last quarter of {t.get('steps', 0)} steps), "
                     f"{t.get('seconds_with_maps', 0) / 60:.1f} min with the maps")
    return lines


def markdown(record: Dict[str, Any]) -> str:
    s = record["settings"]
    lines = [
        f"# Mini-ablation ({record['date']}): Table 2 variants x label noise, "
        f"{s.get('preset', 'tiny')} preset, SynthFER",
        "",
        f"SynthFER n={s['n']}, {s['imbalance']} classes, difficulty {s['difficulty']} (seed 0; "
        f"noise flips train labels only), image-stream warm-up {s['image_warmup']} steps, "
        f"augmentation {'on' if s['augment'] else 'off'}, "
        f"{s['epochs']} epochs, batch {s['batch_size']}, Adam lr {s['lr']}, freeze "
        f"{s['freeze']}, precise BN on {s['precise_bn']} images, seeds {s['seeds']}, "
        f"device {s.get('device', 'cpu')}, "
        f"{s['threads']} torch thread(s) on {record['env']['cpus']} shared CPU cores. "
        "Test split is clean; each run's best-validation checkpoint is scored. "
        "Mean +- sample std over seeds.",
        *_trunk_lines(record),
        "",
        "| noise | variant | test acc | test macro-F1 | primary acc | primary macro-F1 | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in record["summary"]:
        cells = [f"{r[k]['mean']:.3f} +- {r[k]['std']:.3f}"
                 for k in ("test_acc", "test_macro_f1", "primary_acc", "primary_macro_f1")]
        lines.append(f"| {r['noise']:g} | {r['variant']} | " + " | ".join(cells)
                     + f" | {r['test_acc']['n']} |")
    lines += _paired_lines(record)
    majority = sorted({round(r["majority_acc"], 4) for r in record["runs"]})
    lines += ["", f"Majority-class baseline accuracy on the test split: {majority}.",
              f"Time: {record['run_seconds'] / 60:.1f} min of training + evaluation for "
              f"{len(record['runs'])} runs ({record['wall_seconds'] / 60:.1f} min wall for "
              "this invocation, including drawing the datasets).",
              "", "Per run: see the JSON record (`runs`)."]
    return "\n".join(lines) + "\n"


def record_name(args: argparse.Namespace, date: str) -> str:
    """The record's file name (no suffix): one per preset, trunk mode and day."""
    return f"ablation_{args.preset}_{args.trunk}_{date}"


def main(argv: Sequence[str] = ()) -> int:
    args = parse_args(argv or sys.argv[1:])
    if args.trunk == "frozen" and (args.preset != "tiny" or args.device != "cpu"):
        print("--trunk frozen trains the tiny preset on the CPU; for --preset paper or a GPU "
              "use --trunk trained", file=sys.stderr)
        return 2
    import torch

    work, out = Path(args.work), Path(args.out)
    settings = {k: getattr(args, k) for k in ("n", "imbalance", "difficulty", "noise",
                                              "variants", "seeds", "preset", "epochs",
                                              "batch_size", "lr",
                                              "image_warmup", "augment", "freeze", "precise_bn",
                                              "trunk", "trunk_seed", "device",
                                              "pretrained_mobilefacenet", "pretrained_ir50",
                                              "threads", "jobs")}
    # Runs of the same training settings are reused (more seeds or variants can be added
    # later: the record then holds every run of these settings).
    # A setting a partial record lacks (added later) counts as its default, which it ran with.
    defaults = vars(parse_args([]))
    same = lambda a, b: all(a.get(k, defaults[k]) == b.get(k, defaults[k])  # noqa: E731
                            for k in settings
                            if k not in ("seeds", "variants", "threads", "jobs"))
    partial = work / "ablation_partial.json"
    runs: List[Dict[str, Any]] = []
    if partial.is_file() and same(json.loads(partial.read_text())["settings"], settings):
        runs = json.loads(partial.read_text())["runs"]
    start = time.perf_counter()
    done = {(r["noise"], r["variant"], r["seed"]) for r in runs}
    trunks: Dict[str, Any] = {}
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
    with ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_init, initargs=(args,)) as ex:
        if args.trunk == "frozen":
            trunks = frozen_trunks(args)
            jobs = [(noise, seed, [v for v in args.variants if (noise, v, seed) not in done])
                    for seed in args.seeds for noise in args.noise]
            futures = [ex.submit(frozen_runs, args, *job) for job in jobs
                       if job[2] and not args.report_only]
        else:
            todo = [(dataset(work, args.n, noise, args.imbalance, args.difficulty), noise,
                     variant, seed)
                    for seed in args.seeds for noise in args.noise for variant in args.variants
                    if (noise, variant, seed) not in done and not args.report_only]  # seed-major:
            # a cut-off ablation holds whole grids of the first seeds
            futures = [ex.submit(one_run, args, *job) for job in todo]
        for future in as_completed(futures):
            result = future.result()
            for r in result if isinstance(result, list) else [result]:
                runs.append(r)
                print(f"noise {r['noise']:g} {r['variant']:8s} seed {r['seed']}: test acc "
                      f"{r['test_acc']:.3f} macro-F1 {r['test_macro_f1']:.3f} "
                      f"({r['total_seconds']:.0f}s)", file=sys.stderr, flush=True)
            atomic_write_json(partial, {"settings": settings, "runs": runs, "trunks": trunks})
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    settings["seeds"] = sorted({r["seed"] for r in runs})  # what the record holds
    settings["variants"] = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    record = {
        "date": date, "settings": settings, "trunks": trunks, "summary": summarise(runs),
        "paired": [row for key in METRIC_NAMES for row in paired_differences(runs, key=key)],
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - start, 1),  # this invocation (+ drawing)
        "run_seconds": round(sum(r["total_seconds"] for r in runs), 1),  # all runs, train+eval
        "env": {"python": platform.python_version(), "torch": torch.__version__,
                "platform": platform.platform(), "cpus": os.cpu_count(),
                "load_average_end": list(os.getloadavg())},
    }
    publish(out / record_name(args, date), record, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
