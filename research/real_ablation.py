"""Reliability balancing on real, imbalanced, noisily labelled faces: the paper's Table 2 rows
on muxspace/facial_expressions, paired seeds.

    python -m research.real_ablation --recipe runs/real/train --variants no_rb both \\
        --seeds 0 1 2 [--work runs/real_ablation] [--out research/results]

`--recipe` is the run folder of a finished `grefel train` (the default model's, `make
real-model`): its config.json holds the data, the pretrained streams and every training
setting. Each (variant, seed) run trains with exactly those settings and only the Table 2
variant (no_rb, anchors, mhsa, both), the seed and the run folder changed, then its best
checkpoint (chosen on val) predicts the test split through `grefel predict`'s still-image
pipeline (research.side_by_side.predict_split: the faces every model is scored on).

Paired seeds: the variants of one seed start from the same pretrained streams and the same
initial weights of the parts they share (GReFEL creates the balancing modules last), and see
the same images in the same order. Measured per run: test macro-F1, accuracy and the mean
recall of the minority classes (every class but the two that hold most training images), each
with a 95 % identity-bootstrap interval (research.side_by_side.bootstrap_scores: images of
one person are not independent), and the paired difference variant minus no_rb on the same
resamples. Over seeds: the mean difference and its 95 % Student-t interval
(research.ablation.t_quantile). An interval that contains 0 is reported as no effect found
at this budget. Finished runs are kept in --work and not trained again, so an interrupted
ablation continues and more seeds can be added later. The record:
--out/real_ablation_<date>.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from benchmarks.report import _markdown, probe_header, publish
from grefel.fileio import atomic_write_json
from research.ablation import VARIANTS, t_quantile
from research.side_by_side import bootstrap_scores, predict_split

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "no_rb"
METRICS = ("macro_f1", "accuracy", "minority_recall")


def recipe_configs(recipe: Path) -> Dict[str, Dict[str, Any]]:
    """The data and train settings of a finished `grefel train` run (its config.json)."""
    from grefel.train_state import read_run_config

    config = read_run_config(recipe)
    return {"data": config["data"], "train": config["train"]}


def train_one(recipe: Dict[str, Dict[str, Any]], work: Path, variant: str, seed: int,
              epochs: Optional[int]) -> Path:
    """Train (variant, seed) with the recipe's settings; its best checkpoint (kept if done)."""
    import shutil

    from grefel.config import DataConfig, TrainConfig
    from grefel.train import run_training

    out = work / f"{variant}_seed{seed}"
    best = out / "best.safetensors"
    if (out / "done.json").is_file() and best.is_file():
        return best
    shutil.rmtree(out, ignore_errors=True)  # a run cut off earlier starts over
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train = {k: v for k, v in recipe["train"].items() if k in fields}
    train.update(variant=variant, seed=seed, out=str(out), resume=False)
    if epochs is not None:
        train["epochs"] = epochs
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    start = time.perf_counter()
    run_training(DataConfig(**{k: v for k, v in recipe["data"].items() if k in data_fields}),
                 TrainConfig(**train))
    atomic_write_json(out / "done.json", {"seconds": round(time.perf_counter() - start, 1)})
    return best


def minority_classes(train_labels: Sequence[int], classes: Sequence[str]) -> List[str]:
    """Every class but the two that hold most training images."""
    counts = np.bincount(np.asarray(train_labels), minlength=len(classes))
    top = set(np.argsort(-counts, kind="stable")[:2].tolist())
    return [k for i, k in enumerate(classes) if i not in top]


