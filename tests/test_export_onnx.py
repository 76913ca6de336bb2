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
from fakes.trt import block as block_tensorrt
from onnx import TensorProto, helper

from export import ExportError
from export.compare import (
    FP16_CRITERIA,
    GateCriteria,
    check_parity,
    measure_agreement,
    run_backend,
)
from export.fp16 import convert_to_fp16, fp16_gate, fp32_node_names, to_float16
from export.gate_images import gate_images
from export.lint import TARGETS, lint_onnx
from export.onnx_export import export_onnx
from export.simplify import simplify_onnx
from grefel.checkpoint import load_checkpoint, save_checkpoint
from grefel.cli import cli
from grefel.model import create_model
from grefel.runtime.ort_backend import OrtBackend
from grefel.runtime.torch_backend import TorchBackend

ROOT = Path(__file__).resolve().parents[1]


def onnx_outputs(path: Path, x: np.ndarray) -> dict:
    return run_backend(OrtBackend(path, device="cpu", threads=1), x, chunk=len(x))


def torch_outputs(model, x: np.ndarray) -> dict:
    return run_backend(TorchBackend(model=model, device="cpu"), x, chunk=len(x))


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """One `grefel export CKPT` run on a seeded tiny checkpoint, without TensorRT."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("export")
    ckpt = save_checkpoint(tmp / "tiny.safetensors", create_model("tiny").eval())
    out = tmp / "engines"
    with pytest.MonkeyPatch.context() as mp:
        block_tensorrt(mp)
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
    fp16 = gates["fp16_gate"]
    assert fp16["passed"] and fp16["nonfinite"] == 0 and fp16["decisive_flips"] == 0
    assert fp16["samples"] == 64 and "SynthFER faces drawn on the fly" in fp16["images"]
    assert {"near_ties", "near_tie_flips", "margin_threshold", "init_values_clamped"} <= set(fp16)
    before, after = gates["onnxsim"]["17"]["nodes_before"], gates["onnxsim"]["17"]["nodes_after"]
    assert after < before
    assert [r["label"] for r in gates["parity"]] == ["batch 1", "batch 3", "batch 8"]


def test_export_prints_one_line_per_stage_and_keeps_details_in_checks_json(cli_export):
    """Issue 26: the export log is one line per stage; the lint's 'met' restrictions, the
    per-batch parity and the start lines are details: in checks.json's log, not printed."""
    _, out, result, _ = cli_export
    printed = result.stderr.splitlines()
    stages = [line for line in printed if line.startswith("[")]
    numbers = [line.split("]")[0] for line in stages]
    assert len(numbers) == len(set(numbers)) and len(stages) >= 6
    assert all(line.endswith(" s)") for line in stages)  # a stage's line is its end line
    assert not [line for line in printed if ": met" in line or line.endswith(" ...")]
    assert len(printed) <= len(stages) + 5, result.stderr  # artifacts + how to build
    assert any("TensorRT op lint" in line and "every target passes" in line for line in stages)
    checks = json.loads((out / "tiny.checks.json").read_text())
    log = checks["log"]
    assert any(": met" in line for line in log) and any("batch 3: pass" in line for line in log)
    assert set(stages) <= set(log) and checks["warnings"] == []


