"""open_clip's timm ConvNeXt image towers (`convnext_*` models): config translation and key map.

open_clip builds these as `TimmModel`: `visual.trunk.*` is a timm ConvNeXt whose classifier is reset (its
`head.norm` LayerNorm stays: timm pools, then norms), `visual.head.*` is open_clip's projection (`proj` Linear or
`mlp.fc1`/`mlp.fc2`). clipforge's ConvNeXt (models/convnext.py) uses timm's names inside the trunk, so the map
strips `trunk.` and renames `trunk.head.norm` to `head_norm`. The small timm models (atto .. nano) run their
block MLPs as 1x1 convolutions (`conv_mlp`): the same weights, stored (out, in, 1, 1), reshaped to (out, in).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..models.config import ConfigError, VisionConfig

# timm ConvNeXt names open_clip configs use -> (stage depths, first stage width, LayerNorm eps).
TIMM_CONVNEXTS: dict[str, tuple[tuple[int, int, int, int], int, float]] = {
    "convnext_atto": ((2, 2, 6, 2), 40, 1e-6),
    "convnext_femto": ((2, 2, 6, 2), 48, 1e-6),
    "convnext_pico": ((2, 2, 6, 2), 64, 1e-6),
    "convnext_nano": ((2, 2, 8, 2), 80, 1e-6),
    "convnext_tiny": ((3, 3, 9, 3), 96, 1e-6),
    "convnext_small": ((3, 3, 27, 3), 96, 1e-6),
    "convnext_base": ((3, 3, 27, 3), 128, 1e-6),
    "convnext_large": ((3, 3, 27, 3), 192, 1e-6),
    "convnext_xlarge": ((3, 3, 27, 3), 256, 1e-6),
    "convnext_xxlarge": ((3, 4, 30, 3), 384, 1e-5),
}
TRUNK_STEM_KEY = "visual.trunk.stem.0.weight"  # marks an open_clip timm-ConvNeXt state dict
NATIVE_STEM_KEY = "visual.stem.0.weight"
# open_clip vision_cfg keys of a timm tower, with the values clipforge can build.
_TIMM_POOL = ("", "avg")  # "" keeps the trunk's own head: average pool + LayerNorm
_CONV_MLP = re.compile(r"^visual\.stages\.\d+\.blocks\.\d+\.mlp\.fc[12]\.weight$")


def is_openclip_convnext(model_cfg: dict[str, Any]) -> bool:
    """Whether an open_clip model config has a timm ConvNeXt image tower."""
    name = model_cfg.get("vision_cfg", {}).get("timm_model_name")
    return isinstance(name, str) and (name.startswith("convnext") or name in TIMM_CONVNEXTS)


def vision_from_openclip(v: dict[str, Any]) -> VisionConfig:
    """VisionConfig of an open_clip `vision_cfg` naming a timm ConvNeXt; other timm options are refused."""
    name = v["timm_model_name"]
    if name not in TIMM_CONVNEXTS:
        raise ConfigError(
            f"open_clip vision_cfg.timm_model_name={name!r} is not a supported ConvNeXt; supported: "
            f"{sorted(TIMM_CONVNEXTS)}"
        )
    pool, proj = v.get("timm_pool", "avg"), v.get("timm_proj", "linear")
    if pool not in _TIMM_POOL:
        raise ConfigError(f"open_clip vision_cfg.timm_pool={pool!r} is not supported for ConvNeXt (only '' or 'avg')")
    if proj not in ("linear", "mlp"):
        raise ConfigError(f"open_clip vision_cfg.timm_proj={proj!r} is not supported (only 'linear' or 'mlp')")
    if v.get("timm_drop", 0.0):
        raise ConfigError(f"open_clip vision_cfg.timm_drop={v['timm_drop']} (head dropout) is not supported; set 0")
    if v.get("timm_model_pretrained", False):
        raise ConfigError("open_clip vision_cfg.timm_model_pretrained=true needs timm's ImageNet weights; load a "
                          "CLIP checkpoint instead (clipforge never downloads timm weights)")
    depths, width, eps = TIMM_CONVNEXTS[name]
    image_size = v.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise ConfigError(f"open_clip vision_cfg.image_size={image_size} is not square; clipforge needs square")
        image_size = image_size[0]
    return VisionConfig(
        image_size=image_size,
        layers=depths,
        width=width,
        patch_size=4,
        pool_type="avg",
        ls_init_value=1e-6,
        layer_norm_eps=eps,
        convnext=True,
        head_proj=proj,
        head_proj_bias=bool(v.get("timm_proj_bias", False)),
        drop_path=float(v.get("timm_drop_path") or 0.0),
    )


def vision_to_openclip(v: VisionConfig) -> dict[str, Any]:
    """open_clip `vision_cfg` of a ConvNeXt VisionConfig; one that is no timm model is an error naming why."""
    shape = (tuple(v.layers), v.width, v.layer_norm_eps, v.patch_size)
    name = next((n for n, (d, w, e) in TIMM_CONVNEXTS.items() if shape == (d, w, e, 4)), None)
    if name is None:
        raise ConfigError(
            f"this ConvNeXt (layers={v.layers}, width={v.width}, layer_norm_eps={v.layer_norm_eps}) matches no timm "
            f"model open_clip can build; known: {sorted(TIMM_CONVNEXTS)}"
        )
    if v.ls_init_value != 1e-6 or v.mlp_ratio != 4.0 or v.act != "gelu":
        raise ConfigError("open_clip's timm ConvNeXt has ls_init_value 1e-6, mlp_ratio 4 and GELU; this model differs")
    cfg: dict[str, Any] = {
        "timm_model_name": name,
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": v.head_proj,
        "timm_drop": 0.0,
        "timm_drop_path": v.drop_path,
        "image_size": v.image_size,
    }
    if v.head_proj_bias:
        cfg["timm_proj_bias"] = True
    return cfg


def convnext_to_clipforge_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an open_clip timm-ConvNeXt image tower's keys (`visual.trunk.*`, `visual.head.*`) to clipforge's;
    other keys pass through. 1x1-convolution MLP weights (conv_mlp models) become Linear weights (views)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("visual.trunk.head.norm."):
            key = "visual.head_norm." + key[len("visual.trunk.head.norm.") :]
        elif key.startswith("visual.trunk.head."):
            raise ConfigError(
                f"{key}: this open_clip ConvNeXt keeps a timm classifier in its trunk (timm_pool/timm_proj other "
                "than open_clip's CLIP configs); clipforge cannot load it"
            )
        elif key.startswith("visual.trunk."):
            key = "visual." + key[len("visual.trunk.") :]
        if _CONV_MLP.match(key) and value.ndim == 4:
            value = value.reshape(value.shape[0], value.shape[1])  # (out, in, 1, 1) -> (out, in)
        out[key] = value
    return out


def clipforge_to_convnext_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """clipforge's ConvNeXt image tower keys -> open_clip's TimmModel layout (Linear MLPs, as timm's CLIP-size
    ConvNeXts hold them; timm's conv_mlp models are not written)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("visual.head_norm."):
            key = "visual.trunk.head.norm." + key[len("visual.head_norm.") :]
        elif key.startswith("visual.") and not key.startswith("visual.head."):
            key = "visual.trunk." + key[len("visual.") :]
        out[key] = value
    return out
