"""ProLIP (Fahes, Vu, Bursuc, Perez, de Charette 2024, "Fine-Tuning CLIP's Last Visual Projector: A Few-Shot
Cornucopia", github.com/astra-vision/ProLIP): fine-tune only the image tower's last linear map.

The image tower ends in one linear map (a ViT's `visual.proj`, a ModifiedResNet's `attnpool.c_proj`). ProLIP
caches the features *before* it (`model.encode_image(x, project=False)`, one row set per augmented view), then
trains that map W (P, D) with cross-entropy of `logit_scale * normalize(pre @ W + b) @ W_t` against the zero-shot
text weights W_t, plus `lambda ||W - W0||_F^2` towards the pre-trained map (the bias, if any, stays frozen, as the
reference). Everything else is frozen, so an epoch is one (N, P) x (P, D) product: no image is re-encoded.

Because the adapter owns the projection, `ProLIPAdapter.logits` takes PRE-projection features (N, P), not the
projected ones every other adapter takes; `labelled_features(model, images, ...)` computes both for a labelled set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Adapter, FitContext, LabelledFeatures, register
from .schedule import check_positive


def projection_matrix(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's last image map as (W (P, D), b (D,)) with `encode_image(x) = encode_image(x, project=False) @ W
    + b`: a ViT's bias-free `visual.proj` (b = 0) or a ResNet's `c_proj` Linear (W = weight^T)."""
    proj = model.image_projection
    if isinstance(proj, torch.nn.Linear):
        weight = proj.weight.detach().float().T  # (P, D)
        bias = proj.bias.detach().float() if proj.bias is not None else torch.zeros(weight.shape[1])
        return weight.contiguous(), bias.to(weight.device)
    weight = proj.detach().float()  # (P, D)
    return weight.contiguous(), torch.zeros(weight.shape[1], device=weight.device)


@torch.no_grad()
def labelled_features(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    *,
    batch_size: int = 64,
) -> LabelledFeatures:
    """Encode preprocessed images (N, 3, H, W) -> LabelledFeatures with both the L2-normalised projected
    features (N, D) and the pre-projection features (N, P) ProLIP trains on; the projected ones are
    `project_image(pre)`, so both come from one pass through the tower."""
    if images.ndim != 4:
        raise ValueError(
            f"labelled_features: images must be a preprocessed batch (N, 3, H, W), got {tuple(images.shape)}"
        )
    device = next(model.parameters()).device
    pre_chunks, feat_chunks = [], []
    for start in range(0, images.shape[0], batch_size):
        pre = model.encode_image(images[start : start + batch_size].to(device), project=False).float()  # (B, P)
        pre_chunks.append(pre.cpu())
        feat_chunks.append(F.normalize(model.project_image(pre).float(), dim=-1).cpu())  # (B, D)
    features, pre = torch.cat(feat_chunks), torch.cat(pre_chunks)  # (N, D), (N, P)
    return LabelledFeatures(features, labels.long(), tuple(classnames), pre_features=pre)


