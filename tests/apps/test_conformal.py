"""Split conformal prediction (clipforge.apps.inspect.conformal): coverage on synthetic scores with a known answer,
per-class (Mondrian) coverage, the exact finite-sample quantile, full and non-empty sets, JSON round trip, errors."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from clipforge.apps.inspect import ConformalCalibrator, ConformalPredictor, coverage_report
from clipforge.apps.inspect.conformal import class_scores, conformal_quantile, quantile_minimum, quantile_rank


def _synthetic(generator: torch.Generator, reps: int, n: int, priors: list[float], margins: list[float]):
    """A fixed softmax model: label y ~ priors, logits = N(0, 1) noise + margins[y] on the true class.

    Returns probs (reps, n, C) float32 and labels (reps, n): `reps` independent exchangeable samples."""
    c = len(priors)
    labels = torch.multinomial(torch.tensor(priors), reps * n, replacement=True, generator=generator).view(reps, n)
    logits = torch.randn(reps, n, c, generator=generator)
    logits += torch.nn.functional.one_hot(labels, c) * torch.tensor(margins)[labels][..., None]
    return logits.softmax(dim=-1), labels


def _mc_slack(values: torch.Tensor) -> float:
    """Monte-Carlo slack of a mean over repetitions: 4 standard errors (the test is seeded, so this only sizes the
    bar; a real coverage bug moves the mean by far more)."""
    return 4.0 * values.std().item() / math.sqrt(values.numel())


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_coverage_holds_over_many_random_splits(score):
    """Theory: mean coverage over random calibration/test splits lies in [1 - alpha, 1 - alpha + 1/(n+1)] (global),
    and per class in [1 - alpha, 1 - alpha + E 1/(n_c+1)] for Mondrian calibration. The upper bound is the bare
    threshold rule's (nonempty=False); the non-empty sets returned by default cover at least as often."""
    gen = torch.Generator().manual_seed(1)
    reps, n_cal, n_test, alpha = 300, 200, 300, 0.1
    priors, margins = [0.4, 0.3, 0.2, 0.1], [2.5, 2.0, 1.5, 1.0]
    probs, labels = _synthetic(gen, reps, n_cal + n_test, priors, margins)
    global_cov, class_cov, class_upper = [], [], []
    for r in range(reps):
        cal_p, cal_y, test_p, test_y = probs[r, :n_cal], labels[r, :n_cal], probs[r, n_cal:], labels[r, n_cal:]
        pred = ConformalCalibrator.fit(cal_p, cal_y, alpha, mode="global", score=score)
        bare = coverage_report(pred.predict_sets(test_p, nonempty=False), test_y)["coverage"]
        global_cov.append(bare)
        assert coverage_report(pred.predict_sets(test_p), test_y)["coverage"] >= bare
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every class has enough calibration examples here: no +inf threshold
            pred = ConformalCalibrator.fit(cal_p, cal_y, alpha, mode="class", score=score)
        report = coverage_report(pred.predict_sets(test_p, nonempty=False), test_y)
        class_cov.append([math.nan if v is None else v for v in report["per_class_coverage"]])
        class_upper.append([1 - alpha + 1 / (k + 1) for k in pred.class_counts])
    g = torch.tensor(global_cov, dtype=torch.float64)
    slack = _mc_slack(g)
    assert g.mean() >= 1 - alpha - slack, f"global {score}: mean coverage {g.mean():.4f} < {1 - alpha} - {slack:.4f}"
    assert g.mean() <= 1 - alpha + 1 / (n_cal + 1) + slack, f"global {score}: mean coverage {g.mean():.4f} too high"
    # the known answer for continuous scores: E coverage = k / (n + 1), k = ceil((n + 1)(1 - alpha)) = 181
    assert abs(g.mean().item() - quantile_rank(n_cal, alpha) / (n_cal + 1)) <= slack
    per_class = torch.tensor(class_cov, dtype=torch.float64)  # (reps, C)
    upper = torch.tensor(class_upper, dtype=torch.float64).mean(dim=0)  # (C,)
    for k in range(len(priors)):
        values = per_class[:, k][~per_class[:, k].isnan()]
        slack = _mc_slack(values)
        mean = values.mean().item()
        assert mean >= 1 - alpha - slack, f"class {k} ({score}): mean coverage {mean:.4f} < {1 - alpha} - {slack:.4f}"
        assert mean <= upper[k].item() + slack, f"class {k} ({score}): mean coverage {mean:.4f} > {upper[k]:.4f}"


