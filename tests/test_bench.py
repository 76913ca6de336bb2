"""`grefel bench` / `grefel info`: latency protocol, records, comparison, environment."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.env import device_label, environment
from benchmarks.latency import LatencyResult, measure_latency, percentile
from benchmarks.report import compare, load_record, make_record, to_markdown, write_record
from grefel.cli import cli
from grefel.runtime.base import Backend


class SleepyBackend(Backend):
    """Sleeps `ms` per call and counts calls; optionally reports a fixed GPU time."""

    name = "sleepy"

    def __init__(self, ms: float, gpu_ms: Optional[float] = None) -> None:
        super().__init__()
        self.ms, self.gpu_ms, self.calls = ms, gpu_ms, 0

    def _open(self) -> None:
        self.classes = ("a", "b")

    def _close(self) -> None:
        pass

    def _infer(self, batch: np.ndarray) -> Any:
        self.calls += 1
        time.sleep(self.ms / 1e3)
        n = len(batch)
        return {"probs": np.full((n, 2), 0.5, np.float32)}

    def infer_timed(self, batch: np.ndarray, *,
                    checked: bool = False) -> Tuple[Any, Optional[float]]:
        return self.infer(batch, checked=checked), self.gpu_ms


class FakeClock:
    """A perf_counter that moves only when told to: timings without real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1e3


class ClockedBackend(Backend):
    """Its inference takes `infer_ms` and its input check's pass over the values `check_ms`,
    on the fake clock; counts the value checks."""

    name = "clocked"

    def __init__(self, clock: FakeClock, infer_ms: float, check_ms: float) -> None:
        super().__init__()
        self.clock, self.infer_ms, self.check_ms, self.value_checks = clock, infer_ms, check_ms, 0

    def _open(self) -> None:
        self.classes = ("a", "b")

    def _close(self) -> None:
        pass

    def _check(self, batch: Any, values: bool = True) -> np.ndarray:
        if values:
            self.value_checks += 1
            self.clock.advance(self.check_ms)
        return super()._check(batch, values)

    def _infer(self, batch: np.ndarray) -> Any:
        self.clock.advance(self.infer_ms)
        return {"probs": np.full((len(batch), 2), 0.5, np.float32)}


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 90) == 90
    assert percentile(values, 99) == 99 and percentile([7.0], 99) == 7.0
    assert percentile([3, 1, 2], 100) == 3


def test_measure_latency_runs_at_least_n_iters_and_t_seconds() -> None:
    with SleepyBackend(2.0) as b:
        res = measure_latency(
            b, batch=4, min_iters=5, min_seconds=0.1, warmup_iters=2, warmup_seconds=0.0
        )
    assert res.iters >= 5 and res.seconds >= 0.1
    assert b.calls == res.iters + 2
    assert 2.0 <= res.median_ms <= res.p90_ms <= res.p99_ms
    assert res.images_per_s == pytest.approx(4 * res.iters / res.seconds, rel=0.05)
    assert res.gpu_median_ms is None
    with SleepyBackend(0.0, gpu_ms=1.25) as b:
        res = measure_latency(b, batch=1, min_iters=3, min_seconds=0.0, warmup_seconds=0.0)
    assert res.gpu_median_ms == res.gpu_p99_ms == 1.25



