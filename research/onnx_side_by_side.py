"""ONNX Runtime CPU latency of several ONNX files side by side, in one interleaved run.

    python -m research.onnx_side_by_side --onnx fp32=engines/paper.onnx \
        --onnx int8=engines/paper.int8.onnx --threads 2 --rounds 3 --batches 1,8 \
        --agree-with fp32 --out research/results/onnx_side_by_side

Protocol: every measurement is a fresh process (`python -m research.onnx_side_by_side
--child`), one per (round, file, batch); round r runs the files in turn, the order reversed every
other round, so load from other processes falls on every arm alike. A child opens the file in
the runtime's `OrtBackend` with `--threads` intra-op threads, runs `--warmup` calls, then times
`--iters` calls of the same random batch with `time.perf_counter`; it reports the median. Around
every child the 1-minute load average and the CPU time other processes used (from /proc/stat,
in cores) are recorded. Ratios are of pooled medians (all rounds) against the first file.

With `--agree-with NAME`, every other file is compared with that one on SynthFER faces drawn on
the fly (`export.gate_images`) by `export.compare.measure_agreement` under INT8_CRITERIA when
the file is a QDQ model, else FP16_CRITERIA: decisive-flip agreement, max |dp|, NaN/inf.
The record (JSON + Markdown) says on which machine and under which load it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from grefel.contract import INPUT_SIZE

__all__ = ["child", "main", "run"]


def _cpu_times() -> Tuple[float, float]:
    """(busy seconds of all CPUs, wall seconds) from /proc/stat; (0, 0) where absent."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [float(v) for v in fields]
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)
    return (sum(ticks) - idle) / hz, time.monotonic()


def child(path: Path, batch: int, threads: int, warmup: int, iters: int) -> Dict[str, Any]:
    """Time one file at one batch in this process (the measurement of one child)."""
    import resource

    import onnxruntime as ort

    opts = ort.SessionOptions()  # OrtBackend's options (grefel/runtime/ort_backend.py)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    side = inp.shape[-1] if isinstance(inp.shape[-1], int) else INPUT_SIZE
    x = np.random.default_rng(0).random((batch, 3, side, side), dtype=np.float32)
    times: List[float] = []
    for _ in range(warmup):
        session.run(None, {inp.name: x})
    start_cpu = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(iters):
        t0 = time.perf_counter()
        session.run(None, {inp.name: x})
        times.append(time.perf_counter() - t0)
    end_cpu = resource.getrusage(resource.RUSAGE_SELF)
    own = (end_cpu.ru_utime + end_cpu.ru_stime) - (start_cpu.ru_utime + start_cpu.ru_stime)
    return {"median_ms": 1000 * float(np.median(times)), "times_ms": [1000 * t for t in times],
            "own_cpu_s": own, "timed_s": float(sum(times))}


