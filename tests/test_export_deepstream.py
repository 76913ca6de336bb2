"""`grefel export --deepstream DIR` (issue 26): a DeepStream nvinfer secondary-classifier config
whose every key is one of nvinfer's documented keys (export/data/deepstream_nvinfer_keys.json),
with the keys a secondary classifier needs, and values read from the exported ONNX."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Dict

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from fakes.trt import block as block_tensorrt

from export import ExportError
from export.deepstream import (
    CONFIG_NAME,
    LABELS_NAME,
    check_properties,
    documented_keys,
)
from export.onnx_export import export_onnx
from export.pipeline import ExportOptions, run_export
from grefel.cli import cli
from grefel.contract import to_model_input
from grefel.model import create_model


def read_key_file(text: str) -> Dict[str, Dict[str, str]]:
    """GLib GKeyFile's syntax, strictly: '#' comments on their own lines only (GKeyFile keeps a
    '#' after a value as part of the value), one `key=value` per line, no key twice."""
    groups: Dict[str, Dict[str, str]] = {}
    group = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            group = groups.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and group is not None, line
        assert key == key.strip() and key not in group, line
        assert "#" not in value and value == value.strip() and value, line
        group[key] = value
    return groups


@pytest.fixture(scope="module")
def ds_export(tmp_path_factory):
    """`grefel export tiny.onnx --deepstream DIR` without TensorRT (the engine is not built)."""
    tmp = tmp_path_factory.mktemp("ds")
    torch.manual_seed(0)
    (tmp / "src").mkdir()
    src = export_onnx(create_model("tiny").eval(), tmp / "src" / "tiny.onnx", opset=17)
    with pytest.MonkeyPatch.context() as mp:
        block_tensorrt(mp)
        result = CliRunner().invoke(cli, ["export", str(src), "--target", "trt10", "--out",
                                          str(tmp / "engines"), "--deepstream",
                                          str(tmp / "deepstream"), "--deepstream-face-classes",
                                          "0,2"])
    config = tmp / "deepstream" / CONFIG_NAME
    return result, tmp, read_key_file(config.read_text()), config


def test_every_key_is_documented_and_the_required_ones_are_there(ds_export):
    result, _, groups, _ = ds_export
    assert result.exit_code == 2, result.output  # no TensorRT here: the ONNX is checked
    assert list(groups) == ["property"]
    keys = documented_keys()
    known = set(keys["property_keys"]) | set(keys["property_keys_later_releases"]["keys"])
    written = set(groups["property"])
    assert written <= known, written - known
    assert set(keys["required_for_secondary_classifier"]) <= written
    props = groups["property"]
    assert (props["process-mode"], props["network-type"], props["network-mode"]) == ("2", "1", "2")
    assert props["operate-on-gie-id"] == "1" and props["operate-on-class-ids"] == "0;2"
    assert props["gie-unique-id"] == "2" and props["batch-size"] == "8"


def test_the_key_list_names_its_sources():
    keys = documented_keys()
    urls = [u for s in keys["sources"] for u in [*s.get("urls", []), s.get("url", "")] if u]
    assert any("gstnvinfer__property__parser_8h" in u for u in urls)
    assert any("DS_plugin_gst-nvinfer.html" in u for u in urls)
    assert set(keys["required_for_secondary_classifier"]) <= set(keys["property_keys"])
    assert len(set(keys["property_keys"])) == len(keys["property_keys"])


def test_input_scaling_is_what_the_onnx_takes(ds_export):
    """nvinfer computes y = net-scale-factor * (x - offsets[c]) on the RGB uint8 crop; that is
    grefel's own model input (contract.to_model_input: x / 255) for every pixel value."""
    _, tmp, groups, _ = ds_export
    props = groups["property"]
    model = onnx.load(str(tmp / "engines" / "tiny.onnx"))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props
            if p.key in ("grefel.input", "grefel.class_names")}
    assert meta["grefel.input"]["color"] == "RGB" and props["model-color-format"] == "0"
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    assert props["infer-dims"] == ";".join(map(str, dims)) == "3;112;112"
    assert props["network-input-order"] == "0"  # NCHW
    pixels = np.arange(256, dtype=np.uint8)[None, :, None].repeat(3, axis=2)  # (1, 256, 3)
    image = np.resize(pixels, (112, 112, 3)).astype(np.uint8)
    offsets = np.array([float(v) for v in props["offsets"].split(";")], np.float32)
    nvinfer = np.float32(props["net-scale-factor"]) * (
        image.transpose(2, 0, 1).astype(np.float32) - offsets[:, None, None])
    assert np.allclose(nvinfer, to_model_input(image), atol=1e-7, rtol=0)


