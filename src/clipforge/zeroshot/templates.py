"""Prompt templates shipped as data, and user template files.

`imagenet`: the 80 templates of the CLIP paper's ImageNet prompt ensemble (Radford et al. 2021,
Prompt_Engineering_for_ImageNet notebook). `simple`: the 7-template subset open_clip uses as a cheap
default. `photo`: the single "a photo of a {}." prompt. A template is a string with one `{}` where
the class name goes, or a callable `classname -> prompt` (open_clip's template sets are lambdas).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from ..safeio import read_text_file

BUILTIN_TEMPLATE_SETS = ("imagenet", "simple", "photo")

Template = str | Callable[[str], str]


def _load_json(name: str) -> dict:
    return json.loads((resources.files("clipforge.zeroshot") / "data" / name).read_text())


def check_templates(templates: list[Template], source: str = "templates") -> list[Template]:
    """Return `templates` when each has exactly one '{}' (or is callable); a ValueError naming `source` otherwise."""
    if not templates:
        raise ValueError(f"{source}: no templates given")
    bad = [t for t in templates if not callable(t) and (not isinstance(t, str) or t.count("{}") != 1)]
    if bad:
        raise ValueError(
            f"{source}: every template needs exactly one '{{}}' for the class name (or is a callable "
            f"classname -> prompt); bad: {bad[:3]}"
        )
    return list(templates)


def render(template: Template, classname: str) -> str:
    """The prompt for one class: `template.format(classname)`, or `template(classname)` for a callable."""
    return template(classname) if callable(template) else template.format(classname)


def get_templates(name_or_path: str | Path = "simple") -> list[str]:
    """A built-in set by name, or a text file with one template per line (blank lines and # comments skipped)."""
    text = str(name_or_path)
    if text == "photo":
        return ["a photo of a {}."]
    if text in ("imagenet", "simple"):
        return _load_json(f"{text}_templates.json")["templates"]
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"templates {text!r}: not a built-in set {list(BUILTIN_TEMPLATE_SETS)} and not a file")
    lines = [ln.strip() for ln in read_text_file(path, what="templates file").splitlines()]
    return check_templates([ln for ln in lines if ln and not ln.startswith("#")], str(path))


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet class names of the CLIP paper, in class-index order."""
    return _load_json("imagenet_classnames.json")["classnames"]
