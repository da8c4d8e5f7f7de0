"""open_clip's ViT-based MobileCLIP models: timm `vit_base_mci_224` and `vit_large_patch14_clip_224` image towers.

MobileCLIP-B, MobileCLIP2-B (Vasu et al. 2024, 2025) and MobileCLIP2-L-14 keep their image tower as an open_clip
`TimmModel` (`visual.trunk.`): a timm VisionTransformer whose classifier `head` (Linear with bias, `timm_proj:
null`) is the projection. Their text towers are open_clip's standard transformer (`custom_text`, so under `text.`;
bidirectional where `no_causal_mask`). What differs from clipforge's CLIP ViT:
- `vit_base_mci_224`: the MCi convolutional stem (`patch_embed.backbone.{0,1,2}`, models/mci_stem.py) instead of a
  patch convolution, positions for the patch tokens only (`no_embed_class`), no LayerNorm before the blocks, and
  timm's LayerNorm eps 1e-6;
- `vit_large_patch14_clip_224`: a plain CLIP ViT-L/14 (`norm_pre` is clipforge's `ln_pre`), eps 1e-5.
Blocks are timm's standard ones (fused qkv with bias, GELU MLP), mapped by openclip_timm's block renames.
The FastViT / MCi towers of MobileCLIP-S1/S2 and MobileCLIP2-S0..S4 (timm `fastvit_mci0..4`, `timm_pool: avg`,
`timm_proj: null`: timm's own classifier `head.fc` is the projection) are clipforge's FastViT (models/fastvit.py),
whose parameter names are timm's: the key map strips `trunk.`. Only the training form (separate branches, BatchNorm
statistics) is read, which is what open_clip saves; a reparameterised (`reparam_conv`) trunk is refused
(weights/families.py).
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.config import ConfigError, VisionConfig
from .openclip_timm import TRUNK, eva_to_clipforge_keys, token_tower_config

STEM_PREFIX = TRUNK + "patch_embed.backbone."
_NORM_PRE = TRUNK + "norm_pre."

# timm towers open_clip's MobileCLIP configs name -> their VisionConfig fields (timm's registrations).
TIMM_MOBILECLIP_TOWERS: dict[str, dict[str, Any]] = {
    "vit_base_mci_224": dict(
        image_size=224, patch_size=16, width=768, layers=12, heads=12, conv_stem=True, no_embed_class=True,
        no_ln_pre=True, layer_norm_eps=1e-6, proj_bias=True,
    ),
    "vit_large_patch14_clip_224": dict(
        image_size=224, patch_size=14, width=1024, layers=24, heads=16, layer_norm_eps=1e-5, proj_bias=True
    ),
}


# timm FastViT / MCi towers -> (stage depths, first stage width, MLP ratio, clipforge's VisionConfig.fastvit).
TIMM_FASTVITS: dict[str, tuple[tuple[int, ...], int, float, str]] = {
    "fastvit_mci0": ((2, 6, 10, 2), 64, 3.0, "mci"),
    "fastvit_mci1": ((4, 12, 20, 4), 64, 3.0, "mci"),
    "fastvit_mci2": ((4, 12, 24, 4), 80, 3.0, "mci"),
    "fastvit_mci3": ((2, 12, 24, 4, 2), 96, 4.0, "mci-large"),
    "fastvit_mci4": ((2, 12, 24, 4, 4), 128, 4.0, "mci-large"),
}
FASTVIT_TRUNK_KEY = TRUNK + "final_conv.se.fc1.weight"  # marks an open_clip timm-FastViT state dict
NATIVE_FASTVIT_KEY = "visual.final_conv.se.fc1.weight"


def is_openclip_fastvit(model_cfg: dict[str, Any]) -> bool:
    """Whether an open_clip model config builds its image tower from a timm FastViT / MCi model (MobileCLIP-S*)."""
    return (model_cfg.get("vision_cfg") or {}).get("timm_model_name") in TIMM_FASTVITS


def fastvit_vision_from_openclip(v: dict[str, Any]) -> VisionConfig:
    """The VisionConfig of an open_clip `vision_cfg` naming a timm FastViT / MCi tower; timm options other than
    open_clip's MobileCLIP ones (`timm_pool: avg`, `timm_proj: null`, no head dropout) are refused, naming them."""
    name = v["timm_model_name"]
    pool, proj = v.get("timm_pool", "avg"), v.get("timm_proj", "linear")
    if pool != "avg" or proj not in (None, ""):
        raise ConfigError(
            f"open_clip vision_cfg timm_pool={pool!r} / timm_proj={proj!r}: clipforge reads {name} towers as "
            "open_clip's MobileCLIP configs build them (timm_pool 'avg', timm_proj null: timm's head.fc projects)"
        )
    if v.get("timm_drop", 0.0):
        raise ConfigError(f"open_clip vision_cfg.timm_drop={v['timm_drop']} (head dropout) is not supported; set 0")
    if v.get("timm_model_pretrained", False):
        raise ConfigError("open_clip vision_cfg.timm_model_pretrained=true needs timm's ImageNet weights; load a "
                          "CLIP checkpoint instead (clipforge never downloads timm weights)")
    depths, width, mlp_ratio, style = TIMM_FASTVITS[name]
    image_size = v.get("image_size", 256)
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise ConfigError(f"open_clip vision_cfg.image_size={image_size} is not square; clipforge needs square")
        image_size = image_size[0]
    return VisionConfig(
        image_size=image_size, layers=depths, width=width, patch_size=4, mlp_ratio=mlp_ratio, pool_type="avg",
        fastvit=style, drop_path=float(v.get("timm_drop_path") or 0.0),
    )


