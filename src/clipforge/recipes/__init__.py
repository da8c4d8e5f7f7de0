"""Training recipes that ship with clipforge: `clipforge train NAME` (or `clipforge train --list`).

A recipe is a module with `get_config(arg: str | None) -> TrainConfig`, `arg` being the command's `--arg`
(a variant name or a data path, as the recipe's docstring says); its docstring's first line is its summary.
A user's recipe is any .py file with the same function: `clipforge train path/to/my_recipe.py`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
from pathlib import Path
from types import ModuleType

from ..models.config import ConfigError


def list_recipes() -> dict[str, str]:
    """{name: one-line summary} of the shipped recipes."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return {name: _summary(importlib.import_module(f"{__name__}.{name}")) for name in names}


def _summary(module: ModuleType) -> str:
    return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""


def _is_path(recipe: str) -> bool:
    return recipe.endswith(".py") or "/" in recipe or "\\" in recipe or Path(recipe).is_file()


def load_recipe_module(recipe: str) -> ModuleType:
    """A shipped recipe by name, or a user's recipe file by path; ConfigError saying which exist otherwise."""
    if not _is_path(recipe):
        names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
        if recipe not in names:
            close = difflib.get_close_matches(recipe, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"recipe {recipe!r} is not a shipped recipe; {hint}shipped: {', '.join(names)} "
                "(or give the path of a .py file with get_config(arg))"
            )
        module = importlib.import_module(f"{__name__}.{recipe}")
    else:
        file = Path(recipe)
        if not file.is_file():
            raise ConfigError(f"recipe file {recipe} not found (expected a .py file with get_config(arg))")
        spec = importlib.util.spec_from_file_location(f"clipforge_user_recipe_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"recipe {recipe} defines no get_config(arg) function returning a TrainConfig")
    return module


def recipe_config(module: ModuleType, arg: str | None = None):
    """`module.get_config(arg)`, checked to be a TrainConfig."""
    from ..train.config import TrainConfig

    config = module.get_config(arg)
    if not isinstance(config, TrainConfig):
        raise ConfigError(
            f"recipe {module.__name__}: get_config({arg!r}) returned {type(config).__name__}, not a TrainConfig"
        )
    return config


def load_recipe(recipe: str, arg: str | None = None):
    """The TrainConfig of recipe `recipe` (shipped name or .py path) for recipe argument `arg`."""
    return recipe_config(load_recipe_module(recipe), arg)


__all__ = ["list_recipes", "load_recipe", "load_recipe_module", "recipe_config"]
