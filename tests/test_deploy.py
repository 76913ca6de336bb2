"""The deployed model is the measured model (issue 15), on the tiny preset:

- `grefel eval` of an exported `.onnx` (FP32 and INT8) through the runtime backend and the one
  preprocessing path, beside the checkpoint's report, and `--reference CKPT` agreement;
- `grefel train --init CKPT`: strict about what fits, fresh class-dependent tensors;
- `grefel export --int8 --calib-data DIR`: the QDQ ONNX, float LayerNorm / Softmax / tail, the
  INT8 gate on held-out images, and `predict` / `eval` on it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from export.compare import INT8_CRITERIA, artifact_precision
from export.fp16 import fp32_node_names
from export.gate_images import calibration_split
from export.int8 import int8_gate, quantize_int8
from export.onnx_export import export_onnx
from grefel.checkpoint import save_checkpoint
from grefel.cli import cli
from grefel.config import TrainConfig
from grefel.fileio import sha256_file
from grefel.model.grefel import GReFEL
from grefel.train import TrainingError, init_from_checkpoint
from tests.test_train import CLASSES, make_dataset


def _tiny(classes=CLASSES, seed: int = 0) -> GReFEL:
    torch.manual_seed(seed)
    return GReFEL(TrainConfig(preset="tiny").model_config(classes)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint, its FP32 ONNX (with the embedding output) and a small dataset."""
    tmp = tmp_path_factory.mktemp("deploy")
    model = _tiny()
    ckpt = save_checkpoint(tmp / "m.safetensors", model)
    onnx_path = export_onnx(model, tmp / "m.onnx", opset=17, embedding=True)
    data = make_dataset(tmp / "ds", n_train=7, n_val=0, n_test=14)
    return ckpt, Path(onnx_path), data, tmp


def _eval(args):
    res = CliRunner().invoke(cli, ["eval", *map(str, args), "--batch-size", "5", "--device",
                                   "cpu", "--threads", "1"])
    assert res.exit_code == 0, res.output
    return res


def test_eval_onnx_reports_beside_the_checkpoint(exported):
    """The same report for the ONNX as for the checkpoint; --reference measures agreement."""
    ckpt, onnx_path, data, tmp = exported
    _eval([ckpt, "--data", data, "--out", tmp / "ev_ckpt"])
    res = _eval([onnx_path, "--data", data, "--out", tmp / "ev_onnx", "--reference", ckpt])
    a = json.loads((tmp / "ev_ckpt" / "metrics.json").read_text())
    b = json.loads((tmp / "ev_onnx" / "metrics.json").read_text())
    assert b["backend"].startswith("onnx on cpu") and a["backend"] == "torch"
    assert b["n"] == a["n"] == 14 and b["embedding"]["dim"] == a["embedding"]["dim"] > 0
    ref = b["reference"]
    assert ref["final_accuracy"] == pytest.approx(a["final"]["accuracy"])
    agree = ref["agreement"]
    assert ref["criteria"] == "fp16" and agree["passed"] and agree["nonfinite"] == 0
    assert agree["max_abs_dprobs"] < 1e-4  # FP32 vs FP32: float tolerance
    # Every label an FP32 ONNX changes is a near-tie flip, so the accuracies differ by those only.
    assert abs(ref["accuracy_delta"]) * b["n"] <= agree["near_tie_flips"] + 1e-9
    assert "top-1 agreement with reference" in res.output
    for name in ("confusion_final.png", "reliability.png", "embedding.png"):
        assert (tmp / "ev_onnx" / name).stat().st_size > 0


def test_eval_artifact_without_embedding_and_bad_files(exported, tmp_path):
    ckpt, _, data, _ = exported
    plain = export_onnx(_tiny(), tmp_path / "plain.onnx", opset=17)
    _eval([plain, "--data", data, "--out", tmp_path / "ev"])
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["embedding"] == {"davies_bouldin": None, "calinski_harabasz": None, "dim": 0}
    assert not (tmp_path / "ev" / "embedding.png").exists()
    runner = CliRunner()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    for args in ([junk, "--data", data], [plain, "--data", data, "--reference",
                                            tmp_path / "none.safetensors"]):
        res = runner.invoke(cli, ["eval", *map(str, args), "--device", "cpu"])
        assert res.exit_code in (1, 2) and "Traceback" not in res.output, res.output
        assert Path(str(args[-1])).name in res.output or "junk.onnx" in res.output
    other = export_onnx(_tiny(("x", "y", "z")), tmp_path / "xyz.onnx", opset=17)
    res = runner.invoke(cli, ["eval", str(other), "--data", str(data), "--device", "cpu"])
    assert res.exit_code == 1 and "classes" in res.output and "Traceback" not in res.output


