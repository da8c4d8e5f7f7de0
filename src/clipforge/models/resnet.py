"""ModifiedResNet image tower: the OpenAI RN50 / RN101 / RN50x{4,16,64} family (Radford et al. 2021).

Differences from a torchvision ResNet, all from CLIP's paper and openai/CLIP `model.py`:
- a three-convolution stem with an average pool instead of a max pool;
- anti-aliased strided convolutions: an average pool precedes each stride > 1 convolution;
- the final global average pool is replaced by a QKV attention pool whose query is the mean token.
Parameter names match OpenAI's state dict (and open_clip's ModifiedResNet) exactly.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VisionConfig
from .inputs import check_image_size


class Bottleneck(nn.Module):
    """ResNet bottleneck block with anti-aliased downsampling (average pool before the stride)."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, inplanes, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.act3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean feature attends over all spatial positions (plus itself).

    Only the mean token's output is used, so only its query is computed: (HW + 1) x cheaper than
    running full self-attention and keeping row 0, with identical results.
    """

    def __init__(self, spatial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor, project: bool = True) -> torch.Tensor:
        """Pool a feature map by attention from its mean token: (B, C, H, W) -> (B, output_dim); with
        `project=False` the attention output before `c_proj`, (B, C)."""
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, HW + 1, C)
        x = x + self.positional_embedding.to(x.dtype)
        heads, head_dim = self.num_heads, c // self.num_heads
        q = self.q_proj(x[:, :1]).view(b, 1, heads, head_dim).transpose(1, 2)  # (B, H, 1, Dh)
        k = self.k_proj(x).view(b, -1, heads, head_dim).transpose(1, 2)  # (B, H, HW + 1, Dh)
        v = self.v_proj(x).view(b, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c)  # (B, C)
        return self.c_proj(out) if project else out  # (B, output_dim) or (B, C)


class ModifiedResNet(nn.Module):
    """ResNet image encoder: images (B, 3, H, W) -> embeddings (B, output_dim)."""

    def __init__(self, cfg: VisionConfig, output_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.output_dim = output_dim
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        inplanes = width
        stages = []
        for i, (blocks, stride) in enumerate(zip(cfg.layers, (1, 2, 2, 2))):
            planes = width * 2**i
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        embed_dim = width * 32  # the ResNet feature width
        self.attnpool = AttentionPool2d(cfg.image_size // 32, embed_dim, cfg.num_heads, output_dim)
        self.grad_checkpointing = False
        self.init_weights()

    def init_weights(self) -> None:
        """OpenAI's initialisation: scaled attention-pool projections, residual branches start as identity."""
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        # Zero the last BN of every residual branch so each block starts as the identity.
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward (memory for compute)."""
        self.grad_checkpointing = enable

    def shard_units(self) -> list[nn.Module]:
        """The FSDP2 units (train/sharding.py): every Bottleneck; the stem and attention pool stay in the tower's
        own unit."""
        return [block for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for block in stage]

    def set_position_interpolation(self, enable: bool = True) -> None:
        """Refused when enabled: the attention pool's positions are a fixed grid (use a ViT for CLIPA phases)."""
        if enable:
            raise ValueError(
                "a ModifiedResNet image tower takes only vision.image_size inputs (its attention pool has a fixed "
                "position grid); reduced-size training phases need a ViT image tower"
            )

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The three-convolution stem and average pool: (B, 3, H, W) -> (B, width, H/4, W/4)."""
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.avgpool(x)  # (B, width, H/4, W/4)

    @property
    def projection(self) -> nn.Linear:
        """The final linear map into the joint space: the attention pool's output projection `c_proj`
        (32 * width -> D, with bias), so `forward` is `projection(forward(images, project=False))`. It is the
        last linear map of the tower, the one ProLIP (Fahes et al. 2024) fine-tunes on ResNet backbones."""
        return self.attnpool.c_proj

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pre-projection features (B, 32 * width) -> embeddings (B, D): the tower's last step on its own."""
        return self.attnpool.c_proj(pooled)

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled embedding (B, D) and the final feature map as tokens (B, HW/1024, 32 * width)."""
        x = self._feature_map(images)
        return self.attnpool(x), x.flatten(2).transpose(1, 2)

    def _feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> the last stage's feature map (B, 32 * width, H/32, W/32).

        Only `vision.image_size` inputs are taken: the attention pool's positions are a fixed grid."""
        check_image_size(images, self.cfg)
        x = self.stem(images.to(self.conv1.weight.dtype))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x

    def forward(self, images: torch.Tensor, project: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) -> pooled features (B, output_dim); with `project=False` the attention pool's
        output before its `c_proj` projection, (B, 32 * width)."""
        return self.attnpool(self._feature_map(images), project=project)
