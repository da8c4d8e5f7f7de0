"""Image features of an evaluation set, computed once and cached on disk.

The cache key joins everything the features depend on: the model's weights hash, the model's
preprocessing config, the transform actually applied (its description), the autocast dtype and device
type (bf16 and fp32 features differ), the dataset's fingerprint (name, split, item names) and its content
signature (size and mtime_ns of every file, and the bytes where cheap; see items.py), so a rewritten image,
a changed checkpoint, preprocessing or precision gets new features, never stale ones. Images are decoded and
preprocessed in DataLoader worker processes; unreadable images are skipped and counted (their rows are
absent from the result, and the kept indices are returned so labels and captions stay aligned).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..image import ImageLoadError
from ..models.clip import CLIP
from ..weights.native import atomic_save_safetensors
from .items import content_signature
from .zeroshot import encoding_context


def _set_fields(config: Any) -> Any:
    """A config as plain data holding only the fields that differ from their defaults (recursively).

    Hashing this instead of the whole config keeps a model's identity stable when a later clipforge adds config
    fields with defaults: caches and search indexes made before an upgrade keep matching the same weights.
    """
    if not dataclasses.is_dataclass(config):
        return list(config) if isinstance(config, tuple) else config
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if dataclasses.is_dataclass(value):
            out[f.name] = _set_fields(value)
        elif default is dataclasses.MISSING or value != default:
            out[f.name] = _set_fields(value)
    return out


def weights_hash(model: CLIP) -> str:
    """A content hash of the model's config (its non-default fields) and every parameter/buffer (16 hex digits)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps(_set_fields(model.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _Preprocessed(Dataset):
    def __init__(self, dataset: Any, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.transform(self.dataset.load(index)), index, ""
        except (ImageLoadError, OSError) as exc:
            return torch.zeros(0), index, f"{type(exc).__name__}: {exc}"


def _collate(items):
    good = [(t, i) for t, i, err in items if not err]
    bad = [(i, err) for _, i, err in items if err]
    images = torch.stack([t for t, _ in good]) if good else torch.zeros(0)
    return images, [i for _, i in good], bad


@dataclass
class EncodedSet:
    """A dataset's encoded images: unit-norm features (N_kept, D), their dataset indices, the skipped ones."""
    features: torch.Tensor  # (N_kept, D) float32, L2-normalised
    indices: list[int]  # dataset index of each row
    skipped: dict[int, str]  # dataset index -> why it could not be read
    cache_hit: bool


def transform_signature(transform: Any) -> str | None:
    """A stable description of `transform` for the cache key, or None when it has none.

    `cache_signature()` when the transform defines it; else its class and repr when the repr describes it
    (clipforge's EvalTransform lists size, resize mode, filter, mean, std, ...); a repr that only gives an
    address ("<function f at 0x...>") describes nothing, so such a transform is not cached.
    """
    custom = getattr(transform, "cache_signature", None)
    if callable(custom):
        return str(custom())
    text = repr(transform)
    if " at 0x" in text:
        return None
    cfg = getattr(transform, "cfg", None)
    config = json.dumps(asdict(cfg), sort_keys=True, default=str) if is_dataclass(cfg) else ""
    return f"{type(transform).__module__}.{type(transform).__qualname__}:{text}:{config}"


def precision_name(dtype: torch.dtype | None) -> str:
    """The autocast dtype features are computed under ("float32" when none)."""
    return "float32" if dtype is None or dtype == torch.float32 else str(dtype).removeprefix("torch.")


def cache_key(
    model_hash: str,
    preprocess: Any,
    fingerprint: str,
    *,
    transform: str | None = None,
    precision: str = "float32",
    device_type: str = "cpu",
    content: str | None = None,
) -> str:
    """The feature-cache key: a hash of the weights, the preprocessing, the transform, precision and the data."""
    text = json.dumps(
        {
            "model": model_hash,
            "preprocess": asdict(preprocess),
            "transform": transform,
            "precision": precision,
            "device": device_type,
            "data": fingerprint,
            "content": content,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _cache_path(
    model: CLIP,
    dataset: Any,
    transform: Any,
    cache_dir: str | Path,
    model_hash: str | None,
    dtype: torch.dtype | None,
    device: torch.device,
    hash_contents: bool | None,
) -> Path | None:
    described = transform_signature(transform)
    if described is None:
        warnings.warn(
            f"features of {dataset.name} are not cached: the transform {transform!r} has no stable description "
            "(give it a cache_signature() method or an informative __repr__)",
            stacklevel=3,
        )
        return None
    key = cache_key(
        model_hash or weights_hash(model),
        model.config.preprocess,
        dataset.fingerprint,
        transform=described,
        precision=precision_name(dtype),
        device_type=device.type,
        content=content_signature(dataset, hash_contents),
    )
    return Path(cache_dir) / f"{key}.safetensors"


def encode_images(
    model: CLIP,
    dataset: Any,
    transform: Any,
    *,
    cache_dir: str | Path | None = None,
    model_hash: str | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    hash_contents: bool | None = None,
) -> EncodedSet:
    """L2-normalised image features of every readable item of `dataset` (cached when cache_dir is set).

    Args:
        dtype: autocast dtype (e.g. torch.bfloat16); None or float32: no autocast.
        hash_contents: whether the cache key hashes the image files' bytes, beyond their size and mtime_ns:
            True, False, or None (auto: when the files total at most items.AUTO_HASH_LIMIT_BYTES).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    path = None
    if cache_dir is not None:
        path = _cache_path(model, dataset, transform, cache_dir, model_hash, dtype, device, hash_contents)
        if path is not None and path.exists():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads(handle.metadata()["meta"])
                features = handle.get_tensor("features")
            skipped = {int(k): v for k, v in meta["skipped"].items()}
            return EncodedSet(features, meta["indices"], skipped, cache_hit=True)
    loader = DataLoader(
        _Preprocessed(dataset, transform), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    chunks, indices, skipped = [], [], {}
    with encoding_context(model, device, dtype) as dev:
        for images, idx, bad in tqdm(loader, desc=f"encode {dataset.name}", disable=not progress, unit="batch"):
            skipped.update(dict(bad))
            if len(idx):
                chunks.append(model.encode_image(images.to(dev), normalize=True).float().cpu())  # (B, D)
                indices.extend(idx)
    if not chunks:
        raise ValueError(f"{dataset.name}: no readable image among {len(dataset)} items")
    features = torch.cat(chunks)
    if path is not None:
        meta = {"indices": indices, "skipped": {str(k): v for k, v in skipped.items()}, "dataset": dataset.name}
        atomic_save_safetensors({"features": features}, path, metadata={"meta": json.dumps(meta)})
    return EncodedSet(features, indices, skipped, cache_hit=False)


def encode_texts(
    model: CLIP,
    tokenizer: Any,
    texts: list[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """L2-normalised text features (T, D), float32, under autocast to `dtype` (None: none)."""
    out = []
    with encoding_context(model, device, dtype) as dev:
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(texts[start : start + batch_size]).to(dev)
            out.append(model.encode_text(tokens, normalize=True).float().cpu())  # (B, D)
    return torch.cat(out)
