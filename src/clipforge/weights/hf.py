"""Hugging Face transformers `CLIPModel` checkpoints: config reader/writer and key map, both ways.

A transformers CLIP directory holds `config.json` (a `CLIPConfig` with `text_config`, `vision_config`,
`projection_dim`, `logit_scale_init_value`) and `model.safetensors` (or `pytorch_model.bin`, or a
sharded `*.index.json`). Its modules are the CLIP of Radford et al. 2021 ("Learning Transferable
Visual Models From Natural Language Supervision", openai/CLIP `model.py`) with renamed parameters:
separate `q_proj`/`k_proj`/`v_proj` where OpenAI packs `in_proj_weight`, `nn.Linear` projections
(stored transposed) where OpenAI keeps `proj` matrices, and `pre_layrnorm` [sic]. Reference:
transformers `models/clip/modeling_clip.py` and `configuration_clip.py`.

HF CLIP can only express a ViT image tower with class-token pooling and a causal text tower pooled
at the end token, without LayerScale, projection bias or logit bias; `config_to_hf` refuses anything
else with a `ConfigError` instead of writing a file that would load into a different model.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_bytes
from ..models.clip import CLIP
from ..models.config import CLIPConfig, ConfigError, TextConfig, VisionConfig
from ..safeio import read_text_file
from .formats import CheckpointError, raise_on_mismatch, read_tensors, reading_config
from .hf_processor import read_preprocessor_config
from .native import atomic_save_safetensors, json_object

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
BIN_WEIGHTS_NAME = "pytorch_model.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
# Looked for in this order, as transformers does: safetensors before pickles, single files before shards.
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_INDEX_NAME, BIN_WEIGHTS_NAME, BIN_INDEX_NAME)

# transformers' defaults (CLIPTextConfig / CLIPVisionConfig / CLIPConfig), used for keys a config.json omits.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
PROJECTION_DIM_DEFAULT = 512
LOGIT_SCALE_DEFAULT = 2.6592
# transformers pools at argmax(input_ids) when eos_token_id == 2 (configs written before its PR #24773).
LEGACY_EOS_ID = 2

_EXACT_GELU = ("gelu", "gelu_python")
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast", "gelu_accurate")
# Parameter buffers transformers registers (non-persistent since 4.31) but older checkpoints still carry.
_IGNORED_HF_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

# How one clipforge tensor maps to its transformers tensor(s): as is, transposed, the packed in_proj split into
# q/k/v, or a 0-d scalar stored as a (1,) tensor (SiglipModel's logit_scale / logit_bias). Shared by every HF map.
_COPY, _TRANSPOSE, _QKV, _SCALAR = "copy", "transpose", "qkv", "scalar"


# ---------------------------------------------------------------------------------------------- config


def _number(section: Mapping[str, Any], key: str, defaults: Mapping[str, Any], where: str, kind: type = int) -> Any:
    value = section.get(key, defaults[key])
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else type(value) is int
    if not ok:
        raise ConfigError(f"{where}.{key}={value!r} is not a valid {kind.__name__}")
    return value


def _activation(name: Any, where: str) -> str:
    if name == "quick_gelu":
        return "quick_gelu"
    if name in _EXACT_GELU:
        return "gelu"
    if name in _TANH_GELU:
        warnings.warn(
            f"{where}.hidden_act={name!r} is a tanh approximation of GELU; clipforge uses the exact (erf) GELU, "
            "which differs from it by up to about 1e-3 per activation",
            stacklevel=3,
        )
        return "gelu"
    raise ConfigError(
        f"{where}.hidden_act={name!r} is not supported: clipforge's CLIP towers use 'quick_gelu' or a GELU "
        f"({', '.join(_EXACT_GELU + _TANH_GELU)})"
    )


def _mlp_ratio(intermediate: int, width: int, where: str) -> float:
    """A float ratio r with int(width * r) == intermediate exactly (the model builds its MLP that way)."""
    ratio = intermediate / width
    for _ in range(4):  # intermediate / width * width can land one ulp below intermediate: step up
        if int(width * ratio) == intermediate:
            return ratio
        ratio = math.nextafter(ratio, math.inf)
    raise ConfigError(f"{where}.intermediate_size={intermediate} cannot be written as int(width * mlp_ratio)")


def _square(value: Any, key: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"vision_config.{key}={value!r}: clipforge's ViT needs square images and patches")
        value = value[0]
    if type(value) is not int or value <= 0:
        raise ConfigError(f"vision_config.{key}={value!r} is not a positive int")
    return value


def _sub_config(hf_config: Mapping[str, Any], name: str) -> dict[str, Any]:
    # Legacy configs may carry `text_config_dict`/`vision_config_dict`; transformers lets them replace the
    # sub-config entirely (missing keys fall back to defaults), so do the same.
    legacy = hf_config.get(f"{name}_dict")
    section = legacy if legacy is not None else hf_config.get(name)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{name} must be a JSON object, got {type(section).__name__}")
    return dict(section)


def config_from_hf(hf_config: Mapping[str, Any]) -> CLIPConfig:
    """Translate a transformers `CLIPModel` config.json (as a dict) into a `CLIPConfig`."""
    model_type = hf_config.get("model_type", "clip")
    if model_type != "clip":
        raise ConfigError(f"config.json has model_type={model_type!r}; only transformers CLIPModel ('clip') is read")
    tc, vc = _sub_config(hf_config, "text_config"), _sub_config(hf_config, "vision_config")

    channels = _number(vc, "num_channels", VISION_DEFAULTS, "vision_config")
    if channels != 3:
        raise ConfigError(f"vision_config.num_channels={channels}: clipforge's image tower takes RGB (3 channels)")
    v_width = _number(vc, "hidden_size", VISION_DEFAULTS, "vision_config")
    vision = VisionConfig(
        image_size=_square(vc.get("image_size", VISION_DEFAULTS["image_size"]), "image_size"),
        patch_size=_square(vc.get("patch_size", VISION_DEFAULTS["patch_size"]), "patch_size"),
        layers=_number(vc, "num_hidden_layers", VISION_DEFAULTS, "vision_config"),
        width=v_width,
        heads=_number(vc, "num_attention_heads", VISION_DEFAULTS, "vision_config"),
        mlp_ratio=_mlp_ratio(_number(vc, "intermediate_size", VISION_DEFAULTS, "vision_config"), v_width, "vision"),
        act=_activation(vc.get("hidden_act", VISION_DEFAULTS["hidden_act"]), "vision_config"),
        layer_norm_eps=float(_number(vc, "layer_norm_eps", VISION_DEFAULTS, "vision_config", float)),
        pool_type="tok",
    )

    eos = tc.get("eos_token_id", TEXT_DEFAULTS["eos_token_id"])
    if type(eos) is not int:
        raise ConfigError(
            f"text_config.eos_token_id={eos!r}: transformers' CLIP text pooling needs a single int end-of-text id"
        )
    t_width = _number(tc, "hidden_size", TEXT_DEFAULTS, "text_config")
    text = TextConfig(
        context_length=_number(tc, "max_position_embeddings", TEXT_DEFAULTS, "text_config"),
        vocab_size=_number(tc, "vocab_size", TEXT_DEFAULTS, "text_config"),
        width=t_width,
        heads=_number(tc, "num_attention_heads", TEXT_DEFAULTS, "text_config"),
        layers=_number(tc, "num_hidden_layers", TEXT_DEFAULTS, "text_config"),
        mlp_ratio=_mlp_ratio(_number(tc, "intermediate_size", TEXT_DEFAULTS, "text_config"), t_width, "text"),
        act=_activation(tc.get("hidden_act", TEXT_DEFAULTS["hidden_act"]), "text_config"),
        layer_norm_eps=float(_number(tc, "layer_norm_eps", TEXT_DEFAULTS, "text_config", float)),
        causal_mask=True,
        # CLIPTextTransformer: eos_token_id == 2 keeps the original argmax(input_ids) pooling; any other id
        # pools at the first position holding that id.
        pool_type="argmax" if eos == LEGACY_EOS_ID else "eos",
        eos_id=TextConfig.eos_id if eos == LEGACY_EOS_ID else eos,
    )
    top = {"projection_dim": PROJECTION_DIM_DEFAULT, "logit_scale_init_value": LOGIT_SCALE_DEFAULT}
    return CLIPConfig(
        embed_dim=_number(hf_config, "projection_dim", top, "config"),
        vision=vision,
        text=text,
        init_logit_scale=float(_number(hf_config, "logit_scale_init_value", top, "config", float)),
    )


def _refusals(cfg: CLIPConfig) -> list[str]:
    v, t = cfg.vision, cfg.text
    checks = [
        (v.is_resnet, "a ModifiedResNet image tower (HF CLIPModel has ViT image towers only)"),
        (v.attentional_pool, "an attentional pooler in the image tower"),
        (v.pool_type != "tok", f"image pooling {v.pool_type!r} (HF CLIP pools the class token)"),
        (v.no_ln_pre, "no LayerNorm before the image transformer (HF CLIP always has pre_layrnorm)"),
        (v.ls_init_value is not None, "LayerScale in the image tower"),
        (v.conv_stem or v.no_embed_class or v.proj_bias, "a MobileCLIP / EVA image tower (HF CLIP has a patch conv)"),
        (t.ls_init_value is not None, "LayerScale in the text tower"),
        (t.proj_bias, "a text projection with bias"),
        (not t.causal_mask or t.pad_mask, "a non-causal or padding-masked text tower (HF CLIP is causal only)"),
        (t.pool_type not in ("argmax", "eos"), f"text pooling {t.pool_type!r} (HF CLIP pools at the end token)"),
        (
            t.pool_type == "eos" and t.eos_id == LEGACY_EOS_ID,
            f"text pooling 'eos' with eos_id={LEGACY_EOS_ID} (transformers reads that id as argmax pooling)",
        ),
        (cfg.init_logit_bias is not None, "a logit_bias (sigmoid-loss models)"),
    ]
    return [why for refused, why in checks if refused]


def _check_expressible(cfg: CLIPConfig) -> None:
    refused = _refusals(cfg)
    if refused:
        raise ConfigError("transformers' CLIPModel cannot express this model: it has " + "; ".join(refused))


def config_to_hf(cfg: CLIPConfig) -> dict[str, Any]:
    """A transformers `CLIPModel` config.json (as a dict) for `cfg`; `ConfigError` if HF CLIP cannot express it.

    Argmax text pooling is written as transformers' legacy `eos_token_id: 2`, the only way it selects argmax.
    Training-only settings without an HF counterpart (patch dropout) are dropped: inference is unchanged.
    """
    _check_expressible(cfg)
    v, t = cfg.vision, cfg.text
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": v.width,
        "intermediate_size": int(v.width * v.mlp_ratio),
        "num_hidden_layers": v.layers,
        "num_attention_heads": v.num_heads,
        "num_channels": 3,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "hidden_act": v.act,
        "layer_norm_eps": v.layer_norm_eps,
        "projection_dim": cfg.embed_dim,
    }
    text = {
        "model_type": "clip_text_model",
        "vocab_size": t.vocab_size,
        "hidden_size": t.width,
        "intermediate_size": int(t.width * t.mlp_ratio),
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.num_heads,
        "max_position_embeddings": t.context_length,
        "hidden_act": t.act,
        "layer_norm_eps": t.layer_norm_eps,
        "projection_dim": cfg.embed_dim,
        "pad_token_id": TEXT_DEFAULTS["pad_token_id"],
        "bos_token_id": TEXT_DEFAULTS["bos_token_id"],
        "eos_token_id": LEGACY_EOS_ID if t.pool_type == "argmax" else t.eos_id,
    }
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": cfg.init_logit_scale,
        "text_config": text,
        "vision_config": vision,
    }


# ---------------------------------------------------------------------------------------------- key map


def _key_map(cfg: CLIPConfig) -> list[tuple[str, tuple[str, ...], str]]:
    """(clipforge key, HF key(s), how the HF tensor(s) become the clipforge one) for every parameter."""
    entries: list[tuple[str, tuple[str, ...], str]] = [("logit_scale", ("logit_scale",), _COPY)]

    def add(cf: str, hf: str, how: str = _COPY) -> None:
        entries.append((cf, (hf,), how))

    def norm(cf: str, hf: str) -> None:
        add(f"{cf}.weight", f"{hf}.weight")
        add(f"{cf}.bias", f"{hf}.bias")

    def blocks(cf: str, hf: str, layers: int) -> None:
        for i in range(layers):
            c, h = f"{cf}.transformer.resblocks.{i}", f"{hf}.encoder.layers.{i}"
            norm(f"{c}.ln_1", f"{h}.layer_norm1")
            for p in ("weight", "bias"):
                qkv = tuple(f"{h}.self_attn.{n}_proj.{p}" for n in "qkv")
                entries.append((f"{c}.attn.in_proj_{p}", qkv, _QKV))
            norm(f"{c}.attn.out_proj", f"{h}.self_attn.out_proj")
            norm(f"{c}.ln_2", f"{h}.layer_norm2")
            norm(f"{c}.mlp.c_fc", f"{h}.mlp.fc1")
            norm(f"{c}.mlp.c_proj", f"{h}.mlp.fc2")

    add("visual.class_embedding", "vision_model.embeddings.class_embedding")
    add("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight")
    add("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight")
    norm("visual.ln_pre", "vision_model.pre_layrnorm")
    blocks("visual", "vision_model", cfg.vision.layers)
    norm("visual.ln_post", "vision_model.post_layernorm")
    add("visual.proj", "visual_projection.weight", _TRANSPOSE)  # (W, D) <- Linear weight (D, W)
    add("text.token_embedding.weight", "text_model.embeddings.token_embedding.weight")
    add("text.positional_embedding", "text_model.embeddings.position_embedding.weight")
    blocks("text", "text_model", cfg.text.layers)
    norm("text.ln_final", "text_model.final_layer_norm")
    add("text.text_projection", "text_projection.weight", _TRANSPOSE)
    return entries


def _expected_shapes(cfg: CLIPConfig) -> dict[str, torch.Size]:
    """clipforge parameter shapes for `cfg`, read off a model built on the meta device (no memory, no init cost)."""
    _check_expressible(cfg)
    with torch.device("meta"):
        model = CLIP(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def _hf_shape(cf_shape: torch.Size, how: str) -> tuple[int, ...]:
    if how == _TRANSPOSE:
        return tuple(reversed(cf_shape))
    if how == _QKV:
        return (cf_shape[0] // 3, *cf_shape[1:])
    if how == _SCALAR:
        return (1,)
    return tuple(cf_shape)


Plan = list[tuple[str, tuple[str, ...], str, torch.Size]]  # (clipforge key, HF keys, how, clipforge shape)


def plan_to_clipforge(sd: Mapping[str, torch.Tensor], plan: Plan, what: str) -> dict[str, torch.Tensor]:
    """An HF state dict -> clipforge's, following `plan` (dtypes kept); `what` names the format in the error that
    lists every missing or unexpected key and each shape that disagrees."""
    expected = {h: _hf_shape(shape, how) for _, hf, how, shape in plan for h in hf}
    raise_on_mismatch(expected, sd, f"{what} state dict does not match the config", ignored=_IGNORED_HF_KEYS)
    out: dict[str, torch.Tensor] = {}
    for cf, hf, how, _ in plan:
        if how == _QKV:
            out[cf] = torch.cat([sd[h] for h in hf], dim=0)  # in_proj rows: q, then k, then v
        elif how == _TRANSPOSE:
            out[cf] = sd[hf[0]].T.contiguous()
        elif how == _SCALAR:
            out[cf] = sd[hf[0]].reshape(())
        else:
            out[cf] = sd[hf[0]]
    return out


def plan_to_hf(sd: Mapping[str, torch.Tensor], plan: Plan) -> dict[str, torch.Tensor]:
    """A clipforge state dict -> the HF one `plan` describes (dtypes kept, no shared storage: safetensors)."""
    raise_on_mismatch({cf: tuple(s) for cf, _, _, s in plan}, sd, "clipforge state dict does not match the config")
    out: dict[str, torch.Tensor] = {}
    for cf, hf, how, _ in plan:
        tensor = sd[cf].detach()
        if how == _QKV:
            # clone: safetensors refuses tensors that share storage, and chunks of one in_proj would
            for h, part in zip(hf, tensor.chunk(3, dim=0), strict=True):
                out[h] = part.clone()
        elif how == _TRANSPOSE:
            out[hf[0]] = tensor.T.contiguous()
        elif how == _SCALAR:
            out[hf[0]] = tensor.reshape(1).clone()
        else:
            out[hf[0]] = tensor
    return out


def _plan(cfg: CLIPConfig) -> list[tuple[str, tuple[str, ...], str, torch.Size]]:
    shapes = _expected_shapes(cfg)
    entries = _key_map(cfg)
    mapped = {cf for cf, _, _ in entries}
    if mapped != set(shapes):  # a model option this map does not know about; refuse rather than drop it
        raise ConfigError(f"HF key map does not cover clipforge parameters {sorted(set(shapes) ^ mapped)}")
    return [(cf, hf, how, shapes[cf]) for cf, hf, how in entries]


def _list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def hf_to_clipforge(sd: Mapping[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """transformers `CLIPModel` state dict -> clipforge `CLIP` state dict for `cfg` (dtypes kept).

    Raises `CheckpointError` naming every missing or unexpected key and each shape that disagrees with `cfg`.
    """
    return plan_to_clipforge(sd, _plan(cfg), "HF CLIP")


def clipforge_to_hf(sd: Mapping[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """clipforge `CLIP` state dict -> transformers `CLIPModel` state dict (dtypes kept, no shared storage)."""
    return plan_to_hf(sd, _plan(cfg))


# ---------------------------------------------------------------------------------------------- files


def _load_sharded(index_path: Path, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    try:
        with reading_config(index_path):
            try:  # under safeio's guards: a FIFO, a device or a huge index is refused, naming it
                index_text = read_text_file(index_path, what=index_path.name)
            except OSError as exc:
                raise CheckpointError(str(exc)) from exc
            weight_map = json.loads(index_text)["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ConfigError("weight_map must map tensor names to shard file names")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path}: not a valid shard index (needs a 'weight_map' object): {exc}") from exc
    sd: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index_path} names shard {shard!r}, which is not in {index_path.parent}")
        sd.update(read_tensors(shard_path, allow_unsafe_pickle=allow_unsafe_pickle))
    absent = sorted(k for k in weight_map if k not in sd)
    if absent:
        raise CheckpointError(f"{index_path}: key(s) listed in the index are absent from their shards: {_list(absent)}")
    return sd


def read_hf_state_dict(path: str | os.PathLike, *, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The raw (HF-named) tensors of a transformers checkpoint directory, from its preferred weights file.

    Files are read through `formats.read_tensors`: safetensors as stored, pickles with `weights_only=True` unless
    `allow_unsafe_pickle` (the caller's opt-in for a trusted legacy `pytorch_model.bin`).
    """
    folder = Path(path)
    for name in WEIGHT_FILES:
        candidate = folder / name
        is_index = name.endswith(".index.json")
        # an index that exists but is no regular file (a FIFO) is read, and refused naming it, not skipped
        if candidate.is_file() or (is_index and candidate.exists()):
            if is_index:
                return _load_sharded(candidate, allow_unsafe_pickle)
            return read_tensors(candidate, allow_unsafe_pickle=allow_unsafe_pickle)
    raise CheckpointError(f"no weights file in {folder}: looked for {', '.join(WEIGHT_FILES)}")


