"""FastViT / MCi image towers of MobileCLIP (Vasu et al. 2023, 2024, 2025): MobileCLIP-S1/S2, MobileCLIP2-S0..S4.

open_clip builds these through timm (`fastvit_mci0..4`, `TimmModel` with `timm_pool: avg`, `timm_proj: null`, so
timm's classifier `head.fc` is the projection). clipforge builds the same computation natively, in its TRAINING
form (every reparameterisable branch separate, BatchNorms unfused), so a checkpoint loads and trains as is:

    stem:   three MobileOne blocks (3x3 stride 2, depthwise 3x3 stride 2, 1x1), each a sum of a kxk conv+BN, a
            1x1 conv+BN "scale" branch (not in MCi3/4) and a BN "identity" branch where shapes allow, then GELU
    stages: S stages at widths width * 2**i; stages 1.. start with a PatchEmbed (7x7 stride-2 large-kernel conv
            plus 3x3 conv, both with BN, optional squeeze-excite, GELU, then a 1x1 MobileOne block); stages 0..2
            hold RepMixer blocks (x + gamma * (dwconv3x3_bn(x) - bn(x)), then a ConvMlp), stages 3.. a conditional
            positional encoding (x + dwconv7x7(x)) and attention blocks (BatchNorm, or LayerNorm2d for MCi3/4,
            then multi-head attention with 32-wide heads; ConvMlp), each residual branch scaled by LayerScale
    head:   `final_conv` (MobileOne 3x3 to 2x the last width, squeeze-excite, GELU), global average pool, `head.fc`
            (Linear with bias into the joint space)

`reparameterize()` folds every branch and BatchNorm into single convolutions (RepVGG / MobileOne structural
reparameterisation): the same function with fewer, larger kernels, for inference. It is one-way (the fused tower
has other parameter names and no BatchNorm statistics to train), so it is a method the user calls, never automatic.
Module and parameter names follow timm's (`stages.N.blocks.M.token_mixer.mixer.conv_kxk.0.conv.weight`, ...), so
weights/openclip_mobileclip.py maps an open_clip checkpoint by stripping `trunk.`.
There is no class token and no position grid: none of the ViT fast paths apply (the average pool reads every
position), and the tower's forward is its full computation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VisionConfig
from .convnext import LayerNorm2d, drop_path
from .inputs import check_image_size

FIRST_ATTENTION_STAGE = 3  # stages 3.. use attention token mixers and a conditional positional encoding
HEAD_DIM = 32  # FastViT's attention head width
LAYER_SCALE_INIT = 1e-5
STEM_STRIDE = 4


def stride_of(cfg: VisionConfig) -> int:
    """Total downsampling of a FastViT config: the stem's 4, then 2 per later stage."""
    return STEM_STRIDE * 2 ** (len(cfg.layers) - 1)


