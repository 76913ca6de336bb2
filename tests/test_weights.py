"""Pretrained-weight import (issue 4): the four source layouts, strict errors, safe unpickling
and the POSTER V2 round trip.

Synthetic files are generated from the key and shape list of POSTER V2's state dict
(`tests/data/poster_v2_state_dict.json`, measured on the reference code). Every tensor is a
distinct constant broadcast to its shape (one stored element), so files stay tiny and a value
check proves which source key landed in which of our keys. Few paper models are built: one shared
by the stream imports and the error cases, one per whole-model import.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from grefel import GReFEL, GReFELConfig
from grefel.cli import cli
from grefel.config import FACE_EVOLVE_MEAN, IMAGENET_MEAN, IMAGENET_STD
from grefel.model.ir50 import BottleneckIR
from grefel.unpickle import Inert, safe_load
from grefel.weights import (
    WeightsError,
    export_posterv2_state_dict,
    import_pretrained,
    import_state_dict,
    import_weights,
    read_state_dict,
)

SPEC: Dict[str, dict] = json.loads(
    (Path(__file__).parent / "data" / "poster_v2_state_dict.json").read_text()
)["state_dict"]
DTYPES = {"float32": torch.float32, "int64": torch.int64}
CALLS: List[str] = []  # a malicious pickle would append here if anything ran


def _record_call(what: str) -> None:
    CALLS.append(what)


class _Evil:
    """Pickles as a call to `_record_call` (or `os.system` writing a marker file)."""

    def __init__(self, marker: str = "") -> None:
        self.marker = marker

    def __reduce__(self):
        if self.marker:
            return (os.system, (f"touch {self.marker}",))
        return (_record_call, ("executed",))


def _const(shape: List[int], value: float, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of `shape` filled with `value`, stored as one element."""
    if not shape:
        return torch.tensor(value, dtype=dtype)
    return torch.full([1] * len(shape), value, dtype=dtype).expand(shape)


def _poster_full() -> Dict[str, torch.Tensor]:
    """All 747 POSTER V2 keys; key number i holds the constant i + 1."""
    return {
        k: _const(v["shape"], i + 1, DTYPES[v["dtype"]]) for i, (k, v) in enumerate(SPEC.items())
    }


