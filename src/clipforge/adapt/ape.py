"""APE, training-free (Zhu, Zhang, ... , Gao, "Not All Features Matter: Enhancing Few-shot CLIP with Adaptive
Prior Refinement", ICCV 2023, github.com/yangyangyang127/APE, main.py `APE` and utils.py `cal_criterion`).

APE keeps a Tip-Adapter cache but (1) scores it on a subset of the feature channels: the channels where the
classes differ most, chosen by `w0 * (-inter-class similarity) + w1 * (variance of the text weights across
classes)`, and (2) re-weights each cache entry by how badly the zero-shot classifier explains it (a KL term):

    R_fW = s f W_t                                  (zero-shot on all channels)
    R_fF = f' K'^T                                  (cosine on the selected, renormalised channels)
    div_i = sum_c L_ic log2((L_ic + 1e-6) / (softmax(K'_i W'_t)_c + 1e-6))
    logits = R_fW + alpha exp(-beta (1 - R_fF)) (L * exp(gamma div))

f' / K' / W'_t are the features, cache keys and text weights restricted to the selected channels and
L2-renormalised (W'_t per class column). The inter-class similarity of channel d is the mean of x_d y_d over all
pairs (x, y) of vectors from DIFFERENT classes, each class contributing its text weight and its support features;
computed in closed form (sum over pairs = (sum_i S_i)^2 - sum_i S_i^2 with S_i the per-class sums), which equals
the reference's four nested loops and also covers classes with unequal numbers of shots.

Defaults are the reference's ImageNet config (configs/imagenet.yaml): 500 of RN50's 1024 channels (so
`feat_num=None` keeps round(D * 500 / 1024)), w = (0.7, 0.3), init (beta, alpha, gamma) = (1, 2, 0.1), and the
search grid scale (7, 7, 0.5) / steps (200, 20, 5), run on `val` only (beta outer, alpha, gamma inner; the first
strict best wins, as the reference). Without `val` the init values are used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Adapter, FitContext, LabelledFeatures, register


def ape_channel_criterion(
    text_weights: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, w: tuple[float, float]
) -> torch.Tensor:
    """APE's per-channel score (D,): `-w0 * inter-class similarity + w1 * var(text weights over classes)`.

    text_weights (D, C), keys (N, D) support features, labels (N,). Higher is a more discriminative channel."""
    num_classes = text_weights.shape[1]
    text = text_weights.double().T  # (C, D)
    k = keys.double()
    per_class = text + torch.zeros_like(text).index_add_(0, labels.long(), k)  # (C, D): S_i, text + support sums
    counts = 1.0 + torch.bincount(labels.long(), minlength=num_classes).double()  # (C,): n_i vectors per class
    pair_sum = per_class.sum(dim=0).pow(2) - per_class.pow(2).sum(dim=0)  # (D,): sum over cross-class pairs
    pair_count = counts.sum().pow(2) - counts.pow(2).sum()
    if pair_count <= 0:
        raise ValueError("ape needs at least two classes to measure inter-class similarity")
    sim = pair_sum / pair_count  # (D,)
    return (-w[0] * sim + w[1] * text_weights.double().var(dim=1)).float()


def ape_parts(
    features: torch.Tensor,
    text_weights: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    logit_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The hyper-parameter-free pieces of APE's logits: zero-shot R_fW (M, C), affinity R_fF (M, N) and the
    cache entries' divergence div (N, 1)."""
    sel_text = F.normalize(text_weights[indices], dim=0)  # (D', C)
    sel_keys = F.normalize(keys[:, indices], dim=-1)  # (N, D')
    sel_f = F.normalize(features[:, indices], dim=-1)  # (M, D')
    zero_shot = logit_scale * features @ text_weights  # (M, C)
    affinity = sel_f @ sel_keys.T  # (M, N)
    key_probs = (sel_keys @ sel_text).softmax(dim=1)  # (N, C)
    div = (values * torch.log2((values + 1e-6) / (key_probs + 1e-6))).sum(dim=1, keepdim=True)  # (N, 1)
    return zero_shot, affinity, div


def ape_logits(
    zero_shot: torch.Tensor,
    affinity: torch.Tensor,
    div: torch.Tensor,
    values: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
) -> torch.Tensor:
    """R_fW + alpha exp(-beta (1 - R_fF)) (L * exp(gamma div)) -> (M, C)."""
    return zero_shot + alpha * torch.exp(-beta * (1.0 - affinity)) @ (values * torch.exp(gamma * div))


