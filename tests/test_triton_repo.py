"""`grefel export ... --triton DIR`: the model repository, its config parsed by Triton's own
model-config protobuf (shipped in tritonclient: tritonclient.grpc.model_config_pb2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import test_runtime as rt  # the seeded tiny model files
from click.testing import CliRunner

from export import ExportError
from export.triton import write_model_repository
from grefel.cli import cli

models = rt.models

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse(path: Path):
    """config.pbtxt -> tritonclient's ModelConfig message (text_format.Parse rejects unknown
    fields, wrong types and unknown enum values)."""
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def _block_tensorrt(mp: pytest.MonkeyPatch) -> None:
    for name in ("tensorrt", "pycuda", "pycuda.driver", "pycuda.autoinit"):
        mp.setitem(sys.modules, name, None)


def test_cli_onnx_repository_parses_with_tritons_protobuf(models, tmp_path):
    repo = tmp_path / "repo"
    with pytest.MonkeyPatch.context() as mp:
        _block_tensorrt(mp)
        result = CliRunner().invoke(cli, [
            "export", str(models["onnx"]), "--fp32", "--onnx-only", "--max-batch", "16",
            "--out", str(tmp_path / "engines"), "--triton", str(repo),
            "--triton-instances", "2", "--triton-queue-delay-us", "500",
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = repo / "grefel"
    assert str(folder / "config.pbtxt") in result.output
    cfg = parse(folder / "config.pbtxt")
    T = model_config_pb2
    assert cfg.name == "grefel" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 16
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [g.count for g in cfg.instance_group] == [2]
    (inp,) = cfg.input
    assert inp.name == "images" and inp.data_type == T.TYPE_FP32
    assert list(inp.dims) == [3, 112, 112] and inp.format == T.ModelInput.FORMAT_NCHW
    outs = {o.name: o for o in cfg.output}
    assert set(outs) == {"probs", "primary", "confidence"}
    assert list(outs["probs"].dims) == [7] and list(outs["primary"].dims) == [7]
    assert all(o.data_type == T.TYPE_FP32 for o in outs.values())
    assert list(outs["confidence"].dims) == [1]
    assert outs["confidence"].HasField("reshape") and list(outs["confidence"].reshape.shape) == []
    assert outs["probs"].label_filename == "labels.txt"
    labels = (folder / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == list(rt.CLASSES)
    assert (folder / "1" / "model.onnx").read_bytes() == (tmp_path / "engines" /
                                                          "tiny.onnx").read_bytes()
    assert not list(repo.glob(".grefel-*"))  # no work folders left behind


def test_engine_repository_and_failed_write_keeps_the_old_one(models, tmp_path, monkeypatch):
    engine = tmp_path / "tiny_fp16_b8.engine"
    engine.write_bytes(b"plan bytes")
    folder = write_model_repository(tmp_path / "repo", engine, models["onnx"], max_batch=8)
    cfg = parse(folder / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8
    assert (folder / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert not (folder / "1" / "model.onnx").exists()

    # a failure while the new folder is written leaves the good repository as it was
    import export.triton as triton

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(triton.shutil, "copyfile", broken)
    with pytest.raises(ExportError, match="cannot write the Triton repository"):
        write_model_repository(tmp_path / "repo", models["onnx"], models["onnx"], max_batch=4)
    assert parse(folder / "config.pbtxt").platform == "tensorrt_plan"
    assert (folder / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert not list((tmp_path / "repo").glob(".grefel-*"))


def test_cuda_graphs_option_parses_and_needs_an_engine(models, tmp_path):
    """--triton-cuda-graphs writes `optimization { cuda { graphs: true } }`, which Triton's
    ModelConfig parses; an ONNX repository refuses it before writing anything."""
    engine = tmp_path / "tiny_fp16_b8.engine"
    engine.write_bytes(b"plan bytes")
    folder = write_model_repository(tmp_path / "repo", engine, models["onnx"], max_batch=8,
                                    cuda_graphs=True)
    cfg = parse(folder / "config.pbtxt")
    assert cfg.optimization.cuda.graphs is True and cfg.platform == "tensorrt_plan"
    plain = write_model_repository(tmp_path / "plain", engine, models["onnx"], max_batch=8)
    assert not parse(plain / "config.pbtxt").HasField("optimization")
    with pytest.raises(ExportError, match="TensorRT-backend setting"):
        write_model_repository(tmp_path / "r", models["onnx"], models["onnx"], max_batch=8,
                               cuda_graphs=True)
    assert not (tmp_path / "r" / "grefel").exists()


def test_static_batch_and_bad_files_are_clean_errors(models, tmp_path):
    result = CliRunner().invoke(cli, ["export", str(models["onnx"]), "--static", "--triton",
                                      str(tmp_path / "repo")])
    assert result.exit_code == 2 and "drop --static" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(ExportError, match="an .engine / .plan or .onnx"):
        write_model_repository(tmp_path / "r", models["ckpt"], models["onnx"], max_batch=8)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="bad.onnx: not a readable ONNX"):
        write_model_repository(tmp_path / "r", bad, bad, max_batch=8)
    assert not (tmp_path / "r" / "grefel").exists()
