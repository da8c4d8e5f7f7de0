"""open_clip's SigLIP models: timm `vit_*_siglip_*` image towers (open_clip `TimmModel`) in clipforge's ViT.

open_clip builds ViT-B-16-SigLIP, ViT-L-16-SigLIP-384, ViT-SO400M-14-SigLIP, ... as a `CustomTextCLIP` whose
image tower is a timm VisionTransformer under `visual.trunk.` (`timm_pool: "map"`, `timm_proj: "none"`: the
attention-pooled feature is the embedding) and whose text tower is open_clip's own non-causal transformer
(`text.*`, last-token pooling, a biased projection). clipforge runs the same image network as its
`VisionTransformer` with `pool_type="map"`, no class token, a biased patch embedding, no ln_pre and no projection,
so this module maps
- timm's names onto clipforge's (`patch_embed.proj` -> `conv1`, `blocks.i.attn.qkv` -> the packed
  `attn.in_proj_*`, `norm` -> `ln_post`, and timm's `AttentionPoolLatent` (`attn_pool.latent`, split `q` / `kv`
  projections, `proj`, `norm`, `mlp`) -> `map_head` (`probe`, packed `attention.in_proj_*`, `attention.out_proj`,
  `layernorm`, `mlp`)), both ways; and
- the timm model names open_clip's configs use onto `VisionConfig` fields (the shapes timm registers for them).

timm's SigLIP towers use exact GELU (`nn.GELU()`), not the tanh approximation of Hugging Face's SiglipModel, so
these configs say act "gelu"; on the same weights the two differ by ~1e-3 in features. The towers timm added for
SigLIP 2 (B/32-256, L/16-512, So400m/16, giant-opt) register `act_layer='gelu_tanh'`: their rows say so.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..models.config import ConfigError, VisionConfig
from .openclip_timm import check_timm_image_size

TRUNK = "visual.trunk."
LATENT_KEY = TRUNK + "attn_pool.latent"
NATIVE_PROBE_KEY = "visual.map_head.probe"

_SIGLIP = dict(
    class_token=False, pool_type="map", patch_bias=True, no_ln_pre=True, no_proj=True, layer_norm_eps=1e-6,
    act="gelu",
)
_SO400M = dict(width=1152, layers=27, heads=16, mlp_ratio=3.7362)
_TANH = dict(act="gelu_tanh")  # timm's act_layer='gelu_tanh' (the towers added for SigLIP 2)
# timm SigLIP ViTs open_clip's configs name -> (image_size, patch_size, shape fields); timm vision_transformer.py.
TIMM_SIGLIP_TOWERS: dict[str, dict[str, Any]] = {
    **{
        f"vit_base_patch16_siglip_{size}": dict(image_size=size, patch_size=16, width=768, layers=12, heads=12)
        for size in (224, 256, 384, 512)
    },
    "vit_base_patch32_siglip_256": dict(image_size=256, patch_size=32, width=768, layers=12, heads=12, **_TANH),
    **{
        f"vit_large_patch16_siglip_{size}": dict(image_size=size, patch_size=16, width=1024, layers=24, heads=16)
        for size in (256, 384)
    },
    "vit_large_patch16_siglip_512": dict(image_size=512, patch_size=16, width=1024, layers=24, heads=16, **_TANH),
    "vit_so400m_patch14_siglip_224": dict(image_size=224, patch_size=14, **_SO400M),
    "vit_so400m_patch14_siglip_378": dict(image_size=378, patch_size=14, **_SO400M),
    "vit_so400m_patch14_siglip_384": dict(image_size=384, patch_size=14, **_SO400M),
    **{
        f"vit_so400m_patch16_siglip_{size}": dict(image_size=size, patch_size=16, **_SO400M, **_TANH)
        for size in (256, 384, 512)
    },
    # giant-opt (SigLIP 2's largest): a plain ViT, 40 blocks of width 1536, MLP ratio 4 -- no piece beyond SigLIP's.
    **{
        f"vit_giantopt_patch16_siglip_{size}": dict(
            image_size=size, patch_size=16, width=1536, layers=40, heads=16, **_TANH
        )
        for size in (256, 384)
    },
}


def is_openclip_siglip(model_cfg: dict[str, Any]) -> bool:
    """Whether an open_clip model config builds its image tower from a timm SigLIP ViT (attention-pooled)."""
    name = (model_cfg.get("vision_cfg") or {}).get("timm_model_name")
    return isinstance(name, str) and name.startswith("vit_") and "_siglip" in name


def vision_from_openclip(vision_cfg: dict[str, Any]) -> VisionConfig:
    """The VisionConfig of an open_clip `vision_cfg` naming a timm SigLIP tower; what clipforge cannot build is
    refused with the reason (unknown towers, gap pooling, other poolings or projections)."""
    name = vision_cfg["timm_model_name"]
    if name not in TIMM_SIGLIP_TOWERS:
        hint = " (global-average-pooled '_gap' towers are not)" if "_gap" in name else ""
        raise ConfigError(
            f"open_clip vision_cfg.timm_model_name={name!r}: this timm SigLIP tower is not supported{hint}; "
            f"supported: {sorted(TIMM_SIGLIP_TOWERS)}"
        )
    pool, proj = vision_cfg.get("timm_pool", "avg"), vision_cfg.get("timm_proj", "linear")
    if pool != "map" or proj != "none":
        raise ConfigError(
            f"open_clip {name} with timm_pool={pool!r}, timm_proj={proj!r} is not supported (open_clip's SigLIP "
            "configs use timm_pool 'map' and timm_proj 'none')"
        )
    fields = {**_SIGLIP, **TIMM_SIGLIP_TOWERS[name]}  # a row's own act overrides SigLIP's exact GELU
    # A size that is not a multiple of the patch (vit_so400m_patch14_siglip_384) keeps timm's floored grid
    # (27 x 27 of 14 px at 384: the last 6 pixel rows and columns are ignored); VisionConfig.grid_size floors too.
    check_timm_image_size(vision_cfg, name, fields["image_size"])
    return VisionConfig(**fields)


def is_siglip_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether an open_clip state dict holds a timm SigLIP image tower (an attention-pool latent under the trunk)."""
    return LATENT_KEY in state_dict


