"""OpenCLIP checkpoints: key map and config reader (Ilharco et al. 2021, mlfoundations/open_clip).

open_clip's `CLIP` class keeps the text tower's parameters at the top level (OpenAI's layout:
`token_embedding.weight`, `transformer.*`, `ln_final.*`, `text_projection`, `positional_embedding`),
while its `CustomTextCLIP` nests them under `text.`; clipforge always nests them under `text.`.
The image tower (`visual.*`) has identical names. A hub repository pushed by open_clip holds
`open_clip_config.json` (`model_cfg` + `preprocess_cfg`) beside `open_clip_model.safetensors` or
`open_clip_pytorch_model.bin`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import torch

from ..models.config import CLIPConfig, ConfigError, PreprocessConfig, TextConfig, VisionConfig
from . import openclip_convnext, openclip_hftext, openclip_mobileclip, openclip_siglip, openclip_timm

CONFIG_NAME = "open_clip_config.json"
SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
PICKLE_WEIGHTS_NAME = "open_clip_pytorch_model.bin"

# Top-level text-tower keys of open_clip's CLIP (and OpenAI's state dicts).
_TEXT_TOP_LEVEL = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# open_clip config fields clipforge cannot build; anything here set to a non-default value is refused.
_UNSUPPORTED_BLOCK = {  # open_clip's custom attention-block options, shared by both towers
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "act_kwargs": None,
}
_UNSUPPORTED_VISION = {"timm_model_name": None, "pos_embed_type": "learnable", **_UNSUPPORTED_BLOCK}
_UNSUPPORTED_TEXT = {
    "hf_model_name": None,
    "embed_cls": False,
    "final_ln_after_pool": False,
    "proj_type": "linear",
    **_UNSUPPORTED_BLOCK,
}


def openclip_to_clipforge_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an open_clip (or OpenAI) state dict to clipforge's names; tensors are not copied."""
    if openclip_convnext.TRUNK_STEM_KEY in state_dict:  # a timm ConvNeXt image tower (convnext_* models)
        state_dict = openclip_convnext.convnext_to_clipforge_keys(state_dict)
    if openclip_mobileclip.FASTVIT_TRUNK_KEY in state_dict:  # a timm FastViT / MCi tower (MobileCLIP-S*)
        state_dict = openclip_mobileclip.fastvit_to_clipforge_keys(state_dict)
    if openclip_siglip.is_siglip_state_dict(state_dict):  # a timm SigLIP ViT (attention pool): *-SigLIP models
        state_dict = openclip_siglip.siglip_to_clipforge_keys(state_dict)
    elif openclip_mobileclip.is_mobileclip_vit_state_dict(state_dict):  # MobileCLIP-B / MobileCLIP2-B / -L-14
        state_dict = openclip_mobileclip.mobileclip_vit_to_clipforge_keys(state_dict)
    elif openclip_timm.is_eva_state_dict(state_dict):  # a timm EVA image tower (EVA02-* models)
        state_dict = openclip_timm.eva_to_clipforge_keys(state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.startswith(_TEXT_TOP_LEVEL):
            key = "text." + key
        if key in ("logit_scale", "logit_bias") and value.ndim > 0:
            value = value.reshape(())  # open_clip's nonscalar_logit_scale stores shape [1]
        out[key] = value
    return out


def clipforge_to_openclip_keys(
    state_dict: dict[str, torch.Tensor], custom_text: bool = False
) -> dict[str, torch.Tensor]:
    """Rename clipforge's state dict to open_clip's `CLIP` layout (text tower at top level).

    `custom_text=True` keeps the `text.` prefix, `CustomTextCLIP`'s layout: open_clip moves a CLIP text tower
    there itself when loading, but not a Hugging Face one (its keys must already be `text.transformer.*`).
    """
    if openclip_convnext.NATIVE_STEM_KEY in state_dict:  # a ConvNeXt image tower: open_clip's TimmModel names
        state_dict = openclip_convnext.clipforge_to_convnext_keys(state_dict)
    if openclip_mobileclip.NATIVE_FASTVIT_KEY in state_dict:  # a FastViT tower: open_clip's TimmModel names
        state_dict = openclip_mobileclip.clipforge_to_fastvit_keys(state_dict)
    if openclip_siglip.NATIVE_PROBE_KEY in state_dict:  # a SigLIP image tower: open_clip's timm ViT names
        state_dict = openclip_siglip.clipforge_to_siglip_keys(state_dict)
    if custom_text:
        return dict(state_dict)
    return {(key[len("text.") :] if key.startswith("text.") else key): value for key, value in state_dict.items()}


def openclip_state_dict(config: CLIPConfig, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """clipforge's state dict of a `config` model under the names of the open_clip model `config_to_openclip`
    describes: timm trunk names for EVA02 / SigLIP / ConvNeXt image towers, the text tower under `text.` where
    open_clip builds a CustomTextCLIP (so `model.load_state_dict` takes it as is), at the top level otherwise."""
    v = config.vision
    if is_timm_vit(v) and v.pool_type != "map":  # EVA02 (SigLIP's map is found from its keys)
        state_dict = openclip_timm.clipforge_to_eva_keys(state_dict)
    return clipforge_to_openclip_keys(state_dict, custom_text=config.text.is_hf or is_timm_vit(v))


def is_timm_vit(v: VisionConfig) -> bool:
    """Whether open_clip builds this ViT image tower as a timm model: SigLIP's attention-pooled ViT or an EVA02."""
    return not v.is_resnet and not v.convnext and (v.pool_type == "map" or v.uses_eva_blocks)


def _norm_eps(norm_kwargs: dict | None, where: str) -> float:
    kwargs = dict(norm_kwargs or {})
    eps = kwargs.pop("eps", 1e-5)
    if kwargs:
        raise ConfigError(f"open_clip {where}.norm_kwargs {sorted(kwargs)} are not supported (only eps)")
    return float(eps)


def _refuse_unsupported(cfg: dict[str, Any], unsupported: dict[str, Any], where: str) -> None:
    for name, default in unsupported.items():
        if cfg.get(name, default) != default:
            raise ConfigError(
                f"open_clip {where}.{name}={cfg[name]!r} is not supported by clipforge's architectures "
                "(standard ViT / ModifiedResNet image towers and CLIP text transformers only)"
            )


def config_from_openclip(
    model_cfg: dict[str, Any],
    preprocess_cfg: dict[str, Any] | None = None,
    hf_text_config: dict[str, Any] | None = None,
) -> CLIPConfig:
    """Translate open_clip's `model_cfg` (a model_configs/*.json or `open_clip_config.json`'s entry).

    A Hugging Face text tower (`text_cfg.hf_model_name`) also needs `hf_text_config`, the fields of that
    encoder's config.json: open_clip fetches them by name, clipforge stores them in the config (the caller
    finds them: weights/loading.py looks in the checkpoint folder, a stored copy, then the hub).
    """
    v = dict(model_cfg.get("vision_cfg", {}))
    t = dict(model_cfg.get("text_cfg", {}))
    hf_text = bool(t.get("hf_model_name"))
    if hf_text and hf_text_config is None:
        raise ConfigError(
            f"open_clip text_cfg.hf_model_name={t['hf_model_name']!r} is a Hugging Face text encoder whose "
            "config.json fields are needed to build it; pass them as hf_text_config (load_model finds them)"
        )
    convnext = openclip_convnext.is_openclip_convnext(model_cfg)
    eva = openclip_timm.is_openclip_eva(model_cfg)
    siglip = openclip_siglip.is_openclip_siglip(model_cfg)
    mobileclip = openclip_mobileclip.is_openclip_mobileclip_vit(model_cfg)
    fastvit = openclip_mobileclip.is_openclip_fastvit(model_cfg)  # MobileCLIP-S*, MobileCLIP2-S*
    timm_ok = convnext or eva or siglip or mobileclip or fastvit
    _refuse_unsupported(v, {**_UNSUPPORTED_VISION, "timm_model_name": v.get("timm_model_name") if timm_ok else None},
                        "vision_cfg")
    # SigLIP 2's text tower: nn.GELU(approximate="tanh") through act_kwargs, which is clipforge's act "gelu_tanh".
    text_tanh = t.get("act_kwargs") == {"approximate": "tanh"} and not model_cfg.get("quick_gelu", False)
    if text_tanh:
        del t["act_kwargs"]
    _refuse_unsupported(t, {**_UNSUPPORTED_TEXT, "hf_model_name": t.get("hf_model_name")}, "text_cfg")
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    image_size = v.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise ConfigError(f"open_clip vision_cfg.image_size={image_size} is not square; clipforge needs square")
        image_size = image_size[0]
    width = v.get("width", 768)
    head_width = v.get("head_width", 64)
    patch_size = v.get("patch_size", 16)
    layers = v.get("layers", 12)
    is_resnet = isinstance(layers, (list, tuple))
    if is_resnet:
        patch_size = None
    if siglip:  # a timm SigLIP ViT: checked first (clear refusals), its patch size is the timm tower's
        patch_size = openclip_siglip.vision_from_openclip(v).patch_size
    vision = openclip_convnext.vision_from_openclip(v) if convnext else VisionConfig(
        image_size=image_size,
        layers=tuple(layers) if is_resnet else layers,
        width=width,
        heads=(width * 32 // head_width) if is_resnet else (width // head_width),
        patch_size=patch_size,
        mlp_ratio=v.get("mlp_ratio", 4.0),
        act=act,
        ls_init_value=v.get("ls_init_value"),
        pool_type=v.get("pool_type", "tok"),
        final_ln_after_pool=v.get("final_ln_after_pool", False),
        no_ln_pre=v.get("no_ln_pre", False),
        attentional_pool=bool(v.get("attentional_pool", False)),
        attn_pooler_queries=v.get("attn_pooler_queries", 256),
        attn_pooler_heads=v.get("attn_pooler_heads", 8),
        patch_dropout=v.get("patch_dropout", 0.0),
        layer_norm_eps=_norm_eps(v.get("norm_kwargs"), "vision_cfg"),
    )
    if eva:  # a timm EVA tower: its shape comes from the timm model name
        vision = openclip_timm.vision_from_openclip(v)
    if siglip:  # a timm SigLIP ViT: its shape comes from the timm model name
        vision = openclip_siglip.vision_from_openclip(v)
    if mobileclip:  # a ViT-based MobileCLIP timm tower: its shape comes from the timm model name
        vision = openclip_mobileclip.vision_from_openclip(v)
    if fastvit:  # a FastViT / MCi timm tower: its shape comes from the timm model name
        vision = openclip_mobileclip.fastvit_vision_from_openclip(v)
    if isinstance(v.get("attentional_pool"), str):
        raise ConfigError(f"open_clip attentional_pool={v['attentional_pool']!r} (parallel/cascade) is not supported")
    no_causal = t.get("no_causal_mask", False)
    text = TextConfig(
        context_length=t.get("context_length", 77),
        vocab_size=t.get("vocab_size", 49408),
        width=t.get("width", 512),
        heads=t.get("heads", 8),
        layers=t.get("layers", 12),
        mlp_ratio=t.get("mlp_ratio", 4.0),
        act="gelu_tanh" if text_tanh else act,
        ls_init_value=t.get("ls_init_value"),
        causal_mask=not no_causal,
        pad_mask=bool(t.get("use_pad_mask", False)) and no_causal,
        pool_type=t.get("pool_type", "argmax"),
        hf_tokenizer_name=t.get("hf_tokenizer_name"),  # SigLIP: the SentencePiece vocabulary (text/sentencepiece.py)
        pad_id=t.get("pad_id", 0),
        eos_id=t.get("eos_id", 2),
        proj_bias=t.get("proj_bias", False),
        layer_norm_eps=_norm_eps(t.get("norm_kwargs"), "text_cfg"),
    )
    if hf_text:
        text = openclip_hftext.text_config_from_openclip(t, hf_text_config)
    clean = dict(t.get("tokenizer_kwargs") or {}).get("clean", "whitespace")
    # An HF vocabulary's cleaning (ViT-L-14-worldwide: canonicalize). SigLIP's "canonicalize" is its family default
    # (left "whitespace" = the tokenizer folder's own); another (a SigLIP 2 written with "lower") is recorded.
    if clean != "whitespace" and not (siglip and clean == "canonicalize"):
        text = dataclasses.replace(text, tokenizer_clean=clean)
    pre = dict(preprocess_cfg or {})
    _check_preprocess_size(pre.get("size", image_size), image_size)
    preprocess = PreprocessConfig(
        size=image_size,
        mean=tuple(pre.get("mean", PreprocessConfig.mean)),
        std=tuple(pre.get("std", PreprocessConfig.std)),
        interpolation=pre.get("interpolation", "bicubic"),
        resize_mode=pre.get("resize_mode", "shortest"),
        fill_color=pre.get("fill_color", 0),
    )
    bias = model_cfg.get("init_logit_bias")
    return CLIPConfig(
        embed_dim=model_cfg.get("embed_dim", 512),
        vision=vision,
        text=text,
        init_logit_scale=model_cfg.get("init_logit_scale", math.log(1 / 0.07)),
        init_logit_bias=None if bias is None else float(bias),
        preprocess=preprocess,
    )


def _check_preprocess_size(size: Any, image_size: int) -> None:
    """open_clip preprocesses at the vision tower's image size whatever preprocess_cfg.size says (its factory
    overwrites it); so does clipforge, and a file whose size differs gets a warning naming both."""
    if isinstance(size, (list, tuple)) and len(set(size)) == 1:
        size = size[0]
    if size != image_size:
        warnings.warn(
            f"open_clip preprocess_cfg.size={size!r} differs from vision_cfg.image_size={image_size}; images are "
            f"preprocessed to {image_size}, the size the model takes (as open_clip does)",
            UserWarning,
            stacklevel=3,
        )


def _openclip_clean(clean: str) -> str:
    """open_clip's tokenizer_kwargs.clean for a clipforge `text.tokenizer_clean`.

    open_clip has no "lowercase_only" (transformers' Siglip2Tokenizer: lowercased, nothing else; its get_clean_fn
    asserts on unknown names, so writing it would make open_clip's get_tokenizer fail on the folder). Its nearest is
    "lower" (ftfy, HTML unescape, whitespace collapsed, str.lower): the same ids on ordinary text, different ones on
    runs of whitespace, HTML entities, text ftfy repairs or a final capital sigma. The folder is written with
    "lower" -- what open_clip and clipforge then both read it with -- and a warning says so."""
    if clean != "lowercase_only":
        return clean
    warnings.warn(
        "open_clip format has no text cleaning for this model's transformers Siglip2Tokenizer (lowercase only); "
        "the folder is written with open_clip's nearest, tokenizer_kwargs clean='lower' (also ftfy, HTML unescape "
        "and whitespace collapsing), so open_clip and clipforge reading it give different ids from the source on "
        "texts with repeated whitespace, HTML entities or a final capital sigma; save in clipforge format "
        "(or as a transformers Siglip2Model folder) to keep the exact tokenization",
        UserWarning,
        stacklevel=3,
    )
    return "lower"


def config_to_openclip(config: CLIPConfig) -> dict[str, Any]:
    """`open_clip_config.json` content (model_cfg + preprocess_cfg) for a clipforge config."""
    v, t = config.vision, config.text
    timm_vit = is_timm_vit(v)
    if v.act != t.act and not v.convnext and not timm_vit and not t.is_hf:  # timm trunks keep their own activation
        raise ConfigError("open_clip has one quick_gelu flag for both towers; this model mixes activations")
    vision_cfg: dict[str, Any] = {"image_size": v.image_size, "width": v.width, "mlp_ratio": v.mlp_ratio}
    if v.is_resnet:
        vision_cfg.update(layers=list(v.layers), patch_size=None, head_width=v.width * 32 // v.num_heads)
    else:
        vision_cfg.update(layers=v.layers, patch_size=v.patch_size, head_width=v.width // v.num_heads)
    optional_vision = {
        "ls_init_value": (v.ls_init_value, None),
        "pool_type": (v.pool_type, "tok"),
        "final_ln_after_pool": (v.final_ln_after_pool, False),
        "no_ln_pre": (v.no_ln_pre, False),
        "attentional_pool": (v.attentional_pool, False),
        "patch_dropout": (v.patch_dropout, 0.0),
    }
    vision_cfg.update({k: val for k, (val, default) in optional_vision.items() if val != default})
    if v.attentional_pool:
        vision_cfg.update(attn_pooler_queries=v.attn_pooler_queries, attn_pooler_heads=v.attn_pooler_heads)
    if v.layer_norm_eps != 1e-5:
        vision_cfg["norm_kwargs"] = {"eps": v.layer_norm_eps}
    if v.convnext:  # a timm tower: open_clip names the timm model instead of the shape fields
        vision_cfg = openclip_convnext.vision_to_openclip(v)
    elif v.fastvit is not None:  # a timm FastViT / MCi tower (fastvit_mci*)
        vision_cfg = openclip_mobileclip.fastvit_vision_to_openclip(v)
    elif timm_vit and v.pool_type == "map":  # a timm SigLIP ViT (vit_*_siglip_*)
        vision_cfg = openclip_siglip.vision_to_openclip(v)
    elif timm_vit:  # a timm EVA02 ViT (eva02_*_clip_*)
        vision_cfg = openclip_timm.vision_to_openclip(v)
    text_cfg: dict[str, Any] = {
        "context_length": t.context_length,
        "vocab_size": t.vocab_size,
        "width": t.width,
        "heads": t.num_heads,
        "layers": t.layers,
        "mlp_ratio": t.mlp_ratio,
        "pool_type": t.pool_type,
        "eos_id": t.eos_id,
        "pad_id": t.pad_id,
    }
    if t.ls_init_value is not None:
        text_cfg["ls_init_value"] = t.ls_init_value
    if t.hf_tokenizer_name and not t.is_hf:  # SigLIP / MetaCLIP 2: open_clip's get_tokenizer reads it here
        text_cfg["hf_tokenizer_name"] = t.hf_tokenizer_name
        if timm_vit and v.pool_type == "map":  # SigLIP's SentencePiece text is canonicalised (text/sentencepiece.py)
            text_cfg["tokenizer_kwargs"] = {"clean": "canonicalize"}
    if t.pad_mask:
        raise ConfigError("open_clip's model configs (CLIPTextCfg) cannot express a text padding mask")
    if not t.causal_mask:
        text_cfg["no_causal_mask"] = True
    if t.proj_bias:
        text_cfg["proj_bias"] = True
    if t.layer_norm_eps != 1e-5:
        text_cfg["norm_kwargs"] = {"eps": t.layer_norm_eps}
    if t.act == "gelu_tanh":  # SigLIP 2's text tower: nn.GELU(approximate="tanh"), as open_clip's configs say it
        text_cfg["act_kwargs"] = {"approximate": "tanh"}
    model_cfg: dict[str, Any] = {"embed_dim": config.embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    if t.act == "quick_gelu":
        model_cfg["quick_gelu"] = True
    if config.init_logit_bias is not None:
        model_cfg["init_logit_bias"] = config.init_logit_bias
    if config.init_logit_scale != math.log(1 / 0.07):
        model_cfg["init_logit_scale"] = config.init_logit_scale
    if t.proj_bias or not t.causal_mask or timm_vit:  # open_clip's SigLIP / EVA02 configs are CustomTextCLIPs too
        model_cfg["custom_text"] = True  # open_clip builds these text options only in CustomTextCLIP
    if t.is_hf:  # an HF encoder: open_clip's CustomTextCLIP + HFTextEncoder, its fields stored beside model_cfg
        if v.act == "quick_gelu":
            model_cfg["quick_gelu"] = True
        model_cfg.update(text_cfg=openclip_hftext.text_cfg_to_openclip(t), custom_text=True)
    if t.tokenizer_clean != "whitespace":  # open_clip's get_tokenizer passes tokenizer_kwargs to its HFTokenizer
        model_cfg["text_cfg"]["tokenizer_kwargs"] = {"clean": _openclip_clean(t.tokenizer_clean)}
    p = config.preprocess
    preprocess_cfg = {  # open_clip's PreprocessCfg fields, as its hub configs write them
        "size": v.image_size,
        "mean": list(p.mean),
        "std": list(p.std),
        "interpolation": p.interpolation,
        "resize_mode": p.resize_mode,
        "fill_color": p.fill_color,
    }
    out: dict[str, Any] = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    if t.is_hf:
        out[openclip_hftext.HF_TEXT_CONFIG_KEY] = dict(t.hf_config)
    return out


def uses_custom_text(model_cfg: dict[str, Any]) -> bool:
    """Whether open_clip builds this config as CustomTextCLIP (text keys under `text.`)."""
    return bool(model_cfg.get("custom_text", False))
