"""Hugging Face transformers `SiglipModel` folders: config translation and key map, both ways.

SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training") is a CLIP-shaped two-tower model:
a ViT without class token or pre-LayerNorm (patch convolution with bias), pooled by a multihead attention
pooling head after its final LayerNorm and not projected; a bidirectional text transformer pooled at the
LAST position and projected by a Linear with bias; a learned logit scale and bias. clipforge expresses it
with config fields (vision `pool_type="map"`, `class_token=False`, `patch_bias`, `no_ln_pre`, `no_proj`;
text `causal_mask=False`, `pool_type="last"`, `proj_bias`; `act="gelu_tanh"`), so one `CLIP` class serves it.

A folder holds `config.json` (model_type "siglip", with `text_config` and `vision_config`) and
`model.safetensors` (or the other weight files transformers writes). Reference: transformers
`models/siglip/modeling_siglip.py` and `configuration_siglip.py`.

SigLIP 2 (`Siglip2Model`, model_type "siglip2") feeds NaFlex variable-resolution patch sequences with
resized position grids and a patch Linear instead of a convolution; its fixed-resolution use is read by
hf_siglip2.py (into this module's config and key map), not by this reader (see `check_model_type`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..models.clip import CLIP
from ..models.config import CLIPConfig, ConfigError, PreprocessConfig, TextConfig, VisionConfig
from .formats import CheckpointError, reading_config
from .hf import (
    _COPY,
    _QKV,
    _SCALAR,
    CONFIG_NAME,
    _mlp_ratio,
    _number,
    _square,
    _sub_config,
    plan_to_clipforge,
    plan_to_hf,
    read_hf_state_dict,
    write_weights_and_config,
)
from .hf_processor import PREPROCESSOR_NAME, read_preprocessor_config
from .native import json_object

MODEL_TYPE = "siglip"

# transformers' SiglipTextConfig / SiglipVisionConfig defaults (5.x), used for keys a config.json omits.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 64,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "pad_token_id": 1,
    "eos_token_id": 49407,
}
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
# SiglipModel initialises both at random; clipforge's SigLIP configs start from the paper's values.
INIT_LOGIT_SCALE = math.log(10.0)
INIT_LOGIT_BIAS = -10.0
# SigLIP's image processor: squash to the model size, bilinear, mean = std = 0.5.
SIGLIP_PREPROCESS = {
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bilinear",
    "resize_mode": "squash",
}

_ACTIVATIONS = {
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "gelu": "gelu",
    "gelu_python": "gelu",
    "quick_gelu": "quick_gelu",
}
_HF_ACT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}


def check_model_type(model_type: Any, where: str = "config.json") -> None:
    """ConfigError unless `model_type` is SigLIP's; SigLIP 2 is named as unsupported, with SigLIP as the closest."""
    if model_type == MODEL_TYPE:
        return
    if model_type == "siglip2":
        raise ConfigError(
            f"{where} has model_type='siglip2' (SigLIP 2, NaFlex variable-resolution patches): this SiglipModel "
            "reader does not take it; read the folder with clipforge.load_model (clipforge.weights.hf_siglip2 reads "
            "Siglip2Model folders at their fixed square resolution); the closest supported family is SigLIP"
        )
    raise ConfigError(f"{where} has model_type={model_type!r}; this reader takes transformers SiglipModel ('siglip')")


