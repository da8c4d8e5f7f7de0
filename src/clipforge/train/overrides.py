"""`--section.field=value` overrides on a frozen config, and configs from plain dicts (JSON).

Values are parsed as JSON when they parse (numbers, true/false/null, lists, objects) and kept as
strings otherwise, so `--optim.lr=1e-3`, `--model.name=ViT-B-32` and
`--data.sources='[{"kind": "csv", "path": "train.csv"}]'` all work. An unknown field is an error
that lists the valid ones at that level.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from ..models.config import ConfigError


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn JSON-ish `value` into the annotated type `tp` (dataclasses and tuples of them included)."""
    if value is None:
        return None
    tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a dict, recursively; unknown keys are a ConfigError naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(types_)}")
    return cls(**{k: coerce(types_[k], v, f"{where}.{k}") for k, v in data.items()})


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_override(config: Any, dotted: str, value: Any) -> Any:
    """A copy of `config` with the field at `dotted` (e.g. "optim.lr") set to `value`."""
    head, _, rest = dotted.partition(".")
    if not dataclasses.is_dataclass(config):
        raise ConfigError(f"cannot set {dotted!r}: {type(config).__name__} has no fields")
    types_ = _field_types(type(config))
    if head not in types_:
        raise ConfigError(f"unknown config field {head!r}; valid fields here: {sorted(types_)}")
    current = getattr(config, head)
    if rest:
        if isinstance(current, dict):
            new = dict(current)
            _set_in_dict(new, rest, value)
        elif current is None and dataclasses.is_dataclass(_strip_optional(types_[head])):
            new = apply_override(_strip_optional(types_[head])(), rest, value)
        else:
            new = apply_override(current, rest, value)
    else:
        new = coerce(types_[head], value, head)
    return dataclasses.replace(config, **{head: new})


def _set_in_dict(target: dict, dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        child = dict(target.get(head) or {})
        _set_in_dict(child, rest, value)
        target[head] = child
    else:
        target[head] = value


def apply_overrides(config: Any, items: list[str]) -> Any:
    """Apply `key=value` strings (a leading `--` is allowed) in order."""
    for item in items:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --section.field=value")
        key, raw = text.split("=", 1)
        config = apply_override(config, key, parse_value(raw))
    return config
