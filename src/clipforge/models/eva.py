"""EVA-CLIP transformer blocks (Sun et al. 2023, arXiv:2303.15389; EVA02, Fang et al. 2023, arXiv:2303.11331).

An EVA02 block is CLIP's pre-norm block with three changes, each a `VisionConfig` field:
- `rope`: 2-D rotary position embeddings on the patch tokens' queries and keys (models/rope.py);
- `mlp_type="swiglu"`: a gated MLP, silu(x W_g) * (x W_x), with hidden width int(width * mlp_ratio);
- `scale_mlp` / `scale_attn_inner`: sub-LayerNorms (Normformer, Shleifer et al. 2021) on the MLP's hidden
  activations and on the attention output before its projection.

Parameter names stay CLIP's (`attn.in_proj_weight`, `attn.out_proj`, `mlp.c_fc`, `mlp.c_proj`) so one
initialisation, freezing, sharding and key-map convention serves every tower. EVA's separate q/k/v projections
load into the packed `in_proj_weight`; EVA has no key bias, so its third of `in_proj_bias` loads as zeros and, with
`vision.key_bias` false (the EVA02 configs), stays a structural zero: the forward uses zeros in its place, so it gets
no gradient and AdamW (decay included) leaves it at exactly zero -- with rotary embeddings a key bias is not
softmax-invariant (the rotation makes it position-dependent), so a trained one would change the model and could not
be written as timm's EVA. The parameter keeps the packed layout every key map, freezing rule and sharding plan
expects. The gated MLP packs its gate and value projections into one `c_fc` (gate rows first, as timm's GluMlp), one
matmul instead of two. Reference: timm `models/eva.py` (EvaAttention, EvaBlock), `layers/mlp.py` (SwiGLU).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import Attention, LayerScale, Transformer, _plain_attention, make_activation
from .rope import apply_rope

# (sin, cos), each (N_patches, head_dim), or (B, 1, N_kept, head_dim) gathered per image after patch dropout
RopeTables = tuple[torch.Tensor, torch.Tensor]


class EvaAttention(Attention):
    """Attention with optional rotary embeddings on non-prefix tokens and an optional LayerNorm on its output."""

    def __init__(self, dim: int, num_heads: int, *, inner_norm: bool = False, norm_eps: float = 1e-6,
                 num_prefix: int = 1, key_bias: bool = True) -> None:
        super().__init__(dim, num_heads)
        self.num_prefix = num_prefix
        self.key_bias = key_bias  # False: in_proj_bias[dim:2 dim] is a structural zero (timm EVA's q/v biases only)
        self.ln_inner = nn.LayerNorm(dim, eps=norm_eps) if inner_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        num_queries: int | None = None,
        rope: RopeTables | None = None,
    ) -> torch.Tensor:
        """x (B, L, D) -> (B, Q, D); rope rotates q and k of positions >= num_prefix (patch tokens)."""
        b, length, dim = x.shape
        queries = length if num_queries is None else num_queries
        w_q, w_kv = self.in_proj_weight.split([dim, 2 * dim])
        if self.key_bias:
            b_q, b_kv = self.in_proj_bias.split([dim, 2 * dim])
        else:  # the stored k third takes no part: zeros in its place, so it gets an exactly zero gradient
            b_q, b_k, b_v = self.in_proj_bias.split(dim)
            b_kv = torch.cat([torch.zeros_like(b_k), b_v])  # (2 dim,)
        q = F.linear(x[:, :queries], w_q, b_q).view(b, queries, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = F.linear(x, w_kv, b_kv).view(b, length, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # q: (B, H, Q, Dh); k, v: (B, H, L, Dh)
        if rope is not None:
            sin, cos = rope
            p = self.num_prefix
            k = torch.cat([k[:, :, :p], apply_rope(k[:, :, p:], sin, cos)], dim=2)
            if queries > p:  # the class-token-only last block has no patch queries to rotate
                n = queries - p
                q = torch.cat([q[:, :, :p], apply_rope(q[:, :, p:], sin[..., :n, :], cos[..., :n, :])], dim=2)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        else:
            out = _plain_attention(q, k, v, attn_mask, is_causal)
        out = out.transpose(1, 2).reshape(b, queries, dim)  # (B, Q, D)
        return self.out_proj(self.ln_inner(out))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Refuse a nonzero key bias for an attention without one: the forward would ignore it, silently changing
        the model it came from (rotary embeddings make a key bias matter)."""
        bias = state_dict.get(prefix + "in_proj_bias")
        dim = self.in_proj_weight.shape[1]
        plain = isinstance(bias, torch.Tensor) and not bias.is_meta and not hasattr(bias, "device_mesh")  # no DTensor
        if not self.key_bias and plain and bias.shape == (3 * dim,) and bool(bias[dim : 2 * dim].any()):
            error_msgs.append(
                f"{prefix}in_proj_bias: its key third is nonzero (max |b_k| "
                f"{bias[dim : 2 * dim].abs().max().item():.3g}) but this EVA attention has no key bias "
                "(vision.key_bias false); load it into a config with vision.key_bias true (the one it was trained with)"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class SwiGLU(nn.Module):
    """Gated MLP: c_proj(ln(silu(x W_g) * (x W_x))), W_g and W_x packed in `c_fc` (gate rows first)."""

    def __init__(self, width: int, hidden: int, *, inner_norm: bool = False, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 2 * hidden)
        self.ln = nn.LayerNorm(hidden, eps=norm_eps) if inner_norm else nn.Identity()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., width) -> (..., width)."""
        gate, value = self.c_fc(x).chunk(2, dim=-1)  # (..., hidden) each
        return self.c_proj(self.ln(F.silu(gate) * value))


def _plain_mlp(width: int, hidden: int, act: str, inner_norm: bool, norm_eps: float) -> nn.Sequential:
    """CLIP's MLP, with EVA's optional LayerNorm on the hidden activations (scale_mlp)."""
    layers = [("c_fc", nn.Linear(width, hidden)), ("gelu", make_activation(act))]
    if inner_norm:
        layers.append(("ln", nn.LayerNorm(hidden, eps=norm_eps)))
    layers.append(("c_proj", nn.Linear(hidden, width)))
    return nn.Sequential(OrderedDict(layers))


class EvaBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x), rope), then x + mlp(ln_2(x)); names as ResidualAttentionBlock."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_ratio: float,
        act: str,
        ls_init_value: float | None,
        norm_eps: float,
        *,
        mlp_type: str,
        scale_mlp: bool,
        scale_attn_inner: bool,
        num_prefix: int,
        key_bias: bool = True,
    ) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = EvaAttention(
            width, num_heads, inner_norm=scale_attn_inner, norm_eps=norm_eps, num_prefix=num_prefix,
            key_bias=key_bias,
        )
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = nn.LayerNorm(width, eps=norm_eps)
        if mlp_type == "swiglu":
            self.mlp = SwiGLU(width, hidden, inner_norm=scale_mlp, norm_eps=norm_eps)
        else:
            self.mlp = _plain_mlp(width, hidden, act, scale_mlp, norm_eps)
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        num_queries: int | None = None,
        rope: RopeTables | None = None,
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D), or (B, Q, D) for the first Q positions when num_queries is set."""
        attn = self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal, num_queries=num_queries, rope=rope)
        x = (x if num_queries is None else x[:, :num_queries]) + self.ls_1(attn)
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class EvaTransformer(Transformer):
    """A stack of EvaBlocks; `forward` also takes the rotary tables shared by every block."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        ls_init_value: float | None = None,
        norm_eps: float = 1e-6,
        *,
        mlp_type: str = "mlp",
        scale_mlp: bool = False,
        scale_attn_inner: bool = False,
        num_prefix: int = 1,
        key_bias: bool = True,
    ) -> None:
        nn.Module.__init__(self)  # Transformer.__init__ would build CLIP blocks only to discard them
        self.width = width
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            [
                EvaBlock(
                    width, heads, mlp_ratio, act, ls_init_value, norm_eps,
                    mlp_type=mlp_type, scale_mlp=scale_mlp, scale_attn_inner=scale_attn_inner, num_prefix=num_prefix,
                    key_bias=key_bias,
                )
                for _ in range(layers)
            ]
        )
        self.init_weights()

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        last_block_queries: int | None = None,
        rope: RopeTables | None = None,
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); last_block_queries as in Transformer.forward (exact with rope too)."""
        last = len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks):
            queries = last_block_queries if i == last else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, is_causal, queries, rope, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, is_causal=is_causal, num_queries=queries, rope=rope)
        return x
