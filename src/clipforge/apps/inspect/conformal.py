"""Split conformal classification: prediction sets whose coverage is guaranteed at a chosen error rate alpha.

An inspector that answers "nominal" for every part is only useful if one knows how often it is wrong. Split
conformal prediction (Vovk et al. 2005; Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction")
turns any classifier's probabilities into a *set* of classes per image such that, for a fresh image exchangeable
with a held-out calibration split, P(true class in set) >= 1 - alpha, whatever the model and however poorly
calibrated its probabilities are. Ambiguous images get larger sets, which is what an engineer wants flagged.

Recipe. A nonconformity score s(x, y) says how unusual label y is for image x:

- "lac" (least ambiguous classifier, the "softmax" score): s = 1 - p_y;
- "aps" (adaptive prediction sets, Romano et al. 2020): s = (mass of the classes strictly more probable than y)
  + p_y, i.e. the probability mass one must take, from the top, to reach y. With `randomize=True` the last term
  becomes U * p_y, U ~ Uniform(0, 1) per image, which makes the coverage exact rather than conservative; it is
  off by default so that a set does not change from one run to the next.

On n calibration examples with scores s_1..s_n (each at its true label), the threshold is the k-th smallest
score, k = ceil((n + 1)(1 - alpha)) (the exact finite-sample quantile, "higher" interpolation), and the set of x
is {y : s(x, y) <= q}. Then 1 - alpha <= P(covered) <= 1 - alpha + 1 / (n + 1) (the upper bound when scores
have no ties). When k > n, i.e. n < 1 / alpha - 1, no finite threshold guarantees the coverage: q = +inf and
every set is the full label set (a warning says so).

Modes. "global" uses one threshold for all classes: coverage holds on average over classes, so a rare or hard
class (a defect kind) can be covered far less often than 1 - alpha. "class" (Mondrian, class-conditional
conformal) calibrates one threshold per class from the calibration examples *of that class only*, which
guarantees coverage >= 1 - alpha for every class separately; a class with fewer than 1 / alpha - 1 calibration
examples gets q = +inf (it is in every set) and a warning naming it.

Non-empty sets: when no class passes its threshold, the set is the top-probability class. Adding a class to a
set can only raise coverage, so the guarantee is kept.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

MODES = ("global", "class")
SCORES = ("lac", "aps")
FORMAT = "clipforge.conformal"
FORMAT_VERSION = 1


def _sum_tolerance(dtype: torch.dtype) -> float:
    """How far a row of probabilities may sum from 1: softmax in bfloat16 / float16 rounds each entry by ~eps, so
    a fixed float32-sized bar would refuse honest low-precision outputs; logits or sigmoid outputs miss by far more.
    """
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(1e-4, 4.0 * eps)


def _as_probs(probs: Any, name: str, num_classes: int | None = None) -> torch.Tensor:
    """`probs` as a float64 (N, C) tensor after checking it is a batch of probability vectors."""
    try:
        tensor = torch.as_tensor(probs)
    except (TypeError, ValueError, RuntimeError) as error:
        kind = type(probs).__name__
        raise ValueError(f"{name}: expected an (N, C) array of class probabilities, got {kind}") from error
    if tensor.dim() != 2:
        raise ValueError(f"{name}: expected shape (N, C) (one probability row per image), got {tuple(tensor.shape)}")
    if not (tensor.dtype.is_floating_point):
        raise ValueError(f"{name}: expected floating-point probabilities, got dtype {tensor.dtype}")
    n, c = tensor.shape
    if c < 2:
        raise ValueError(f"{name}: need at least 2 classes (columns), got {c}")
    if num_classes is not None and c != num_classes:
        raise ValueError(f"{name}: has {c} classes (columns) but the predictor was calibrated on {num_classes}")
    out = tensor.detach().to("cpu", torch.float64)
    if n == 0:
        return out
    if not torch.isfinite(out).all():
        raise ValueError(f"{name}: contains NaN or inf (the model's outputs are not finite)")
    tol = _sum_tolerance(tensor.dtype)
    low, high = out.min().item(), out.max().item()
    if low < 0.0 or high > 1.0 + tol:
        raise ValueError(
            f"{name}: values must be probabilities in [0, 1], found range [{low:.4g}, {high:.4g}]; pass softmax "
            "probabilities (e.g. logits.softmax(-1)), not logits"
        )
    error = (out.sum(dim=1) - 1.0).abs()
    worst = int(error.argmax())
    if error[worst].item() > tol:
        raise ValueError(
            f"{name}: row {worst} sums to {out[worst].sum().item():.6g}, not 1 (tolerance {tol:g}); each row must be "
            "a probability distribution over the classes (apply softmax over the class dimension)"
        )
    return out


def _as_labels(labels: Any, n: int, num_classes: int, name: str) -> torch.Tensor:
    """`labels` as an int64 (N,) tensor after checking its shape and range."""
    try:
        tensor = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as error:
        kind = type(labels).__name__
        raise ValueError(f"{name}: expected an (N,) array of integer class indices, got {kind}") from error
    if tensor.dtype == torch.bool or tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise ValueError(f"{name}: expected integer class indices, got dtype {tensor.dtype}")
    if tensor.dim() != 1 or tensor.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) (one label per probability row), got {tuple(tensor.shape)}")
    out = tensor.to("cpu", torch.int64)
    if n and (out.min().item() < 0 or out.max().item() >= num_classes):
        bad = int(((out < 0) | (out >= num_classes)).nonzero()[0])
        raise ValueError(f"{name}: label {out[bad].item()} at index {bad} is outside [0, {num_classes - 1}]")
    return out


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha: the allowed miscoverage rate must be a number with 0 < alpha < 1, got {alpha!r}")
    return float(alpha)


def _check_choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def quantile_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)): the rank (1-based) of the calibration score used as threshold; k > n means
    no finite threshold exists. The product is rounded to 9 decimals first, so float noise (10 * 0.3 =
    3.0000000000000004) does not move k up by one and cost coverage efficiency."""
    return math.ceil(round((n + 1) * (1.0 - alpha), 9))


