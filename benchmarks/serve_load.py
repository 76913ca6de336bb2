"""`grefel serve` under load: concurrent tritonclient gRPC clients against a real Triton server.

    python -m benchmarks.serve_load --weights model.onnx --levels 1,4,16,64 --seconds 20 \
        --soak-seconds 600 --out benchmarks/results/serve_load

In one run: two servers on free 127.0.0.1 ports, one with dynamic batching (`--max-batch B
--queue-delay-us D`) and one with `--max-batch 1` (no batching), loaded back to back at each
concurrency level (the other one idle, so both see the same machine load as far as it can be
had on a shared machine; the 1-minute load average before each row is recorded): C client
threads, each with its own gRPC client, send one-image requests back to back for `--seconds`
(and at most `--max-requests` in all). Per level: completed requests, throughput (requests /
wall second), p50 / p99 latency, errors (a Triton error, a timeout, or an answer that differs
from the local backend's `infer` on the same image by more than 1e-4), and Triton's own count of
requests per executed batch. Then, if asked, a soak: the batching server at `--soak-concurrency` for
`--soak-seconds`, with the resident memory of the server's process tree (grefel serve,
tritonserver, the Python-backend stubs) sampled every `--sample-seconds`.

Traffic goes to 127.0.0.1 only; every loop is bounded in count and time. Writes OUT.json and
OUT.md (atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from grefel.fileio import atomic_path, atomic_write_json

__all__ = ["free_ports", "load_level", "main"]

ROOT = Path(__file__).resolve().parents[1]
POOL = 32  # distinct images the clients cycle through (their reference answers known)
TOL = 1e-4


def free_ports(n: int) -> List[int]:
    """`n` TCP ports of 127.0.0.1 that were free a moment ago (bound to port 0, then closed)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Server:
    """`python -m grefel serve` on free local ports, stopped with SIGTERM."""

    def __init__(self, weights: Path, max_batch: int, delay_us: int, threads: Optional[int],
                 log: Path, extra: Sequence[str] = ()) -> None:
        self.http, self.grpc, self.metrics = free_ports(3)
        self.log = log
        self.args = dict(max_batch=max_batch, queue_delay_us=delay_us, threads=threads)
        cmd = [sys.executable, "-m", "grefel", "serve", "--weights", str(weights),
               "--http-port", str(self.http), "--grpc-port", str(self.grpc),
               "--metrics-port", str(self.metrics), "--max-batch", str(max_batch),
               "--queue-delay-us", str(delay_us)]
        if threads:
            cmd += ["--threads", str(threads)]
        cmd += list(extra)
        self._log = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def output(self) -> str:
        """What the server printed so far."""
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 180.0, models: Sequence[str] = ("grefel",)) -> None:
        """Until every model of `models` is ready; RuntimeError (with the server's output) if
        the server exits or is not ready within `timeout_s`."""
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"grefel serve exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            try:
                if all(client.is_model_ready(m) for m in models):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.3)
        raise RuntimeError(f"grefel serve not ready after {timeout_s} s:\n{self.output()}")

    def rss_mib(self) -> float:
        """Resident memory of the server's whole process tree, MiB."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return float("nan")
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total / 2**20

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _reference(weights: Path) -> tuple:
    from grefel.contract import INPUT_SHAPE
    from grefel.runtime import open_backend

    x = np.random.default_rng(0).random((POOL, *INPUT_SHAPE), dtype=np.float32)
    with open_backend(weights, device="cpu", threads=1) as backend:
        probs = np.concatenate([backend.infer(x[i : i + 1])["probs"] for i in range(POOL)])
    return x, probs


def load_level(port: int, concurrency: int, seconds: float, max_requests: int,
               pool: np.ndarray, ref: np.ndarray) -> Dict[str, Any]:
    """`concurrency` clients, one-image requests back to back, for `seconds` or
    `max_requests` in all; latencies in ms, errors counted (see the module docstring)."""
    import tritonclient.grpc as grpcclient

    latencies: List[List[float]] = [[] for _ in range(concurrency)]
    errors: List[List[str]] = [[] for _ in range(concurrency)]
    budget = threading.Semaphore(max_requests)
    start_gate = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def client_loop(k: int) -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        start_gate.wait()
        i = k
        while time.perf_counter() < deadline[0] and budget.acquire(blocking=False):
            x = pool[i % POOL : i % POOL + 1]
            inp = grpcclient.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            t0 = time.perf_counter()
            try:
                out = client.infer("grefel", [inp], client_timeout=60.0)
                probs = out.as_numpy("probs")
                if probs is None or np.abs(probs - ref[i % POOL : i % POOL + 1]).max() > TOL:
                    errors[k].append("answer differs from the local backend")
            except Exception as exc:  # InferenceServerException, timeouts
                errors[k].append(str(exc).splitlines()[0][:200])
            latencies[k].append((time.perf_counter() - t0) * 1000.0)
            i += concurrency
        client.close()

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    t_start = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join(timeout=seconds + 120)
    wall = time.perf_counter() - t_start
    lat = np.array([v for part in latencies for v in part])
    errs = [e for part in errors for e in part]
    return {
        "concurrency": concurrency,
        "requests": int(lat.size),
        "seconds": round(wall, 3),
        "throughput_rps": round(lat.size / wall, 2) if wall > 0 else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "errors": len(errs),
        "error_examples": sorted(set(errs))[:3],
    }


def _batches(server: Server) -> Dict[str, int]:
    """Triton's own counters: inference requests vs model executions (batches) so far."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        for key in ("nv_inference_count", "nv_inference_exec_count"):
            if line.startswith(key + '{model="grefel"'):
                out[key] = int(float(line.rsplit(" ", 1)[1]))
    return out


