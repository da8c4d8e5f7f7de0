"""Labelled image sets -> `LabelledFeatures`: the bridge from `eval` datasets (or a folder) to the adapt methods.

Images are encoded through `eval.features.encode_images`, so they share its feature cache (keyed by weights,
preprocessing, transform, precision and the files' contents). Augmented views (Tip-Adapter's 10 augmentation
epochs, GDA's views) use the model's train transform with a random stream seeded per (seed, view, image index):
the same image gets the same view in any batch order, with any number of DataLoader workers, so a view is cached
like any other encoding and a rerun with the same seed reproduces it exactly.

With `pre_features=True` the same pass also keeps the pre-projection features (`encode_image(x, project=False)`,
what ProLIP trains on): the tower runs once, its output is kept AND projected with `model.project_image` (then
normalised) for the usual features. Both are cached as one entry whose key differs from the projected-only one
(the transform's cache signature is tagged), so neither kind of entry can be read as the other.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..eval.splits import RowsView
from .base import LabelledFeatures


class _IndexedImages(RowsView):
    """Every row of a ClassificationSet, but `load(i)` gives (image, i): the seeded view transform needs the index
    to derive its random stream. Same rows, labels and files as the dataset, so cache keys see the same content."""

    def __init__(self, dataset: Any, tag: str) -> None:
        super().__init__(dataset, list(range(len(dataset))), f"{dataset.fingerprint}:{tag}")

    def load(self, index: int):
        return super().load(index), index


class SeededViewTransform:
    """Train-transform augmentation of (image, index) with a generator seeded from (seed, view, index)."""

    def __init__(self, train_transform: Any, seed: int, view: int) -> None:
        self.train_transform, self.seed, self.view = train_transform, int(seed), int(view)

    def _generator(self, index: int) -> torch.Generator:
        digest = hashlib.blake2b(f"{self.seed}:{self.view}:{index}".encode(), digest_size=7).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little"))

    def __call__(self, item: tuple[Any, int]) -> torch.Tensor:
        image, index = item
        self.train_transform.generator = self._generator(index)  # each worker holds its own copy of the transform
        return self.train_transform(image)  # (3, S, S)

    def cache_signature(self) -> str:
        """What the feature-cache key records of this transform: the seed, the view and the augmentation."""
        cfg = getattr(self.train_transform, "cfg", None)
        config = asdict(cfg) if cfg is not None and hasattr(cfg, "__dataclass_fields__") else None
        return f"seeded-view:seed={self.seed}:view={self.view}:{self.train_transform!r}:{config}"


class _ProjectedAndPre(torch.nn.Module):
    """The model as `encode_images` sees it when pre-projection features are wanted: `encode_image` runs the
    tower once (project=False) and returns [normalize(project_image(pre)) | pre], (B, D + P), which
    `_split_pre` cuts apart again. Holding the model as a submodule keeps `parameters()`, `eval()` and
    `train()` (what encode_images and its encoding context use) those of the real model."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.config = model.config  # the feature-cache key reads the preprocessing config from here

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        # `normalize` is always honoured for the projected part; pre-projection features are kept raw.
        pre = self.model.encode_image(images, project=False)  # (B, P)
        projected = self.model.project_image(pre)  # (B, D)
        if normalize:
            projected = torch.nn.functional.normalize(projected.float(), dim=-1)
        return torch.cat([projected.float(), pre.float()], dim=-1)  # (B, D + P)


class _PreTagged:
    """A transform applied exactly like `transform`, whose cache signature says the entry holds pre-projection
    features too, so its cache key never equals the projected-only entry of the same images."""

    def __init__(self, transform: Any, signature: str) -> None:
        self.transform, self.signature = transform, signature

    def __call__(self, item: Any) -> torch.Tensor:
        return self.transform(item)

    def cache_signature(self) -> str:
        return f"{self.signature}|outputs=projected+pre_projection"


def _embed_dim(model: Any) -> int:
    """D, the width of projected image features (the output width of the model's last image map)."""
    proj = model.image_projection
    return int(proj.out_features if isinstance(proj, torch.nn.Linear) else proj.shape[1])


def _encode(
    model: Any, dataset: Any, transform: Any, pre_features: bool, settings: dict[str, Any]
) -> tuple[Any, torch.Tensor | None]:
    """encode_images of `dataset`; with pre_features the (N_kept, P) pre-projection rows as well (same pass)."""
    from ..eval.features import EncodedSet, encode_images, transform_signature

    if not pre_features:
        return encode_images(model, dataset, transform, **settings), None
    settings = dict(settings)
    signature = transform_signature(transform)
    if signature is None:
        settings["cache_dir"] = None  # nothing describes the transform: encode without caching
    else:
        transform = _PreTagged(transform, signature)
    if settings.get("cache_dir") is not None and settings.get("model_hash") is None:
        from ..eval.features import weights_hash

        settings["model_hash"] = weights_hash(model)  # the real model's hash, not the wrapper's
    encoded = encode_images(_ProjectedAndPre(model), dataset, transform, **settings)
    d = _embed_dim(model)
    both = encoded.features  # (N_kept, D + P)
    return EncodedSet(both[:, :d], encoded.indices, encoded.skipped, encoded.cache_hit), both[:, d:]


@dataclass(frozen=True)
class EncodedLabelled:
    """`encode_labelled_set`'s result: the features, the dataset index of each row, the images skipped (index ->
    why) and how many image sets were encoded anew (0 when all came from the cache)."""

    features: LabelledFeatures
    indices: list[int]
    skipped: dict[int, str]
    encoded_again: int


