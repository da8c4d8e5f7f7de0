"""Adapters trained on cached image features: Tip-Adapter-F, CLIP-Adapter, LP++, CLAP and the linear probe.

Every method here trains on the *cached* support features (`LabelledFeatures.features`, and its augmented `views`
where the method's paper re-augments each epoch: epoch e uses view e mod V), never on images, so an epoch costs a
few small matrix products. Training is seeded through a local `torch.Generator` (no global RNG state is touched),
so the same inputs and hyper-parameters give the same adapter. Hyper-parameter choices read `val` only; a method
whose paper is validation-free (CLIP-Adapter, CLAP) ignores `val` and says so in its docstring.

References (defaults follow the authors' code where paper and code differ, and the docstrings say where):
- Tip-Adapter-F: Zhang et al., ECCV 2022, github.com/gaopengcuhk/Tip-Adapter (main.py, configs/imagenet.yaml).
- CLIP-Adapter: Gao et al., IJCV 2023 / arXiv 2110.04544, github.com/gaopengcuhk/CLIP-Adapter.
- LP++: Huang, Shakeri, Dolz, Boudiaf, Bahig, Ben Ayed, CVPR 2024,
  github.com/FereshteShakeri/FewShot-CLIP-Strong-Baseline (methods/linear_probe_p2.py).
- CLAP: Silva-Rodriguez, Hajimiri, Ben Ayed, Dolz, CVPR 2024, github.com/jusiro/CLAP (trainers/adapters.py).
- Linear probe: Radford et al. 2021, appendix A.3, as `clipforge.eval.probe`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..eval import probe
from ..eval.logistic import cpu_threads_for
from .base import Adapter, FitContext, LabelledFeatures, register
from .schedule import check_count, check_positive, set_lr, shuffled_batches, warmup_cosine_lr
from .training_free import search_tip, tip_grid, tip_logits

# ---------------------------------------------------------------------------------------------------------------
# Shared helpers


def _prepare(ctx: FitContext, train: LabelledFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, labels (N,) long, text weights (D, C) float32) on the context's device."""
    if len(train) == 0:
        raise ValueError("fit: the training set is empty; give at least one labelled feature per class")
    device = torch.device(ctx.device)
    x = train.features.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("fit: train.features contain NaN or infinite values; re-encode or drop those rows")
    return x, train.labels.to(device).long(), ctx.text_weights.to(device=device, dtype=torch.float32)


def _view_pool(train: LabelledFeatures, device: torch.device) -> torch.Tensor:
    """(V, N, D) float32 L2-normalised training features per augmentation epoch; V = 1 without views."""
    pool = train.features[None] if train.views is None else train.views
    return F.normalize(pool.to(device=device, dtype=torch.float32), dim=-1)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=-1) == labels).float().mean().item()










def _small_steps_on_one_thread(fit_fn):
    """Run a fit on one intra-op thread while its steps are small (pool rows x D x max(C, N) multiply-adds under
    the probe's threshold, `clipforge.eval.logistic.cpu_threads_for`): a step is a handful of sub-millisecond ops
    whose fork-join cost dominates; measured 10-40x slower on two threads than on one on a busy 2-core machine.
    functools.wraps keeps the signature, which the registry reads for the hyper-parameters."""

    @functools.wraps(fit_fn)
    def wrapper(ctx: FitContext, train: LabelledFeatures, val: LabelledFeatures | None, **hparams):
        rows = len(train) * (1 if train.views is None else train.views.shape[0])
        with cpu_threads_for(torch.device(ctx.device), rows, train.dim, max(train.num_classes, len(train)), "lbfgs"):
            return fit_fn(ctx, train, val, **hparams)

    return wrapper




# ---------------------------------------------------------------------------------------------------------------
# Tip-Adapter-F


class TipAdapterF(Adapter):
    """Tip-Adapter-F: the Tip-Adapter cache whose keys were fine-tuned. State: keys (M, D), values (M, C) one-hot,
    text_weights (D, C); hparams alpha, beta, logit_scale (plus the training settings, for the record)."""

    method = "tip_f"

    def __init__(
        self,
        classnames: Sequence[str],
        hparams: dict,
        *,
        keys: torch.Tensor,
        values: torch.Tensor,
        text_weights: torch.Tensor,
    ) -> None:
        super().__init__(classnames, hparams)
        self.register_buffer("keys", keys.detach().float().clone())
        self.register_buffer("values", values.detach().float().clone())
        self.register_buffer("text_weights", text_weights.detach().float().clone())

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        f = self.check_features(features, self.keys.shape[1]).to(self.keys.device)
        h = self.hparams
        return tip_logits(f, self.keys, self.values, self.text_weights, h["alpha"], h["beta"], h["logit_scale"])


