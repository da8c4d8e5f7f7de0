"""open_clip's EVA-CLIP models: timm `eva02_*` image towers (open_clip `TimmModel`) in clipforge's ViT.

open_clip builds EVA02-B-16, EVA02-L-14, ... with `vision_cfg.timm_model_name` naming a timm EVA (timm
`models/eva.py`) and keeps that model under `visual.trunk.`; with `timm_proj: null` the trunk's classifier `head`
(a Linear with bias) is the projection, with `timm_proj: "linear"` it is `visual.head.proj`. clipforge runs the
same network as its `VisionTransformer` with EVA blocks (models/eva.py), so this module maps
- timm's names onto clipforge's (`patch_embed.proj` -> `conv1`, `blocks.i.norm1` -> `transformer.resblocks.i.ln_1`,
  separate or fused q/k/v -> the packed `attn.in_proj_weight` / `in_proj_bias`, with EVA's missing key bias as
  zeros, SwiGLU's `fc1_g` / `fc1_x` -> the packed `mlp.c_fc`, ...), and
- the timm model names open_clip's configs use onto `VisionConfig` fields (the shapes timm registers for them).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

from ..models.config import ConfigError, VisionConfig

TRUNK = "visual.trunk."
_CLS_KEY = TRUNK + "cls_token"
_ROPE_MLP_RATIO = 4 * 2 / 3  # timm's EVA02 SwiGLU ratio: hidden = int(width * 8/3)

# timm EVA models open_clip's configs name -> their VisionConfig fields (timm models/eva.py registrations).
_EVA02_CLIP = dict(
    mlp_ratio=_ROPE_MLP_RATIO, mlp_type="swiglu", scale_mlp=True, scale_attn_inner=True, rope=True,
    rope_ref_grid=16, patch_bias=True, no_ln_pre=True, layer_norm_eps=1e-6, proj_bias=True, pool_type="tok",
    key_bias=False,  # timm's EvaAttention has q_bias and v_bias only
)
TIMM_EVA_TOWERS: dict[str, dict[str, Any]] = {
    "eva02_base_patch16_clip_224": dict(image_size=224, patch_size=16, width=768, layers=12, heads=12, **_EVA02_CLIP),
    "eva02_large_patch14_clip_224": dict(
        image_size=224, patch_size=14, width=1024, layers=24, heads=16, **_EVA02_CLIP
    ),
    "eva02_large_patch14_clip_336": dict(
        image_size=336, patch_size=14, width=1024, layers=24, heads=16, **_EVA02_CLIP
    ),
}


def is_openclip_eva(model_cfg: dict[str, Any]) -> bool:
    """Whether an open_clip model config builds its image tower from a timm EVA model."""
    name = (model_cfg.get("vision_cfg") or {}).get("timm_model_name")
    return isinstance(name, str) and name.startswith(("eva02_", "eva_"))


def vision_from_openclip(vision_cfg: dict[str, Any]) -> VisionConfig:
    """The VisionConfig of an open_clip `vision_cfg` naming a timm EVA tower; unknown EVA models are refused."""
    name = vision_cfg["timm_model_name"]
    if name not in TIMM_EVA_TOWERS:
        raise ConfigError(
            f"open_clip vision_cfg.timm_model_name={name!r}: this timm EVA tower is not supported; supported: "
            f"{sorted(TIMM_EVA_TOWERS)} (EVA01 towers such as EVA01-g-14 are not)"
        )
    return token_tower_config(vision_cfg, TIMM_EVA_TOWERS[name], "EVA-CLIP")


def check_timm_image_size(vision_cfg: dict[str, Any], name: str, expected: int) -> int:
    """open_clip's `vision_cfg.image_size` for timm tower `name`, which must be the tower's own `expected` size:
    open_clip builds a timm tower at the size timm defines, whatever the config says."""
    image_size = vision_cfg.get("image_size", expected)
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0]
    if image_size != expected:
        raise ConfigError(
            f"open_clip vision_cfg.image_size={image_size} differs from timm {name}'s {expected}: "
            "open_clip builds the timm tower at its own size"
        )
    return image_size


def token_tower_config(vision_cfg: dict[str, Any], tower_fields: dict[str, Any], family: str) -> VisionConfig:
    """The VisionConfig of a class-token timm ViT tower (EVA02, MobileCLIP) from its table row `tower_fields`:
    open_clip's `timm_pool` must be 'token' and `timm_proj` null or 'linear' (then a head.proj Linear, biased only
    with `timm_proj_bias`)."""
    name = vision_cfg["timm_model_name"]
    pool, proj = vision_cfg.get("timm_pool", "avg"), vision_cfg.get("timm_proj", "linear")
    if pool != "token" or proj not in (None, "linear"):
        raise ConfigError(
            f"open_clip {name} with timm_pool={pool!r}, timm_proj={proj!r} is not supported ({family}'s configs use "
            "timm_pool 'token' and timm_proj null)"
        )
    fields = dict(tower_fields)
    if proj == "linear":
        fields["proj_bias"] = bool(vision_cfg.get("timm_proj_bias", False))
    check_timm_image_size(vision_cfg, name, fields["image_size"])
    return VisionConfig(**fields)


def is_eva_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether an open_clip state dict holds a timm EVA image tower (class token under visual.trunk.)."""
    return _CLS_KEY in state_dict or any(k.startswith(TRUNK + "blocks.0.attn.") for k in state_dict)


