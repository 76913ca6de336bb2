"""Benchmark records: the stdout table, JSON + Markdown files, and comparison with an old run.

A record is one JSON object: {"schema", "created", "settings", "environment", "timed_sizes"
(params / FLOPs / MACs of each timed model, `timed_sizes`), "sizes" (those of the Table 2
variants beside the paper's numbers), "latency" (one row per backend, model and batch size)};
without torch the Table 2 sizes are not measured: "sizes" is empty and "sizes_note" says why,
and a timed .onnx has its params but no FLOPs (its row's "note" says why). Files go to
`benchmarks/results/bench_<YYYYmmdd-HHMMSS>_<device>` with `.json` and `.md` suffixes, written
atomically: `--out` is checked writable before anything is measured, and both files are
rewritten after every latency row, so an interrupted or failed run keeps every row measured so
far. A weights file that cannot be read (a bad `.safetensors`)
is a BenchError naming it, before any timing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks.env import device_label
from benchmarks.options import BACKEND_NAMES, BenchOptions
from grefel._lazy import MissingDependency, require
from grefel.errors import GrefelError
from grefel.fileio import atomic_write_bytes, atomic_write_json, claim_run_folder

__all__ = [
    "MAC_NOTE",
    "BenchError",
    "backend_ratios",
    "SCHEMA",
    "compare",
    "env_lines",
    "latency_table",
    "load_record",
    "make_record",
    "probe_header",
    "publish",
    "sizes_table",
    "to_markdown",
    "write_json_and_markdown",
    "write_record",
]

SCHEMA = "grefel-bench/1"
TABLE2_TITLE = "Params and FLOPs of the Table 2 variants vs the paper"


class BenchError(GrefelError, ValueError):
    """A bench that cannot start (unwritable --out, unreadable weights); the message names it."""
MAC_NOTE = (
    "MACs = FLOPs / 2 from torch.utils.flop_counter (2 FLOPs per multiply-add). The paper's "
    "'FLOPs' are thop MAC counts (POSTER V2's compute_param_flop), so its G column is compared "
    "with our GMACs; its params are thop's (executed leaf modules only)."
)


def make_record(
    settings: Dict[str, Any],
    environment: Dict[str, Any],
    sizes: List[Dict[str, Any]],
    latency: List[Dict[str, Any]],
    timed_sizes: Optional[List[Dict[str, Any]]] = None,
) -> Dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "environment": environment,
        "timed_sizes": timed_sizes or [],
        "sizes": sizes,
        "mac_convention": MAC_NOTE,
        "latency": latency,
    }


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _rows_sizes(sizes: Sequence[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    head = [
        "preset",
        "variant",
        "params M",
        "backbone M",
        "GFLOPs",
        "GMACs",
        "paper params M",
        "Δ params M",
        "paper G",
        "Δ GMACs",
    ]
    rows = []
    for s in sizes:
        pm, pg = s.get("paper_params_m"), s.get("paper_gmacs")
        params_m, gmacs = s["params_total"] / 1e6, s["macs"] / 1e9
        rows.append(
            [
                s["preset"],
                s["variant"],
                f"{params_m:.3f}",
                f"{s['params_backbone'] / 1e6:.3f}",
                f"{s['flops'] / 1e9:.3f}",
                f"{gmacs:.3f}",
                _fmt(pm),
                _fmt(None if pm is None else params_m - pm, 3),
                _fmt(pg),
                _fmt(None if pg is None else gmacs - pg, 3),
            ]
        )
    return head, rows


def _rows_timed(timed: Sequence[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    head = ["model", "params M", "GFLOPs", "GMACs", "params from"]
    rows = [[t["model"],
             _fmt(None if t["params_total"] is None else t["params_total"] / 1e6, 3),
             _fmt(None if t["flops"] is None else t["flops"] / 1e9, 3),
             _fmt(None if t["macs"] is None else t["macs"] / 1e9, 3),
             t["params_from"] or "-"] for t in timed]
    return head, rows


def _timed_notes(record: Dict[str, Any]) -> List[str]:
    return [f"{t['model']}: {t['note']}" for t in record.get("timed_sizes", []) if t["note"]]


def _rows_latency(latency: Sequence[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    head = ["backend", "model", "device", "batch", "iters", "median ms", "p90 ms", "p99 ms",
            "img/s", "GPU median ms", "GPU p99 ms", "input check ms", "status"]  # fmt: skip
    rows = []
    for r in latency:
        ok = r["status"] == "ok"
        rows.append(
            [
                r["backend"],
                r["model"],
                r["device"],
                str(r["batch"]),
                str(r["iters"]) if ok else "-",
                _fmt(r["median_ms"]),
                _fmt(r["p90_ms"]),
                _fmt(r["p99_ms"]),
                _fmt(r["images_per_s"], 1),
                _fmt(r["gpu_median_ms"], 3),
                _fmt(r["gpu_p99_ms"], 3),
                _fmt(r.get("input_check_median_ms"), 3),  # absent from older records
                r["status"].split(" (")[0].split(". ")[0],
            ]
        )  # fmt: skip  (the status's first clause; the JSON keeps all of it)
    return head, rows


def _text(head: List[str], rows: List[List[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _markdown(head: List[str], rows: List[List[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def sizes_table(record: Dict[str, Any]) -> str:
    return _text(*_rows_sizes(record["sizes"])) if record["sizes"] else "(no size rows)"


def latency_table(record: Dict[str, Any]) -> str:
    return _text(*_rows_latency(record["latency"])) if record["latency"] else "(no latency rows)"


def env_lines(env: Dict[str, Any]) -> List[str]:
    v = env.get("versions", {})
    gpu = env.get("gpu") or {}
    lines = [
        f"host {env.get('host')}; CPU {env.get('cpu')} ({env.get('cpu_cores')} cores)",
        f"GPU {gpu.get('name', 'none')}"
        + (
            f", compute capability {gpu['compute_capability']}"
            if gpu.get("compute_capability")
            else ""
        )
        + (f", driver {gpu['driver']}" if gpu.get("driver") else ""),
        "versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items()
                    if val and k not in ("onnxruntime_providers", "pycuda", "cuda_bindings")),
        f"TensorRT {v.get('tensorrt') or 'not installed'}; "
        f"pycuda {v.get('pycuda') or 'not installed'}"
        f"; cuda-bindings {v.get('cuda_bindings') or 'not installed'}"
        f"; CUDA {gpu.get('cuda') or gpu.get('torch_cuda') or 'none'}; ONNX Runtime providers "
        f"{v.get('onnxruntime_providers')}",
    ]
    jet = env.get("jetson")
    if jet:
        lines.append(f"Jetson {jet.get('model')}, {jet.get('l4t')}")
        lines.append(f"nvpmodel: {jet.get('nvpmodel')}; jetson_clocks: {jet.get('jetson_clocks')}")
    if env.get("load"):
        lines.append(f"load average at start {env['load']}")
    return lines


def backend_ratios(record: Dict[str, Any], base: str = "torch") -> List[str]:
    """Lines "onnx / torch, model m, batch b: median 0.55x (1.8x faster)" for every other
    backend timed on the same model and batch as `base`."""
    ok = [r for r in record["latency"] if r["status"] == "ok"]
    ref = {(r["model"], r["batch"]): r for r in ok if r["backend"] == base}
    lines = []
    for r in ok:
        b = ref.get((r["model"], r["batch"]))
        if r["backend"] != base and b is not None and r["median_ms"]:
            ratio = r["median_ms"] / b["median_ms"]
            lines.append(
                f"{r['backend']} / {base}, {r['model']}, batch {r['batch']}: median "
                f"latency ratio {ratio:.3f} ({1 / ratio:.2f}x the speed)"
            )
    return lines


def to_markdown(record: Dict[str, Any]) -> str:
    parts = [f"# grefel bench, {record['created']}", "", "## Environment", ""]
    parts += [f"- {line}" for line in env_lines(record["environment"])]
    parts += ["", "## Settings", "", "```", json.dumps(record["settings"], indent=2), "```"]
    if record.get("timed_sizes"):
        parts += ["", "## Params and FLOPs of the timed models (batch 1)", "",
                  _markdown(*_rows_timed(record["timed_sizes"])), ""]
        parts += [f"- {line}" for line in _timed_notes(record)]
    if record["sizes"]:
        parts += [
            "",
            f"## {TABLE2_TITLE}",
            "",
            _markdown(*_rows_sizes(record["sizes"])),
            "",
            MAC_NOTE,
        ]
    elif record.get("sizes_note"):
        parts += ["", f"## {TABLE2_TITLE}", "", record["sizes_note"]]
    if record.get("pipeline"):
        from benchmarks.pipeline import pipeline_markdown

        parts += ["", "## Pipeline (end to end)", ""] + pipeline_markdown(record["pipeline"])
    if record["latency"] or not record.get("pipeline"):
        parts += ["", "## Latency", "", _markdown(*_rows_latency(record["latency"])), ""]
        parts += [f"- {line}" for line in backend_ratios(record)]
    return "\n".join(parts + [""])


def to_text(record: Dict[str, Any]) -> str:
    out = ["Environment:"] + [f"  {line}" for line in env_lines(record["environment"])]
    if record.get("timed_sizes"):
        out += ["", "Params and FLOPs of the timed models (batch 1):",
                _text(*_rows_timed(record["timed_sizes"]))] + _timed_notes(record)
    if record["sizes"]:
        out += ["", f"{TABLE2_TITLE}:", sizes_table(record), MAC_NOTE]
    elif record.get("sizes_note"):
        out += ["", f"{TABLE2_TITLE}: {record['sizes_note']}"]
    if record.get("pipeline"):
        from benchmarks.pipeline import pipeline_markdown

        out += ["", "Pipeline (end to end):"] + pipeline_markdown(record["pipeline"])
        return "\n".join(out)
    out += ["", "Latency:", latency_table(record)]
    return "\n".join(out + backend_ratios(record))


def record_paths(out_dir: Path, environment: Dict[str, Any]) -> Tuple[Path, Path]:
    """`bench_<YYYYmmdd-HHMMSS>_<device>.json` and `.md` in `out_dir`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = Path(out_dir) / f"bench_{stamp}_{device_label(environment)}"
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def write_record(
    record: Dict[str, Any], out_dir: Path, paths: Optional[Tuple[Path, Path]] = None
) -> Tuple[Path, Path]:
    """The record as JSON and Markdown in `out_dir` (at `paths` when given), written atomically."""
    json_path, md_path = paths or record_paths(out_dir, record["environment"])
    write_json_and_markdown(json_path, md_path, record, to_markdown(record))
    return json_path, md_path