@register("tip_f")
@_small_steps_on_one_thread
def fit_tip_f(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    init_alpha: float = 1.0,
    init_beta: float = 1.0,
    lr: float = 0.001,
    epochs: int = 20,
    batch_size: int = 256,
    eps: float = 1e-4,
    search: bool = True,
    search_scale: tuple[float, float] = (7.0, 3.0),
    search_steps: tuple[int, int] = (200, 20),
    seed: int = 1,
) -> TipAdapterF:
    """Tip-Adapter-F (Zhang et al. 2022): the cache keys become a learnable linear layer initialised from the
    support features (the mean of the augmented views, L2-normalised, as Tip-Adapter's cache), trained with AdamW
    (lr 0.001, eps 1e-4) under a cosine schedule over every step, for 20 epochs of batches of 256 cached features
    (epoch e reads augmented view e mod V, standing in for the reference's fresh augmentation per epoch), with the
    loss at (init_alpha, init_beta). The kept epoch is the one with the best accuracy on `val` (the reference picks
    it on test), then alpha/beta are searched on `val` over Tip-Adapter's grid: `search_steps` values from 0.1 to
    `search_scale` (beta first, alpha second; defaults from the reference's ImageNet config). Without `val` the
    last epoch and (init_alpha, init_beta) are kept. epochs=0 is Tip-Adapter itself.
    """
    check_positive("init_alpha", init_alpha, allow_zero=True)
    check_positive("init_beta", init_beta, allow_zero=True)
    check_positive("lr", lr)
    check_positive("eps", eps)
    check_count("epochs", epochs, 0)
    check_count("batch_size", batch_size, 1)
    if len(search_scale) != 2 or len(search_steps) != 2:
        raise ValueError("search_scale and search_steps are (beta, alpha) pairs, e.g. (7.0, 3.0) and (200, 20)")
    for name, steps in zip(("search_steps[0]", "search_steps[1]"), search_steps):
        check_count(name, steps, 1)
    x, y, text = _prepare(ctx, train)
    device, scale = x.device, float(ctx.logit_scale)
    values = F.one_hot(y, train.num_classes).float()  # (M, C)
    keys = torch.nn.Parameter(train.mean_views().to(device=device, dtype=torch.float32).clone())  # (M, D)
    pool = _view_pool(train, device)  # (V, M, D)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    optimizer = torch.optim.AdamW([keys], lr=lr, eps=eps)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * steps_per_epoch))

    val_x = val_y = None
    if val is not None:
        val_x = val.features.to(device=device, dtype=torch.float32)
        val_y = val.labels.to(device).long()
    best_acc, best_epoch, best_keys = -1.0, 0, keys.detach().clone()
    for epoch in range(epochs):
        rows = pool[epoch % pool.shape[0]]  # (M, D): this epoch's augmented view of every support image
        for batch in shuffled_batches(len(train), batch_size, generator):
            logits = tip_logits(rows[batch], keys, values, text, init_alpha, init_beta, scale)
            loss = F.cross_entropy(logits, y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if val_x is not None:
            with torch.no_grad():
                acc = _accuracy(tip_logits(val_x, keys, values, text, init_alpha, init_beta, scale), val_y)
            if acc > best_acc:  # strict: the earliest epoch among equals, as the reference
                best_acc, best_epoch, best_keys = acc, epoch + 1, keys.detach().clone()
    if val_x is None or epochs == 0:
        best_epoch, best_keys = epochs, keys.detach().clone()

    alpha, beta, val_acc = float(init_alpha), float(init_beta), None
    if val_x is not None and search:
        with torch.no_grad():
            alpha, beta, val_acc = search_tip(
                val_x @ best_keys.T,
                values,
                scale * val_x @ text,
                val_y,
                tip_grid(search_scale[0], search_steps[0]),
                tip_grid(search_scale[1], search_steps[1]),
            )
    hparams = {
        "alpha": alpha,
        "beta": beta,
        "logit_scale": scale,
        "init_alpha": float(init_alpha),
        "init_beta": float(init_beta),
        "lr": float(lr),
        "epochs": epochs,
        "chosen_epoch": best_epoch,
        "batch_size": batch_size,
        "eps": float(eps),
        "search": bool(search and val_x is not None),
        "search_scale": [float(s) for s in search_scale],
        "search_steps": [int(s) for s in search_steps],
        "val_accuracy": val_acc,
        "seed": seed,
    }
    return TipAdapterF(train.classnames, hparams, keys=best_keys, values=values, text_weights=text)


# ---------------------------------------------------------------------------------------------------------------
# CLIP-Adapter


def _clip_adapter_logits(
    features: torch.Tensor, down: torch.Tensor, up: torch.Tensor, text: torch.Tensor, ratio: float, scale: float
) -> torch.Tensor:
    """s * normalize(ratio * relu(relu(f A^T) B^T) + (1 - ratio) f) @ W_t; down A (D/r, D), up B (D, D/r)."""
    residual = F.relu(F.relu(features @ down.T) @ up.T)  # (N, D)
    blended = ratio * residual + (1.0 - ratio) * features
    return scale * F.normalize(blended, dim=-1) @ text  # (N, C)


class ClipAdapter(Adapter):
    """CLIP-Adapter's visual adapter. State: down (D/r, D), up (D, D/r), text_weights (D, C); hparams ratio,
    logit_scale."""

    method = "clip_adapter"

    def __init__(
        self,
        classnames: Sequence[str],
        hparams: dict,
        *,
        down: torch.Tensor,
        up: torch.Tensor,
        text_weights: torch.Tensor,
    ) -> None:
        super().__init__(classnames, hparams)
        self.register_buffer("down", down.detach().float().clone())
        self.register_buffer("up", up.detach().float().clone())
        self.register_buffer("text_weights", text_weights.detach().float().clone())

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        f = self.check_features(features, self.down.shape[1]).to(self.down.device)
        return _clip_adapter_logits(
            f, self.down, self.up, self.text_weights, self.hparams["ratio"], self.hparams["logit_scale"]
        )


def _linear_init(out_features: int, in_features: int, generator: torch.Generator) -> torch.Tensor:
    """torch.nn.Linear's default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from a local generator."""
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(out_features, in_features, generator=generator) * 2.0 - 1.0) * bound


