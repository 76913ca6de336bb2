"""Issue 26 on `grefel export --int8`: refused without --calib-data before any work; `--calib-method
auto` keeps the first calibration method whose INT8 gate passes and records every try; ONNX
Runtime's quantizer warnings (root logger) go to checks.json and -v, not to the terminal."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fakes.trt import block as block_tensorrt

import export.int8 as int8
from export import ExportError
from export.compare import INT8_CRITERIA, Agreement, measure_agreement
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
    """One real `grefel export tiny.onnx --int8 --calib-data DIR --deepstream DIR` run."""
    tmp = tmp_path_factory.mktemp("int8cli")
    with pytest.MonkeyPatch.context() as mp:
        block_tensorrt(mp)
        result = CliRunner().invoke(cli, [
            "export", str(tiny["onnx"]), "--int8", "--fp32", "--calib-data", str(synthfer),
            "--onnx-only", "--out", str(tmp / "e"), "--deepstream", str(tmp / "ds")])
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
    assert len(int8_lines) == 1 and "(auto calibration)" in int8_lines[0]
    assert checks["int8_calibration"]["requested"] == "auto"
    tried = checks["int8_calibration"]["tried"]
    assert tried[-1]["method"] == checks["int8_calibration"]["chosen"] and tried[-1]["passed"]
    assert checks["int8_gate"]["calibration"] == checks["int8_calibration"]["chosen"]


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


# --- --calib-method auto -----------------------------------------------------------------------


def _agreement(flip: bool) -> Agreement:
    """A real INT8-gate result: identical probabilities, or one confident label changed."""
    ref = np.full((20, 7), 0.05)
    ref[np.arange(20), np.arange(20) % 7] = 0.7
    got = ref.copy()
    if flip:
        got[0] = np.roll(got[0], 1)
    outs = {"probs": ref, "confidence": ref.max(1)}
    cand = {"probs": got, "confidence": got.max(1)}
    return measure_agreement(outs, cand, INT8_CRITERIA, label="INT8 gate")


@pytest.fixture
def scripted_gates(monkeypatch):
    """quantize_int8 copies the FP32 ONNX; int8_gate fails the methods in `failing`. Same
    signatures as export.int8's functions; records the methods calibrated."""
    state: Dict[str, Any] = {"failing": set(), "calls": []}

    def quantize(fp32_onnx, int8_onnx, calib_images, *, method="minmax"):
        state["calls"].append(method)
        shutil.copyfile(fp32_onnx, int8_onnx)
        return {"calibration": method, "calibration_images": len(calib_images),
                "quantized_nodes": 3, "float_nodes_kept": 1, "quantize_linear": 3,
                "dequantize_linear": 6, "bytes": Path(int8_onnx).stat().st_size}

    def gate(fp32_onnx, int8_onnx, images, *, criteria=INT8_CRITERIA, threads=None):
        return _agreement(flip=state["calls"][-1] in state["failing"]), {}

    monkeypatch.setattr(int8, "quantize_int8", quantize)
    monkeypatch.setattr(int8, "int8_gate", gate)
    block_tensorrt(monkeypatch)
    return state


def _run(tiny, synthfer, out: Path, **kw) -> Dict[str, Any]:
    logs: List[str] = []
    opts = ExportOptions(out=out, int8=True, fp16=False, onnx_only=True, calib_data=synthfer,
                         target="trt10", **kw)
    run_export(tiny["onnx"], opts, log=logs.append)
    checks = json.loads((out / "tiny.checks.json").read_text())
    return {"logs": logs, "checks": checks}


def test_auto_keeps_the_first_method_that_passes(tiny, synthfer, tmp_path, scripted_gates):
    """minmax fails the gate, percentile passes: percentile is kept, entropy never tried, and
    the one stage line says why minmax was not."""
    scripted_gates["failing"] = {"minmax"}
    got = _run(tiny, synthfer, tmp_path)
    assert scripted_gates["calls"] == ["minmax", "percentile"]
    cal = got["checks"]["int8_calibration"]
    assert cal["requested"] == "auto" and cal["chosen"] == "percentile"
    assert [(t["method"], t["passed"]) for t in cal["tried"]] == [
        ("minmax", False), ("percentile", True)]
    assert "decisive top-1 flips" in " ".join(cal["tried"][0]["reasons"])
    assert got["checks"]["int8_gate"]["calibration"] == "percentile"
    line = next(ln for ln in got["logs"] if "INT8 QDQ ONNX" in ln)
    assert "percentile calibration (minmax failed: " in line and ": pass, 0 decisive" in line
    assert sorted(p.name for p in tmp_path.iterdir() if "int8" in p.name) == ["tiny.int8.onnx"]


def test_auto_fails_with_every_reason_or_keeps_the_closest_with_force(tiny, synthfer, tmp_path,
                                                                      scripted_gates):
    scripted_gates["failing"] = set(int8.CALIB_METHODS)
    with pytest.raises(ExportError) as err:
        _run(tiny, synthfer, tmp_path / "a")
    message = str(err.value)
    assert "every calibration method" in message and "\n" not in message
    assert all(f"{m}: " in message for m in int8.CALIB_METHODS) and "--force" in message
    assert not (tmp_path / "a" / "tiny.int8.onnx").exists()
    got = _run(tiny, synthfer, tmp_path / "b", force=True)
    assert got["checks"]["int8_calibration"]["chosen"] == "minmax"  # all equally close: first
    assert not got["checks"]["int8_gate"]["passed"]


def test_a_named_method_is_the_only_one_tried(tiny, synthfer, tmp_path, scripted_gates):
    scripted_gates["failing"] = {"minmax"}
    with pytest.raises(ExportError, match="--calib-method auto"):
        _run(tiny, synthfer, tmp_path, calib_method="minmax")
    assert scripted_gates["calls"] == ["minmax"]


# --- DeepStream with INT8 ----------------------------------------------------------------------


def test_deepstream_int8_config_points_at_tensorrts_form_of_the_qdq_onnx(int8_cli):
    """network-mode INT8; onnx-file is the QDQ ONNX with int8 zero points (TensorRT takes no
    uint8 activations), written beside the config."""
    import onnx
    from onnx import TensorProto

    result, tmp = int8_cli
    config = (tmp / "ds" / "config_infer_secondary_grefel.txt").read_text()
    props = dict(line.split("=", 1) for line in config.splitlines()
                 if line and not line.startswith(("#", "[")))
    assert props["network-mode"] == "1"
    assert props["model-engine-file"] == "../e/tiny_int8_b8.engine"
    parsed = (tmp / "ds" / props["onnx-file"]).resolve()
    assert parsed == (tmp / "ds" / "tiny.int8.trt.onnx").resolve()
    inits = {i.name: i for i in onnx.load(str(parsed)).graph.initializer}
    zero_points = [inits[n.input[2]] for n in onnx.load(str(parsed)).graph.node
                   if n.op_type == "QuantizeLinear" and n.input[2] in inits]
    assert zero_points and all(z.data_type == TensorProto.INT8 for z in zero_points)