def write_json_and_markdown(json_path: Path, md_path: Path, record: Dict[str, Any],
                            markdown: str) -> None:
    """A benchmark's record: the JSON and its Markdown rendering, each written atomically."""
    atomic_write_json(json_path, record)
    atomic_write_bytes(md_path, markdown.encode())


def probe_header(module: str, argv: Sequence[str]) -> Dict[str, Any]:
    """The fields every probe record opens with: today's date (UTC), the command that made it
    (`python -m MODULE ARGV`) and the software it ran on."""
    import torch

    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
            "command": f"python -m {module} " + " ".join(argv),
            "env": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count()}}


def publish(stem: Path, record: Dict[str, Any], markdown: str) -> None:
    """A benchmark command's last step: STEM.json and STEM.md, then the Markdown on stdout."""
    write_json_and_markdown(stem.with_suffix(".json"), stem.with_suffix(".md"), record, markdown)
    print(markdown)


def check_writable(out_dir: Path) -> None:
    """BenchError unless a file can be created in `out_dir` (made when missing)."""
    import tempfile

    try:
        claim_run_folder(Path(out_dir), "bench")
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".bench-probe-"):
            pass
    except OSError as exc:
        raise BenchError(f"--out {out_dir}: cannot write the record there "
                         f"({exc.strerror or exc}); give a writable folder") from None