def _settings(ctx: Any, batch_size: int | None, device: Any, dtype: torch.dtype | None) -> dict[str, Any]:
    """encode_images keywords from an optional eval.tasks.EvalContext; explicit arguments win over it."""
    settings: dict[str, Any] = {"batch_size": 256, "num_workers": 0, "progress": False}
    if ctx is not None:
        settings.update(
            cache_dir=ctx.cache_dir,
            batch_size=ctx.batch_size,
            num_workers=ctx.num_workers,
            device=ctx.device,
            dtype=ctx.dtype,
            progress=ctx.progress,
            hash_contents=ctx.hash_contents,
        )
    if batch_size is not None:
        settings["batch_size"] = batch_size
    if device is not None:
        settings["device"] = device
    if dtype is not None:
        settings["dtype"] = dtype
    return settings


def encode_labelled_set(
    model: Any,
    dataset: Any,
    *,
    views: int = 0,
    seed: int = 0,
    ctx: Any = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    pre_features: bool = False,
) -> EncodedLabelled:
    """`encode_labelled` plus the bookkeeping a report needs (kept indices, skipped images, fresh encodings)."""
    from ..factory import get_preprocess

    if not hasattr(dataset, "labels") or not hasattr(dataset, "classnames"):
        raise ValueError(
            f"{getattr(dataset, 'name', dataset)!r}: adaptation needs a labelled classification set (labels and "
            "class names); a captioned retrieval set cannot be used"
        )
    if views < 0:
        raise ValueError(f"views must be >= 0 (augmented views per image), got {views}")
    settings = _settings(ctx, batch_size, device, dtype)
    if ctx is not None:
        settings["model_hash"] = ctx.model_hash(model)
    plain, plain_pre = _encode(model, dataset, get_preprocess(model), pre_features, settings)
    fresh = int(not plain.cache_hit)
    kept = list(plain.indices)
    view_rows: list[dict[int, torch.Tensor]] = []
    view_pre_rows: list[dict[int, torch.Tensor]] = []
    for v in range(views):
        transform = SeededViewTransform(get_preprocess(model, train=True), seed, v)
        viewed = _IndexedImages(dataset, f"view{v}:seed{seed}")
        encoded, encoded_pre = _encode(model, viewed, transform, pre_features, settings)
        fresh += int(not encoded.cache_hit)
        view_rows.append(dict(zip(encoded.indices, encoded.features)))
        if encoded_pre is not None:
            view_pre_rows.append(dict(zip(encoded.indices, encoded_pre)))
    skipped = dict(plain.skipped)
    if view_rows:
        # An image unreadable in any view is dropped from all, so views[v, i] and features[i] stay one image.
        dropped = [i for i in kept if any(i not in rows for rows in view_rows)]
        skipped.update({i: "could not be read for every augmented view" for i in dropped})
        kept = [i for i in kept if i not in skipped]
    position = {index: row for row, index in enumerate(plain.indices)}
    features = plain.features[[position[i] for i in kept]]  # (N, D)
    stacked = torch.stack([torch.stack([rows[i] for i in kept]) for rows in view_rows]) if view_rows else None
    labels = torch.tensor([dataset.labels[i] for i in kept], dtype=torch.long)
    pre = None
    if view_pre_rows:  # ProLIP trains on the views' pre-projection features, aligned with .views: (V, N, P)
        pre = torch.stack([torch.stack([rows[i] for i in kept]) for rows in view_pre_rows]).float()
    elif plain_pre is not None:
        pre = plain_pre[[position[i] for i in kept]].float()  # (N, P)
    data = LabelledFeatures(features.float(), labels, tuple(dataset.classnames), stacked, pre)  # views (V, N, D)
    return EncodedLabelled(data, kept, skipped, fresh)


def encode_labelled(
    model: Any,
    dataset: Any,
    *,
    views: int = 0,
    seed: int = 0,
    ctx: Any = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    pre_features: bool = False,
) -> LabelledFeatures:
    """L2-normalised image features, labels and class names of a labelled `dataset` (any eval ClassificationSet
    or a view of one), with `views` augmented views per image as `.views` (V, N, D) when views > 0.

    pre_features: also keep the pre-projection features (`encode_image(x, project=False)`, for ProLIP) as
    `.pre_features`: (N, P), or (V, N, P) of the augmented views when views > 0 (aligned with `.views`). The
    tower runs once per image; the projected features are `normalize(project_image(pre))` of the same pass.

    Args:
        ctx: an `eval.tasks.EvalContext` supplying the feature cache, workers, device and precision (None: no
            cache, this process only).
        seed: seeds the augmented views (per seed, view and image: order- and worker-independent).
        batch_size, device, dtype: override ctx's (dtype: autocast, e.g. torch.bfloat16).
    Unreadable images are left out (their rows are absent); see `encode_labelled_set` for which.
    """
    return encode_labelled_set(
        model,
        dataset,
        views=views,
        seed=seed,
        ctx=ctx,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        pre_features=pre_features,
    ).features


def folder_features(
    model: Any,
    root: str | Path,
    *,
    split: str = "train",
    views: int = 0,
    seed: int = 0,
    ctx: Any = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    pre_features: bool = False,
) -> LabelledFeatures:
    """`encode_labelled` of a folder of class sub-folders (ROOT/CLASS/*.jpg, or ROOT/SPLIT/CLASS/*.jpg when that
    exists); class names are the sub-folder names read as words ("local_defect" -> "local defect")."""
    from ..eval.datasets.folder import load_folder

    dataset = load_folder(str(root), split)
    return encode_labelled(
        model,
        dataset,
        views=views,
        seed=seed,
        ctx=ctx,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        pre_features=pre_features,
    )


__all__ = ["EncodedLabelled", "SeededViewTransform", "encode_labelled", "encode_labelled_set", "folder_features"]