def test_input_check_is_timed_apart_from_the_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The end-to-end latency is the inference alone; the CPU check of the batch (finite,
    min / max over all values) is its own number, and it runs once per timed call."""
    import benchmarks.latency as latency

    clock = FakeClock()
    monkeypatch.setattr(latency, "time", clock)  # measure_latency's clock only
    with ClockedBackend(clock, infer_ms=2.0, check_ms=5.0) as b:
        res = measure_latency(b, batch=3, min_iters=4, min_seconds=0.0, warmup_iters=1,
                              warmup_seconds=0.0)
    assert res.median_ms == res.p99_ms == 2.0  # not 7.0: the check is outside the timed call
    assert res.input_check_median_ms == 5.0
    assert b.value_checks == 1 + res.iters  # warm-up's own check + one per timed call
    from benchmarks.report import _rows_latency

    head, rows = _rows_latency([res.to_dict()])
    assert rows[0][head.index("input check ms")] == "5.000"
    assert rows[0][head.index("median ms")] == "2.00"

def _row(backend: str, batch: int, median: float, model: str = "m") -> dict:
    r = LatencyResult(
        backend,
        model,
        "cpu",
        batch,
        iters=10,
        seconds=1.0,
        median_ms=median,
        p90_ms=median,
        p99_ms=median,
        images_per_s=1e3 * batch / median,
    )
    return r.to_dict()


def test_record_files_markdown_and_compare(tmp_path: Path) -> None:
    env = {
        "host": "my host!",
        "cpu": "x",
        "cpu_cores": 2,
        "gpu": {},
        "jetson": None,
        "versions": {"grefel": "0.1.0"},
    }
    old = make_record(
        {"batch_sizes": [1, 8]}, env, [], [_row("torch", 1, 100.0), _row("onnx", 8, 400.0)]
    )
    new = make_record(
        {"batch_sizes": [1, 8]}, env, [], [_row("torch", 1, 50.0), _row("onnx", 8, 400.0)]
    )
    json_path, md_path = write_record(old, tmp_path)
    assert re.fullmatch(r"bench_\d{8}-\d{6}_my-host\.json", json_path.name)
    assert (
        md_path.with_suffix(".json") == json_path
        and "| torch | m | cpu | 1 |" in md_path.read_text()
    )
    assert load_record(json_path) == json.loads(json_path.read_text())
    text = compare(new, load_record(json_path))
    assert "0.500" in text and "2.000" in text  # latency halved, throughput doubled
    assert "1.000" in text
    assert "## Latency" in to_markdown(new)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a grefel bench record"):
        load_record(tmp_path / "other.json")


def test_environment_block_and_device_label() -> None:
    env = environment()
    assert env["cpu_cores"] >= 1 and env["versions"]["grefel"]
    assert (
        env["versions"]["onnxruntime"]
        and "CPUExecutionProvider" in env["versions"]["onnxruntime_providers"]
    )
    assert device_label({"host": "a.b", "jetson": {"model": "NVIDIA Jetson AGX Orin"}}) == (
        "nvidia-jetson-agx-orin"
    )


@pytest.mark.parametrize("command", ["predict", "bench", "info"])
def test_help(command: str) -> None:
    res = CliRunner().invoke(cli, [command, "--help"])
    assert res.exit_code == 0 and "Examples:" in res.output


def test_info_prints_environment(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["info", "--json", str(tmp_path / "env.json")])
    assert res.exit_code == 0 and "versions:" in res.output
    assert json.loads((tmp_path / "env.json").read_text())["cpu_cores"] >= 1


def test_bench_tiny_writes_table_json_and_compares(tmp_path: Path, no_tensorrt: None) -> None:
    earlier = tmp_path / "earlier.json"
    env = {"host": "h", "gpu": {}, "versions": {}}
    earlier.write_text(json.dumps(make_record({}, env, [], [_row("onnx", 1, 1e6, "tiny-random")])))
    out = tmp_path / "results"
    args = [
        "bench",
        "--presets",
        "tiny",
        "--backends",
        "torch,onnx,trt",
        "--batch-sizes",
        "1,2",
        "--iters",
        "2",
        "--seconds",
        "0",
        "--threads",
        "1",
        "--out",
        str(out),
        "--compare",
        str(earlier),
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    (json_path,) = out.glob("bench_*.json")
    wrote = [line for line in res.output.splitlines() if line.startswith("wrote ")]
    assert wrote == [f"wrote {json_path} (bench record, JSON)",
                     f"wrote {json_path.with_suffix('.md')} (bench record, Markdown)"]
    record = load_record(json_path)
    rows: List[dict] = record["latency"]
    ok = {(r["backend"], r["batch"]) for r in rows if r["status"] == "ok"}
    assert ok == {("torch", 1), ("torch", 2), ("onnx", 1), ("onnx", 2)}
    assert all(r["median_ms"] > 0 and r["iters"] >= 2 for r in rows if r["status"] == "ok")
    trt = [r for r in rows if r["backend"] == "tensorrt"]
    assert len(trt) == 2 and all(r["status"].startswith("unavailable") for r in trt)
    assert {s["variant"] for s in record["sizes"]} == {"no_rb", "anchors", "mhsa", "both"}
    assert "Latency:" in res.stdout and "median ms" in res.stdout and "GMACs" in res.stdout
    assert "latency ratio" in res.stdout  # onnx batch 1 matched the earlier run
    assert "onnx / torch, tiny-random, batch 2: median latency ratio" in res.stdout


def test_pipeline_video_shows_the_real_face_the_detector_finds(tmp_path: Path) -> None:
    """benchmarks.pipeline --make-video: the astronaut photo of benchmarks/data (a real face,
    no scikit-image needed) moving over 640 x 480 frames, found by the default detector."""
    import cv2

    from benchmarks.pipeline import make_video
    from grefel.runtime.detectors import make_detector

    video = make_video(tmp_path / "v.avi", frames=4)
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (480, 640, 3)
    faces = make_detector("auto").faces(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    assert len(faces) == 1 and faces[0].keypoints is not None


@pytest.fixture()
def tiny_files(tmp_path: Path) -> Tuple[Path, Path]:
    """The shared tiny checkpoint and a copy of its ONNX carrying its grefel.config metadata,
    as `grefel export` writes it."""
    import onnx
    from test_runtime import _shared_models

    from export.onnx_export import set_metadata
    from grefel.checkpoint import read_meta

    shared = _shared_models()
    proto = onnx.load(str(shared["onnx"]))
    config = read_meta(shared["ckpt"])["config"]
    set_metadata(proto, {"grefel.config": json.dumps(config, sort_keys=True)})
    onnx_path = tmp_path / "tiny-exported.onnx"
    onnx.save(proto, str(onnx_path))
    return shared["ckpt"], onnx_path


def _bench(out: Path, *weights: Path) -> Any:
    args = ["bench", "--presets", "tiny", "--backends", "onnx", "--batch-sizes", "1",
            "--iters", "1", "--seconds", "0", "--threads", "1", "--out", str(out)]
    for w in weights:
        args += ["--weights", str(w)]
    return CliRunner().invoke(cli, args)


def test_bench_reports_the_timed_models_own_params_and_flops(
        tmp_path: Path, no_tensorrt: None, tiny_files: Tuple[Path, Path]) -> None:
    """The timed checkpoint's and .onnx's own size, beside the Table 2 variants, in the
    record, its Markdown and stdout (before: only the presets' Table 2 rows)."""
    from benchmarks.flops import count
    from grefel.checkpoint import load_checkpoint

    ckpt, onnx_path = tiny_files
    res = _bench(tmp_path / "out", ckpt, onnx_path)
    assert res.exit_code == 0, res.output
    (json_path,) = (tmp_path / "out").glob("bench_*.json")
    rows = {r["model"]: r for r in load_record(json_path)["timed_sizes"]}
    own = count(model=load_checkpoint(ckpt)[0])
    assert rows["tiny"]["params_total"] == own["params_total"]
    assert rows["tiny"]["flops"] == own["flops"] > 0 and rows["tiny"]["note"] == ""
    # the same architecture: the same FLOPs; params from the ONNX's weights (BatchNorm folded)
    onnx_row = rows["tiny-exported.onnx"]
    assert onnx_row["flops"] == own["flops"] and onnx_row["macs"] == own["flops"] // 2
    assert 0.9 * own["params_total"] <= onnx_row["params_total"] <= own["params_total"]
    assert onnx_row["params_from"] == "ONNX weight initializers"
    heading = "Params and FLOPs of the timed models (batch 1)"
    assert heading in res.stdout and f"## {heading}" in json_path.with_suffix(".md").read_text()
    assert f"{own['params_total'] / 1e6:.3f}" in res.stdout
    assert "Params and FLOPs of the Table 2 variants vs the paper" in res.stdout


def test_bench_of_an_onnx_without_torch_counts_its_params_and_says_why_no_flops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_tensorrt: None,
        tiny_files: Tuple[Path, Path]) -> None:
    import sys

    import onnx

    _, onnx_path = tiny_files
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ModuleNotFoundError
    res = _bench(tmp_path / "out", onnx_path)
    assert res.exit_code == 0, res.output
    (json_path,) = (tmp_path / "out").glob("bench_*.json")
    (row,) = load_record(json_path)["timed_sizes"]
    weights = sum(int(np.prod(i.dims)) for i in onnx.load(str(onnx_path)).graph.initializer
                  if i.data_type == onnx.TensorProto.FLOAT)
    assert row["params_total"] == weights > 0 and row["flops"] is None and row["macs"] is None
    assert row["note"].startswith("FLOPs not computed: ") and "[train]" in row["note"]
    notes = [line for line in res.stdout.splitlines() if "FLOPs not computed" in line]
    assert notes == [f"tiny-exported.onnx: {row['note']}"]


