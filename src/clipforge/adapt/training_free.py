"""Training-free few-shot methods: closed-form adapters built from the support features in one pass.

- zeroshot: the text classifier alone, `logit_scale * f @ W_t` (the baseline every method must beat);
- prototype: class means of the support features, `logit_scale * f @ P^T`;
- nn1 (Megahed et al. 2025, few-shot inspection): per class, the highest cosine similarity of `f` to that class's
  examples, divided by a temperature (so a softmax over classes reads as a confidence);
- tip (Tip-Adapter, Zhang et al. 2022): `logit_scale f W_t + alpha exp(-beta (1 - f K^T)) L`;
- gda (Wang et al. 2024): Gaussian discriminant analysis with a shared shrinkage covariance on top of zero-shot,
  `logit_scale f W_t + alpha (f W + b)`.

Grid searches (tip, gda) score candidates on `val` only and record the chosen values in `adapter.hparams`; without
`val` the papers' default values are used. All state is float32 buffers, saved with safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Adapter, FitContext, LabelledFeatures, register


def _training_free(fn):
    """Mark a fit function as closed-form (`fit` runs it under no_grad)."""
    fn.training_free = True
    return fn


def _class_members(train: LabelledFeatures, method: str) -> list[torch.Tensor]:
    """Row indices of each class; a ValueError naming the classes without any support example."""
    members = [torch.nonzero(train.labels == c).flatten() for c in range(train.num_classes)]
    empty = [train.classnames[c] for c, idx in enumerate(members) if idx.numel() == 0]
    if empty:
        raise ValueError(
            f"adapt method {method!r} needs at least one training example of every class; none for: "
            f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}"
        )
    return members


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of logits (..., M, C) against labels (M,): shape (...)."""
    return (logits.argmax(dim=-1) == labels).float().mean(dim=-1)


class _ScaledCosine(Adapter):
    """logits = logit_scale * f @ weight, weight (D, C) with unit-norm columns."""

    def __init__(self, classnames: Sequence[str], hparams: dict, weight: torch.Tensor) -> None:
        super().__init__(classnames, hparams)
        self.register_buffer("weight", weight.float().contiguous())  # (D, C)

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        f = self.check_features(features, self.weight.shape[0])  # (N, D)
        return float(self.hparams["logit_scale"]) * f @ self.weight  # (N, C)


class ZeroShotAdapter(_ScaledCosine):
    """The zero-shot baseline: logit_scale * f @ text_weights (the classifier every adapter starts from)."""

    method = "zeroshot"


class PrototypeAdapter(_ScaledCosine):
    """Class prototypes: logit_scale * f @ P^T with P the renormalised mean support feature of each class."""

    method = "prototype"


@register("zeroshot")
@_training_free
def fit_zeroshot(ctx: FitContext, train: LabelledFeatures, val: LabelledFeatures | None) -> Adapter:
    """Zero-shot CLIP: the text weights are the classifier; the support set is not used."""
    return ZeroShotAdapter(train.classnames, {"logit_scale": ctx.logit_scale}, ctx.text_weights)


@register("prototype")
@_training_free
def fit_prototype(ctx: FitContext, train: LabelledFeatures, val: LabelledFeatures | None) -> Adapter:
    """Class prototypes: the renormalised mean of each class's L2-normalised support features."""
    members = _class_members(train, "prototype")
    f = F.normalize(train.features.float(), dim=-1)  # (N, D)
    prototypes = F.normalize(torch.stack([f[idx].mean(dim=0) for idx in members]), dim=-1)  # (C, D)
    return PrototypeAdapter(train.classnames, {"logit_scale": ctx.logit_scale}, prototypes.T)


