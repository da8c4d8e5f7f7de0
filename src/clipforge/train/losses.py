"""Contrastive and distillation losses, as pure functions of the towers' features.

- `clip_loss`: InfoNCE over the global batch (Radford et al. 2021, "Learning Transferable Visual Models
  From Natural Language Supervision", Sec. 2.3 and Fig. 3), symmetric over image->text and text->image.
- `siglip_loss`: the pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image
  Pre-Training"), computed chunk by chunk as text features travel round the ranks (their Sec. 3.3).
- `distillation_loss`: CLIP-KD (Yang et al. 2024, "CLIP-KD: An Empirical Study of CLIP Model
  Distillation"): relation distillation (KL between teacher and student similarity distributions) plus
  optional feature distillation (squared distance between embeddings).
- `clamp_logit_scale_`: the temperature clamp at 100 (Radford et al. 2021, Sec. 2.5).

The reference is open_clip's loss.py (mlfoundations/open_clip): values and gradients match its
`ClipLoss`, `SigLipLoss` and `DistillClipLoss` (tests/train/test_losses.py). Ranks are passed in as a
`DistInfo`; None or world_size 1 means one process.

Gradient scale under DDP (which averages parameter gradients over the W ranks). Let L be the loss of
the whole global batch N = W * B computed in one process. Each rank's loss value is (or averages to) L.
- `clip_loss(local_loss=True, gather_with_grad=True)`, `clip_loss(gather_with_grad=True)` and
  `siglip_loss`: rank r's loss L_r satisfies mean_r L_r = L; the gathers/exchanges return gradients to
  the owner, so a feature's gradient on its rank is W * dL/dfeature, and after DDP's average every
  parameter (towers, logit_scale, logit_bias) gets exactly dL/dparam.
- `clip_loss()` without options (open_clip's default): every rank computes the full N x N loss L but
  only its own slice carries gradients, so a feature's gradient is dL/dfeature and after DDP's average
  the tower parameters get dL/dparam / W, while logit_scale (and logit_bias) get dL/dparam. Adaptive
  optimizers (AdamW) are almost insensitive to this; SGD's effective learning rate is divided by W.
- `clip_loss(local_loss=True)` without gather_with_grad lets a feature's gradient through its own row
  only, not through the columns where it is a negative for other samples: a memory saving, not dL.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistInfo, all_gather_features, neighbour_exchange, neighbour_exchange_bidir

__all__ = ["clamp_logit_scale_", "clip_loss", "distillation_loss", "siglip_loss"]


def _world(dist: DistInfo | None) -> int:
    return 1 if dist is None else dist.world_size


def _check_pairs(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            "image_features and text_features must both be (B, D) with the same shape, got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )


def _contrastive_logits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    dist: DistInfo | None,
    local_loss: bool,
    gather_with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits_per_image, logits_per_text, labels) over the global batch, as open_clip's ClipLoss builds them.

    Local batch B, global N = W * B. local_loss: both logits are (B, N), labels rank * B + arange(B);
    otherwise (N, N) and arange(N).
    """
    b = image_features.shape[0]
    if dist is None or dist.world_size == 1:
        logits_per_image = logit_scale * image_features @ text_features.T  # (B, B)
        labels = torch.arange(b, device=image_features.device)
        return logits_per_image, logits_per_image.T, labels
    if local_loss and not gather_with_grad:
        # Columns from other ranks are constants; keep this rank's own columns constant as well, as
        # open_clip does, so the gradient reaches features through their rows only.
        image_features_g, text_features_g = image_features.detach(), text_features.detach()
    else:
        image_features_g, text_features_g = image_features, text_features
    all_image = all_gather_features(image_features_g, dist, with_grad=gather_with_grad)  # (N, D)
    all_text = all_gather_features(text_features_g, dist, with_grad=gather_with_grad)  # (N, D)
    if local_loss:
        logits_per_image = logit_scale * image_features @ all_text.T  # (B, N)
        logits_per_text = logit_scale * text_features @ all_image.T  # (B, N)
        labels = torch.arange(b, device=image_features.device) + dist.rank * b
        return logits_per_image, logits_per_text, labels
    logits_per_image = logit_scale * all_image @ all_text.T  # (N, N)
    labels = torch.arange(all_image.shape[0], device=image_features.device)
    return logits_per_image, logits_per_image.T, labels


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    dist: DistInfo | None = None,
    *,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (Radford et al. 2021): mean of the image->text and text->image cross-entropies.

    image_features, text_features: (B, D) matched pairs (row i of each), normally L2-normalised; every
    rank must pass the same B. logit_scale: the temperature's inverse, already exponentiated (scalar).
    dist: features are gathered over its ranks so that every sample is a negative for every other.
    local_loss: this rank's rows against all N columns only ((B, N) logits instead of (N, N)).
    gather_with_grad: gradients flow through the gathered features back to their ranks.
    logit_bias: optional scalar added to every logit.
    See the module docstring for the gradient each option yields under DDP.
    """
    _check_pairs(image_features, text_features)
    logits_per_image, logits_per_text, labels = _contrastive_logits(
        image_features, text_features, logit_scale, dist, local_loss, gather_with_grad
    )
    if logit_bias is not None:
        logits_per_image = logits_per_image + logit_bias
        logits_per_text = logits_per_text + logit_bias
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def _sigmoid_chunk(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    positives: bool,
) -> torch.Tensor:
    """-sum log sigmoid(z_ij * logit_ij) / B for one (B, B') block; z = +1 on the diagonal when `positives`."""
    logits = logit_scale * image_features @ text_features.T  # (B, B')
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = -torch.ones_like(logits)
    if positives:
        labels = labels + 2 * torch.eye(*logits.shape, device=logits.device, dtype=logits.dtype)
    return -F.logsigmoid(labels * logits).sum() / image_features.shape[0]


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    dist: DistInfo | None = None,
    *,
    bidirectional: bool = True,
) -> torch.Tensor:
    """Pairwise sigmoid loss (Zhai et al. 2023, Eq. 1 and Sec. 3.3), normalised by the local batch size B.

    image_features, text_features: (B, D) matched pairs; logit_scale (exponentiated) and logit_bias are
    scalars. Each rank scores its images against its own texts (positives on the diagonal), then against
    every other rank's texts (all negatives), which arrive one (B, D) chunk at a time from the ring
    neighbours, so memory does not grow with the number of ranks. bidirectional: pass chunks both ways
    round the ring (about half the steps, open_clip's "bidir"); otherwise rightwards only ("shift").
    Rank r's loss sums over its B images and all N = W * B texts and divides by B, so the mean over ranks
    equals the one-process loss of the whole batch (which divides by N).
    """
    _check_pairs(image_features, text_features)
    loss = _sigmoid_chunk(image_features, text_features, logit_scale, logit_bias, positives=True)
    world = _world(dist)
    if world == 1:
        return loss
    assert dist is not None
    if bidirectional:
        to_left = to_right = text_features
        num_bidir, remainder = divmod(world - 1, 2)
        for _ in range(num_bidir):
            from_left, from_right = neighbour_exchange_bidir(to_left, to_right, dist)
            for chunk in (from_right, from_left):  # open_clip's summation order
                loss = loss + _sigmoid_chunk(image_features, chunk, logit_scale, logit_bias, positives=False)
            to_left, to_right = from_right, from_left  # keep each chunk moving the way it came
        if remainder:
            from_left = neighbour_exchange(to_right, dist)
            loss = loss + _sigmoid_chunk(image_features, from_left, logit_scale, logit_bias, positives=False)
        return loss
    chunk = text_features
    for _ in range(world - 1):
        chunk = neighbour_exchange(chunk, dist)
        loss = loss + _sigmoid_chunk(image_features, chunk, logit_scale, logit_bias, positives=False)
    return loss