def load_record(path: Path) -> Dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable benchmark record ({exc})") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a grefel bench record (schema {SCHEMA!r})")
    return record


def compare(record: Dict[str, Any], previous: Dict[str, Any]) -> str:
    """Ratios of this run against `previous` for rows with the same backend, model and batch:
    latency ratio = now / before (< 1 is faster), throughput ratio = now / before."""
    before = {
        (r["backend"], r["model"], r["batch"]): r
        for r in previous.get("latency", [])
        if r.get("status") == "ok"
    }
    head = [
        "backend",
        "model",
        "batch",
        "median ms before",
        "median ms now",
        "latency ratio",
        "img/s ratio",
    ]
    rows = []
    for r in record["latency"]:
        old: Optional[Dict[str, Any]] = before.get((r["backend"], r["model"], r["batch"]))
        if r["status"] != "ok" or old is None:
            continue
        rows.append(
            [
                r["backend"],
                r["model"],
                str(r["batch"]),
                _fmt(old["median_ms"]),
                _fmt(r["median_ms"]),
                _fmt(r["median_ms"] / old["median_ms"], 3),
                _fmt(r["images_per_s"] / old["images_per_s"], 3),
            ]
        )
    if not rows:
        return "no rows in common with the earlier run (same backend, model and batch)"
    return _text(head, rows)