def _strip(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _evolve_ir50(poster_ir: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """face.evoLVe layout: POSTER's body1/2/3 renumbered back to body.0-20, plus body.21-23."""
    out: Dict[str, torch.Tensor] = OrderedDict()
    offset = {"body1": 0, "body2": 3, "body3": 7}
    for key, value in poster_ir.items():
        m = re.match(r"(body[123])\.(\d+)\.(.+)$", key)
        out[f"body.{offset[m.group(1)] + int(m.group(2))}.{m.group(3)}" if m else key] = value
    for n, unit in ((21, BottleneckIR(256, 512, 2)), (22, BottleneckIR(512, 512, 1)),
                    (23, BottleneckIR(512, 512, 1))):  # IR-50 stage 4, the 512-channel units
        for key, value in unit.state_dict().items():
            out[f"body.{n}.{key}"] = _const(list(value.shape), 0.5, value.dtype)
    return out


def _value(t: torch.Tensor) -> float:
    assert torch.all(t == t.reshape(-1)[0]), "not a constant tensor"
    return float(t.reshape(-1)[0])


def _save_poster_checkpoint(path: Path, state: Dict[str, torch.Tensor], monkeypatch) -> None:
    """A released-style POSTER V2 checkpoint: module. keys and pickled __main__.RecorderMeter."""

    class RecorderMeter:
        def __init__(self, total_epoch: int) -> None:
            self.total_epoch = total_epoch
            self.epoch_losses = np.zeros((total_epoch, 2), dtype=np.float32)
            self.epoch_accuracy = np.zeros((total_epoch, 2), dtype=np.float32)

    class RecorderMeter1(RecorderMeter):
        pass

    main = sys.modules["__main__"]
    for cls in (RecorderMeter, RecorderMeter1):
        cls.__module__, cls.__qualname__ = "__main__", cls.__name__
        monkeypatch.setattr(main, cls.__name__, cls, raising=False)
    torch.save(
        {
            "epoch": 123,
            "state_dict": OrderedDict(("module." + k, v) for k, v in state.items()),
            "best_acc": torch.tensor(92.21),
            "recorder1": RecorderMeter1(200),
            "recorder": RecorderMeter(200),
        },
        path,
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Paper-preset forwards on a shared 2-core machine: one thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def paper_model() -> GReFEL:
    """One paper model shared by the stream imports and the error cases."""
    torch.manual_seed(0)
    return GReFEL(GReFELConfig.preset("paper")).eval()


# --- the four layouts -------------------------------------------------------------------------


def test_poster_key_map_is_complete_and_invertible(paper_model):
    """Every POSTER V2 key lands on a same-shaped key of ours or is reported as not used, every
    key of our extractor is covered once, and the export inverts the map exactly."""
    own = paper_model.state_dict()
    report = import_state_dict(paper_model, _poster_full(), "posterv2", "synthetic")
    assert report.errors == [] and report.missing == []
    scope = [k for k in own if not k.startswith(("head.", "anchor.", "attentive."))]
    assert sorted(report.loaded) == sorted(scope)
    assert set(report.not_imported) == {"VIT.head.linear.weight", "VIT.head.linear.bias"}
    assert len(report.loaded) + len(report.not_used) + len(report.not_imported) == len(SPEC)
    dead = re.compile(r"(ir_back|face_landback)\.output_layer\.|VIT\.(blocks\.\d\.conv|CON1)")
    assert all(k in report.not_used for k in SPEC if dead.match(k))
    exported = export_posterv2_state_dict(paper_model)
    assert set(exported) == set(SPEC) - set(report.not_used) - set(report.not_imported) | {
        f"attn{i}.relative_position_index" for i in (1, 2, 3)
    }
    for key, value in exported.items():
        assert list(value.shape) == SPEC[key]["shape"], key
        assert str(value.dtype) == "torch." + SPEC[key]["dtype"], key


def test_face_evolve_ir50_file(paper_model, tmp_path):
    """Flat body.0-23 file: renumbered into body1/2/3; stage 4 and output layer not used."""
    poster_ir = _strip(_poster_full(), "ir_back.")
    path = tmp_path / "backbone_ir50_ms1m_epoch120.pth"
    torch.save(_evolve_ir50(poster_ir), path)
    report = import_pretrained(paper_model, path, "ir50")
    assert report.layout.startswith("face.evoLVe") and report.errors == []
    own = paper_model.state_dict()
    assert len(report.loaded) == len([k for k in own if re.match(r"image\.(input|body)", k)])
    for ours, src in (("body1.2", "body1.2"), ("body2.0", "body2.0"), ("body3.13", "body3.13")):
        key = "res_layer.1.weight"
        assert _value(own[f"image.{ours}.{key}"]) == _value(poster_ir[f"{src}.{key}"])
    unused = report.not_used
    assert {k.split(".")[1] for k in unused if k.startswith("body.")} == {"21", "22", "23"}
    assert all("stage 4" in unused[k] for k in unused if k.startswith("body."))
    assert any(k.startswith("output_layer.") for k in unused)
    assert paper_model.cfg.image_mean == FACE_EVOLVE_MEAN
    assert report.normalisation["image"]["mean"] == list(FACE_EVOLVE_MEAN)


def test_poster_ir50_file_with_wrapper_and_module_prefix(paper_model, tmp_path):
    poster_ir = _strip(_poster_full(), "ir_back.")
    path = tmp_path / "ir50.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in poster_ir.items()}}, path)
    report = import_pretrained(paper_model, path, "ir50")
    assert report.layout.startswith("POSTER V2 renumbered") and report.errors == []
    assert "module." in report.file_meta["stripped_prefix"]
    key = "body3.7.res_layer.3.weight"
    assert _value(paper_model.state_dict()["image." + key]) == _value(poster_ir[key])


def test_mobilefacenet_file(paper_model, tmp_path):
    """pytorch_face_landmark file: trunk loaded, GDC head reported as not used."""
    mfn = _strip(_poster_full(), "face_landback.")
    path = tmp_path / "mobilefacenet_model_best.pth.tar"
    torch.save({"epoch": 7, "state_dict": mfn}, path)
    report = import_pretrained(paper_model, path, "mobilefacenet")
    assert report.errors == [] and report.file_meta["epoch"] == 7
    own = paper_model.state_dict()
    assert len(report.loaded) == len([k for k in own if k.startswith("landmark.")])
    assert sorted(report.not_used) == sorted(k for k in mfn if k.startswith("output_layer."))
    key = "conv_4.model.5.conv_dw.conv.weight"
    assert _value(paper_model.state_dict()["landmark." + key]) == _value(mfn[key])
    assert report.normalisation["landmark"]["mean"] == list(IMAGENET_MEAN)


def test_posterv2_checkpoint_via_cli(tmp_path, monkeypatch):
    """A released-style full checkpoint (RecorderMeter objects inside) through the command."""
    src, out = tmp_path / "rafdb_best.pth", tmp_path / "poster.safetensors"
    _save_poster_checkpoint(src, _poster_full(), monkeypatch)
    result = CliRunner().invoke(
        cli, ["weights", "import", str(src), "--kind", "posterv2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "not used by GReFEL" in result.output and "VIT.head.linear.weight" in result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    report = meta["import_report"]
    assert report["missing"] == [] and report["unexpected"] == [] and len(report["loaded"]) == 706
    assert report["file_meta"]["epoch"] == 123
    assert "__main__.RecorderMeter" in report["file_meta"]["recorder"]
    assert report["random_init"] == ["anchor", "attentive", "head"]
    for stream in ("image", "landmark"):
        assert meta["config"][f"{stream}_mean"] == list(IMAGENET_MEAN)
        assert meta["config"][f"{stream}_std"] == list(IMAGENET_STD)
        assert "POSTER V2" in report["normalisation"][stream]["why"]
    assert meta["config"]["num_classes"] == 7  # read from VIT.head.linear
    with safe_open(str(out), "pt") as f:
        assert _value(f.get_tensor("levels.1.attn.kv.weight")) == _value(
            _poster_full()["attn2.qkv.weight"]
        )


# --- strictness ---------------------------------------------------------------------------------


def _mutations() -> Dict[str, Dict[str, torch.Tensor]]:
    missing, shape, extra = _poster_full(), _poster_full(), _poster_full()
    del missing["ir_back.body3.5.res_layer.1.weight"]
    shape["attn2.qkv.weight"] = torch.zeros(256, 129)
    extra["VIT.extra_adapter.weight"] = torch.zeros(3)
    return {"missing": missing, "shape": shape, "extra": extra}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "1 missing: image.body3.5.res_layer.1.weight"),
        ("shape", "1 shape-mismatched: attn2.qkv.weight -> levels.1.attn.kv.weight: "
                  "file (256, 129) vs model (256, 128)"),
        ("extra", "1 unexpected: VIT.extra_adapter.weight"),
    ],
)
def test_mutated_state_dict_is_an_error(paper_model, case, expected):
    before = paper_model.state_dict()["fusion.norm.weight"].clone()
    with pytest.raises(WeightsError) as info:
        import_state_dict(paper_model, _mutations()[case], "posterv2", "mutated.pth")
    message = str(info.value)
    assert message.startswith("mutated.pth: posterv2 weights do not fit") and expected in message
    assert len(info.value.report.errors) == 1
    assert torch.equal(paper_model.state_dict()["fusion.norm.weight"], before)  # nothing copied


def test_lenient_loads_what_fits_and_lists_the_rest(paper_model):
    state = _poster_full()
    del state["ir_back.body3.5.res_layer.1.weight"]
    state["attn2.qkv.weight"] = torch.zeros(256, 129)
    state["VIT.extra_adapter.weight"] = torch.zeros(3)
    report = import_state_dict(paper_model, state, "posterv2", "bad.pth", lenient=True)
    assert len(report.dropped) == 3 and len(report.loaded) == 704
    assert "dropped (--lenient) (3)" in report.format()
    loaded = paper_model.state_dict()["fusion.norm.weight"]
    assert _value(loaded) == _value(state["VIT.norm.weight"])


def test_wrong_kind_and_bad_files_are_clear_errors(paper_model, tmp_path):
    mfn = tmp_path / "mfn.pth"
    torch.save({"state_dict": _strip(_poster_full(), "face_landback.")}, mfn)
    with pytest.raises(WeightsError, match=r"mfn\.pth: no ir50 weights.*--kind mobilefacenet"):
        import_pretrained(paper_model, mfn, "ir50")
    optimizer_file = tmp_path / "model_best.pth"
    torch.save({"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}, optimizer_file)
    with pytest.raises(WeightsError, match=r"model_best\.pth: an optimizer state"):
        import_pretrained(paper_model, optimizer_file, "posterv2")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pth: cannot read"):
        import_pretrained(paper_model, junk, "ir50")
    result = CliRunner().invoke(cli, ["weights", "import", str(mfn), "--kind", "ir50", "--out",
                                      str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1 and "Error: " in result.output and "Traceback" not in result.output


# --- security -------------------------------------------------------------------------------------


def _small_state() -> Dict[str, torch.Tensor]:
    return {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(4)}


@pytest.mark.parametrize("fmt", ["torch_zip", "torch_legacy", "raw_pickle"])
def test_malicious_pickle_is_never_executed(tmp_path, fmt):
    marker = tmp_path / "pwned"
    payload = {"state_dict": _small_state(), "evil": _Evil(), "shell": _Evil(str(marker))}
    path = tmp_path / "evil.pth"
    if fmt == "raw_pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=fmt == "torch_zip")
    CALLS.clear()
    result = safe_load(path)
    assert CALLS == [] and not marker.exists()
    assert result.method.startswith("restricted")
    assert isinstance(result.obj["evil"], Inert) and result.obj["evil"]._pickled_as.endswith(
        "_record_call"
    )
    assert result.obj["evil"]._args == ("executed",)  # kept as data, never called
    assert isinstance(result.obj["shell"], Inert)
    assert torch.equal(result.obj["state_dict"]["w"], _small_state()["w"])
    state, meta = read_state_dict(path)
    assert torch.equal(state["n"], torch.tensor(4)) and "kept inert" in meta["evil"]


def test_plain_state_dict_uses_weights_only_load(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(_small_state(), path)
    assert safe_load(path).method == "torch.load(weights_only=True)"


def test_recorder_checkpoint_loads_its_state_dict(tmp_path, monkeypatch):
    path = tmp_path / "poster.pth"
    small = {"ir_back.input_layer.0.weight": torch.randn(64, 3, 3, 3)}
    _save_poster_checkpoint(path, small, monkeypatch)
    monkeypatch.delattr(sys.modules["__main__"], "RecorderMeter")  # as on any other machine
    state, meta = read_state_dict(path)
    assert torch.equal(state["ir_back.input_layer.0.weight"], small["ir_back.input_layer.0.weight"])
    assert meta["best_acc"] == pytest.approx(92.21) and meta["epoch"] == 123
    assert "__main__.RecorderMeter" in meta["inert_placeholders"]


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(WeightsError, match="TorchScript"):
        read_state_dict(path)


# --- round trip -----------------------------------------------------------------------------------


def test_round_trip_through_posterv2_layout_is_exact(paper_model, tmp_path):
    """Our model -> POSTER V2 layout file -> import: identical outputs (max abs diff 0)."""
    torch.manual_seed(1)
    cfg = GReFELConfig.preset(
        "paper", head_hidden=(), use_anchors=False, use_attention=False,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    )
    source = GReFEL(cfg).eval()
    with torch.no_grad():  # non-trivial BN statistics and layer scales
        for name, t in source.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif name.endswith(("running_mean", "gamma1", "gamma2")):
                t.normal_(0.0, 0.1)
    path = tmp_path / "ours_as_poster.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in
                               export_posterv2_state_dict(source).items()}}, path)
    imported, report = import_weights(path, "posterv2", overrides=dict(
        head_hidden=(), use_anchors=False, use_attention=False))
    assert report.errors == [] and report.not_imported == {}
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        a, b = source(x), imported(x)
        report_mlp = import_pretrained(paper_model, path, "posterv2")  # MLP head: head not fitted
        c = paper_model(x)
    for name in ("probs", "primary", "confidence", "embedding"):
        assert (getattr(a, name) - getattr(b, name)).abs().max().item() == 0.0, name
    assert (a.embedding - c.embedding).abs().max().item() == 0.0
    assert set(report_mlp.not_imported) == {"VIT.head.linear.weight", "VIT.head.linear.bias"}


def test_cli_help_and_bad_out_suffix(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["weights", "import", "--help"])
    assert result.exit_code == 0 and "--kind [ir50|mobilefacenet|posterv2]" in result.output
    src = tmp_path / "w.pth"
    torch.save(_small_state(), src)
    result = runner.invoke(cli, ["weights", "import", str(src), "--kind", "ir50", "--out",
                                 str(tmp_path / "x.pt")])
    assert result.exit_code == 2 and "must end in .safetensors" in result.output
