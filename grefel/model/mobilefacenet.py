"""Landmark stream: the MobileFaceNet trunk of the 68-point landmark detector (paper §3.1).

Upstream: cunjian/pytorch_face_landmark `models/mobilefacenet.py`, as used by POSTER V2
(`face_landback`). Only the trunk up to `conv_6_sep` is built: the GDC landmark head
(`output_layer`, 68 x 2 coordinates) runs uselessly in POSTER V2 and is dropped here. The stream
is frozen (pretrained landmark features); `GReFEL.train()` keeps its BatchNorm in eval mode.

    112x112 -> conv1 c1x56x56 -> conv_23 + conv_3: c1x28x28      (level 1)
            -> conv_34 + conv_4: c2x14x14                       (level 2)
            -> conv_45 + conv_5 + conv_6_sep: outx7x7           (level 3, before last_face_conv)
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

__all__ = ["ConvBlock", "DepthWise", "LinearBlock", "MobileFaceNetTrunk", "Residual"]


class ConvBlock(nn.Module):
    """Conv-BN-PReLU (`Conv_block` upstream)."""

    def __init__(
        self, in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.prelu = nn.PReLU(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    """Conv-BN without activation (`Linear_block` upstream)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to `expand`, 3x3 depthwise (stride), 1x1 project.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        expand: channels of the depthwise convolution (`groups` upstream).
        stride: depthwise stride.
        residual: add the input (only when shapes match).
    """

    def __init__(
        self, in_chs: int, out_chs: int, expand: int, stride: int = 1, residual: bool = False
    ) -> None:
        super().__init__()
        self.residual = residual
        self.conv = ConvBlock(in_chs, expand)
        self.conv_dw = ConvBlock(expand, expand, 3, stride, groups=expand)
        self.project = LinearBlock(expand, out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class Residual(nn.Module):
    """`num_blocks` residual `DepthWise` units at constant width."""

    def __init__(self, chs: int, expand: int, num_blocks: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *[DepthWise(chs, chs, expand, residual=True) for _ in range(num_blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MobileFaceNetTrunk(nn.Module):
    """MobileFaceNet up to conv_6_sep; returns the three maps POSTER V2 takes as queries.

    Args:
        widths: (c1, c2) channels of the 28x28 and 14x14 maps (64, 128 upstream).
        blocks: residual blocks of conv_3, conv_4, conv_5 (4, 6, 2 upstream).
        out_chs: conv_6_sep channels (512 upstream).
    """

    def __init__(
        self, widths: tuple = (64, 128), blocks: tuple = (4, 6, 2), out_chs: int = 512
    ) -> None:
        super().__init__()
        c1, c2 = widths
        self.conv1 = ConvBlock(3, c1, 3, 2)
        self.conv2_dw = ConvBlock(c1, c1, 3, 1, groups=c1)
        self.conv_23 = DepthWise(c1, c1, 2 * c1, stride=2)
        self.conv_3 = Residual(c1, 2 * c1, blocks[0])
        self.conv_34 = DepthWise(c1, c2, 2 * c2, stride=2)
        self.conv_4 = Residual(c2, 2 * c2, blocks[1])
        self.conv_45 = DepthWise(c2, c2, 4 * c2, stride=2)
        self.conv_5 = Residual(c2, 2 * c2, blocks[2])
        self.conv_6_sep = ConvBlock(c2, out_chs)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x: (B, 3, 112, 112) -> [(B, c1, 28, 28), (B, c2, 14, 14), (B, out, 7, 7)]."""
        x = self.conv2_dw(self.conv1(x))  # (B, c1, 56, 56)
        l1 = self.conv_3(self.conv_23(x))  # (B, c1, 28, 28)
        l2 = self.conv_4(self.conv_34(l1))  # (B, c2, 14, 14)
        l3 = self.conv_6_sep(self.conv_5(self.conv_45(l2)))  # (B, out, 7, 7)
        return [l1, l2, l3]
