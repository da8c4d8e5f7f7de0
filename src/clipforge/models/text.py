"""Text transformer tower (Radford et al. 2021; GPT-2-style pre-norm transformer).

CLIP's text encoder: token + learned positional embeddings, a causal transformer, a final LayerNorm,
the feature at the end-of-text token (the highest id in each OpenAI-tokenised row), then a bias-free
projection. Fields in `TextConfig` turn it into SigLIP-style towers (bidirectional attention,
last-token pooling, projection with bias). Reference: openai/CLIP `model.py`, open_clip `transformer.py`.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .config import TextConfig
from .layers import Transformer


class TextTransformer(nn.Module):
    """Text encoder: token ids (B, L) -> embeddings (B, output_dim)."""

    def __init__(self, cfg: TextConfig, output_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.output_dim = output_dim
        width = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, width))
        self.transformer = Transformer(
            width, cfg.layers, cfg.num_heads, cfg.mlp_ratio, cfg.act, cfg.ls_init_value, cfg.layer_norm_eps
        )
        self.ln_final = partial(nn.LayerNorm, eps=cfg.layer_norm_eps)(width)
        if cfg.proj_bias:
            self.text_projection = nn.Linear(width, output_dim)
        else:
            self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """OpenAI's initialisation of embeddings, blocks and the projection."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        std = self.cfg.width**-0.5
        if isinstance(self.text_projection, nn.Linear):
            nn.init.normal_(self.text_projection.weight, std=std)
            nn.init.zeros_(self.text_projection.bias)
        else:
            nn.init.normal_(self.text_projection, std=std)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward (memory for compute)."""
        self.transformer.grad_checkpointing = enable

    def _attention_mask(self, tokens: torch.Tensor) -> tuple[torch.Tensor | None, bool]:
        """(mask, is_causal) for SDPA. Pure causal attention uses the fused causal flag, no mask."""
        if not self.cfg.pad_mask:
            return None, self.cfg.causal_mask
        length = tokens.shape[1]
        keep = (tokens != self.cfg.pad_id)[:, None, None, :]  # (B, 1, 1, L) keys to attend to
        if self.cfg.causal_mask:
            keep = keep & torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        # A query row with every key masked would give NaN (an all-padding row): let it see itself only.
        keep = keep.expand(-1, 1, length, length)  # (B, 1, L, L)
        empty = ~keep.any(dim=-1, keepdim=True)
        keep = keep | (empty & torch.eye(length, dtype=torch.bool, device=tokens.device))
        return keep, False

    def _pool(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        pool = self.cfg.pool_type
        rows = torch.arange(x.shape[0], device=x.device)
        if pool == "argmax":  # OpenAI: the end-of-text token has the largest id in the vocabulary
            return x[rows, tokens.argmax(dim=-1)]
        if pool == "eos":
            return x[rows, (tokens == self.cfg.eos_id).int().argmax(dim=-1)]
        if pool == "first":
            return x[:, 0]
        if pool == "last":
            return x[:, -1]
        return x

    def _check_length(self, tokens: torch.Tensor) -> None:
        if tokens.shape[1] > self.cfg.context_length:
            raise ValueError(
                f"token sequence length {tokens.shape[1]} exceeds the model's context_length "
                f"{self.cfg.context_length}; tokenize with the model's tokenizer (get_tokenizer(model)) to truncate"
            )

    def forward_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected pooled embedding (B, D) and the normalised token features (B, L, width)."""
        length = tokens.shape[1]
        self._check_length(tokens)
        dtype = self.positional_embedding.dtype
        x = self.token_embedding(tokens).to(dtype) + self.positional_embedding[:length]  # (B, L, width)
        mask, is_causal = self._attention_mask(tokens)
        x = self.ln_final(self.transformer(x, attn_mask=mask, is_causal=is_causal))
        pooled = self._pool(x, tokens)  # (B, width)
        if isinstance(self.text_projection, nn.Linear):
            pooled = self.text_projection(pooled)
        else:
            pooled = pooled @ self.text_projection
        return pooled, x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled, projected text embedding (B, D).

        With causal attention and end-token pooling, positions after the last end token of the batch
        cannot influence any pooled feature, so they are not computed: captions are short (~15 of 77
        tokens), which makes this several times faster than running the padded length, with the
        same result.
        """
        cfg = self.cfg
        self._check_length(tokens)
        trimmable = cfg.causal_mask and not cfg.pad_mask and cfg.pool_type in ("argmax", "eos")
        # Under torch.compile a data-dependent length would break the graph; the full length is used there.
        if trimmable and tokens.shape[0] > 0 and not torch.compiler.is_compiling():
            if cfg.pool_type == "argmax":
                last = int(tokens.argmax(dim=-1).max())
            else:
                is_eos = tokens == cfg.eos_id
                # rows without an eos pool at position 0 (argmax of all-false), so they need nothing extra
                last = int(is_eos.int().argmax(dim=-1).max())
            tokens = tokens[:, : last + 1]
        return self.forward_tokens(tokens)[0]
