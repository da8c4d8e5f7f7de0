"""Hugging Face text towers: XLM-RoBERTa, RoBERTa, BERT, NLLB, mT5 inside a CLIP (open_clip's `HFTextEncoder`).

Multilingual CLIPs (LAION's xlm-roberta-base-ViT-B-32, xlm-roberta-large-ViT-H-14; Carlsson et al. 2022's
M-CLIP recipe) replace CLIP's causal text transformer by a pretrained bidirectional encoder from `transformers`,
then pool its last hidden states (mean over non-padding tokens, or the CLS token) and project them into the joint
space with a bias-free Linear or a two-layer MLP with GELU. This module builds that tower from `TextConfig` alone:
the encoder's architecture is the `hf_config` dict stored in the clipforge config (what the model's `config.json`
says), so nothing is downloaded to build a model (`AutoConfig.for_model(model_type, **fields)`).

Parameter names match open_clip's (`transformer.*`, `proj.*` under `text.`), so an open_clip checkpoint's
text keys load unchanged. `transformers` is imported only when such a tower is built: models with CLIP's own
text tower never need it.

Encoder-decoder families (NLLB's `m2m_100`, `mt5`, `t5`): open_clip builds the whole translation model and keeps
its `.encoder`; clipforge builds that encoder class alone (`M2M100Encoder`, `MT5Stack` / `T5Stack` with the
encoder's `is_decoder=False, use_cache=False`), which has the same parameter names and skips allocating a decoder
as large as the encoder (mt5-xl's is 1.7B parameters).
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import torch
from torch import nn

from .config import MAX_LAYERS, ConfigError, TextConfig

# Which config attribute holds the hidden width, per architecture family (open_clip's hf_configs.arch_dict).
_WIDTH_FIELD = {
    "roberta": "hidden_size",
    "xlm-roberta": "hidden_size",
    "bert": "hidden_size",
    "m2m_100": "d_model",
    "mt5": "d_model",
    "t5": "d_model",
}
# Encoder-decoder families -> (module, class) of the encoder open_clip keeps (`AutoModel.from_config(c).encoder`).
_ENCODER_CLASSES = {
    "m2m_100": ("transformers.models.m2m_100.modeling_m2m_100", "M2M100Encoder"),
    "mt5": ("transformers.models.mt5.modeling_mt5", "MT5Stack"),
    "t5": ("transformers.models.t5.modeling_t5", "T5Stack"),
}
# (token embedding attribute, layer list attribute) per family, for `lock` (open_clip's arch_dict names).
_LOCK_GROUPS = {
    "m2m_100": ("embed_tokens", "layers"),
    "mt5": ("embed_tokens", "block"),
    "t5": ("embed_tokens", "block"),
}
_RELATIVE_POSITIONS = ("mt5", "t5")  # relative position buckets: no position table, any length runs
SUPPORTED_MODEL_TYPES = tuple(sorted(_WIDTH_FIELD))
# Layer counts of the encoder per family (BERT-likes, M2M100, T5/mT5).
_DEPTH_FIELDS = ("num_hidden_layers", "encoder_layers", "num_layers")


def import_transformers():
    """The `transformers` module, or an ImportError saying how to install it (it is optional for clipforge)."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - the test environment has transformers
        raise ImportError(
            "this model's text tower is a Hugging Face transformer (text.hf_config); it needs the transformers "
            "package: pip install transformers"
        ) from exc
    return transformers


def hf_architecture_config(cfg: TextConfig):
    """`TextConfig.hf_config` -> a transformers `PretrainedConfig`, built offline (`AutoConfig.for_model`)."""
    fields = dict(cfg.hf_config or {})
    model_type = fields.pop("model_type", None)
    if model_type not in _WIDTH_FIELD:
        raise ConfigError(
            f"text.hf_config.model_type={model_type!r} is not a supported Hugging Face text architecture; "
            f"supported: {list(SUPPORTED_MODEL_TYPES)} (copy the fields of the model's config.json into text.hf_config)"
        )
    for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        fields.pop(key, None)  # bookkeeping fields of a saved config.json, not architecture
    if "auto_map" in fields:  # only transformers' own classes are built: never code named by a config
        raise ConfigError(
            f"text.hf_config has an auto_map ({fields['auto_map']!r}): that names custom model code, which clipforge "
            f"never runs; supported are transformers' own {list(SUPPORTED_MODEL_TYPES)} (remove auto_map if the model "
            "is one of them)"
        )
    for key in _DEPTH_FIELDS:  # each layer costs time even on the meta device (see config.MAX_LAYERS)
        depth = fields.get(key)
        if depth is not None and not (type(depth) is int and 0 < depth <= MAX_LAYERS):
            raise ConfigError(f"text.hf_config.{key}={depth!r} must be a positive int of at most {MAX_LAYERS}")
    transformers = import_transformers()
    try:
        return transformers.AutoConfig.for_model(model_type, **fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"text.hf_config cannot build a {model_type} config: {exc}") from exc