def _soak(server: Server, args: argparse.Namespace, pool: np.ndarray,
          ref: np.ndarray) -> Dict[str, Any]:
    samples: List[List[float]] = []
    result: Dict[str, Any] = {}
    t0 = time.perf_counter()

    def run() -> None:
        result.update(load_level(server.grpc, args.soak_concurrency, args.soak_seconds,
                                 args.soak_max_requests, pool, ref))

    worker = threading.Thread(target=run)
    worker.start()
    while worker.is_alive():
        samples.append([round(time.perf_counter() - t0, 1), round(server.rss_mib(), 1)])
        worker.join(timeout=args.sample_seconds)
    samples.append([round(time.perf_counter() - t0, 1), round(server.rss_mib(), 1)])
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    warm = t >= min(60.0, t[-1] / 4)  # after the first minute (allocator and caches warm)
    slope = float(np.polyfit(t[warm] / 60.0, rss[warm], 1)[0]) if warm.sum() >= 3 else None
    return {
        **result,
        "rss_mib_samples": samples,
        "rss_mib_first_after_warmup": float(rss[warm][0]) if warm.any() else None,
        "rss_mib_last": float(rss[-1]),
        "rss_mib_max": float(rss.max()),
        "rss_growth_mib_per_min_after_warmup": round(slope, 3) if slope is not None else None,
    }