def test_an_engine_says_its_size_is_not_read(tmp_path: Path) -> None:
    from benchmarks.latency import Target
    from benchmarks.report import timed_sizes

    (row,) = timed_sizes([Target("m.engine", "tensorrt", tmp_path / "m.engine"),
                          Target("(no engine)", "tensorrt")])
    assert row["params_total"] is None and row["flops"] is None
    assert "not read from a TensorRT engine" in row["note"]


def test_bench_settings_are_one_bench_options(tmp_path: Path, monkeypatch: Any) -> None:
    """`grefel bench` hands its settings to run_bench as one BenchOptions, the pipeline rows'
    settings included; the library refuses what the command line refuses."""
    import benchmarks.report as report
    from benchmarks.options import BenchOptions
    from grefel.errors import ConfigError

    given: dict = {}

    def record_call(**kw: Any) -> Any:
        given.update(kw)
        raise report.BenchError("stop here")

    monkeypatch.setattr(report, "run_bench", record_call)
    weights = tmp_path / "m.onnx"
    weights.write_bytes(b"x")
    res = CliRunner().invoke(cli, ["bench", "-w", str(weights), "--iters", "5", "--source",
                                   "clip.avi", "--det-every", "2", "--detectors", "haar",
                                   "--out", str(tmp_path / "b")])
    assert "stop here" in res.output and set(given) == {"weights", "opts", "out_dir", "progress"}
    opts = given["opts"]
    assert (opts.min_iters, opts.det_every, opts.detectors, opts.batch_sizes) == (
        5, (2,), ("haar",), BenchOptions().batch_sizes)
    assert opts.pipeline() == {"source": "clip.avi", "detectors": ["haar"], "det_every": [2],
                               "det_size": BenchOptions().det_size, "max_frames": None}
    assert BenchOptions().pipeline() is None
    for bad in ({"backends": ["tpu"]}, {"batch_sizes": [0]}, {"det_every": []},
                {"min_seconds": -1.0}, {"threads": 0}):
        with pytest.raises(ConfigError, match=f"invalid BenchOptions: {next(iter(bad))}"):
            BenchOptions(**bad)
