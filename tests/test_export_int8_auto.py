"""Issue 26 on `grefel export --int8`: refused without --calib-data before any work; ONNX
Runtime's quantizer warnings (root logger) go to checks.json and -v, not to the terminal."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from click.testing import CliRunner
from fakes.trt import block as block_tensorrt

from export import ExportError
from export.onnx_export import export_onnx
from export.pipeline import ExportOptions, run_export
from export.quiet import captured_warnings
from grefel.checkpoint import save_checkpoint
from grefel.cli import cli
from grefel.model import create_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Dict[str, Path]:
    """A seeded tiny checkpoint and its FP32 ONNX."""
    tmp = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    return {"ckpt": save_checkpoint(tmp / "tiny.safetensors", model),
            "onnx": Path(export_onnx(model, tmp / "tiny.onnx", opset=17))}


@pytest.fixture(scope="module")
def int8_cli(tiny, synthfer, tmp_path_factory):
    """One real `grefel export tiny.onnx --int8 --calib-data DIR` run."""
    tmp = tmp_path_factory.mktemp("int8cli")
    with pytest.MonkeyPatch.context() as mp:
        block_tensorrt(mp)
        result = CliRunner().invoke(cli, [
            "export", str(tiny["onnx"]), "--int8", "--fp32", "--calib-data", str(synthfer),
            "--onnx-only", "--out", str(tmp / "e")])
    return result, tmp


# --- refused before any work -------------------------------------------------------------------


def test_int8_without_calib_data_is_refused_before_any_work(tiny, tmp_path, monkeypatch):
    """One line naming --calib-data; no checkpoint is loaded, --out is not even created."""
    import grefel.checkpoint

    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the checkpoint was loaded before the options were checked")

    monkeypatch.setattr(grefel.checkpoint, "load_checkpoint", no_work)
    out = tmp_path / "engines"
    result = CliRunner().invoke(cli, ["export", str(tiny["ckpt"]), "--int8", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: --int8 needs --calib-data DIR: a folder of real face crops (e.g. a SynthFER or "
        "RAF-DB folder) to calibrate on and gate with"]
    assert not out.exists()
    with pytest.raises(ExportError, match="--calib-data"):
        run_export(tiny["onnx"], ExportOptions(int8=True, out=out), log=str)
    assert not out.exists()


# --- third-party warnings ----------------------------------------------------------------------


def test_quantizer_warnings_go_to_checks_json_not_the_terminal(int8_cli):
    result, tmp = int8_cli
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output and "pre-processing" not in result.output
    checks = json.loads((tmp / "e" / "tiny.checks.json").read_text())
    assert any("WARNING root: Please consider" in w and "pre-processing" in w
               for w in checks["warnings"]), checks["warnings"]
    assert any(line.startswith("    warning: WARNING root") for line in checks["log"])
    int8_lines = [ln for ln in result.stderr.splitlines() if "INT8 QDQ ONNX" in ln]
    assert len(int8_lines) == 1 and ": pass, 0 decisive flips" in int8_lines[0]


def test_captured_warnings_restores_the_root_logger(capfd):
    """Root-logger records (how ONNX Runtime's quantizer warns) and Python warnings are recorded
    once each with a count, printed nowhere; the root logger's handlers come back as they were."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    seen: List[str] = []
    with captured_warnings(sink=seen.append) as caught:
        logging.warning("Please consider to run pre-processing before quantization.")
        logging.warning("Please consider to run pre-processing before quantization.")
        logging.getLogger("onnxruntime.quantization").warning("a named logger")
        logging.getLogger("grefel.x").info("below WARNING: dropped")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    assert capfd.readouterr() == ("", "")
    lines = caught.lines()
    assert lines[0] == ("WARNING root: Please consider to run pre-processing before "
                        "quantization. (x2)")
    assert lines[1] == "WARNING onnxruntime.quantization: a named logger"
    assert lines[2].startswith("DeprecationWarning: old API (test_export_int8_auto.py:")
    assert len(lines) == 3 and len(seen) == 3 and root.handlers == handlers
