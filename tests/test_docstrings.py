"""Every public name clipforge defines has a docstring: the top-level API, and each module's own public
functions, classes and methods (names imported from elsewhere are checked where they are defined)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import clipforge


def _modules() -> list:
    found = [clipforge]
    for info in pkgutil.walk_packages(clipforge.__path__, "clipforge."):
        if info.name == "clipforge.__main__":
            continue  # running it would parse sys.argv; it is a two-line entry point
        found.append(importlib.import_module(info.name))
    return found


def _public(name: str) -> bool:
    return not name.startswith("_")


def _class_doc(cls) -> str:
    """The class's own docstring; the "Name(field, ...)" text dataclasses and NamedTuples make up does not count."""
    doc = (cls.__doc__ or "").strip()
    return "" if doc.startswith(f"{cls.__name__}(") else doc


def _missing_in_class(cls, where: str) -> list[str]:
    missing = []
    for name, member in vars(cls).items():
        if not _public(name):
            continue
        if isinstance(member, (staticmethod, classmethod, property)) or inspect.isfunction(member):
            own = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
            own = own.fget if isinstance(own, property) else own
            if own is None or (getattr(own, "__doc__", None) or "").strip():
                continue
            # an override of a documented base-class method (nn.Module.forward excepted) inherits its doc
            inherited = next(
                (
                    getattr(base, name).__doc__
                    for base in cls.__mro__[1:]
                    if hasattr(base, name) and base.__module__.startswith("clipforge")
                ),
                None,
            )
            if not (inherited or "").strip():
                missing.append(f"{where}.{name}")
    return missing


def test_top_level_api_is_documented():
    missing = [name for name in clipforge.__all__ if not (inspect.getdoc(getattr(clipforge, name)) or "").strip()]
    assert not missing, f"clipforge.__all__ names without a docstring: {missing}"


def test_every_module_and_public_definition_is_documented():
    missing = []
    for module in _modules():
        if not (module.__doc__ or "").strip():
            missing.append(f"{module.__name__} (module docstring)")
        for name, obj in vars(module).items():
            if not _public(name) or getattr(obj, "__module__", None) != module.__name__:
                continue  # private, or imported from elsewhere (checked in its own module)
            where = f"{module.__name__}.{name}"
            if inspect.isclass(obj):
                if not _class_doc(obj):
                    missing.append(where)
                missing.extend(_missing_in_class(obj, where))
            elif inspect.isfunction(obj) and not (obj.__doc__ or "").strip():
                missing.append(where)
    assert not missing, f"{len(missing)} public names without a docstring:\n  " + "\n  ".join(missing)
