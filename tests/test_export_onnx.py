"""ONNX side of `grefel export`, for real on the tiny preset (and once on the paper preset):
export with a dynamic batch, onnxsim, ONNX Runtime parity, the TensorRT op lint, the FP16-typed
ONNX and the FP16 gate, and the command without TensorRT (CliRunner and a torch-free
subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from export import ExportError
from export.compare import agreement, compare
from export.fp16 import fp16_gate, fp32_node_names, gate_images
from export.lint import TARGETS, lint_onnx
from export.onnx_export import export_onnx
from export.runners import ort_session, run_onnxruntime, run_torch
from export.simplify import simplify_onnx
from grefel.checkpoint import load_checkpoint, save_checkpoint
from grefel.cli import cli
from grefel.model import create_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """One `grefel export CKPT` run on a seeded tiny checkpoint, without TensorRT."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("export")
    ckpt = save_checkpoint(tmp / "tiny.safetensors", create_model("tiny").eval())
    out = tmp / "engines"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "--out", str(out),
                                      "--json", str(tmp / "gates.json")])
    return ckpt, out, result, tmp


def _tiny_model():
    torch.manual_seed(1)
    return create_model("tiny").eval()


def test_cli_without_tensorrt_writes_checked_onnx_and_exits_2(cli_export):
    ckpt, out, result, tmp = cli_export
    assert result.exit_code == 2, result.output
    for name in ("tiny.onnx", "tiny.fp16.onnx", "tiny.checks.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.engine"))
    assert "tensorrt is not available" in result.output
    assert f"grefel export {out / 'tiny.onnx'} --fp16 --batch 1 --max-batch 8" in result.output
    assert "--target trt8.5 --onnx-only" in result.output  # JetPack 5 needs opset 16
    gates = json.loads((tmp / "gates.json").read_text())
    assert gates["exit_code"] == 2
    assert set(gates["lint"]) == set(TARGETS) and all(r["passed"] for r in gates["lint"].values())
    assert gates["lint"]["trt8.5"]["opset"] == 16 and gates["lint"]["trt11"]["opset"] == 17
    assert gates["fp16_gate"]["passed"] and gates["fp16_gate"]["nonfinite"] == 0
    before, after = gates["onnxsim"]["17"]["nodes_before"], gates["onnxsim"]["17"]["nodes_after"]
    assert after < before
    assert [r["label"] for r in gates["parity"]] == ["batch 1", "batch 3", "batch 8"]


def test_exported_batch_is_dynamic_and_matches_torch(cli_export):
    ckpt, out, _, _ = cli_export
    model, _ = load_checkpoint(ckpt)
    session = ort_session(out / "tiny.onnx")
    assert session.get_inputs()[0].shape[0] == "batch"
    rng = np.random.default_rng(5)
    for b in (1, 3, 8):
        x = rng.random((b, 3, 112, 112), dtype=np.float32)
        got = run_onnxruntime(session, x)
        ref = run_torch(model, x, ["probs", "primary", "confidence"])
        assert got["probs"].shape == (b, 7)
        assert compare(ref, got, {"probs": (1e-4, 0), "confidence": (1e-4, 0)})


def test_onnx_names_and_metadata(cli_export):
    ckpt, out, _, _ = cli_export
    model = onnx.load(str(out / "tiny.onnx"))
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["probs", "primary", "confidence"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["grefel.class_names"])[0] == "surprise"
    assert json.loads(meta["grefel.input"])["shape"] == ["batch", 3, 112, 112]
    assert json.loads(meta["grefel.config"])["name"] == "tiny"
    assert meta["grefel.opset"] == "17" and meta["grefel.version"]


def test_embedding_output_and_static_batch(tmp_path):
    path = export_onnx(_tiny_model(), tmp_path / "e.onnx", opset=17, batch=2, dynamic=False,
                       embedding=True)
    session = ort_session(path)
    assert [o.name for o in session.get_outputs()][-1] == "embedding"
    assert session.get_inputs()[0].shape == [2, 3, 112, 112]
    zeros = np.zeros((2, 3, 112, 112), np.float32)
    assert run_onnxruntime(session, zeros)["embedding"].shape[0] == 2


