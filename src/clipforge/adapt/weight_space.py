"""ProLIP (Fahes, Vu, Bursuc, Perez, de Charette 2024, "Fine-Tuning CLIP's Last Visual Projector: A Few-Shot
Cornucopia", github.com/astra-vision/ProLIP): fine-tune only the image tower's last linear map.

The image tower ends in one linear map (a ViT's `visual.proj`, a ModifiedResNet's `attnpool.c_proj`). ProLIP
caches the features *before* it (`model.encode_image(x, project=False)`, one row set per augmented view), then
trains that map W (P, D) with cross-entropy of `logit_scale * normalize(pre @ W + b) @ W_t` against the zero-shot
text weights W_t, plus `lambda ||W - W0||_F^2` towards the pre-trained map (the bias, if any, stays frozen, as the
reference). Everything else is frozen, so an epoch is one (N, P) x (P, D) product: no image is re-encoded.

Because the adapter owns the projection, `ProLIPAdapter.logits` takes PRE-projection features (N, P), not the
projected ones every other adapter takes; `labelled_features(model, images, ...)` computes both for a labelled set.
Given images instead (bound to the model), it encodes them with `encode_image(x, project=False)` itself.
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




DEFAULT_LR = 1e-5  # the reference's validation-free learning rate (configs/base.yaml lr_v)
# The reference's few-shot-with-validation search (methods/ProLIP.py, `search_lr`, configs/experiments/
# few_shot_few_val.yaml): every learning rate below (with every lambda of LAM_GRID), first best val accuracy wins.
LR_GRID = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
LAM_GRID = (10.0, 1.0, 0.1, 0.01, 0.001, 0.0001, 0.0)


def _train_projection(
    pool: torch.Tensor,
    labels: torch.Tensor,
    w0: torch.Tensor,
    bias: torch.Tensor,
    text: torch.Tensor,
    scale: float,
    *,
    lr: float,
    lam: float,
    eps: float,
    epochs: int,
) -> tuple[torch.Tensor, list[float]]:
    """ProLIP's training from W0: pool (V, N, P), one full-batch Adam step per epoch on view e mod V, cosine
    schedule; loss CE + lam * ||W - W0||_F^2. Returns (W (P, D), per-epoch loss)."""
    weight = torch.nn.Parameter(w0.clone())
    optimizer = torch.optim.Adam([weight], lr=lr, eps=eps)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs))
    losses = []
    with torch.enable_grad():
        for epoch in range(epochs):
            logits = prolip_logits(pool[epoch % pool.shape[0]], weight, bias, text, scale)  # (N, C)
            loss = F.cross_entropy(logits, labels) + lam * (weight - w0).pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
    return weight.detach(), losses


def _val_accuracy(
    pool: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, text: torch.Tensor
) -> float:
    """Accuracy on validation pre-projection features pool (V, N, P), averaged over the V views."""
    with torch.no_grad():
        hits = prolip_logits(pool, weight, bias, text, 1.0).argmax(dim=-1) == labels  # (V, N)
    return float(hits.float().mean())


def _pre_pool(data: LabelledFeatures, width: int, what: str, device: torch.device) -> torch.Tensor:
    """data.pre_features as a finite (V, N, P) float32 pool; errors name `what` (train / val)."""
    if data.pre_features is None:
        raise ValueError(
            f"prolip trains on pre-projection features and {what} has none: build it with "
            "clipforge.adapt.weight_space.labelled_features(model, images, labels, classnames) or pass "
            "LabelledFeatures(..., pre_features=model.encode_image(images, project=False))"
        )
    pre = data.pre_features
    pool = pre if pre.ndim == 3 else pre[None]  # (V, N, P)
    if pool.shape[-1] != width:
        raise ValueError(
            f"prolip: {what}.pre_features have width {pool.shape[-1]}, the model's image projection takes {width}; "
            "encode them with encode_image(x, project=False) of the same model"
        )
    pool = pool.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(pool).all()):
        raise ValueError(f"prolip: {what}.pre_features contain NaN or infinite values; re-encode or drop those rows")
    return pool


@register("prolip")
def fit_prolip(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    lr: float | None = None,
    epochs: int = 300,
    lam: float | None = None,
    eps: float = 1e-4,
    search: bool = True,
    lr_grid: tuple[float, ...] = LR_GRID,
    lam_grid: tuple[float, ...] | None = None,
) -> ProLIPAdapter:
    """ProLIP with the reference's settings (configs/base.yaml, methods/ProLIP.py): Adam (eps 1e-4) with a cosine
    schedule over 300 epochs; each epoch is ONE full-batch step on all support images, on augmented view e mod V of
    `train.pre_features` (the reference caches up to 300 views, one per epoch); the loss is
    CE + lambda * sum((W - W0)^2).

    Learning rate: `lr=None` chooses it on `val` when there is one (and `search`): the reference's
    few-shot-with-validation grid `lr_grid` (1e-2 .. 1e-8), each candidate trained from W0 for the full schedule
    and scored on val's pre-projection features (mean over its views if it has several); the first best val
    accuracy wins. Without val (or search=False) it is the paper's validation-free 1e-5. A given `lr` is used as is.
    lambda: `lam=None` is the paper's validation-free rule 1/N, N the shots per class (the reference's `1/shots`;
    here the mean number of support images per class, len(train) / C), kept during the lr search. The reference's
    few-val config searches lambda jointly with lr; `lam_grid=LAM_GRID` does that (lambda then chosen on val too).
    The chosen values and how they were chosen are in hparams (lr, lr_chosen_on, lam, lam_rule, val_accuracy).
    epochs=0 returns the pre-trained map.

    Needs `train.pre_features` (and val's, to search; see `labelled_features`) and `ctx.model` (for W0, the
    model's `image_projection`).
    """
    if ctx.model is None:
        raise ValueError("prolip needs the model (FitContext.model) to read its image projection; fit with a model")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"prolip: epochs must be an integer >= 0, got {epochs!r}")
    if lr is not None:
        check_positive("lr", lr, method="prolip")
    check_positive("eps", eps, method="prolip")
    if not lr_grid:
        raise ValueError("prolip: lr_grid is empty; give at least one learning rate to search")
    for value in lr_grid:
        check_positive("lr_grid value", value, method="prolip")
    for value in lam_grid or ():
        check_positive("lam_grid value", value, allow_zero=True, method="prolip")
    lam_rule = "1/shots" if lam is None else "given"
    if lam is None:
        lam = train.num_classes / max(len(train), 1)  # 1 / (support images per class)
    check_positive("lam", lam, allow_zero=True, method="prolip")
    device = torch.device(ctx.device)
    w0, bias = projection_matrix(ctx.model)
    w0, bias = w0.to(device), bias.to(device)
    pool = _pre_pool(train, w0.shape[0], "train", device)  # (V, N, P)
    y = train.labels.to(device).long()
    text = ctx.text_weights.to(device=device, dtype=torch.float32)
    scale = float(ctx.logit_scale)
    settings = {"eps": eps, "epochs": epochs}

    lr_chosen_on, val_acc = ("given" if lr is not None else "default"), None
    searching = val is not None and search and (lr is None or lam_grid)
    if searching:
        val_pool = _pre_pool(val, w0.shape[0], "val", device)  # (V', M, P)
        val_y = val.labels.to(device).long()
        lrs = [float(lr)] if lr is not None else [float(v) for v in lr_grid]
        lams = [float(v) for v in lam_grid] if lam_grid else [float(lam)]
        best = (-1.0, lrs[0], lams[0])
        for candidate_lr in lrs:  # lr outer, lambda inner, strict improvement: the reference's order
            for candidate_lam in lams:
                weight, _ = _train_projection(pool, y, w0, bias, text, scale, lr=candidate_lr, lam=candidate_lam,
                                              **settings)
                acc = _val_accuracy(val_pool, val_y, weight, bias, text)
                if acc > best[0]:
                    best = (acc, candidate_lr, candidate_lam)
        val_acc, lr, lam = best
        if lr_chosen_on == "default":
            lr_chosen_on = "val"
        if lam_grid:
            lam_rule = "val"
    elif lr is None:
        lr = DEFAULT_LR
    weight, losses = _train_projection(pool, y, w0, bias, text, scale, lr=lr, lam=lam, **settings)
    hparams = {
        "lr": float(lr),
        "lr_chosen_on": lr_chosen_on,
        "lr_grid": [float(v) for v in lr_grid],
        "lam_grid": None if lam_grid is None else [float(v) for v in lam_grid],
        "val_accuracy": val_acc,
        "epochs": epochs,
        "lam": float(lam),
        "lam_rule": lam_rule,
        "eps": float(eps),
        "logit_scale": scale,
        "views": int(pool.shape[0]),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
    }
    return ProLIPAdapter(train.classnames, hparams, weight=weight, bias=bias, text_weights=text)


fit_prolip.needs_model = True  # FitContext.model is required (the towers are used)
