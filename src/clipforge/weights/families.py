"""Recognise checkpoint families clipforge does not run, and refuse them by name.

A CoCa, MobileCLIP, BLIP or ALIGN checkpoint looks enough like a CLIP (a `visual.` tower, a text tower) that
the generic readers would fail deep inside a key map with a list of "unexpected keys", which tells the user
nothing. Here each such family is recognised from what it alone has (CoCa's `text_decoder.`, MobileCLIP's
reparameterisable FastViT blocks, a transformers `model_type`, open_clip's `multimodal_cfg`, ...) and refused
with an `UnsupportedFamilyError` naming the family and the closest family clipforge does read. The same module
says which output formats cannot hold a model (`check_writable`), so `convert` refuses before writing a file
that would not load.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.config import CLIPConfig
from ..safeio import read_text_file
from .formats import CheckpointError
from .openclip_mobileclip import TIMM_FASTVITS


@dataclass(frozen=True)
class Family:
    """An unsupported checkpoint family: its name, why it is not a CLIP clipforge runs, and the closest one it does."""

    name: str
    why: str
    closest: str


class UnsupportedFamilyError(CheckpointError):
    """A checkpoint of a recognised family clipforge does not run; `.family` says which."""

    def __init__(self, source: str, family: Family) -> None:
        super().__init__(
            f"{source}: this is a {family.name} checkpoint ({family.why}); clipforge does not support {family.name}. "
            f"The closest supported family is {family.closest}"
        )
        self.family = family


COCA = Family(
    "CoCa", "a captioning text decoder (text_decoder.*) on top of a CLIP", "an open_clip ViT CLIP (e.g. ViT-B-32)"
)
MOBILECLIP = Family(
    "MobileCLIP",
    "reparameterised (inference-form, reparam_conv) FastViT / MobileOne blocks, Apple's original ml-mobileclip "
    "layout, or MobileCLIP-S0's RepMixer text tower",
    "open_clip's training-form MobileCLIP checkpoints (MobileCLIP-S1/S2, MobileCLIP2-S0/S2/S3/S4, MobileCLIP-B, "
    "MobileCLIP2-B, MobileCLIP2-L-14), an open_clip ViT CLIP (e.g. ViT-B-16) or a ConvNeXt CLIP (convnext_base)",
)
SIGLIP2 = Family(
    "SigLIP 2 (NaFlex)", "variable-resolution patches through a Linear patch embedding", "SigLIP (transformers "
    "SiglipModel folders, big_vision SigLIP .npz) or a fixed-resolution transformers Siglip2Model folder (config.json "
    "beside the weights)"
)
BLIP = Family("BLIP", "a BERT text encoder and decoder with cross-attention", "a transformers CLIPModel folder")
ALIGN = Family("ALIGN", "an EfficientNet image tower and a BERT text tower", "a transformers CLIPModel folder")

# transformers model_type -> family, for config.json folders that are not CLIPModel / SiglipModel.
_HF_MODEL_TYPES: dict[str, Family] = {
    "blip": BLIP,
    "blip-2": Family("BLIP-2", "a Q-Former bridging a frozen image encoder and a language model", BLIP.closest),
    "align": ALIGN,
    "owlvit": Family("OWL-ViT", "an open-vocabulary detector with box heads", "a transformers CLIPModel folder"),
    "owlv2": Family("OWLv2", "an open-vocabulary detector with box heads", "a transformers CLIPModel folder"),
    "clipseg": Family("CLIPSeg", "a segmentation decoder on a CLIP", "a transformers CLIPModel folder"),
    "x_clip": Family("X-CLIP", "a video model with cross-frame attention", "a transformers CLIPModel folder"),
    "flava": Family("FLAVA", "a multimodal encoder fusing both towers", "a transformers CLIPModel folder"),
}
# Markers of FastViT / MobileOne blocks clipforge does not read: fused (reparam_conv) or Apple's original names.
_MOBILECLIP_MARKERS = (".reparam_conv.", ".rbr_conv.", ".rbr_skip.", ".conv_exp.")


def detect_state_dict_family(keys: Iterable[str], shapes: Mapping[str, tuple[int, ...]] | None = None) -> Family | None:
    """The unsupported family a state dict's keys (and, where needed, `shapes`) belong to; None for anything else."""
    keys = list(keys)
    if any(k.startswith("text_decoder.") for k in keys):
        bert = any(k.startswith("text_decoder.bert.") for k in keys)  # BLIP's decoder is a BERT LM
        return BLIP if bert else COCA
    # open_clip's training-form FastViT image towers are read (weights/openclip_mobileclip.py); RepMixer token
    # mixers anywhere else (MobileCLIP-S0's text tower, Apple's `image_encoder.` layout) are not.
    if any(any(m in k for m in _MOBILECLIP_MARKERS) or (".token_mixer." in k and not k.startswith("visual."))
           for k in keys):
        return MOBILECLIP
    if any(k.startswith("vision_model.embeddings.convolution.") or k.startswith("vision_model.encoder.blocks.")
           for k in keys) and any(k.startswith("text_model.encoder.layer.") for k in keys):
        return ALIGN
    if any(k.startswith(("text_encoder.encoder.layer.", "text_encoder.embeddings.")) for k in keys):
        return BLIP
    patch = "vision_model.embeddings.patch_embedding.weight"
    if shapes is not None and patch in shapes and len(shapes[patch]) == 2:
        return SIGLIP2
    return None


