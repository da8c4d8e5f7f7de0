"""Transformer building blocks shared by the image and text towers.

Parameter names follow OpenAI's CLIP release (and so open_clip's): `attn.in_proj_weight`,
`attn.out_proj`, `mlp.c_fc`, `mlp.c_proj`, `ln_1`, `ln_2`. Keeping those names makes the OpenAI and
OpenCLIP key maps in `weights/` nearly the identity, which is the cheapest way to stay exact.

Attention runs through `torch.nn.functional.scaled_dot_product_attention` (fused kernels on every
backend); a plain softmax(QK^T)V path stays selectable so tests can show both agree.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP checkpoints were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x * sigmoid(1.702 x), elementwise (OpenAI's GELU approximation)."""
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    """The activation module for a config name: 'gelu', 'quick_gelu' or 'gelu_tanh'."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":  # SigLIP's (and GPT-2's) tanh approximation, HF's "gelu_pytorch_tanh"
        return nn.GELU(approximate="tanh")
    raise ValueError(f"unknown activation {name!r}; expected 'gelu', 'quick_gelu' or 'gelu_tanh'")


class LayerScale(nn.Module):
    """Per-channel learnable residual scale (CaiT, Touvron et al. 2021)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel by its learned gamma: (..., C) -> (..., C)."""
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with a packed QKV projection (nn.MultiheadAttention's layout)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.fused = True  # SDPA; False selects the explicit softmax path (kept for equivalence tests)
        nn.init.normal_(self.in_proj_weight, std=dim**-0.5)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        num_queries: int | None = None,
    ) -> torch.Tensor:
        """x (B, L, D) -> (B, Q, D), where Q = num_queries (the first Q positions) or L.

        attn_mask is an additive float or boolean keep-mask broadcastable to (B, H, Q, L).
        """
        b, length, dim = x.shape
        if num_queries is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
            q, k, v = qkv.view(b, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            # Only the first positions' outputs are needed: project queries for those alone.
            w_q, w_kv = self.in_proj_weight.split([dim, 2 * dim])
            b_q, b_kv = self.in_proj_bias.split([dim, 2 * dim])
            q = F.linear(x[:, :num_queries], w_q, b_q).view(b, num_queries, self.num_heads, self.head_dim)
            q = q.transpose(1, 2)
            kv = F.linear(x, w_kv, b_kv).view(b, length, 2, self.num_heads, self.head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        # q: (B, H, Q, Dh); k, v: (B, H, L, Dh)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        else:
            out = _plain_attention(q, k, v, attn_mask, is_causal)
        out = out.transpose(1, 2).reshape(b, q.shape[2], dim)  # (B, Q, D)
        return self.out_proj(out)


def _plain_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool
) -> torch.Tensor:
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, H, L, L)
    if is_causal:
        length = q.shape[-2]
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return scores.softmax(dim=-1) @ v


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        ls_init_value: float | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = Attention(width, num_heads)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", make_activation(act)),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        num_queries: int | None = None,
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D), or (B, Q, D) for the first Q positions only when num_queries is set."""
        attn = self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal, num_queries=num_queries)
        x = (x if num_queries is None else x[:, :num_queries]) + self.ls_1(attn)
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """A stack of residual attention blocks, with optional activation checkpointing."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        ls_init_value: float | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.width = width
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, act, ls_init_value, norm_eps) for _ in range(layers)]
        )
        self.init_weights()

    def init_weights(self) -> None:
        """CLIP's initialisation: residual-branch outputs scaled down with depth."""
        proj_std = (self.width**-0.5) * ((2 * len(self.resblocks)) ** -0.5)
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        last_block_queries: int | None = None,
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); with last_block_queries=Q the last block computes only the first Q outputs.

        A class-token-pooled ViT needs only position 0 after the last block, so the last block's query
        projection, attention rows and MLP shrink from L positions to 1 (exact, and ~1/depth cheaper).
        """
        last = len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks):
            queries = last_block_queries if i == last else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, is_causal, queries, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, is_causal=is_causal, num_queries=queries)
        return x


class PatchDropout(nn.Module):
    """Drops a random subset of patch tokens in training (FLIP, Li et al. 2023, arXiv:2212.00794).

    The class token (first position) is always kept. At eval this is the identity.
    """

    def __init__(self, prob: float, exclude_first_token: bool = True) -> None:
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"patch dropout probability must be in [0, 1), got {prob}")
        self.prob = prob
        self.exclude_first_token = exclude_first_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """In training, keep a random subset of patch tokens per image: (B, N, C) -> (B, keep, C)."""
        return self.forward_with_indices(x)[0]

    def forward_with_indices(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As `forward`, also returning which patches were kept: (B, keep) indices into the patch tokens (the
        class token excluded), or None when nothing was dropped. Rotary embeddings (EVA02) need them: a kept
        patch must keep its own position's rotation (timm eva.py: PatchDropoutWithIndices)."""
        if not self.training or self.prob == 0.0:
            return x, None
        prefix, tokens = (x[:, :1], x[:, 1:]) if self.exclude_first_token else (x[:, :0], x)
        b, n, _ = tokens.shape
        keep = max(1, int(n * (1.0 - self.prob)))
        idx = torch.rand(b, n, device=x.device).topk(keep, dim=-1).indices  # (B, keep)
        tokens = tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return torch.cat([prefix, tokens], dim=1), idx


class AttentionalPooler(nn.Module):
    """Learned queries cross-attending to the token sequence (CoCa, Yu et al. 2022).

    Uses nn.MultiheadAttention so that its parameter layout equals open_clip's (kdim != dim).
    """

    def __init__(
        self, dim: int, context_dim: int, heads: int, n_queries: int, norm: Callable[[int], nn.Module]
    ) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, dim))
        self.attn = nn.MultiheadAttention(dim, heads, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = norm(dim)
        self.ln_k = norm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, L, C) -> (B, n_queries, D)
        """Cross-attend learned queries to the tokens: (B, L, C) -> (B, n_queries, D)."""
        x = self.ln_k(x)
        q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.attn(q, x, x, need_weights=False)[0]