def _make_divisible(value: float, divisor: int) -> int:
    """timm's make_divisible (round_limit 0): the squeeze-excite reduction width, so shapes match checkpoints."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class ConvNorm(nn.Module):
    """A bias-free convolution then BatchNorm (timm's ConvNormAct without activation); padding keeps the centre."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, H / stride, W / stride)."""
        return self.bn(self.conv(x))

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kernel, bias) of one convolution equal to conv then BN (eval statistics)."""
        return _fold_bn(self.conv.weight, self.bn)


def _fold_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold BN(running stats) after a bias-free conv with `kernel` (out, in/g, k, k) into (kernel', bias')."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()  # (out,)
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def _identity_kernel(channels: int, groups: int, kernel: int, like: torch.Tensor) -> torch.Tensor:
    """The (channels, channels/groups, k, k) kernel of the identity map (1 at the centre tap of each channel)."""
    per_group = channels // groups
    ident = torch.zeros(channels, per_group, kernel, kernel, dtype=like.dtype, device=like.device)
    ident[torch.arange(channels), torch.arange(channels) % per_group, kernel // 2, kernel // 2] = 1
    return ident


def _pad_to(kernel: torch.Tensor, size: int) -> torch.Tensor:
    pad = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, [pad] * 4)


def _fused_conv(cin: int, cout: int, kernel: int, stride: int, groups: int, weight, bias) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=True)
    conv.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


class SqueezeExcite(nn.Module):
    """Channel gating (Hu et al. 2018; timm's SEModule): x * sigmoid(fc2(relu(fc1(mean_hw(x)))))."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        gate = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))  # (B, C, 1, 1)
        return x * torch.sigmoid(gate)


class MobileOneBlock(nn.Module):
    """MobileOne block (Vasu et al. 2023): sum of kxk conv+BN branches, a 1x1 conv+BN scale branch and a BN
    identity branch, then optional squeeze-excite and GELU; `reparameterize` folds the sum into `reparam_conv`."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, *, use_se: bool = False,
        use_act: bool = True, use_scale_branch: bool = True, num_conv_branches: int = 1,
    ) -> None:
        super().__init__()
        self.cin, self.cout, self.kernel, self.stride, self.groups = cin, cout, kernel, stride, groups
        self.reparam_conv: nn.Conv2d | None = None
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.conv_kxk = nn.ModuleList(ConvNorm(cin, cout, kernel, stride, groups) for _ in range(num_conv_branches))
        self.conv_scale = ConvNorm(cin, cout, 1, stride, groups) if kernel > 1 and use_scale_branch else None
        self.se = SqueezeExcite(cout, _make_divisible(cout / 16, 1)) if use_se else nn.Identity()
        self.act = nn.GELU() if use_act else nn.Identity()

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        """The linear part (B, cin, H, W) -> (B, cout, H/s, W/s), before squeeze-excite and activation."""
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        out = self.identity(x) if self.identity is not None else 0
        if self.conv_scale is not None:
            out = out + self.conv_scale(x)
        for branch in self.conv_kxk:
            out = out + branch(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, H / stride, W / stride): branch sum (or the fused conv), SE, activation."""
        return self.act(self.se(self.branches(x)))

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kernel, bias) of one kxk convolution equal to the branch sum (BatchNorms in eval form)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        kernel = 0
        bias = 0
        for branch in self.conv_kxk:
            k, b = branch.fused()
            kernel, bias = kernel + k, bias + b
        if self.conv_scale is not None:
            k, b = self.conv_scale.fused()
            kernel, bias = kernel + _pad_to(k, self.kernel), bias + b
        if self.identity is not None:
            like = self.identity.weight
            k, b = _fold_bn(_identity_kernel(self.cin, self.groups, self.kernel, like), self.identity)
            kernel, bias = kernel + k, bias + b
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one convolution with the same output (eval BatchNorm statistics)."""
        if self.reparam_conv is not None:
            return
        weight, bias = self.fused()
        self.reparam_conv = _fused_conv(self.cin, self.cout, self.kernel, self.stride, self.groups, weight, bias)
        self.identity, self.conv_kxk, self.conv_scale = None, nn.ModuleList(), None


class ReparamLargeKernelConv(nn.Module):
    """A large-kernel conv+BN plus a 3x3 conv+BN of the same stride (RepLKNet), optional squeeze-excite, GELU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, small_kernel: int, use_se: bool) -> None:
        super().__init__()
        self.cin, self.cout, self.kernel, self.stride = cin, cout, kernel, stride
        self.reparam_conv: nn.Conv2d | None = None
        # timm's group_size=1: one group per input channel (each input channel feeds cout / cin outputs)
        self.large_conv: ConvNorm | None = ConvNorm(cin, cout, kernel, stride, groups=cin)
        self.small_conv: ConvNorm | None = ConvNorm(cin, cout, small_kernel, stride, groups=cin)
        self.se = SqueezeExcite(cout, _make_divisible(cout * 0.25, 8)) if use_se else nn.Identity()
        self.act = nn.GELU()  # timm's lkc_use_act=True, as every MCi model sets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, H/stride, W/stride)."""
        if self.reparam_conv is not None:
            out = self.reparam_conv(x)
        else:
            out = self.large_conv(x) + self.small_conv(x)
        return self.act(self.se(out))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both branches and their BatchNorms into one large-kernel convolution."""
        if self.reparam_conv is not None:
            return
        k_large, b_large = self.large_conv.fused()
        k_small, b_small = self.small_conv.fused()
        weight, bias = k_large + _pad_to(k_small, self.kernel), b_large + b_small
        self.reparam_conv = _fused_conv(self.cin, self.cout, self.kernel, self.stride, self.cin, weight, bias)
        self.large_conv = self.small_conv = None


class PatchEmbed(nn.Module):
    """Stage downsample: 7x7 stride-2 large-kernel conv to the new width, then a 1x1 MobileOne block."""

    def __init__(self, cin: int, cout: int, use_se: bool) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(cin, cout, kernel=7, stride=2, small_kernel=3, use_se=use_se),
            MobileOneBlock(cout, cout, kernel=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, H / 2, W / 2)."""
        return self.proj(x)