def refuse_state_dict(tensors: Mapping[str, Any], source: str) -> None:
    """UnsupportedFamilyError when the tensors are those of a recognised unsupported family."""
    family = detect_state_dict_family(tensors, {k: tuple(v.shape) for k, v in tensors.items()})
    if family is not None:
        raise UnsupportedFamilyError(source, family)


def refuse_hf_config(hf_config: Any, source: str) -> None:
    """UnsupportedFamilyError for a config.json whose model_type is a recognised unsupported family."""
    model_type = hf_config.get("model_type") if isinstance(hf_config, dict) else None
    if isinstance(model_type, str) and model_type in _HF_MODEL_TYPES:
        raise UnsupportedFamilyError(source, _HF_MODEL_TYPES[model_type])


def refuse_hf_config_file(path: Path) -> None:
    """`refuse_hf_config` on a config.json file; a file that does not parse is left to the regular reader."""
    try:
        hf_config = json.loads(read_text_file(path, what="config.json"))
    except (OSError, ValueError, RecursionError):
        return
    refuse_hf_config(hf_config, str(path.parent))


def refuse_openclip_config(model_cfg: Any, source: str) -> None:
    """UnsupportedFamilyError for an open_clip model config of CoCa (multimodal_cfg) or MobileCLIP (FastViT)."""
    if not isinstance(model_cfg, dict):
        return
    if "multimodal_cfg" in model_cfg:
        raise UnsupportedFamilyError(source, COCA)
    vision = model_cfg.get("vision_cfg")
    name = vision.get("timm_model_name") if isinstance(vision, dict) else None
    # The ViT-based MobileCLIP towers (vit_base_mci_224, ...) and fastvit_mci0..4 are read (openclip_mobileclip.py).
    if isinstance(name, str) and name.startswith(("fastvit", "mci", "mobileclip")) and name not in TIMM_FASTVITS:
        raise UnsupportedFamilyError(source, MOBILECLIP)


def writable_refusal(cfg: CLIPConfig, fmt: str) -> str | None:
    """Why format `fmt` cannot hold a model of `cfg` (None when it can); the hf writers check their own."""
    v = cfg.vision
    if fmt == "openclip" and cfg.text.is_hf and cfg.text.hf_proj_type == "altclip":
        return (
            "open_clip's HFTextEncoder has no AltCLIP text projection (LayerNorm, Linear with bias, Linear); "
            "write it with --to clipforge"
        )
    if fmt != "openclip" or v.is_resnet:
        return None
    if v.conv_stem or v.no_embed_class or (v.proj_bias and not v.uses_eva_blocks):
        return (
            "open_clip keeps MobileCLIP ViT image towers (MCi stem, patch-only positions, a projection with bias) as "
            "timm models, a layout clipforge reads but does not write; write it with --to clipforge"
        )
    if not v.convnext and (v.pool_type == "map" or v.uses_eva_blocks):  # timm SigLIP / EVA02: only named towers
        from ..models.config import ConfigError
        from . import openclip_siglip, openclip_timm

        try:
            (openclip_siglip if v.pool_type == "map" else openclip_timm).vision_to_openclip(v)
        except ConfigError as err:
            return str(err)
    return None


def check_writable(cfg: CLIPConfig, fmt: str) -> None:
    """CheckpointError when `fmt` cannot express the model (so no half-right folder is written)."""
    why = writable_refusal(cfg, fmt)
    if why is not None:
        raise CheckpointError(f"cannot write this model as {fmt}: {why}")


__all__ = [
    "Family",
    "UnsupportedFamilyError",
    "check_writable",
    "detect_state_dict_family",
    "refuse_hf_config",
    "refuse_hf_config_file",
    "refuse_openclip_config",
    "refuse_state_dict",
    "writable_refusal",
]
