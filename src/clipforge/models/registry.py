"""Named architectures: JSON configs in `configs/` beside this file, plus OpenAI's names as aliases.

Each base architecture is one JSON file. Variants are not copies (STYLE.md): the suffix
`-quickgelu` sets `act="quick_gelu"` on both towers (the activation OpenAI's checkpoints were trained
with), and OpenAI's release names (`ViT-B/32`, `RN50`, ...) resolve to the matching base with QuickGELU,
as their weights require.

The suffix exists only for the OpenAI-style ViT and ResNet CLIPs that open_clip publishes a `-quickgelu`
config for (`QUICKGELU_BASES`): checkpoints were trained with QuickGELU only there (OpenAI, YFCC/CC12M
ResNets, LAION-400M, MetaCLIP, DFN). SigLIP, EVA02, ConvNeXt or HF-text towers with QuickGELU would be a
different architecture no checkpoint fits, so such a name is an error rather than a silently untrained model.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from importlib import resources

from .config import CLIPConfig, ConfigError

QUICKGELU_SUFFIX = "-quickgelu"

# Bases with a `-quickgelu` variant: exactly those open_clip ships a `<base>-quickgelu.json` for (its
# model_configs, 3.3.0), intersected with the bases clipforge has.
QUICKGELU_BASES: frozenset[str] = frozenset(
    {
        "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
        "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-H-14-378", "ViT-bigG-14",
        "ViT-H-14-worldwide", "ViT-L-14-worldwide",
    }
)  # fmt: skip
# OpenAI-style test configs: their -quickgelu names load (tests mirror OpenAI checkpoints with them) but are
# not listed, like the tiny bases' place in list_models().
_TEST_QUICKGELU_BASES: frozenset[str] = frozenset({"tiny-vit", "tiny-rn", "tiny-vit-attnpool"})

# OpenAI's nine released architectures -> (base config, uses QuickGELU).
OPENAI_NAMES: dict[str, str] = {
    "RN50": "RN50",
    "RN101": "RN101",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
}


@lru_cache(maxsize=1)
def _base_configs() -> dict[str, dict]:
    folder = resources.files("clipforge.models") / "configs"
    out = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            out[entry.name[: -len(".json")]] = json.loads(entry.read_text())
    return out


def list_models() -> list[str]:
    """Every architecture name `create_model` accepts: base names, the -quickgelu variants of the OpenAI-style
    bases that have one (`QUICKGELU_BASES`), and OpenAI's release names."""
    bases = sorted(_base_configs())
    slash_names = [n for n in OPENAI_NAMES if "/" in n]
    return bases + [b + QUICKGELU_SUFFIX for b in bases if b in QUICKGELU_BASES] + slash_names


def with_quick_gelu(config: CLIPConfig) -> CLIPConfig:
    """The same config with QuickGELU in both towers (the `-quickgelu` name variants)."""
    return config.replace(
        vision=dataclasses.replace(config.vision, act="quick_gelu"),
        text=dataclasses.replace(config.text, act="quick_gelu"),
    )


def get_model_config(name: str) -> CLIPConfig:
    """The config of a named architecture; an unknown name is an error listing close matches."""
    bases = _base_configs()
    if name in OPENAI_NAMES and "/" in name:
        return with_quick_gelu(CLIPConfig.from_dict(bases[OPENAI_NAMES[name]]))
    if name in bases:
        return CLIPConfig.from_dict(bases[name])
    base = name.removesuffix(QUICKGELU_SUFFIX)
    if base != name and base in bases:
        if base in QUICKGELU_BASES or base in _TEST_QUICKGELU_BASES:
            return with_quick_gelu(CLIPConfig.from_dict(bases[base]))
        raise ConfigError(
            f"model architecture {name!r} does not exist: {base!r} has no QuickGELU variant (no checkpoint was "
            f"trained with it; QuickGELU there would be a different, untrained model). Use {base!r}; -quickgelu "
            f"names exist only for {sorted(QUICKGELU_BASES & set(bases))}."
        )
    import difflib

    close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else ""
    raise ConfigError(f"unknown model architecture {name!r}.{hint} See clipforge.list_models() for all names.")