def _activation(section: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> str:
    name = section.get("hidden_act", defaults["hidden_act"])
    if name not in _ACTIVATIONS:
        raise ConfigError(f"{where}.hidden_act={name!r} is not supported; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def config_from_hf_siglip(hf_config: Mapping[str, Any]) -> CLIPConfig:
    """Translate a transformers `SiglipModel` config.json (as a dict) into a `CLIPConfig`."""
    check_model_type(hf_config.get("model_type"))
    tc, vc = _sub_config(hf_config, "text_config"), _sub_config(hf_config, "vision_config")
    if _number(vc, "num_channels", VISION_DEFAULTS, "vision_config") != 3:
        raise ConfigError("vision_config.num_channels must be 3: clipforge's image tower takes RGB")
    if vc.get("vision_use_head", True) is not True:
        raise ConfigError(
            "vision_config.vision_use_head=false: a SigLIP vision tower without its pooling head has no image "
            "embedding; clipforge reads SiglipModel checkpoints with the head"
        )
    v_width = _number(vc, "hidden_size", VISION_DEFAULTS, "vision_config")
    vision = VisionConfig(
        image_size=_square(vc.get("image_size", VISION_DEFAULTS["image_size"]), "image_size"),
        patch_size=_square(vc.get("patch_size", VISION_DEFAULTS["patch_size"]), "patch_size"),
        layers=_number(vc, "num_hidden_layers", VISION_DEFAULTS, "vision_config"),
        width=v_width,
        heads=_number(vc, "num_attention_heads", VISION_DEFAULTS, "vision_config"),
        mlp_ratio=_mlp_ratio(_number(vc, "intermediate_size", VISION_DEFAULTS, "vision_config"), v_width, "vision"),
        act=_activation(vc, VISION_DEFAULTS, "vision_config"),
        layer_norm_eps=float(_number(vc, "layer_norm_eps", VISION_DEFAULTS, "vision_config", float)),
        pool_type="map",
        class_token=False,
        patch_bias=True,
        no_ln_pre=True,
        no_proj=True,
    )
    t_width = _number(tc, "hidden_size", TEXT_DEFAULTS, "text_config")
    projection = tc.get("projection_size") or t_width
    if projection != v_width:
        raise ConfigError(
            f"text_config.projection_size={projection} differs from vision_config.hidden_size={v_width}: SigLIP "
            "compares the text projection with the (unprojected) image feature, so they must be equal"
        )
    pad = tc.get("pad_token_id", TEXT_DEFAULTS["pad_token_id"])
    eos = tc.get("eos_token_id", TEXT_DEFAULTS["eos_token_id"])
    text = TextConfig(
        context_length=_number(tc, "max_position_embeddings", TEXT_DEFAULTS, "text_config"),
        vocab_size=_number(tc, "vocab_size", TEXT_DEFAULTS, "text_config"),
        width=t_width,
        heads=_number(tc, "num_attention_heads", TEXT_DEFAULTS, "text_config"),
        layers=_number(tc, "num_hidden_layers", TEXT_DEFAULTS, "text_config"),
        mlp_ratio=_mlp_ratio(_number(tc, "intermediate_size", TEXT_DEFAULTS, "text_config"), t_width, "text"),
        act=_activation(tc, TEXT_DEFAULTS, "text_config"),
        layer_norm_eps=float(_number(tc, "layer_norm_eps", TEXT_DEFAULTS, "text_config", float)),
        causal_mask=False,
        pool_type="last",
        pad_id=pad if type(pad) is int else TextConfig.pad_id,
        eos_id=eos if type(eos) is int else TextConfig.eos_id,
        proj_bias=True,
    )
    return CLIPConfig(
        embed_dim=v_width,
        vision=vision,
        text=text,
        init_logit_scale=INIT_LOGIT_SCALE,
        init_logit_bias=INIT_LOGIT_BIAS,
        preprocess=PreprocessConfig(size=vision.image_size, **SIGLIP_PREPROCESS),
    )


def is_siglip(cfg: CLIPConfig) -> bool:
    """Whether `cfg` is SigLIP-shaped (an attention-pooled ViT without class token): written as a SiglipModel."""
    return not cfg.vision.is_resnet and cfg.vision.pool_type == "map"


def _refusals(cfg: CLIPConfig) -> list[str]:
    v, t = cfg.vision, cfg.text
    checks = [
        (v.is_resnet, "a ModifiedResNet image tower"),
        (v.pool_type != "map", f"image pooling {v.pool_type!r} (SiglipModel pools with its attention head, 'map')"),
        (v.class_token, "a class token (SigLIP has none)"),
        (not v.patch_bias, "a patch embedding without bias (SigLIP's has one)"),
        (not v.no_ln_pre, "a LayerNorm before the image transformer (SigLIP has none)"),
        (not v.no_proj, "an image projection (SigLIP's image feature is unprojected)"),
        (v.ls_init_value is not None or t.ls_init_value is not None, "LayerScale"),
        (v.act not in _HF_ACT or t.act not in _HF_ACT, "an activation transformers cannot name"),
        (t.causal_mask or t.pad_mask, "a causal or padding-masked text tower (SigLIP's attends to all positions)"),
        (t.pool_type != "last", f"text pooling {t.pool_type!r} (SigLIP pools the last position)"),
        (not t.proj_bias, "a text projection without bias"),
        (cfg.init_logit_bias is None, "no logit_bias (SigLIP has one)"),
    ]
    return [why for refused, why in checks if refused]


def config_to_hf_siglip(cfg: CLIPConfig) -> dict[str, Any]:
    """A transformers `SiglipModel` config.json (as a dict) for `cfg`; `ConfigError` if SigLIP cannot express it."""
    refused = _refusals(cfg)
    if refused:
        raise ConfigError("transformers' SiglipModel cannot express this model: it has " + "; ".join(refused))
    v, t = cfg.vision, cfg.text
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": v.width,
        "intermediate_size": int(v.width * v.mlp_ratio),
        "num_hidden_layers": v.layers,
        "num_attention_heads": v.num_heads,
        "num_channels": 3,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "hidden_act": _HF_ACT[v.act],
        "layer_norm_eps": v.layer_norm_eps,
        "vision_use_head": True,
    }
    text = {
        "model_type": "siglip_text_model",
        "vocab_size": t.vocab_size,
        "hidden_size": t.width,
        "intermediate_size": int(t.width * t.mlp_ratio),
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.num_heads,
        "max_position_embeddings": t.context_length,
        "hidden_act": _HF_ACT[t.act],
        "layer_norm_eps": t.layer_norm_eps,
        "projection_size": cfg.embed_dim,
        "pad_token_id": t.pad_id,
        "eos_token_id": t.eos_id,
    }
    return {"architectures": ["SiglipModel"], "model_type": MODEL_TYPE, "text_config": text, "vision_config": vision}


# ---------------------------------------------------------------------------------------------- key map


def _key_map(cfg: CLIPConfig) -> list[tuple[str, tuple[str, ...], str]]:
    """(clipforge key, HF key(s), how) for every parameter of a SigLIP-shaped `cfg`."""
    entries: list[tuple[str, tuple[str, ...], str]] = [
        ("logit_scale", ("logit_scale",), _SCALAR),
        ("logit_bias", ("logit_bias",), _SCALAR),
    ]

    def norm(cf: str, hf: str) -> None:  # weight + bias pairs: LayerNorms and Linears
        entries.append((f"{cf}.weight", (f"{hf}.weight",), _COPY))
        entries.append((f"{cf}.bias", (f"{hf}.bias",), _COPY))

    def blocks(cf: str, hf: str, layers: int) -> None:
        for i in range(layers):
            c, h = f"{cf}.transformer.resblocks.{i}", f"{hf}.encoder.layers.{i}"
            norm(f"{c}.ln_1", f"{h}.layer_norm1")
            for p in ("weight", "bias"):
                entries.append((f"{c}.attn.in_proj_{p}", tuple(f"{h}.self_attn.{n}_proj.{p}" for n in "qkv"), _QKV))
            norm(f"{c}.attn.out_proj", f"{h}.self_attn.out_proj")
            norm(f"{c}.ln_2", f"{h}.layer_norm2")
            norm(f"{c}.mlp.c_fc", f"{h}.mlp.fc1")
            norm(f"{c}.mlp.c_proj", f"{h}.mlp.fc2")

    norm("visual.conv1", "vision_model.embeddings.patch_embedding")
    entries.append(("visual.positional_embedding", ("vision_model.embeddings.position_embedding.weight",), _COPY))
    blocks("visual", "vision_model", cfg.vision.layers)
    norm("visual.ln_post", "vision_model.post_layernorm")
    head = "vision_model.head"
    entries.append(("visual.map_head.probe", (f"{head}.probe",), _COPY))
    entries.append(("visual.map_head.attention.in_proj_weight", (f"{head}.attention.in_proj_weight",), _COPY))
    entries.append(("visual.map_head.attention.in_proj_bias", (f"{head}.attention.in_proj_bias",), _COPY))
    norm("visual.map_head.attention.out_proj", f"{head}.attention.out_proj")
    norm("visual.map_head.layernorm", f"{head}.layernorm")
    norm("visual.map_head.mlp.fc1", f"{head}.mlp.fc1")
    norm("visual.map_head.mlp.fc2", f"{head}.mlp.fc2")
    entries.append(("text.token_embedding.weight", ("text_model.embeddings.token_embedding.weight",), _COPY))
    entries.append(("text.positional_embedding", ("text_model.embeddings.position_embedding.weight",), _COPY))
    blocks("text", "text_model", cfg.text.layers)
    norm("text.ln_final", "text_model.final_layer_norm")
    norm("text.text_projection", "text_model.head")
    return entries


def _plan(cfg: CLIPConfig) -> list[tuple[str, tuple[str, ...], str, torch.Size]]:
    refused = _refusals(cfg)
    if refused:
        raise ConfigError("transformers' SiglipModel cannot express this model: it has " + "; ".join(refused))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CLIP(cfg).state_dict().items()}
    entries = _key_map(cfg)
    mapped = {cf for cf, _, _ in entries}
    if mapped != set(shapes):  # a model option this map does not know about: refuse rather than drop it
        raise ConfigError(f"SigLIP key map does not cover clipforge parameters {sorted(set(shapes) ^ mapped)}")
    return [(cf, hf, how, shapes[cf]) for cf, hf, how in entries]