def test_per_class_thresholds_cover_a_hard_class_that_global_misses():
    """One rare, hard class (defect-like): the global threshold, set by the easy majority, under-covers it; Mondrian
    calibration covers every class at 1 - alpha."""
    gen = torch.Generator().manual_seed(2)
    reps, n_cal, n_test, alpha = 100, 400, 400, 0.1
    probs, labels = _synthetic(gen, reps, n_cal + n_test, [0.45, 0.45, 0.1], [5.0, 5.0, 0.0])
    cov = {"global": [], "class": []}
    for r in range(reps):
        cal_p, cal_y, test_p, test_y = probs[r, :n_cal], labels[r, :n_cal], probs[r, n_cal:], labels[r, n_cal:]
        for mode in cov:
            pred = ConformalCalibrator.fit(cal_p, cal_y, alpha, mode=mode)
            cov[mode].append(coverage_report(pred.predict_sets(test_p), test_y)["per_class_coverage"])
    g, c = torch.tensor(cov["global"], dtype=torch.float64), torch.tensor(cov["class"], dtype=torch.float64)
    assert g[:, 2].mean() < 1 - alpha - 0.1, f"global coverage of the hard class {g[:, 2].mean():.3f} is not low"
    for k in range(3):
        slack = _mc_slack(c[:, k])
        assert c[:, k].mean() >= 1 - alpha - slack, f"class {k}: per-class coverage {c[:, k].mean():.4f}"


def test_threshold_is_the_exact_finite_sample_quantile():
    """9 scores, alpha 0.2: k = ceil(10 * 0.8) = 8, the 8th smallest; alpha 0.7: k = ceil(3.0000000000000004) = 3."""
    p_true = torch.tensor([0.95, 0.35, 0.8, 0.6, 0.9, 0.55, 0.7, 0.85, 0.65], dtype=torch.float64)
    probs = torch.stack([p_true, 1 - p_true], dim=1)  # (9, 2), true class 0
    labels = torch.zeros(9, dtype=torch.long)
    ascending = sorted((1 - p_true).tolist())
    pred = ConformalCalibrator.fit(probs, labels, 0.2)
    assert pred.thresholds == pytest.approx((ascending[7],) * 2, rel=1e-12)
    assert quantile_rank(9, 0.7) == 3
    pred = ConformalCalibrator.fit(probs, labels, 0.7)
    assert pred.thresholds[0] == pytest.approx(ascending[2], rel=1e-12)
    shuffled = torch.tensor(ascending[::-1], dtype=torch.float64)
    assert conformal_quantile(shuffled, 0.2) == pytest.approx(ascending[7], rel=1e-12)
    assert [quantile_minimum(a) for a in (0.1, 0.05, 0.2, 0.5)] == [9, 19, 4, 1]
    # the set rule is "score <= threshold": the image whose score is the threshold itself (p_true 0.85) is covered,
    # the next one (0.8) is not; images that pass no class get their top class
    assert pred.scores(probs)[7, 0].item() == pred.thresholds[0]
    bare = pred.predict_sets(probs, nonempty=False)
    assert bare.tolist() == [[p >= 0.85, False] for p in p_true.tolist()]
    sets = pred.predict_sets(probs)
    assert sets.tolist() == [[p > 0.5, p < 0.5] for p in p_true.tolist()]


def test_aps_and_per_class_scores_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]], dtype=torch.float64)
    # APS: mass strictly above the class, plus its own probability (ties enter together)
    expected = torch.tensor([[0.5, 0.8, 1.0], [0.4, 0.4, 1.0]], dtype=torch.float64)
    assert torch.allclose(class_scores(probs, "aps"), expected, rtol=0, atol=1e-12)
    ties = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.3, 0.3, 0.3]], dtype=torch.float64)
    expected = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.3, 0.3, 0.3]], dtype=torch.float64)
    assert torch.allclose(class_scores(ties, "aps"), expected, rtol=0, atol=1e-12)
    assert torch.allclose(class_scores(probs, "lac"), 1 - probs, rtol=0, atol=1e-12)
    u = torch.tensor([[0.5], [0.25]], dtype=torch.float64)
    randomised = torch.tensor([[0.25, 0.65, 0.9], [0.1, 0.1, 0.85]], dtype=torch.float64)
    assert torch.allclose(class_scores(probs, "aps", u), randomised, rtol=0, atol=1e-12)
    # per class: class 0's threshold from class-0 examples only, class 1's from class-1 examples only
    p0 = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)  # true-class probabilities of 4 class-0 images
    p1 = torch.tensor([0.5, 0.4, 0.3, 0.2], dtype=torch.float64)  # ... of 4 class-1 images
    probs = torch.cat([torch.stack([p0, 1 - p0], 1), torch.stack([1 - p1, p1], 1)])  # (8, 2)
    labels = torch.tensor([0] * 4 + [1] * 4)
    pred = ConformalCalibrator.fit(probs, labels, 0.2, mode="class")  # n_c = 4: k = ceil(5 * 0.8) = 4, the max
    assert pred.thresholds == pytest.approx((0.4, 0.8), rel=1e-12)
    assert pred.class_counts == (4, 4) and pred.n_calibration == 8