@register("clip_adapter")
@_small_steps_on_one_thread
def fit_clip_adapter(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    reduction: int = 4,
    ratio: float = 0.2,
    lr: float = 0.01,
    epochs: int = 200,
    batch_size: int = 32,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    seed: int = 1,
) -> ClipAdapter:
    """CLIP-Adapter (Gao et al. 2021), visual adapter: a bias-free bottleneck MLP D -> D/4 -> D with ReLUs, blended
    residually as `ratio * mlp(f) + (1 - ratio) * f` (ratio 0.2, the paper's value for generic datasets), then
    cosine logits against the zero-shot text weights, trained with cross-entropy. Optimiser as the CoOp/Dassl
    recipe the paper builds on: SGD momentum 0.9, weight decay 5e-4, batch 32, 200 epochs, one constant warm-up
    epoch at 1e-5 then cosine; lr 0.01 as the LP++ authors' reproduction (the paper does not pin one value).
    Epoch e reads augmented view e mod V. Validation-free (fixed ratio, last epoch): `val` is not read.
    ratio=0 is exactly zero-shot CLIP.
    """
    del val  # the paper fixes ratio and the epoch count; nothing to choose
    check_count("reduction", reduction, 1)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1] (the adapter's share of the blended feature), got {ratio}")
    check_positive("lr", lr)
    check_count("epochs", epochs, 0)
    check_count("batch_size", batch_size, 1)
    check_positive("momentum", momentum, allow_zero=True)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    check_count("warmup_epochs", warmup_epochs, 0)
    check_positive("warmup_lr", warmup_lr)
    x, y, text = _prepare(ctx, train)
    device, scale, dim = x.device, float(ctx.logit_scale), train.dim
    hidden = dim // reduction
    if hidden < 1:
        raise ValueError(f"reduction {reduction} leaves no hidden units for feature dimension {dim}")
    generator = torch.Generator().manual_seed(seed)
    down = torch.nn.Parameter(_linear_init(hidden, dim, generator).to(device))  # (D/r, D)
    up = torch.nn.Parameter(_linear_init(dim, hidden, generator).to(device))  # (D, D/r)
    optimizer = torch.optim.SGD([down, up], lr=lr, momentum=momentum, weight_decay=weight_decay)
    pool = _view_pool(train, device)
    for epoch in range(epochs):
        set_lr(optimizer, warmup_cosine_lr(lr, epoch, epochs, warmup_epochs, warmup_lr))
        rows = pool[epoch % pool.shape[0]]
        for batch in shuffled_batches(len(train), batch_size, generator):
            loss = F.cross_entropy(_clip_adapter_logits(rows[batch], down, up, text, ratio, scale), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    hparams = {
        "ratio": float(ratio),
        "logit_scale": scale,
        "reduction": reduction,
        "lr": float(lr),
        "epochs": epochs,
        "batch_size": batch_size,
        "momentum": float(momentum),
        "weight_decay": float(weight_decay),
        "warmup_epochs": warmup_epochs,
        "warmup_lr": float(warmup_lr),
        "seed": seed,
    }
    return ClipAdapter(train.classnames, hparams, down=down, up=up, text_weights=text)


# ---------------------------------------------------------------------------------------------------------------
# LP++


def lp_pp_step_sizes(features: torch.Tensor, text_weights: torch.Tensor) -> tuple[float, float]:
    """LP++'s data-derived step sizes (N, D) features, (D, C) text weights -> (lr_w, lr_alpha):

    lr_w = 4 N / lambda_max(F^T F) for the visual weights, lr_alpha = N / (4 max_c sum_i (f_i . t_c)^2) for the
    class-wise blend; computed in float64 (`calculate_lr_w` / `calculate_lr_alpha` in the authors' code)."""
    f = features.double()
    n = f.shape[0]
    lam_max = torch.linalg.eigvalsh(f.T @ f).max().item()
    text_sq = (f @ text_weights.double()).square().sum(dim=0).max().item()  # max_c sum_i (f_i . t_c)^2
    if lam_max <= 0 or text_sq <= 0:
        raise ValueError("LP++: the training features are all zero or orthogonal to every text weight")
    return 4.0 * n / lam_max, n / (4.0 * text_sq)


def lp_pp_init_alpha(features: torch.Tensor, labels: torch.Tensor, text_weights: torch.Tensor, num_classes: int):
    """LP++'s initial blend: 250 x the mean over (class c, class k) of the class-c mean of f . t_k."""
    text_logits = features.double() @ text_weights.double()  # (N, C)
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=features.device)
    sums.index_add_(0, labels, text_logits)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).double()
    return 250.0 * (sums / counts[:, None]).mean().item()


