"""Hugging Face transformers `AltCLIPModel` folders: config translation and key map, both ways.

AltCLIP (Chen et al. 2022, "AltCLIP: Altering the Language Encoder in CLIP for Extended Language
Capabilities") keeps CLIP's ViT image tower and replaces the text tower by XLM-RoBERTa. Its text feature
(transformers `AltCLIPTextModel` + `AltCLIPModel.get_text_features`) is: the encoder's last hidden states ->
`pre_LN` (LayerNorm) -> `transformation` (Linear with bias, hidden_size -> project_dim) -> the first token ->
`text_projection` (bias-free Linear, project_dim -> projection_dim). In clipforge that is an `HFTextTower`
with `hf_config` model_type "xlm-roberta" (plus AltCLIP's `project_dim`), `hf_pooler_type=
"cls_last_hidden_state_pooler"` and `hf_proj_type="altclip"`; the vision tower has a CLIPModel's keys.

The encoder's parameters are XLM-R's under `text_model.roberta.`. Layer names vary: BAAI/AltCLIP's file has
XLM-R's `encoder.layer.N` in the text tower and CLIP's `encoder.layers.N` in the vision tower, transformers 5
renames every `layer.` to `layers.` when it loads (its conversion mapping) and back to `layer.` when it saves.
So both spellings are accepted in both towers, read as `encoder.layers.N` (the names in error messages).
Reference: transformers `models/altclip/modeling_altclip.py` and `configuration_altclip.py`.

Writing (`write_hf_dir`, hf_chinese_clip.write_hf_text_tower_dir) inverts the reader's plan; the text layers are
written `encoder.layer.N`, as transformers' save_pretrained writes them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..models.config import CLIPConfig, ConfigError, TextConfig
from . import hf
from .hf_chinese_clip import encoder_fields, hf_two_tower_to_clipforge, read_two_tower_dir, two_tower_config

MODEL_TYPE = "altclip"

# transformers' AltCLIPTextConfig defaults (5.x), used for keys a config.json omits.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 250002,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "project_dim": 768,
}
# The files' `encoder.layer.N.` spelling (either tower) -> the in-memory `encoder.layers.N.` one.
_FILE_LAYERS = re.compile(r"(^|\.)encoder\.layer\.(\d+)\.")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


def config_from_hf_altclip(hf_config: Mapping[str, Any]) -> CLIPConfig:
    """Translate a transformers `AltCLIPModel` config.json (as a dict) into a `CLIPConfig`."""
    if hf_config.get("model_type") != MODEL_TYPE:
        raise ConfigError(f"config.json has model_type={hf_config.get('model_type')!r}; expected {MODEL_TYPE!r}")
    tc = hf._sub_config(hf_config, "text_config")
    fields = encoder_fields(tc, TEXT_DEFAULTS, "xlm-roberta", extra=("project_dim",))
    if type(fields["project_dim"]) is not int or fields["project_dim"] <= 0:
        raise ConfigError(f"text_config.project_dim={fields['project_dim']!r} is not a positive int")
    pad = fields.get("pad_token_id", 1)
    text = TextConfig(
        # XLM-R position ids start after the pad id, so pad_id + 1 rows are never used by a token
        context_length=fields["max_position_embeddings"] - (pad if type(pad) is int else 1) - 1,
        hf_config=fields,
        hf_pooler_type="cls_last_hidden_state_pooler",  # projection_state[:, 0]
        hf_proj_type="altclip",  # pre_LN -> transformation -> text_projection
    )
    return two_tower_config(hf_config, text)


def _altclip_text_key(cf: str) -> str | None:
    """clipforge text key -> AltCLIPModel key."""
    if cf.startswith("text.transformer."):
        rest = _LAYER.sub(r"encoder.layers.\1.", cf.removeprefix("text.transformer."))  # XLMRobertaModel's
        return "text_model.roberta." + rest
    return {
        "text.proj.0.weight": "text_model.pre_LN.weight",
        "text.proj.0.bias": "text_model.pre_LN.bias",
        "text.proj.1.weight": "text_model.transformation.weight",
        "text.proj.1.bias": "text_model.transformation.bias",
        "text.proj.2.weight": "text_projection.weight",
    }.get(cf)


def hf_altclip_to_clipforge(sd: Mapping[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """transformers `AltCLIPModel` state dict -> clipforge `CLIP` state dict for `cfg` (dtypes kept).

    Raises `CheckpointError` naming every missing or unexpected key and each shape that disagrees with `cfg`.
    """
    sd = {_FILE_LAYERS.sub(r"\1encoder.layers.\2.", key, count=1): value for key, value in sd.items()}
    return hf_two_tower_to_clipforge(sd, cfg, _altclip_text_key, "HF AltCLIP")


def read_hf_altclip_dir(
    path: str | os.PathLike, *, allow_unsafe_pickle: bool = False
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Read a transformers `AltCLIPModel` folder -> (config, clipforge state dict) for `CLIP.load_state_dict`.

    `allow_unsafe_pickle` is the opt-in for a trusted `pytorch_model.bin` that `weights_only` refuses."""
    return read_two_tower_dir(path, config_from_hf_altclip, "AltCLIPModel", allow_unsafe_pickle)


# ---------------------------------------------------------------------------------------------- writing

_TEXT_LAYERS = re.compile(r"^text_model\.roberta\.encoder\.layers\.(\d+)\.")


def altclip_refusal(cfg: CLIPConfig) -> str | None:
    """Why an AltCLIPModel folder cannot hold `cfg` (None when it can)."""
    t = cfg.text
    if not t.is_hf or t.hf_config.get("model_type") not in ("xlm-roberta", "roberta") or "project_dim" not in (
        t.hf_config
    ):
        return "AltCLIP's projection on a text encoder other than XLM-R with a project_dim"
    if t.hf_pooler_type != "cls_last_hidden_state_pooler":
        return f"its text tower pools {t.hf_pooler_type!r}; AltCLIPModel takes the first token"
    return None


def clipforge_to_hf_altclip(sd: Mapping[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """clipforge `CLIP` state dict -> transformers `AltCLIPModel` state dict: the reader's plan, inverted, with the
    text encoder's layers spelled `encoder.layer.N` as XLM-R's files (and transformers' save_pretrained) have them."""
    from .hf_chinese_clip import _plan

    out = hf.plan_to_hf(sd, _plan(cfg, _altclip_text_key))
    return {_TEXT_LAYERS.sub(r"text_model.roberta.encoder.layer.\1.", key, count=1): v for key, v in out.items()}