_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_RENAMES = {
    "norm1.": "ln_1.",
    "norm2.": "ln_2.",
    "attn.proj.": "attn.out_proj.",
    "attn.norm.": "attn.ln_inner.",
    "mlp.fc2.": "mlp.c_proj.",
    "mlp.norm.": "mlp.ln.",
    "mlp.fc1.": "mlp.c_fc.",  # timm's packed GluMlp (gate half first) or plain Mlp: both are clipforge's c_fc
    "gamma_1": "ls_1.gamma",
    "gamma_2": "ls_2.gamma",
}


def eva_to_clipforge_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the `visual.trunk.*` (and `visual.head.proj.*`) keys of an open_clip EVA model to clipforge's.

    Other keys pass through unchanged; q/k/v and SwiGLU input projections are concatenated (new tensors).
    """
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[int, str], torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in ("visual.head.proj.weight", "visual.trunk.head.weight"):
            out["visual.proj"] = value.t()  # Linear (D, width) -> clipforge's (width, D) matrix
        elif key in ("visual.head.proj.bias", "visual.trunk.head.bias"):
            out["visual.proj_bias"] = value
        elif not key.startswith(TRUNK):
            out[key] = value
        elif key == _CLS_KEY:
            out["visual.class_embedding"] = value.reshape(-1)  # (1, 1, width) -> (width,)
        elif key == TRUNK + "pos_embed":
            out["visual.positional_embedding"] = value.reshape(value.shape[-2], value.shape[-1])  # (1+N, width)
        elif key in _TIMM_WHOLE:  # patch embedding, final norm: the writer's table read backwards
            out[_TIMM_WHOLE[key]] = value
        else:
            match = _BLOCK.match(key[len(TRUNK) :])
            if match is None:
                raise ConfigError(
                    f"open_clip EVA checkpoint key {key!r} has no clipforge counterpart (fc_norm / attention pooling "
                    "variants of timm's EVA are not supported)"
                )
            index, rest = int(match.group(1)), match.group(2)
            if rest in _QKV_PARTS:
                parts[(index, rest)] = value
                continue
            for old, new in _BLOCK_RENAMES.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            out[f"visual.transformer.resblocks.{index}.{rest}"] = value
    out.update(_pack_parts(parts))
    return out


_QKV_PARTS = frozenset(
    {
        "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.q_proj.bias", "attn.v_proj.bias",
        "attn.k_proj.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias", "mlp.fc1_g.weight", "mlp.fc1_x.weight",
        "mlp.fc1_g.bias", "mlp.fc1_x.bias",
    }
)


def _pack_parts(parts: dict[tuple[int, str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Packed in_proj_weight / in_proj_bias / mlp.c_fc tensors from timm's separate ones, per block."""
    out = {}
    for index in sorted({i for i, _ in parts}):
        p = {name: t for (i, name), t in parts.items() if i == index}
        prefix = f"visual.transformer.resblocks.{index}."
        if "attn.qkv.weight" in p:
            weight = p["attn.qkv.weight"]
        else:
            weight = torch.cat([p["attn.q_proj.weight"], p["attn.k_proj.weight"], p["attn.v_proj.weight"]])
        out[prefix + "attn.in_proj_weight"] = weight  # (3 width, width)
        dim = weight.shape[0] // 3
        q_bias = p.get("attn.q_proj.bias", p.get("attn.q_bias"))
        v_bias = p.get("attn.v_proj.bias", p.get("attn.v_bias"))
        k_bias = p.get("attn.k_proj.bias")
        zeros = weight.new_zeros(dim)
        # No key bias in EVA: softmax is blind to it (it adds q.b_k to every score of a query), so zeros are exact.
        biases = [zeros if b is None else b for b in (q_bias, k_bias, v_bias)]
        out[prefix + "attn.in_proj_bias"] = torch.cat(biases)  # (3 width,)
        if "mlp.fc1_g.weight" in p:  # SwiGLU with separate gate / value projections: gate rows first
            out[prefix + "mlp.c_fc.weight"] = torch.cat([p["mlp.fc1_g.weight"], p["mlp.fc1_x.weight"]])
            out[prefix + "mlp.c_fc.bias"] = torch.cat([p["mlp.fc1_g.bias"], p["mlp.fc1_x.bias"]])
    return out