def fastvit_vision_to_openclip(v: VisionConfig) -> dict[str, Any]:
    """open_clip `vision_cfg` of a FastViT VisionConfig; one that is no timm model is an error naming why."""
    shape = (tuple(v.layers), v.width, v.mlp_ratio, v.fastvit)
    name = next((n for n, spec in TIMM_FASTVITS.items() if spec == shape), None)
    if name is None:
        raise ConfigError(
            f"this FastViT (layers={v.layers}, width={v.width}, mlp_ratio={v.mlp_ratio}, fastvit={v.fastvit!r}) "
            f"matches no timm model open_clip can build; known: {sorted(TIMM_FASTVITS)}"
        )
    return {
        "timm_model_name": name, "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": None,
        "timm_drop": 0.0, "timm_drop_path": v.drop_path, "image_size": v.image_size,
    }


def fastvit_to_clipforge_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's `visual.trunk.*` FastViT keys -> clipforge's `visual.*` (timm's names kept); others pass."""
    return {("visual." + k[len(TRUNK) :] if k.startswith(TRUNK) else k): v for k, v in state_dict.items()}


def clipforge_to_fastvit_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """clipforge's FastViT image tower keys -> open_clip's TimmModel layout (`visual.trunk.*`)."""
    return {("visual.trunk." + k[len("visual.") :] if k.startswith("visual.") else k): v for k, v in state_dict.items()}


def is_openclip_mobileclip_vit(model_cfg: dict[str, Any]) -> bool:
    """Whether an open_clip model config builds its image tower from a ViT-based MobileCLIP timm model."""
    return (model_cfg.get("vision_cfg") or {}).get("timm_model_name") in TIMM_MOBILECLIP_TOWERS


def vision_from_openclip(vision_cfg: dict[str, Any]) -> VisionConfig:
    """The VisionConfig of an open_clip `vision_cfg` naming a ViT-based MobileCLIP timm tower."""
    return token_tower_config(vision_cfg, TIMM_MOBILECLIP_TOWERS[vision_cfg["timm_model_name"]], "MobileCLIP")


def is_mobileclip_vit_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether an open_clip state dict holds a timm ViT with the MCi stem or a pre-norm (`norm_pre`) timm CLIP ViT."""
    return any(k.startswith((STEM_PREFIX, _NORM_PRE)) for k in state_dict)


def mobileclip_vit_to_clipforge_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an open_clip MobileCLIP ViT state dict's `visual.trunk.*` keys to clipforge's: the MCi stem keeps
    timm's module names under `visual.conv1.`, `norm_pre` is `ln_pre`, the rest is a timm ViT (openclip_timm)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(STEM_PREFIX):
            key = "visual.conv1." + key[len(STEM_PREFIX) :]
        elif key.startswith(_NORM_PRE):
            key = "visual.ln_pre." + key[len(_NORM_PRE) :]
        elif key.startswith(TRUNK + "blocks.") and key.endswith(".attn.qkv.bias"):
            # timm's fused qkv bias (3 width,): split into the q/k/v biases openclip_timm packs with the weight
            base = key.removesuffix("qkv.bias")
            for part, chunk in zip("qkv", value.chunk(3)):
                renamed[f"{base}{part}_proj.bias"] = chunk
            continue
        renamed[key] = value
    return eva_to_clipforge_keys(renamed)


__all__ = [
    "FASTVIT_TRUNK_KEY",
    "NATIVE_FASTVIT_KEY",
    "TIMM_FASTVITS",
    "TIMM_MOBILECLIP_TOWERS",
    "clipforge_to_fastvit_keys",
    "fastvit_to_clipforge_keys",
    "fastvit_vision_from_openclip",
    "fastvit_vision_to_openclip",
    "is_openclip_fastvit",
    "is_mobileclip_vit_state_dict",
    "is_openclip_mobileclip_vit",
    "mobileclip_vit_to_clipforge_keys",
    "vision_from_openclip",
]
