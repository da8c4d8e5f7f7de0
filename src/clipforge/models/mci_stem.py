"""MobileCLIP's MCi convolutional stem for a ViT (Vasu et al. 2024, `vit_base_mci_224` in timm).

MobileCLIP-B and MobileCLIP2-B replace the ViT's single 16x16 patch convolution by three convolutions that reach the
same stride 16 gradually (4, then 2, then 2), with BatchNorm and GELU between them: the patch tokens see a
non-linear local feature instead of a linear projection of raw pixels. The last convolution (with bias) gives the
token width; the inner ones have width/4 channels, as timm's `ConvStem(channels=(w/4, w/4, w))`.
Module names (`0.conv`, `0.bn`, ...) follow timm's so a checkpoint maps by prefix alone.
"""

from __future__ import annotations

import torch
from torch import nn

STRIDES = (4, 2, 2)  # kernel == stride at every stage: non-overlapping, total stride 16


class _ConvNormAct(nn.Module):
    """Conv, then BatchNorm and GELU (timm's ConvNormAct; the last stage has neither, and a conv bias)."""

    def __init__(self, cin: int, cout: int, stride: int, last: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=stride, stride=stride, bias=last)
        self.bn = nn.Identity() if last else nn.BatchNorm2d(cout, eps=1e-5)
        self.act = nn.Identity() if last else nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MCiStem(nn.Sequential):
    """Images (B, 3, H, W) -> patch features (B, width, H/16, W/16), the drop-in for a ViT's `conv1`."""

    def __init__(self, width: int) -> None:
        inner = width // 4
        channels = (inner, inner, width)
        cins = (3, inner, inner)
        super().__init__(
            *(_ConvNormAct(cin, cout, s, last=i == 2) for i, (cin, cout, s) in enumerate(zip(cins, channels, STRIDES)))
        )


PATCH_SIZE = 4 * 2 * 2  # the stem's total stride: VisionConfig.patch_size must equal it

__all__ = ["PATCH_SIZE", "MCiStem"]