def test_too_few_calibration_examples_give_full_sets_and_a_warning():
    gen = torch.Generator().manual_seed(3)
    probs, labels = _synthetic(gen, 1, 5, [0.5, 0.5], [2.0, 2.0])
    with pytest.warns(UserWarning, match=r"5 calibration examples are too few for alpha=0.1 \(needs >= 9\)"):
        pred = ConformalCalibrator.fit(probs[0], labels[0], 0.1)
    assert all(math.isinf(t) for t in pred.thresholds)
    test_p, _ = _synthetic(gen, 1, 50, [0.5, 0.5], [2.0, 2.0])
    assert pred.predict_sets(test_p[0]).all()
    # per class: "scratch" has 3 examples, fewer than the 4 that alpha 0.2 needs; "nominal" has 10
    probs = torch.tensor([[0.9, 0.1]] * 10 + [[0.3, 0.7]] * 3)
    labels = torch.tensor([0] * 10 + [1] * 3)
    with pytest.warns(UserWarning, match=r"'scratch' \(3 examples\)"):
        pred = ConformalCalibrator.fit(probs, labels, 0.2, mode="class", class_names=["nominal", "scratch"])
    assert math.isfinite(pred.thresholds[0]) and math.isinf(pred.thresholds[1])
    sets = pred.predict_sets(torch.tensor([[0.99, 0.01], [0.5, 0.5]]))
    assert sets[:, 1].all(), "a class with a +inf threshold is in every set"


def test_sets_are_never_empty():
    """Calibration scores below every test score: no class passes, so each test image gets its argmax.

    LAC: confident calibration (score 1 - 0.99) vs test top classes at 0.6..0.8 (score >= 0.2). APS: calibration
    true classes on top with mass 0.4 (score 0.4) vs test top classes holding 0.6..0.8 (score >= 0.6)."""
    confident = torch.tensor([[0.99, 0.005, 0.005], [0.005, 0.99, 0.005], [0.005, 0.005, 0.99]] * 10)
    diffuse = torch.tensor([[0.4, 0.3, 0.3], [0.3, 0.4, 0.3], [0.3, 0.3, 0.4]] * 10)
    labels = torch.tensor([0, 1, 2] * 10)
    test = torch.tensor([[0.3, 0.6, 0.1], [0.8, 0.1, 0.1], [0.05, 0.25, 0.7]])
    for score, cal in (("lac", confident), ("aps", diffuse)):
        pred = ConformalCalibrator.fit(cal, labels, 0.1, score=score)
        assert not (pred.scores(test) <= torch.tensor(pred.thresholds, dtype=torch.float64)).any(), "all would be empty"
        sets = pred.predict_sets(test)
        assert sets.tolist() == [[False, True, False], [True, False, False], [False, False, True]]
        report = coverage_report(sets, torch.tensor([1, 0, 0]))
        assert report["empty_sets"] == 0 and report["mean_set_size"] == 1.0


def test_coverage_report_by_hand():
    sets = torch.tensor([[True, False, False], [True, True, False], [False, False, False], [False, True, True]])
    report = coverage_report(sets, torch.tensor([0, 1, 0, 0]))
    assert report == {
        "n": 4,
        "coverage": 0.5,
        "mean_set_size": 1.25,
        "per_class_coverage": [1 / 3, 1.0, None],
        "empty_sets": 1,
    }
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize(
    ("mode", "score", "randomize"), [("global", "lac", False), ("class", "aps", False), ("global", "aps", True)]
)
def test_to_dict_from_dict_round_trip(mode, score, randomize):
    gen = torch.Generator().manual_seed(4)
    probs, labels = _synthetic(gen, 1, 120, [0.6, 0.3, 0.1], [2.0, 1.0, 0.5])
    cal_p, cal_y = probs[0], labels[0]  # class 2 has ~12 examples, fewer than alpha 0.05 needs: +inf in mode "class"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = ConformalCalibrator.fit(
            cal_p, cal_y, 0.05, mode=mode, score=score, randomize=randomize, seed=7, class_names=["a", "b", "c"]
        )
    text = json.dumps(pred.to_dict(), allow_nan=False)  # strict JSON even with +inf thresholds (written as null)
    again = ConformalPredictor.from_dict(json.loads(text))
    assert again == pred
    test_p, _ = _synthetic(gen, 1, 200, [0.5, 0.3, 0.2], [2.0, 1.0, 0.5])
    assert torch.equal(again.predict_sets(test_p[0]), pred.predict_sets(test_p[0]))