class LayerScale2d(nn.Module):
    """Per-channel residual scale `gamma` (dim, 1, 1) for (B, C, H, W) maps (timm's names)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(LAYER_SCALE_INIT * torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) scaled per channel."""
        return x * self.gamma


class RepMixer(nn.Module):
    """FastViT's token mixer: x + gamma * (mixer(x) - norm(x)), mixer a depthwise 3x3 MobileOne block and norm its
    BN-only identity branch; reparameterises into one depthwise 3x3 convolution."""

    def __init__(self, dim: int, kernel: int = 3) -> None:
        super().__init__()
        self.dim, self.kernel = dim, kernel
        self.reparam_conv: nn.Conv2d | None = None
        self.norm = MobileOneBlock(dim, dim, kernel, groups=dim, use_act=False, use_scale_branch=False,
                                   num_conv_branches=0)
        self.mixer = MobileOneBlock(dim, dim, kernel, groups=dim, use_act=False)
        self.layer_scale = LayerScale2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.layer_scale(self.mixer(x) - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """x + g * (Wm x + bm - Wn x - bn) is one depthwise conv with kernel I + g (Wm - Wn), bias g (bm - bn)."""
        if self.reparam_conv is not None:
            return
        k_mix, b_mix = self.mixer.fused()
        k_norm, b_norm = self.norm.fused()
        gamma = self.layer_scale.gamma  # (C, 1, 1)
        ident = _identity_kernel(self.dim, self.dim, self.kernel, k_mix)
        weight = ident + gamma.unsqueeze(-1) * (k_mix - k_norm)
        bias = gamma.reshape(-1) * (b_mix - b_norm)
        self.reparam_conv = _fused_conv(self.dim, self.dim, self.kernel, 1, self.dim, weight, bias)
        self.norm = self.mixer = self.layer_scale = None


class ConvMlp(nn.Module):
    """Depthwise 7x7 conv+BN, then a 1x1-conv MLP (fc1, GELU, fc2): (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv = ConvNorm(dim, dim, 7, groups=dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.fc2(self.act(self.fc1(self.conv(x))))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the depthwise conv's BatchNorm into it (the conv gains a bias)."""
        if isinstance(self.conv, ConvNorm):
            weight, bias = self.conv.fused()
            self.conv = _fused_conv(self.fc1.in_channels, self.fc1.in_channels, 7, 1,
                                    self.fc1.in_channels, weight, bias)


class RepConditionalPosEnc(nn.Module):
    """Conditional positional encoding (Chu et al. 2021): x + depthwise7x7(x); reparameterises into one conv."""

    def __init__(self, dim: int, kernel: int = 7) -> None:
        super().__init__()
        self.dim, self.kernel = dim, kernel
        self.reparam_conv: nn.Conv2d | None = None
        self.pos_enc: nn.Conv2d | None = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W): the map plus its depthwise-conv positional term."""
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return self.pos_enc(x) + x

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the residual into the depthwise kernel (an identity tap at its centre): one conv, same output."""
        if self.reparam_conv is not None:
            return
        weight = self.pos_enc.weight + _identity_kernel(self.dim, self.dim, self.kernel, self.pos_enc.weight)
        self.reparam_conv = _fused_conv(self.dim, self.dim, self.kernel, 1, self.dim, weight, self.pos_enc.bias)
        self.pos_enc = None


class RepMixerBlock(nn.Module):
    """RepMixer token mixing, then x + drop_path(gamma * ConvMlp(x))."""

    def __init__(self, dim: int, mlp_ratio: float, rate: float) -> None:
        super().__init__()
        self.token_mixer = RepMixer(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.layer_scale = LayerScale2d(dim)
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = self.token_mixer(x)
        return x + drop_path(self.layer_scale(self.mlp(x)), self.rate, self.training)


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions of a map (bias-free qkv, 32-wide heads)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = dim // HEAD_DIM
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.heads, HEAD_DIM).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, HEAD_DIM)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))  # (B, N, C)
        return out.transpose(1, 2).reshape(b, c, h, w)


