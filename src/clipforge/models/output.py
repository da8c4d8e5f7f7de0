"""`CLIPOutput`: what `CLIP.forward` returns, readable as a dict, by attribute, or as open_clip's tuple.

Why not a plain dict: `image_features, text_features, logit_scale = model(images, tokens)` is how
open_clip code (output_dict=False) reads a forward, and on a dict it silently binds the three KEYS
(strings) instead of the tensors. Why not a tuple: the training code and transformers-style code read
outputs by name (`out["logit_bias"]`, `"logit_bias" in out`, `out.get(...)`). `CLIPOutput` serves all
three, so no reading of it is silently wrong:

- attribute access: `out.image_features`, `out.text_features`, `out.logit_scale`, `out.logit_bias`
  (None when not computed / when the model has no bias);
- key access, as a dict (it is a `dict` subclass): `out["image_features"]`, `"logit_bias" in out`,
  `out.get(...)`, `out.keys()`, `out.values()`, `out.items()`, `dict(out)`, `{**out}`. The keys are the
  entries that were computed: the features of the inputs given, `logit_scale`, and `logit_bias` only
  when the model has one (as transformers' ModelOutput drops None entries);
- sequence access in open_clip's `forward` order (`open_clip/model.py`, output_dict=False):
  `(image_features, text_features, logit_scale[, logit_bias])`: unpacking, `out[0]`, `out[-1]`,
  `out[:2]`, `len(out)`, `out.to_tuple()`. Missing features are None in their position, as in
  open_clip, and `logit_bias` is the fourth entry only when the model has one.

Iterating (`for x in out`, `list(out)`, unpacking) yields the VALUES in tuple order, unlike a plain
dict whose iteration yields its keys, and `len(out)` is the tuple's length (3 or 4). Use `.keys()` /
`.items()` for the names. Indexing with anything but a str, int or slice raises a TypeError that says
so, which catches `for key in out: out[key]` written for a dict.

The class is registered as a torch pytree node (children: the computed tensors, in key order), so
`torch.compile`, DDP (find_unused_parameters / static_graph flatten the output) and `tree_map` keep it a
`CLIPOutput` rather than treating it as an opaque leaf.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.utils._pytree as pytree

_TUPLE_ORDER = ("image_features", "text_features", "logit_scale", "logit_bias")
_FIELDS = frozenset(_TUPLE_ORDER)


class CLIPOutput(dict):
    """Output of `CLIP.forward`: a dict of the computed entries that also unpacks like open_clip's tuple.

    Entries (all tensors): `image_features` (B, D) and `text_features` (T, D), L2-normalised, present
    when images / tokens were given; `logit_scale` () the exponentiated temperature, always present;
    `logit_bias` () only for models with a bias (SigLIP). See the module docstring for how iteration
    differs from a dict's.
    """

    __slots__ = ()

    def __init__(self, entries: Mapping[str, torch.Tensor | None] | None = None, /, **kwargs: torch.Tensor | None):
        """Entries that are None are left out, so the keys are exactly the computed outputs."""
        merged = {**(entries or {}), **kwargs}
        unknown = sorted(set(merged) - _FIELDS)
        if unknown:
            raise KeyError(f"CLIPOutput has no field(s) {unknown}; the fields are {list(_TUPLE_ORDER)}")
        if merged.get("logit_scale") is None:
            raise ValueError("CLIPOutput needs a logit_scale (the model's exponentiated temperature)")
        super().__init__((key, merged[key]) for key in _TUPLE_ORDER if merged.get(key) is not None)

    # Attribute access: None for an entry that was not computed.
    @property
    def image_features(self) -> torch.Tensor | None:
        """Image embeddings (B, D), or None when no images were given."""
        return dict.get(self, "image_features")

    @property
    def text_features(self) -> torch.Tensor | None:
        """Text embeddings (N, D), or None when no texts were given."""
        return dict.get(self, "text_features")

    @property
    def logit_scale(self) -> torch.Tensor:
        """The exponentiated temperature (a scalar tensor) that multiplies cosine similarities."""
        return dict.__getitem__(self, "logit_scale")

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's logit bias (a scalar tensor), or None for models without one."""
        return dict.get(self, "logit_bias")

    # Sequence view, in open_clip's forward order.
    def to_tuple(self) -> tuple[torch.Tensor | None, ...]:
        """(image_features, text_features, logit_scale[, logit_bias]); missing features are None."""
        values = (self.image_features, self.text_features, self.logit_scale)
        return values + (self.logit_bias,) if dict.__contains__(self, "logit_bias") else values

    def __iter__(self) -> Iterator[torch.Tensor | None]:  # type: ignore[override]
        """The values in tuple order (so unpacking works), NOT the keys as for a dict: use .keys() for those."""
        return iter(self.to_tuple())

    def __len__(self) -> int:
        """Length of the tuple view (3, or 4 with a logit_bias), matching iteration; len(out.keys()) counts keys."""
        return 4 if dict.__contains__(self, "logit_bias") else 3

    def __reversed__(self) -> Iterator[torch.Tensor | None]:  # type: ignore[override]
        return reversed(self.to_tuple())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if not dict.__contains__(self, key):
                if key in _FIELDS:
                    raise KeyError(
                        f"{key!r} was not computed: forward got no "
                        f"{'images' if key == 'image_features' else 'tokens' if key == 'text_features' else 'bias'}"
                        f" (use out.get({key!r}) or out.{key} for None instead)"
                    )
                raise KeyError(f"CLIPOutput has no field {key!r}; the fields are {list(_TUPLE_ORDER)}")
            return dict.__getitem__(self, key)
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        raise TypeError(
            f"CLIPOutput indices are field names (str), ints or slices, not {type(key).__name__}. Iterating a "
            "CLIPOutput yields its values in open_clip's tuple order, not its keys: use .keys() or .items()"
        )

    def __repr__(self) -> str:
        body = ", ".join(f"{key}={value!r}" for key, value in dict.items(self))
        return f"CLIPOutput({body})"

    def __reduce__(self):
        """Pickle/copy as the computed entries (dict's default would rebuild through iteration)."""
        return (CLIPOutput, (dict(dict.items(self)),))


def _flatten(out: CLIPOutput) -> tuple[list[torch.Tensor], tuple[str, ...]]:
    keys = tuple(dict.keys(out))
    return [dict.__getitem__(out, key) for key in keys], keys


def _unflatten(values: list[Any], keys: tuple[str, ...]) -> CLIPOutput:
    return CLIPOutput(dict(zip(keys, values)))


def _flatten_with_keys(out: CLIPOutput) -> tuple[list[tuple[pytree.MappingKey, torch.Tensor]], tuple[str, ...]]:
    values, keys = _flatten(out)
    return [(pytree.MappingKey(key), value) for key, value in zip(keys, values)], keys


pytree.register_pytree_node(
    CLIPOutput,
    _flatten,
    _unflatten,
    serialized_type_name="clipforge.models.output.CLIPOutput",
    flatten_with_keys_fn=_flatten_with_keys,
)
