"""What each part of the real-faces recipe contributes: the recipe with one part taken out (or
swapped), trained from the same pretrained streams and seed, scored on the validation split.

    python -m research.recipe_parts --recipe runs/real/seed0 \\
        --parts recipe no_warmup random_image random_landmark repeat paper_augment

`--recipe` is a finished `grefel train` run of the recipe (`make real-model`); its config.json
holds every setting. Each part is that config with the changes in PARTS, the same seed, epochs
and data; its learning curve (val accuracy and macro-F1 per epoch, from the run's metrics.csv)
and its best epoch go into research/results/recipe_parts_<date>.json / .md. The validation
split is what the recipe was chosen on; the test split is not read. One seed per part: a
difference smaller than the seed-to-seed spread of the recipe (the three seeds of `make
real-model`, recorded beside) is not an effect. Finished parts in --work are not trained again.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from benchmarks.report import _markdown, probe_header, publish
from research.real_ablation import recipe_configs, train_one

RESULTS = Path(__file__).resolve().parent / "results"
# part -> (what changes, the DataConfig / TrainConfig fields it sets)
PARTS: Dict[str, Any] = {
    "recipe": ("the recipe as it is", {}),
    "no_warmup": ("no image-stream warm-up (--image-warmup 0)", {"image_warmup": 0}),
    "random_image": ("image stream from random weights, not pretrained on the face mesh",
                     {"pretrained_ir50": ""}),
    "random_landmark": ("landmark stream from random weights (frozen), not pretrained on the "
                        "face mesh", {"pretrained_mobilefacenet": ""}),
    "repeat": ("data refinement repeats short classes up to B (--refine-repeat)",
               {"refine_repeat": True}),
    "paper_augment": ("the paper's augmentation (shift 8, rotation 10, jitter 0.3, erasing)",
                      {"augment_policy": "paper"}),
}


def curve(run: Path) -> List[Dict[str, float]]:
    """Epoch, val accuracy and val macro-F1 from a run's metrics.csv."""
    with open(run / "metrics.csv", newline="") as f:
        return [{"epoch": int(r["epoch"]), "val_acc": float(r["val_acc"]),
                 "val_macro_f1": float(r["val_macro_f1"])} for r in csv.DictReader(f)]


def with_changes(recipe: Dict[str, Dict[str, Any]], changes: Dict[str, Any],
                 epochs: Optional[int]) -> Dict[str, Dict[str, Any]]:
    """The recipe's data and train settings with `changes` applied where each field lives."""
    data, train = dict(recipe["data"]), dict(recipe["train"])
    for key, value in changes.items():
        if key in data:
            data[key] = value
        elif key in train:
            train[key] = value
        else:
            raise KeyError(f"{key}: not a DataConfig or TrainConfig field of the recipe")
    if epochs is not None:
        train["epochs"] = epochs
    return {"data": data, "train": train}


def to_markdown(r: Dict[str, Any]) -> str:
    rows = [[p["part"], p["what"], f"{p['best']['val_macro_f1']:.3f}",
             f"{p['best']['val_acc']:.3f}", str(p["best"]["epoch"]),
             " ".join(f"{e['val_macro_f1']:.2f}" for e in p["curve"])] for p in r["parts"]]
    return "\n".join([
        f"# What each part of the real-faces recipe contributes (val split), {r['date']}", "",
        f"`{r['command']}`", "",
        f"Recipe run: `{r['recipe']}`, seed {r['seed']}, {r['epochs']} epochs. Each row changes "
        "one thing; the best epoch is chosen on val macro-F1, as the recipe's.", "",
        _markdown(["part", "change", "best val macro-F1", "its val accuracy", "epoch",
                   "val macro-F1 per epoch"], rows), ""]) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m research.recipe_parts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=Path, required=True, help="a finished recipe train folder")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--epochs", type=int, default=None, help="[default: the recipe's]")
    p.add_argument("--work", type=Path, default=Path("runs/recipe_parts"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        recipe = recipe_configs(args.recipe)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seed = recipe["train"]["seed"]
    rows = []
    for part in args.parts:
        what, changes = PARTS[part]
        print(f"--- {part}: {what}", file=sys.stderr, flush=True)
        config = with_changes(recipe, changes, args.epochs)
        best = train_one(config, args.work / part, config["train"]["variant"], seed, None)
        points = curve(best.parent)
        top = max(points, key=lambda e: (e["val_macro_f1"], -e["epoch"]))
        rows.append({"part": part, "what": what, "changes": changes, "curve": points,
                     "best": top})
    record = {**probe_header("research.recipe_parts", argv), "recipe": str(args.recipe),
              "seed": seed, "epochs": args.epochs or recipe["train"]["epochs"], "parts": rows}
    publish(args.out / f"recipe_parts_{record['date']}", record, to_markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
