"""big_vision SigLIP checkpoints (`webli_en_b16_224_*.npz`, ...): read Google's flat `.npz` files without JAX.

big_vision (github.com/google-research/big_vision, `models/vit.py` + `models/proj/image_text/two_towers.py`)
saves a Flax parameter tree flattened into one `.npz`, one array per leaf, named by its path:
`params/img/embedding/kernel`, `params/img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel`,
`params/img/MAPHead_0/probe`, `params/txt/Embed_0/embedding`, `params/t`, `params/b`, ... (some files drop the
`params/` prefix; the so400m and b16-512 files store the blocks "scanned": one `encoderblock/...` array per leaf
with the layer as its first axis). Flax keeps Dense kernels as (in, out), attention q/k/v kernels as
(width, heads, head_dim) and the output kernel as (heads, head_dim, width), the patch convolution as HWIO.

This module turns such a file into the transformers `SiglipModel` state dict layout (the same reshapes as
transformers' `convert_siglip_to_hf.py`) and hands it to `hf_siglip`, which owns the SigLIP <-> clipforge key
map, so there is one SigLIP key map in clipforge. The architecture is read from the arrays' shapes (widths,
depths, heads, MLP sizes, patch and image size, vocabulary, context length): an `.npz` holds no config.
Activations (GELU, tanh approximation) and LayerNorm epsilon (1e-6) are big_vision's fixed defaults for SigLIP.

Arrays are read with `numpy.load(allow_pickle=False)`: an object array in the file is refused, never unpickled.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.config import CLIPConfig, ConfigError
from .formats import CheckpointError
from .hf_siglip import TEXT_DEFAULTS, config_from_hf_siglip, hf_siglip_to_clipforge

_PREFIXES = ("params/", "")
_IMG, _TXT = "img/", "txt/"
_BLOCK = re.compile(r"^(?P<tower>img/Transformer|txt/Encoder_0)/encoderblock_(?P<i>\d+)/(?P<leaf>.+)$")
_SCANNED = re.compile(r"^(?P<tower>img/Transformer|txt/Encoder_0)/encoderblock/(?P<leaf>.+)$")
# Per-block leaves: big_vision name -> transformers SiglipEncoderLayer name (kernels transposed below).
_BLOCK_LEAVES = {
    "LayerNorm_0/scale": "layer_norm1.weight",
    "LayerNorm_0/bias": "layer_norm1.bias",
    "LayerNorm_1/scale": "layer_norm2.weight",
    "LayerNorm_1/bias": "layer_norm2.bias",
    "MlpBlock_0/Dense_0/kernel": "mlp.fc1.weight",
    "MlpBlock_0/Dense_0/bias": "mlp.fc1.bias",
    "MlpBlock_0/Dense_1/kernel": "mlp.fc2.weight",
    "MlpBlock_0/Dense_1/bias": "mlp.fc2.bias",
    **{
        f"MultiHeadDotProductAttention_0/{src}/{p}": f"self_attn.{dst}_proj.{'weight' if p == 'kernel' else p}"
        for src, dst in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "out"))
        for p in ("kernel", "bias")
    },
}
_TOWER = {"img/Transformer": "vision_model", "txt/Encoder_0": "text_model"}
# Leaves outside the blocks: big_vision name (after the prefix) -> transformers name.
_PLAIN = {
    "img/embedding/kernel": "vision_model.embeddings.patch_embedding.weight",
    "img/embedding/bias": "vision_model.embeddings.patch_embedding.bias",
    "img/pos_embedding": "vision_model.embeddings.position_embedding.weight",
    "img/Transformer/encoder_norm/scale": "vision_model.post_layernorm.weight",
    "img/Transformer/encoder_norm/bias": "vision_model.post_layernorm.bias",
    "img/MAPHead_0/probe": "vision_model.head.probe",
    "img/MAPHead_0/LayerNorm_0/scale": "vision_model.head.layernorm.weight",
    "img/MAPHead_0/LayerNorm_0/bias": "vision_model.head.layernorm.bias",
    "img/MAPHead_0/MlpBlock_0/Dense_0/kernel": "vision_model.head.mlp.fc1.weight",
    "img/MAPHead_0/MlpBlock_0/Dense_0/bias": "vision_model.head.mlp.fc1.bias",
    "img/MAPHead_0/MlpBlock_0/Dense_1/kernel": "vision_model.head.mlp.fc2.weight",
    "img/MAPHead_0/MlpBlock_0/Dense_1/bias": "vision_model.head.mlp.fc2.bias",
    "img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel": "vision_model.head.attention.out_proj.weight",
    "img/MAPHead_0/MultiHeadDotProductAttention_0/out/bias": "vision_model.head.attention.out_proj.bias",
    "txt/Embed_0/embedding": "text_model.embeddings.token_embedding.weight",
    "txt/pos_embedding": "text_model.embeddings.position_embedding.weight",
    "txt/Encoder_0/encoder_norm/scale": "text_model.final_layer_norm.weight",
    "txt/Encoder_0/encoder_norm/bias": "text_model.final_layer_norm.bias",
    "txt/head/kernel": "text_model.head.weight",
    "txt/head/bias": "text_model.head.bias",
    "t": "logit_scale",
    "b": "logit_bias",
}
_MAP_QKV = "img/MAPHead_0/MultiHeadDotProductAttention_0/"
MARKER_KEYS = ("params/img/embedding/kernel", "img/embedding/kernel")
# A deflated member expanding more than this is refused (float weights compress to ~90%; zeros ~1000x), above a
# size where it matters.
_MAX_DEFLATE_RATIO = 100
_BOMB_MIN_BYTES = 16 * 2**20


def is_big_vision_names(names: list[str]) -> bool:
    """Whether the member names of a zip archive are those of a big_vision two-tower `.npz`."""
    stems = {n.removesuffix(".npy") for n in names if n.endswith(".npy")}
    return any(m in stems for m in MARKER_KEYS)


def _check_members(path: Path) -> None:
    """Refuse, before numpy allocates anything, a member whose `.npy` header declares more (or less) data than the
    member holds, an object array, or a compressed member that expands over `_MAX_DEFLATE_RATIO` times.

    numpy allocates an array of the header's shape first and only then reads the data, so a 100-byte member
    declaring (10**6, 10**6) floats asks for 4 TB; and a deflated member of zeros (a zip bomb) holds gigabytes in
    kilobytes. The member's size comes from the zip directory, which zipfile enforces while reading.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if (
                    info.compress_type != zipfile.ZIP_STORED
                    and info.file_size > _BOMB_MIN_BYTES
                    and info.file_size > _MAX_DEFLATE_RATIO * max(info.compress_size, 1)
                ):
                    raise CheckpointError(
                        f"{path}: member {info.filename!r} expands from {info.compress_size:,} to {info.file_size:,} "
                        f"bytes (over {_MAX_DEFLATE_RATIO}x): weights do not compress like that; the file is a zip "
                        "bomb or not a checkpoint"
                    )
                if info.filename.endswith(".npy"):
                    with archive.open(info) as member:
                        _check_npy_header(path, info, member)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read this .npz ({type(exc).__name__}: {exc}); re-download it") from exc