def test_outputs_and_labels_follow_the_onnx(ds_export):
    _, tmp, groups, config = ds_export
    props = groups["property"]
    model = onnx.load(str(tmp / "engines" / "tiny.onnx"))
    outputs = [o.name for o in model.graph.output]
    assert props["output-blob-names"].split(";") == outputs
    classes = json.loads({p.key: p.value for p in model.metadata_props}["grefel.class_names"])
    labels = (config.parent / props["labelfile-path"]).read_text().splitlines()
    assert props["labelfile-path"] == LABELS_NAME and len(labels) == len(outputs)
    assert labels[0].split(";") == classes and labels[outputs.index("primary")] == labels[0]


def test_without_tensorrt_the_engine_is_the_one_the_device_build_writes(ds_export):
    """model-engine-file (relative to the config, as nvinfer resolves it) is the engine the
    printed build command writes; its comment gives that command; onnx-file is the checked ONNX."""
    result, tmp, groups, config = ds_export
    props = groups["property"]
    engine = (config.parent / props["model-engine-file"]).resolve()
    assert engine == (tmp / "engines" / "tiny_fp16_b8.engine").resolve()
    command = next(line.strip() for line in result.stdout.splitlines()
                   if line.strip().startswith("grefel export ") and "--verify" in line)
    assert command.endswith(f"--out {tmp / 'engines'}")
    text = config.read_text()
    comment = re.search(r"^# model-engine-file: (.*)$", text, re.M).group(1)
    assert "not built here" in comment and comment.endswith(command)
    onnx_file = (config.parent / props["onnx-file"]).resolve()
    assert onnx_file == (tmp / "engines" / "tiny.onnx").resolve()
    assert (tmp / "engines" / "tiny.onnx").is_file()
    checks = json.loads((tmp / "engines" / "tiny.checks.json").read_text())
    assert any("DeepStream nvinfer config" in line for line in checks["log"])


def test_check_properties_refuses_what_nvinfer_would_not_read():
    good = [(k, "1", "") for k in documented_keys()["required_for_secondary_classifier"]]
    check_properties(good)
    for bad, problem in (([*good, ("is-secondary", "1", "")], "undocumented keys: is-secondary"),
                         (good[1:], f"required keys missing: {good[0][0]}"),
                         ([*good[:-1], (good[-1][0], "1  # x", "")], "malformed values"),
                         ([*good, good[0]], "keys written twice")):
        with pytest.raises(ExportError, match=problem):
            check_properties(bad)


def test_fp32_export_builds_and_configures_fp32(ds_export, tmp_path, monkeypatch):
    """--fp32: the printed build command builds FP32 (it said --fp16 before), and the config's
    engine and network-mode are the FP32 ones; --embedding is refused for DeepStream."""
    _, tmp, _, _ = ds_export
    block_tensorrt(monkeypatch)
    opts = ExportOptions(out=tmp_path / "e", fp16=False, target="trt10",
                         deepstream=tmp_path / "ds")
    result = run_export(tmp / "engines" / "tiny.onnx", opts, log=str)
    assert result.exit_code == 2 and " --fp32 --batch 1 --max-batch 8 " in result.message
    props = read_key_file((tmp_path / "ds" / CONFIG_NAME).read_text())["property"]
    assert props["network-mode"] == "0"
    assert props["model-engine-file"] == "../e/tiny_fp32_b8.engine"
    with pytest.raises(ExportError, match="--deepstream with --embedding"):
        run_export(tmp / "engines" / "tiny.onnx", replace(opts, embedding=True), log=str)


def test_bad_face_classes_are_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["export", "--deepstream", str(tmp_path),
                                      "--deepstream-face-classes", "face"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--deepstream-face-classes" in result.output and "'face'" in result.output