def test_onnxsim_failure_is_an_error(cli_export, tmp_path, monkeypatch):
    import onnxsim

    path = cli_export[1] / "tiny.onnx"
    monkeypatch.setattr(onnxsim, "simplify", lambda model: (model, False))
    with pytest.raises(ExportError, match="check of the simplified graph failed"):
        simplify_onnx(path, tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()


def test_lint_flags_layernorm_on_trt85_and_bad_graphs(cli_export, tmp_path):
    _, out, _, _ = cli_export
    report = lint_onnx(out / "tiny.onnx", "trt8.5")  # opset 17 has LayerNormalization
    assert not report and "LayerNormalization" in report.unsupported
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    a = helper.make_tensor_value_info("a", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Unsqueeze", ["x", "a"], ["y"], name="u")]
    graph = helper.make_graph(nodes, "g", [x, a], [y])
    for opset, target, problem in ((17, "trt10", "BROKEN"), (21, "trt10", "OUTSIDE")):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        report = lint_onnx(model, target)
        assert not report and problem in "\n".join(report.lines())
    custom = helper.make_graph([helper.make_node("Foo", ["x"], ["y"], domain="my")], "g", [x], [y])
    report = lint_onnx(helper.make_model(custom, opset_imports=[helper.make_opsetid("", 17)]),
                       "trt11")
    assert report.unsupported == {"my::Foo": 1}


def test_fp16_onnx_keeps_io_layernorm_softmax_and_tail_fp32(cli_export):
    _, out, _, _ = cli_export
    fp16 = onnx.shape_inference.infer_shapes(onnx.load(str(out / "tiny.fp16.onnx")))
    g = fp16.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    assert all(types[v.name] == TensorProto.FLOAT for v in [*g.input, *g.output])
    by_op = {}
    for n in g.node:
        by_op.setdefault(n.op_type, []).append(n)
    for op in ("LayerNormalization", "Softmax", "Log", "Sqrt"):
        assert all(types[n.input[0]] == TensorProto.FLOAT for n in by_op[op]), op
    assert all(types[n.input[1]] == TensorProto.FLOAT16 for n in by_op["Conv"])
    anchors = [n for n in g.node if n.name.startswith("/model/anchor/")]
    assert anchors and all(types.get(o) != TensorProto.FLOAT16 for n in anchors for o in n.output)


def test_fp32_nodes_of_decomposed_layernorm(tmp_path):
    model = onnx.load(str(export_onnx(_tiny_model(), tmp_path / "m16.onnx", opset=16)))
    keep = set(fp32_node_names(model))
    pows = [n.name for n in model.graph.node if n.op_type == "Pow"]
    in_norms = [p for p in pows if "norm" in p]
    assert len(in_norms) == 9 and set(in_norms) <= keep  # every LayerNorm module of tiny
    assert not any(n.name in keep for n in model.graph.node if n.op_type == "Conv")
    lint = {t: bool(lint_onnx(model, t)) for t in TARGETS}
    assert all(lint.values()), lint  # opset 16: every target, 8.5 included


def test_fp16_gate_real_and_torch_fallback(cli_export, tmp_path):
    ckpt, out, _, _ = cli_export
    images = gate_images(None, n_random=4)
    gate = fp16_gate(out / "tiny.onnx", out / "tiny.fp16.onnx", images)
    assert gate and gate.backend.startswith("onnxruntime") and gate.samples == 4
    assert 0 < gate.max_abs_dprobs < 1e-2  # FP16 really changed the numbers, a little
    broken = tmp_path / "broken.fp16.onnx"
    broken.write_bytes(b"not an onnx file")
    model, _ = load_checkpoint(ckpt)
    gate = fp16_gate(out / "tiny.onnx", broken, images, torch_model=model)
    assert gate.backend.startswith("torch .half()") and gate.nonfinite == 0
    with pytest.raises(ExportError, match="no torch model"):
        fp16_gate(out / "tiny.onnx", broken, images)


def test_agreement_fails_on_flips_and_nan():
    ref = {"probs": np.eye(4, dtype=np.float32)}
    flipped = {"probs": np.eye(4, dtype=np.float32)[[1, 0, 2, 3]]}
    assert agreement(ref, ref) and not agreement(ref, flipped)
    assert agreement(ref, flipped).top1_agreement == 0.5
    nan = {"probs": np.where(np.eye(4) > 0, np.nan, 0).astype(np.float32)}
    assert not agreement(ref, nan, min_agreement=0.0)
    assert not compare(ref, {"probs": ref["probs"][:2]}, {"probs": (1, 1)})


def test_calib_folder_images(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 80), (255, 0, 0)).save(tmp_path / "a.png")
    images = gate_images(tmp_path, n_random=2)
    assert images.shape == (3, 3, 112, 112) and images[0, 0].min() > 0.99
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no .png"):
        gate_images(tmp_path / "empty", 1)


def test_onnx_source_path_imports_no_torch(cli_export, tmp_path):
    """`grefel export MODEL.onnx` (and export.trt_builder) must run where torch is absent."""
    _, out, _, _ = cli_export
    script = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        import export.trt_builder, export.verify, export.pipeline
        from grefel.cli import cli
        try:
            cli(["export", {str(out / 'tiny.onnx')!r}, "--onnx-only", "--target", "trt10",
                 "--out", {str(tmp_path)!r}])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        assert "torch" not in sys.modules
        print("NO-TORCH-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert "NO-TORCH-OK" in proc.stdout, proc.stderr[-2000:]
    assert (tmp_path / "tiny.fp16.onnx").is_file()


def test_bad_inputs_are_clean_errors(cli_export, tmp_path):
    ckpt, out, _, _ = cli_export
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"garbage")
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(bad), "--onnx-only", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "x.onnx" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["export", str(ckpt), "--batch", "9", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "--max-batch" in result.output
    result = runner.invoke(cli, ["export", str(ckpt), "--opset", "99"])
    assert result.exit_code == 2 and "opset" in result.output


@pytest.mark.slow
def test_paper_preset_export_parity_and_lint(tmp_path):
    """The paper preset once: export at opset 17 and 16, ORT vs torch at batch 1 and 2, lint."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model("paper").eval()
    start = time.perf_counter()
    p17 = export_onnx(model, tmp_path / "paper17.onnx", opset=17)
    seconds = time.perf_counter() - start
    session = ort_session(p17)
    rng = np.random.default_rng(0)
    for b in (1, 2):
        x = rng.random((b, 3, 112, 112), dtype=np.float32)
        ref = run_torch(model, x, ["probs", "primary", "confidence"])
        assert compare(ref, run_onnxruntime(session, x), {"probs": (1e-4, 0), "primary": (1e-4, 0)})
    for target in ("trt8.6", "trt10", "trt10.15", "trt11"):
        assert lint_onnx(p17, target), target
    del session
    p16 = export_onnx(model, tmp_path / "paper16.onnx", opset=16)
    assert lint_onnx(p16, "trt8.5")
    print(f"paper export at opset 17: {seconds:.1f} s")