class NearestNeighbourAdapter(Adapter):
    """Megahed et al.'s 1-NN rule: logits[c] = max_{i in class c} cos(f, k_i) / temperature."""

    method = "nn1"

    def __init__(self, classnames: Sequence[str], hparams: dict, keys: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__(classnames, hparams)
        self.register_buffer("keys", keys.float().contiguous())  # (N, D) L2-normalised support features
        self.register_buffer("labels", labels.long().contiguous())  # (N,)

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        f = self.check_features(features, self.keys.shape[1])  # (M, D)
        sims = f @ self.keys.T  # (M, N)
        best = sims.new_full((f.shape[0], self.num_classes), float("-inf"))  # (M, C)
        best = best.scatter_reduce(1, self.labels.expand(f.shape[0], -1), sims, reduce="amax", include_self=True)
        return best / float(self.hparams["temperature"])

    def nearest(self, features: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The `k` most similar support examples of each feature row: (similarities, indices), each (M, k); the
        evidence behind a decision (which learning-set images it resembles)."""
        f = self.check_features(features, self.keys.shape[1])
        return (f @ self.keys.T).topk(min(k, self.keys.shape[0]), dim=-1)


@register("nn1")
@_training_free
def fit_nn1(
    ctx: FitContext, train: LabelledFeatures, val: LabelledFeatures | None, *, temperature: float = 0.01
) -> Adapter:
    """Megahed et al. (2025): keep every support embedding; a query takes the class of its most similar example.
    `temperature` 0.01 makes softmax(logits) a confidence over classes (a 0.01 cosine gap is a factor e)."""
    if not temperature > 0:
        raise ValueError(f"nn1: temperature must be > 0, got {temperature}")
    _class_members(train, "nn1")
    keys = F.normalize(train.features.float(), dim=-1)
    return NearestNeighbourAdapter(train.classnames, {"temperature": float(temperature)}, keys, train.labels)


class TipAdapter(Adapter):
    """Tip-Adapter: logits = logit_scale f W_t + alpha exp(-beta (1 - f K^T)) L."""

    method = "tip"

    def __init__(
        self,
        classnames: Sequence[str],
        hparams: dict,
        text_weights: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
    ) -> None:
        super().__init__(classnames, hparams)
        self.register_buffer("text_weights", text_weights.float().contiguous())  # (D, C)
        self.register_buffer("keys", keys.float().contiguous())  # (N, D) cache keys
        self.register_buffer("values", values.float().contiguous())  # (N, C) one-hot cache values

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        f = self.check_features(features, self.keys.shape[1])  # (M, D)
        h = self.hparams
        return tip_logits(f, self.keys, self.values, self.text_weights, h["alpha"], h["beta"], h["logit_scale"])


def tip_logits(
    features: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    text_weights: torch.Tensor,
    alpha: float,
    beta: float,
    logit_scale: float,
) -> torch.Tensor:
    """Tip-Adapter's logits `s f W_t + alpha exp(-beta (1 - f K^T)) L` (Tip-Adapter and Tip-Adapter-F).

    features (N, D), keys K (M, D) (one row per cache entry), values L (M, C) one-hot, text_weights (D, C).
    """
    cache = torch.exp(-float(beta) * (1.0 - features @ keys.T)) @ values  # (N, C)
    return float(logit_scale) * features @ text_weights + float(alpha) * cache


def tip_grid(scale: float, steps: int) -> list[float]:
    """Tip-Adapter's search list: `steps` values from 0.1 up to (not including) `scale`, evenly spaced."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def search_tip(
    affinity: torch.Tensor,
    values: torch.Tensor,
    clip_logits: torch.Tensor,
    labels: torch.Tensor,
    betas: Sequence[float],
    alphas: Sequence[float],
) -> tuple[float, float, float]:
    """Tip-Adapter's `search_hp` on validation rows; returns (alpha, beta, val accuracy).

    affinity (N, M) = f K^T of the validation features, values (M, C), clip_logits (N, C) = s f W_t, labels (N,).
    As the reference: betas outer, alphas inner, the first setting with the best accuracy wins.
    """
    alpha_t = torch.tensor(list(alphas), dtype=clip_logits.dtype, device=clip_logits.device)[:, None, None]
    best = (-1.0, float(alphas[0]), float(betas[0]))
    for beta in betas:
        cache = torch.exp(-beta * (1.0 - affinity)) @ values  # (N, C)
        accs = _accuracy(clip_logits[None] + alpha_t * cache[None], labels)  # (A,)
        i = int(accs.argmax())  # first maximum: the reference keeps the first of equal accuracies
        if float(accs[i]) > best[0]:
            best = (float(accs[i]), float(alphas[i]), float(beta))
    return best[1], best[2], best[0]


@register("tip")
@_training_free
def fit_tip(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    alpha: float = 1.0,
    beta: float = 5.5,
    search: bool = True,
    search_scale: tuple[float, float] = (7.0, 3.0),
    search_steps: tuple[int, int] = (200, 20),
) -> Adapter:
    """Tip-Adapter (Zhang et al., ECCV 2022). Cache keys K are the support features, averaged over the augmented
    views when given (the paper's 10 augmentation epochs); values L are their one-hot labels. alpha=1, beta=5.5
    are the paper's defaults. With `val` and `search`, (beta, alpha) come from the official `search_hp` grid
    (`search_scale` = (beta max, alpha max), `search_steps` from the ImageNet config), scored on val only."""
    keys = train.mean_views()  # (N, D)
    values = F.one_hot(train.labels.long(), train.num_classes).float()  # (N, C)
    hparams = {"alpha": float(alpha), "beta": float(beta), "logit_scale": ctx.logit_scale, "searched": False}
    if val is not None and search:
        betas, alphas = tip_grid(search_scale[0], search_steps[0]), tip_grid(search_scale[1], search_steps[1])
        val_x = val.features.float()
        clip_logits = ctx.logit_scale * val_x @ ctx.text_weights.float()  # (M, C)
        best_alpha, best_beta, acc = search_tip(val_x @ keys.T, values, clip_logits, val.labels, betas, alphas)
        hparams.update(alpha=best_alpha, beta=best_beta, searched=True, val_accuracy=acc)
    return TipAdapter(train.classnames, hparams, ctx.text_weights, keys, values)


class GDAAdapter(Adapter):
    """GDA: logits = logit_scale f W_t + alpha (f W + b)."""

    method = "gda"

    def __init__(
        self, classnames: Sequence[str], hparams: dict, text_weights: torch.Tensor, W: torch.Tensor, b: torch.Tensor
    ) -> None:
        super().__init__(classnames, hparams)
        self.register_buffer("text_weights", text_weights.float().contiguous())  # (D, C)
        self.register_buffer("W", W.float().contiguous())  # (D, C) = Sigma^-1 mu^T
        self.register_buffer("b", b.float().contiguous())  # (C,)

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        f = self.check_features(features, self.W.shape[0])  # (M, D)
        zero_shot = float(self.hparams["logit_scale"]) * f @ self.text_weights
        return zero_shot + float(self.hparams["alpha"]) * (f @ self.W + self.b)


def gda_parameters(samples: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GDA's linear classifier (W (D, C), b (C,)) from samples (N, D), computed in float64.

    Class means mu_c; the shared covariance S of the class-centred samples; the precision is the official code's
    shrinkage estimate `D * pinv((N - 1) S + trace(S) I)` (a ridge towards the average variance, well defined with
    fewer samples than dimensions); W = Sigma^-1 mu^T, b = log(1/C) - mu_c^T Sigma^-1 mu_c / 2 (uniform prior)."""
    x = samples.double()
    mus = torch.stack([x[labels == c].mean(dim=0) for c in range(num_classes)])  # (C, D)
    centred = x - mus[labels]  # (N, D)
    n, d = centred.shape
    cov = torch.cov(centred.T) if n > 1 else torch.zeros(d, d, dtype=x.dtype)  # (D, D)
    precision = d * torch.linalg.pinv((n - 1) * cov + torch.trace(cov) * torch.eye(d, dtype=x.dtype))  # (D, D)
    W = precision @ mus.T  # (D, C)
    b = torch.full((num_classes,), 1.0 / num_classes, dtype=x.dtype).log() - 0.5 * (mus @ precision * mus).sum(-1)
    return W.float(), b.float()


GDA_ALPHA_GRID = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


@register("gda")
@_training_free
def fit_gda(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    alpha: float = 0.1,
    search: bool = True,
    alpha_grid: tuple[float, ...] = GDA_ALPHA_GRID,
) -> Adapter:
    """GDA (Wang et al., ICLR 2024, "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation"). The
    samples are the augmented views pooled (the paper's augmentation epochs) when given, else the support
    features. With `val` and `search`, alpha is the first best of the official grid on val; without, 0.1 (the
    official code's starting value)."""
    _class_members(train, "gda")
    if train.views is not None:
        samples = train.views.reshape(-1, train.dim)  # (V*N, D): each view is one more sample
        labels = train.labels.repeat(train.views.shape[0])
    else:
        samples, labels = train.features, train.labels
    W, b = gda_parameters(samples.float(), labels.long(), train.num_classes)
    hparams = {"alpha": float(alpha), "logit_scale": ctx.logit_scale, "searched": False}
    if val is not None and search:
        f = val.features.float()
        zero_shot, gda = ctx.logit_scale * f @ ctx.text_weights.float(), f @ W + b  # (M, C) each
        best_acc, best_alpha = -1.0, float(alpha_grid[0])
        for candidate in alpha_grid:
            acc = float(_accuracy(zero_shot + candidate * gda, val.labels))
            if acc > best_acc:
                best_acc, best_alpha = acc, float(candidate)
        hparams.update(alpha=best_alpha, searched=True, val_accuracy=best_acc, alpha_grid=list(alpha_grid))
    return GDAAdapter(train.classnames, hparams, ctx.text_weights, W, b)
