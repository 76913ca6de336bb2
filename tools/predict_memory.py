"""Peak memory of `grefel predict` over folders of generated images: does it stay flat?

    python -m tools.predict_memory --weights model.onnx --counts 100,1000 \
        --json tools/results/predict_memory.json

For each count, writes that many random 160x160 PNG images into a temporary folder, runs
`python -m grefel predict FOLDER --weights W --out records.jsonl` in a fresh process, and reads
the child's peak resident set size (getrusage RUSAGE_CHILDREN ru_maxrss, the same number as
GNU time's "Maximum resident set size"). Records are checked to number one per image.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from grefel.fileio import atomic_write_json

__all__ = ["measure"]


def _images(folder: Path, count: int, seed: int = 0) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(folder / f"img{i:05d}.png"), rng.integers(0, 255, (160, 160, 3), np.uint8))


def measure(weights: Path, count: int, extra: Optional[List[str]] = None) -> Dict[str, Any]:
    """Peak RSS (MiB) of one `grefel predict` process over `count` generated images."""
    with tempfile.TemporaryDirectory(prefix="grefel-mem-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        _images(folder, count)
        out = Path(tmp) / "records.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "grefel",
            "predict",
            str(folder),
            "--weights",
            str(weights),
            "--out",
            str(out),
            *(extra or []),
        ]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)  # a fresh child per count
        seconds = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        records = sum(1 for _ in out.open())
    if records != count:
        raise RuntimeError(f"expected {count} records, got {records}")
    return {
        "images": count,
        "records": records,
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "seconds": round(seconds, 1),
        "command": f"grefel predict <{count} images> --weights {weights} --out records.jsonl "
        + " ".join(extra or []),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--counts", default="100,1000")
    ap.add_argument("--json", type=Path)
    ap.add_argument("extra", nargs="*", help="extra `grefel predict` options after --")
    args = ap.parse_args()
    rows = []
    # ru_maxrss of RUSAGE_CHILDREN is the max over all children so far: run each count in its
    # own measuring process so that a larger earlier child cannot mask a smaller later one.
    for count in (int(c) for c in args.counts.split(",")):
        code = (
            f"import json; from tools.predict_memory import measure; from pathlib import "
            f"Path; print(json.dumps(measure(Path({str(args.weights)!r}), {count}, "
            f"{args.extra!r})))"
        )
        res = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        )
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    if args.json:
        atomic_write_json(args.json, {"weights": str(args.weights), "runs": rows})


if __name__ == "__main__":
    main()
