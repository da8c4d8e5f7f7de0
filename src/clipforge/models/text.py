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

    def _attention_mask(self, tokens: torch.Tensor | None) -> tuple[torch.Tensor | None, bool]:
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

    def pool_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> the position each row is pooled at, (B,) long, for end-token pooling.

        "argmax": the end-of-text token, the largest id in OpenAI's vocabulary; "eos": the first `eos_id`
        (position 0 for a row without one). Raises for the other pool types, which do not pool at a token.
        """
        if self.cfg.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.cfg.pool_type == "eos":
            return (tokens == self.cfg.eos_id).int().argmax(dim=-1)
        raise ValueError(f"text pool_type {self.cfg.pool_type!r} does not pool at an end token")

    def _pool(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """Normalised token features (B, L, width) -> pooled (B, width); `positions` (B,) for end-token pools."""
        pool = self.cfg.pool_type
        if pool in ("argmax", "eos"):
            return x[torch.arange(x.shape[0], device=x.device), positions]
        if pool == "first":
            return x[:, 0]
        if pool == "last":
            return x[:, -1]
        return x

    @property
    def projection(self) -> nn.Parameter | nn.Linear:
        """The final linear map into the joint space: a bias-free (width, D) matrix, or a Linear with bias."""
        return self.text_projection

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, width) -> embeddings (B, D)."""
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection

    def _check_length(self, tokens: torch.Tensor) -> None:
        if tokens.shape[1] > self.cfg.context_length:
            raise ValueError(
                f"token sequence length {tokens.shape[1]} exceeds the model's context_length "
                f"{self.cfg.context_length}; tokenize with the model's tokenizer (get_tokenizer(model)) to truncate"
            )

    def forward_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected pooled embedding (B, D) and the normalised token features (B, L, width)."""
        self._check_length(tokens)
        positions = self.pool_positions(tokens) if self.cfg.pool_type in ("argmax", "eos") else None
        return self._encode(self.token_embedding(tokens), tokens, positions)

    def _single_pooled_position(self) -> int | None:
        """The one position (0 or -1) a bidirectional, unmasked tower pools at, else None (see `_encode`)."""
        cfg = self.cfg
        if cfg.causal_mask or cfg.pad_mask:
            return None
        return {"first": 0, "last": -1}.get(cfg.pool_type)

    def _encode(
        self,
        embeddings: torch.Tensor,
        tokens: torch.Tensor | None,
        positions: torch.Tensor | None,
        pooled_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (B, L, width) -> (projected pooled (B, D), normalised token features (B, L, width)).

        The one code path behind token ids and embeddings, so both give bit-identical features. `tokens`
        is read only for the padding mask, `positions` (B,) only by end-token pooling.

        With `pooled_only` (the caller keeps only the pooled embedding), a bidirectional tower without a
        padding mask pooled at its first or last position (SigLIP) runs its last block for that one position:
        ~1/depth less work. Unmasked bidirectional attention is permutation-equivariant (positions live in
        the embeddings), so the last position is rotated to the front, where `last_block_queries=1` computes
        it alone; the features then equal the full run's up to float summation order, and the token features
        returned are (B, 1, width).
        """
        dtype = self.positional_embedding.dtype
        x = embeddings.to(dtype) + self.positional_embedding[: embeddings.shape[1]]  # (B, L, width)
        pooled_at = self._single_pooled_position() if pooled_only and x.shape[1] > 1 else None
        if pooled_at is not None:
            if pooled_at == -1:
                x = x.roll(1, dims=1)  # (B, L, width), the last position first
            x = self.ln_final(self.transformer(x, last_block_queries=1))  # (B, 1, width); no mask, not causal
            return self.project(x[:, 0]), x
        mask, is_causal = self._attention_mask(tokens)  # tokens is only read when cfg.pad_mask
        x = self.ln_final(self.transformer(x, attn_mask=mask, is_causal=is_causal))
        return self.project(self._pool(x, positions)), x

    def _trim_length(self, positions: torch.Tensor | None, length: int) -> int:
        """How many leading positions determine every pooled feature (see `forward`); `length` when all do.

        Only causal towers trim: a position sees none after it, so dropping later positions changes no earlier
        output, padding mask or not (the mask only hides keys a causal row already ignores). Bidirectional towers
        (SigLIP) and "last" pooling need every position; "first" needs position 0 alone."""
        cfg = self.cfg
        # Under torch.compile a data-dependent length would break the graph; the full length is used there.
        if not cfg.causal_mask or torch.compiler.is_compiling():
            return length
        if cfg.pool_type == "first":
            return min(1, length)
        if cfg.pool_type not in ("argmax", "eos") or positions is None or positions.numel() == 0:
            return length
        return int(positions.max()) + 1

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled, projected text embedding (B, D).

        With causal attention and end-token pooling, positions after the last end token of the batch
        cannot influence any pooled feature, so they are not computed: captions are short (~15 of 77
        tokens), which makes this several times faster than running the padded length, with the
        same result. (Rows without an eos pool at position 0, so they need nothing extra.) A bidirectional
        tower pooled at its last position (SigLIP) instead runs its last block for that position alone.
        """
        self._check_length(tokens)
        positions = self.pool_positions(tokens) if self.cfg.pool_type in ("argmax", "eos") else None
        keep = self._trim_length(positions, tokens.shape[1])
        tokens = tokens[:, :keep]
        return self._encode(self.token_embedding(tokens), tokens, positions, pooled_only=True)[0]

    def forward_embeddings(
        self,
        embeddings: torch.Tensor,
        tokens: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings (B, L, width) -> pooled, projected text embedding (B, D).

        The path prompt learners need (CoOp, Zhou et al. 2022; CoCoOp): some rows of the embedded prompt are
        learnable context vectors instead of `token_embedding(tokens)`. Positional embeddings, the attention
        mask and the pooling are applied here exactly as in `forward`, including its trimming after the
        batch's last end token, so `forward_embeddings(token_embedding(t), t) == forward(t)` bit for bit.
        The pooling position comes from `tokens` (B, L) (the ids of the prompt with placeholders where the
        context goes) or from `end_positions` (B,); a padding-mask tower (`pad_mask`) needs `tokens`.
        """
        cfg = self.cfg
        if embeddings.ndim != 3 or embeddings.shape[-1] != cfg.width:
            raise ValueError(
                f"token embeddings must have shape (batch, length, {cfg.width}) for this text tower (width "
                f"{cfg.width}); got {tuple(embeddings.shape)}"
            )
        batch, length = embeddings.shape[:2]
        if length > cfg.context_length:
            raise ValueError(
                f"token embeddings have length {length}, more than the model's context_length {cfg.context_length}"
            )
        if tokens is not None and tuple(tokens.shape) != (batch, length):
            raise ValueError(
                f"tokens must have shape (batch, length) = {(batch, length)} to match the embeddings; "
                f"got {tuple(tokens.shape)}"
            )
        end_pooled = cfg.pool_type in ("argmax", "eos")
        if end_positions is not None:
            if tokens is not None:
                raise ValueError("pass tokens or end_positions, not both: the pooling position would be ambiguous")
            if not end_pooled:
                raise ValueError(
                    f"end_positions given, but this text tower pools with pool_type {cfg.pool_type!r}, not at an "
                    "end token; pass tokens (or nothing) instead"
                )
            if tuple(end_positions.shape) != (batch,) or end_positions.dtype.is_floating_point:
                raise ValueError(
                    f"end_positions must be integer indices of shape ({batch},); got {end_positions.dtype} "
                    f"{tuple(end_positions.shape)}"
                )
            if batch and (int(end_positions.min()) < 0 or int(end_positions.max()) >= length):
                raise ValueError(f"end_positions must lie in [0, {length}); got {end_positions.tolist()}")
            positions = end_positions.to(device=embeddings.device, dtype=torch.long)
        elif tokens is not None:
            positions = self.pool_positions(tokens) if end_pooled else None
        elif end_pooled:
            raise ValueError(
                f"this text tower pools at the end token (pool_type {cfg.pool_type!r}): pass tokens (B, L) or "
                "end_positions (B,) to say where each prompt ends"
            )
        else:
            positions = None
        if cfg.pad_mask and tokens is None:
            raise ValueError("this text tower masks padding (pad_mask): pass tokens (B, L) so padding can be found")
        keep = self._trim_length(positions, length)
        kept_tokens = tokens[:, :keep] if tokens is not None else None
        return self._encode(embeddings[:, :keep], kept_tokens, positions, pooled_only=True)[0]