class AttentionBlock(nn.Module):
    """Metaformer block with attention: x + g1 * attn(norm(x)), then x + g2 * ConvMlp(x)."""

    def __init__(self, dim: int, mlp_ratio: float, layer_norm: bool, rate: float) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-5) if layer_norm else nn.BatchNorm2d(dim)
        self.token_mixer = Attention(dim)
        self.layer_scale_1 = LayerScale2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.layer_scale_2 = LayerScale2d(dim)
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = x + drop_path(self.layer_scale_1(self.token_mixer(self.norm(x))), self.rate, self.training)
        return x + drop_path(self.layer_scale_2(self.mlp(x)), self.rate, self.training)


class FastVitStage(nn.Module):
    """Optional PatchEmbed downsample, optional conditional positional encoding, then `depth` blocks."""

    def __init__(self, index: int, cin: int, cout: int, depth: int, cfg: VisionConfig, rates: list[float]) -> None:
        super().__init__()
        large = cfg.fastvit == "mci-large"
        attention = index >= FIRST_ATTENTION_STAGE
        if index > 0:
            use_se = not large and index >= 2  # MCi0-2 squeeze-excite their last two downsamples; MCi3/4 none
            self.downsample = PatchEmbed(cin, cout, use_se)
        else:
            self.downsample = nn.Identity()
        self.pos_emb = RepConditionalPosEnc(cout) if attention else nn.Identity()
        if attention:
            blocks = [AttentionBlock(cout, cfg.mlp_ratio, large, r) for r in rates]
        else:
            blocks = [RepMixerBlock(cout, cfg.mlp_ratio, r) for r in rates]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, H', W') with H' = H / 2 after a downsample."""
        return self.blocks(self.pos_emb(self.downsample(x)))


class ClassifierHead(nn.Module):
    """timm's head as open_clip uses it for MCi (`timm_proj: null`): average pool then `fc` (Linear with bias).
    Only a container, so the projection keeps timm's name `head.fc`; FastViT pools and calls `fc` itself."""

    def __init__(self, dim: int, output_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, output_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, dim) -> embeddings (B, output_dim)."""
        return self.fc(pooled)


class FastViT(nn.Module):
    """FastViT / MCi image encoder: images (B, 3, H, W) -> embeddings (B, output_dim)."""

    def __init__(self, cfg: VisionConfig, output_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.output_dim = output_dim
        dims = [cfg.width * 2**i for i in range(len(cfg.layers))]  # every MCi variant doubles its width per stage
        scale_branch = cfg.fastvit != "mci-large"  # MCi3/4: stem_use_scale_branch=False
        self.stem = nn.Sequential(
            MobileOneBlock(3, dims[0], 3, stride=2, use_scale_branch=scale_branch),
            MobileOneBlock(dims[0], dims[0], 3, stride=2, groups=dims[0], use_scale_branch=scale_branch),
            MobileOneBlock(dims[0], dims[0], 1, use_scale_branch=scale_branch),
        )
        # Stochastic depth grows linearly over all blocks, 0 for the first, cfg.drop_path for the last.
        total = sum(cfg.layers)
        rates = [cfg.drop_path * i / max(total - 1, 1) for i in range(total)]
        stages, start, prev = [], 0, dims[0]
        for i, depth in enumerate(cfg.layers):
            stages.append(FastVitStage(i, prev, dims[i], depth, cfg, rates[start : start + depth]))
            start, prev = start + depth, dims[i]
        self.stages = nn.Sequential(*stages)
        self.final_conv = MobileOneBlock(dims[-1], 2 * dims[-1], 3, groups=dims[-1], use_se=True)
        self.head = ClassifierHead(2 * dims[-1], output_dim)
        self.grad_checkpointing = False
        self.any_size = False
        self.reparameterized = False  # set by reparameterize(); weights/loading.save_model refuses a fused tower
        self.init_weights()

    def init_weights(self) -> None:
        """timm's FastViT initialisation: truncated normal (std 0.02) for every Linear and every convolution of the
        ConvMlps (depthwise 7x7, fc1, fc2), zero biases; the other convolutions keep PyTorch's default, as in timm."""
        linear = [m for m in self.modules() if isinstance(m, nn.Linear)]
        mlps = [m for m in self.modules() if isinstance(m, ConvMlp)]
        mlp_convs = [c for m in mlps for c in m.modules() if isinstance(c, nn.Conv2d)]
        for module in linear + mlp_convs:
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def stride(self) -> int:
        """Total downsampling (32 for four stages, 64 for five)."""
        return stride_of(self.cfg)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward (memory for compute)."""
        self.grad_checkpointing = enable

    def set_position_interpolation(self, enable: bool = True) -> None:
        """Accept inputs of any size that is a multiple of the tower's stride: the convolutions and the
        conditional positional encoding take any map size, the average pool any grid. Off by default, so that an
        image preprocessed for another model is an error rather than a silently different embedding."""
        self.any_size = enable

    @torch.no_grad()
    def reparameterize(self) -> FastViT:
        """Fold every reparameterisable branch and the BatchNorms into single convolutions (inference form).

        Outputs equal the unfused tower's in eval mode within float rounding. It is one-way: the fused tower has
        no BatchNorm statistics left to train and other parameter names than every checkpoint format, so keep the
        training-form weights as the saved model and reparameterise after loading. Returns self.
        """
        for module in list(self.modules()):
            if module is not self and hasattr(module, "reparameterize"):
                module.reparameterize()
        self.reparameterized = True
        return self

    def shard_units(self) -> list[nn.Module]:
        """The FSDP2 units (train/sharding.py): every RepMixer / attention block; the stem, downsamples, final_conv
        and head stay in the tower's own unit."""
        return [block for stage in self.stages for block in stage.blocks]

    def parameter_groups(self) -> list[list[nn.Module]]:
        """Groups in forward order for tower locking (models/freeze.py): [stem], each stage, [final_conv],
        [head.fc] (so 1 unlocks the projection only)."""
        return [[self.stem], *([s] for s in self.stages), [self.final_conv], [self.head.fc]]

    @property
    def projection(self) -> nn.Linear:
        """The final linear map into the joint space (`head.fc`): forward is projection(forward(project=False))."""
        return self.head.fc

    def project(self, pre: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 2 * last width) -> embeddings (B, D)."""
        return self.head.fc(pre)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> final_conv's map (B, 2 * last width, H/stride, W/stride)."""
        if self.any_size:
            height, width = images.shape[-2], images.shape[-1]
            if images.ndim != 4 or height % self.stride or width % self.stride:
                raise ValueError(f"images are {tuple(images.shape)}; a FastViT needs (B, 3, H, W) with H, W "
                                 f"multiples of {self.stride}: resize them to a multiple")
        else:
            check_image_size(images, self.cfg)
        x = self.stem(images)  # (B, width, H/4, W/4)
        for stage in self.stages:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return self.final_conv(x)

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected pooled embedding (B, D) and the final map as tokens (B, HW/stride**2, 2 * last width)."""
        x = self.feature_map(images)
        return self.project(x.mean(dim=(2, 3))), x.flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor, project: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) -> embeddings (B, output_dim); `project=False`: the pooled map (B, 2 * last width)."""
        pre = self.feature_map(images).mean(dim=(2, 3))
        return self.project(pre) if project else pre