def _markdown(doc: Dict[str, Any]) -> str:
    lines = [f"# grefel serve under load ({doc['created_utc']})", "",
             f"Command: `{doc['command']}`", "",
             f"Machine: {doc['machine']}; weights `{doc['weights']}`; one-image gRPC requests, "
             f"{doc['seconds_per_level']} s per level; load average at start "
             f"{doc['loadavg_start']}.", "",
             "| server | clients | requests | req/s | p50 ms | p99 ms | errors | "
             "requests / batch | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for cfg in doc["configs"]:
        for row in cfg["levels"]:
            lines.append(f"| {cfg['label']} | {row['concurrency']} | {row['requests']} | "
                         f"{row['throughput_rps']} | {row['p50_ms']} | {row['p99_ms']} | "
                         f"{row['errors']} | {row.get('requests_per_batch')} | "
                         f"{row.get('loadavg_1min_before')} |")
    lines += ["", "Gain of dynamic batching over max batch 1 (throughput ratio, same clients):", ""]
    for c, g in doc["batching_gain"].items():
        lines.append(f"- {c} clients: x{g}")
    soak = doc.get("soak")
    if soak:
        lines += ["", f"Soak: {soak['concurrency']} clients for {soak['seconds']} s, "
                      f"{soak['requests']} requests, {soak['errors']} errors, p50 "
                      f"{soak['p50_ms']} ms, p99 {soak['p99_ms']} ms; server RSS (process tree) "
                      f"{soak['rss_mib_first_after_warmup']} MiB after warm-up -> "
                      f"{soak['rss_mib_last']} MiB at the end (max {soak['rss_mib_max']}), "
                      f"slope {soak['rss_growth_mib_per_min_after_warmup']} MiB/min."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--levels", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    p.add_argument("--max-requests", type=int, default=20000, help="per level, at most")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None, help="server backend threads")
    p.add_argument("--soak-seconds", type=float, default=0.0)
    p.add_argument("--soak-concurrency", type=int, default=16)
    p.add_argument("--soak-max-requests", type=int, default=1_000_000)
    p.add_argument("--sample-seconds", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load"))
    args = p.parse_args(argv)
    levels = [int(v) for v in args.levels.split(",")]
    pool, ref = _reference(args.weights)
    log = args.out.with_suffix(".server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    doc: Dict[str, Any] = {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m benchmarks.serve_load", *(argv or sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "weights": str(args.weights),
        "seconds_per_level": args.seconds,
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "configs": [],
    }
    configs = [(f"dynamic batching (max batch {args.max_batch}, delay {args.queue_delay_us} us)",
                args.max_batch, args.queue_delay_us), ("max batch 1", 1, 0)]
    servers = [Server(args.weights, max_batch, delay, args.threads, log)
               for _, max_batch, delay in configs]
    entries = [{"label": label, "max_batch": max_batch, "queue_delay_us": delay, "levels": []}
               for label, max_batch, delay in configs]
    try:
        for server in servers:
            server.wait_ready()
            load_level(server.grpc, 4, 2.0, 200, pool, ref)  # warm-up, not recorded
        for c in levels:  # the two servers back to back at each level (the other one idle)
            for server, entry in zip(servers, entries):
                before = _batches(server)
                load = round(os.getloadavg()[0], 2)
                row = load_level(server.grpc, c, args.seconds, args.max_requests, pool, ref)
                after = _batches(server)
                n = after["nv_inference_count"] - before["nv_inference_count"]
                e = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
                row["requests_per_batch"] = round(n / e, 2) if e else None
                row["loadavg_1min_before"] = load
                entry["levels"].append(row)
                print(entry["label"], row, flush=True)
        if args.soak_seconds > 0:
            doc["soak"] = {**_soak(servers[0], args, pool, ref), "server": entries[0]["label"],
                           "sample_seconds": args.sample_seconds}
            print("soak", {k: v for k, v in doc["soak"].items() if k != "rss_mib_samples"},
                  flush=True)
    finally:
        for server, entry in zip(servers, entries):
            entry["server_exit_code"] = server.stop()
    doc["configs"] = entries
    dyn, one = doc["configs"][0]["levels"], doc["configs"][1]["levels"]
    doc["batching_gain"] = {
        str(a["concurrency"]): round(a["throughput_rps"] / b["throughput_rps"], 2)
        for a, b in zip(dyn, one) if a["throughput_rps"] and b["throughput_rps"]
    }
    doc["errors_total"] = sum(r["errors"] for c in doc["configs"] for r in c["levels"]) + (
        doc.get("soak", {}).get("errors", 0))
    atomic_write_json(args.out.with_suffix(".json"), doc)
    with atomic_path(args.out.with_suffix(".md")) as tmp:
        tmp.write_text(_markdown(doc), encoding="utf-8")
    print(_markdown(doc))
    return 0 if doc["errors_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
