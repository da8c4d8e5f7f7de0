"""Zero-shot classification evaluation: prompt-ensembled class weights, then top-k and per-class recall.

The protocol of Radford et al. 2021, section 3.1.4, and of open_clip's `zero_shot_eval`: every class
is embedded under every template with `clipforge.zeroshot.build_class_weights`, images are scored by
`logit_scale * cos(image, class)` exactly as `ZeroShotClassifier.logits` does, and the scores are
reduced by `eval.metrics`. Only each sample's true-class rank is kept, never the (N, C) logit matrix,
so ImageNet-size sets cost O(N) memory.

`encoding_context` is the one place that decides how evaluation runs a model (no_grad, eval mode
restored afterwards, optional autocast); `eval.retrieval` uses it too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from tqdm import tqdm

from ..models.clip import CLIP
from ..zeroshot import build_class_weights
from .metrics import accuracy_from_ranks, class_rank, recall_from_hits

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@contextlib.contextmanager
def encoding_context(
    model: torch.nn.Module, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Iterator[torch.device]:
    """Run `model` for evaluation: no_grad, eval mode, autocast to `dtype`; yields the device inputs go to.

    The trainer calls evaluation mid-run, so the model's train/eval mode is restored afterwards,
    even on error. The model is never moved: `device` defaults to where its parameters are, and
    a different one is refused rather than silently copying the model.
    """
    model_device = next(model.parameters()).device
    device = model_device if device is None else torch.device(device)
    if device.type != model_device.type or (device.index is not None and device != model_device):
        raise ValueError(f"the model is on {model_device}, not on the requested device {device}; move it first")
    # float32 "autocast" is a no-op on CPU and an error on some backends, so it means "no autocast".
    use_autocast = dtype is not None and dtype != torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=use_autocast):
            yield model_device
    finally:
        model.train(was_training)


def _tensor_batches(images: torch.Tensor, labels: torch.Tensor | Sequence[int], batch_size: int) -> Batches:
    labels = torch.as_tensor(labels)
    if images.dim() != 4:
        raise ValueError(f"images must be a preprocessed batch (N, 3, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


def zeroshot_evaluate(
    model: CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    images_or_loader: torch.Tensor | Batches,
    labels: torch.Tensor | Sequence[int] | None,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Zero-shot top-1, top-5 and mean per-class recall of `model` on a labelled image set.

    `images_or_loader` is either a preprocessed float tensor (N, 3, H, W) with `labels` (N,), or an
    iterable of (images (B, 3, H, W), labels (B,)) batches such as a DataLoader, with `labels=None`.
    `batch_size` bounds both the prompt batches and, for a tensor, the image batches. `dtype` (e.g.
    torch.bfloat16) turns on autocast; scores are reduced in float32 either way. Ties are resolved
    as in `eval.metrics` (the lower class index wins). Returns {"top1", "top5", "mean_per_class_recall"}.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(images_or_loader, torch.Tensor):
        if labels is None:
            raise ValueError("labels are required when images are given as a tensor")
        batches = _tensor_batches(images_or_loader, labels, batch_size)
        total = -(-images_or_loader.shape[0] // batch_size)
    else:
        if labels is not None:
            raise ValueError("labels must be None when images come from a loader of (images, labels) batches")
        batches, total = images_or_loader, None
    num_classes = len(classnames)

    ranks, all_labels = [], []
    with encoding_context(model, device, dtype) as dev:
        weights = build_class_weights(model, tokenizer, classnames, templates, batch_size)  # (D, C) float32
        scale = model.logit_scale.exp().float()
        for batch_images, batch_labels in tqdm(batches, total=total, desc="zero-shot", disable=not progress):
            features = model.encode_image(batch_images.to(dev), normalize=True).float()  # (B, D)
            logits = scale * features @ weights  # (B, C)
            batch_labels = torch.as_tensor(batch_labels, device=dev)
            ranks.append(class_rank(logits, batch_labels).cpu())  # (B,)
            all_labels.append(batch_labels.cpu())
    if not ranks:
        raise ValueError("zero-shot evaluation got no images")
    rank, label = torch.cat(ranks), torch.cat(all_labels)  # (N,), (N,)
    if rank.numel() == 0:
        raise ValueError("zero-shot evaluation got no images")
    out = accuracy_from_ranks(rank, (1, 5), num_classes)
    out["mean_per_class_recall"] = recall_from_hits(rank == 0, label, num_classes)
    return out
