"""One optimizer step's forward/backward: loss choice, gradient accumulation with a feature cache.

Contrastive losses need every sample of the batch as a negative, so accumulating gradients over
micro-batches the usual way (each micro-batch's own loss) changes the objective. As open_clip does,
the step first embeds all micro-batches without gradients, then for each micro-batch recomputes its
features with gradients and evaluates the loss on the whole accumulated batch (other micro-batches'
features from the cache). Summing those backward passes gives exactly the large-batch gradient;
the temperature (and bias) enter every pass, so only the first pass lets their gradient through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..models.output import CLIPOutput
from .classifier import classifier_loss
from .config import LossConfig
from .distributed import DistInfo
from .losses import clip_loss, distillation_loss, siglip_loss

# Model outputs are read by key only (`out["image_features"]`, `"logit_bias" in out`, `.items()`), never
# by iterating: a CLIPOutput iterates over its values in open_clip's tuple order, a plain dict over keys.
Features = Mapping[str, torch.Tensor]


def contrastive_loss(cfg: LossConfig, out: Features, dist: DistInfo | None) -> torch.Tensor:
    """The configured loss on model outputs (`image_features`, `text_features`, `logit_scale`[, `logit_bias`])."""
    if cfg.kind == "siglip":
        if "logit_bias" not in out:
            raise ValueError("loss.kind='siglip' needs a model with a logit_bias (set init_logit_bias, e.g. -10)")
        return siglip_loss(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"], dist)
    return clip_loss(
        out["image_features"],
        out["text_features"],
        out["logit_scale"],
        dist,
        local_loss=cfg.local_loss,
        gather_with_grad=cfg.gather_with_grad,
        logit_bias=out.get("logit_bias"),
    )


@dataclass
class StepResult:
    """One optimizer step's outcome: the full-batch loss and whether it was finite."""
    loss: float  # the full-batch objective (contrastive + distillation)
    finite: bool


def _forward(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor | None) -> CLIPOutput:
    """The model's forward (possibly DDP- or torch.compile-wrapped), read by key only."""
    return model(images, tokens)


def run_step(
    model: nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    loss_cfg: LossConfig,
    dist: DistInfo | None,
    autocast: Callable[[], contextlib.AbstractContextManager],
    teacher: nn.Module | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> StepResult:
    """Forward and backward for one optimizer step over `micro_batches` (gradients accumulate in .grad)."""
    teacher_out = None
    if teacher is not None:
        with torch.no_grad(), autocast():
            parts = [_forward(teacher, i, t) for i, t in micro_batches]
        teacher_out = _concat(parts)

    def objective(out: Features) -> torch.Tensor:
        loss = contrastive_loss(loss_cfg, out, dist)
        if teacher_out is not None:
            loss = loss + loss_cfg.distill_weight * distillation_loss(
                out["image_features"],
                out["text_features"],
                out["logit_scale"],
                teacher_out["image_features"],
                teacher_out["text_features"],
                teacher_out["logit_scale"],
                feature_weight=loss_cfg.distill_feature_weight,
                dist=dist,
                local_loss=loss_cfg.local_loss,
                gather_with_grad=loss_cfg.gather_with_grad,
            )
        return loss

    if len(micro_batches) == 1:
        images, tokens = micro_batches[0]
        with autocast():
            out = _forward(model, images, tokens)
        loss = objective(_float(out))
        if not torch.isfinite(loss):
            return StepResult(float(loss.detach()), False)
        loss.backward()
        return StepResult(float(loss.detach()), True)

    with torch.no_grad(), autocast():
        cache = [_float(_forward(model, i, t)) for i, t in micro_batches]  # list of (b_j, D) features
    total = None
    for j, (images, tokens) in enumerate(micro_batches):
        last = j == len(micro_batches) - 1
        sync = contextlib.nullcontext() if (last or no_sync is None) else no_sync()
        with sync:
            with autocast():
                live = _float(_forward(model, images, tokens))
            merged = {
                key: torch.cat([live[key] if i == j else cache[i][key] for i in range(len(cache))])
                for key in ("image_features", "text_features")
            }
            for key in ("logit_scale", "logit_bias"):
                if key in live:  # the scalar's gradient must be counted once, not once per micro-batch
                    merged[key] = live[key] if j == 0 else live[key].detach()
            loss = objective(merged)
            if not torch.isfinite(loss):
                return StepResult(float(loss.detach()), False)
            loss.backward()
        total = float(loss.detach())
    return StepResult(total, True)


def run_classifier_step(
    model: nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    head: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> StepResult:
    """Forward and backward of `loss.kind="classifier"` over (images, labels) micro-batches: image tower only.

    Cross-entropy is a mean of per-sample terms, so no feature cache is needed: micro-batch j's mean loss,
    weighted by b_j / N (N = all samples of the step), is backpropagated on its own, and the weighted sum
    is the full-batch loss and gradient. head: (C, D) fixed class weights, on the model's device.
    """
    total_samples = sum(len(labels) for _, labels in micro_batches)
    total = 0.0
    for j, (images, labels) in enumerate(micro_batches):
        last = j == len(micro_batches) - 1
        sync = contextlib.nullcontext() if (last or no_sync is None) else no_sync()
        with sync:
            with autocast():
                out = _float(_forward(model, images, None))  # no tokens: the locked text tower is not run
            loss = classifier_loss(out["image_features"], out["logit_scale"], head, labels)  # scalar, mean over b_j
            if not torch.isfinite(loss):
                return StepResult(float(loss.detach()), False)
            (loss * (len(labels) / total_samples)).backward()
        total += float(loss.detach()) * len(labels) / total_samples
    return StepResult(total, True)


def _float(out: CLIPOutput) -> CLIPOutput:
    """Losses run in fp32 even under bf16 autocast (log-softmax over large logits)."""
    return CLIPOutput({k: v.float() for k, v in out.items()})


def _concat(parts: list[CLIPOutput]) -> CLIPOutput:
    """The teacher's outputs of all micro-batches as one batch (its scalars are the same in every part)."""
    return CLIPOutput(
        image_features=torch.cat([p.image_features for p in parts]),  # (sum b_j, D)
        text_features=torch.cat([p.text_features for p in parts]),  # (sum b_j, D)
        logit_scale=parts[0].logit_scale,
        logit_bias=parts[0].logit_bias,
    )