def prolip_logits(
    pre: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, text_weights: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """logit_scale * normalize(pre @ W + b) @ W_t: pre (N, P), W (P, D), b (D,), W_t (D, C) -> (N, C)."""
    return logit_scale * F.normalize(pre @ weight + bias, dim=-1) @ text_weights


class ProLIPAdapter(Adapter):
    """The fine-tuned image projection plus the zero-shot text classifier. State: weight (P, D), bias (D,),
    text_weights (D, C). `logits` takes PRE-projection features (N, P) (`encode_image(x, project=False)`);
    `project` maps them to the adapted joint space (N, D), L2-normalised."""

    method = "prolip"
    input_kind = "pre_projection"  # images given to logits are encoded with encode_image(x, project=False)

    def __init__(
        self,
        classnames: Sequence[str],
        hparams: dict,
        *,
        weight: torch.Tensor,
        bias: torch.Tensor,
        text_weights: torch.Tensor,
    ) -> None:
        super().__init__(classnames, hparams)
        self.register_buffer("weight", weight.detach().float().clone())  # (P, D)
        self.register_buffer("bias", bias.detach().float().clone())  # (D,)
        self.register_buffer("text_weights", text_weights.detach().float().clone())  # (D, C)

    def _check_pre(self, pre: torch.Tensor) -> torch.Tensor:
        if pre.ndim != 2 or pre.shape[1] != self.weight.shape[0]:
            raise ValueError(
                f"ProLIPAdapter.logits expects PRE-projection image features (N, {self.weight.shape[0]}), got shape "
                f"{tuple(pre.shape)}: encode with model.encode_image(images, project=False) (ProLIP replaces the "
                "model's last projection, so it cannot use projected features)"
            )
        return pre.float().to(self.weight.device)

    def project(self, pre: torch.Tensor) -> torch.Tensor:
        """Pre-projection features (N, P) -> adapted, L2-normalised image features (N, D)."""
        return F.normalize(self._check_pre(pre) @ self.weight + self.bias, dim=-1)

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        """PRE-projection features (N, P) -> (N, C) class logits."""
        return float(self.hparams["logit_scale"]) * self.project(features) @ self.text_weights




@register("prolip")
def fit_prolip(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    lr: float = 1e-5,
    epochs: int = 300,
    lam: float | None = None,
    eps: float = 1e-4,
) -> ProLIPAdapter:
    """ProLIP with the reference's validation-free defaults (configs/base.yaml, methods/ProLIP.py): Adam (lr 1e-5,
    eps 1e-4) with a cosine schedule over 300 epochs; each epoch is ONE full-batch step on all support images, on
    augmented view e mod V of `train.pre_features` (the reference caches up to 300 views, one per epoch);
    `lam=None` is the paper's validation-free rule lambda = 1/N with N the number of shots per class (the
    reference's `1/shots`; here the mean number of support images per class, len(train) / C). The loss is
    CE + lambda * sum((W - W0)^2). `val` is not read (validation-free); epochs=0 returns the pre-trained map.

    Needs `train.pre_features` (see `labelled_features`) and `ctx.model` (for W0, the model's `image_projection`).
    """
    if ctx.model is None:
        raise ValueError("prolip needs the model (FitContext.model) to read its image projection; fit with a model")
    if train.pre_features is None:
        raise ValueError(
            "prolip trains on pre-projection features: build train with "
            "clipforge.adapt.weight_space.labelled_features(model, images, labels, classnames) or pass "
            "LabelledFeatures(..., pre_features=model.encode_image(images, project=False))"
        )
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"prolip: epochs must be an integer >= 0, got {epochs!r}")
    check_positive("lr", lr, method="prolip")
    check_positive("eps", eps, method="prolip")
    lam_rule = "1/shots" if lam is None else "given"
    if lam is None:
        lam = train.num_classes / max(len(train), 1)  # 1 / (support images per class)
    check_positive("lam", lam, allow_zero=True, method="prolip")
    device = torch.device(ctx.device)
    w0, bias = projection_matrix(ctx.model)
    w0, bias = w0.to(device), bias.to(device)
    pool = train.pre_features if train.pre_features.ndim == 3 else train.pre_features[None]  # (V, N, P)
    if pool.shape[-1] != w0.shape[0]:
        raise ValueError(
            f"prolip: train.pre_features have width {pool.shape[-1]}, the model's image projection takes "
            f"{w0.shape[0]}; "
            "encode them with encode_image(x, project=False) of the same model"
        )
    pool = pool.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(pool).all()):
        raise ValueError("prolip: train.pre_features contain NaN or infinite values; re-encode or drop those rows")
    y = train.labels.to(device).long()
    text = ctx.text_weights.to(device=device, dtype=torch.float32)
    scale = float(ctx.logit_scale)
    weight = torch.nn.Parameter(w0.clone())
    optimizer = torch.optim.Adam([weight], lr=lr, eps=eps)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs))
    losses = []
    with torch.enable_grad():
        for epoch in range(epochs):
            logits = prolip_logits(pool[epoch % pool.shape[0]], weight, bias, text, scale)  # (N, C)
            ce = F.cross_entropy(logits, y)
            loss = ce + lam * (weight - w0).pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
    hparams = {
        "lr": float(lr),
        "epochs": epochs,
        "lam": float(lam),
        "lam_rule": lam_rule,
        "eps": float(eps),
        "logit_scale": scale,
        "views": int(pool.shape[0]),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
    }
    return ProLIPAdapter(train.classnames, hparams, weight=weight.detach(), bias=bias, text_weights=text)


fit_prolip.needs_model = True  # FitContext.model is required (the towers are used)
