"""ONNX Runtime maps the weights out of the single ONNX file (grefel.runtime.ort_mapped): the
skeleton is small, the outputs are bit-equal to loading the file, and every case it cannot
handle loads the file as before."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import grefel.runtime.ort_backend as ort_backend
from grefel.runtime.ort_backend import OrtBackend
from grefel.runtime.ort_mapped import MIN_MAPPED_BYTES, mapped_model


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    from export.onnx_export import export_onnx
    from grefel.model import create_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mapped")
    return export_onnx(create_model("tiny").eval(), folder / "tiny.onnx")


def _weights(path: Path) -> int:
    """Bytes of the initializers the skeleton should leave in the file."""
    model = onnx.load(str(path))
    return sum(len(i.raw_data) for i in model.graph.initializer
               if len(i.raw_data) >= MIN_MAPPED_BYTES and i.data_type in (1, 2, 3, 10, 11, 16))


def _infer(path: Path, **kwargs) -> tuple:
    x = np.random.default_rng(0).random((3, 3, 112, 112), dtype=np.float32)
    with OrtBackend(path, device="cpu", threads=1, **kwargs) as backend:
        out = backend.infer(x)
        return out, backend.mapped_bytes


def test_skeleton_is_small_and_points_into_the_file(tiny_onnx):
    skeleton, mapped = mapped_model(tiny_onnx)
    size = tiny_onnx.stat().st_size
    assert mapped == _weights(tiny_onnx) and mapped > 0.8 * size
    assert len(skeleton) < size - mapped + 4096
    model = onnx.load_from_string(skeleton)
    data = tiny_onnx.read_bytes()
    original = {i.name: i for i in onnx.load(str(tiny_onnx)).graph.initializer}
    external = [i for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert external and len(external) + sum(
        1 for i in model.graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL
    ) == len(original)
    for init in external:
        info = {e.key: e.value for e in init.external_data}
        assert info["location"] == tiny_onnx.name
        start, length = int(info["offset"]), int(info["length"])
        assert data[start:start + length] == original[init.name].raw_data
        assert list(init.dims) == list(original[init.name].dims)
    assert [n.name for n in model.graph.node] == [
        n.name for n in onnx.load(str(tiny_onnx)).graph.node]


def test_backend_maps_the_file_and_outputs_are_bit_equal(tiny_onnx, monkeypatch):
    mapped_out, mapped = _infer(tiny_onnx)
    assert mapped == _weights(tiny_onnx)
    monkeypatch.setattr(ort_backend, "MAPPED_SINCE", (999,))
    plain_out, plain = _infer(tiny_onnx)
    assert plain == 0
    for key in plain_out:
        np.testing.assert_array_equal(mapped_out[key], plain_out[key])


def test_a_same_named_file_in_the_working_directory_is_not_read(tiny_onnx, tmp_path, monkeypatch):
    """The weights come from the model's own folder, never from ./NAME (a different model)."""
    want, _ = _infer(tiny_onnx)
    from export.onnx_export import export_onnx
    from grefel.model import create_model

    torch.manual_seed(1)
    other = export_onnx(create_model("tiny").eval(), tmp_path / tiny_onnx.name)
    assert other.read_bytes() != tiny_onnx.read_bytes()
    monkeypatch.chdir(tmp_path)
    got, mapped = _infer(tiny_onnx)
    assert mapped > 0
    np.testing.assert_array_equal(got["probs"], want["probs"])


def test_older_onnxruntime_loads_the_file(tiny_onnx, monkeypatch):
    """Before 1.21 a model given as bytes finds external data only in the working directory."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.20.1")
    want, _ = _infer(tiny_onnx)
    assert _infer(tiny_onnx)[1] == 0
    monkeypatch.undo()
    np.testing.assert_array_equal(_infer(tiny_onnx)[0]["probs"], want["probs"])


def test_a_refused_skeleton_loads_the_file(tiny_onnx, monkeypatch):
    monkeypatch.setattr(ort_backend, "mapped_model", lambda path: (b"\x08\x07garbage", 1))
    out, mapped = _infer(tiny_onnx)
    assert mapped == 0 and np.isfinite(out["probs"]).all()


def test_initializers_already_external_are_left_alone(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=MIN_MAPPED_BYTES * 4)
    assert mapped_model(path) is None or mapped_model(path)[1] < _weights(tiny_onnx)
    want, _ = _infer(tiny_onnx)
    got, _ = _infer(path)
    np.testing.assert_array_equal(got["probs"], want["probs"])


@pytest.mark.parametrize("content", [b"", b"\xff\xff\xff", b"\x3a\x10short"])
def test_malformed_files_are_not_mapped_and_fail_as_before(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    assert mapped_model(path) is None
    from grefel.runtime.base import BackendError

    with pytest.raises(BackendError, match="bad.onnx: not a loadable ONNX model"):
        _infer(path)


def test_int8_weights_are_mapped(tmp_path):
    """8-bit weights (a QDQ model's) are mapped too; 64-bit shape constants stay inline."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(8192, dtype=np.int8).reshape(64, 128), "w")
    shape = numpy_helper.from_array(np.array([128, 64] * 256, dtype=np.int64), "s")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"]), helper.make_node("Identity", ["s"], ["z"])],
        "g", [], [helper.make_tensor_value_info("y", TensorProto.INT8, [64, 128]),
                  helper.make_tensor_value_info("z", TensorProto.INT64, [512])], [w, shape])
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph), str(path))
    skeleton, mapped = mapped_model(path)
    assert mapped == 8192
    inits = {i.name: i for i in onnx.load_from_string(skeleton).graph.initializer}
    assert inits["w"].data_location == TensorProto.EXTERNAL
    assert inits["s"].data_location != TensorProto.EXTERNAL and inits["s"].raw_data
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry(ort_backend.FOLDER_OPTION, str(tmp_path))
    session = ort.InferenceSession(skeleton, opts, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(["y"], {})[0], numpy_helper.to_array(w))
    assert os.path.getsize(path) > len(skeleton) + 8000
