"""benchmarks/device_check.py: without a GPU it exits at once saying so and writes nothing; its
section loop records each section's result or one-line error and rewrites the JSON each time."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_gpu_it_exits_at_once_and_writes_nothing(tmp_path: Path) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_check", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2
    assert "no CUDA GPU visible" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_sections_record_results_and_errors(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    import benchmarks.device_check as dc

    monkeypatch.setattr(dc, "section_env", lambda: {"gpu": "fake"})
    monkeypatch.setattr(dc, "section_train_step", lambda *a: {"images_per_s": 1.0})

    def broken(*a):
        raise RuntimeError("CUDA error: out of memory\ndetails")

    monkeypatch.setattr(dc, "section_torch_latency", broken)
    monkeypatch.setattr(dc, "section_ort_cuda", lambda *a: {"status": "no CUDAExecutionProvider"})

    def limit(*a):
        raise dc.TimeLimit()

    monkeypatch.setattr(dc, "section_tensorrt", limit)
    written = []
    args = argparse.Namespace(time_limit=5, onnx=None, train_batch=2, steps=1, iters=1)
    record = dc.run(args, lambda r: written.append(json.loads(json.dumps(r))))
    sections = record["sections"]
    assert sections["env"]["gpu"] == "fake" and sections["train_step"]["images_per_s"] == 1.0
    assert sections["torch_latency"]["status"] == "failed: RuntimeError: CUDA error: out of memory"
    assert sections["tensorrt"]["status"] == "stopped by --time-limit" and record["timed_out"]
    assert len(written) == 5


def test_the_ablation_section_is_the_paper_preset_ablation_and_keeps_what_finished(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import benchmarks.ablation as ablation
    import benchmarks.device_check as dc

    args = argparse.Namespace(out=tmp_path, ablation_seeds=3, ablation_epochs=2,
                              ablation_work=tmp_path / "work", sections=["ablation"])
    parsed = ablation.parse_args(dc.ablation_argv(args))  # a valid benchmarks.ablation command
    assert (parsed.preset, parsed.device, parsed.trunk) == ("paper", "cuda", "trained")
    assert parsed.seeds == [0, 1, 2] and parsed.noise == [0.0, 0.3]
    assert parsed.variants == ["no_rb", "both"] and parsed.epochs == 2
    calls = []

    def stopped(argv):
        calls.append(list(argv))
        if "--report-only" not in argv:
            raise dc.TimeLimit()
        return 0

    monkeypatch.setattr(ablation, "main", stopped)
    with pytest.raises(dc.TimeLimit):
        dc.section_ablation(args)
    assert calls[1] == calls[0] + ["--report-only"]  # the record of the seeds that finished

    def finished(argv):
        (tmp_path / "ablation_paper_trained_2026-12-03.json").write_text(
            json.dumps({"paired": [{"variant": "both", "ci95": [0.01, 0.05]}]}))
        return 0

    monkeypatch.setattr(ablation, "main", finished)
    result = dc.section_ablation(args)
    assert result["status"] == "ok" and result["paired"][0]["ci95"] == [0.01, 0.05]
    assert result["command"].startswith("python -m benchmarks.ablation --preset paper")


def test_an_unknown_section_is_one_clear_line(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_check", "--sections", "env,abalation",
         "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--sections abalation: choose from" in proc.stderr
