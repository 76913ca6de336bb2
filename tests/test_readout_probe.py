"""research.readout_probe: the cls attention and tokens it reports are the model's own."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from grefel.model import create_model
from research.readout_probe import (
    attention_summary,
    cls_attention,
    collect,
    parse_model,
    ridge_r2,
    spread,
)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("tiny").eval()
    with torch.no_grad():  # attention far from uniform, so a wrong softmax would show
        for block in model.fusion.blocks:
            block.attn.qkv.weight.mul_(40.0)
    return model


@torch.no_grad()
def test_cls_attention_is_the_weights_the_block_averages_its_values_with():
    model = _model()
    block = model.fusion.blocks[0]
    normed = torch.randn(3, 148, model.cfg.embed_dim)
    a = cls_attention(block, normed)  # (B, h, N)
    attn = block.attn
    v = attn.qkv(normed).reshape(3, 148, 3, attn.heads, attn.head_dim)[:, :, 2]  # (B, N, h, d)
    mixed = torch.einsum("bhn,bnhd->bhd", a, v).reshape(3, -1)  # (B, D)
    assert torch.allclose(attn.proj(mixed), attn(normed)[:, 0], rtol=1e-4, atol=1e-4)
    assert torch.allclose(a.sum(-1), torch.ones(3, attn.heads), atol=1e-5)
    assert attention_summary(a[:, None])[0]["entropy"] < 0.95  # the scaled qkv is not uniform


def test_collected_tokens_give_the_collected_embedding(synthfer):
    model = _model()
    got = collect(model, synthfer, "test", batch_size=7)
    n = len(got["labels"])
    assert got["xo"].shape == (n, 147, model.cfg.embed_dim) and got["e"].shape[0] == n
    assert got["attn"].shape == (n, len(model.fusion.blocks), model.cfg.vit_heads, 148)
    fusion = model.fusion
    with torch.no_grad():  # the fusion ViT from Xo on (eqs. 6-8), outside the probe
        x = torch.cat([fusion.cls_token.expand(n, -1, -1), got["xo"]], 1) + fusion.pos_embed
        e = fusion.se(fusion.norm(fusion.blocks(x))[:, 0])
    assert torch.allclose(e, got["e"], atol=1e-4)


def test_attention_summary_of_uniform_and_one_hot_attention():
    uniform = torch.full((4, 1, 2, 148), 1.0 / 148)
    row = attention_summary(uniform)[0]
    assert row["entropy"] == pytest.approx(1.0, abs=1e-5)
    assert row["image_dependence"] == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.zeros(4, 1, 2, 148)
    one_hot[torch.arange(4), 0, :, torch.arange(4)] = 1.0  # each image its own token
    row = attention_summary(one_hot)[0]
    assert row["entropy"] == pytest.approx(0.0, abs=1e-5)
    assert row["max_weight"] == pytest.approx(1.0)
    assert row["image_dependence"] == pytest.approx(0.75)  # TV from the mean (1/4 per token)


def test_ridge_r2_tells_a_linear_function_from_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    w = torch.randn(8, 5, generator=g)
    y = x @ w + 3.0
    assert ridge_r2(x[:300], y[:300], x[300:], y[300:]) > 0.99
    noise = torch.randn(400, 5, generator=g)
    assert ridge_r2(x[:300], noise[:300], x[300:], noise[300:]) < 0.1


def test_spread_is_zero_for_one_vector_and_grows_with_the_differences():
    same = torch.ones(10, 4) * 2.0
    assert spread(same) == pytest.approx(0.0, abs=1e-6)
    varied = same + torch.linspace(-1, 1, 10)[:, None]
    assert spread(varied) > 0.2
    assert math.isfinite(spread(torch.zeros(5, 3)))  # guarded division


def test_a_bad_model_spec_is_one_clear_error(tmp_path):
    with pytest.raises(argparse.ArgumentTypeError, match="expected NAME=FILE"):
        parse_model("no-equals-sign")
    with pytest.raises(argparse.ArgumentTypeError, match="is not a file"):
        parse_model(f"a={tmp_path / 'missing.safetensors'}")