def check_fastvit_config(cfg: VisionConfig) -> list[str]:
    """Why `cfg` cannot build a FastViT tower (empty when it can): the shape rules the modules above rely on."""
    problems = []
    layers = cfg.layers if isinstance(cfg.layers, tuple) else ()
    if not 4 <= len(layers) <= 5:
        problems.append(f"vision.layers must be 4 or 5 stage depths for a FastViT, got {cfg.layers!r}")
    if cfg.fastvit == "mci" and len(layers) != 4:
        problems.append("vision.fastvit='mci' (MCi0-2) has four stages; five-stage towers are 'mci-large' (MCi3/4)")
    if (cfg.width * 2**FIRST_ATTENTION_STAGE) % HEAD_DIM:
        problems.append(f"vision.width * {2**FIRST_ATTENTION_STAGE} (the first attention stage's width) must be a "
                        f"multiple of the {HEAD_DIM}-wide attention heads, got width {cfg.width}")
    if layers and cfg.image_size % (STEM_STRIDE * 2 ** (len(layers) - 1)):
        problems.append(f"vision.image_size {cfg.image_size} must be a multiple of the tower's stride "
                        f"{STEM_STRIDE * 2 ** (len(layers) - 1)}")
    if cfg.pool_type != "avg":
        problems.append(f"a FastViT pools by average: set vision.pool_type 'avg', got {cfg.pool_type!r}")
    if not math.isclose(cfg.mlp_ratio * cfg.width, round(cfg.mlp_ratio * cfg.width)):
        problems.append(f"vision.mlp_ratio {cfg.mlp_ratio} times width must be whole")
    return problems


__all__ = ["FastViT", "check_fastvit_config", "stride_of"]