_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_RENAMES = {
    "norm1.": "ln_1.",
    "norm2.": "ln_2.",
    "attn.qkv.weight": "attn.in_proj_weight",
    "attn.qkv.bias": "attn.in_proj_bias",
    "attn.proj.": "attn.out_proj.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_SIMPLE = {  # trunk name -> clipforge name (whole keys)
    "pos_embed": "visual.positional_embedding",
    "patch_embed.proj.weight": "visual.conv1.weight",
    "patch_embed.proj.bias": "visual.conv1.bias",
    "norm.weight": "visual.ln_post.weight",
    "norm.bias": "visual.ln_post.bias",
    "attn_pool.proj.weight": "visual.map_head.attention.out_proj.weight",
    "attn_pool.proj.bias": "visual.map_head.attention.out_proj.bias",
    "attn_pool.norm.weight": "visual.map_head.layernorm.weight",
    "attn_pool.norm.bias": "visual.map_head.layernorm.bias",
    "attn_pool.mlp.fc1.weight": "visual.map_head.mlp.fc1.weight",
    "attn_pool.mlp.fc1.bias": "visual.map_head.mlp.fc1.bias",
    "attn_pool.mlp.fc2.weight": "visual.map_head.mlp.fc2.weight",
    "attn_pool.mlp.fc2.bias": "visual.map_head.mlp.fc2.bias",
}
_POOL_PARTS = ("attn_pool.latent", "attn_pool.q.weight", "attn_pool.q.bias", "attn_pool.kv.weight", "attn_pool.kv.bias")


