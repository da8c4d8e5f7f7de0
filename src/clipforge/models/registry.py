"""Named architectures: JSON configs in `configs/` beside this file, plus OpenAI's names as aliases.

Each base architecture is one JSON file. Variants are not copies (STYLE.md): the suffix
`-quickgelu` on any base name sets `act="quick_gelu"` on both towers (the activation OpenAI's
checkpoints were trained with), and OpenAI's release names (`ViT-B/32`, `RN50`, ...) resolve to the
matching base with QuickGELU, as their weights require.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from importlib import resources

from .config import CLIPConfig, ConfigError

QUICKGELU_SUFFIX = "-quickgelu"

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
    """Every architecture name `create_model` accepts (base names, their -quickgelu variants, OpenAI names)."""
    bases = sorted(_base_configs())
    slash_names = [n for n in OPENAI_NAMES if "/" in n]
    return bases + [b + QUICKGELU_SUFFIX for b in bases if not b.startswith("tiny")] + slash_names


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
    if name.endswith(QUICKGELU_SUFFIX) and name[: -len(QUICKGELU_SUFFIX)] in bases:
        return with_quick_gelu(CLIPConfig.from_dict(bases[name[: -len(QUICKGELU_SUFFIX)]]))
    import difflib

    close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else ""
    raise ConfigError(f"unknown model architecture {name!r}.{hint} See clipforge.list_models() for all names.")
