"""open_clip checkpoints with a Hugging Face text tower (`text_cfg.hf_model_name`): config and key clean-up.

open_clip's `CustomTextCLIP` keeps such a tower under `text.` with the names clipforge's `HFTextTower` uses
(`text.transformer.*` for the encoder, `text.proj.*` for the projection), so tensors load unchanged. What
differs: open_clip's config names the encoder only by hub name (it downloads its config.json), while clipforge
stores that config's fields (`TextConfig.hf_config`) so a model builds offline; and checkpoints saved with
transformers < 4.31 (LAION's 2022 XLM-R models) carry the encoder's `position_ids` / `token_type_ids` buffers,
which newer transformers no longer keep in the state dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..models.config import ConfigError, TextConfig

# Buffers old transformers versions saved with the weights; they hold aranges / zeros / NLLB's fixed sinusoidal
# position table, not learned values.
_STALE_BUFFERS = (
    "text.transformer.embeddings.position_ids",
    "text.transformer.embeddings.token_type_ids",
    "text.transformer.embed_positions.weights",
)


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


# Top-level key of an `open_clip_config.json` written by clipforge that keeps the encoder's config.json fields,
# so the folder loads offline; open_clip reads only `model_cfg` and `preprocess_cfg` and ignores it.
HF_TEXT_CONFIG_KEY = "hf_text_config"


def text_cfg_to_openclip(text: TextConfig) -> dict[str, Any]:
    """A clipforge HF TextConfig -> open_clip's `text_cfg` (the encoder is named by `hf_model_name`)."""
    if not text.hf_model_name:
        raise ConfigError(
            "open_clip names a Hugging Face text encoder by text_cfg.hf_model_name (a hub name or local folder), "
            "and this config has none: set text.hf_model_name (e.g. \"xlm-roberta-base\") before exporting"
        )
    tokenizer = text.hf_tokenizer_name or text.hf_model_name
    if tokenizer == "." and not Path(text.hf_model_name).expanduser().is_absolute():
        # the tokenizer files lie beside this config (weights/native.py THIS_FOLDER): open_clip reads a local-dir:
        # folder's own files whatever this names, and a hub copy (hf-hub:) needs a hub id here, never "."
        tokenizer = text.hf_model_name
    cfg: dict[str, Any] = {
        "hf_model_name": text.hf_model_name,
        "hf_tokenizer_name": tokenizer,
        "hf_model_pretrained": False,  # the checkpoint holds the encoder's weights; nothing to fetch
        "hf_pooler_type": text.hf_pooler_type,
        "hf_proj_type": text.hf_proj_type,
        "context_length": text.context_length,
    }
    return cfg


def is_encoder_config(data: Any) -> bool:
    """Whether a parsed config.json describes a text encoder clipforge builds (not, e.g., a CLIPModel's)."""
    from ..models.hf_text import SUPPORTED_MODEL_TYPES

    return isinstance(data, dict) and data.get("model_type") in SUPPORTED_MODEL_TYPES


def named_hf_config(hf_model_name: str) -> dict[str, Any] | None:
    """The encoder fields a named clipforge config stores for `hf_model_name` (e.g. "xlm-roberta-base"), or None.

    The named configs (models/configs/) keep a copy of each encoder's config.json, so LAION's multilingual
    checkpoints build without fetching the encoder's config from the hub.
    """
    from ..models.registry import get_model_config, list_models

    for name in list_models():
        text = get_model_config(name).text
        if text.hf_config is not None and text.hf_model_name == hf_model_name:
            return dict(text.hf_config)
    return None


_CONFIG_JSON_MAX_BYTES = 1 << 20  # an encoder's config.json is a few hundred bytes


def _read_encoder_config(path: Path) -> dict[str, Any] | None:
    """The parsed config.json at `path` when it describes a supported text encoder, else None."""
    from ..safeio import read_text_file

    if not path.is_file():
        return None
    data = json.loads(read_text_file(path, _CONFIG_JSON_MAX_BYTES, what="encoder config.json"))
    return data if is_encoder_config(data) else None


def find_hf_text_config(
    data: dict[str, Any], folder: Path, cache_dir: str | Path | None = None
) -> tuple[dict[str, Any], str]:
    """(the encoder's config.json fields, where they came from) for an open_clip config with `hf_model_name`.

    `data` is the whole `open_clip_config.json`, `folder` the checkpoint folder. Looked for in order: the copy
    clipforge stores in the file (HF_TEXT_CONFIG_KEY); a config.json of that encoder in the checkpoint folder;
    `hf_model_name` as a local folder; a named clipforge config of that encoder (stored copies of
    xlm-roberta-base, xlm-roberta-large, roberta-base); the hub repository `hf_model_name` (config.json only).
    """
    name = data.get("model_cfg", data)["text_cfg"]["hf_model_name"]
    stored = data.get(HF_TEXT_CONFIG_KEY)
    if stored is not None:
        if not is_encoder_config(stored):
            raise ConfigError(
                f"{HF_TEXT_CONFIG_KEY} must be the encoder's config.json fields with a supported \"model_type\"; "
                f"got {str(stored)[:120]}"
            )
        return dict(stored), HF_TEXT_CONFIG_KEY
    found = _read_encoder_config(folder / "config.json")
    if found is not None:
        return found, str(folder / "config.json")
    local = Path(name).expanduser()
    if local.is_dir():
        found = _read_encoder_config(local / "config.json")
        if found is not None:
            return found, str(local / "config.json")
    found = named_hf_config(name)
    if found is not None:
        return found, f"clipforge's stored copy for {name}"
    if not local.is_absolute() and name.count("/") <= 1:
        from .hub import download_optional

        path = download_optional(name, "config.json", cache=cache_dir)
        found = _read_encoder_config(path) if path is not None else None
        if found is not None:
            return found, f"hub model {name}"
    raise ConfigError(
        f"text_cfg.hf_model_name={name!r}: cannot find that encoder's config.json (not stored in "
        f"{HF_TEXT_CONFIG_KEY}, not in {folder}, not a local folder, no named clipforge config, not on the hub or "
        f"in its cache); put the encoder's config.json beside the checkpoint or set hf_model_name to a folder "
        "holding it"
    )


# Files of a Hugging Face tokenizer that open_clip's hub folders carry beside the weights.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)


def has_tokenizer(folder: Path) -> bool:
    """Whether `folder` holds a fast tokenizer (tokenizer.json), as open_clip's hub folders of HF-text models do."""
    return (folder / "tokenizer.json").is_file()
