"""open_clip checkpoints with a Hugging Face text tower (`text_cfg.hf_model_name`): config and key clean-up.

open_clip's `CustomTextCLIP` keeps such a tower under `text.` with the names clipforge's `HFTextTower` uses
(`text.transformer.*` for the encoder, `text.proj.*` for the projection), so tensors load unchanged. What
differs: open_clip's config names the encoder only by hub name (it downloads its config.json), while clipforge
stores that config's fields (`TextConfig.hf_config`) so a model builds offline; and checkpoints saved with
transformers < 4.31 (LAION's 2022 XLM-R models) carry the encoder's `position_ids` / `token_type_ids` buffers,
which newer transformers no longer keep in the state dict.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.config import ConfigError, TextConfig

# Buffers old transformers versions saved with the weights; they hold aranges / zeros, not learned values.
_STALE_BUFFERS = ("text.transformer.embeddings.position_ids", "text.transformer.embeddings.token_type_ids")


def text_config_from_openclip(text_cfg: dict[str, Any], hf_config: dict[str, Any]) -> TextConfig:
    """open_clip's `text_cfg` with `hf_model_name` + the encoder's config.json fields -> a clipforge TextConfig."""
    if not text_cfg.get("hf_model_name"):
        raise ConfigError("open_clip text_cfg has no hf_model_name: not a Hugging Face text tower")
    if not isinstance(hf_config, dict) or not isinstance(hf_config.get("model_type"), str):
        raise ConfigError(
            f"the config.json of {text_cfg['hf_model_name']!r} must be a JSON object with a \"model_type\""
        )
    proj = text_cfg.get("hf_proj_type", "mlp")
    return TextConfig(
        context_length=text_cfg.get("context_length", 77),  # the tokenizer's length (open_clip's get_tokenizer)
        hf_config=dict(hf_config),
        hf_model_name=text_cfg["hf_model_name"],
        hf_tokenizer_name=text_cfg.get("hf_tokenizer_name"),
        hf_pooler_type=text_cfg.get("hf_pooler_type", "mean_pooler"),
        hf_proj_type="none" if proj is None else proj,
    )


def clean_hf_text_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without the stale encoder buffers older transformers versions saved; tensors not copied."""
    return {key: value for key, value in state_dict.items() if key not in _STALE_BUFFERS}