def score_runs(data: Path, checkpoints: Dict[str, Path], bootstrap: int,
               seed: int) -> Dict[str, Any]:
    """Every checkpoint's test predictions on the same faces, scored with identity-bootstrap
    intervals; differences to the no_rb run of the same seed on the same resamples."""
    import contextlib

    from grefel.data.muxspace import read_muxspace
    from grefel.predict import PredictOptions, predict_pipeline
    from grefel.runtime import open_backend

    samples, classes = read_muxspace(data, "test")
    train, _ = read_muxspace(data, "train")
    minority = minority_classes([s.label for s in train], classes)
    pipeline = predict_pipeline(None, PredictOptions(), video=False)
    with contextlib.ExitStack() as stack:
        backends = {}
        for name, path in checkpoints.items():
            backend = stack.enter_context(open_backend(path, device="cpu"))
            if tuple(backend.classes) != tuple(classes):
                raise ValueError(f"{path}: classes {backend.classes}, the data's {classes}")
            backends[name] = (backend, np.arange(len(classes)))
        got = predict_split(samples, pipeline=pipeline, backends=backends)
    y_true = np.array([s.label for s in got.kept])
    groups = [s.group for s in got.kept]
    results, _ = bootstrap_scores(y_true=y_true, preds=got.preds, groups=groups,
                                  classes=classes, n=bootstrap, seed=seed, versus=BASELINE,
                                  models=[])
    for r in results.values():  # the minority classes' mean recall, point and interval
        recalls = [r["per_class"][k]["recall"] for k in minority]
        r["minority_recall"] = {"value": float(np.nanmean(np.array(recalls, float)))}
    return {"results": results, "classes": list(classes), "minority": minority,
            "images": len(y_true), "identities": len(set(groups)), "no_face": len(got.no_face),
            "preds": got.preds, "y_true": y_true, "groups": groups}


