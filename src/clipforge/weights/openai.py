"""OpenAI's CLIP checkpoint layout: its key map to clipforge and its architecture, read from tensor shapes.

The weights of Radford et al. 2021 ("Learning Transferable Visual Models From Natural Language
Supervision") ship as state dicts of openai/CLIP's `model.py` `CLIP` class (inside TorchScript
archives, see `torchscript.py`). The image tower sits under `visual.` with the names clipforge
uses; the text tower is at top level (`token_embedding.weight`, `positional_embedding`,
`transformer.*`, `ln_final.*`, `text_projection`) where clipforge has it under `text.`; three
metadata entries (`input_resolution`, `context_length`, `vocab_size`) are not parameters. The files
carry no config, so the architecture is read from tensor shapes exactly as openai/CLIP's
`build_model` and open_clip's `build_model_from_openai_state_dict` do (ViT heads = width // 64,
ModifiedResNet heads = 32 * width // 64, text heads = width // 64, MLP ratio 4) with QuickGELU on
both towers, the activation those models were trained with.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from ..models.clip import CLIP
from ..models.config import CLIPConfig, ConfigError, TextConfig, VisionConfig
from .formats import CheckpointError, raise_on_mismatch, read_tensors

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
# The causal mask is a buffer of open_clip-built (and re-traced) OpenAI-layout models; clipforge derives it.
_DERIVED_KEYS = ("attn_mask",)
_TEXT_TOP_LEVEL = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
_SCALARS = ("logit_scale", "logit_bias")
_HEAD_WIDTH = 64


def _is_text_key(key: str) -> bool:
    return key.startswith(_TEXT_TOP_LEVEL)


def _skipped(key: str) -> bool:
    return key in OPENAI_EXTRA_KEYS or key in _DERIVED_KEYS


def openai_to_clipforge(
    state_dict: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = torch.float32
) -> dict[str, torch.Tensor]:
    """Rename an OpenAI CLIP state dict to clipforge's names, dropping its metadata entries.

    Floating-point tensors are cast to `dtype` (float32 by default: OpenAI's files are float16);
    `dtype=None` keeps them as stored. Integer buffers (BatchNorm's `num_batches_tracked`) are kept.
    Keys that have no place in OpenAI's layout raise `CheckpointError` naming them.
    """
    out: dict[str, torch.Tensor] = {}
    foreign = []
    for key, value in state_dict.items():
        if _skipped(key):
            continue
        if _is_text_key(key):
            name = "text." + key
        elif key.startswith("visual.") or key in _SCALARS:
            name = key
        else:
            foreign.append(key)
            continue
        if key in _SCALARS and value.numel() == 1:
            value = value.reshape(())  # a 0-dim scalar, as in OpenAI's files and clipforge's model
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[name] = value
    if foreign:
        raise CheckpointError(
            f"not an OpenAI CLIP state dict: key(s) {sorted(foreign)[:8]} are neither under visual., nor the text "
            f"tower ({', '.join(_TEXT_TOP_LEVEL)}), nor logit_scale"
        )
    return out


def _openai_key(key: str) -> str:
    if key.startswith("text."):
        return key[len("text.") :]
    return key


def clipforge_to_openai(
    state_dict: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """clipforge's state dict in OpenAI's layout, with `input_resolution`, `context_length` and `vocab_size` added.

    The metadata entries are 0-dim int64 tensors derived from the shapes. The layout records no head
    count or activation: readers assume heads = width // 64 and QuickGELU (see
    `config_from_openai_state_dict`), so only models built that way round-trip exactly. `dtype` casts floating-point
    tensors (torch.float16 gives OpenAI's storage precision); None keeps them. Parameters OpenAI's
    architecture has no place for (a logit bias, a text projection with bias, LayerScale, an
    attentional pooler) raise `CheckpointError`.
    """
    unsupported = [
        k
        for k in state_dict
        if k == "logit_bias"
        or k.startswith("text.text_projection.")
        or ".ls_1." in k
        or ".ls_2." in k
        or k.startswith("visual.attn_pool.")
        or not (k.startswith(("visual.", "text.")) or k == "logit_scale")
    ]
    if unsupported:
        raise CheckpointError(f"these parameters have no place in OpenAI's CLIP layout: {sorted(unsupported)[:8]}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[_openai_key(key)] = value
    config = config_from_openai_state_dict(out)
    out["input_resolution"] = torch.tensor(config.vision.image_size, dtype=torch.int64)
    out["context_length"] = torch.tensor(config.text.context_length, dtype=torch.int64)
    out["vocab_size"] = torch.tensor(config.text.vocab_size, dtype=torch.int64)
    return out


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        hint = ""
        if any(k.startswith("text.") for k in state_dict):
            hint = " (its text tower is under text.: clipforge names; convert with clipforge_to_openai first)"
        elif any(k.startswith(("vision_model.", "text_model.")) for k in state_dict):
            hint = " (it uses Hugging Face CLIPModel names; read it with weights.hf)"
        raise CheckpointError(f"not an OpenAI CLIP state dict: key {key!r} is missing{hint}")
    return state_dict[key]


def _block_count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = sorted({int(m.group(1)) for k in state_dict if (m := pattern.match(k))})
    if indices != list(range(len(indices))):
        raise CheckpointError(f"blocks under {prefix} are not numbered 0..N-1: found {indices}")
    return len(indices)


def _square_side(rows: int, key: str) -> int:
    side = round((rows - 1) ** 0.5)
    if side * side + 1 != rows:
        raise CheckpointError(f"{key}: {rows} rows is not a square grid plus one token")
    return side


def _vision_config(state_dict: Mapping[str, torch.Tensor]) -> VisionConfig:
    if "visual.proj" in state_dict:  # ViT (open_clip's test); a ModifiedResNet projects in its attention pool
        conv = _require(state_dict, "visual.conv1.weight")  # (width, 3, patch, patch)
        width, patch = conv.shape[0], conv.shape[-1]
        pos_key = "visual.positional_embedding"
        grid = _square_side(_require(state_dict, pos_key).shape[0], pos_key)
        return VisionConfig(
            image_size=patch * grid,
            layers=_block_count(state_dict, "visual.transformer.resblocks."),
            width=width,
            heads=max(1, width // _HEAD_WIDTH),
            patch_size=patch,
            act="quick_gelu",
        )
    pos_key = "visual.attnpool.positional_embedding"
    if pos_key not in state_dict:
        raise CheckpointError(
            "not an OpenAI CLIP state dict: no image tower found (neither visual.proj of a ViT nor "
            f"{pos_key} of a ModifiedResNet)"
        )
    grid = _square_side(state_dict[pos_key].shape[0], pos_key)
    width = _require(state_dict, "visual.layer1.0.conv1.weight").shape[0]
    layers = tuple(len({k.split(".")[2] for k in state_dict if k.startswith(f"visual.layer{i}.")}) for i in range(1, 5))
    return VisionConfig(
        image_size=grid * 32,
        layers=layers,
        width=width,
        heads=width * 32 // _HEAD_WIDTH,
        patch_size=None,
        act="quick_gelu",
    )


def _text_config(state_dict: Mapping[str, torch.Tensor]) -> TextConfig:
    width = _require(state_dict, "ln_final.weight").shape[0]
    return TextConfig(
        context_length=_require(state_dict, "positional_embedding").shape[0],
        vocab_size=_require(state_dict, "token_embedding.weight").shape[0],
        width=width,
        heads=max(1, width // _HEAD_WIDTH),
        layers=_block_count(state_dict, "transformer.resblocks."),
        act="quick_gelu",
    )


def expected_openai_shapes(config: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer of `config`'s model under its OpenAI name, with its shape (no memory used)."""
    with torch.device("meta"):
        model = CLIP(config)
    return {_openai_key(k): tuple(v.shape) for k, v in model.state_dict().items()}


def _check_shapes(state_dict: Mapping[str, torch.Tensor], config: CLIPConfig) -> None:
    present = {
        k: (v.reshape(()) if k in _SCALARS and v.numel() == 1 else v) for k, v in state_dict.items() if not _skipped(k)
    }
    v, t = config.vision, config.text
    tower = f"ModifiedResNet layers={v.layers}" if v.is_resnet else f"ViT patch={v.patch_size} layers={v.layers}"
    raise_on_mismatch(
        expected_openai_shapes(config),
        present,
        f"OpenAI CLIP state dict is inconsistent with the architecture its shapes imply ({tower}, width={v.width}, "
        f"image_size={v.image_size}; text width={t.width} layers={t.layers}; embed_dim={config.embed_dim})",
    )


def config_from_openai_state_dict(state_dict: Mapping[str, torch.Tensor]) -> CLIPConfig:
    """The `CLIPConfig` of an OpenAI-layout CLIP state dict, read from its tensor shapes.

    Follows open_clip's `build_model_from_openai_state_dict`: ViT when `visual.proj` exists, else a
    ModifiedResNet; widths, depths, patch and image size, embedding width, context length and vocab
    from shapes; heads from a head width of 64; QuickGELU on both towers. Every tensor is then checked
    against the model that config builds: a missing or unexpected key, or a tensor whose shape
    disagrees, raises `CheckpointError` naming the key with the expected and found shapes.
    """
    try:
        config = CLIPConfig(
            embed_dim=_require(state_dict, "text_projection").shape[-1],
            vision=_vision_config(state_dict),
            text=_text_config(state_dict),
        )
    except ConfigError as exc:
        raise CheckpointError(
            f"the tensor shapes of this OpenAI CLIP state dict describe no valid model: {exc}"
        ) from exc
    bias = state_dict.get("logit_bias")
    if bias is not None:  # not OpenAI's, but its presence is structure: the model must have one to load it
        config = config.replace(init_logit_bias=0.0 if bias.is_meta else float(bias.reshape(())))
    _check_shapes(state_dict, config)
    return config


def read_openai_checkpoint(
    path: str | os.PathLike, *, dtype: torch.dtype | None = torch.float32, allow_unsafe_pickle: bool = False
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """(config, clipforge state dict) of an OpenAI CLIP file: a TorchScript `.pt` from `clip.load`, or its state dict.

    Tensors are float32 unless `dtype` says otherwise (None keeps the file's float16).
    """
    tensors = read_tensors(path, allow_unsafe_pickle=allow_unsafe_pickle)
    try:
        config = config_from_openai_state_dict(tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"{os.fspath(path)}: {exc}") from exc
    return config, openai_to_clipforge(tensors, dtype=dtype)


__all__ = [
    "OPENAI_EXTRA_KEYS",
    "clipforge_to_openai",
    "config_from_openai_state_dict",
    "expected_openai_shapes",
    "openai_to_clipforge",
    "read_openai_checkpoint",
]
