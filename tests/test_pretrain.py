"""grefel.pretrain and `grefel pretrain landmarks|identity`: the heads and the NME, checkpoints
that `grefel train --pretrained-mobilefacenet / --pretrained-ir50` take, reuse and refusals.

Every run is a fixed, small number of steps on a small SynthFER (no timing in any assertion)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from grefel.cli import cli
from grefel.config import FACE_EVOLVE_MEAN, IMAGENET_MEAN, GReFELConfig
from grefel.model.grefel import GReFEL
from grefel.pretrain import (
    IdentityNet,
    LandmarkNet,
    MarginHead,
    PretrainError,
    inter_ocular_nme,
    make_config,
    pretrain,
)
from grefel.weights import WeightsError, import_pretrained, read_state_dict

STEPS = ["--steps", "3", "--batch-size", "8", "--precise-bn", "16", "--threads", "1"]


@pytest.fixture(scope="module")
def synthfer(tmp_path_factory) -> Path:
    from grefel.data.synthfer import generate_synthfer

    return generate_synthfer(tmp_path_factory.mktemp("pre") / "synthfer", 64, seed=3,
                             imbalance="uniform", difficulty=0.3)


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def landmark_ckpt(synthfer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "mfn.safetensors"
    res = _invoke("pretrain", "landmarks", "--data", str(synthfer), "--out", str(out), *STEPS)
    assert res.exit_code == 0, res.output
    assert f"wrote {out} (pretrained weights and their JSON sidecar)" in res.output.splitlines()
    return out


@pytest.fixture(scope="module")
def identity_ckpt(synthfer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("id") / "ir50.safetensors"
    res = _invoke("pretrain", "identity", "--data", str(synthfer), "--out", str(out),
                  "--embedding", "32", "--holdout-every", "3", *STEPS)
    assert res.exit_code == 0, res.output
    return out


# --- the pieces ---------------------------------------------------------------------------------


def test_nme_is_the_point_error_over_the_outer_eye_corner_distance():
    target = torch.rand(4, 68, 2)
    target[:, 36] = torch.tensor([0.3, 0.4])
    target[:, 45] = torch.tensor([0.7, 0.4])  # inter-ocular distance 0.4
    shifted = target + torch.tensor([0.03, 0.04])  # every point 0.05 off
    assert torch.allclose(inter_ocular_nme(shifted, target), torch.full((4,), 0.125))
    degenerate = torch.zeros(1, 68, 2)  # both corners at one point: guarded, finite
    assert torch.isfinite(inter_ocular_nme(degenerate + 0.1, degenerate)).all()


@pytest.mark.parametrize("kind,margin", [("arcface", 0.5), ("cosface", 0.35)])
def test_margin_head_logits_and_finite_gradients_at_the_extremes(kind, margin):
    torch.manual_seed(0)
    head = MarginHead(8, 5, kind, scale=64.0, margin=margin)
    emb = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    cos = head.cosine(emb)
    logits = head(emb, labels)
    theta = torch.acos(cos.gather(1, labels[:, None]).clamp(-1, 1))
    if kind == "arcface":
        expect = torch.where(theta + margin < math.pi, torch.cos(theta + margin),
                             torch.cos(theta) - math.sin(math.pi - margin) * margin)
    else:
        expect = torch.cos(theta) - margin
    assert torch.allclose(logits.gather(1, labels[:, None]), 64.0 * expect, atol=1e-4)
    others = torch.ones_like(cos, dtype=torch.bool).scatter(1, labels[:, None], False)
    assert torch.allclose(logits[others], 64.0 * cos[others])
    # cos(theta) = +-1 exactly: the sqrt of ArcFace is guarded, so gradients stay finite
    w = head.weight.detach()
    extreme = torch.cat([w[:1], -w[1:2]]).requires_grad_(True)  # cos = 1 and cos = -1 rows
    loss = torch.nn.functional.cross_entropy(head(extreme, torch.tensor([0, 1])),
                                             torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(extreme.grad).all()


def test_stream_state_dicts_use_the_upstream_names_and_fit_the_importer():
    cfg = GReFELConfig.preset("tiny")
    lm, ir = LandmarkNet(cfg).stream_state_dict(), IdentityNet(cfg, 16).stream_state_dict()
    assert "conv1.conv.weight" in lm and "output_layer.linear.weight" in lm
    assert tuple(lm["output_layer.linear.weight"].shape) == (136, cfg.mfn_out)
    assert "body3.0.res_layer.1.weight" in ir and "output_layer.3.weight" in ir
    assert not any(k.startswith("reduce.") for k in ir)  # POSTER's conv1-3 are not pretrained
    model = GReFEL(cfg)
    from grefel.weights import import_state_dict

    for state, kind in ((lm, "mobilefacenet"), (ir, "ir50")):
        report = import_state_dict(model, state, kind)  # strict: raises on any misfit
        assert report.loaded and all(k.startswith("output_layer.") for k in report.not_used)


# --- the commands -------------------------------------------------------------------------------


def test_pretrain_landmarks_writes_an_atomic_checkpoint_with_nme(landmark_ckpt):
    meta = json.loads(landmark_ckpt.with_suffix(".json").read_text())
    assert meta["format"] == "grefel-pretrained/1" and meta["kind"] == "mobilefacenet"
    m = meta["metrics"]
    assert m["val_images"] > 0 and m["train_images"] > 0
    assert all(math.isfinite(m[k]) for k in ("val_nme", "val_nme_mean_shape", "last_loss"))
    assert meta["normalisation"]["mean"] == list(IMAGENET_MEAN)
    assert not list(landmark_ckpt.parent.glob(".*.tmp"))  # no temporary file left over
    state, file_meta = read_state_dict(landmark_ckpt)
    assert file_meta["read_with"] == "safetensors"
    assert file_meta["pretrained_kind"] == "mobilefacenet"
    assert set(state) == set(load_file(str(landmark_ckpt)))


def test_pretrain_identity_reports_heldout_accuracy_and_imports(identity_ckpt):
    meta = json.loads(identity_ckpt.with_suffix(".json").read_text())
    m = meta["metrics"]
    assert meta["kind"] == "ir50" and m["heldout_images"] > 0 and m["identities"] >= 2
    assert 0.0 <= m["heldout_id_acc"] <= 1.0 and m["chance"] == pytest.approx(1 / m["identities"])
    model = GReFEL(GReFELConfig.preset("tiny"))
    report = import_pretrained(model, identity_ckpt, "ir50")
    saved = load_file(str(identity_ckpt))
    for key in ("input_layer.0.weight", "body1.0.res_layer.1.weight", "body3.1.res_layer.3.weight"):
        assert torch.equal(model.state_dict()["image." + key], saved[key])
    assert report.normalisation["image"]["mean"] == list(FACE_EVOLVE_MEAN)
    assert meta["normalisation"]["mean"] == list(FACE_EVOLVE_MEAN)  # what the stream saw


def test_train_takes_both_pretrained_streams_and_keeps_the_landmark_stream_frozen(
        synthfer, landmark_ckpt, identity_ckpt, tmp_path):
    from grefel.checkpoint import load_checkpoint

    out = tmp_path / "run"
    res = _invoke("train", "--data", str(synthfer), "--out", str(out), "--epochs", "1",
                  "--batch-size", "16", "--device", "cpu", "--preset", "tiny",
                  "--precise-bn", "16", "--freeze", "landmark", "--image-warmup", "0",
                  "--pretrained-mobilefacenet", str(landmark_ckpt),
                  "--pretrained-ir50", str(identity_ckpt))
    assert res.exit_code == 0, res.output
    assert "mobilefacenet tensors" in res.output and "ir50 tensors" in res.output
    model, _ = load_checkpoint(out / "last.safetensors")
    saved = load_file(str(landmark_ckpt))
    for key, value in model.landmark.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_a_file_of_one_kind_passed_as_the_other_is_one_clear_error(landmark_ckpt):
    model = GReFEL(GReFELConfig.preset("tiny"))
    with pytest.raises(WeightsError, match="pass it as --pretrained-mobilefacenet"):
        import_pretrained(model, landmark_ckpt, "ir50")


def test_existing_output_is_refused_reused_only_when_settings_and_data_match(
        synthfer, landmark_ckpt):
    args = ["pretrain", "landmarks", "--data", str(synthfer), "--out", str(landmark_ckpt), *STEPS]
    before = landmark_ckpt.read_bytes()
    res = _invoke(*args)
    assert res.exit_code == 1 and "already exists" in res.output and "Traceback" not in res.output
    res = _invoke(*args, "--reuse")
    assert res.exit_code == 0, res.output
    res = _invoke(*args[:-8], "--steps", "4", *args[-6:], "--reuse")  # other settings
    assert res.exit_code == 1 and "other settings" in res.output
    assert landmark_ckpt.read_bytes() == before


def test_bad_data_is_one_line_naming_the_file(tmp_path, synthfer):
    import shutil

    copy = tmp_path / "nolm"
    shutil.copytree(synthfer, copy)
    (copy / "landmarks.csv").unlink()
    res = _invoke("pretrain", "landmarks", "--data", str(copy), "--out",
                  str(tmp_path / "x.safetensors"), "--landmarks", "file", *STEPS)
    assert res.exit_code == 1 and "landmarks.csv: no such file" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "x.safetensors").exists()
    with pytest.raises(PretrainError, match="must end in .safetensors"):
        make_config(task="identity", data=str(synthfer), out=str(tmp_path / "x.pt"))
    with pytest.raises(PretrainError, match="does not exist"):
        pretrain(make_config(task="identity", data=str(tmp_path / "none"),
                             out=str(tmp_path / "y.safetensors")))


def test_landmark_head_starts_at_the_mean_shape_with_its_spread():
    """Regression: from BatchNorm1d's weight 1 / bias 0 the head predicted points with unit
    spread around 0 (the loss was ~1 after 50 steps); it now starts at the targets' statistics."""
    torch.manual_seed(0)
    net = LandmarkNet(GReFELConfig.preset("tiny"))
    targets = 0.5 + 0.02 * torch.randn(64, 68, 2)
    net.output_layer.start_at(targets.flatten(1))
    out = net.train()(torch.rand(16, 3, 112, 112)).flatten(1)  # (16, 136), batch statistics
    assert torch.allclose(out.mean(dim=0), targets.flatten(1).mean(dim=0), atol=1e-5)
    std = out.std(dim=0, unbiased=False)
    assert torch.allclose(std, targets.flatten(1).std(dim=0), rtol=1e-2)


