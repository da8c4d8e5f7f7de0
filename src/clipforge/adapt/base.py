"""The adapt/ core: labelled feature sets, the Adapter module every method returns, and the method registry.

Every few-shot method (training-free or trained on cached features) is a *fit function* registered under a name:
`fit_fn(ctx, train, val, **hparams) -> Adapter`. It sees only the support set (`train`), an optional validation
set (`val`, the only data a hyper-parameter search may look at) and a `FitContext` (zero-shot text weights, logit
scale, the model); there is no argument through which test data could reach it. Its hyper-parameters are
keyword-only arguments whose defaults are the papers' values, so a run is reproduced from the saved JSON alone.

An Adapter holds its state as buffers/parameters (saved as safetensors) and its hyper-parameters as a JSON-able
dict (saved as JSON): no pickle, so loading an adapter from an untrusted folder cannot run code.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from ..atomic import atomic_write_bytes
from ..jsonio import json_text
from ..safeio import read_regular_file, read_text_file
from ..weights.native import atomic_save_safetensors

STATE_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter.json"
FORMAT_NAME = "clipforge-adapter"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LabelledFeatures:
    """Cached image features of a labelled set: features (N, D) float32, L2-normalised; labels (N,) int64 in
    [0, C); classnames (C,). `views` (V, N, D) optional: augmented views of the same images (Tip-Adapter/GDA).
    `pre_features` optional: the same images' *pre-projection* features, `model.encode_image(x, project=False)`,
    (N, P) or (V, N, P) with V augmented views; ProLIP fine-tunes the last projection on them (see
    `clipforge.adapt.weight_space.labelled_features`, which computes both).

    Validated on construction so that a wrong shape or label fails here, naming the field, instead of as an index
    error deep inside a method."""

    features: torch.Tensor
    labels: torch.Tensor
    classnames: tuple[str, ...]
    views: torch.Tensor | None = None
    pre_features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.classnames, tuple):
            object.__setattr__(self, "classnames", tuple(self.classnames))
        if not self.classnames:
            raise ValueError("LabelledFeatures.classnames is empty: give the name of every class")
        if self.features.ndim != 2:
            raise ValueError(f"LabelledFeatures.features must be (N, D), got shape {tuple(self.features.shape)}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.features.shape[0]:
            raise ValueError(
                f"LabelledFeatures.labels must be (N,) with N = {self.features.shape[0]} (one per feature row), "
                f"got shape {tuple(self.labels.shape)}"
            )
        if self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
            raise ValueError(f"LabelledFeatures.labels must be integer class indices, got {self.labels.dtype}")
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classnames)):
            raise ValueError(
                f"LabelledFeatures.labels must lie in [0, {len(self.classnames)}) (one per class name), got "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]"
            )
        if self.views is not None and (self.views.ndim != 3 or self.views.shape[1:] != self.features.shape):
            raise ValueError(
                f"LabelledFeatures.views must be (V, N, D) = (V, {self.features.shape[0]}, {self.features.shape[1]}) "
                f"(V augmented views of the same images), got shape {tuple(self.views.shape)}"
            )
        pre = self.pre_features
        if pre is not None and not (
            (pre.ndim == 2 and pre.shape[0] == self.features.shape[0])
            or (pre.ndim == 3 and pre.shape[1] == self.features.shape[0])
        ):
            raise ValueError(
                f"LabelledFeatures.pre_features must be (N, P) or (V, N, P) with N = {self.features.shape[0]} "
                f"(pre-projection features of the same images, encode_image(x, project=False)), got shape "
                f"{tuple(pre.shape)}"
            )
        if pre is not None and not pre.dtype.is_floating_point:
            raise ValueError(f"LabelledFeatures.pre_features must be floating point, got {pre.dtype}")

    @property
    def num_classes(self) -> int:
        """C, the number of class names (labels are in [0, C))."""
        return len(self.classnames)

    @property
    def dim(self) -> int:
        """D, the feature width."""
        return self.features.shape[1]

    def __len__(self) -> int:
        return self.features.shape[0]

    def mean_views(self) -> torch.Tensor:
        """(N, D) L2-normalised mean of the augmented views (Tip-Adapter's cache keys averaged over its 10
        augmentation epochs); the plain features when there are no views."""
        if self.views is None:
            return self.features.float()
        return torch.nn.functional.normalize(self.views.float().mean(dim=0), dim=-1)


@dataclass(frozen=True)
class FitContext:
    """What a method may need besides the support set: text_weights (D, C) zero-shot classifier of the class names
    (L2-normalised columns, CLIP-paper prompt ensemble), logit_scale (float, usually 100), the model (for methods
    that need the towers; None when fitting from features only), device, dtype, and prompt_means (D, C) optional:
    the unnormalised mean prompt embedding of each class (`adapt.prompts.text_anchors`), CLAP's constraint anchor
    (it falls back to text_weights without them)."""

    text_weights: torch.Tensor
    logit_scale: float = 100.0
    model: Any = None
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    prompt_means: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.text_weights.ndim != 2:
            raise ValueError(
                f"FitContext.text_weights must be (D, C) (one column per class), got {tuple(self.text_weights.shape)}"
            )
        if not math.isfinite(self.logit_scale) or self.logit_scale <= 0:
            raise ValueError(f"FitContext.logit_scale must be a positive finite number, got {self.logit_scale}")
        if self.prompt_means is not None and self.prompt_means.shape != self.text_weights.shape:
            raise ValueError(
                f"FitContext.prompt_means must be (D, C) like text_weights {tuple(self.text_weights.shape)}, got "
                f"{tuple(self.prompt_means.shape)}"
            )


_ADAPTER_CLASSES: dict[str, type[Adapter]] = {}


class Adapter(torch.nn.Module):
    """A fitted few-shot classifier over CLIP image features. Subclasses hold their state as buffers/parameters
    (saved with safetensors) and their hyper-parameters in `self.hparams` (a JSON-able dict).

    Subclasses set `method` (their registry name); defining the class registers it so `load` can rebuild it from
    the name in adapter.json (never from a class path: a saved folder cannot name arbitrary code to import)."""

    method: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("method")
        if name is not None:
            if name in _ADAPTER_CLASSES and _ADAPTER_CLASSES[name].__qualname__ != cls.__qualname__:
                raise ValueError(f"two Adapter classes claim method {name!r}: {_ADAPTER_CLASSES[name]} and {cls}")
            _ADAPTER_CLASSES[name] = cls

    # What `logits` feeds the adapter when given images: "projected" (L2-normalised encode_image) or
    # "pre_projection" (encode_image(x, project=False), ProLIP). See clipforge.adapt.inputs.
    input_kind: ClassVar[str] = "projected"

    def __init__(self, classnames: Sequence[str], hparams: dict) -> None:
        super().__init__()
        self.classnames = tuple(classnames)
        self.hparams = dict(hparams)
        self._bound: tuple[Any, ...] = ()  # (model,) once bound; a tuple, so the model is no child module

    @property
    def num_classes(self) -> int:
        """C, the number of classes the adapter scores."""
        return len(self.classnames)

    def bind(self, model: Any) -> Adapter:
        """Attach the CLIP model whose image tower encodes images given to `logits` / `predict` (the model the
        adapter was fitted with); returns self. `fit` binds the model it was given; an adapter from `load` is
        unbound (the model is not part of the saved state), so bind it before scoring images."""
        if not callable(getattr(model, "encode_image", None)):
            raise TypeError(f"{type(self).__name__}.bind needs a CLIP model (with encode_image), got {type(model)}")
        self._bound = (model,)
        return self

    @property
    def model(self) -> Any:
        """The bound CLIP model, or None."""
        return self._bound[0] if self._bound else None

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) L2-normalised image features (ProLIP: (N, P) pre-projection) -> (N, C) class logits."""
        raise NotImplementedError(f"{type(self).__name__} does not define feature_logits()")

    def features_of(self, inputs: Any) -> torch.Tensor:
        """The features `feature_logits` takes for `inputs`: 2-D float features unchanged; images (a (N, 3, H, W)
        batch, PIL images or paths) encoded with the bound model as the feature cache does it."""
        from .inputs import encode_inputs, is_features

        if is_features(inputs):
            return inputs
        if self.model is None:
            raise ValueError(
                f"{type(self).__name__} was given images but is bound to no model: call adapter.bind(model) with the "
                "CLIP model it was fitted with (clipforge.adapt.load does not bind), or pass cached image features"
            )
        return encode_inputs(self.model, inputs, self.input_kind, owner=type(self).__name__)

    def logits(self, inputs: Any) -> torch.Tensor:
        """Image features (N, D) -> (N, C) class logits; images (a preprocessed (N, 3, H, W) batch, a PIL image or
        path, or a list of them) are first encoded with the bound model (`bind`)."""
        return self.feature_logits(self.features_of(inputs))

    def forward(self, inputs: Any) -> torch.Tensor:
        """`adapter(x)` is `adapter.logits(x)`, so an adapter composes like any nn.Module."""
        return self.logits(inputs)

    @torch.no_grad()
    def predict(self, inputs: Any) -> torch.Tensor:
        """(N,) index of the highest logit for each feature row or image."""
        return self.logits(inputs).argmax(dim=-1)

    def check_features(self, features: torch.Tensor, dim: int) -> torch.Tensor:
        """`features` as float32 (N, D) on this adapter's device; a ValueError naming the expected shape."""
        if features.ndim != 2 or features.shape[1] != dim:
            raise ValueError(
                f"{type(self).__name__}.logits expects image features (N, {dim}), got shape {tuple(features.shape)}: "
                "encode the images with the model the adapter was fitted on"
            )
        return features.float()

    def save(self, folder: str | Path) -> Path:
        """Write adapter.safetensors (state_dict) + adapter.json (method, hparams, classnames) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "method": self.method,
            "classnames": list(self.classnames),
            "hparams": self.hparams,
        }
        text = json_text(config, indent=2)  # fails here (not at load time) when hparams are not JSON-able
        atomic_save_safetensors(dict(self.state_dict()), folder / STATE_NAME, metadata={"method": self.method})
        atomic_write_bytes(folder / CONFIG_NAME, (text + "\n").encode())
        return folder

    @classmethod
    def from_saved(cls, classnames: Sequence[str], hparams: dict, state: dict[str, torch.Tensor]) -> Adapter:
        """Rebuild without fitting. Default: when `__init__` takes every state tensor as a keyword (the
        training-free adapters), `cls(classnames, hparams, **state)`; otherwise `cls(classnames, hparams)` followed
        by a strict `load_state_dict(state)` (adapters that build their layers from `hparams`). Override for
        anything else."""
        params = inspect.signature(cls.__init__).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values()) or set(state) <= set(params)
        if takes_all and state:
            return cls(classnames, hparams, **state)
        adapter = cls(classnames, hparams)
        adapter.load_state_dict(state, strict=True)
        return adapter


def load_adapter(folder: str | Path) -> Adapter:
    """Rebuild a saved adapter from `folder` (adapter.json + adapter.safetensors); errors name the file."""
    folder = Path(folder)
    config_path, state_path = folder / CONFIG_NAME, folder / STATE_NAME
    try:
        config = json.loads(read_text_file(config_path, what="adapter config"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{config_path}: no adapter config here; give the folder written by Adapter.save"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: not valid JSON ({exc}); re-save the adapter") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise ValueError(f"{config_path}: not a clipforge adapter config (expected 'format': '{FORMAT_NAME}')")
    if config.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: adapter format version {config.get('version')!r}, this clipforge reads version "
            f"{FORMAT_VERSION}; upgrade clipforge or re-fit the adapter"
        )
    method, classnames, hparams = config.get("method"), config.get("classnames"), config.get("hparams")
    if method not in _ADAPTER_CLASSES:
        known = ", ".join(sorted(_ADAPTER_CLASSES))
        raise ValueError(f"{config_path}: unknown adapter method {method!r}; known: {known}")
    if not isinstance(classnames, list) or not all(isinstance(c, str) for c in classnames) or not classnames:
        raise ValueError(f"{config_path}: 'classnames' must be a non-empty list of strings")
    if not isinstance(hparams, dict):
        raise ValueError(f"{config_path}: 'hparams' must be an object")
    try:
        state = load_safetensors(read_regular_file(state_path, max_bytes=None, what="adapter weights"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{state_path}: the adapter's weights are missing; re-save the adapter") from exc
    except SafetensorError as exc:
        raise ValueError(f"{state_path}: not a readable safetensors file ({exc}); re-save the adapter") from exc
    try:
        return _ADAPTER_CLASSES[method].from_saved(classnames, hparams, state)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{folder}: the saved state does not rebuild a {method!r} adapter ({exc})") from exc


FitFunction = Callable[..., Adapter]
_METHODS: dict[str, FitFunction] = {}


def register(name: str) -> Callable[[FitFunction], FitFunction]:
    """Decorator on a fit function `fit_fn(ctx: FitContext, train: LabelledFeatures, val: LabelledFeatures | None,
    **hparams) -> Adapter`; its keyword-only parameters are the method's hyper-parameters (with the papers'
    defaults), which is what `fit` checks user keywords against."""

    def decorate(fn: FitFunction) -> FitFunction:
        if name in _METHODS and _METHODS[name] is not fn:
            raise ValueError(f"adapt method {name!r} is registered twice ({_METHODS[name]} and {fn})")
        params = list(inspect.signature(fn).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) != 3:
            raise TypeError(f"fit function for {name!r} must take (ctx, train, val, *, hparams...), got {params}")
        _METHODS[name] = fn
        return fn

    return decorate


def registry() -> dict[str, FitFunction]:
    """A copy of the method name -> fit function table."""
    return dict(_METHODS)


def hparam_defaults(name: str) -> dict[str, Any]:
    """The hyper-parameters of method `name` and their defaults (the papers' values)."""
    fn = get_method(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    }


def get_method(name: str) -> FitFunction:
    """The fit function of method `name`; ValueError listing the registered ones when unknown."""
    if name not in _METHODS:
        raise ValueError(f"unknown adapt method {name!r}; choose one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def check_hparams(name: str, hparams: dict[str, Any]) -> None:
    """ValueError naming the unknown keywords and listing the valid ones (with defaults) for method `name`."""
    valid = hparam_defaults(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise ValueError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for adapt method {name!r}; valid: {listing}"
        )
