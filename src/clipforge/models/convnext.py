"""ConvNeXt image tower (Liu et al. 2022, "A ConvNet for the 2020s") as open_clip's `convnext_*` CLIPs use it.

open_clip builds these towers through timm (`TimmModel`: a timm ConvNeXt trunk whose classifier is removed,
then a projection head); clipforge builds the same computation natively, without timm at run time:

    stem:   4x4 stride-4 convolution, LayerNorm over channels
    stages: four stages of `layers[i]` blocks at widths width * (1, 2, 4, 8); stages 1-3 start with a
            LayerNorm + 2x2 stride-2 convolution (downsample)
    block:  depthwise 7x7 convolution, LayerNorm, MLP (mlp_ratio x, GELU), LayerScale `gamma`, drop path,
            residual
    head:   global average pool, LayerNorm (timm's `head.norm`), then open_clip's projection: one Linear
            (`head_proj="linear"`) or a two-layer GELU MLP of hidden width 2 * D (`"mlp"`, convnext_large_d)

Parameter names follow timm's (`stages.N.blocks.M.conv_dw`, ...), so `weights/openclip_convnext.py` maps an
open_clip checkpoint by renaming prefixes only. There is no class token and no position grid: none of the ViT
fast paths (class-token-only last block, position resampling) apply here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VisionConfig
from .inputs import check_image_size

STAGES = 4
STRIDE = 32  # total downsampling: stem 4 x three 2x downsamples


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (timm's LayerNorm2d): per position, like a ViT's
    per-token LayerNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """fc1 -> activation -> fc2 on the last dimension (timm's Mlp names, so checkpoints map by prefix)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, quick_gelu: bool = False, bias2: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim, bias=bias2)
        self.quick_gelu = quick_gelu

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> the activations fc2 reads (..., hidden)."""
        x = self.fc1(x)
        return x * torch.sigmoid(1.702 * x) if self.quick_gelu else F.gelu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.fc2(self.hidden(x))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples with probability `rate`,
    scaling kept ones by 1 / (1 - rate) so the expectation is unchanged; the identity in eval."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1, 1)
    return x * mask / keep


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv -> LayerNorm -> MLP -> LayerScale, plus the residual: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, cfg: VisionConfig, drop_rate: float) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(dim, int(cfg.mlp_ratio * dim), dim, quick_gelu=cfg.act == "quick_gelu")
        init = cfg.ls_init_value
        self.gamma = nn.Parameter(init * torch.ones(dim)) if init is not None else None
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = self.conv_dw(x).permute(0, 2, 3, 1)  # (B, H, W, C): LayerNorm and MLP act on channels
        y = self.mlp(self.norm(y))
        if self.gamma is not None:
            y = y * self.gamma
        return x + drop_path(y.permute(0, 3, 1, 2), self.drop_rate, self.training)


class ConvNeXtStage(nn.Module):
    """Optional downsample (LayerNorm + 2x2 stride-2 conv) then `depth` blocks."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, downsample: bool, cfg: VisionConfig, rates) -> None:
        super().__init__()
        if downsample:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_dim, eps=cfg.layer_norm_eps), nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)
            )
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*(ConvNeXtBlock(out_dim, cfg, rate) for rate in rates[:depth]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim, H, W) -> (B, out_dim, H / s, W / s), s = 2 with a downsample, else 1."""
        return self.blocks(self.downsample(x))


class ConvNeXtHead(nn.Module):
    """open_clip's TimmModel head after the trunk's pooled LayerNorm: `proj` (one Linear) or `mlp`
    (Linear -> GELU -> Linear, hidden 2 * D); `proj_bias` is open_clip's `timm_proj_bias`."""

    def __init__(self, in_dim: int, output_dim: int, kind: str, proj_bias: bool) -> None:
        super().__init__()
        if kind == "mlp":
            self.mlp = Mlp(in_dim, 2 * output_dim, output_dim, bias2=proj_bias)
        else:
            self.proj = nn.Linear(in_dim, output_dim, bias=proj_bias)
        self.kind = kind

    @property
    def last_linear(self) -> nn.Linear:
        """The map into the joint space: `proj`, or the MLP's `fc2`."""
        return self.mlp.fc2 if self.kind == "mlp" else self.proj

    def pre_projection(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, C) normed pooled features -> the input of `last_linear` (B, C, or B, 2 * D for the MLP)."""
        return self.mlp.hidden(pooled) if self.kind == "mlp" else pooled


class ConvNeXt(nn.Module):
    """ConvNeXt image encoder: images (B, 3, H, W) -> embeddings (B, output_dim)."""

    def __init__(self, cfg: VisionConfig, output_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.output_dim = output_dim
        eps = cfg.layer_norm_eps
        dims = [cfg.width * 2**i for i in range(STAGES)]  # every timm ConvNeXt doubles its width per stage
        self.stem = nn.Sequential(
            nn.Conv2d(3, dims[0], kernel_size=cfg.patch_size, stride=cfg.patch_size), LayerNorm2d(dims[0], eps=eps)
        )
        # Stochastic depth grows linearly over all blocks, 0 for the first, cfg.drop_path for the last (timm).
        total = sum(cfg.layers)  # plain floats: the tower may be built on the meta device
        rates = [cfg.drop_path * i / max(total - 1, 1) for i in range(total)]
        stages, start, prev = [], 0, dims[0]
        for i, depth in enumerate(cfg.layers):
            stages.append(ConvNeXtStage(prev, dims[i], depth, i > 0, cfg, rates[start : start + depth]))
            start, prev = start + depth, dims[i]
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.LayerNorm(dims[-1], eps=eps)
        self.head = ConvNeXtHead(dims[-1], output_dim, cfg.head_proj, cfg.head_proj_bias)
        self.grad_checkpointing = False
        self.any_size = False
        self.init_weights()

    def init_weights(self) -> None:
        """timm's ConvNeXt initialisation: truncated normal (std 0.02) weights, zero biases; LayerScale keeps
        its `ls_init_value` (1e-6: each block starts close to the identity)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward (memory for compute)."""
        self.grad_checkpointing = enable

    def set_position_interpolation(self, enable: bool = True) -> None:
        """Accept inputs of any size that is a multiple of 32 (reduced-resolution phases): a ConvNeXt has no
        position grid, its average pool takes any feature map. Off by default, so that an image preprocessed for
        another model is an error rather than a silently different embedding."""
        self.any_size = enable

    def shard_units(self) -> list[nn.Module]:
        """The FSDP2 units (train/sharding.py): every ConvNeXt block; the stem, downsamples and head stay in the
        tower's own unit."""
        return [block for stage in self.stages for block in stage.blocks]

    def parameter_groups(self) -> list[list[nn.Module]]:
        """Groups in forward order for tower locking (models/freeze.py): [stem], stage 0..3,
        [head_norm + head MLP's first layer], [the last linear map] (so 1 unlocks the projection only)."""
        head = [self.head_norm] + ([self.head.mlp.fc1] if self.cfg.head_proj == "mlp" else [])
        return [[self.stem], *([s] for s in self.stages), head, [self.head.last_linear]]

    @property
    def projection(self) -> nn.Linear:
        """The final linear map into the joint space (`head.proj`, or `head.mlp.fc2` for the MLP head), so
        `forward` is `projection(forward(images, project=False))`; the map ProLIP (Fahes et al. 2024) fine-tunes."""
        return self.head.last_linear

    def project(self, pre: torch.Tensor) -> torch.Tensor:
        """Pre-projection features (B, P) -> embeddings (B, D): the tower's last step on its own."""
        return self.head.last_linear(pre)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> the last stage's feature map (B, 8 * width, H/32, W/32)."""
        if self.any_size:
            height, width = images.shape[-2], images.shape[-1]
            if images.ndim != 4 or height % STRIDE or width % STRIDE:
                raise ValueError(f"images are {tuple(images.shape)}; a ConvNeXt needs (B, 3, H, W) with H, W "
                                 f"multiples of {STRIDE}: resize them to a multiple")
        else:
            check_image_size(images, self.cfg)
        x = self.stem(images.to(self.stem[0].weight.dtype))  # (B, width, H/4, W/4)
        for stage in self.stages:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (B, C, h, w) -> the head's input: average over positions, then LayerNorm (B, C)."""
        return self.head_norm(x.mean(dim=(2, 3)))

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected pooled embedding (B, D) and the final feature map as tokens (B, HW/1024, 8 * width)."""
        x = self.feature_map(images)
        return self.project(self.head.pre_projection(self.pool(x))), x.flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor, project: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) -> embeddings (B, output_dim); with `project=False` the input of the last linear
        map instead: the pooled, normed features (B, 8 * width), or the MLP head's hidden activations (B, 2 * D)."""
        pre = self.head.pre_projection(self.pool(self.feature_map(images)))
        return self.project(pre) if project else pre