def hf_siglip_to_clipforge(sd: Mapping[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """transformers `SiglipModel` state dict -> clipforge `CLIP` state dict for `cfg` (dtypes kept).

    Raises `CheckpointError` naming every missing or unexpected key and each shape that disagrees with `cfg`.
    """
    return plan_to_clipforge(sd, _plan(cfg), "HF SigLIP")


def clipforge_to_hf_siglip(sd: Mapping[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """clipforge `CLIP` state dict -> transformers `SiglipModel` state dict (no shared storage: safetensors)."""
    return plan_to_hf(sd, _plan(cfg))


# ---------------------------------------------------------------------------------------------- files


def read_hf_siglip_config(config_path: Path) -> CLIPConfig:
    """The clipforge config of a SiglipModel config.json; a CheckpointConfigError names the file and field."""
    with reading_config(config_path):
        return config_from_hf_siglip(json_object(config_path))  # a FIFO / device / huge file is refused, named


def read_hf_siglip_dir(
    path: str | os.PathLike, *, allow_unsafe_pickle: bool = False
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Read a transformers `SiglipModel` folder -> (config, clipforge state dict) for `CLIP.load_state_dict`.

    `allow_unsafe_pickle` is the opt-in for a trusted `pytorch_model.bin` that `weights_only` refuses; a tokenizer
    in the folder (spiece.model / tokenizer.json) becomes the model's `text.hf_tokenizer_name`, so
    get_tokenizer(model) reads it and every folder written from the model carries a copy."""
    import dataclasses

    folder = Path(path)
    config_path = folder / CONFIG_NAME
    if not config_path.exists():  # present but not a regular file (a FIFO): refused by the safe read, naming it
        raise CheckpointError(f"no {CONFIG_NAME} in {folder}: a transformers SiglipModel folder needs one")
    cfg = read_hf_siglip_config(config_path)
    if any((folder / name).is_file() for name in ("spiece.model", "tokenizer.json")):
        cfg = cfg.replace(text=dataclasses.replace(cfg.text, hf_tokenizer_name=str(folder.resolve())))
    if (folder / PREPROCESSOR_NAME).exists():  # SiglipImageProcessor settings (a FIFO there: refused, named)
        with reading_config(folder / PREPROCESSOR_NAME):
            cfg = cfg.replace(preprocess=read_preprocessor_config(folder, cfg.vision.image_size))
    return cfg, hf_siglip_to_clipforge(read_hf_state_dict(folder, allow_unsafe_pickle=allow_unsafe_pickle), cfg)


def write_hf_siglip_dir(model: CLIP | tuple[CLIPConfig, Mapping[str, torch.Tensor]], path: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors that `transformers.SiglipModel.from_pretrained(path)` loads, and the
    tokenizer files of the folder the model was read from (its local `text.hf_tokenizer_name`; size-capped reads).

    Weights go first and each file is renamed into place, so an interrupted write leaves no partial file.
    """
    from .native import carry_tokenizer

    cfg, sd = (model.config, model.state_dict()) if isinstance(model, CLIP) else model
    hf_config = config_to_hf_siglip(cfg)
    tensors = clipforge_to_hf_siglip(sd, cfg)
    folder = write_weights_and_config(path, tensors, hf_config)
    carry_tokenizer(cfg.text, folder)
    return folder