def _check_npy_header(path: Path, info: zipfile.ZipInfo, member: Any) -> None:
    name = info.filename.removesuffix(".npy")
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(member)
        if version not in readers:
            raise ValueError(f"npy format version {version} (numpy writes 1.0 or 2.0 for numeric arrays)")
        shape, _, dtype = readers[version](member)
    except ValueError as exc:
        raise CheckpointError(f"{path}: array {name!r} has no valid .npy header ({exc}); the file is damaged") from exc
    if dtype.hasobject:
        raise CheckpointError(
            f"{path}: array {name!r} is an object array, which needs unpickling; clipforge never unpickles, and "
            "big_vision checkpoints hold only numeric arrays: the file is not a big_vision checkpoint or is damaged"
        )
    declared = math.prod(shape) * dtype.itemsize
    held = info.file_size - member.tell()
    if declared != held:
        raise CheckpointError(
            f"{path}: array {name!r} declares shape {tuple(shape)} {dtype} ({declared:,} bytes) but its member holds "
            f"{held:,} bytes of data; the file is truncated or crafted"
        )


def read_npz_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an `.npz` by name, read with allow_pickle=False; a CheckpointError names what is wrong."""
    path = Path(path)
    _check_members(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as exc:  # numpy's message for object arrays: "Object arrays cannot be loaded when ..."
        raise CheckpointError(
            f"{path}: an array in this .npz needs unpickling ({exc}); clipforge never unpickles, and big_vision "
            "checkpoints hold only numeric arrays: the file is not a big_vision checkpoint or is damaged"
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read this .npz ({type(exc).__name__}: {exc}); re-download it") from exc
    for name, array in arrays.items():
        if array.dtype.kind != "f":
            raise CheckpointError(
                f"{path}: array {name!r} has dtype {array.dtype} ({array.dtype.kind!r}); big_vision SigLIP weights "
                "are floating point (a bfloat16 file saved as raw void bytes must be re-saved as float32)"
            )
    return arrays


def _strip_prefix(arrays: Mapping[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    for prefix in _PREFIXES:
        if f"{prefix}img/embedding/kernel" in arrays:
            return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
    raise CheckpointError(
        f"{path}: not a big_vision SigLIP checkpoint: no 'params/img/embedding/kernel' (or 'img/embedding/kernel') "
        "array. Image-only big_vision ViTs and other big_vision models are not supported"
    )


def _unscan(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scanned blocks (`encoderblock/...`, layer on axis 0) -> one `encoderblock_{i}/...` array per layer."""
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        match = _SCANNED.match(key)
        if match is None:
            out[key] = value
            continue
        for i in range(value.shape[0]):
            out[f"{match['tower']}/encoderblock_{i}/{match['leaf']}"] = value[i]
    return out


