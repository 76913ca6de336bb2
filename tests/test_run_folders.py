"""One default output layout: every command that writes a folder by default writes a new
runs/<command>/<name> (-2, -3, ... when taken); an explicit --out is used as given."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import List

import pytest
from click.testing import CliRunner
from fakes.trt import block as block_tensorrt

from grefel.cli import _default_train_folder, cli
from grefel.fileio import new_run_folder
from tests.test_eval import _checkpoint, make_dataset


def test_new_run_folder_increments_and_has_one_owner(tmp_path: Path) -> None:
    made: List[Path] = []
    threads = [threading.Thread(target=lambda: made.append(new_run_folder("eval", "m", tmp_path)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(p.name for p in made)
    assert names == ["m", "m-2", "m-3", "m-4"]  # each caller got its own, new folder
    assert all(p.parent == tmp_path / "eval" and p.is_dir() for p in made)


def test_eval_default_is_a_new_runs_eval_folder(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """It was MODEL's folder/eval-SPLIT, replaced by the next eval."""
    data = make_dataset(tmp_path / "ds", n_train=7, n_val=0, n_test=4)
    ckpt = _checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    for folder in ("m-test", "m-test-2"):
        res = CliRunner().invoke(cli, ["eval", str(ckpt), "--data", str(data), "--batch-size",
                                       "4", "--device", "cpu"])
        assert res.exit_code == 0, res.output
        assert (tmp_path / "runs" / "eval" / folder / "metrics.json").is_file()
        assert f"wrote {Path('runs') / 'eval' / folder} (" in res.output
    assert not (tmp_path / "eval-test").exists()


def test_bench_default_is_a_new_runs_bench_folder(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """It was ./benchmarks/results, the project's own committed records."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["bench", "--presets", "tiny", "--backends", "onnx",
                                   "--batch-sizes", "1", "--iters", "1", "--seconds", "0",
                                   "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "runs" / "bench" / "random-init").glob("bench_*.json"))) == 1
    assert not (tmp_path / "benchmarks").exists()


def test_export_default_is_a_new_runs_export_folder(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """It was ./engines."""
    from grefel.checkpoint import save_checkpoint
    from tests.test_export_onnx import _tiny_model

    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", _tiny_model())
    monkeypatch.chdir(tmp_path)
    block_tensorrt(monkeypatch)
    res = CliRunner().invoke(cli, ["export", str(ckpt), "--onnx-only", "--fp32"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "export" / "tiny" / "tiny.onnx").is_file()
    assert not (tmp_path / "engines").exists()


def test_train_default_is_a_new_runs_train_folder(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """It was runs/grefel, where a second run was refused; --resume names its folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _default_train_folder("tiny") == str(Path("runs") / "train" / "tiny")
    assert _default_train_folder("tiny") == str(Path("runs") / "train" / "tiny-2")
    monkeypatch.setenv("WORLD_SIZE", "2")  # every torchrun rank names the same folder
    assert _default_train_folder("paper") == str(Path("runs") / "train" / "paper")
    res = CliRunner().invoke(cli, ["train", "--resume"])
    assert res.exit_code == 2 and "Missing option '--out'" in res.output


def test_serve_writes_tritonserver_log_in_a_new_runs_serve_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It went to stdout (tables, CUDA errors on a CPU machine); -v keeps it there. `serve` is
    replaced by a fake with its signature that records the options it was given (the line
    saying where the log is: test_serve.py, with a real server)."""
    import grefel.serve

    given = []

    def fake_serve(weights: Path, opts: grefel.serve.ServeOptions, on_ready=print,
                   stop=None) -> None:
        given.append(opts)

    monkeypatch.setattr(grefel.serve, "serve", fake_serve)
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "m.onnx"
    weights.write_bytes(b"")
    for folder in ("m", "m-2"):
        res = CliRunner().invoke(cli, ["serve", "-w", str(weights)])
        assert res.exit_code == 0, res.output
        log = Path("runs") / "serve" / folder / "tritonserver.log"
        assert given[-1].log_file == log and log.parent.is_dir()
    res = CliRunner().invoke(cli, ["serve", "-w", str(weights), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0 and given[-1].log_file == tmp_path / "o" / "tritonserver.log"
    res = CliRunner().invoke(cli, ["serve", "-w", str(weights), "-v"])
    assert res.exit_code == 0 and given[-1].log_file is None
    assert not (Path("runs") / "serve" / "m-3").exists()