def build_encoder(config, with_pooler: bool) -> nn.Module:
    """The transformers encoder open_clip's `HFTextEncoder` holds as `.transformer`, for a built `config`.

    Encoder-only families come from `AutoModel` (with BERT's pooling layer when `with_pooler`); for
    encoder-decoder families only the encoder class is built, configured as its parent model configures it.
    """
    target = _ENCODER_CLASSES.get(config.model_type)
    if target is None:
        return import_transformers().AutoModel.from_config(config, add_pooling_layer=with_pooler)
    cls = getattr(importlib.import_module(target[0]), target[1])
    config = copy.deepcopy(config)
    config.use_cache = False  # an encoder caches nothing (and checkpointing warns about a cache setting)
    if config.model_type in _RELATIVE_POSITIONS:  # as MT5Model / T5Model configure their encoder stack
        config.is_decoder = False
    return cls(config)


def _own_view_outputs(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook of each encoder layer: a returned tensor that is a view is replaced by its copy.

    (m)T5's first block returns its relative position bias as a permuted view (1, heads, L, L) of the bias table's
    lookup; FSDP2 warns of a unit returning a view, since an in-place op on it would skip the unit's all-gather. The
    copy is small (no batch dimension) and leaves the numbers unchanged; other families return no views (no copy).
    """
    if isinstance(output, torch.Tensor):
        return output.clone() if output._base is not None else None
    if isinstance(output, tuple) and any(isinstance(t, torch.Tensor) and t._base is not None for t in output):
        return tuple(t.clone() if isinstance(t, torch.Tensor) and t._base is not None else t for t in output)
    return None


class HFTextTower(nn.Module):
    """Token ids (B, L) -> text embeddings (B, output_dim) through a Hugging Face encoder.

    Attention mask: every position whose id is not the encoder's `pad_token_id` (open_clip's rule).
    Pooling (`TextConfig.hf_pooler_type`): "mean_pooler" averages the last hidden states over that mask;
    "cls_last_hidden_state_pooler" takes position 0; "cls_pooler" takes the encoder's own pooler output
    (dense + tanh over position 0, BERT's), so that encoder is built with its pooling layer.
    Projection (`hf_proj_type`): "mlp" is Linear(d, (d + D) // 2) -> GELU -> Linear(.., D), both without bias;
    "linear" a bias-free Linear(d, D); "none" no projection (the encoder width must equal D); "altclip" is
    LayerNorm(d) -> Linear(d, P) with bias -> bias-free Linear(P, D), P = hf_config["project_dim"] (AltCLIP).
    """

    def __init__(self, cfg: TextConfig, output_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.output_dim = output_dim
        self.hf_config = hf_architecture_config(cfg)
        self.transformer = build_encoder(self.hf_config, with_pooler=cfg.hf_pooler_type == "cls_pooler")
        for unit in self.shard_units():  # FSDP2's units return no views (see _own_view_outputs)
            unit.register_forward_hook(_own_view_outputs)
        self.pad_id = int(self.hf_config.pad_token_id if self.hf_config.pad_token_id is not None else 0)
        width = int(getattr(self.hf_config, _WIDTH_FIELD[self.hf_config.model_type]))
        self.width = width
        if cfg.hf_proj_type == "mlp":
            hidden = (width + output_dim) // 2
            self.proj = nn.Sequential(
                nn.Linear(width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, output_dim, bias=False)
            )
        elif cfg.hf_proj_type == "linear":
            self.proj = nn.Linear(width, output_dim, bias=False)
        elif cfg.hf_proj_type == "altclip":
            # AltCLIPTextModel's pre_LN and `transformation` (Linear with bias to project_dim), then AltCLIPModel's
            # bias-free text_projection; the LayerNorm acts per token, so applying it after pooling is the same.
            project_dim = int(getattr(self.hf_config, "project_dim", width))
            self.proj = nn.Sequential(
                nn.LayerNorm(width, eps=float(self.hf_config.layer_norm_eps)),
                nn.Linear(width, project_dim),
                nn.Linear(project_dim, output_dim, bias=False),
            )
        else:
            if width != output_dim:
                raise ConfigError(
                    f"text.hf_proj_type='none' needs the encoder width ({width}) to equal embed_dim ({output_dim}); "
                    "use 'linear' or 'mlp'"
                )
            self.proj = nn.Identity()

    @property
    def max_length(self) -> int | None:
        """Longest token sequence the encoder's position table holds (RoBERTa-family positions start after pad);
        None for (m)T5, whose relative position buckets take any length (open_clip sets no limit either)."""
        if self.hf_config.model_type in _RELATIVE_POSITIONS:
            return None
        positions = int(getattr(self.hf_config, "max_position_embeddings", self.cfg.context_length))
        if self.hf_config.model_type in ("roberta", "xlm-roberta"):
            positions -= self.pad_id + 1  # position ids are pad_id + 1 + index
        return positions

    @property
    def token_embedding(self) -> nn.Embedding:
        """The encoder's word embedding table (prompt learners read it as `text.token_embedding`)."""
        return self.transformer.get_input_embeddings()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder layer in backward (transformers' gradient checkpointing)."""
        model = self.transformer
        # transformers 5 renamed it activation checkpointing (the old names warn); 4.x has only the old ones.
        if hasattr(model, "activation_checkpointing_enable"):
            if enable:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.activation_checkpointing_disable()
        elif enable:  # pragma: no cover - transformers 4.x
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:  # pragma: no cover - transformers 4.x
            model.gradient_checkpointing_disable()

    def shard_units(self) -> list[nn.Module]:
        """The FSDP2 units (train/sharding.py): every encoder layer (BertLayer, XLMRobertaLayer, M2M100EncoderLayer,
        T5Block: found under the family's own list name, as `lock` finds them)."""
        _, layers_attr = _LOCK_GROUPS.get(self.hf_config.model_type, ("embeddings", "layer"))
        return list(getattr(getattr(self.transformer, "encoder", self.transformer), layers_attr))

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the encoder except its last `unlocked_layers` layers (open_clip's `HFTextEncoder.lock`).

        The groups are [embeddings, layer 0, ..., layer N-1]; the projection always stays trainable, as in
        open_clip. With `freeze_layer_norm=False` the LayerNorms of frozen groups stay trainable.
        """
        if isinstance(unlocked_layers, bool) or not isinstance(unlocked_layers, int) or unlocked_layers < 0:
            raise ValueError(f"unlocked_layers must be a non-negative int, got {unlocked_layers!r}")
        embed_attr, layers_attr = _LOCK_GROUPS.get(self.hf_config.model_type, ("embeddings", "layer"))
        encoder = getattr(self.transformer, "encoder", self.transformer)
        groups = [getattr(self.transformer, embed_attr), *getattr(encoder, layers_attr)]
        frozen = groups[: len(groups) - unlocked_layers] if unlocked_layers else [self.transformer]
        self.requires_grad_(True)  # the whole state is set here, so locking twice does not depend on the first
        for module in frozen:
            for name, param in module.named_parameters():
                param.requires_grad = (not freeze_layer_norm) and "LayerNorm" in name.split(".")

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, length); got {tuple(tokens.shape)}")
        if self.max_length is not None and tokens.shape[1] > self.max_length:
            raise ValueError(
                f"token sequence length {tokens.shape[1]} exceeds this text encoder's {self.max_length} positions; "
                "tokenize with the model's tokenizer (get_tokenizer(model)) to truncate"
            )

    def _pool(self, out: Any, mask: torch.Tensor) -> torch.Tensor:
        """Encoder output -> pooled features (B, width); `mask` (B, L) is 1 on real tokens."""
        pool = self.cfg.hf_pooler_type
        hidden = out.last_hidden_state  # (B, L, width)
        if pool == "mean_pooler":
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            return (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        if pool == "cls_pooler" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output
        return hidden[:, 0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> projected pooled embedding (B, D)."""
        self._check_tokens(tokens)
        mask = (tokens != self.pad_id).long()  # (B, L)
        out = self.transformer(input_ids=tokens, attention_mask=mask)
        return self.proj(self._pool(out, mask))

    def forward_embeddings(
        self,
        embeddings: torch.Tensor,
        tokens: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Word embeddings (B, L, width) -> projected pooled embedding (B, D), for prompt learning.

        The padding mask comes from `tokens` (B, L) (all positions count when None). Pooling is by mask or
        CLS, never at an end token, so `end_positions` is refused. Position ids are counted from the start
        as for right-padded ids, so `forward_embeddings(token_embedding(t), t)` equals `forward(t)` for the
        tokenizer's (right-padded) rows.
        """
        if end_positions is not None:
            raise ValueError(
                f"end_positions given, but this Hugging Face text tower pools with {self.cfg.hf_pooler_type!r}, "
                "not at an end token; pass tokens (or nothing) instead"
            )
        if embeddings.ndim != 3 or embeddings.shape[-1] != self.width:
            raise ValueError(
                f"token embeddings must have shape (batch, length, {self.width}); got {tuple(embeddings.shape)}"
            )
        batch, length = embeddings.shape[:2]
        if tokens is not None and tuple(tokens.shape) != (batch, length):
            raise ValueError(
                f"tokens must have shape {(batch, length)} to match the embeddings; got {tuple(tokens.shape)}"
            )
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"token embeddings have length {length}, more than the encoder's {self.max_length}")
        if tokens is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeddings.device)
        else:
            mask = (tokens != self.pad_id).long()
        out = self.transformer(inputs_embeds=embeddings, attention_mask=mask)
        return self.proj(self._pool(out, mask))