def table2_sizes(presets: Sequence[str], num_classes: int = 7) -> List[Dict[str, Any]]:
    """Params / FLOPs / MACs of the four Table 2 variants per preset, with the paper's numbers
    beside the paper preset's rows (benchmarks.flops, benchmarks.paper)."""
    from benchmarks.flops import measure
    from benchmarks.paper import TABLE2
    from grefel.config import VARIANTS

    rows = []
    for preset in presets:
        for variant in VARIANTS:
            row: Dict[str, Any] = {"preset": preset, "variant": variant}
            row.update(measure(preset=preset, variant=variant, num_classes=num_classes))
            paper = TABLE2.get(variant) if preset == "paper" else None
            row["paper_params_m"] = paper["params_m"] if paper else None
            row["paper_gmacs"] = paper["gmacs"] if paper else None
            rows.append(row)
    return rows


def timed_sizes(targets: Sequence[Any]) -> List[Dict[str, Any]]:
    """Params and FLOPs of each model `grefel bench` times, one row per model: a torch model
    (checkpoint, random init) counted by `benchmarks.flops.count`, an .onnx by its weight
    initializers (and FLOPs with torch: `benchmarks.flops.onnx_sizes`); an engine's are not read
    (`note` says so)."""
    from benchmarks.flops import count, onnx_sizes

    rows: List[Dict[str, Any]] = []
    seen = set()
    for t in targets:
        if t.label in seen or (t.model is None and t.path is None):
            continue
        seen.add(t.label)
        row: Dict[str, Any] = {"model": t.label, "file": None if t.path is None else str(t.path)}
        if t.model is not None:
            counted = count(model=t.model)
            row.update(params_total=counted["params_total"], params_from="PyTorch parameters",
                       flops=counted["flops"], macs=counted["macs"], note="")
        elif Path(t.path).suffix.lower() == ".onnx":
            row.update(onnx_sizes(t.path))
        else:
            row.update(params_total=None, params_from=None, flops=None, macs=None,
                       note="params and FLOPs are not read from a TensorRT engine: bench its "
                            ".onnx or checkpoint for them")
        rows.append(row)
    return rows