def siglip_to_clipforge_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the `visual.trunk.*` keys of an open_clip SigLIP model to clipforge's; other keys pass through.

    The pooling head's q and kv projections are concatenated into nn.MultiheadAttention's packed in_proj (new
    tensors: q rows, then k, then v, as timm's kv reshape (2, heads, head_dim) orders them)."""
    out: dict[str, torch.Tensor] = {}
    pool: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(TRUNK):
            out[key] = value
            continue
        rest = key[len(TRUNK) :]
        if rest in _SIMPLE:
            if rest == "pos_embed":
                value = value.reshape(value.shape[-2], value.shape[-1])  # (1, N, width) -> (N, width)
            out[_SIMPLE[rest]] = value
        elif rest in _POOL_PARTS:
            pool[rest] = value
        else:
            match = _BLOCK.match(rest)
            if match is None:
                raise ConfigError(
                    f"open_clip SigLIP checkpoint key {key!r} has no clipforge counterpart (class tokens, fc_norm, "
                    "register tokens or a classifier head in timm's ViT are not supported)"
                )
            index, sub = match.group(1), match.group(2)
            for old, new in _BLOCK_RENAMES.items():
                if sub.startswith(old):
                    sub = new + sub[len(old) :]
                    break
            out[f"visual.transformer.resblocks.{index}.{sub}"] = value
    if pool:
        missing = [name for name in _POOL_PARTS if name not in pool]
        if missing:
            raise ConfigError(f"open_clip SigLIP checkpoint lacks {[TRUNK + m for m in missing]} (attention pool)")
        out[NATIVE_PROBE_KEY] = pool["attn_pool.latent"]  # (1, 1, width), the probe's own shape
        for part in ("weight", "bias"):  # (3 width, width) / (3 width,)
            packed = torch.cat([pool[f"attn_pool.q.{part}"], pool[f"attn_pool.kv.{part}"]])
            out[f"visual.map_head.attention.in_proj_{part}"] = packed
    return out


def clipforge_to_siglip_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `siglip_to_clipforge_keys`: clipforge's SigLIP image tower under open_clip's timm names."""
    inverse_simple = {v: k for k, v in _SIMPLE.items()}
    inverse_block = {v: k for k, v in _BLOCK_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in inverse_simple:
            if key == "visual.positional_embedding":
                value = value.unsqueeze(0)  # (N, width) -> (1, N, width)
            out[TRUNK + inverse_simple[key]] = value
        elif key == NATIVE_PROBE_KEY:
            out[LATENT_KEY] = value
        elif key in ("visual.map_head.attention.in_proj_weight", "visual.map_head.attention.in_proj_bias"):
            width = value.shape[0] // 3
            part = key.rsplit("_", 1)[1]  # weight / bias
            out[f"{TRUNK}attn_pool.q.{part}"] = value[:width]
            out[f"{TRUNK}attn_pool.kv.{part}"] = value[width:]
        elif key.startswith("visual.transformer.resblocks."):
            index, sub = key[len("visual.transformer.resblocks.") :].split(".", 1)
            for new, old in inverse_block.items():
                if sub.startswith(new):
                    sub = old + sub[len(new) :]
                    break
            out[f"{TRUNK}blocks.{index}.{sub}"] = value
        else:
            out[key] = value
    return out


def vision_to_openclip(v: VisionConfig) -> dict[str, Any]:
    """open_clip `vision_cfg` of a SigLIP VisionConfig: the timm tower's name with open_clip's SigLIP pooling
    (`timm_pool: "map"`, `timm_proj: "none"`); a shape no timm SigLIP tower has is an error naming the known ones."""
    from .openclip_timm import timm_tower_name

    hint = "write it with --to hf (a transformers SiglipModel) or --to clipforge"
    name = timm_tower_name(v, TIMM_SIGLIP_TOWERS, "SigLIP", hint, **_SIGLIP)
    cfg: dict[str, Any] = {
        "image_size": v.image_size,
        "timm_model_name": name,
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
    }
    if v.drop_path:
        cfg["timm_drop_path"] = v.drop_path
    return cfg
