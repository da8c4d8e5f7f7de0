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
The FastViT / MCi towers of MobileCLIP-S*, MobileCLIP2-S* (`fastvit_mci*`) are not supported (weights/families.py).
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.config import VisionConfig
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
    "TIMM_MOBILECLIP_TOWERS",
    "is_mobileclip_vit_state_dict",
    "is_openclip_mobileclip_vit",
    "mobileclip_vit_to_clipforge_keys",
    "vision_from_openclip",
]