def distillation_loss(
    student_image: torch.Tensor,
    student_text: torch.Tensor,
    student_logit_scale: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    teacher_logit_scale: torch.Tensor,
    *,
    logit_weight: float = 1.0,
    feature_weight: float = 0.0,
    temperature: float | None = None,
    dist: DistInfo | None = None,
    local_loss: bool = False,
    gather_with_grad: bool = False,
) -> torch.Tensor:
    """CLIP-KD (Yang et al. 2024): relation distillation plus optional feature distillation.

    student_*: (B, D_s) features; teacher_*: (B, D_t), treated as constants. Relation term: the mean
    over image->text and text->image of KL(teacher || student) between the rows' softmax distributions
    over the global batch (their "CRD"); it differs from open_clip's DistillClipLoss soft cross-entropy
    only by the teacher's entropy, a constant, so gradients are identical. Logits use each model's own
    logit scale, or 1 / temperature for both when `temperature` is given. Feature term (their "FD"):
    mean over the local batch of ||v_t - v_s||^2 + ||s_t - s_s||^2; needs D_s == D_t.
    dist, local_loss, gather_with_grad: as in `clip_loss` (the teacher is gathered without gradient).
    """
    _check_pairs(student_image, student_text)
    _check_pairs(teacher_image, teacher_text)
    if student_image.shape[0] != teacher_image.shape[0]:
        raise ValueError(f"student batch {student_image.shape[0]} != teacher batch {teacher_image.shape[0]}")
    teacher_image, teacher_text = teacher_image.detach(), teacher_text.detach()
    teacher_logit_scale = teacher_logit_scale.detach()
    if temperature is not None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        student_logit_scale = teacher_logit_scale = torch.tensor(1.0 / temperature, device=student_image.device)
    loss = student_image.new_zeros(())
    if logit_weight:
        s_img, s_txt, _ = _contrastive_logits(
            student_image, student_text, student_logit_scale, dist, local_loss, gather_with_grad
        )
        t_img, t_txt, _ = _contrastive_logits(teacher_image, teacher_text, teacher_logit_scale, dist, local_loss, False)
        kl = _kl_rows(t_img, s_img) + _kl_rows(t_txt, s_txt)
        loss = loss + logit_weight * kl / 2
    if feature_weight:
        if student_image.shape[1] != teacher_image.shape[1]:
            raise ValueError(
                f"feature distillation needs equal dims, student {student_image.shape[1]} vs teacher "
                f"{teacher_image.shape[1]}; set feature_weight=0 or project the student first"
            )
        sq = (student_image - teacher_image).pow(2).sum(1) + (student_text - teacher_text).pow(2).sum(1)  # (B,)
        loss = loss + feature_weight * sq.mean()
    return loss


def _kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher) || softmax(student)); both (R, C)."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=1),
        F.log_softmax(teacher_logits, dim=1),
        reduction="batchmean",
        log_target=True,
    )


def clamp_logit_scale_(model_or_param: nn.Module | torch.Tensor, max_log: float = math.log(100)) -> torch.Tensor:
    """Clamp the log-temperature parameter in place to [0, max_log], as open_clip does after each step.

    Radford et al. 2021 (Sec. 2.5): "clipped to prevent scaling the logits by more than 100". Accepts the
    parameter itself or a module with a `logit_scale` attribute, also inside a DDP/FSDP wrapper
    (`.module`). Returns the parameter.
    """
    param = model_or_param
    while isinstance(param, nn.Module):
        if isinstance(getattr(param, "logit_scale", None), torch.Tensor):
            param = param.logit_scale
        elif isinstance(getattr(param, "module", None), nn.Module):
            param = param.module
        else:
            raise TypeError(f"{type(param).__name__} has no logit_scale parameter")
    with torch.no_grad():
        param.clamp_(0.0, max_log)
    return param
