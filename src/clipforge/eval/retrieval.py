"""Image-text retrieval evaluation: embed a captioned image set, then recall@k both ways.

The Flickr30k / MSCOCO protocol of Radford et al. 2021 (Karpathy splits, five captions per image):
each image is embedded once, each caption once, and `eval.metrics.retrieval_recall` scores them in
blocks so that large sets never build the full similarity matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from ..models.clip import CLIP
from .metrics import retrieval_recall
from .zeroshot import encoding_context


def retrieval_evaluate(
    model: CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    images: torch.Tensor,
    captions: Sequence[Sequence[str]],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k for image->text and text->image retrieval of `model` on a captioned image set.

    `images` is a preprocessed float tensor (N, 3, H, W); `captions[i]` lists image i's captions (any
    number; an image with none only serves as a distractor). `dtype` (e.g. torch.bfloat16) turns on
    autocast. Returns {"image_to_text_R@1", ..., "text_to_image_R@10"} as in `retrieval_recall`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if images.dim() != 4:
        raise ValueError(f"images must be a preprocessed batch (N, 3, H, W), got shape {tuple(images.shape)}")
    if len(captions) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but captions for {len(captions)}")
    if isinstance(captions, str) or any(isinstance(c, str) for c in captions):
        raise ValueError("captions must be a list of caption lists, one list per image")
    texts = [text for per_image in captions for text in per_image]
    text_to_image = torch.tensor([i for i, per_image in enumerate(captions) for _ in per_image], dtype=torch.long)

    with encoding_context(model, device, dtype) as dev:
        image_chunks = []
        for start in tqdm(range(0, images.shape[0], batch_size), desc="images", disable=not progress):
            batch = images[start : start + batch_size].to(dev)
            image_chunks.append(model.encode_image(batch, normalize=True).float())  # (B, D)
        text_chunks = []
        for start in tqdm(range(0, len(texts), batch_size), desc="captions", disable=not progress):
            tokens = tokenizer(texts[start : start + batch_size]).to(dev)
            text_chunks.append(model.encode_text(tokens, normalize=True).float())  # (T, D)
    if not image_chunks or not text_chunks:
        raise ValueError("retrieval evaluation needs at least one image and one caption")
    image_features, text_features = torch.cat(image_chunks), torch.cat(text_chunks)  # (N, D), (Nt, D)
    return retrieval_recall(image_features, text_features, text_to_image, ks=ks)