def test_eval_engine_goes_through_the_tensorrt_backend(exported, monkeypatch):
    """An .engine is opened by the TensorRT backend; without TensorRT that is one clear line."""
    _, _, data, tmp = exported
    for name in ("tensorrt", "pycuda", "pycuda.driver", "pycuda.autoinit"):
        monkeypatch.setitem(sys.modules, name, None)
    engine = tmp / "m_fp16_b8.engine"
    engine.write_bytes(b"\x00PLAN")
    res = CliRunner().invoke(cli, ["eval", str(engine), "--data", str(data), "--device", "cpu"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "tensorrt" in res.output.lower(), res.output


# --- train --init ------------------------------------------------------------------------------


def test_init_loads_every_tensor_or_refuses_what_does_not_fit(tmp_path):
    src = _tiny(seed=3)
    ckpt = save_checkpoint(tmp_path / "src.safetensors", src)
    cfg = TrainConfig(preset="tiny", init=str(ckpt))
    model, report = init_from_checkpoint(str(ckpt), cfg.model_config(CLASSES), cfg)
    assert report["reinitialised"] == [] and len(report["loaded"]) == len(src.state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # other classes: the class-dependent tensors start fresh, every other one is loaded
    four = ("a", "b", "c", "d")
    model, report = init_from_checkpoint(str(ckpt), cfg.model_config(four), cfg)
    assert model.cfg.class_names == four and report["reinitialised"]
    assert all(src.state_dict()[k].shape != model.state_dict()[k].shape
               or k in report["reinitialised"] for k in report["reinitialised"])
    for k in report["loaded"]:
        assert torch.equal(model.state_dict()[k], src.state_dict()[k]), k
    # a file with an extra tensor, and one with a tensor of the wrong shape: refused
    state = load_file(str(ckpt))
    for name, change in (("extra", {"bogus.weight": torch.zeros(2)}),
                         ("shape", {next(iter(state)): torch.zeros(3, 3)})):
        bad = tmp_path / f"{name}.safetensors"
        save_file({**state, **change}, str(bad))
        meta = json.loads((tmp_path / "src.json").read_text())  # a sidecar that vouches for
        meta["weights_sha256"] = sha256_file(bad)  # the file (item 8 refuses a mismatched pair)
        (tmp_path / f"{name}.json").write_text(json.dumps(meta))
        with pytest.raises(TrainingError, match="do not fit"):
            init_from_checkpoint(str(bad), cfg.model_config(CLASSES), cfg)
    with pytest.raises(TrainingError, match="pass --preset tiny"):
        paper = TrainConfig(preset="paper", init=str(ckpt))
        init_from_checkpoint(str(ckpt), paper.model_config(CLASSES), paper)
    with pytest.raises(TrainingError, match="pass --variant both"):
        no_rb = TrainConfig(preset="tiny", variant="no_rb", init=str(ckpt))
        init_from_checkpoint(str(ckpt), no_rb.model_config(CLASSES), no_rb)


def test_train_init_cli_fine_tunes_and_reports(tmp_path):
    data = make_dataset(tmp_path / "ds", n_train=14, n_val=7, n_test=0)
    ckpt = save_checkpoint(tmp_path / "src.safetensors", _tiny(seed=5))
    out = tmp_path / "ft"
    res = CliRunner().invoke(cli, ["train", "--data", str(data), "--out", str(out), "--epochs",
                                   "1", "--batch-size", "7", "--device", "cpu", "--preset",
                                   "tiny", "--init", str(ckpt), "--precise-bn", "0"])
    assert res.exit_code == 0, res.output
    init = json.loads((out / "init.json").read_text())
    assert init["reinitialised"] == [] and init["loaded_values"] == init["total_values"]
    tuned = load_file(str(out / "last.safetensors"))
    start = load_file(str(ckpt))
    assert set(tuned) == set(start)
    assert any(not torch.equal(tuned[k], start[k]) for k in start)  # it trained
    res = CliRunner().invoke(cli, ["train", "--data", str(data), "--out", str(tmp_path / "x"),
                                   "--device", "cpu", "--init", str(tmp_path / "none.safetensors")])
    assert res.exit_code == 1 and "none.safetensors" in res.output
    assert "Traceback" not in res.output


# --- INT8 --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    from grefel.data.synthfer import generate_synthfer

    return generate_synthfer(tmp_path_factory.mktemp("synth") / "s", 60, seed=0, difficulty=0.3,
                             imbalance="uniform")


def test_calibration_and_gate_images_are_disjoint(calib_dir):
    calib, gate, what = calibration_split(calib_dir, n_calib=30, n_gate=20)
    assert calib.shape == (30, 3, 112, 112) and gate.shape == (20, 3, 112, 112)
    flat_c = {c.tobytes() for c in calib}
    assert not any(g.tobytes() in flat_c for g in gate) and "held-out" in what


def test_int8_qdq_keeps_norms_softmax_and_tail_float_and_passes_the_gate(exported, calib_dir):
    _, onnx_path, _, tmp = exported
    calib, held_out, _ = calibration_split(calib_dir, n_calib=24, n_gate=24)
    out = tmp / "m.int8.onnx"
    counts = quantize_int8(onnx_path, out, calib)
    model = onnx.load(str(out))
    assert counts["quantized_nodes"] > 0 and counts["quantize_linear"] > 0
    assert artifact_precision(out) == "int8" and artifact_precision(onnx_path) == "fp32"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["grefel.precision"] == "int8" and "grefel.class_names" in meta
    keep = set(fp32_node_names(onnx.load(str(onnx_path))))
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in keep:  # kept float: no dequantized input
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                       for i in node.input), node.name
    ops = {n.op_type for n in model.graph.node}
    assert {"LayerNormalization", "Softmax"} <= ops
    softmax_out = {n.output[0] for n in model.graph.node if n.op_type == "Softmax"}
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in softmax_out
                   for n in model.graph.node)  # float probabilities into the weighted sum
    # per-channel weights: a weight DequantizeLinear of a Conv has one scale per out channel
    inits = {i.name: i for i in model.graph.initializer}
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[1] in inits and len(inits[n.input[1]].dims) == 1
                   and inits[n.input[1]].dims[0] > 1]
    assert per_channel
    gate, _ = int8_gate(onnx_path, out, held_out, criteria=INT8_CRITERIA, threads=1)
    assert gate.passed and gate.nonfinite == 0, str(gate)


