"""What a config's fields are: dotted names, readable types, current values and the docs from class docstrings.

Config classes document their fields in the class docstring, after a "Fields:" line, one `name: text` entry
per field (`a / b: text` documents two; continuation lines are indented deeper; `...; name: text` starts
another field's entry on the same line). `clipforge train RECIPE --help` lists every field from here, and the
override parser uses the same type names in its errors, so help and errors never disagree.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

_NAMES = r"[A-Za-z_]\w*(?:\s*/\s*[A-Za-z_]\w*)*"
_ENTRY = re.compile(rf"^(\s*)({_NAMES})\s*:\s+(.*)$")
_SAME_LINE = re.compile(rf";\s+({_NAMES}):\s+")
_HEADER = re.compile(r"^Fields\b(?:\s*\([^)]*\))?:\s*(.*)$")  # "Fields:" or "Fields (a note):"
REQUIRED = "(required)"


@dataclass(frozen=True)
class FieldInfo:
    """One settable field.

    Fields:
        name: dotted path as typed on the command line (`optim.lr`, `data.sources.0.path`).
        type: readable type (`float`, `int | None`, `'cosine' | 'constant'`, `tuple[SourceConfig, ...]`).
        default: the current value as JSON text (the recipe's value), or "(required)".
        doc: the field's documentation from its class docstring ("" when undocumented).
        keys: for a field set only as JSON (an unset optional object, an empty list of objects): the keys its
            objects take, with their class defaults.
    """

    name: str
    type: str
    default: str
    doc: str
    keys: tuple[FieldInfo, ...] = ()


def is_union(tp: Any) -> bool:
    """Whether a type annotation is a union (`A | B` or `Optional[A]`)."""
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def strip_optional(tp: Any) -> Any:
    """`X | None` -> X (other unions and plain types are returned unchanged)."""
    if is_union(tp):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def type_name(tp: Any) -> str:
    """A short readable name for an annotation, as used in help and error messages."""
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if is_union(tp):
        rest = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(rest + (["None"] if type(None) in args else []))
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{type_name(args[0])}, ...]"
        return f"tuple[{', '.join(type_name(a) for a in args)}]" if args else "tuple"
    if origin in (list, dict):
        inner = ", ".join(type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    return getattr(tp, "__name__", str(tp))


def is_dataclass_type(tp: Any) -> bool:
    """Whether a type annotation is a dataclass class (a nested config section)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def sequence_item_type(tp: Any) -> Any | None:
    """The item type of `tuple[X, ...]` / `list[X]`, else None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    if origin is list and args:
        return args[0]
    return None


@cache
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: doc text} parsed from the "Fields:" block of `cls`'s docstring."""
    names = {f.name for f in dataclasses.fields(cls)}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    heads = [(i, _HEADER.match(line.strip())) for i, line in enumerate(lines)]
    start, header = next(((i, m) for i, m in heads if m), (None, None))
    if start is None:
        return {}
    first = header.group(1).strip()
    block = ([first] if first else []) + lines[start + 1 :]
    entries: list[tuple[list[str], list[str]]] = []
    entry_indent = None
    for line in block:
        if not line.strip():
            if entries:
                break
            continue
        match = _ENTRY.match(line)
        keys = [k.strip() for k in match.group(2).split("/")] if match else []
        indent = len(line) - len(line.lstrip())
        if match and all(k in names for k in keys) and (entry_indent is None or indent <= entry_indent):
            entry_indent = indent
            entries.append((keys, [match.group(3).strip()]))
        elif entries and indent > (entry_indent or 0):
            entries[-1][1].append(line.strip())
        else:
            break
    docs: dict[str, str] = {}
    for keys, text_lines in entries:
        _add_entry(docs, keys, " ".join(text_lines), names)
    return docs


def _add_entry(docs: dict[str, str], keys: list[str], text: str, names: set[str]) -> None:
    """Store `text` for `keys`, splitting off "...; other: text" entries that name other fields."""
    for match in _SAME_LINE.finditer(text):
        others = [k.strip() for k in match.group(1).split("/")]
        if all(k in names for k in others):
            _add_entry(docs, others, text[match.end() :], names)
            text = text[: match.start()]
            break
    for key in keys:
        docs.setdefault(key, text.strip())


def show(value: Any) -> str:
    """A value as JSON text (what one would type after `=`)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif isinstance(value, tuple) and any(dataclasses.is_dataclass(v) for v in value):
        value = [dataclasses.asdict(v) for v in value]
    return json.dumps(value, default=str)


def _class_keys(cls: type) -> tuple[FieldInfo, ...]:
    docs, hints, out = field_docs(cls), field_types(cls), []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = show(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = show(f.default_factory())
        else:
            default = REQUIRED
        out.append(FieldInfo(f.name, type_name(hints[f.name]), default, docs.get(f.name, "")))
    return tuple(out)


def iter_fields(config: Any, prefix: str = "") -> list[FieldInfo]:
    """Every settable field of dataclass instance `config`, nested sections flattened to dotted names."""
    cls = type(config)
    docs, hints, out = field_docs(cls), field_types(cls), []
    for f in dataclasses.fields(cls):
        tp, value, name = hints[f.name], getattr(config, f.name), prefix + f.name
        doc = docs.get(f.name, "")
        base, item = strip_optional(tp), sequence_item_type(strip_optional(tp))
        if dataclasses.is_dataclass(value):
            out.extend(iter_fields(value, name + "."))
        elif value is None and is_dataclass_type(base):
            out.append(FieldInfo(name, f"{type_name(tp)} (JSON object)", "null", doc, _class_keys(base)))
        elif item is not None and is_dataclass_type(item):
            keys = () if value else _class_keys(item)
            out.append(FieldInfo(name, f"{type_name(tp)} (JSON list of objects)", show(value), doc, keys))
            for i, element in enumerate(value):
                out.extend(iter_fields(element, f"{name}.{i}."))
        else:
            out.append(FieldInfo(name, type_name(tp), show(value), doc))
    return out
