"""Multihead attention pooling ("MAP") head: SigLIP's image-tower pooling (Zhai et al. 2023).

A single learned probe vector attends to all patch tokens, then passes through a pre-norm MLP with a
residual connection; the probe's output is the pooled image feature. SigLIP has no class token: this head
is how it summarises the image. Parameter names and layout follow transformers'
`SiglipMultiheadAttentionPoolingHead` (`probe`, `attention` = nn.MultiheadAttention, `layernorm`,
`mlp.fc1`/`mlp.fc2`) so the Hugging Face key map (weights/hf_siglip.py) is the identity on this module;
timm's `AttentionPoolLatent` computes the same function with split q / kv projections.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .layers import make_activation


class MAPHead(nn.Module):
    """Attention pooling with one learned probe: tokens (B, N, width) -> pooled (B, width)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, norm_eps: float) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.layernorm = nn.LayerNorm(width, eps=norm_eps)
        hidden = int(width * mlp_ratio)
        layers = [("fc1", nn.Linear(width, hidden)), ("act", make_activation(act)), ("fc2", nn.Linear(hidden, width))]
        self.mlp = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, width), already through ln_post -> pooled feature (B, width)."""
        probe = self.probe.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, 1, width)
        pooled = self.attention(probe, x, x, need_weights=False)[0][:, 0]  # (B, width)
        # Residual MLP, pre-norm, on the one probe token (per-token ops: the same numbers as on (B, 1, width)). The
        # sum is a fresh tensor, not a view of the attention output: FSDP2 warns of a tower returning a view
        # (an in-place op on it would skip its all-gather), and a SigLIP tower without projection returns this.
        return pooled + self.mlp(self.layernorm(pooled))