def paired_over_seeds(runs: List[Dict[str, Any]], metric: str) -> List[Dict[str, Any]]:
    """Per variant: the differences variant - no_rb over the seeds run with both, their mean
    and 95 % Student-t interval (None with fewer than 2 pairs)."""
    rows = []
    base = {r["seed"]: r[metric] for r in runs if r["variant"] == BASELINE}
    for variant in VARIANTS:
        other = {r["seed"]: r[metric] for r in runs if r["variant"] == variant}
        seeds = sorted(set(base) & set(other))
        if variant == BASELINE or not seeds:
            continue
        diffs = [other[s] - base[s] for s in seeds]
        mean, ci = statistics.fmean(diffs), None
        if len(diffs) > 1:
            half = t_quantile(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(
                len(diffs))
            ci = [mean - half, mean + half]
        rows.append({"variant": variant, "metric": metric, "seeds": seeds, "diffs": diffs,
                     "mean": mean, "ci95": ci,
                     "effect": None if ci is None else bool(ci[0] > 0 or ci[1] < 0)})
    return rows


def minority_bootstrap(scored: Dict[str, Any], name: str, base: str, n: int,
                       seed: int) -> Dict[str, Any]:
    """The minority recall of `name` and its difference to `base`, with identity-bootstrap
    intervals on the same resamples."""
    from research.side_by_side import identity_resamples, scores

    classes, y = scored["classes"], scored["y_true"]
    idx = [classes.index(k) for k in scored["minority"]]
    counts, inverse = identity_resamples(scored["groups"], n, seed)
    c = len(classes)
    out = {}
    for key in (name, base):
        per_id = np.zeros((counts.shape[1], c + 1, c + 1), np.int64)
        np.add.at(per_id, (inverse, y, np.asarray(scored["preds"][key])), 1)
        boot = (counts @ per_id.reshape(len(per_id), -1)).reshape(n, c + 1, c + 1)
        out[key] = np.array([np.nanmean(scores(m)["recall"][idx]) for m in boot])
    d = out[name] - out[base]
    return {"ci95": _pct(out[name]), "diff_ci95": _pct(d)}


def _pct(values: np.ndarray) -> Optional[List[float]]:
    v = values[np.isfinite(values)]
    return None if not len(v) else [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def to_markdown(r: Dict[str, Any]) -> str:
    def ci(v: Dict[str, Any]) -> str:
        lo_hi = v.get("ci95")
        return f"{v['value']:.3f}" + (f" [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else "")

    rows = [[run["variant"], str(run["seed"]), *(ci(run["scores"][m]) for m in METRICS),
             *(ci(run["minus_no_rb"][m]) if run["variant"] != BASELINE else "" for m in METRICS)]
            for run in r["runs"]]
    paired = [[p["variant"], p["metric"], ", ".join(f"{d:+.3f}" for d in p["diffs"]),
               f"{p['mean']:+.3f}", "" if p["ci95"] is None else
               f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]",
               "too few seeds" if p["effect"] is None else
               ("effect" if p["effect"] else "no effect found")] for p in r["paired"]]
    return "\n".join([
        f"# Reliability balancing on real faces: muxspace test split, {r['date']}", "",
        f"`{r['command']}`", "",
        f"Recipe: `{r['recipe']}` (every setting of its config.json; only the variant, seed and "
        f"run folder change). {r['images']} test images of {r['identities']} identities, "
        f"{r['no_face']} without a face. Minority classes: {', '.join(r['minority'])}. "
        f"[lo, hi]: 95 % identity bootstrap ({r['bootstrap']} resamples).", "",
        _markdown(["variant", "seed", "macro-F1", "accuracy", "minority recall",
                   "Δ macro-F1 vs no_rb", "Δ accuracy", "Δ minority recall"], rows), "",
        "## Over seeds: variant minus no_rb, 95 % Student-t interval", "",
        _markdown(["variant", "metric", "per seed", "mean", "95 % interval", "verdict"],
                  paired), "",
    ]) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m research.real_ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=Path, required=True, help="a finished grefel train folder")
    p.add_argument("--variants", nargs="+", default=[BASELINE, "both"], choices=VARIANTS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="[default: the recipe's]")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--work", type=Path, default=Path("runs/real_ablation"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if BASELINE not in args.variants:
        p.error(f"--variants: the differences are taken to {BASELINE}; include it")
    try:
        recipe = recipe_configs(args.recipe)
    except ValueError as exc:  # TrainingError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = Path(recipe["data"]["root"])
    checkpoints = {}
    for seed in args.seeds:
        for variant in args.variants:
            print(f"--- {variant} seed {seed}", file=sys.stderr, flush=True)
            checkpoints[f"{variant}_seed{seed}"] = train_one(recipe, args.work, variant, seed,
                                                             args.epochs)
    scored = score_runs(data, checkpoints, args.bootstrap, seed=0)
    runs = []
    for seed in args.seeds:
        base = f"{BASELINE}_seed{seed}"
        for variant in args.variants:
            name = f"{variant}_seed{seed}"
            res = scored["results"][name]
            run: Dict[str, Any] = {"variant": variant, "seed": seed, "scores": {
                "macro_f1": res["macro_f1"], "accuracy": res["accuracy"],
                "minority_recall": res["minority_recall"]}, "minus_no_rb": {}}
            mb = minority_bootstrap(scored, name, base, args.bootstrap, seed=0)
            run["scores"]["minority_recall"]["ci95"] = mb["ci95"]
            if variant != BASELINE:
                diffs, = bootstrap_scores(
                    y_true=scored["y_true"], preds={name: scored["preds"][name],
                                                    base: scored["preds"][base]},
                    groups=scored["groups"], classes=scored["classes"], n=args.bootstrap,
                    seed=0, versus=base, models=[name])[1]
                run["minus_no_rb"] = {
                    m: {"value": diffs[m]["value"], "ci95": diffs[m]["ci95"]}
                    for m in ("macro_f1", "accuracy")}
                run["minus_no_rb"]["minority_recall"] = {
                    "value": res["minority_recall"]["value"]
                    - scored["results"][base]["minority_recall"]["value"],
                    "ci95": mb["diff_ci95"]}
            run.update({m: run["scores"][m]["value"] for m in METRICS},
                       per_class=res["per_class"], checkpoint=str(checkpoints[name]))
            runs.append(run)
    record = {**probe_header("research.real_ablation", argv), "recipe": str(args.recipe),
              "recipe_config": recipe, "bootstrap": args.bootstrap,
              **{k: scored[k] for k in ("classes", "minority", "images", "identities",
                                        "no_face")},
              "runs": runs, "paired": [row for m in METRICS
                                       for row in paired_over_seeds(runs, m)]}
    publish(args.out / f"real_ablation_{record['date']}", json.loads(json.dumps(record)),
            to_markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