# --- real photos: muxspace's layout, aligned faces, face-mesh landmarks ------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder in muxspace/facial_expressions' layout (data/legend.csv + images/) of drawn
    faces pasted into larger photos: 16 people with 3 images each."""
    from PIL import Image

    from grefel.data.faces import _EXPRESSIONS, make_identity, render_face

    root = tmp_path_factory.mktemp("photos") / "mux"
    (root / "data").mkdir(parents=True)
    (root / "images").mkdir()
    names = list(_EXPRESSIONS)
    rows = ["user.id,image,emotion"]
    for person in range(16):
        rng = np.random.default_rng(person)
        identity = make_identity(rng)
        for k in range(3):
            expr = names[(person + k) % 7]
            face, _, _ = render_face(rng, identity, expr, size=160, difficulty=0.0)
            photo = np.full((240, 200, 3), 120, np.uint8)
            photo[40:200, 20:180] = np.asarray(face)
            image = f"Person_{chr(65 + person)}_{k + 1:04d}.jpg"
            Image.fromarray(photo).save(root / "images" / image, quality=95)
            rows.append(f"dwdii,{image},{expr.upper()}")
    (root / "data" / "legend.csv").write_text("\n".join(rows) + "\n")
    return root


def test_pretrain_landmarks_on_photos_labels_aligned_faces_with_the_face_mesh(photos, tmp_path):
    """No landmarks.csv, a dataset of photos: auto aligns the faces (as grefel train does) and
    labels them with the face mesh's 468 points; train imports the stream."""
    out = tmp_path / "mfn_mesh.safetensors"
    cache = tmp_path / "aligned"
    res = _invoke("pretrain", "landmarks", "--data", str(photos), "--out", str(out),
                  "--align-cache", str(cache), *STEPS)
    assert res.exit_code == 0, res.output
    meta = json.loads(out.with_suffix(".json").read_text())
    m = meta["metrics"]
    assert m["landmarks"]["source"] == "mesh" and m["landmarks"]["points"] == 468
    assert m["normaliser"] == "inter-ocular distance (outer eye corners 33-263)"
    assert m["train_images"] + m["unlabelled_images"]["train"] > 0 and m["val_images"] > 0
    assert math.isfinite(m["val_nme"]) and m["val_nme"] > 0
    assert meta["settings"]["alignment"]["mode"] == "auto"
    assert "aligned by blazeface-auto" in res.output  # the crops train and eval use
    assert load_file(str(out))["output_layer.linear.weight"].shape[0] == 2 * 468
    model = GReFEL(GReFELConfig.preset("tiny"))
    import_pretrained(model, out, "mobilefacenet")
    saved = load_file(str(out))
    assert torch.equal(model.landmark.state_dict()["conv1.conv.weight"], saved["conv1.conv.weight"])


