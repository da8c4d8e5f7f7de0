"""Hugging Face transformers `Siglip2Model` folders (model_type "siglip2") at a FIXED square resolution.

SigLIP 2 (Tschannen et al. 2025) keeps SigLIP's towers (attention-pooled ViT without class token, bidirectional
text transformer pooled at the last position, logit scale and bias) but transformers' Siglip2Model feeds the
image tower NaFlex inputs: each image is cut into flattened patches (`pixel_values` of shape
(B, max_num_patches, P*P*C)), embedded by a Linear, and a learned (g, g) position grid is bilinearly resized to
each image's patch grid (`spatial_shapes`), with `pixel_attention_mask` hiding padding patches.

For a square image at the size the grid was trained for (side = g * P, so spatial_shapes = (g, g) and no padding)
that is exactly SigLIP: the resize is the identity and the Linear over patches flattened as (row, col, channel)
is a convolution with the kernel reshaped to (D, C, P, P). Those are the fixed-resolution checkpoints this module
reads into clipforge's SigLIP config; folders whose image processor asks for another number of patches than the
square grid (`max_num_patches` != `num_patches`: genuinely variable-resolution NaFlex use) are refused, since
clipforge's ViT has one fixed input size. A NaFlex checkpoint whose processor keeps max_num_patches equal to the
grid (google/siglip2-*-naflex ship 256 patches and a 16x16 grid) is read at that square size; on square images
of that size its features are transformers' (tests/weights/test_hf_siglip2.py).

Writing (`write_hf_siglip2_dir`, and `save_model(model, dir, format="hf")` for a SigLIP-shaped model with SigLIP 2's
Gemma vocabulary) is the same correspondence backwards: the conv kernel becomes the patch Linear, the position grid
is the model's fixed g x g (`num_patches` = g*g), and preprocessor_config.json is a Siglip2ImageProcessor whose
`max_num_patches` is g*g, so a square image comes out at exactly the model's size. What a Siglip2Model cannot hold
is refused (SiglipModel's refusals: class token, ln_pre, image projection, causal text, no logit bias, ...; and
a side that is not a whole number of patches). Non-square images are a difference transformers' side adds: its
processor keeps their aspect ratio (NaFlex) where clipforge squashes them, so only square images give the same
features in both.

Reference: transformers `models/siglip2/modeling_siglip2.py` (Siglip2VisionEmbeddings) and
`image_processing_siglip2.py` (convert_image_to_patches: (C, H, W) -> (g*g, P*P*C), patch order row-major).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_bytes
from ..models.clip import CLIP
from ..models.config import CLIPConfig, ConfigError, PreprocessConfig
from ..safeio import read_text_file
from .formats import CheckpointError, reading_config
from .hf import CONFIG_NAME, _number, _sub_config, read_hf_state_dict, write_weights_and_config
from .hf_chinese_clip import copy_tokenizer_files
from .hf_processor import PIL_RESAMPLE, PREPROCESSOR_NAME, _interpolation
from .hf_siglip import (
    SIGLIP_PREPROCESS,
    _refusals,
    clipforge_to_hf_siglip,
    config_from_hf_siglip,
    config_to_hf_siglip,
    hf_siglip_to_clipforge,
    is_siglip,
)
from .native import json_object

MODEL_TYPE = "siglip2"
# What transformers' GemmaTokenizer(Fast) saves beside a Siglip2Model (spiece.model: a SentencePiece-only folder).
SIGLIP2_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "spiece.model",
)
PATCH_KEY = "vision_model.embeddings.patch_embedding.weight"
# transformers' Siglip2VisionConfig defaults (5.x) that differ from SigLIP's.
VISION_DEFAULTS: dict[str, Any] = {"num_patches": 256, "patch_size": 16, "num_channels": 3}
# Siglip2ImageProcessor defaults: 256 patches of 16 pixels, bilinear, mean = std = 0.5.
PROCESSOR_DEFAULTS: dict[str, Any] = {"max_num_patches": 256, "patch_size": 16}


def _grid(vc: Mapping[str, Any]) -> tuple[int, int]:
    """(patch_size, grid side g) of a Siglip2 vision_config; ConfigError unless num_patches is a square."""
    patch = _number(vc, "patch_size", VISION_DEFAULTS, "vision_config")
    num_patches = _number(vc, "num_patches", VISION_DEFAULTS, "vision_config")
    side = math.isqrt(num_patches) if num_patches > 0 else 0
    if patch <= 0 or side * side != num_patches:
        raise ConfigError(
            f"vision_config.num_patches={num_patches} is not a positive square: SigLIP 2's position grid is "
            "g x g, so this is not a Siglip2Model config transformers can build"
        )
    return patch, side


def config_from_hf_siglip2(hf_config: Mapping[str, Any]) -> CLIPConfig:
    """Translate a transformers `Siglip2Model` config.json (as a dict) into a fixed-resolution SigLIP `CLIPConfig`.

    The image side is grid * patch_size (e.g. 16 x 16 patches of 16 pixels: 256); the text tower is SigLIP's. The
    text cleaning is transformers' for this model type (`text.tokenizer_clean` "lowercase_only": AutoTokenizer reads
    a siglip2 folder as Siglip2Tokenizer, which lowercases and cleans nothing else), recorded in the config so a
    copy saved in clipforge or open_clip format tokenizes as the original folder does.
    """
    if hf_config.get("model_type") != MODEL_TYPE:
        raise ConfigError(f"config.json has model_type={hf_config.get('model_type')!r}; this reader takes 'siglip2'")
    vc = _sub_config(hf_config, "vision_config")
    patch, side = _grid(vc)
    vision = {k: v for k, v in vc.items() if k != "num_patches"}
    vision.update(image_size=side * patch, patch_size=patch)
    siglip = {**hf_config, "model_type": "siglip", "vision_config": vision, "text_config": _sub_config(hf_config,
                                                                                                      "text_config")}
    siglip.pop("vision_config_dict", None)
    siglip.pop("text_config_dict", None)
    cfg = config_from_hf_siglip(siglip)
    return cfg.replace(text=dataclasses.replace(cfg.text, tokenizer_clean="lowercase_only"))


def _preprocess(folder: Path, cfg: CLIPConfig) -> PreprocessConfig:
    """The folder's Siglip2ImageProcessor settings as a fixed-size `PreprocessConfig`; NaFlex use is refused."""
    path = folder / PREPROCESSOR_NAME
    base = PreprocessConfig(size=cfg.vision.image_size, **SIGLIP_PREPROCESS)
    if not path.exists():  # one that is there but no regular file (a FIFO) is refused by config_text, naming it
        return base
    with reading_config(path):
        data = json_object(path)
        grid = cfg.vision.image_size // cfg.vision.patch_size
        max_patches = _number(data, "max_num_patches", PROCESSOR_DEFAULTS, PREPROCESSOR_NAME)
        patch = _number(data, "patch_size", PROCESSOR_DEFAULTS, PREPROCESSOR_NAME)
        if patch != cfg.vision.patch_size:
            raise ConfigError(
                f"patch_size={patch} differs from the model's vision_config.patch_size={cfg.vision.patch_size}"
            )
        if max_patches != grid * grid:
            raise ConfigError(
                f"max_num_patches={max_patches} is not the model's square grid {grid}x{grid}={grid * grid}: this "
                "SigLIP 2 checkpoint is used with NaFlex variable-resolution inputs (position grid resized per "
                f"image), which clipforge's fixed-size ViT does not run; set max_num_patches to {grid * grid} to "
                f"use it on square {cfg.vision.image_size}px images"
            )
        stats = {}
        for key, field in (("image_mean", "mean"), ("image_std", "std")):
            value = data.get(key, list(getattr(base, field)))
            if not (isinstance(value, list) and len(value) == 3 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
                raise ConfigError(f"{key}={value!r} must be a list of three numbers (RGB)")
            stats[field] = tuple(float(x) for x in value)
        if "resample" in data:  # PIL's code, as transformers stores it (Siglip2ImageProcessor's default: bilinear)
            stats["interpolation"] = _interpolation(data["resample"], PREPROCESSOR_NAME)
        return base.__class__(**{**{f: getattr(base, f) for f in ("size", "interpolation", "resize_mode")},
                                 **stats})


def linear_patch_to_conv(weight: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """Siglip2's patch Linear weight (D, P*P*C), inputs flattened (row, col, channel), -> conv kernel (D, C, P, P)."""
    width, fan_in = weight.shape
    if fan_in != patch_size * patch_size * channels:
        raise CheckpointError(
            f"{PATCH_KEY} has shape {tuple(weight.shape)}; expected (width, {patch_size}*{patch_size}*{channels})"
        )
    return weight.reshape(width, patch_size, patch_size, channels).permute(0, 3, 1, 2).contiguous()


def hf_siglip2_to_clipforge(sd: Mapping[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """transformers `Siglip2Model` state dict -> clipforge `CLIP` state dict for a fixed-resolution `cfg`."""
    if PATCH_KEY not in sd:
        raise CheckpointError(f"HF SigLIP 2 state dict has no {PATCH_KEY}")
    if sd[PATCH_KEY].ndim != 2:
        raise CheckpointError(
            f"{PATCH_KEY} has shape {tuple(sd[PATCH_KEY].shape)}: a Siglip2Model's patch embedding is a Linear "
            "(2-D); a 4-D convolution is a SiglipModel (model_type 'siglip')"
        )
    converted = dict(sd)
    converted[PATCH_KEY] = linear_patch_to_conv(sd[PATCH_KEY], cfg.vision.patch_size)
    return hf_siglip_to_clipforge(converted, cfg)


def is_siglip2_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder`'s config.json names model_type 'siglip2' (a file that does not parse: False)."""
    path = Path(folder) / CONFIG_NAME
    try:
        data = json.loads(read_text_file(path, what=CONFIG_NAME))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("model_type") == MODEL_TYPE


def read_hf_siglip2_config(config_path: Path) -> CLIPConfig:
    """The clipforge config of a Siglip2Model config.json; a CheckpointConfigError names the file and field."""
    with reading_config(config_path):
        return config_from_hf_siglip2(json_object(config_path))


def read_hf_siglip2_dir(
    path: str | os.PathLike, *, allow_unsafe_pickle: bool = False
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Read a fixed-resolution transformers `Siglip2Model` folder -> (config, clipforge state dict).

    `allow_unsafe_pickle` is the opt-in for a trusted `pytorch_model.bin` that `weights_only` refuses; a tokenizer
    in the folder (tokenizer.json / spiece.model) becomes the model's `text.hf_tokenizer_name`."""
    folder = Path(path)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} in {folder}: a transformers Siglip2Model folder needs one")
    cfg = read_hf_siglip2_config(config_path)
    cfg = cfg.replace(preprocess=_preprocess(folder, cfg))
    if any((folder / name).is_file() for name in ("tokenizer.json", "spiece.model")):
        # the folder's own (Gemma) tokenizer becomes the model's: get_tokenizer(model) reads it, and a Siglip2Model
        # folder written from this model carries a copy of it (write_hf_siglip2_dir)
        cfg = cfg.replace(text=dataclasses.replace(cfg.text, hf_tokenizer_name=str(folder.resolve())))
    return cfg, hf_siglip2_to_clipforge(read_hf_state_dict(folder, allow_unsafe_pickle=allow_unsafe_pickle), cfg)


# ---------------------------------------------------------------------------------------------- write

GEMMA_VOCAB_SIZE = 256000  # SigLIP 2's vocabulary; SigLIP's are 32000 (English) and 250000 (i18n)


def is_siglip2(cfg: CLIPConfig) -> bool:
    """Whether `save_model(..., format="hf")` writes `cfg` as a Siglip2Model: SigLIP-shaped with SigLIP 2's Gemma
    vocabulary (the named *-SigLIP2* configs, folders read from Siglip2Model). `write_hf_siglip2_dir` writes any
    SigLIP-shaped model as one."""
    return is_siglip(cfg) and cfg.text.vocab_size == GEMMA_VOCAB_SIZE


def config_to_hf_siglip2(cfg: CLIPConfig) -> dict[str, Any]:
    """A transformers `Siglip2Model` config.json (as a dict) for a SigLIP-shaped `cfg` at its fixed square size."""
    refused = _refusals(cfg)  # SiglipModel's: Siglip2Model's towers are the same
    if refused:
        raise ConfigError("transformers' Siglip2Model cannot express this model: it has " + "; ".join(refused))
    v = cfg.vision
    if v.image_size % v.patch_size:  # a tower that floors its grid (timm's So400m/14 at 384 px)
        raise ConfigError(
            f"transformers' Siglip2Model cannot express this model: vision.image_size {v.image_size} is not a whole "
            f"number of {v.patch_size}-pixel patches (the tower ignores the last {v.image_size % v.patch_size} pixel "
            f"rows and columns, while Siglip2ImageProcessor resizes images to grid x patch = "
            f"{v.image_size // v.patch_size * v.patch_size} pixels); write it as format 'clipforge' or use a model "
            "whose side is a whole number of patches (e.g. ViT-SO400M-14-SigLIP-378)"
        )
    siglip = config_to_hf_siglip(cfg)
    vision = {k: value for k, value in siglip["vision_config"].items() if k != "image_size"}
    vision.update(model_type="siglip2_vision_model", num_patches=(v.image_size // v.patch_size) ** 2)
    text = {**siglip["text_config"], "model_type": "siglip2_text_model"}
    return {"architectures": ["Siglip2Model"], "model_type": MODEL_TYPE, "text_config": text, "vision_config": vision}


def conv_patch_to_linear(weight: torch.Tensor) -> torch.Tensor:
    """clipforge's conv kernel (D, C, P, P) -> Siglip2's patch Linear weight (D, P*P*C), inputs (row, col, channel)."""
    width = weight.shape[0]
    return weight.permute(0, 2, 3, 1).reshape(width, -1).contiguous()


def clipforge_to_hf_siglip2(sd: Mapping[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """clipforge `CLIP` state dict -> transformers `Siglip2Model` state dict for a SigLIP-shaped `cfg`."""
    tensors = clipforge_to_hf_siglip(sd, cfg)
    tensors[PATCH_KEY] = conv_patch_to_linear(tensors[PATCH_KEY])
    return tensors


def preprocessor_to_hf_siglip2(cfg: CLIPConfig) -> dict[str, Any]:
    """A Siglip2ImageProcessor preprocessor_config.json (as a dict): square images come out at the model's size.

    `max_num_patches` is the model's g*g grid, so the processor resizes a square image to g*P pixels a side (and
    pads nothing); interpolation and normalisation are the model's. Non-square images keep their aspect ratio
    there (NaFlex) where clipforge squashes or crops them.
    """
    pre, v = cfg.preprocess, cfg.vision
    return {
        "image_processor_type": "Siglip2ImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": PIL_RESAMPLE[pre.interpolation],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
        "patch_size": v.patch_size,
        "max_num_patches": (v.image_size // v.patch_size) ** 2,
    }


def write_hf_siglip2_dir(model: CLIP | tuple[CLIPConfig, Mapping[str, torch.Tensor]], path: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors + preprocessor_config.json that transformers' `Siglip2Model` and
    `Siglip2ImageProcessor` load, and the tokenizer files of the folder the model was read from (its
    `text.hf_tokenizer_name`, when that is a local folder: size-capped reads, atomic writes), so `AutoTokenizer` /
    `get_tokenizer` on the written folder give the same ids; a model with no local tokenizer gets none.

    Every file goes to a temporary name and is renamed into place, weights first, so an interrupted write leaves
    no partial file. A model Siglip2Model cannot express is refused (ConfigError naming what) before anything is
    written.

    Text cleaning is the target format's: transformers reads a Siglip2Model folder's tokenizer as Siglip2Tokenizer,
    which lowercases and cleans nothing else, and the format has no field for another cleaning. A model whose
    `text.tokenizer_clean` is "canonicalize" (open_clip's SigLIP 2: punctuation removed too) is still written, but
    transformers -- and clipforge reading the written folder back ("lowercase_only") -- tokenizes punctuated texts
    differently from the source model; keep such a model in clipforge or open_clip format for exact ids.
    """
    cfg, sd = (model.config, model.state_dict()) if isinstance(model, CLIP) else model
    hf_config = config_to_hf_siglip2(cfg)
    tensors = clipforge_to_hf_siglip2(sd, cfg)
    folder = write_weights_and_config(path, tensors, hf_config)
    processor = json.dumps(preprocessor_to_hf_siglip2(cfg), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(folder / PREPROCESSOR_NAME, processor.encode())
    copy_tokenizer_files(cfg.text, folder, SIGLIP2_TOKENIZER_FILES)
    return folder


__all__ = [
    "clipforge_to_hf_siglip2",
    "config_from_hf_siglip2",
    "config_to_hf_siglip2",
    "conv_patch_to_linear",
    "hf_siglip2_to_clipforge",
    "is_siglip2",
    "is_siglip2_folder",
    "linear_patch_to_conv",
    "preprocessor_to_hf_siglip2",
    "read_hf_siglip2_config",
    "read_hf_siglip2_dir",
    "write_hf_siglip2_dir",
]