def _lp_pp_logits(features, weight, bias, alpha, text) -> torch.Tensor:
    """f W^T + b + alpha_c (f . t_c): weight (C, D), bias (C,), alpha (C,), text (D, C) -> (N, C)."""
    return features @ weight.T + bias + alpha * (features @ text)


class LPPlusPlus(Adapter):
    """LP++: visual linear classifier plus class-wise scaled text logits. State: weight (C, D), bias (C,),
    alpha (C,), text_weights (D, C)."""

    method = "lp_pp"

    def __init__(
        self,
        classnames: Sequence[str],
        hparams: dict,
        *,
        weight: torch.Tensor,
        bias: torch.Tensor,
        alpha: torch.Tensor,
        text_weights: torch.Tensor,
    ) -> None:
        super().__init__(classnames, hparams)
        for name, tensor in (("weight", weight), ("bias", bias), ("alpha", alpha), ("text_weights", text_weights)):
            self.register_buffer(name, tensor.detach().float().clone())

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        f = self.check_features(features, self.weight.shape[1]).to(self.weight.device)
        return _lp_pp_logits(f, self.weight, self.bias, self.alpha, self.text_weights)


@register("lp_pp")
@_small_steps_on_one_thread
def fit_lp_pp(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    epochs: int = 300,
    momentum: float = 0.9,
    alpha_every: int = 10,
) -> LPPlusPlus:
    """LP++ (Huang et al., CVPR 2024): logits `f W^T + b + alpha_c f . t_c`, a linear probe blended class-wise
    with the zero-shot text logits. As the authors' `LinearProbe_P2`: W starts from the per-class *sums* of the
    support features (their `compute_centroids`), alpha from 250 x the mean class-wise text logit; full-batch
    gradient descent for 300 epochs, W and b by SGD (momentum 0.9) with the data-derived step 4N / lambda_max(F^T F),
    alpha by a plain gradient step of N / (4 max_c sum_i (f_i . t_c)^2) every 10 epochs (block coordinate
    descent). The kept epoch is the last with the best `val` accuracy (the reference reports test accuracy at that
    epoch); without `val`, the last epoch. No hyper-parameter is tuned.

    Two deliberate differences from the reference code: b starts at 0 (theirs keeps nn.Linear's random init), and
    the alpha step uses the current epoch's gradient (theirs never zeroes alpha's gradient, so its step grows with
    the sum of every gradient so far, which the paper's block-coordinate description does not do).
    """
    check_count("epochs", epochs, 0)
    check_positive("momentum", momentum, allow_zero=True)
    check_count("alpha_every", alpha_every, 1)
    x, y, text = _prepare(ctx, train)
    c = train.num_classes
    lr_w, lr_alpha = lp_pp_step_sizes(x, text)
    init_alpha = lp_pp_init_alpha(x, y, text, c)
    weight = torch.zeros(c, train.dim, device=x.device).index_add_(0, y, x).requires_grad_(True)  # (C, D)
    bias = torch.zeros(c, device=x.device, requires_grad=True)
    alpha = torch.full((c,), init_alpha, device=x.device, requires_grad=True)
    optimizer = torch.optim.SGD([weight, bias], lr=lr_w, momentum=momentum)
    text_logits = x @ text  # (N, C), fixed

    val_x = val_y = None
    if val is not None:
        val_x = val.features.to(device=x.device, dtype=torch.float32)
        val_y = val.labels.to(x.device).long()
    snapshot = (weight.detach().clone(), bias.detach().clone(), alpha.detach().clone())
    best_acc, best_epoch = -1.0, 0
    for epoch in range(epochs):
        logits = x @ weight.T + bias + alpha * text_logits
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        alpha.grad = None
        loss.backward()
        optimizer.step()
        if (epoch + 1) % alpha_every == 0:
            with torch.no_grad():
                alpha -= lr_alpha * alpha.grad
        if val_x is not None:
            with torch.no_grad():
                acc = _accuracy(_lp_pp_logits(val_x, weight, bias, alpha, text), val_y)
            if acc >= best_acc:  # the later epoch among equals, as the reference
                best_acc, best_epoch = acc, epoch + 1
                snapshot = (weight.detach().clone(), bias.detach().clone(), alpha.detach().clone())
    if val_x is None or epochs == 0:
        best_epoch = epochs
        snapshot = (weight.detach().clone(), bias.detach().clone(), alpha.detach().clone())
    hparams = {
        "epochs": epochs,
        "momentum": float(momentum),
        "alpha_every": alpha_every,
        "chosen_epoch": best_epoch,
        "lr_w": lr_w,
        "lr_alpha": lr_alpha,
        "init_alpha": init_alpha,
        "val_accuracy": best_acc if val_x is not None else None,
    }
    w, b, a = snapshot
    return LPPlusPlus(train.classnames, hparams, weight=w, bias=b, alpha=a, text_weights=text)