def test_infinite_threshold_is_null_in_json():
    with pytest.warns(UserWarning):
        pred = ConformalCalibrator.fit(torch.tensor([[0.8, 0.2], [0.3, 0.7]]), torch.tensor([0, 1]), 0.1)
    data = pred.to_dict()
    assert data["thresholds"] == [None, None]
    assert ConformalPredictor.from_dict(data).thresholds == (math.inf, math.inf)


def _fit(probs=None, labels=None, alpha=0.1, **kwargs):
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]] * 4) if probs is None else probs
    labels = torch.tensor([0, 1, 2] * 4) if labels is None else labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ConformalCalibrator.fit(probs, labels, alpha, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, r"alpha: .*0 < alpha < 1, got 0.0"),
        ({"alpha": 1.0}, r"alpha: .*got 1.0"),
        ({"alpha": math.nan}, r"alpha: "),
        ({"alpha": "0.1"}, r"alpha: "),
        ({"mode": "mondrian"}, r"mode: must be one of 'global', 'class', got 'mondrian'"),
        ({"score": "softmax"}, r"score: must be one of 'lac', 'aps'"),
        ({"randomize": True}, r"randomize: only the 'aps' score"),
        ({"probs": torch.randn(12, 3)}, r"probs_cal: values must be probabilities in \[0, 1\].*not logits"),
        ({"probs": torch.full((12, 3), 0.5)}, r"probs_cal: row 0 sums to 1.5, not 1"),
        ({"probs": torch.full((12,), 0.5)}, r"probs_cal: expected shape \(N, C\)"),
        ({"probs": torch.ones(12, 1)}, r"probs_cal: need at least 2 classes"),
        ({"probs": torch.full((12, 3), math.nan)}, r"probs_cal: contains NaN or inf"),
        ({"probs": torch.empty(0, 3), "labels": torch.empty(0, dtype=torch.long)}, r"calibration split is empty"),
        ({"labels": torch.tensor([0, 1, 3] * 4)}, r"labels_cal: label 3 at index 2 is outside \[0, 2\]"),
        ({"labels": torch.tensor([0, 1, -1] * 4)}, r"labels_cal: label -1 at index 2"),
        ({"labels": torch.tensor([0, 1] * 4)}, r"labels_cal: expected shape \(12,\)"),
        ({"labels": torch.tensor([0.0, 1.0, 2.0] * 4)}, r"labels_cal: expected integer class indices"),
        ({"class_names": ["a", "b"]}, r"class_names: got 2 names for 3 classes"),
    ],
)
def test_invalid_inputs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _fit(**kwargs)


def test_predict_and_report_validate_inputs():
    pred = _fit()
    with pytest.raises(ValueError, match=r"probs: has 2 classes \(columns\) but the predictor was calibrated on 3"):
        pred.predict_sets(torch.tensor([[0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"sets: expected a bool mask"):
        coverage_report(torch.ones(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels: label 5 at index 1"):
        coverage_report(torch.ones(2, 3, dtype=torch.bool), torch.tensor([0, 5]))
    # low-precision softmax output is accepted (its rows miss 1 by its own rounding), float32 logits are not
    half = torch.randn(64, 10).softmax(-1).to(torch.bfloat16)
    assert pred.predict_sets(half[:, :3] / half[:, :3].sum(-1, keepdim=True)).shape == (64, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, r"field 'format' must be 'clipforge.conformal'"),
        ({"version": 99}, r"field 'version' 99 is not supported"),
        ({"alpha": 2}, r"field alpha: "),
        ({"mode": "x"}, r"field mode: must be one of"),
        ({"thresholds": [0.1, "a", 0.2]}, r"field 'thresholds\[1\]' must be a finite number or null"),
        ({"thresholds": [0.1]}, r"field 'thresholds' must be a list with one entry per class"),
        ({"class_counts": [1, 2]}, r"field 'class_counts' must list 3 non-negative integers"),
        ({"n_calibration": 5}, r"field 'n_calibration' must be the integer sum of 'class_counts' \(12\)"),
        ({"class_names": ["a"]}, r"field 'class_names' must be null or 3 strings"),
        ({"randomize": "yes"}, r"field 'randomize' must be true or false"),
    ],
)
def test_from_dict_names_the_bad_field(change, message):
    data = {**_fit().to_dict(), **change}
    with pytest.raises(ValueError, match=message):
        ConformalPredictor.from_dict(data)
    data = _fit().to_dict()
    del data["thresholds"]
    with pytest.raises(ValueError, match=r"missing field 'thresholds'"):
        ConformalPredictor.from_dict(data)
