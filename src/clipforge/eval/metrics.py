"""Classification and retrieval metrics as pure functions of tensors.

Everything here takes scores already computed (logits, embeddings) and returns plain Python numbers,
so the same code scores the trainer's periodic evaluation and the full harness, and can be tested on
hand-built embeddings whose answer is known (the big_vision evaluator practice).

Tie rule, shared by every function in this file: candidates are ranked by score, descending, with
equal scores ordered by index, lowest first; this is a stable descending sort and agrees with
`argmax`, which returns the first maximum. A target is "in the top k" when its position in that
order is below k. So a tie with the true class counts as a hit only if the true class comes first
among the tied ones within the first k places; an accidental tie never inflates a score, and
the answer does not depend on the sorting kernel (sorts on GPU are not stable by default).

Retrieval recall@k follows the image-text retrieval protocol of Karpathy & Fei-Fei 2015 as used in
Radford et al. 2021 (Flickr30k, MSCOCO): an image is retrieved correctly when any of its captions
ranks in its top k; a caption when its one image does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Similarity blocks hold at most this many scores (64 MiB in float32), so 100k x 100k retrieval
# runs as ~600 blocks instead of one 40 GB matrix.
_BLOCK_ELEMENTS = 1 << 24


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = list(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks}")
    return ks


def _check_labels(labels: torch.Tensor, n: int, num_classes: int, name: str = "labels") -> torch.Tensor:
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class indices, got {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    return labels.long()


def _check_finite(scores: torch.Tensor, name: str) -> None:
    # A NaN compares unequal to everything, so it would silently rank first or last; refuse it instead.
    if not torch.isfinite(scores).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _rank_of(scores: torch.Tensor, target_score: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    """Position of each row's target in a stable descending sort of that row, without sorting.

    scores (R, M), target_score (R,), target_index (R,) -> (R,) long. Counting the candidates that
    beat the target (higher score, or equal score and lower index) is O(R*M) and exact.
    """
    index = torch.arange(scores.shape[1], device=scores.device)  # (M,)
    ahead = (scores > target_score[:, None]) | ((scores == target_score[:, None]) & (index < target_index[:, None]))
    return ahead.sum(dim=1)  # (R,)


def class_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Position (0 = first) of each sample's true class in its stable descending order of logits.

    logits (N, C), labels (N,) -> (N,) long. Top-k correctness is `rank < k` and top-1 correctness
    is `rank == 0`; evaluators accumulate ranks batch by batch instead of keeping every logit.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    labels = _check_labels(labels.to(logits.device), logits.shape[0], logits.shape[1])
    _check_finite(logits, "logits")
    target = logits.gather(1, labels[:, None])[:, 0]  # (N,)
    return _rank_of(logits, target, labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of samples whose true class is among the k highest logits, for each k.

    logits (N, C), labels (N,). Returns {"top1": ..., "top5": ...}, keyed by the k asked for; a k
    above C is capped at C (so it scores 1.0). Ties follow the module's rule: a tie with the true
    class is a hit only if, with tied classes ordered by index, the true class still falls within
    the first k places.
    """
    ks = _check_ks(ks)
    ranks = class_rank(logits, labels)
    if ranks.numel() == 0:
        raise ValueError("topk_accuracy needs at least one sample")
    return accuracy_from_ranks(ranks, ks, logits.shape[1])


def accuracy_from_ranks(ranks: torch.Tensor, ks: Sequence[int], num_classes: int) -> dict[str, float]:
    """{"top{k}": fraction of `ranks` (N,) below min(k, num_classes)}; see `class_rank`."""
    return {f"top{k}": (ranks < min(k, num_classes)).double().mean().item() for k in _check_ks(ks)}


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (C, C) LongTensor: row = true class, column = predicted class (sklearn's convention).

    pred (N,), labels (N,), both integer class indices in [0, num_classes).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if pred.dim() != 1:
        raise ValueError(f"pred must have shape (N,), got {tuple(pred.shape)}")
    pred = _check_labels(pred, pred.shape[0], num_classes, "pred")
    labels = _check_labels(labels.to(pred.device), pred.shape[0], num_classes)
    flat = torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)  # (C*C,)
    return flat.view(num_classes, num_classes)