# ---------------------------------------------------------------------------------------------------------------
# CLAP


def _cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, scale: float) -> torch.Tensor:
    """s * normalize(f) @ normalize(P)^T; prototypes (C, D) -> (N, C)."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).T


def clap_multipliers(zero_shot_logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CLAP's initial class-wise Lagrange multipliers: for each class, the mean zero-shot softmax probability of
    the true class over its support rows (a class zero-shot already gets right is held close to its text weight).
    zero_shot_logits (N, C), labels (N,) -> (C,); a class without rows gets 0."""
    probs = zero_shot_logits.softmax(dim=-1).gather(1, labels[:, None]).squeeze(1)  # (N,)
    sums = torch.zeros(num_classes, dtype=probs.dtype, device=probs.device).index_add_(0, labels, probs)
    return sums / torch.bincount(labels, minlength=num_classes).clamp_min(1).to(probs.dtype)


def clap_outer_step(
    distance: torch.Tensor, multipliers: torch.Tensor, penalty: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLAP's adaptive augmented-Lagrangian update (PHR): multipliers <- max(0, lambda + rho h), then
    rho <- h, where h (C,) is each class's current squared distance to its zero-shot weight."""
    return (multipliers + penalty * distance).clamp_min(0.0), distance.clone()


def clap_penalty(prototypes: torch.Tensor, anchors: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """CLAP's constraint term `mean_c lambda_c ||p_c - t_c||^2`: prototypes (C, D), anchors t (C, D) the
    unnormalised mean prompt embeddings, multipliers lambda (C,) -> scalar. As the reference's
    `AdapterMethod.zero_shot_constraint` (github.com/jusiro/CLAP, trainers/adapters.py), "l2" branch."""
    return (multipliers * (prototypes - anchors).square().sum(dim=-1)).mean()


class ClapAdapter(Adapter):
    """CLAP's constrained linear probe. State: prototypes (C, D); hparams logit_scale."""

    method = "clap"

    def __init__(self, classnames: Sequence[str], hparams: dict, *, prototypes: torch.Tensor) -> None:
        super().__init__(classnames, hparams)
        self.register_buffer("prototypes", prototypes.detach().float().clone())

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        f = self.check_features(features, self.prototypes.shape[1]).to(self.prototypes.device)
        return _cosine_logits(f, self.prototypes, self.hparams["logit_scale"])


@register("clap")
@_small_steps_on_one_thread
def fit_clap(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    lr: float = 0.1,
    epochs: int = 300,
    batch_size: int = 256,
    momentum: float = 0.9,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    constraint: str = "l2",
    adaptive: bool = False,
    seed: int = 1,
) -> ClapAdapter:
    """CLAP (Silva-Rodriguez et al., CVPR 2024): a cosine linear probe whose class prototypes start at the
    zero-shot text weights, trained with cross-entropy plus the class-wise penalty
    `mean_c lambda_c ||p_c - t_c||^2`; lambda_c is the zero-shot probability of class c on its own support rows
    (`clap_multipliers`), so classes zero-shot already handles stay near their text weight and the others may move.
    Recipe as the authors' `SGD_lr1e-1_B256_ep300`: SGD lr 0.1, momentum 0.9, no weight decay, 300 epochs, batch
    256, one constant warm-up epoch at 1e-5 then cosine. The training pool is every augmented view when `views` exist
    (the reference caches 20 per image), else the plain features; each epoch draws ceil(N / batch) batches from the
    shuffled pool, N = support images, as the reference. constraint: "l2" (the paper), "balanced" (every
    lambda_c = 1) or "none" (plain zero-shot-initialised probe, their ZS-LP baseline). adaptive=True applies the
    repository's PHR outer step after each epoch (`clap_outer_step`). Validation-free: `val` is not read.

    The anchors t_c are what the reference uses (jusiro/CLAP, trainers/adapters.py: `_get_base_text_features`
    returns `text_embeddings.mean(1)`, the UNnormalised mean of each class's prompt embeddings; `AdapterMethod`
    initialises its prototypes at them and `zero_shot_constraint` / `outer_step` measure
    `(prototypes - base_text_features).pow(2).sum(-1)` against them; logits normalise both sides): the
    FitContext's `prompt_means` (`context_for` fills them). The initial multipliers come from the zero-shot
    logits of those initial prototypes, as the reference's `init_lagrangian_multipliers(labels, logits_zs)`.
    A FitContext without prompt_means (features only) anchors to its unit text weights instead;
    `hparams["anchors"]` says which.
    """
    del val  # CLAP is validation-free by design
    check_positive("lr", lr)
    check_count("epochs", epochs, 0)
    check_count("batch_size", batch_size, 1)
    check_positive("momentum", momentum, allow_zero=True)
    check_count("warmup_epochs", warmup_epochs, 0)
    check_positive("warmup_lr", warmup_lr)
    if constraint not in ("l2", "balanced", "none"):
        raise ValueError(f"constraint must be 'l2', 'balanced' or 'none', got {constraint!r}")
    x, y, text = _prepare(ctx, train)
    scale, c, n = float(ctx.logit_scale), train.num_classes, len(train)
    pool = _view_pool(train, x.device)  # (V, N, D)
    pool_x = pool.reshape(-1, train.dim)  # (V N, D)
    pool_y = y.repeat(pool.shape[0])  # (V N,)
    anchors = text if ctx.prompt_means is None else ctx.prompt_means.to(device=x.device, dtype=torch.float32)
    base = anchors.T.contiguous()  # (C, D) the reference's base_text_features: start and constraint anchor
    with torch.no_grad():
        if constraint == "l2":
            multipliers = clap_multipliers(_cosine_logits(pool_x, base, scale), pool_y, c)
        else:
            multipliers = torch.full((c,), 1.0 if constraint == "balanced" else 0.0, device=x.device)
    penalty = torch.zeros_like(multipliers)
    prototypes = torch.nn.Parameter(base.clone())
    optimizer = torch.optim.SGD([prototypes], lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(seed)
    num_batches = math.ceil(n / batch_size)
    initial = multipliers.clone()
    for epoch in range(epochs):
        set_lr(optimizer, warmup_cosine_lr(lr, epoch, epochs, warmup_epochs, warmup_lr))
        for batch in shuffled_batches(pool_x.shape[0], batch_size, generator)[:num_batches]:
            loss = F.cross_entropy(_cosine_logits(pool_x[batch], prototypes, scale), pool_y[batch])
            if constraint != "none":
                loss = loss + clap_penalty(prototypes, base, multipliers)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if adaptive and constraint != "none":
            with torch.no_grad():
                multipliers, penalty = clap_outer_step((prototypes - base).square().sum(dim=-1), multipliers, penalty)
    hparams = {
        "logit_scale": scale,
        "lr": float(lr),
        "epochs": epochs,
        "batch_size": batch_size,
        "momentum": float(momentum),
        "warmup_epochs": warmup_epochs,
        "warmup_lr": float(warmup_lr),
        "constraint": constraint,
        "anchors": "text_weights" if ctx.prompt_means is None else "prompt_means",
        "adaptive": bool(adaptive),
        "initial_multipliers": [float(v) for v in initial.tolist()],
        "seed": seed,
    }
    return ClapAdapter(train.classnames, hparams, prototypes=prototypes)


# ---------------------------------------------------------------------------------------------------------------
# Linear probe


class LinearProbeAdapter(Adapter):
    """The CLIP-paper linear probe (`clipforge.eval.probe`). State: weight (D, C) and bias (C,), float64, applied to
    raw features as `f @ W + b`; hparams l2."""

    method = "linear_probe"

    def __init__(
        self, classnames: Sequence[str], hparams: dict, *, weight: torch.Tensor, bias: torch.Tensor
    ) -> None:
        super().__init__(classnames, hparams)
        self.register_buffer("weight", weight.detach().double().clone())
        self.register_buffer("bias", bias.detach().double().clone())

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        f = self.check_features(features, self.weight.shape[0]).to(self.weight.device)
        return (f.double() @ self.weight + self.bias).float()  # (N, C), solved in float64 as the probe


@register("linear_probe")
def fit_linear_probe(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    l2: float | None = None,
    max_iter: int = 1000,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> LinearProbeAdapter:
    """The CLIP-paper linear probe (`clipforge.eval.probe`): L2-regularised multinomial logistic regression in
    float64 on the support features. The strength `l2` (on the mean loss) is given, or chosen by the probe's
    parametric binary search (1e-6 .. 1e2, refined to 8 steps per decade): scored on `val` when given, else on a
    stratified `val_fraction` split carved from `train` with `seed` (`probe.select_l2`, the probe's own protocol).
    The final fit uses the training rows only. The text weights are not used.
    """
    del ctx  # the probe is purely visual
    check_count("max_iter", max_iter, 1)
    x, y = train.features.float(), train.labels.long()
    c = train.num_classes
    val_top1, init = None, None
    if l2 is not None:
        check_positive("l2", l2, allow_zero=True)
    with cpu_threads_for(x.device, len(train), train.dim, c):
        if l2 is None and val is not None:
            l2, val_top1, init = probe.search_l2(x, y, val.features.float(), val.labels.long(), c, None, max_iter)
        elif l2 is None:  # exactly `probe.linear_probe`'s search, so the two agree
            fit_idx, val_idx = probe.stratified_split(y, c, val_fraction, seed)
            x_fit, y_fit, x_val, y_val = x[fit_idx], y[fit_idx], x[val_idx], y[val_idx]
            l2, val_top1, init = probe.search_l2(x_fit, y_fit, x_val, y_val, c, None, max_iter)
        # Warm start from the chosen fit, as the probe: the same optimum in fewer steps, and the same stopping point.
        weight, bias = probe.fit_logistic(x, y, c, float(l2), max_iter, init=init)
    hparams = {
        "l2": float(l2),
        "max_iter": max_iter,
        "val_fraction": float(val_fraction),
        "seed": seed,
        "l2_chosen_on": "given" if val_top1 is None else ("val" if val is not None else "carved from train"),
        "val_top1": val_top1,
    }
    return LinearProbeAdapter(train.classnames, hparams, weight=weight, bias=bias)
