"""Command-line overrides of a frozen config, parsed and type-checked against the dataclass annotations.

`--section.field=value` and `--section.field value` set one field; a bool field alone (`--model.lock_image`)
sets True. Values are read by the field's annotation: int, float and str as text, bool as true/false/1/0
(also yes/no), Literal fields take one of their values, `X | None` also takes null/none, and tuples, lists,
dicts and dataclasses take JSON (checked item by item, objects key by key). Dotted paths reach into nested
sections, list items by index (`--data.sources.0.path=x.csv`) and dict keys
(`--model.overrides.vision.patch_dropout=0.5`). Every mistake is one `ConfigError` line naming the option and
what it expected, e.g. `--optim.lr: expected float, got 'abc'`; an unknown name suggests the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from typing import Any, Literal

from ..models.config import ConfigError
from .fieldinfo import (
    field_types,
    is_dataclass_type,
    is_union,
    iter_fields,
    sequence_item_type,
    strip_optional,
    type_name,
)

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
NULL_WORDS = ("null", "none")


# ----------------------------------------------------------------------------- text -> typed value


def parse_text(tp: Any, text: str, where: str) -> Any:
    """The command-line text `text` read as annotation `tp`; ConfigError naming `where` when it does not fit."""
    if tp is Any:
        return _json_or_text(text)
    if is_union(tp):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in NULL_WORDS:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _parse_member(rest[0], text, where, expected=type_name(tp))
        for member in rest:
            try:
                return parse_text(member, text, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {type_name(tp)}, got {text!r}")
    return _parse_member(tp, text, where, expected=type_name(tp))


def _parse_member(tp: Any, text: str, where: str, expected: str) -> Any:
    if typing.get_origin(tp) is Literal:
        for choice in typing.get_args(tp):
            if str(choice) == text:
                return choice
        allowed = ", ".join(repr(c) for c in typing.get_args(tp))
        raise ConfigError(f"{where}: expected one of {allowed}, got {text!r}")
    if tp is bool:
        word = text.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ConfigError(f"{where}: expected {expected} (true/false/1/0), got {text!r}")
    if tp is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected {expected}, got {text!r}") from None
    if tp is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected {expected}, got {text!r}") from None
    if tp is str:
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: expected {expected} as JSON, got {text!r} ({exc.msg})") from None
    return convert(tp, value, where)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# ----------------------------------------------------------------------------- JSON value -> typed value


def convert(tp: Any, value: Any, where: str) -> Any:
    """JSON `value` checked against annotation `tp` and turned into it (dataclasses and tuples of them included)."""
    if tp is Any:
        return value
    if is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return convert(rest[0], value, where)
        for member in rest:
            try:
                return convert(member, value, where)
            except ConfigError:
                continue
        raise _mismatch(tp, value, where)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        allowed = ", ".join(repr(c) for c in args)
        raise ConfigError(f"{where}: expected one of {allowed}, got {json.dumps(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _mismatch(tp, value, where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _mismatch(tp, value, where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _mismatch(tp, value, where)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _mismatch(tp, value, where)
    if is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _mismatch(tp, value, where)
        item = sequence_item_type(tp)
        if item is None and args:  # fixed-length tuple[X, Y]
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items ({type_name(tp)}), got {len(value)}")
            items = [convert(a, v, f"{where}.{i}") for i, (a, v) in enumerate(zip(args, value))]
        else:
            items = [convert(item or Any, v, f"{where}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _mismatch(tp, value, where)
        inner = args[1] if len(args) == 2 else Any
        return {k: convert(inner, v, f"{where}.{k}") for k, v in value.items()}
    return value


def _mismatch(tp: Any, value: Any, where: str) -> ConfigError:
    return ConfigError(f"{where}: expected {type_name(tp)}, got {json.dumps(value, default=str)}")


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass `cls` from a JSON object, recursively; unknown or missing keys are ConfigErrors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object for {cls.__name__}, got {json.dumps(data, default=str)}")
    hints = field_types(cls)
    for key in data:
        if key not in hints:
            raise _unknown_field(where, key, sorted(hints))
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
    ]
    if required:
        raise ConfigError(f"{where}: {cls.__name__} needs field(s) {required}")
    values = {k: convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return _construct(lambda: cls(**values), where)


def _construct(build: typing.Callable[[], Any], where: str) -> Any:
    """Run a dataclass constructor; its validation errors come back naming `where`."""
    try:
        return build()
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if where.lstrip("-") in message else f"{where}: {message}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


# ----------------------------------------------------------------------------- dotted paths


def _unknown_field(where: str, name: str, valid: list[str], root: Any = None) -> ConfigError:
    """`where` is the option so far (e.g. "--optim"); suggests the closest name here, or anywhere in `root`."""
    at = f"{where}.{name}" if where else f"--{name}"
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    if not close and root is not None:
        dotted = [f.name for f in iter_fields(root)]
        same_leaf = [d for d in dotted if d.split(".")[-1] == name]
        close = same_leaf or difflib.get_close_matches(at.lstrip("-"), dotted, n=1, cutoff=0.6)
        hint = f"did you mean --{close[0]}? " if close else ""
    section = f" in {where.lstrip('-')}" if where else ""
    return ConfigError(f"{at}: unknown field {name!r}{section}; {hint}valid fields: {', '.join(valid)}")


def _set(current: Any, tp: Any, parts: list[str], raw: str | None, where: str, root: Any) -> Any:
    """The value at this node of the config after setting the dotted path `parts` below it to text `raw`
    (None: a bare flag, True for a bool field)."""
    if not parts:
        if raw is None:
            if strip_optional(tp) is bool:
                return True
            raise ConfigError(f"{where}: needs a value ({where}=VALUE, expected {type_name(tp)})")
        return parse_text(tp, raw, where)
    head, rest = parts[0], parts[1:]
    base = strip_optional(tp)
    if dataclasses.is_dataclass(current) or (current is None and is_dataclass_type(base)):
        cls = type(current) if current is not None else base
        hints = field_types(cls)
        if head not in hints:
            raise _unknown_field(where, head, sorted(hints), root)
        if current is None:
            raise ConfigError(
                f"{where}.{head}: {where.lstrip('-')} is null; set it as a whole JSON object first, "
                f"e.g. {where}='{{...}}' (keys: {', '.join(hints)})"
            )
        new = _set(getattr(current, head), hints[head], rest, raw, f"{where}.{head}", root)
        return _construct(lambda: dataclasses.replace(current, **{head: new}), f"{where}.{head}")
    if isinstance(current, (tuple, list)):
        if not head.isdigit() or int(head) >= len(current):
            raise ConfigError(
                f"{where}.{head}: {where.lstrip('-')} has {len(current)} item(s), indexed 0..{len(current) - 1}; "
                f"to add or remove items set the whole list as JSON: {where}='[...]'"
            )
        index = int(head)
        item_tp = sequence_item_type(base) or Any
        items = list(current)
        items[index] = _set(current[index], item_tp, rest, raw, f"{where}.{head}", root)
        return type(current)(items)
    if isinstance(current, dict) or (current is None and (base is Any or typing.get_origin(base) is dict)):
        mapping = dict(current or {})
        args = typing.get_args(base)
        inner = args[1] if len(args) == 2 else Any
        mapping[head] = _set(mapping.get(head), inner, rest, raw, f"{where}.{head}", root)
        return mapping
    raise ConfigError(f"{where}.{head}: {where.lstrip('-')} is a {type_name(tp)}, it has no field {head!r}")


def apply_override(config: Any, dotted: str, raw: str | None) -> Any:
    """A copy of `config` with the field at `dotted` (e.g. "optim.lr") set from command-line text `raw`."""
    if not dotted or any(not part for part in dotted.split(".")):
        raise ConfigError(f"--{dotted}: not a field name; overrides look like --section.field=value")
    parts = dotted.split(".")
    head = parts[0]
    hints = field_types(type(config))
    if head not in hints:
        raise _unknown_field("", head, sorted(hints), config)
    new = _set(getattr(config, head), hints[head], parts[1:], raw, f"--{head}", config)
    return _construct(lambda: dataclasses.replace(config, **{head: new}), f"--{head}")


def field_type(config: Any, dotted: str) -> Any:
    """The annotation of the field at `dotted` (Any inside dicts), or None when the path does not name a field."""
    node, tp = config, type(config)
    for part in dotted.split("."):
        base = strip_optional(tp)
        if dataclasses.is_dataclass(node) or is_dataclass_type(base):
            cls = type(node) if dataclasses.is_dataclass(node) else base
            tp = field_types(cls).get(part)
            if tp is None:
                return None
            node = getattr(node, part, None)
        elif isinstance(node, (tuple, list)) and part.isdigit() and int(part) < len(node):
            tp, node = sequence_item_type(base) or Any, node[int(part)]
        elif isinstance(node, dict) or base is Any or typing.get_origin(base) is dict:
            args = typing.get_args(base)
            tp, node = (args[1] if len(args) == 2 else Any), (node or {}).get(part)
        else:
            return None
    return tp


def _is_bool_word(text: str) -> bool:
    return text.strip().lower() in TRUE_WORDS + FALSE_WORDS


def next_override(config: Any, items: list[str], i: int) -> tuple[str, str | None, int]:
    """The override starting at token `i`: (dotted name, text or None for a bare bool flag, next index).

    `--a.b=v` and `--a.b v` both work; a bool field may stand alone (`--flag`) or take true/false/1/0 next.
    A value may start with a single dash (`--optim.eps -1`), never with two.
    """
    item = items[i]
    if not item.startswith("--") or len(item) == 2:
        raise ConfigError(
            f"unexpected argument {item!r}: config overrides look like --section.field=value or "
            "--section.field value (quote values with spaces)"
        )
    key, has_value, value = item[2:].partition("=")
    if has_value:
        return key, value, i + 1
    following = items[i + 1] if i + 1 < len(items) else None
    takes_next = following is not None and not following.startswith("--")
    if strip_optional(field_type(config, key)) is bool and takes_next and not _is_bool_word(following):
        raise ConfigError(f"--{key}: expected bool (true/false/1/0, or the flag alone for true), got {following!r}")
    return key, (following if takes_next else None), i + (2 if takes_next else 1)


def apply_overrides(config: Any, items: list[str]) -> Any:
    """Apply command-line override tokens in order (see the module docstring for the forms)."""
    i = 0
    while i < len(items):
        key, raw, i = next_override(config, items, i)
        config = apply_override(config, key, raw)
    return config