def test_pretrain_identity_on_photos_uses_the_aligned_faces(photos, tmp_path):
    out = tmp_path / "ir.safetensors"
    res = _invoke("pretrain", "identity", "--data", str(photos), "--out", str(out),
                  "--embedding", "16", "--holdout-every", "3",
                  "--align-cache", str(tmp_path / "aligned"), *STEPS)
    assert res.exit_code == 0, res.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["metrics"]["identities"] >= 8  # the train split's people, not its images
    assert "aligned by blazeface-auto" in res.output


def test_landmarks_file_on_aligned_faces_is_refused(photos, tmp_path):
    res = _invoke("pretrain", "landmarks", "--data", str(photos), "--out",
                  str(tmp_path / "x.safetensors"), "--landmarks", "file",
                  "--align-cache", str(tmp_path / "aligned"), *STEPS)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "landmarks.csv: no such file" in res.output


def test_pretrain_landmarks_into_the_image_stream(photos, tmp_path):
    """--stream image: IR-50 stages 1-3 learn the face mesh; the file is an ir50 file for
    --pretrained-ir50 (its GDC head not used) and refused as a MobileFaceNet."""
    out = tmp_path / "ir50_mesh.safetensors"
    res = _invoke("pretrain", "landmarks", "--data", str(photos), "--out", str(out),
                  "--stream", "image", "--align-cache", str(tmp_path / "aligned"), *STEPS)
    assert res.exit_code == 0, res.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["kind"], meta["stream"], meta["task"]) == ("ir50", "image", "landmarks")
    assert meta["normalisation"]["mean"] == list(FACE_EVOLVE_MEAN)
    model = GReFEL(GReFELConfig.preset("tiny"))
    report = import_pretrained(model, out, "ir50")
    saved = load_file(str(out))
    assert torch.equal(model.state_dict()["image.body3.1.res_layer.3.weight"],
                       saved["body3.1.res_layer.3.weight"])
    assert any(k.startswith("output_layer.") for k in report.not_used)
    with pytest.raises(WeightsError, match="pass it as --pretrained-ir50"):
        import_pretrained(GReFEL(GReFELConfig.preset("tiny")), out, "mobilefacenet")
