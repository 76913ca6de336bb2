"""Multi-scale tokens, the fusion ViT and the SE block (paper eqs. 6-8).

Upstream: POSTER V2 `models/PosterV2_7cls.py` (`embed_q`, `embed_k`, `embed_v`) and
`models/vit_model.py` (`VisionTransformer(depth=2, embed_dim=768)` with its cls token, learned
position embedding, pre-norm blocks and `se_block`). The ViT's dead members upstream
(`patch_embed`, `CON1`, `IRLinear1/2`, `eca_block`, each block's `conv`, the 7-way `head`) are not
built.

    level maps (d1x28x28, d2x14x14, d3x7x7)
      -> embed_q (two 3x3 s2 convs), embed_k (3x3 s2), embed_v (1x1)      3 x (B, 49, D)
      -> Xo = [Xo_1, Xo_2, Xo_3]                                         eq. 6, (B, 147, D)
      -> [cls; Xo] + pos, blocks: Xo' = MHSA(LN Xo) + Xo, MLP(LN Xo') + Xo'   eqs. 7-8
      -> LN -> tokens (B, 148, D); e = SE(tokens[:, 0])                   the embedding e
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from grefel.model.attention import attend
from grefel.model.window_attention import Mlp

__all__ = ["FusionViT", "SEBlock", "SelfAttention", "ViTBlock"]


class SelfAttention(nn.Module):
    """Multi-head self-attention within one sample's token sequence (eq. 7's MHSA).

    Args:
        dim: token channels.
        heads: attention heads.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        _, N, _ = x.shape
        h, d = self.heads, self.head_dim
        qkv = self.qkv(x).reshape(-1, N, 3, h, d).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        return self.proj(attend(qkv[0], qkv[1], qkv[2], self.scale))  # (B, N, C)


class ViTBlock(nn.Module):
    """Pre-norm transformer block: eq. 7 then eq. 8 (LayerNorm eps 1e-6 as upstream)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # eq. 7: Xo' = MHSA(Xo) + Xo
        return x + self.mlp(self.norm2(x))  # eq. 8: Xo_out = MLP(Norm(Xo')) + Xo'


class SEBlock(nn.Module):
    """Squeeze-and-excitation on the cls vector: x * sigmoid(W2 relu(W1 x))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D) -> (B, D)."""
        return x * torch.sigmoid(self.linear2(torch.relu(self.linear1(x))))


class FusionViT(nn.Module):
    """Token embedding of the three levels, the fusion ViT and the SE block.

    Args:
        dims: channels of the three level maps (d1, d2, d3).
        embed_dim: token width D.
        depth: transformer blocks.
        heads: heads of each block's MHSA.
        mlp_ratio: MLP hidden width relative to D.
        tokens_per_level: tokens each level contributes (49 = 7x7 at 112 input).
    """

    def __init__(
        self,
        dims: Sequence[int] = (64, 128, 256),
        embed_dim: int = 768,
        depth: int = 2,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        tokens_per_level: int = 49,
    ) -> None:
        super().__init__()
        d1, d2, d3 = dims
        D = embed_dim
        self.embed_q = nn.Sequential(nn.Conv2d(d1, D, 3, 2, 1), nn.Conv2d(D, D, 3, 2, 1))
        self.embed_k = nn.Conv2d(d2, D, 3, 2, 1)
        self.embed_v = nn.Conv2d(d3, D, 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 3 * tokens_per_level + 1, D))
        self.blocks = nn.Sequential(*[ViTBlock(D, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.se = SEBlock(D)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(
        self, o1: torch.Tensor, o2: torch.Tensor, o3: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """o1 (B, d1, 28, 28), o2 (B, d2, 14, 14), o3 (B, d3, 7, 7) -> (B, 148, D), e (B, D)."""
        xo = torch.cat(
            [
                self.embed_q(o1).flatten(2).transpose(1, 2),  # (B, 49, D)
                self.embed_k(o2).flatten(2).transpose(1, 2),  # (B, 49, D)
                self.embed_v(o3).flatten(2).transpose(1, 2),  # (B, 49, D)
            ],
            dim=1,
        )  # eq. 6: (B, 147, D)
        cls = self.cls_token.expand(xo.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, xo], dim=1) + self.pos_embed  # (B, 148, D)
        tokens = self.norm(self.blocks(x))  # (B, 148, D)
        return tokens, self.se(tokens[:, 0])