class APEAdapter(Adapter):
    """Training-free APE. State: text_weights (D, C), keys (N, D), values (N, C) one-hot, indices (D',) the
    selected channels; hparams alpha, beta, gamma, logit_scale."""

    method = "ape"

    def __init__(
        self,
        classnames: Sequence[str],
        hparams: dict,
        text_weights: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        indices: torch.Tensor,
    ) -> None:
        super().__init__(classnames, hparams)
        self.register_buffer("text_weights", text_weights.float().contiguous())  # (D, C)
        self.register_buffer("keys", keys.float().contiguous())  # (N, D)
        self.register_buffer("values", values.float().contiguous())  # (N, C)
        self.register_buffer("indices", indices.long().contiguous())  # (D',)

    def feature_logits(self, features: torch.Tensor) -> torch.Tensor:
        f = self.check_features(features, self.keys.shape[1]).to(self.keys.device)  # (M, D)
        h = self.hparams
        zero_shot, affinity, div = ape_parts(
            f, self.text_weights, self.keys, self.values, self.indices, float(h["logit_scale"])
        )
        return ape_logits(zero_shot, affinity, div, self.values, h["alpha"], h["beta"], h["gamma"])


def _grid(scale: float, steps: int, start: float) -> list[float]:
    """The reference's lists: `steps` values from `start` up to (not including) `scale`."""
    return [i * (scale - start) / steps + start for i in range(steps)]


@register("ape")
def fit_ape(
    ctx: FitContext,
    train: LabelledFeatures,
    val: LabelledFeatures | None,
    *,
    feat_num: int | None = None,
    w: tuple[float, float] = (0.7, 0.3),
    alpha: float = 2.0,
    beta: float = 1.0,
    gamma: float = 0.1,
    search: bool = True,
    search_scale: tuple[float, float, float] = (7.0, 7.0, 0.5),
    search_steps: tuple[int, int, int] = (200, 20, 5),
) -> APEAdapter:
    """APE (training-free). Cache keys are the support features (mean of the augmented views when given, the
    reference's 10 augmentation epochs), values their one-hot labels; `feat_num` channels are kept (None: the
    reference's 500/1024 share of D). With `val` and `search`, (beta, alpha, gamma) come from the reference grid
    (beta, alpha from 0.1 to scale; gamma from 0) scored on val only."""
    if len(train) == 0:
        raise ValueError("ape: the training set is empty; give at least one labelled feature per class")
    dim = train.dim
    if feat_num is None:
        feat_num = max(1, round(dim * 500 / 1024))
    if isinstance(feat_num, bool) or not isinstance(feat_num, int) or not 1 <= feat_num <= dim:
        raise ValueError(f"ape: feat_num must be an integer in [1, {dim}] (the feature width), got {feat_num!r}")
    if len(w) != 2 or len(search_scale) != 3 or len(search_steps) != 3:
        raise ValueError("ape: w is a pair (w0, w1); search_scale/search_steps are (beta, alpha, gamma) triples")
    keys = train.mean_views()  # (N, D)
    values = F.one_hot(train.labels.long(), train.num_classes).float()  # (N, C)
    text = ctx.text_weights.float()
    criterion = ape_channel_criterion(text, keys, train.labels, (float(w[0]), float(w[1])))  # (D,)
    indices = torch.topk(criterion, k=feat_num).indices  # (D',)
    hparams = {
        "alpha": float(alpha),
        "beta": float(beta),
        "gamma": float(gamma),
        "logit_scale": float(ctx.logit_scale),
        "feat_num": feat_num,
        "w": [float(w[0]), float(w[1])],
        "searched": False,
    }
    if val is not None and search:
        zero_shot, affinity, div = ape_parts(val.features.float(), text, keys, values, indices, ctx.logit_scale)
        betas = _grid(search_scale[0], search_steps[0], 0.1)
        alphas = torch.tensor(_grid(search_scale[1], search_steps[1], 0.1))  # (A,)
        gammas = [i * search_scale[2] / search_steps[2] for i in range(search_steps[2])]
        soft = torch.stack([values * torch.exp(g * div) for g in gammas])  # (G, N, C)
        best = (-1.0, float(beta), float(alpha), float(gamma))
        for b in betas:
            cache = torch.exp(-b * (1.0 - affinity)) @ soft  # (G, M, C)
            logits = zero_shot + alphas[:, None, None, None] * cache[None]  # (A, G, M, C)
            accs = (logits.argmax(dim=-1) == val.labels.long()).float().mean(dim=-1).flatten()  # (A*G,) alpha-major
            i = int(accs.argmax())  # first maximum in the reference's (alpha, gamma) loop order
            if float(accs[i]) > best[0]:
                best = (float(accs[i]), b, float(alphas[i // len(gammas)]), gammas[i % len(gammas)])
        hparams.update(
            beta=best[1], alpha=best[2], gamma=best[3], searched=True, val_accuracy=best[0],
            search_scale=[float(s) for s in search_scale], search_steps=[int(s) for s in search_steps],
        )
    return APEAdapter(train.classnames, hparams, text, keys, values, indices)


fit_ape.training_free = True
