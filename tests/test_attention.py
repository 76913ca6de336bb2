"""The one attention primitive (grefel.model.attention.attend) and the two modules that use it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grefel.model import attention
from grefel.model.fusion_vit import SelfAttention
from grefel.model.window_attention import WindowCrossAttention


def test_attend_is_scaled_dot_product_attention_with_heads_merged() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(1, 4, 9, 9, generator=g, dtype=torch.float64)
    got = attention.attend(q, k, v, 8 ** -0.5, bias=bias)  # (2, 9, 32)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (2, 4, 9, 8)
    assert got.shape == (2, 9, 32)
    torch.testing.assert_close(got, ref.transpose(1, 2).reshape(2, 9, 32))
    no_bias = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 9, 32)
    torch.testing.assert_close(attention.attend(q, k, v, 8 ** -0.5), no_bias)


def test_both_attentions_call_the_primitive(monkeypatch) -> None:
    calls = []
    real = attention.attend

    def spy(*args, **kwargs):
        calls.append(kwargs.get("bias") is not None)
        return real(*args, **kwargs)

    import grefel.model.fusion_vit as fv
    import grefel.model.window_attention as wa

    monkeypatch.setattr(fv, "attend", spy)
    monkeypatch.setattr(wa, "attend", spy)
    x = torch.rand(2, 49, 16)
    SelfAttention(16, 2)(x)
    WindowCrossAttention(16, 2, 7)(x, x)
    assert calls == [False, True]  # self-attention: no bias; window attention: eq. 2's b