def conformal_quantile(scores: torch.Tensor, alpha: float) -> float:
    """The split-conformal threshold of calibration `scores` (n,): their k-th smallest value, k =
    ceil((n + 1)(1 - alpha)), or +inf when k > n (too few scores for this alpha: every set must be full)."""
    n = int(scores.numel())
    k = quantile_rank(n, alpha)
    if k > n:
        return math.inf
    return torch.sort(scores.reshape(-1).to(torch.float64)).values[k - 1].item()


def _uniforms(n: int, seed: int) -> torch.Tensor:
    """U ~ Uniform(0, 1), one per image (n, 1), from a generator of its own: reproducible, no global state."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, generator=generator, dtype=torch.float64)


def class_scores(probs: torch.Tensor, score: str, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """Nonconformity score of every class for every image, (N, C) float64 from probabilities (N, C) float64.

    "lac": 1 - p_y. "aps": sum of p_j over classes with p_j > p_y, plus p_y (times `uniforms` (N, 1) when given:
    randomised APS). Tied classes get equal scores, so they enter a set together: the score is a fixed function of
    the probabilities, which is all the coverage guarantee needs.
    """
    if score == "lac":
        return 1.0 - probs
    n, c = probs.shape
    descending, order = torch.sort(probs, dim=1, descending=True)  # (N, C) each
    # mass of the positions before j in descending order: (N, C), 0 at j = 0
    before = torch.cat([torch.zeros(n, 1, dtype=probs.dtype), torch.cumsum(descending, dim=1)[:, :-1]], dim=1)
    # a class tied with its predecessor takes the mass before the first member of its tie group ("strictly above")
    positions = torch.arange(c).expand(n, c)
    starts = torch.ones(n, c, dtype=torch.bool)
    starts[:, 1:] = descending[:, 1:] != descending[:, :-1]
    group_start = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), dim=1).values
    above = torch.empty_like(probs).scatter_(1, order, before.gather(1, group_start))  # back to class order (N, C)
    own = probs if uniforms is None else uniforms * probs
    return above + own


@dataclass(frozen=True)
class ConformalPredictor:
    """Calibrated prediction-set rule: class y is in the set of an image when its score <= thresholds[y].

    alpha: the miscoverage rate it was calibrated for (coverage >= 1 - alpha). mode: "global" (one threshold,
    repeated for every class) or "class" (one per class). score: "lac" or "aps"; randomize and seed: randomised
    APS and the seed of its uniforms. thresholds: per class, +inf where no finite threshold guarantees coverage.
    n_calibration: calibration examples used; class_counts: how many of them per class. class_names: optional
    names, used in warnings and reports.
    """

    alpha: float
    mode: str
    score: str
    thresholds: tuple[float, ...]
    n_calibration: int
    class_counts: tuple[int, ...]
    randomize: bool = False
    seed: int = 0
    class_names: tuple[str, ...] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes C the predictor was calibrated on."""
        return len(self.thresholds)

    def scores(self, probs: Any, generator_seed: int | None = None) -> torch.Tensor:
        """Nonconformity scores (m, C) float64 of every class for probabilities `probs` (m, C).

        Randomised APS draws its uniforms from `generator_seed` (default: the predictor's seed + 1, a stream
        distinct from the calibration draws), so the same inputs give the same sets."""
        return self._scores(_as_probs(probs, "probs", self.num_classes), generator_seed)

    def _scores(self, p: torch.Tensor, generator_seed: int | None) -> torch.Tensor:
        """`scores` of already validated float64 probabilities (m, C)."""
        uniforms = None
        if self.score == "aps" and self.randomize:
            uniforms = _uniforms(p.shape[0], self.seed + 1 if generator_seed is None else generator_seed)
        return class_scores(p, self.score, uniforms)

    def predict_sets(self, probs: Any, generator_seed: int | None = None, nonempty: bool = True) -> torch.Tensor:
        """Prediction sets as a bool mask (m, C) for probabilities `probs` (m, C): True where the class is in the
        image's set. Never empty: a row with no class under its threshold gets its top-probability class.

        `nonempty=False` returns the bare threshold rule {y : s(x, y) <= q_y}, whose coverage is also bounded
        above by 1 - alpha + 1 / (n + 1); the non-empty fix only adds classes, so it can only raise coverage (for
        non-randomised APS notably: confident images whose top-class mass exceeds the threshold)."""
        p = _as_probs(probs, "probs", self.num_classes)
        scores = self._scores(p, generator_seed)  # (m, C)
        thresholds = torch.tensor(self.thresholds, dtype=torch.float64)  # (C,)
        sets = scores <= thresholds  # (m, C); +inf thresholds always pass
        empty = ~sets.any(dim=1)
        if nonempty and empty.any():
            rows = empty.nonzero().squeeze(1)
            sets[rows, p[rows].argmax(dim=1)] = True
        return sets

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (strict JSON: an infinite threshold is written as null), for `from_dict`."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "alpha": self.alpha,
            "mode": self.mode,
            "score": self.score,
            "randomize": self.randomize,
            "seed": self.seed,
            "thresholds": [t if math.isfinite(t) else None for t in self.thresholds],
            "n_calibration": self.n_calibration,
            "class_counts": list(self.class_counts),
            "class_names": None if self.class_names is None else list(self.class_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConformalPredictor:
        """The predictor `to_dict` described; a missing or malformed field raises ValueError naming it."""
        if not isinstance(data, Mapping):
            raise ValueError(f"conformal predictor: expected a JSON object (dict), got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(f"conformal predictor: field 'format' must be {FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"conformal predictor: field 'version' {data.get('version')!r} is not supported (this clipforge "
                f"reads version {FORMAT_VERSION}); recalibrate with this version"
            )
        for key in ("alpha", "mode", "score", "thresholds", "n_calibration", "class_counts"):
            if key not in data:
                raise ValueError(f"conformal predictor: missing field {key!r}")
        try:
            alpha = _check_alpha(data["alpha"])
            mode = _check_choice(data["mode"], MODES, "mode")
            score = _check_choice(data["score"], SCORES, "score")
        except ValueError as error:
            raise ValueError(f"conformal predictor: field {error}") from None
        raw = data["thresholds"]
        if not isinstance(raw, list) or len(raw) < 2:
            raise ValueError("conformal predictor: field 'thresholds' must be a list with one entry per class (>= 2)")
        thresholds = []
        for i, t in enumerate(raw):
            if t is None:
                thresholds.append(math.inf)
            elif isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
                thresholds.append(float(t))
            else:
                raise ValueError(
                    f"conformal predictor: field 'thresholds[{i}]' must be a finite number or null, got {t!r}"
                )
        counts = data["class_counts"]
        if not isinstance(counts, list) or len(counts) != len(thresholds) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts
        ):
            raise ValueError(
                f"conformal predictor: field 'class_counts' must list {len(thresholds)} non-negative integers"
            )
        n_cal = data["n_calibration"]
        if not isinstance(n_cal, int) or isinstance(n_cal, bool) or n_cal != sum(counts):
            raise ValueError(
                f"conformal predictor: field 'n_calibration' must be the integer sum of 'class_counts' ({sum(counts)})"
            )
        names = data.get("class_names")
        if names is not None and (
            not isinstance(names, list) or len(names) != len(thresholds) or not all(isinstance(x, str) for x in names)
        ):
            raise ValueError(f"conformal predictor: field 'class_names' must be null or {len(thresholds)} strings")
        randomize, seed = data.get("randomize", False), data.get("seed", 0)
        if not isinstance(randomize, bool):
            raise ValueError(f"conformal predictor: field 'randomize' must be true or false, got {randomize!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"conformal predictor: field 'seed' must be an integer, got {seed!r}")
        return cls(
            alpha=alpha,
            mode=mode,
            score=score,
            thresholds=tuple(thresholds),
            n_calibration=n_cal,
            class_counts=tuple(counts),
            randomize=randomize,
            seed=seed,
            class_names=None if names is None else tuple(names),
        )


class ConformalCalibrator:
    """Fits a `ConformalPredictor` on a held-out calibration split: `ConformalCalibrator.fit(probs, labels, alpha)`.

    The calibration split must not have been used to train or tune the classifier: the guarantee rests on the
    calibration and future images being exchangeable given the (fixed) model.
    """

    @staticmethod
    def fit(
        probs_cal: Any,
        labels_cal: Any,
        alpha: float,
        mode: str = "global",
        score: str = "lac",
        *,
        randomize: bool = False,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> ConformalPredictor:
        """Calibrate thresholds at miscoverage `alpha` from probabilities `probs_cal` (n, C) and true labels
        `labels_cal` (n,).

        mode "global": one threshold from all n scores; "class": one per class from that class's examples only
        (per-class coverage). score "lac" or "aps" (`randomize=True`: randomised APS, uniforms seeded by `seed`).
        Warns (UserWarning) when a threshold is +inf because there are too few calibration examples for alpha.
        """
        alpha = _check_alpha(alpha)
        mode = _check_choice(mode, MODES, "mode")
        score = _check_choice(score, SCORES, "score")
        if not isinstance(randomize, bool):
            raise ValueError(f"randomize: must be True or False, got {randomize!r}")
        if randomize and score != "aps":
            raise ValueError(
                "randomize: only the 'aps' score has a randomised form; use score='aps' or randomize=False"
            )
        p = _as_probs(probs_cal, "probs_cal")
        n, c = p.shape
        if n == 0:
            raise ValueError("probs_cal: the calibration split is empty; hold out labelled images for calibration")
        labels = _as_labels(labels_cal, n, c, "labels_cal")
        names = None
        if class_names is not None:
            names = tuple(str(x) for x in class_names)
            if len(names) != c:
                raise ValueError(f"class_names: got {len(names)} names for {c} classes (columns of probs_cal)")
        uniforms = _uniforms(n, seed) if randomize else None
        true_scores = class_scores(p, score, uniforms).gather(1, labels[:, None]).squeeze(1)  # (n,)
        counts = torch.bincount(labels, minlength=c)  # (C,)
        minimum = quantile_minimum(alpha)
        if mode == "global":
            q = conformal_quantile(true_scores, alpha)
            if math.isinf(q):
                warnings.warn(
                    f"conformal calibration: {n} calibration examples are too few for alpha={alpha:g} (needs >= "
                    f"{minimum}); the threshold is +inf and every prediction set is the full label set. Hold out "
                    "more calibration images or use a larger alpha",
                    UserWarning,
                    stacklevel=2,
                )
            thresholds = (q,) * c
        else:
            values, starved = [], []
            for k in range(c):
                q = conformal_quantile(true_scores[labels == k], alpha)
                values.append(q)
                if math.isinf(q):
                    starved.append(f"{names[k] if names else k!r} ({int(counts[k])} examples)")
            if starved:
                warnings.warn(
                    f"conformal calibration: class(es) {', '.join(starved)} have too few calibration examples for "
                    f"alpha={alpha:g} (per-class calibration needs >= {minimum} each); their threshold is +inf, so "
                    "they are in every prediction set. Add calibration images of those classes or use a larger alpha",
                    UserWarning,
                    stacklevel=2,
                )
            thresholds = tuple(values)
        return ConformalPredictor(
            alpha=alpha,
            mode=mode,
            score=score,
            thresholds=tuple(float(t) for t in thresholds),
            n_calibration=n,
            class_counts=tuple(int(x) for x in counts),
            randomize=randomize,
            seed=seed,
            class_names=names,
        )


def quantile_minimum(alpha: float) -> int:
    """Fewest calibration scores that give a finite threshold at `alpha`: the smallest n with
    ceil((n + 1)(1 - alpha)) <= n, about 1 / alpha - 1 (9 for alpha 0.1, 19 for 0.05)."""
    alpha = _check_alpha(alpha)
    n = max(1, math.floor(1.0 / alpha - 1.0) - 1)
    while quantile_rank(n, alpha) > n:
        n += 1
    return n


def coverage_report(sets: Any, labels: Any) -> dict[str, Any]:
    """Empirical coverage of prediction `sets` (m, C) bool against true `labels` (m,).

    Returns {"n", "coverage", "mean_set_size", "per_class_coverage", "empty_sets"}: the fraction of images whose
    set holds their label, the mean number of classes per set, that fraction per true class (None for a class
    with no images here), and how many sets are empty. Plain floats / ints / lists: JSON-able as is.
    """
    mask = torch.as_tensor(sets)
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(
            f"sets: expected a bool mask of shape (m, C), got dtype {mask.dtype} shape {tuple(mask.shape)}"
        )
    m, c = mask.shape
    if m == 0:
        raise ValueError("sets: no images to report on (m = 0)")
    y = _as_labels(labels, m, c, "labels")
    covered = mask.gather(1, y[:, None]).squeeze(1).to(torch.float64)  # (m,)
    per_class: list[float | None] = []
    for k in range(c):
        rows = y == k
        per_class.append(covered[rows].mean().item() if rows.any() else None)
    return {
        "n": m,
        "coverage": covered.mean().item(),
        "mean_set_size": mask.sum(dim=1).to(torch.float64).mean().item(),
        "per_class_coverage": per_class,
        "empty_sets": int((~mask.any(dim=1)).sum()),
    }