def _run_child(path: Path, batch: int, args: argparse.Namespace) -> Dict[str, Any]:
    busy0, wall0 = _cpu_times()
    load0 = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "research.onnx_side_by_side", "--child", str(path),
           "--batch", str(batch), "--threads", str(args.threads), "--warmup", str(args.warmup),
           "--iters", str(args.iters)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    if done.returncode != 0:
        raise SystemExit(f"{path}: the timing child failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    busy1, wall1 = _cpu_times()
    wall = max(wall1 - wall0, 1e-9)
    # other processes' CPU while the child ran, in cores (the child's own CPU subtracted)
    result["other_cores"] = max(0.0, (busy1 - busy0 - result["own_cpu_s"]) / wall)
    result["load_avg_1min"] = [load0, os.getloadavg()[0]]
    return result


def _agreement(files: Dict[str, Path], ref: str, skip: List[str]) -> Dict[str, Any]:
    from export.compare import CRITERIA, artifact_precision, measure_agreement, run_backend
    from export.gate_images import gate_images
    from grefel.runtime.ort_backend import OrtBackend

    images, what = gate_images(None, n=64)
    reference = run_backend(OrtBackend(files[ref], device="cpu"), images)
    out: Dict[str, Any] = {"images": what}
    for name, path in files.items():
        if name == ref or name in skip:
            continue
        kind = "int8" if artifact_precision(path) == "int8" else "fp16"
        got = run_backend(OrtBackend(path, device="cpu"), images)
        agree = measure_agreement(reference, got, CRITERIA[kind], label=f"{name} vs {ref}")
        out[name] = {**agree.to_dict(), "criteria_name": kind}
    return out


def run(args: argparse.Namespace) -> Dict[str, Any]:
    files = dict(item.split("=", 1) for item in args.onnx)
    files = {k: Path(v) for k, v in files.items()}
    for name, path in files.items():
        if not path.is_file():
            raise SystemExit(f"--onnx {name}={path}: no such file")
    batches = [int(b) for b in args.batches.split(",")]
    names = list(files)
    runs: List[Dict[str, Any]] = []
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for batch in batches:
            for name in order:
                res = _run_child(files[name], batch, args)
                runs.append({"round": r, "file": name, "batch": batch, **res})
                print(f"round {r} {name} batch {batch}: {res['median_ms']:.1f} ms "
                      f"(load {res['load_avg_1min'][0]:.1f}, other cores "
                      f"{res['other_cores']:.2f})", file=sys.stderr)
    summary: Dict[str, Any] = {}
    for batch in batches:
        pooled = {n: float(np.median([t for x in runs if x["file"] == n and x["batch"] == batch
                                      for t in x["times_ms"]])) for n in names}
        summary[f"batch{batch}"] = {
            "pooled_median_ms": pooled,
            "round_medians_ms": {n: [x["median_ms"] for x in runs if x["file"] == n
                                     and x["batch"] == batch] for n in names},
            f"ratio_to_{names[0]}": {n: pooled[n] / pooled[names[0]] for n in names},
        }
    record = {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m research.onnx_side_by_side", *sys.argv[1:]]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "files": {n: {"path": str(p), "bytes": p.stat().st_size} for n, p in files.items()},
        "threads": args.threads, "rounds": args.rounds, "warmup": args.warmup,
        "iters": args.iters, "summary": summary, "runs": runs,
        "load_avg_1min_range": [min(x["load_avg_1min"][0] for x in runs),
                                max(x["load_avg_1min"][1] for x in runs)],
        "other_cores_range": [min(x["other_cores"] for x in runs),
                              max(x["other_cores"] for x in runs)],
        "note": args.note,
    }
    try:
        import onnxruntime

        record["machine"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if args.agree_with:
        record["agreement"] = _agreement(files, args.agree_with, args.no_agree)
    return record


def _markdown(rec: Dict[str, Any]) -> str:
    names = list(rec["files"])
    lines = [f"# ONNX Runtime CPU side by side ({rec['threads']} threads, {rec['rounds']} "
             f"interleaved rounds, fresh process each)", "",
             f"Command: `{rec['command']}`", "",
             f"Machine: {rec['machine']}; load average (1 min) {rec['load_avg_1min_range'][0]:.1f}"
             f"-{rec['load_avg_1min_range'][1]:.1f}, other processes "
             f"{rec['other_cores_range'][0]:.2f}-{rec['other_cores_range'][1]:.2f} cores during "
             "the timed calls: the same conditions for every arm (interleaved).", ""]
    if rec.get("note"):
        lines += [rec["note"], ""]
    lines += ["| file | MiB | " + " | ".join(f"batch {k[5:]} pooled median ms (ratio)"
                                         for k in rec["summary"]) + " |",
              "|---|---|" + "---|" * len(rec["summary"])]
    for n in names:
        cells = []
        for s in rec["summary"].values():
            ratio = next(v for k, v in s.items() if k.startswith("ratio_to_"))[n]
            cells.append(f"{s['pooled_median_ms'][n]:.1f} ({ratio:.3f} x)")
        lines.append(f"| {n} (`{rec['files'][n]['path']}`) | "
                     f"{rec['files'][n]['bytes'] / 2**20:.1f} | " + " | ".join(cells) + " |")
    for name, a in rec.get("agreement", {}).items():
        if name == "images":
            lines += ["", f"Agreement on {a}:"]
            continue
        verdict = "pass" if a["passed"] else "FAIL"
        lines.append(f"- {name}: {a['criteria_name']} criteria, {verdict}; "
                     f"decisive agreement {a['decisive_agreement']:.4f}, top-1 agreement "
                     f"{a['top1_agreement']:.4f}, max|dp| {a['max_abs_dprobs']:.3g}, NaN/inf "
                     f"{a['nonfinite']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onnx", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--agree-with", default="")
    ap.add_argument("--no-agree", action="append", default=[], metavar="NAME",
                    help="A file left out of the agreement (a foreign model).")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, help="Record stem: writes STEM.json and STEM.md.")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.batch, args.threads, args.warmup, args.iters)))
        return
    if len(args.onnx) < 1:
        ap.error("give at least one --onnx NAME=PATH")
    record = run(args)
    text = _markdown(record)
    print(text)
    if args.out is not None:
        from benchmarks.report import write_json_and_markdown

        write_json_and_markdown(args.out.with_suffix(".json"), args.out.with_suffix(".md"),
                                record, text)


if __name__ == "__main__":
    main()