def recall_from_hits(hits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean over classes present in `labels` (N,) of the fraction of that class's `hits` (N,) bool."""
    labels = _check_labels(labels.to(hits.device), hits.shape[0], num_classes)
    total = torch.bincount(labels, minlength=num_classes)  # (C,)
    correct = torch.bincount(labels, weights=hits.double(), minlength=num_classes)  # (C,)
    present = total > 0
    if not present.any():
        raise ValueError("mean_per_class_recall needs at least one sample")
    return (correct[present] / total[present]).mean().item()


def mean_per_class_recall(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Top-1 recall averaged over classes, the headline metric for unbalanced sets (e.g. FGVC Aircraft).

    logits (N, C), labels (N,). Classes absent from `labels` are left out of the mean rather than
    counted as 0 or 1, since their recall is undefined. Ties as in `topk_accuracy` (argmax's first maximum).
    """
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must have shape (N, {num_classes}), got {tuple(logits.shape)}")
    return recall_from_hits(class_rank(logits, labels) == 0, labels, num_classes)


def _block_rows(columns: int, block_rows: int | None) -> int:
    if block_rows is not None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be positive, got {block_rows}")
        return block_rows
    return max(1, _BLOCK_ELEMENTS // max(1, columns))


@torch.no_grad()
def retrieval_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    block_rows: int | None = None,
) -> dict[str, float]:
    """Image->text and text->image recall@k from embeddings, scored by dot product.

    image_features (Ni, D) and text_features (Nt, D), normally L2-normalised so the dot product is the
    cosine; text_to_image (Nt,) long gives each caption's image, so an image may have several captions.
    Returns {"image_to_text_R@k": ..., "text_to_image_R@k": ...} for each k. An image is a hit at k if
    any of its captions ranks in its top k; a caption if its image ranks in its top k. Images with no
    caption still compete as distractors for text->image but are left out of the image->text mean,
    where they have no right answer. Similarities are computed `block_rows` query rows at a time
    (default: blocks of ~16M scores) so that 100k x 100k never materialises.
    """
    ks = _check_ks(ks)
    if image_features.dim() != 2 or text_features.dim() != 2 or image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"features must be (Ni, D) and (Nt, D), got {tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    num_images, num_texts = image_features.shape[0], text_features.shape[0]
    if num_images == 0 or num_texts == 0:
        raise ValueError("retrieval_recall needs at least one image and one caption")
    device = image_features.device
    images = image_features.float()
    texts = text_features.to(device=device, dtype=torch.float32)
    _check_finite(images, "image_features")
    _check_finite(texts, "text_features")
    text_to_image = _check_labels(text_to_image.to(device), num_texts, num_images, "text_to_image")

    # Text -> image: each caption's one correct image, ranked among all images.
    t2i_ranks = []
    step = _block_rows(num_images, block_rows)
    for start in range(0, num_texts, step):
        scores = texts[start : start + step] @ images.T  # (b, Ni)
        target = text_to_image[start : start + step]  # (b,)
        t2i_ranks.append(_rank_of(scores, scores.gather(1, target[:, None])[:, 0], target))
    t2i = torch.cat(t2i_ranks)  # (Nt,)

    # Image -> text: the best-placed of an image's captions decides. That caption has the highest score
    # among them and, among equal scores, the lowest index, so its rank is the minimum over them.
    i2t_ranks = []
    text_index = torch.arange(num_texts, device=device)  # (Nt,)
    step = _block_rows(num_texts, block_rows)
    for start in range(0, num_images, step):
        scores = images[start : start + step] @ texts.T  # (b, Nt)
        own = text_to_image[None, :] == torch.arange(start, start + scores.shape[0], device=device)[:, None]  # (b, Nt)
        best_score = scores.masked_fill(~own, float("-inf")).max(dim=1).values  # (b,)
        is_best = own & (scores == best_score[:, None])
        best_index = torch.where(is_best, text_index, num_texts).min(dim=1).values  # (b,); Nt if no caption
        ranks = _rank_of(scores, best_score, best_index)
        i2t_ranks.append(torch.where(own.any(dim=1), ranks, -1))  # -1 marks "no caption"
    i2t = torch.cat(i2t_ranks)  # (Ni,)
    i2t = i2t[i2t >= 0]

    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = (i2t < k).double().mean().item()
    for k in ks:
        out[f"text_to_image_R@{k}"] = (t2i < k).double().mean().item()
    return out
