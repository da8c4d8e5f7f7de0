"""Labelled image sets -> `LabelledFeatures`: the bridge from `eval` datasets (or a folder) to the adapt methods.

Images are encoded through `eval.features.encode_images`, so they share its feature cache (keyed by weights,
preprocessing, transform, precision and the files' contents). Augmented views (Tip-Adapter's 10 augmentation
epochs, GDA's views) use the model's train transform with a random stream seeded per (seed, view, image index):
the same image gets the same view in any batch order, with any number of DataLoader workers, so a view is cached
like any other encoding and a rerun with the same seed reproduces it exactly.
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
) -> EncodedLabelled:
    """`encode_labelled` plus the bookkeeping a report needs (kept indices, skipped images, fresh encodings)."""
    from ..eval.features import encode_images
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
    plain = encode_images(model, dataset, get_preprocess(model), **settings)
    fresh = int(not plain.cache_hit)
    kept = list(plain.indices)
    view_rows: list[dict[int, torch.Tensor]] = []
    for v in range(views):
        transform = SeededViewTransform(get_preprocess(model, train=True), seed, v)
        encoded = encode_images(model, _IndexedImages(dataset, f"view{v}:seed{seed}"), transform, **settings)
        fresh += int(not encoded.cache_hit)
        view_rows.append(dict(zip(encoded.indices, encoded.features)))
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
    data = LabelledFeatures(features.float(), labels, tuple(dataset.classnames), stacked)  # views (V, N, D)
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
) -> LabelledFeatures:
    """L2-normalised image features, labels and class names of a labelled `dataset` (any eval ClassificationSet
    or a view of one), with `views` augmented views per image as `.views` (V, N, D) when views > 0.

    Args:
        ctx: an `eval.tasks.EvalContext` supplying the feature cache, workers, device and precision (None: no
            cache, this process only).
        seed: seeds the augmented views (per seed, view and image: order- and worker-independent).
        batch_size, device, dtype: override ctx's (dtype: autocast, e.g. torch.bfloat16).
    Unreadable images are left out (their rows are absent); see `encode_labelled_set` for which.
    """
    return encode_labelled_set(
        model, dataset, views=views, seed=seed, ctx=ctx, batch_size=batch_size, device=device, dtype=dtype
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
) -> LabelledFeatures:
    """`encode_labelled` of a folder of class sub-folders (ROOT/CLASS/*.jpg, or ROOT/SPLIT/CLASS/*.jpg when that
    exists); class names are the sub-folder names read as words ("local_defect" -> "local defect")."""
    from ..eval.datasets.folder import load_folder

    dataset = load_folder(str(root), split)
    return encode_labelled(
        model, dataset, views=views, seed=seed, ctx=ctx, batch_size=batch_size, device=device, dtype=dtype
    )


__all__ = ["EncodedLabelled", "SeededViewTransform", "encode_labelled", "encode_labelled_set", "folder_features"]
