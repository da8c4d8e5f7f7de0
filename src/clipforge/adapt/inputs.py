"""Images into an adapter: what `Adapter.logits(images_or_features)` does with anything that is not features.

An adapter scores cached image features, so images are encoded here exactly as `adapt.data.encode_labelled`
caches them: the model's own eval preprocessing (`get_preprocess(model)`), the model in eval mode without
gradients (`eval.zeroshot.encoding_context`), and either the L2-normalised projected features
(`encode_image(x, normalize=True)`, what every adapter but ProLIP takes) or the raw pre-projection features
(`encode_image(x, project=False)`, ProLIP's input). Same recipe, so logits(images) equals logits(features of those
images) up to float rounding, and an adapter fitted on cached features can be pointed at new image files.

Accepted inputs: a preprocessed float batch (N, 3, H, W), one PIL image or image path, or a list of them (files are
opened with the size-capped `image.load_image`). A 2-D float tensor is taken as features and returned unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

ImageLike = Image.Image | str | Path
AdapterInput = torch.Tensor | ImageLike | Sequence[ImageLike]

PROJECTED = "projected"  # L2-normalised encode_image(x): (N, D)
PRE_PROJECTION = "pre_projection"  # encode_image(x, project=False): (N, P)
INPUT_KINDS = (PROJECTED, PRE_PROJECTION)
BATCH_SIZE = 64  # images preprocessed and encoded at once: bounds memory for a long list of files


def is_features(inputs: Any) -> bool:
    """True for a 2-D floating-point tensor: rows of cached features, passed to the adapter as they are."""
    return isinstance(inputs, torch.Tensor) and inputs.ndim == 2 and inputs.dtype.is_floating_point


def _image_list(inputs: Any, owner: str) -> list[ImageLike]:
    """`inputs` as a list of PIL images / paths; a TypeError naming what was given otherwise."""
    if isinstance(inputs, ImageLike):
        return [inputs]
    if isinstance(inputs, Sequence) and not isinstance(inputs, bytes):
        items = list(inputs)
        bad = [type(item).__name__ for item in items if not isinstance(item, ImageLike)]
        if not bad and items:
            return items
        if not items:
            raise ValueError(f"{owner}.logits got an empty list of images")
        raise TypeError(f"{owner}.logits takes PIL images or image paths in a list; got {sorted(set(bad))}")
    raise TypeError(
        f"{owner}.logits takes image features (N, D), a preprocessed image batch (N, 3, H, W), a PIL image, an image "
        f"path or a list of them; got {type(inputs).__name__}"
    )


def _encode_pixels(model: Any, pixels: torch.Tensor, kind: str) -> torch.Tensor:
    """One preprocessed batch (B, 3, H, W) -> (B, D) normalised projected or (B, P) pre-projection features."""
    from ..eval.zeroshot import encoding_context

    with encoding_context(model) as device:
        pixels = pixels.to(device)
        if kind == PRE_PROJECTION:
            return model.encode_image(pixels, project=False).float()  # (B, P), raw as ProLIP caches them
        return F.normalize(model.encode_image(pixels, normalize=True).float(), dim=-1)  # (B, D)


def encode_inputs(model: Any, inputs: Any, kind: str, owner: str = "Adapter", batch_size: int = BATCH_SIZE):
    """Images (see the module docstring) -> features (N, D or P) float32 for an adapter taking `kind` inputs."""
    if kind not in INPUT_KINDS:
        raise ValueError(f"input kind must be one of {INPUT_KINDS}, got {kind!r}")
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim != 4 or inputs.shape[1] != 3 or not inputs.dtype.is_floating_point:
            raise ValueError(
                f"{owner}.logits takes image features (N, D) or a preprocessed float image batch (N, 3, H, W); got a "
                f"{inputs.dtype} tensor of shape {tuple(inputs.shape)}"
            )
        parts = [_encode_pixels(model, chunk, kind) for chunk in inputs.split(batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, 0)
    from ..factory import get_preprocess
    from ..image import preprocess_batch

    images = _image_list(inputs, owner)
    transform = get_preprocess(model)  # the eval transform the feature cache uses
    parts = []
    for start in range(0, len(images), batch_size):
        pixels = preprocess_batch(images[start : start + batch_size], transform)  # (B, 3, S, S)
        parts.append(_encode_pixels(model, pixels, kind))
    return torch.cat(parts)


__all__ = ["INPUT_KINDS", "PRE_PROJECTION", "PROJECTED", "AdapterInput", "encode_inputs", "is_features"]
