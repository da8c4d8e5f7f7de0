"""Vision Transformer image tower (Dosovitskiy et al. 2021) as used by CLIP (Radford et al. 2021).

Pre-norm ViT with a class token, learned positional embedding, a LayerNorm before the transformer
(`ln_pre`, a CLIP addition), then pooling and a bias-free projection into the joint space. Pooling
options mirror open_clip's VisionTransformer: class token, mean of patch tokens, none, LayerNorm
after pooling, and an attentional pooler. Reference: openai/CLIP `model.py`, open_clip `transformer.py`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig
from .eva import EvaTransformer
from .inputs import check_image_size
from .layers import AttentionalPooler, PatchDropout, Transformer
from .map_head import MAPHead
from .mci_stem import MCiStem
from .rope import rope_tables


class VisionTransformer(nn.Module):
    """ViT image encoder: images (B, 3, H, W) -> embeddings (B, output_dim)."""

    def __init__(self, cfg: VisionConfig, output_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.output_dim = output_dim
        width = cfg.width
        scale = width**-0.5
        norm = partial(nn.LayerNorm, eps=cfg.layer_norm_eps)

        if cfg.conv_stem:  # MobileCLIP's MCi stem: three strided convs with BatchNorm + GELU (models/mci_stem.py)
            self.conv1: nn.Module = MCiStem(width)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)
        # SigLIP has no class token (class_token=False): the sequence is the patch tokens alone.
        self.class_embedding = nn.Parameter(scale * torch.randn(width)) if cfg.class_token else None
        self.num_prefix = 1 if cfg.class_token else 0
        # no_embed_class (MobileCLIP): positions for the patch tokens only; the class token gets none.
        self.num_pos_prefix = 0 if cfg.no_embed_class else self.num_prefix
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid_size**2 + self.num_pos_prefix, width))
        self.patch_dropout = (
            PatchDropout(cfg.patch_dropout, exclude_first_token=cfg.class_token)
            if cfg.patch_dropout > 0
            else nn.Identity()
        )
        self.ln_pre = nn.Identity() if cfg.no_ln_pre else norm(width)
        if cfg.uses_eva_blocks:  # EVA02: rotary embeddings, SwiGLU, sub-LayerNorms (models/eva.py)
            self.transformer = EvaTransformer(
                width, cfg.layers, cfg.num_heads, cfg.mlp_ratio, cfg.act, cfg.ls_init_value, cfg.layer_norm_eps,
                mlp_type=cfg.mlp_type, scale_mlp=cfg.scale_mlp, scale_attn_inner=cfg.scale_attn_inner,
                num_prefix=self.num_prefix, key_bias=cfg.key_bias,
            )
        else:
            self.transformer = Transformer(
                width, cfg.layers, cfg.num_heads, cfg.mlp_ratio, cfg.act, cfg.ls_init_value, cfg.layer_norm_eps
            )
        if cfg.attentional_pool:
            self.attn_pool = AttentionalPooler(output_dim, width, cfg.attn_pooler_heads, cfg.attn_pooler_queries, norm)
            pool_dim = output_dim
        else:
            self.attn_pool = None
            pool_dim = width
        self.ln_post = norm(pool_dim)
        # SigLIP's pooling head (pool_type "map") runs after ln_post on all tokens.
        self.map_head = None
        if cfg.pool_type == "map":
            self.map_head = MAPHead(width, cfg.num_heads, cfg.mlp_ratio, cfg.act, cfg.layer_norm_eps)
        # no_proj (SigLIP): the pooled feature is the embedding itself (config checks output_dim == width).
        self.proj = None if cfg.no_proj else nn.Parameter(scale * torch.randn(pool_dim, output_dim))
        # EVA-CLIP's head is a Linear with bias: embeddings are pooled @ proj + proj_bias.
        self.proj_bias = nn.Parameter(torch.zeros(output_dim)) if cfg.proj_bias else None
        # Inputs of another size than cfg.image_size are refused unless this is set (set_position_interpolation).
        self.interpolate_positions = False

    def set_position_interpolation(self, enable: bool = True) -> None:
        """Accept inputs of any size (a multiple of the patch size), resampling the learned position grid to
        theirs, as CLIPA's reduced-resolution training phases need (Li et al. 2023). Off by default: a wrongly
        preprocessed image would otherwise be embedded without a word."""
        self.interpolate_positions = enable

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward (memory for compute)."""
        self.transformer.grad_checkpointing = enable

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patchify and add class token and positions: (B, 3, H, W) -> (B, 1 + N, width)."""
        return self._embed_keep(images)[0]

    def _embed_keep(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`embed`, also returning the patch-dropout keep indices (B, keep) into the patch grid (None when no patch
        was dropped): rotary embeddings gather their tables with them so kept patches keep their positions."""
        check_image_size(images, self.cfg, self.interpolate_positions)
        x = self.conv1(images)  # (B, width, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, N, width)
        if self.cfg.no_embed_class:
            x = x + self._positions(images.shape[-2:]).to(x.dtype)  # (B, N, width)
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)  # (B, 1 + N, width)
        if not self.cfg.no_embed_class:
            x = x + self._positions(images.shape[-2:]).to(x.dtype)  # (B, prefix + N, width)
        keep = None
        if isinstance(self.patch_dropout, PatchDropout):
            x, keep = self.patch_dropout.forward_with_indices(x)  # keep: (B, kept) or None
        else:
            x = self.patch_dropout(x)
        return self.ln_pre(x), keep

    def _positions(self, hw: torch.Size) -> torch.Tensor:
        """Positional embedding for an input of size hw: the learned grid, bicubically resized when the
        input differs from the configured image size (reduced-resolution phases, CLIPA; Li et al. 2023)."""
        grid = (hw[0] // self.cfg.patch_size, hw[1] // self.cfg.patch_size)
        n = self.cfg.grid_size
        if grid == (n, n):
            return self.positional_embedding
        prefix = self.num_pos_prefix
        cls_pos, patch_pos = self.positional_embedding[:prefix], self.positional_embedding[prefix:]
        patch_pos = patch_pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)  # (1, width, n, n)
        patch_pos = F.interpolate(patch_pos.float(), size=grid, mode="bicubic", align_corners=False, antialias=True)
        patch_pos = patch_pos.to(self.positional_embedding.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
        return torch.cat([cls_pos, patch_pos])  # (prefix + g_h * g_w, width)

    def _global_pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.pool_type == "avg":
            patches = x[:, self.num_prefix :] if self.attn_pool is None else x[:, 1:]
            return patches.mean(dim=1), patches
        if self.cfg.pool_type == "tok":
            return x[:, 0], x[:, 1:]
        return x, x

    def pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformer output (B, L, width) -> (pooled (B, width|D), tokens (B, N, width|D))."""
        if self.attn_pool is not None:
            x = self.ln_post(self.attn_pool(x))  # (B, queries, D)
            return self._global_pool(x)
        if self.map_head is not None:
            x = self.ln_post(x)  # (B, N, width)
            return self.map_head(x), x
        if self.cfg.final_ln_after_pool:
            pooled, tokens = self._global_pool(x)
            return self.ln_post(pooled), tokens
        return self._global_pool(self.ln_post(x))

    @property
    def projection(self) -> nn.Parameter:
        """The final linear map into the joint space, a bias-free (pool_dim, D) matrix: `forward` is
        `forward(images, project=False) @ projection`. ProLIP (Fahes et al. 2024) fine-tunes exactly this map."""
        if self.proj is None:
            raise ValueError(
                "this image tower has no projection (vision.no_proj, as in SigLIP): its pooled feature is the "
                "embedding, so there is no final linear map to adapt"
            )
        return self.proj

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pre-projection features (B, pool_dim) -> embeddings (B, D): the tower's last step on its own."""
        if self.proj is None:
            return pooled
        out = pooled @ self.proj  # (B, D)
        return out if self.proj_bias is None else out + self.proj_bias

    def _run_blocks(self, images: torch.Tensor, last_block_queries: int | None = None) -> torch.Tensor:
        """Embed and run the transformer: (B, 3, H, W) -> (B, L, width), with rotary tables for the input's patch
        grid when the tower uses them (EVA02)."""
        x, keep = self._embed_keep(images)
        if not self.cfg.rope:
            return self.transformer(x, last_block_queries=last_block_queries)
        grid = (images.shape[-2] // self.cfg.patch_size, images.shape[-1] // self.cfg.patch_size)
        sin, cos = rope_tables(
            grid, self.cfg.width // self.cfg.num_heads, ref_grid=self.cfg.rope_ref_grid, theta=self.cfg.rope_theta,
            device=x.device,
        )  # (N, head_dim) each
        if keep is not None:  # patch dropout: each kept patch keeps its own position's rotation
            sin, cos = sin[keep].unsqueeze(1), cos[keep].unsqueeze(1)  # (B, 1, kept, head_dim): broadcast over heads
        return self.transformer(x, last_block_queries=last_block_queries, rope=(sin, cos))

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected pooled embedding (B, D) and the un-projected patch tokens (B, N, width)."""
        x = self._run_blocks(images)
        pooled, tokens = self.pool(x)
        return self.project(pooled), tokens

    @property
    def class_token_shortcut(self) -> bool:
        """Whether `forward` runs the last block for the class token's query alone: exact only when the pooled
        feature is the class token itself ("tok" pooling, no attentional pooler). Average pooling, SigLIP's MAP
        head and an attentional pooler read every patch token of the last block, so they run it in full."""
        return self.cfg.pool_type == "tok" and self.cfg.class_token and self.attn_pool is None

    def forward(self, images: torch.Tensor, project: bool = True) -> torch.Tensor:
        """Projected pooled embedding (B, D); with `project=False` the input of the projection instead:
        the pooled token after `ln_post` (B, pool_dim; pool_dim = width, or D after an attentional pooler).

        With class-token pooling only the class token leaves the last block, so that block is run
        for the class token's query alone (see Transformer.forward); outputs are unchanged.
        """
        if self.class_token_shortcut:
            x = self._run_blocks(images, last_block_queries=1)[:, 0]  # (B, width)
            pooled = self.ln_post(x)  # LayerNorm is per token: before or after pooling is the same
        else:
            pooled = self.pool(self._run_blocks(images))[0]  # (B, pool_dim)
        return self.project(pooled) if project else pooled