def bench_targets(weights: Sequence[Path], backends: Sequence[str], presets: Sequence[str]):
    """What to time: each weights file with its own backend (a checkpoint also through ONNX
    Runtime via a temporary export), or a random-init model per preset when no file is given."""
    from benchmarks.latency import Target

    want = {BACKEND_NAMES[b] for b in backends}
    targets: List[Target] = []
    models: List[Tuple[str, Any]] = []
    if not weights:
        try:
            require("torch", "bench without --weights (random-init models)")
        except MissingDependency as exc:
            raise BenchError(f"{exc} Or time a model file: --weights model.onnx / .engine"
                             ) from None
        from grefel.model import create_model

        models = [(f"{p}-random", create_model(p).eval()) for p in presets]
    for path in weights:
        suffix = Path(path).suffix.lower()
        if suffix == ".safetensors":
            from grefel.checkpoint import CheckpointError, load_checkpoint

            try:
                models.append((Path(path).stem, load_checkpoint(path)[0]))
            except MissingDependency as exc:
                raise BenchError(f"--weights {exc} Or time its exported .onnx / .engine."
                                 ) from None
            except (CheckpointError, OSError) as exc:
                raise BenchError(f"--weights {exc}" if str(path) in str(exc)
                                 else f"--weights {path}: {exc}") from None
        elif suffix not in (".onnx", ".engine", ".plan"):
            raise BenchError(f"--weights {path}: unknown model file type {suffix!r}; use "
                             ".safetensors, .onnx or .engine")
        elif {".onnx": "onnx", ".engine": "tensorrt", ".plan": "tensorrt"}.get(suffix) in want:
            targets.append(
                Target(Path(path).name, "onnx" if suffix == ".onnx" else "tensorrt", Path(path))
            )
    for label, model in models:
        targets += [Target(label, b, model=model) for b in ("torch", "onnx") if b in want]
    if "tensorrt" in want and not any(t.backend == "tensorrt" for t in targets):
        targets.insert(0, Target("(no engine)", "tensorrt"))  # a row that says why, not nothing
    return targets


def run_bench(
    weights: Sequence[Path],
    opts: BenchOptions,
    out_dir: Optional[Path] = None,
    progress: Any = None,
) -> Tuple[Dict[str, Any], Optional[Tuple[Path, Path]]]:
    """`grefel bench`: sizes vs Table 2, latency per backend and batch, the environment; the
    record is written to `out_dir` (when given) and returned. With `opts.source` the record
    holds the end-to-end pipeline rows of `benchmarks.pipeline` (opts.detectors x
    opts.det_every on that video) instead of sizes and latency. `progress`: told what is being
    measured, one line at a time."""
    import os

    from benchmarks.env import environment
    from benchmarks.latency import run

    if out_dir is not None:
        check_writable(out_dir)  # before anything is measured
    backends, threads = opts.backends, opts.threads
    targets = bench_targets(weights, backends, opts.presets)  # a bad weights file fails here
    env = environment()
    env["load"] = [round(x, 2) for x in os.getloadavg()]
    pipeline = opts.pipeline()
    if pipeline is not None:
        from benchmarks.pipeline import pipeline_rows

        rows = pipeline_rows(weights, opts.source, opts.detectors, opts.det_every,
                             det_size=opts.det_size, threads=threads, max_frames=opts.max_frames,
                             backends=backends, progress=progress)
        settings = {"weights": [str(w) for w in weights], "backends": list(backends),
                    "threads": threads, "pipeline": pipeline}
        record = make_record(settings, env, [], [])
        record["pipeline"] = rows
        return record, (write_record(record, out_dir) if out_dir is not None else None)
    if progress:
        progress("params and FLOPs of the timed models and of the Table 2 variants ...")
    timed = timed_sizes(targets)
    try:
        sizes, sizes_note = table2_sizes(opts.presets), ""
    except MissingDependency as exc:  # a torch-free install times its model files all the same
        sizes, sizes_note = [], str(exc)
    settings = {
        "weights": [str(w) for w in weights],
        "backends": list(backends),
        "batch_sizes": list(opts.batch_sizes),
        "min_iters": opts.min_iters,
        "min_seconds": opts.min_seconds,
        "presets": list(opts.presets),
        "threads": threads,
        "cuda_graph": opts.cuda_graph,  # TensorRT rows replayed as CUDA graphs
    }
    record = make_record(settings, env, sizes, [], timed_sizes=timed)
    if sizes_note:
        record["sizes_note"] = sizes_note
    paths = record_paths(out_dir, env) if out_dir is not None else None

    def on_row(row: Any) -> None:
        record["latency"].append(row.to_dict())
        if paths is not None:
            write_record(record, out_dir, paths)  # each row is on disk as it is measured

    run(targets, opts.batch_sizes, opts.min_iters, opts.min_seconds, threads, progress,
        on_row=on_row, cuda_graph=opts.cuda_graph)
    if paths is not None:
        write_record(record, out_dir, paths)
    return record, paths