# ---------------------------------------------------------------------------------------------- writing


# Training-only VisionConfig fields a timm tower config does not carry (open_clip's TimmModel builds without them).
_TRAINING_ONLY = dict(drop_path=0.0, patch_dropout=0.0)


def timm_tower_name(
    v: VisionConfig, towers: dict[str, dict[str, Any]], family: str, hint: str = "write it with --to clipforge",
    **fixed: Any,
) -> str:
    """The timm model name in `towers` (rows of VisionConfig fields, plus `fixed` shared ones) whose config is `v`:
    open_clip names a timm tower instead of giving its shape, so a shape no timm model has cannot be written."""
    wanted = dataclasses.replace(v, **_TRAINING_ONLY)
    for name, fields in towers.items():
        try:
            row = VisionConfig(**{**fixed, **fields})  # a row's own fields override the shared ones
        except ConfigError:  # a row clipforge cannot build
            continue
        if row == wanted:
            return name
    raise ConfigError(
        f"open_clip keeps {family} image towers as timm models it names ({sorted(towers)}) and cannot take a shape; "
        f"this one (image_size={v.image_size}, patch_size={v.patch_size}, width={v.width}, layers={v.layers}) is "
        f"no timm model open_clip can build: {hint}"
    )


def vision_to_openclip(v: VisionConfig) -> dict[str, Any]:
    """open_clip `vision_cfg` of an EVA02 VisionConfig: the timm model name, the trunk's classifier as the biased
    projection (`timm_proj: null`, as open_clip's EVA02 configs) or, without a bias, open_clip's `head.proj`."""
    # key_bias: a tower that trained one (an older native checkpoint) is written when its values are zero, see
    # _unpack_part
    name = timm_tower_name(dataclasses.replace(v, proj_bias=True, key_bias=False), TIMM_EVA_TOWERS, "EVA02")
    cfg: dict[str, Any] = {
        "image_size": v.image_size,
        "timm_model_name": name,
        "timm_model_pretrained": False,
        "timm_pool": "token",
        "timm_proj": None if v.proj_bias else "linear",
    }
    if v.drop_path:
        cfg["timm_drop_path"] = v.drop_path
    return cfg