def read_hf_dir(
    path: str | os.PathLike, *, allow_unsafe_pickle: bool = False
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Read a transformers `CLIPModel` directory -> (config, clipforge state dict) ready for `CLIP.load_state_dict`.

    The config's `preprocess` comes from the folder's preprocessor_config.json (hf_processor.py) when it has one.
    `allow_unsafe_pickle` lets a trusted `pytorch_model.bin` that `weights_only` refuses load (every family).
    """
    folder = Path(path)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} in {folder}: a transformers CLIPModel directory needs one")
    from . import hf_siglip2  # fixed-resolution Siglip2Model folders (hf_siglip2 imports this module)

    if hf_siglip2.is_siglip2_folder(folder):
        return hf_siglip2.read_hf_siglip2_dir(folder, allow_unsafe_pickle=allow_unsafe_pickle)
    cfg = read_hf_config(config_path)
    from . import hf_siglip  # SiglipModel folders share this layout (hf_siglip imports this module)

    if hf_siglip.is_siglip(cfg):
        return hf_siglip.read_hf_siglip_dir(folder, allow_unsafe_pickle=allow_unsafe_pickle)
    if cfg.text.is_hf:  # AltCLIPModel / ChineseCLIPModel: CLIP's ViT with a transformers text encoder
        from .hf_chinese_clip import read_hf_text_tower_dir

        return read_hf_text_tower_dir(folder, cfg, allow_unsafe_pickle=allow_unsafe_pickle)
    # The image processor config beside it (if any) says how images are prepared; without one, the defaults.
    with reading_config(folder / "preprocessor_config.json"):
        cfg = cfg.replace(preprocess=read_preprocessor_config(folder, cfg.vision.image_size))
    return cfg, hf_to_clipforge(read_hf_state_dict(folder, allow_unsafe_pickle=allow_unsafe_pickle), cfg)


def read_hf_config(config_path: Path) -> CLIPConfig:
    """The clipforge config of a transformers config.json; a CheckpointConfigError names the file and field."""
    with reading_config(config_path):
        hf_config = json_object(config_path)  # a FIFO, a device or a huge file is refused, naming it, unread
        if hf_config.get("model_type") == "siglip2":
            from . import hf_siglip2

            return hf_siglip2.config_from_hf_siglip2(hf_config)
        if hf_config.get("model_type") == "siglip":
            from . import hf_siglip

            return hf_siglip.config_from_hf_siglip(hf_config)
        if hf_config.get("model_type") == "altclip":
            from .hf_altclip import config_from_hf_altclip

            return config_from_hf_altclip(hf_config)
        if hf_config.get("model_type") == "chinese_clip":
            from .hf_chinese_clip import config_from_hf_chinese_clip

            return config_from_hf_chinese_clip(hf_config)
        return config_from_hf(hf_config)


def write_weights_and_config(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], hf_config: dict) -> Path:
    """Write model.safetensors then config.json (with the weights' dtype when they share one) into `path`.

    Every transformers folder writer ends this way; each file goes to a temporary name and is renamed into place,
    weights first, so an interrupted write leaves no partial file and never a config without its weights.
    """
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) == 1:
        hf_config["dtype"] = str(dtypes.pop()).removeprefix("torch.")
    folder = Path(path)
    atomic_save_safetensors(dict(tensors), folder / SAFE_WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(hf_config, indent=2, sort_keys=True) + "\n").encode())
    return folder


def write_hf_dir(model: CLIP | tuple[CLIPConfig, Mapping[str, torch.Tensor]], path: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors that `transformers.CLIPModel.from_pretrained(path)` loads.

    `model` is a `CLIP` or a (config, clipforge state dict) pair. Each file goes to a temporary name in the
    directory and is renamed into place, weights first, so an interrupted write leaves no partial file.
    """
    cfg, sd = (model.config, model.state_dict()) if isinstance(model, CLIP) else model
    from . import hf_siglip, hf_siglip2

    if hf_siglip2.is_siglip2(cfg):  # SigLIP 2 (Gemma vocabulary): a fixed-size transformers Siglip2Model
        return hf_siglip2.write_hf_siglip2_dir((cfg, sd), path)
    if hf_siglip.is_siglip(cfg):  # SigLIP-shaped models are written as a transformers SiglipModel
        return hf_siglip.write_hf_siglip_dir((cfg, sd), path)
    if cfg.text.is_hf:  # an HF text encoder: AltCLIPModel / ChineseCLIPModel, or refused there naming why
        from .hf_chinese_clip import write_hf_text_tower_dir

        return write_hf_text_tower_dir((cfg, sd), path)
    hf_config = config_to_hf(cfg)
    tensors = clipforge_to_hf(sd, cfg)
    folder = write_weights_and_config(path, tensors, hf_config)
    return folder
