"""Table of well-known pretrained weights: (architecture, tag) -> hub repository and preprocessing.

Covers every open_clip pretrained tag whose architecture clipforge builds: OpenAI's nine released
models (Radford et al. 2021), the LAION-400M / LAION-2B OpenCLIP runs (Cherti et al. 2023), DataComp
and its CommonPool baselines (Gadre et al. 2023), MetaCLIP (Xu et al. 2023), DFN (Fang et al. 2023) and
the YFCC-15M / CC12M ResNets. Hub ids, normalisation, resize settings and QuickGELU-ness are open_clip's
own (`tests/weights/test_pretrained_table.py` compares the two tables entry by entry). Weights are the
open_clip-format files these repositories hold (`open_clip_model.safetensors`, else
`open_clip_pytorch_model.bin`); the architecture name already carries `-quickgelu` where the run used
QuickGELU, so no flag is inferred from a tag's spelling, and `find_pretrained("ViT-B-32", "metaclip_400m")`
finds the QuickGELU entry the weights need.
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
    # timm-hosted OpenCLIP / MetaCLIP runs: (arch, tag, timm model name, timm tag).
    timm_hosted = [
        ("RN50-quickgelu", "yfcc15m", "resnet50_clip", "yfcc15m"),
        ("RN50-quickgelu", "cc12m", "resnet50_clip", "cc12m"),
        ("RN101-quickgelu", "yfcc15m", "resnet101_clip", "yfcc15m"),
        ("ViT-B-32-quickgelu", "laion400m_e31", "vit_base_patch32_clip_224", "laion400m_e31"),
        ("ViT-B-32-quickgelu", "laion400m_e32", "vit_base_patch32_clip_224", "laion400m_e32"),
        ("ViT-B-32", "laion2b_e16", "vit_base_patch32_clip_224", "laion2b_e16"),
        ("ViT-B-16", "laion400m_e31", "vit_base_patch16_clip_224", "laion400m_e31"),
        ("ViT-B-16", "laion400m_e32", "vit_base_patch16_clip_224", "laion400m_e32"),
        ("ViT-L-14", "laion400m_e31", "vit_large_patch14_clip_224", "laion400m_e31"),
        ("ViT-L-14", "laion400m_e32", "vit_large_patch14_clip_224", "laion400m_e32"),
        # MetaCLIP (Xu et al. 2023): "fullcc" is the 2.5B-pair curation; all but "altogether" use QuickGELU.
        ("ViT-B-32-quickgelu", "metaclip_400m", "vit_base_patch32_clip_224", "metaclip_400m"),
        ("ViT-B-32-quickgelu", "metaclip_fullcc", "vit_base_patch32_clip_224", "metaclip_2pt5b"),
        ("ViT-B-16-quickgelu", "metaclip_400m", "vit_base_patch16_clip_224", "metaclip_400m"),
        ("ViT-B-16-quickgelu", "metaclip_fullcc", "vit_base_patch16_clip_224", "metaclip_2pt5b"),
        ("ViT-L-14-quickgelu", "metaclip_400m", "vit_large_patch14_clip_224", "metaclip_400m"),
        ("ViT-L-14-quickgelu", "metaclip_fullcc", "vit_large_patch14_clip_224", "metaclip_2pt5b"),
        ("ViT-H-14-quickgelu", "metaclip_fullcc", "vit_huge_patch14_clip_224", "metaclip_2pt5b"),
        ("ViT-H-14", "metaclip_altogether", "vit_huge_patch14_clip_224", "metaclip_altogether"),
        ("ViT-bigG-14-quickgelu", "metaclip_fullcc", "vit_gigantic_patch14_clip_224", "metaclip_2pt5b"),
        # EVA02-CLIP (Sun et al. 2023), hosted by timm; OpenAI normalisation, bicubic, shortest side.
        ("EVA02-B-16", "merged2b_s8b_b131k", "eva02_base_patch16_clip_224", "merged2b_s8b_b131k"),
        ("EVA02-L-14", "merged2b_s4b_b131k", "eva02_large_patch14_clip_224", "merged2b_s4b_b131k"),
        ("EVA02-L-14-336", "merged2b_s6b_b61k", "eva02_large_patch14_clip_336", "merged2b_s6b_b61k"),
        # MetaCLIP 2 "worldwide" (Chuang et al. 2025): XLM-V vocabulary; only the 224 px ViT-H-14 uses QuickGELU.
        ("ViT-H-14-worldwide-quickgelu", "metaclip2_worldwide", "vit_huge_patch14_clip_224", "metaclip2_worldwide"),
        ("ViT-bigG-14-worldwide", "metaclip2_worldwide", "vit_gigantic_patch14_clip_224", "metaclip2_worldwide"),
    ]
    out += [PretrainedWeights(arch, tag, f"timm/{model}.{timm_tag}") for arch, tag, model, timm_tag in timm_hosted]
    out += [
        PretrainedWeights("ViT-B-32", "laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        PretrainedWeights("ViT-B-32", "datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"),
        PretrainedWeights("ViT-B-32-256", "datacomp_s34b_b86k", "laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K"),
        # Hugging Face text towers (LAION's multilingual / RoBERTa runs; OpenAI normalisation)
        PretrainedWeights(
            "roberta-ViT-B-32", "laion2b_s12b_b32k", "laion/CLIP-ViT-B-32-roberta-base-laion2B-s12B-b32k"
        ),
        PretrainedWeights(
            "xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k", "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k"
        ),
        PretrainedWeights(
            "xlm-roberta-large-ViT-H-14",
            "frozen_laion5b_s13b_b90k",
            "laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k",
        ),
        # NLLB-CLIP (Visheratin 2023): the NLLB-200 encoder as text tower; the SigLIP-trained base uses SigLIP's
        # normalisation and squash resize; the large one's SO400M/14 at 384 px sees a 27 x 27 grid (timm floors).
        PretrainedWeights("nllb-clip-base", "v1", "visheratin/nllb-clip-base-oc"),
        PretrainedWeights("nllb-clip-large", "v1", "visheratin/nllb-clip-large-oc"),
        *(
            PretrainedWeights("nllb-clip-base-siglip", tag, hub, INCEPTION_MEAN, INCEPTION_STD, "bicubic", "squash")
            for tag, hub in (("v1", "visheratin/nllb-clip-base-siglip"), ("mrl", "visheratin/nllb-siglip-mrl-base"))
        ),
        *(
            PretrainedWeights("nllb-clip-large-siglip", tag, hub, INCEPTION_MEAN, INCEPTION_STD, "bicubic", "squash")
            for tag, hub in (("v1", "visheratin/nllb-clip-large-siglip"), ("mrl", "visheratin/nllb-siglip-mrl-large"))
        ),
        # ConvNeXt image towers (LAION; OpenAI normalisation, bicubic, shortest side)
        PretrainedWeights("convnext_base", "laion400m_s13b_b51k", "laion/CLIP-convnext_base-laion400M-s13B-b51K"),
        PretrainedWeights("convnext_base_w", "laion2b_s13b_b82k", "laion/CLIP-convnext_base_w-laion2B-s13B-b82K"),
        PretrainedWeights(
            "convnext_base_w", "laion2b_s13b_b82k_augreg", "laion/CLIP-convnext_base_w-laion2B-s13B-b82K-augreg"
        ),
        PretrainedWeights(
            "convnext_base_w", "laion_aesthetic_s13b_b82k", "laion/CLIP-convnext_base_w-laion_aesthetic-s13B-b82K"
        ),
        PretrainedWeights(
            "convnext_base_w_320",
            "laion_aesthetic_s13b_b82k",
            "laion/CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K",
        ),
        PretrainedWeights(
            "convnext_base_w_320",
            "laion_aesthetic_s13b_b82k_augreg",
            "laion/CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K-augreg",
        ),
        PretrainedWeights(
            "convnext_large_d", "laion2b_s26b_b102k_augreg", "laion/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg"
        ),
        PretrainedWeights(
            "convnext_large_d_320", "laion2b_s29b_b131k_ft", "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft"
        ),
        PretrainedWeights(
            "convnext_large_d_320",
            "laion2b_s29b_b131k_ft_soup",
            "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup",
        ),
        PretrainedWeights(
            "convnext_xxlarge", "laion2b_s34b_b82k_augreg", "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg"
        ),
        PretrainedWeights(
            "convnext_xxlarge",
            "laion2b_s34b_b82k_augreg_rewind",
            "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-rewind",
        ),
        PretrainedWeights(
            "convnext_xxlarge",
            "laion2b_s34b_b82k_augreg_soup",
            "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup",
        ),
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
    out += _datacomp_baselines()
    # DFN (Fang et al. 2023): data-filtering-network curated pools; the 2B/5B runs use QuickGELU.
    out += [
        PretrainedWeights("ViT-B-16-quickgelu", "dfn2b", "apple/DFN2B-CLIP-ViT-B-16"),
        PretrainedWeights("ViT-L-14-quickgelu", "dfn2b", "apple/DFN2B-CLIP-ViT-L-14"),
        PretrainedWeights("ViT-L-14", "dfn2b_s39b", "apple/DFN2B-CLIP-ViT-L-14-39B"),
        PretrainedWeights("ViT-H-14-quickgelu", "dfn5b", "apple/DFN5B-CLIP-ViT-H-14", resize_mode="squash"),
        PretrainedWeights("ViT-H-14-378-quickgelu", "dfn5b", "apple/DFN5B-CLIP-ViT-H-14-378", resize_mode="squash"),
        # MetaCLIP 2 at 378 px: squashed, not cropped (open_clip's table), GELU.
        PretrainedWeights(
            "ViT-H-14-worldwide-378",
            "metaclip2_worldwide",
            "timm/vit_huge_patch14_clip_378.metaclip2_worldwide",
            resize_mode="squash",
        ),
        PretrainedWeights(
            "ViT-bigG-14-worldwide-378",
            "metaclip2_worldwide",
            "timm/vit_gigantic_patch14_clip_378.metaclip2_worldwide",
            resize_mode="squash",
        ),
    ]
    # SigLIP (Zhai et al. 2023), WebLI, hosted by timm in open_clip's format; the 378 px model takes the 384 weights
    # (same 27 x 27 patch grid: at 384 px the last 6 pixel rows and columns fall outside it). Inception
    # normalisation, bicubic, squash.
    siglip = {name: f"timm/{name}" for name in (
        "ViT-B-16-SigLIP", "ViT-B-16-SigLIP-256", "ViT-B-16-SigLIP-i18n-256", "ViT-B-16-SigLIP-384",
        "ViT-B-16-SigLIP-512", "ViT-L-16-SigLIP-256", "ViT-L-16-SigLIP-384", "ViT-SO400M-14-SigLIP",
        "ViT-SO400M-14-SigLIP-384",
    )}  # fmt: skip
    siglip["ViT-SO400M-14-SigLIP-378"] = "timm/ViT-SO400M-14-SigLIP-384"
    # SigLIP 2 (Tschannen et al. 2025), WebLI, Gemma vocabulary; each architecture has its own timm repository.
    siglip.update({name: f"timm/{name}" for name in (
        "ViT-B-32-SigLIP2-256", "ViT-B-16-SigLIP2", "ViT-B-16-SigLIP2-256", "ViT-B-16-SigLIP2-384",
        "ViT-B-16-SigLIP2-512", "ViT-L-16-SigLIP2-256", "ViT-L-16-SigLIP2-384", "ViT-L-16-SigLIP2-512",
        "ViT-SO400M-14-SigLIP2", "ViT-SO400M-14-SigLIP2-378", "ViT-SO400M-16-SigLIP2-256", "ViT-SO400M-16-SigLIP2-384",
        "ViT-SO400M-16-SigLIP2-512", "ViT-gopt-16-SigLIP2-256", "ViT-gopt-16-SigLIP2-384",
    )})  # fmt: skip
    out += [
        PretrainedWeights(arch, "webli", hub, INCEPTION_MEAN, INCEPTION_STD, "bicubic", "squash")
        for arch, hub in siglip.items()
    ]
    # ViT-based MobileCLIP (Vasu et al. 2024, 2025): MobileCLIP-B and MobileCLIP2-B take unnormalised pixels
    # (mean 0, std 1), MobileCLIP2-L-14 OpenAI's normalisation; bilinear (L-14: bicubic), shortest side.
    unit = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear")
    out += [
        PretrainedWeights("MobileCLIP-B", "datacompdr", "apple/MobileCLIP-B-OpenCLIP", **unit),
        PretrainedWeights("MobileCLIP-B", "datacompdr_lt", "apple/MobileCLIP-B-LT-OpenCLIP", **unit),
        PretrainedWeights("MobileCLIP2-B", "dfndr2b", "timm/MobileCLIP2-B-OpenCLIP", **unit),
        PretrainedWeights("MobileCLIP2-L-14", "dfndr2b", "timm/MobileCLIP2-L-14-OpenCLIP"),
        # FastViT / MCi MobileCLIP: S1, S2 and MobileCLIP2-S0/S2 unnormalised, MobileCLIP2-S3/S4 OpenAI's
        # normalisation; all bilinear, shortest side (open_clip's _mccfg / _mc2cfg).
        PretrainedWeights("MobileCLIP-S1", "datacompdr", "apple/MobileCLIP-S1-OpenCLIP", **unit),
        PretrainedWeights("MobileCLIP-S2", "datacompdr", "apple/MobileCLIP-S2-OpenCLIP", **unit),
        PretrainedWeights("MobileCLIP2-S0", "dfndr2b", "timm/MobileCLIP2-S0-OpenCLIP", **unit),
        PretrainedWeights("MobileCLIP2-S2", "dfndr2b", "timm/MobileCLIP2-S2-OpenCLIP", **unit),
        PretrainedWeights("MobileCLIP2-S3", "dfndr2b", "timm/MobileCLIP2-S3-OpenCLIP", interpolation="bilinear"),
        PretrainedWeights("MobileCLIP2-S4", "dfndr2b", "timm/MobileCLIP2-S4-OpenCLIP", interpolation="bilinear"),
    ]
    return out


def _datacomp_baselines() -> list[PretrainedWeights]:
    """DataComp's small/medium/large/xlarge scale baselines (Gadre et al. 2023): the DataComp-filtered pool and
    the CommonPool runs with each filter (none, basic, text, image, laion, clip score)."""
    scales = [  # (arch, scale in the tag, scale on the hub, run in the tag, run on the hub)
        ("ViT-B-32", "s", "S", "s13m_b4k", "s13M-b4K"),
        ("ViT-B-32", "m", "M", "s128m_b4k", "s128M-b4K"),
        ("ViT-B-16", "l", "L", "s1b_b8k", "s1B-b8K"),
    ]
    out = []
    for arch, scale, hub_scale, run, hub_run in scales:
        hub = f"laion/CLIP-{arch}"
        out.append(PretrainedWeights(arch, f"datacomp_{scale}_{run}", f"{hub}-DataComp.{hub_scale}-{hub_run}"))
        out.append(PretrainedWeights(arch, f"commonpool_{scale}_{run}", f"{hub}-CommonPool.{hub_scale}-{hub_run}"))
        for filt in ("clip", "laion", "image", "text", "basic"):
            tag, repo = f"commonpool_{scale}_{filt}_{run}", f"{hub}-CommonPool.{hub_scale}.{filt}-{hub_run}"
            out.append(PretrainedWeights(arch, tag, repo))
    for filt in ("clip", "laion"):
        out.append(
            PretrainedWeights(
                "ViT-L-14", f"commonpool_xl_{filt}_s13b_b90k", f"laion/CLIP-ViT-L-14-CommonPool.XL.{filt}-s13B-b90K"
            )
        )
    out.append(PretrainedWeights("ViT-L-14", "commonpool_xl_s13b_b90k", "laion/CLIP-ViT-L-14-CommonPool.XL-s13B-b90K"))
    return out


PRETRAINED: tuple[PretrainedWeights, ...] = tuple(_entries())

# OpenAI's release names and the base names map onto the -quickgelu architecture for tag "openai".
_ALIASES = {
    "ViT-B/32": "ViT-B-32-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-L/14": "ViT-L-14-quickgelu",
    "ViT-L/14@336px": "ViT-L-14-336-quickgelu",
}


def list_pretrained(as_str: bool = False) -> list[tuple[str, str]] | list[str]:
    """(architecture, tag) pairs that `create_model(arch, pretrained=tag)` can download; "arch:tag" strings
    with `as_str=True` (open_clip's `list_pretrained` form)."""
    return [f"{p.arch}:{p.tag}" if as_str else (p.arch, p.tag) for p in PRETRAINED]


def clean_tag(tag: str) -> str:
    """Tags are matched as open_clip matches them: case-insensitive, '-' and '_' alike."""
    return tag.lower().replace("-", "_")


def find_pretrained(arch: str, tag: str) -> PretrainedWeights | None:
    """The entry for an architecture and tag; a base name also finds its -quickgelu entry (OpenAI's)."""
    arch, tag = _ALIASES.get(arch, arch), clean_tag(tag)
    for candidate in (arch, arch + "-quickgelu"):
        for entry in PRETRAINED:
            if entry.arch == candidate and entry.tag == tag:
                return entry
    return None


def tags_for(arch: str) -> list[str]:
    """Tags of `arch` and of its GELU / QuickGELU twin (for error messages listing what exists)."""
    arch = _ALIASES.get(arch, arch)
    base = arch.removesuffix("-quickgelu")
    return sorted({p.tag for p in PRETRAINED if p.arch.removesuffix("-quickgelu") == base})


def tags_by_model(arch: str) -> list[str]:
    """Tags `find_pretrained(arch, tag)` resolves, in table order (open_clip's `list_pretrained_tags_by_model`)."""
    seen = [p.tag for p in PRETRAINED if find_pretrained(arch, p.tag) is not None]
    return list(dict.fromkeys(seen))
