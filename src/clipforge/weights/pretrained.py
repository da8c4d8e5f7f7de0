"""Table of well-known pretrained weights: (architecture, tag) -> hub repository and preprocessing.

Covers OpenAI's nine released models (Radford et al. 2021) and the main LAION-2B (Cherti et al.
2023) and DataComp (Gadre et al. 2023) OpenCLIP runs. Weights are the open_clip-format files that
these repositories hold on the Hugging Face hub (`open_clip_model.safetensors`, else
`open_clip_pytorch_model.bin`); the architecture name already carries `-quickgelu` where the run
used QuickGELU, so no flag is inferred from a tag's spelling.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.config import OPENAI_MEAN, OPENAI_STD

INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PretrainedWeights:
    """One downloadable checkpoint.

    Fields:
        arch: clipforge architecture name the weights fit (with -quickgelu where needed).
        tag: the short name users pass as `pretrained=`.
        hub_id: Hugging Face hub repository holding open_clip-format weights.
        mean / std: normalisation the model was trained with.
        interpolation / resize_mode: eval resize the model was trained with.
    """

    arch: str
    tag: str
    hub_id: str
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


def _entries() -> list[PretrainedWeights]:
    openai = [
        ("RN50-quickgelu", "timm/resnet50_clip.openai"),
        ("RN101-quickgelu", "timm/resnet101_clip.openai"),
        ("RN50x4-quickgelu", "timm/resnet50x4_clip.openai"),
        ("RN50x16-quickgelu", "timm/resnet50x16_clip.openai"),
        ("RN50x64-quickgelu", "timm/resnet50x64_clip.openai"),
        ("ViT-B-32-quickgelu", "timm/vit_base_patch32_clip_224.openai"),
        ("ViT-B-16-quickgelu", "timm/vit_base_patch16_clip_224.openai"),
        ("ViT-L-14-quickgelu", "timm/vit_large_patch14_clip_224.openai"),
        ("ViT-L-14-336-quickgelu", "timm/vit_large_patch14_clip_336.openai"),
    ]
    out = [PretrainedWeights(arch, "openai", hub) for arch, hub in openai]
    out += [
        PretrainedWeights("ViT-B-32-quickgelu", "laion400m_e32", "timm/vit_base_patch32_clip_224.laion400m_e32"),
        PretrainedWeights("ViT-B-32", "laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        PretrainedWeights("ViT-B-32", "datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"),
        PretrainedWeights("ViT-B-32-256", "datacomp_s34b_b86k", "laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K"),
        PretrainedWeights("ViT-B-16", "laion2b_s34b_b88k", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
        PretrainedWeights("ViT-B-16", "datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K"),
        PretrainedWeights(
            "ViT-L-14", "laion2b_s32b_b82k", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", INCEPTION_MEAN, INCEPTION_STD
        ),
        PretrainedWeights("ViT-L-14", "datacomp_xl_s13b_b90k", "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K"),
        PretrainedWeights("ViT-H-14", "laion2b_s32b_b79k", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
        PretrainedWeights("ViT-g-14", "laion2b_s12b_b42k", "laion/CLIP-ViT-g-14-laion2B-s12B-b42K"),
        PretrainedWeights("ViT-g-14", "laion2b_s34b_b88k", "laion/CLIP-ViT-g-14-laion2B-s34B-b88K"),
        PretrainedWeights("ViT-bigG-14", "laion2b_s39b_b160k", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
    ]
    return out


PRETRAINED: tuple[PretrainedWeights, ...] = tuple(_entries())

# OpenAI's release names and the base names map onto the -quickgelu architecture for tag "openai".
_ALIASES = {
    "ViT-B/32": "ViT-B-32-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-L/14": "ViT-L-14-quickgelu",
    "ViT-L/14@336px": "ViT-L-14-336-quickgelu",
}


def list_pretrained() -> list[tuple[str, str]]:
    """(architecture, tag) pairs that `create_model(arch, pretrained=tag)` can download."""
    return [(p.arch, p.tag) for p in PRETRAINED]


def find_pretrained(arch: str, tag: str) -> PretrainedWeights | None:
    """The entry for an architecture and tag; a base name also finds its -quickgelu entry (OpenAI's)."""
    arch = _ALIASES.get(arch, arch)
    for candidate in (arch, arch + "-quickgelu"):
        for entry in PRETRAINED:
            if entry.arch == candidate and entry.tag == tag:
                return entry
    return None


def tags_for(arch: str) -> list[str]:
    arch = _ALIASES.get(arch, arch)
    base = arch.removesuffix("-quickgelu")
    return sorted({p.tag for p in PRETRAINED if p.arch.removesuffix("-quickgelu") == base})
