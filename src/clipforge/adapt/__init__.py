"""Few-shot adaptation of a frozen CLIP: every method behind `fit(method, model_or_ctx, train, val, **hparams)`.

`train` / `val` are `LabelledFeatures` (cached, L2-normalised image features + labels). Hyper-parameters are
explicit keywords with the papers' defaults; a method with a search grid chooses on `val` only (never on test
data: fit has no way to receive it) and records the chosen values in `adapter.hparams`. Adapters save as
safetensors + JSON (`adapter.save(dir)`, `load(dir)`), no pickle. An adapter scores features or, once bound
to its model (`fit` binds it; after `load` call `adapter.bind(model)`), images: `adapter.predict(["a.png", ...])`.
`wise_ft(zero_shot, fine_tuned, alpha)` interpolates two whole models in weight space (WiSE-FT).
"""

from __future__ import annotations

from typing import Any

import torch

from . import (
    ape,  # noqa: F401  (registers APE)
    feature_trained,  # noqa: F401  (registers the feature-trained methods)
    prompt_learned,  # noqa: F401  (registers CoOp)
    training_free,  # noqa: F401  (registers the training-free methods)
    weight_space,  # noqa: F401  (registers ProLIP)
)
from .base import (
    Adapter,
    FitContext,
    LabelledFeatures,
    check_hparams,
    get_method,
    hparam_defaults,
    load_adapter,
    register,
    registry,
)
from .wise_ft import wise_ft, wise_ft_sweep


def list_methods() -> list[str]:
    """Names of every registered adaptation method, sorted."""
    return sorted(registry())


def context_for(model: Any, classnames: tuple[str, ...] | list[str], templates: str = "simple") -> FitContext:
    """A FitContext from a CLIP model: zero-shot text weights of `classnames` under the `templates` set (the
    "simple" CLIP-paper ensemble by default), the unnormalised prompt means CLAP anchors to (same pass, see
    `adapt.prompts`) and the model's own logit scale."""
    from ..zeroshot import get_templates
    from .prompts import text_anchors

    weights, means = text_anchors(model, list(classnames), get_templates(templates))  # (D, C) each
    device = next(model.parameters()).device
    return FitContext(
        text_weights=weights.float(),
        logit_scale=float(model.logit_scale.detach().exp()),
        model=model,
        device=device,
        prompt_means=means.float(),
    )


def fit(
    method: str,
    model_or_ctx: Any,
    train: LabelledFeatures,
    val: LabelledFeatures | None = None,
    **hparams: Any,
) -> Adapter:
    """Fit adaptation `method` on the support set `train` (hyper-parameters searched on `val` where the method
    defines a grid). `model_or_ctx` is a CLIP model (text weights built from train.classnames) or a FitContext.
    The adapter comes back bound to the context's model (when it has one), so `adapter.predict(images)` works at
    once; an adapter from `load` needs `adapter.bind(model)` first."""
    fn = get_method(method)
    check_hparams(method, hparams)
    if not isinstance(train, LabelledFeatures):
        raise TypeError(f"fit: train must be LabelledFeatures (cached features + labels), got {type(train).__name__}")
    if val is not None:
        if not isinstance(val, LabelledFeatures):
            raise TypeError(f"fit: val must be LabelledFeatures or None, got {type(val).__name__}")
        if val.classnames != train.classnames or val.dim != train.dim:
            raise ValueError(
                "fit: val must have the same classnames and feature dimension as train "
                f"({train.num_classes} classes, D={train.dim}); got {val.num_classes} classes, D={val.dim}"
            )
    ctx = model_or_ctx if isinstance(model_or_ctx, FitContext) else context_for(model_or_ctx, train.classnames)
    if ctx.text_weights.shape != (train.dim, train.num_classes):
        raise ValueError(
            f"fit: the context's text_weights are {tuple(ctx.text_weights.shape)}, expected (D, C) = "
            f"({train.dim}, {train.num_classes}) for this training set"
        )
    with torch.no_grad() if getattr(fn, "training_free", False) else torch.enable_grad():
        adapter = fn(ctx, train, val, **hparams)
    if ctx.model is not None and adapter.model is None:
        adapter.bind(ctx.model)  # a freshly fitted adapter scores images at once: adapter.predict(["a.png"])
    return adapter


def load(folder) -> Adapter:
    """Rebuild an adapter written by `Adapter.save(folder)` (no fitting, no pickle)."""
    return load_adapter(folder)


__all__ = [
    "Adapter",
    "FitContext",
    "LabelledFeatures",
    "context_for",
    "fit",
    "hparam_defaults",
    "list_methods",
    "load",
    "register",
    "registry",
    "wise_ft",
    "wise_ft_sweep",
]