def test_export_int8_cli_then_predict_and_eval(exported, calib_dir, tmp_path, monkeypatch):
    ckpt, _, data, _ = exported
    for name in ("tensorrt", "pycuda", "pycuda.driver", "pycuda.autoinit"):
        monkeypatch.setitem(sys.modules, name, None)
    runner = CliRunner()
    res = runner.invoke(cli, ["export", str(ckpt), "--int8", "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and "--calib-data" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["export", str(ckpt), "--int8", "--fp32", "--calib-data",
                              str(calib_dir), "--out", str(tmp_path / "e"), "--onnx-only",
                              "--no-simplify", "--json", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    int8 = tmp_path / "e" / "m.int8.onnx"
    gates = json.loads((tmp_path / "g.json").read_text())
    assert gates["int8_gate"]["passed"] and gates["int8_gate"]["calibration"] == "minmax"
    assert "held-out" in gates["int8_gate"]["images"]
    res = runner.invoke(cli, ["predict", str(calib_dir / "images"), "-w", str(int8), "--aligned",
                              "--device", "cpu", "--max-frames", "3"])
    assert res.exit_code == 0, res.output
    assert len([ln for ln in res.output.splitlines() if ln.startswith("{")]) == 3
    ev = _eval([int8, "--data", data, "--out", tmp_path / "ev", "--reference", ckpt])
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["reference"]["criteria"] == "int8" and "agreement gate (int8)" in ev.output
    # an INT8 ONNX as the source is built, never re-quantized; it is not the FP32 name
    res = runner.invoke(cli, ["export", str(int8), "--int8", "--out", str(tmp_path / "e2"),
                              "--target", "trt10"])
    assert res.exit_code == 2, res.output
    assert (tmp_path / "e2" / "m.int8.onnx").is_file()
    assert not (tmp_path / "e2" / "m.onnx").exists() and "--int8" in res.output


# --- the FP32 ONNX graph -----------------------------------------------------------------------


def _slice_steps(model: onnx.ModelProto) -> list:
    """The `steps` of every Slice node (from initializers or Constant nodes)."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return [values[n.input[4]].tolist() if len(n.input) > 4 and n.input[4] in values else None
            for n in model.graph.node if n.op_type == "Slice"]


def test_export_writes_the_strided_shortcut_not_a_strided_slice(exported):
    """IR-50's stride-2 shortcuts are exported as MaxPool(1, 2) / a strided 1x1 Conv (ONNX
    Runtime keeps them in its blocked layout), while eager torch keeps the slice; the outputs
    agree within float tolerance."""
    from export.compare import run_backend
    from grefel.runtime.ort_backend import OrtBackend

    ckpt, onnx_path, _, _ = exported
    model = onnx.load(str(onnx_path))
    assert all(s is None or all(v == 1 for v in s) for s in _slice_steps(model))
    pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    assert pools and all([a.ints for a in p.attribute if a.name == "kernel_shape"] == [[1, 1]]
                         for p in pools)
    strided_1x1 = [n for n in model.graph.node if n.op_type == "Conv"
                   and {a.name: list(a.ints) for a in n.attribute}.get("kernel_shape") == [1, 1]
                   and {a.name: list(a.ints) for a in n.attribute}.get("strides") == [2, 2]]
    assert strided_1x1
    x = np.random.default_rng(1).random((3, 3, 112, 112), dtype=np.float32)
    got = run_backend(OrtBackend(onnx_path, device="cpu", threads=1), x)
    eager = _tiny()  # the exported model (seed 0), built outside inference mode
    with torch.inference_mode():
        ref = eager(torch.from_numpy(x))
    for name in ("probs", "primary", "confidence"):
        assert np.abs(got[name] - getattr(ref, name).numpy()).max() < 1e-5, name