def _shape(arrays: Mapping[str, np.ndarray], key: str, ndim: int, path: Path) -> tuple[int, ...]:
    if key not in arrays:
        raise CheckpointError(f"{path}: big_vision checkpoint lacks array {key!r}; the file is incomplete")
    shape = arrays[key].shape
    if len(shape) != ndim:
        raise CheckpointError(f"{path}: array {key!r} has shape {shape}, expected {ndim} dimensions")
    return tuple(int(s) for s in shape)


def _depth(arrays: Mapping[str, np.ndarray], tower: str) -> int:
    layers = {int(m["i"]) for k in arrays if (m := _BLOCK.match(k)) and m["tower"] == tower}
    return len(layers)


def hf_config_from_big_vision(arrays: Mapping[str, np.ndarray], path: Path) -> dict[str, Any]:
    """A transformers SiglipModel config.json (as a dict) read from the shapes of prefix-free, unscanned arrays."""
    if arrays["img/embedding/kernel"].ndim == 2:
        raise CheckpointError(
            f"{path}: its patch embedding is a Dense layer over flattened patches: a SigLIP 2 NaFlex checkpoint "
            "(variable-resolution patches), which clipforge does not read; the closest supported family is SigLIP"
        )
    ph, pw, channels, v_width = _shape(arrays, "img/embedding/kernel", 4, path)
    if ph != pw or channels != 3:
        raise CheckpointError(f"{path}: patch kernel {(ph, pw, channels, v_width)}: expected square RGB patches")
    _, positions, _ = _shape(arrays, "img/pos_embedding", 3, path)
    grid = round(positions**0.5)
    if grid * grid != positions:
        raise CheckpointError(
            f"{path}: 'img/pos_embedding' has {positions} positions, not a square grid: a class token or a "
            "non-square image, which SigLIP checkpoints do not have"
        )
    if "img/MAPHead_0/probe" not in arrays:
        raise CheckpointError(
            f"{path}: no 'img/MAPHead_0/probe': this image tower does not pool with a MAP head (a class-token or "
            "average-pooled big_vision ViT); clipforge reads big_vision SigLIP (MAP-head) checkpoints only"
        )
    block = "img/Transformer/encoderblock_0/"
    _, v_heads, _ = _shape(arrays, block + "MultiHeadDotProductAttention_0/query/kernel", 3, path)
    _, v_mlp = _shape(arrays, block + "MlpBlock_0/Dense_0/kernel", 2, path)
    vocab, t_width = _shape(arrays, "txt/Embed_0/embedding", 2, path)
    _, context, _ = _shape(arrays, "txt/pos_embedding", 3, path)
    tblock = "txt/Encoder_0/encoderblock_0/"
    _, t_heads, _ = _shape(arrays, tblock + "MultiHeadDotProductAttention_0/query/kernel", 3, path)
    _, t_mlp = _shape(arrays, tblock + "MlpBlock_0/Dense_0/kernel", 2, path)
    projection = _shape(arrays, "txt/head/kernel", 2, path)[1] if "txt/head/kernel" in arrays else t_width
    vision = {
        "hidden_size": v_width, "intermediate_size": v_mlp, "num_hidden_layers": _depth(arrays, "img/Transformer"),
        "num_attention_heads": v_heads, "num_channels": 3, "image_size": grid * ph, "patch_size": ph,
        "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
    }
    text = {
        "vocab_size": vocab, "hidden_size": t_width, "intermediate_size": t_mlp,
        "num_hidden_layers": _depth(arrays, "txt/Encoder_0"), "num_attention_heads": t_heads,
        "max_position_embeddings": context, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
        "projection_size": projection, "pad_token_id": TEXT_DEFAULTS["pad_token_id"],
        "eos_token_id": TEXT_DEFAULTS["eos_token_id"],
    }
    return {"model_type": "siglip", "text_config": text, "vision_config": vision}


