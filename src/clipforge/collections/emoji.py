"""Noto Color Emoji as a collection: one rendered emoji per image, captioned with its English name.

Names come from the `emoji` package (`EMOJI_DATA[ch]["en"]`, ":grinning_face:" -> "grinning face"; a country
flag ":Japan:" -> "flag of Japan"); groups and subgroups ("Smileys & Emotion" / "face-smiling") from Unicode's
emoji-test.txt (emoji_groups.py). Only fully-qualified emoji are listed (the unqualified and minimally-qualified
spellings draw the same glyph).

Skin-tone variants ("thumbs up: medium skin tone") are left out by default (`variants=False`): each would be a
near copy of its base emoji's image whose caption differs only by the tone, so they add near-duplicate targets
to retrieval and almost nothing to training. `variants=True` keeps them (each in its base emoji's group).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from .emoji_groups import EMOJI_GROUPS
from .render import RenderJob

EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_FONT_INSTALL = "apt-get install -y fonts-noto-color-emoji"
EMOJI_PACKAGE_INSTALL = "pip install 'clipforge[collections]'"
EMOJI_LAYOUT = "a colour emoji font file (Noto Color Emoji: /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf)"
_SKIN_TONES = frozenset(chr(c) for c in range(0x1F3FB, 0x1F400))
_SELECTORS = frozenset("\ufe0f\ufe0e")
_REGIONAL_INDICATORS = frozenset(chr(c) for c in range(0x1F1E6, 0x1F200))  # two of them spell a country flag


@dataclass(frozen=True)
class EmojiItem:
    """One emoji: its characters, its caption (English name), its Unicode group and subgroup ("" if unknown)."""

    emoji: str
    name: str
    group: str
    subgroup: str

    def job(self, size: int, font: str = EMOJI_FONT) -> RenderJob:
        """The render job of this emoji at `size` pixels with `font`."""
        return RenderJob("emoji", self.emoji, size, font)


def emoji_name(short_name: str) -> str:
    """A CLDR short name as words: ":grinning_face:" -> "grinning face"."""
    return " ".join(short_name.strip(":").replace("_", " ").split())


@lru_cache(maxsize=1)
def _group_index() -> dict[str, tuple[str, str]]:
    """emoji (variation selectors removed) -> (group, subgroup)."""
    index = {}
    for group, subgroups in EMOJI_GROUPS.items():
        for subgroup, listed in subgroups.items():
            for emoji in listed.split():
                index[_base(emoji)] = (group, subgroup)
    return index


def _base(emoji: str) -> str:
    return "".join(c for c in emoji if c not in _SELECTORS and c not in _SKIN_TONES)


def check_font(font: str) -> str:
    """`font` if it is a file; FileNotFoundError naming the apt-get command otherwise."""
    if not os.path.isfile(font):
        raise FileNotFoundError(
            f"the emoji font is not installed: no file {font}; install it with `{EMOJI_FONT_INSTALL}` "
            "(Debian/Ubuntu, after apt-get update)"
        )
    return font


def load_emoji(variants: bool = False) -> tuple[EmojiItem, ...]:
    """Every fully-qualified emoji the `emoji` package names, sorted by group order then name.

    Args:
        variants: keep skin-tone variants (see the module docstring); False drops them.

    Raises ImportError naming the pip command when the `emoji` package is missing.
    """
    try:
        import emoji as emoji_package
    except ImportError as exc:
        raise ImportError(f"the emoji collection needs the `emoji` package: `{EMOJI_PACKAGE_INSTALL}`") from exc
    fully_qualified = emoji_package.STATUS["fully_qualified"]
    groups = _group_index()
    order = {group: i for i, group in enumerate(EMOJI_GROUPS)}
    items = []
    for char, data in emoji_package.EMOJI_DATA.items():
        if data.get("status") != fully_qualified:
            continue
        has_tone = any(c in _SKIN_TONES for c in char)
        if has_tone and not variants:
            continue
        if _base(char) == "":  # a bare skin-tone swatch (Unicode's "Component" group)
            continue
        group, subgroup = groups.get(_base(char), ("", ""))
        name = emoji_name(data["en"])
        if all(c in _REGIONAL_INDICATORS for c in char) and not name.startswith("flag"):
            name = f"flag of {name}"
        items.append(EmojiItem(char, name, group, subgroup))
    items.sort(key=lambda item: (order.get(item.group, len(order)), item.name.casefold()))
    return tuple(items)
