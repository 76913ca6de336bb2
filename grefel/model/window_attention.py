"""Window-based cross-attention between the landmark and image streams (paper eqs. 1-5, Fig. 3).

Upstream: POSTER V2 `models/PosterV2_7cls.py` (`window`, `WindowAttentionGlobal`, `feedforward`).
Per level i (dims 64/128/256, heads 2/4/8, windows 28/14/7 in the paper preset):

    z_img = windows(LN(X_img))                        image tokens, keys and values
    q     = windows(X_lm) / sqrt(d)                   landmark tokens are the queries as they are:
                                                      POSTER V2 has no w_q (eq. 1), so neither do we
    o     = softmax(q k^T + b) v, heads merged, w_o   eqs. 1-3, b = Swin relative position bias
    X'    = o + z_img                                 eq. 4 (the residual is the normalised map)
    X_O   = MLP(LN(X')) + X'                          eq. 5, with layer scale and drop path

At 112 input each window covers its whole map (one window per level), exactly as in POSTER V2;
smaller windows partition both streams the same way.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn

from grefel.model.attention import attend

__all__ = ["CrossAttentionLevel", "DropPath", "Mlp", "WindowCrossAttention"]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C). Batch stays symbolic for ONNX export."""
    _, H, W, C = x.shape
    x = x.reshape(-1, H // window, window, W // window, window, C)  # (B, H/w, w, W/w, w, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, H/w, W/w, w, w, C)
    return x.reshape(-1, window * window, C)  # (B*nW, w*w, C)


def window_reverse(x: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """(B * nW, window * window, C) -> (B, H * W, C)."""
    C = x.shape[-1]
    x = x.reshape(-1, H // window, W // window, window, window, C)  # (B, H/w, W/w, w, w, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, H/w, w, W/w, w, C)
    return x.reshape(-1, H * W, C)  # (B, H*W, C)


class DropPath(nn.Module):
    """Stochastic depth per sample (training only); identity in eval and export."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear-GELU-Linear (exact erf GELU: TensorRT fuses it and it is safe in FP16)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowCrossAttention(nn.Module):
    """Eqs. 1-3: landmark queries attend to image keys/values inside each window.

    Args:
        dim: token channels.
        heads: attention heads I.
        window: window side; the relative position bias b has (2w-1)^2 entries per head.
    """

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.kv = nn.Linear(dim, 2 * dim)  # w_k, w_v of eq. 1
        self.proj = nn.Linear(dim, dim)  # w_o of eq. 3
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Derived, not learned: recomputed at construction, never saved.
        self.register_buffer("relative_position_index", _relative_index(window), persistent=False)
        self._bias_cache: Optional[Tuple[Tuple[Any, ...], torch.Tensor]] = None

    def relative_bias(self) -> torch.Tensor:
        """b of eq. 2 as (1, h, N, N). Under inference mode the gather from the table is
        cached until the table changes (in-place updates bump its version counter)."""
        table = self.relative_position_bias_table
        if not torch.is_inference_mode_enabled():
            return self._gather_bias()
        key = (id(table), table._version, table.device, table.dtype)
        if self._bias_cache is None or self._bias_cache[0] != key:
            self._bias_cache = (key, self._gather_bias())
        return self._bias_cache[1]

    def _gather_bias(self) -> torch.Tensor:
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N, N, h)
        return bias.permute(2, 0, 1).unsqueeze(0).contiguous()  # (1, h, N, N)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """query: landmark (B', N, C); tokens: normalised image (B', N, C) -> (B', N, C)."""
        _, N, _ = tokens.shape
        h, d = self.heads, self.head_dim
        kv = self.kv(tokens).reshape(-1, N, 2, h, d).permute(2, 0, 3, 1, 4)  # (2, B', h, N, d)
        q = query.reshape(-1, N, h, d).transpose(1, 2)  # (B', h, N, d): no w_q (eq. 1)
        out = attend(q, kv[0], kv[1], self.scale, bias=self.relative_bias())  # (B', N, C)
        return self.proj(out)


def _relative_index(window: int) -> torch.Tensor:
    """Swin relative position index: (w*w, w*w) int64 into the ((2w-1)^2, heads) table."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)  # (2, w*w)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (w*w, w*w, 2)
    rel = rel + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class CrossAttentionLevel(nn.Module):
    """One level of the cross-fusion transformer: eqs. 1-5 on one map pair.

    Args:
        dim: channels of both maps at this level.
        heads: attention heads.
        window: window side.
        drop_path: stochastic-depth rate of both residual branches.
        layer_scale: initial value of the per-channel layer-scale gammas.
        mlp_ratio: hidden width of the MLP relative to `dim`.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        window: int,
        drop_path: float = 0.0,
        layer_scale: float = 1e-5,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim)  # POSTER V2 `window{i}.norm`
        self.attn = WindowCrossAttention(dim, heads, window)
        self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale))
        self.drop_path = DropPath(drop_path)

    def forward(self, image: torch.Tensor, landmark: torch.Tensor) -> torch.Tensor:
        """image, landmark: (B, C, H, W) -> fused image tokens (B, H*W, C)."""
        _, _, H, W = image.shape
        z_img = window_partition(self.norm1(image.permute(0, 2, 3, 1)), self.window)  # (B', N, C)
        z_lm = window_partition(landmark.permute(0, 2, 3, 1), self.window)  # (B', N, C)
        oca = self.attn(z_lm, z_img)  # (B', N, C)
        x = window_reverse(z_img + self.drop_path(self.gamma1 * oca), self.window, H, W)  # eq. 4
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))  # eq. 5, (B, H*W, C)