# clipforge key -> timm / open_clip key of the EVA tower's whole-key tensors (the blocks use _BLOCK_RENAMES).
_WHOLE = {
    "visual.class_embedding": _CLS_KEY,
    "visual.positional_embedding": TRUNK + "pos_embed",
    "visual.conv1.weight": TRUNK + "patch_embed.proj.weight",
    "visual.conv1.bias": TRUNK + "patch_embed.proj.bias",
    "visual.ln_post.weight": TRUNK + "norm.weight",
    "visual.ln_post.bias": TRUNK + "norm.bias",
}
_TIMM_WHOLE = {timm: native for native, timm in _WHOLE.items()}


def clipforge_to_eva_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `eva_to_clipforge_keys`, in the layout of timm's `eva02_*_clip_*` towers: separate q/k/v
    projections (q and v biased), SwiGLU's `fc1_g` / `fc1_x`, the projection as the trunk's `head` (with a bias)
    or open_clip's `head.proj` (without). Other keys pass through unchanged.

    EVA has no key bias; clipforge's packed in_proj holds one (zeros when read from EVA). Rotary embeddings turn
    a key bias into a position-dependent term of the scores, so a nonzero one changes the model: it is refused
    (ConfigError) rather than dropped."""
    inverse_block = {new: old for old, new in _BLOCK_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    head = TRUNK + "head." if "visual.proj_bias" in state_dict else "visual.head.proj."
    for key, value in state_dict.items():
        if key == "visual.class_embedding":
            out[_CLS_KEY] = value.reshape(1, 1, -1)  # (width,) -> (1, 1, width)
        elif key == "visual.positional_embedding":
            out[_WHOLE[key]] = value.unsqueeze(0)  # (1+N, width) -> (1, 1+N, width)
        elif key in _WHOLE:
            out[_WHOLE[key]] = value
        elif key == "visual.proj":
            out[head + "weight"] = value.t()  # clipforge's (width, D) matrix -> Linear (D, width)
        elif key == "visual.proj_bias":
            out[head + "bias"] = value
        elif key.startswith("visual.transformer.resblocks."):
            index, sub = key[len("visual.transformer.resblocks.") :].split(".", 1)
            out.update(_unpack_part(f"{TRUNK}blocks.{index}.", sub, value, inverse_block, state_dict, key))
        else:
            out[key] = value
    return out


def _unpack_part(
    prefix: str, sub: str, value: torch.Tensor, inverse_block: dict[str, str], sd: dict[str, torch.Tensor], key: str
) -> dict[str, torch.Tensor]:
    """timm tensors for one clipforge block tensor `sub` (the packed ones split: views, not copies)."""
    if sub == "attn.in_proj_weight":  # (3 width, width): q rows, then k, then v
        q, k, v = value.chunk(3)
        return {prefix + "attn.q_proj.weight": q, prefix + "attn.k_proj.weight": k, prefix + "attn.v_proj.weight": v}
    if sub == "attn.in_proj_bias":  # (3 width,): EVA has no key bias (see clipforge_to_eva_keys)
        q, k, v = value.chunk(3)
        if not k.is_meta and bool(k.any()):
            raise ConfigError(
                f"{key}: this EVA02 attention has a nonzero key bias (max |b_k| {k.abs().max().item():.3g}), which "
                "timm's EVA (no key bias) cannot hold and which rotary embeddings make matter; write it with "
                "--to clipforge"
            )
        return {prefix + "attn.q_proj.bias": q, prefix + "attn.v_proj.bias": v}
    if sub.startswith("mlp.c_fc."):
        hidden = sd[key.rsplit("mlp.", 1)[0] + "mlp.c_proj.weight"].shape[1]
        if value.shape[0] == 2 * hidden:  # SwiGLU: gate rows first, as the reader packs them
            gate, x = value.chunk(2)
            part = sub.rsplit(".", 1)[1]
            return {f"{prefix}mlp.fc1_g.{part}": gate, f"{prefix}mlp.fc1_x.{part}": x}
    for new, old in inverse_block.items():
        if sub.startswith(new):
            return {prefix + old + sub[len(new) :]: value}
    return {prefix + sub: value}
