"""Image features of an evaluation set, computed once and cached on disk.

The cache key joins the model's weights hash, the preprocessing config and the dataset's fingerprint
(name, split, files), so re-running a report re-encodes nothing, and a changed checkpoint or
preprocessing gets new features. Images are decoded and preprocessed in DataLoader worker
processes; unreadable images are skipped and counted (their rows are absent from the result, and
the kept indices are returned so labels and captions stay aligned).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..image import ImageLoadError
from ..models.clip import CLIP
from ..weights.native import atomic_save_safetensors


def weights_hash(model: CLIP) -> str:
    """A content hash of the model's config and every parameter/buffer (16 hex digits)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
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


def cache_key(model_hash: str, preprocess: Any, fingerprint: str) -> str:
    """The feature-cache key: a hash of the weights, the preprocessing and the dataset files."""
    text = json.dumps({"model": model_hash, "preprocess": asdict(preprocess), "data": fingerprint}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


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
) -> EncodedSet:
    """L2-normalised image features of every readable item of `dataset` (cached when cache_dir is set)."""
    path = None
    if cache_dir is not None:
        key = cache_key(model_hash or weights_hash(model), model.config.preprocess, dataset.fingerprint)
        path = Path(cache_dir) / f"{key}.safetensors"
        if path.exists():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads(handle.metadata()["meta"])
                features = handle.get_tensor("features")
            skipped = {int(k): v for k, v in meta["skipped"].items()}
            return EncodedSet(features, meta["indices"], skipped, cache_hit=True)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(
        _Preprocessed(dataset, transform), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    chunks, indices, skipped = [], [], {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for images, idx, bad in tqdm(loader, desc=f"encode {dataset.name}", disable=not progress, unit="batch"):
                skipped.update(dict(bad))
                if len(idx):
                    chunks.append(model.encode_image(images.to(device), normalize=True).float().cpu())
                    indices.extend(idx)
    finally:
        model.train(was_training)
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
    """L2-normalised text features (T, D), float32."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for start in range(0, len(texts), batch_size):
                tokens = tokenizer(texts[start : start + batch_size]).to(device)
                out.append(model.encode_text(tokens, normalize=True).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)