def test_verbose_export_prints_the_details(cli_export, tmp_path):
    """-v prints what checks.json's log holds: start lines, lint reports, per-batch parity."""
    _, out, _, _ = cli_export
    with pytest.MonkeyPatch.context() as mp:
        block_tensorrt(mp)
        result = CliRunner().invoke(cli, ["export", str(out / "tiny.onnx"), "--fp32",
                                          "--onnx-only", "-v", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "[1] TensorRT op lint" in result.stderr and " ...\n" in result.stderr
    assert ": met" in result.stderr
    log = json.loads((tmp_path / "tiny.checks.json").read_text())["log"]
    assert [line for line in log if ": met" in line] == [
        line for line in result.stderr.splitlines() if ": met" in line]


def test_exported_batch_is_dynamic_and_matches_torch(cli_export):
    ckpt, out, _, _ = cli_export
    model, _ = load_checkpoint(ckpt)
    dim0 = onnx.load(str(out / "tiny.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"
    rng = np.random.default_rng(5)
    for b in (1, 3, 8):
        x = rng.random((b, 3, 112, 112), dtype=np.float32)
        got = onnx_outputs(out / "tiny.onnx", x)
        assert got["probs"].shape == (b, 7)
        assert check_parity(torch_outputs(model, x), got,
                            {"probs": (1e-4, 0), "confidence": (1e-4, 0)})


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
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output][-1] == "embedding"
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [2, 3, 112, 112]
    # The fixed-batch graph takes any count: chunks of 2, the last one zero-padded.
    x = np.random.default_rng(0).random((5, 3, 112, 112), dtype=np.float32)
    got = onnx_outputs(path, x)
    assert got["embedding"].shape[0] == 5 and got["probs"].shape == (5, 7)
    one = onnx_outputs(path, x[4:5])
    assert np.allclose(one["probs"], got["probs"][4:5], atol=1e-6)


def test_onnxsim_failure_is_an_error(cli_export, tmp_path, monkeypatch):
    import onnxsim

    path = cli_export[1] / "tiny.onnx"
    monkeypatch.setattr(onnxsim, "simplify", lambda model: (model, False))
    with pytest.raises(ExportError, match="check of the simplified graph failed"):
        simplify_onnx(path, tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()



def test_onnxsim_missing_is_an_export_error_naming_the_stage(cli_export, tmp_path, monkeypatch):
    """Without onnxsim the export ends in an ExportError (not the MissingDependency, an
    ImportError that no export handler caught) naming the stage, the package and --no-simplify."""
    from export.pipeline import ExportOptions, run_export

    ckpt = cli_export[0]
    block_tensorrt(monkeypatch)
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # whatever is installed
    with pytest.raises(ExportError) as caught:
        run_export(ckpt, ExportOptions(out=tmp_path / "out", onnx_only=True), log=lambda s: None)
    message = str(caught.value)
    assert "export stage 'onnxsim'" in message and "Install onnxsim" in message
    assert message.endswith("or --no-simplify exports without it")
    assert not list((tmp_path / "out").glob(".export-*"))  # the work folder went with it


def test_cli_without_onnxsim_is_one_error_line(cli_export, tmp_path):
    """The real command line in a child process, onnxsim made unimportable: one `Error:` line
    naming --no-simplify, exit status 1, no traceback."""
    ckpt = cli_export[0]
    script = textwrap.dedent(f"""
        import sys
        for name in ("onnxsim", "tensorrt", "pycuda", "pycuda.driver", "pycuda.autoinit"):
            sys.modules[name] = None
        from grefel.cli import main
        main(["export", {str(ckpt)!r}, "--onnx-only", "--out", {str(tmp_path / "out")!r}])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "onnxsim" in errors[0] and "--no-simplify" in errors[0], errors

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


def test_fp16_gate_emulates_fp16_and_runs_the_fp16_file(cli_export, tmp_path):
    _, out, _, _ = cli_export
    images, what = gate_images(None, n=4)
    assert "4 SynthFER faces" in what
    gate, typed = fp16_gate(out / "tiny.onnx", out / "tiny.fp16.onnx", images)
    assert gate and gate.backend.startswith("FP16 rounding emulated") and gate.samples == 4
    assert 0 < gate.max_abs_dprobs < 1e-2  # FP16 rounding really changed the numbers, a little
    assert typed["ran"] and typed["passed"] and typed["samples"] == 4
    broken = tmp_path / "broken.fp16.onnx"
    broken.write_bytes(b"not an onnx file")
    gate, typed = fp16_gate(out / "tiny.onnx", broken, images)
    assert gate and typed["ran"] is False and "broken.fp16.onnx" in typed["why"]


def _probs(*rows):
    return {"probs": np.array(rows, np.float32), "confidence": np.zeros(len(rows), np.float32)}


def test_near_tie_flips_are_reported_not_decisive():
    """A flip whose reference margin is below the numeric error is a near-tie, not a failure."""
    ref = _probs([0.5 + 1e-6, 0.5 - 1e-6], [0.9, 0.1], [0.2, 0.8], [0.7, 0.3])
    got = _probs([0.5 - 1e-6, 0.5 + 1e-6], [0.9, 0.1], [0.2, 0.8], [0.7, 0.3])
    gate = measure_agreement(ref, got, FP16_CRITERIA)
    assert gate.passed, gate.reasons()
    assert (gate.flips, gate.near_ties, gate.near_tie_flips, gate.decisive_flips) == (1, 1, 1, 0)
    assert gate.top1_agreement == 0.75 and "1 near-ties (1 flipped)" in str(gate)


def test_decisive_flips_nan_and_large_errors_fail():
    # One sample far above the typical error flips although its margin is clear: decisive.
    rows = [[0.9, 0.1]] * 19 + [[0.6, 0.4]]
    ref = _probs(*rows)
    got = _probs(*rows[:19], [0.39, 0.61])
    loose = GateCriteria(max_dprobs=1.0, max_dconfidence=1.0)
    gate = measure_agreement(ref, got, loose)
    assert not gate and gate.decisive_flips == 1 and "1 decisive top-1 flips" in str(gate)
    some = GateCriteria(max_dprobs=1.0, max_dconfidence=1.0, min_decisive_agreement=0.9)
    assert measure_agreement(ref, got, some)  # 1 of 20 decisive samples flipped: 95 %
    # The same error without a flip still fails the |dp| tolerance.
    moved = measure_agreement(ref, _probs(*rows[:19], [0.8, 0.2]), FP16_CRITERIA)
    assert "max|dprobs|" in " ".join(moved.reasons())
    nan = measure_agreement(ref, _probs(*rows[:19], [np.nan, np.nan]), FP16_CRITERIA)
    assert "2 NaN/inf" in " ".join(nan.reasons())
    assert not check_parity(ref, {"probs": ref["probs"][:2]}, {"probs": (1, 1)})


def test_float16_initializers_are_clamped_and_counted():
    arr, clamped, flushed = to_float16(np.array([1e6, -7e4, 1.0, 1e-9, 0.0, 3e-8], np.float32))
    assert np.isfinite(arr).all() and arr[0] == 65504 and arr[1] == -65504
    assert (clamped, flushed) == (2, 1) and arr[3] == 0 and arr[5] > 0


def test_fp16_gate_passes_random_init_tiny_models_of_ten_seeds(tmp_path):
    """No seed's verdict rests on a near-tie: every random-init tiny model passes."""
    images, _ = gate_images(None, n=32)
    for seed in range(10):
        torch.manual_seed(seed)
        path = export_onnx(create_model("tiny").eval(), tmp_path / f"s{seed}.onnx", opset=17)
        convert_to_fp16(path, tmp_path / f"s{seed}.fp16.onnx")
        gate = fp16_gate(path, tmp_path / f"s{seed}.fp16.onnx", images)
        assert gate, f"seed {seed}: {gate}"


def test_fp16_gate_fails_a_model_that_overflows_float16(tmp_path):
    """Weights scaled so the first convolution's output exceeds 65504: FP32 is fine, FP16 is
    not, and the export stops saying why."""
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    with torch.no_grad():
        model.image.input_layer[0].weight.mul_(1e5)  # output ~1.2e5 > 65504
    x = torch.from_numpy(gate_images(None, n=2)[0])
    assert torch.isfinite(model(x).probs).all()  # FP32 holds
    ckpt = save_checkpoint(tmp_path / "overflow.safetensors", model)
    with pytest.MonkeyPatch.context() as mp:
        block_tensorrt(mp)
        result = CliRunner().invoke(cli, ["export", str(ckpt), "--onnx-only",
                                          "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "FP16 breaks this model" in result.output and "NaN/inf" in result.output
    assert ".export-" not in result.output
    assert not (tmp_path / "out" / "overflow.fp16.onnx").exists()


def test_calib_folder_images(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 80), (255, 0, 0)).save(tmp_path / "a.png")
    images, what = gate_images(tmp_path, n=2)
    assert images.shape == (1, 3, 112, 112) and images[0, 0].min() > 0.99
    assert what.startswith(f"1 images of {tmp_path}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no images"):
        gate_images(tmp_path / "empty", n=1)
    (tmp_path / "b.jpg").write_bytes(b"text, not a JPEG")
    with pytest.raises(ExportError, match="b.jpg"):
        gate_images(tmp_path, n=2)


def test_onnx_source_onnx_only_lints_the_targets_of_its_opset(cli_export, tmp_path):
    """An opset-17 ONNX with --onnx-only exits 0: TensorRT 8.5 is skipped with the way to get a
    file for it; naming --target trt8.5 lints it and fails."""
    _, out, _, _ = cli_export
    with pytest.MonkeyPatch.context() as mp:
        block_tensorrt(mp)
        result = CliRunner().invoke(cli, ["export", str(out / "tiny.onnx"), "--onnx-only",
                                          "--out", str(tmp_path / "a"),
                                          "--json", str(tmp_path / "a.json")])
        assert result.exit_code == 0, result.output
        gates = json.loads((tmp_path / "a.json").read_text())
        assert set(gates["lint"]) == set(TARGETS) - {"trt8.5"}
        assert "--target trt8.5 --onnx-only" in gates["lint_skipped"]["trt8.5"]
        assert "skipped trt8.5" in result.output
        result = CliRunner().invoke(cli, ["export", str(out / "tiny.onnx"), "--onnx-only",
                                          "--target", "trt8.5", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "lint failed for trt8.5" in result.output
    assert str(out / "tiny.onnx") in result.output and ".export-" not in result.output


def test_static_export_then_predict_and_bench(tmp_path):
    """--static: the gates run at the fixed batch; predict and bench take the fixed-batch ONNX."""
    from PIL import Image

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", create_model("tiny").eval())
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        block_tensorrt(mp)
        for precision, folder in (("--fp32", "e"), ("--fp16", "f")):
            result = runner.invoke(cli, ["export", str(ckpt), "--static", precision,
                                         "--max-batch", "4", "--onnx-only",
                                         "--out", str(tmp_path / folder)])
            assert result.exit_code == 0, result.output
    static = tmp_path / "e" / "tiny.onnx"
    dims = onnx.load(str(static)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 4
    faces = tmp_path / "faces"
    faces.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(faces / f"{i}.png")
    result = runner.invoke(cli, ["predict", str(faces), "--weights", str(static), "--aligned",
                                 "--out", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 5
    result = runner.invoke(cli, ["bench", "--weights", str(static), "--backends", "onnx",
                                 "--batch-sizes", "1,5", "--iters", "2", "--seconds", "0",
                                 "--presets", "tiny", "--out", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    record = json.loads(next((tmp_path / "bench").glob("*.json")).read_text())
    rows = [r for r in record["latency"] if r["backend"] == "onnx"]
    assert sorted(r["batch"] for r in rows) == [1, 5] and all(r["status"] == "ok" for r in rows)


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
    rng = np.random.default_rng(0)
    for b in (1, 2):
        x = rng.random((b, 3, 112, 112), dtype=np.float32)
        assert check_parity(torch_outputs(model, x), onnx_outputs(p17, x),
                            {"probs": (1e-4, 0), "primary": (1e-4, 0)})
    for target in ("trt8.6", "trt10", "trt10.15", "trt11"):
        assert lint_onnx(p17, target), target
    p16 = export_onnx(model, tmp_path / "paper16.onnx", opset=16)
    assert lint_onnx(p16, "trt8.5")
    print(f"paper export at opset 17: {seconds:.1f} s")