def _to_hf_layout(name: str, value: np.ndarray) -> np.ndarray:
    """One big_vision leaf -> the layout of its transformers tensor (convert_siglip_to_hf.py's reshapes)."""
    if name.endswith("patch_embedding.weight"):
        return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
        return value.reshape(value.shape[0], -1).T  # (D, H, Dh) -> (D, H*Dh) -> (out, in)
    if name.endswith("out_proj.weight"):
        return value.reshape(-1, value.shape[-1]).T  # (H, Dh, D) -> (H*Dh, D) -> (out, in)
    if "position_embedding" in name:
        return value.reshape(-1, value.shape[-1])  # (1, N, D) -> (N, D)
    if name.endswith("probe"):
        return value.reshape(1, 1, -1)
    if name.endswith(".weight") and "token_embedding" not in name and value.ndim == 2:
        return value.T  # Dense kernels: (in, out) -> (out, in); LayerNorm scales are 1-D
    if name.endswith(".bias") or name in ("logit_scale", "logit_bias"):
        return value.reshape(-1)  # q/k/v biases (H, Dh) -> (H*Dh,)
    return value


def big_vision_to_hf_siglip(arrays: Mapping[str, np.ndarray], path: Path) -> dict[str, torch.Tensor]:
    """Prefix-free, unscanned big_vision arrays -> a transformers SiglipModel state dict (float32 copies)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in arrays.items():
        match = _BLOCK.match(key)
        if match and match["leaf"] in _BLOCK_LEAVES:
            name = f"{_TOWER[match['tower']]}.encoder.layers.{match['i']}.{_BLOCK_LEAVES[match['leaf']]}"
        elif key in _PLAIN:
            name = _PLAIN[key]
        elif key.startswith(_MAP_QKV) and key.split("/")[-2] in ("query", "key", "value"):
            continue  # packed into the head's in_proj below
        else:
            unknown.append(key)
            continue
        out[name] = torch.from_numpy(np.ascontiguousarray(_to_hf_layout(name, value), dtype=np.float32))
    if unknown:
        raise CheckpointError(
            f"{path}: big_vision arrays this SigLIP reader does not know: {sorted(unknown)[:6]}"
            + (f" (and {len(unknown) - 6} more)" if len(unknown) > 6 else "")
            + "; the checkpoint is not a two-tower SigLIP (LiT, CapPa, ... are not supported)"
        )
    if "text_model.head.weight" not in out:  # the i18n b16-256 file has no text head: it is the identity
        width = out["text_model.embeddings.token_embedding.weight"].shape[1]
        out["text_model.head.weight"] = torch.eye(width)
        out["text_model.head.bias"] = torch.zeros(width)
    weights, biases = [], []
    for part in ("query", "key", "value"):
        kernel, bias = f"{_MAP_QKV}{part}/kernel", f"{_MAP_QKV}{part}/bias"
        for key in (kernel, bias):
            if key not in arrays:
                raise CheckpointError(f"{path}: big_vision checkpoint lacks array {key!r}; the file is incomplete")
        weights.append(arrays[kernel].reshape(arrays[kernel].shape[0], -1).T)
        biases.append(arrays[bias].reshape(-1))
    out["vision_model.head.attention.in_proj_weight"] = torch.from_numpy(np.concatenate(weights).astype(np.float32))
    out["vision_model.head.attention.in_proj_bias"] = torch.from_numpy(np.concatenate(biases).astype(np.float32))
    return out


def _with_image_size(hf_config: dict[str, Any], image_size: Any, path: Path) -> dict[str, Any]:
    """`hf_config` at the explicit `image_size`, which must floor to the arrays' grid (grid = image // patch)."""
    vision = hf_config["vision_config"]
    patch, grid = vision["patch_size"], vision["image_size"] // vision["patch_size"]
    if type(image_size) is not int or image_size <= 0:
        raise CheckpointError(f"{path}: image_size={image_size!r} must be a positive int (pixels a side)")
    if image_size // patch != grid:
        raise CheckpointError(
            f"{path}: image_size={image_size} does not fit this checkpoint: its position grid is {grid}x{grid} "
            f"patches of {patch} pixels, so the image side must be in [{grid * patch}, {(grid + 1) * patch - 1}] "
            f"(floor(image_size / {patch}) == {grid})"
        )
    return {**hf_config, "vision_config": {**vision, "image_size": image_size}}


def read_big_vision_npz(
    path: str | os.PathLike, *, image_size: int | None = None
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """(config, clipforge state dict) of a big_vision SigLIP `.npz`; every problem is a CheckpointError.

    A `.npz` holds no image size, only the position grid, so by default the side is grid x patch (So400m/14 with a
    27x27 grid: 378 px). A tower trained at a side that is not a whole number of patches (So400m/14 at 384 px: the
    ViT floors 384 / 14 to 27 and ignores the last 6 pixel rows and columns) needs `image_size=384`; it must floor
    to the file's grid, and it also sets the preprocessing size, so images are resized as in training.
    """
    path = Path(path)
    arrays = _unscan(_strip_prefix(read_npz_arrays(path), path))
    hf_config = hf_config_from_big_vision(arrays, path)
    if image_size is not None:
        hf_config = _with_image_size(hf_config, image_size, path)
    try:
        cfg = config_from_hf_siglip(hf_config)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the shapes in this big_vision checkpoint make no SigLIP model: {exc}") from exc
    return cfg, hf_siglip_to_clipforge(big_vision_to_hf_siglip(arrays, path), cfg)


__all__ = ["hf_config_from_big_vision", "is_big_vision_names", "read_big_vision_npz", "read_npz_arrays"]
