"""Linear probe: known answers on synthetic features, the l2 search, and the guard that test rows stay unread."""

import math

import pytest
import torch

from clipforge.eval import logistic, probe
from clipforge.eval.probe import fit_logistic, linear_probe, select_l2, stratified_split


def blobs(n: int, num_classes: int, dim: int, spread: float, seed: int, noise_seed: int = 100):
    """Gaussian blobs (unit variance) around centres of scale `spread` drawn from `seed`; balanced labels."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed)) * spread
    labels = torch.arange(n) % num_classes
    noise = torch.randn(n, dim, generator=torch.Generator().manual_seed(noise_seed))
    return centres[labels] + noise, labels


def two_class_noisy(seed: int, flip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """100 rows in 40 dimensions, classes apart along one axis only, a fraction `flip` of labels flipped."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(100) % 2
    axis = torch.zeros(40)
    axis[0] = 1.5
    x = (2 * labels[:, None] - 1) * axis + torch.randn(100, 40, generator=g)
    flipped = torch.rand(100, generator=g) < flip
    return x, torch.where(flipped, 1 - labels, labels)


def test_separable_blobs_are_classified_perfectly_and_the_grid_choice_is_known():
    x, y = blobs(240, 4, 8, 5.0, seed=0)
    xt, yt = blobs(120, 4, 8, 5.0, seed=0, noise_seed=1)  # same centres, fresh noise
    grid = [1e-4, 1e-2, 1.0, 1e2]
    result = linear_probe(x, y, xt, yt, 4, l2_grid=grid, max_iter=200)
    assert result.top1 == 1.0 and result.top5 == 1.0 and result.mean_per_class_recall == 1.0
    assert result.val_top1 == 1.0
    # Every l2 separates the validation rows; the tie goes to the lowest validation loss, the weakest l2.
    assert result.l2 == pytest.approx(1e-4)
    assert result.weight.shape == (8, 4) and result.bias.shape == (4,)


def test_weights_apply_to_raw_features_and_match_the_standardised_fit():
    x, y = blobs(60, 3, 5, 1.0, seed=2)
    x = x * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 7.0  # badly scaled, offset columns
    w, b = fit_logistic(x.double(), y, 3, l2=0.1)
    # The optimum satisfies grad = 0: X_std^T (P - Y) / N + l2 W_std = 0 and sum(P - Y) = 0.
    mean, std = x.double().mean(0), x.double().std(0, unbiased=False)
    z = (x.double() - mean) / std
    w_std = w * std[:, None]
    residual = (x.double() @ w + b).softmax(-1) - torch.nn.functional.one_hot(y, 3).double()
    torch.testing.assert_close(
        z.T @ residual / 60 + 0.1 * w_std, torch.zeros(5, 3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(residual.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0)


def test_noisy_labels_move_the_choice_to_stronger_regularisation():
    for seed in (0, 1):
        clean_l2, _ = select_l2(*two_class_noisy(seed, 0.0), 2, val_fraction=0.3, seed=0, grid=None)
        noisy_l2, _ = select_l2(*two_class_noisy(seed, 0.4), 2, val_fraction=0.3, seed=0, grid=None)
        assert noisy_l2 > 5 * clean_l2, (seed, clean_l2, noisy_l2)
        # The binary search ends on the 1/8-decade lattice of 1e-6 .. 1e2.
        for l2 in (clean_l2, noisy_l2):
            steps = (math.log10(l2) + 6) * 8
            assert abs(steps - round(steps)) < 1e-9 and 1e-6 <= l2 <= 1e2


def test_stratified_split_is_seeded_per_class_and_keeps_a_row_on_each_side():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2])
    fit, val = stratified_split(labels, 3, 0.2, seed=5)
    assert torch.equal(labels[val].bincount(minlength=3), torch.tensor([2, 1, 0]))
    assert sorted(fit.tolist() + val.tolist()) == list(range(13))
    again = stratified_split(labels, 3, 0.2, seed=5)
    assert torch.equal(again[0], fit) and torch.equal(again[1], val)
    with pytest.raises(ValueError, match="validation split"):
        stratified_split(torch.tensor([0, 1, 2]), 3, 0.2, seed=0)


class _Sealed(torch.Tensor):
    """Test rows that raise on any access to their values until `unsealed()` says the probe is final."""

    unsealed = staticmethod(lambda: False)
    _METADATA = {torch.Tensor.dim, torch.Tensor.size, torch.Tensor.shape.__get__, torch.Tensor.ndim.__get__}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func not in cls._METADATA and not cls.unsealed():
            raise AssertionError(f"test rows read before the final refit: {func}")
        return super().__torch_function__(func, types, args, kwargs or {})


def test_the_test_split_is_never_read_while_choosing_l2(monkeypatch):
    x, y = blobs(90, 3, 6, 3.0, seed=3)
    xt, yt = blobs(30, 3, 6, 3.0, seed=3, noise_seed=4)
    events = []
    real_select, real_fit, real_search_fit = probe._search_l2, probe.fit_logistic, probe._fit_standardised

    def spy_select(features, labels, *args, **kwargs):
        assert features is x and labels is y  # exactly the training rows, nothing else
        assert not any(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values()))
        out = real_select(features, labels, *args, **kwargs)
        events.append("selected")
        return out

    def spy_fit(features, labels, *args, **kwargs):
        events.append("final-fit" if features is x and events[-1:] == ["selected"] else "other-fit")
        return real_fit(features, labels, *args, **kwargs)

    def spy_search_fit(*args, **kwargs):
        if "selected" not in events:
            events.append("search-fit")
        return real_search_fit(*args, **kwargs)

    monkeypatch.setattr(probe, "_search_l2", spy_select)
    monkeypatch.setattr(probe, "fit_logistic", spy_fit)
    monkeypatch.setattr(probe, "_fit_standardised", spy_search_fit)
    monkeypatch.setattr(_Sealed, "unsealed", staticmethod(lambda: events[-1:] == ["final-fit"]))
    sealed_x, sealed_y = xt.as_subclass(_Sealed), yt.as_subclass(_Sealed)

    with pytest.raises(AssertionError, match="read before"):  # the seal works
        sealed_x.sum()
    result = linear_probe(x, y, sealed_x, sealed_y, 3, l2_grid=[1e-3, 1.0], max_iter=100)
    assert events[-2:] == ["selected", "final-fit"] and events.count("search-fit") == 2
    assert result.top1 > 0.9


def test_fixed_l2_skips_the_search():
    x, y = blobs(30, 3, 4, 4.0, seed=6)
    result = linear_probe(x, y, x, y, 3, l2=0.5, max_iter=100)
    assert result.l2 == 0.5 and math.isnan(result.val_top1) and result.top1 == 1.0
    with pytest.raises(ValueError, match="test_features"):
        linear_probe(x, y, x[:, :2], y, 3, l2=0.5)


def overlapping(n: int, seed: int, noise_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 overlapping classes in 6 badly scaled, offset dimensions (not separable: a finite optimum at any l2)."""
    x, y = blobs(n, 4, 6, 1.2, seed=seed, noise_seed=noise_seed)
    return x * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0, 0.5]) + 2.0, y


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
def test_fit_agrees_with_scikit_learn_logistic_regression_at_the_same_c(solver):
    sklearn = pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    assert sklearn.__version__
    x, y = overlapping(400, seed=1, noise_seed=2)
    xt, _ = overlapping(400, seed=1, noise_seed=3)
    for l2 in (1e-1, 1e-3):
        c = 1.0 / (l2 * len(y))  # sklearn minimises C * sum(loss) + ||w||^2 / 2 = (mean loss + l2/2 ||w||^2) * C N
        for tol in (1e-4, 1e-10):  # the default tolerance (equal predictions) and a tight one (equal weights)
            ref = make_pipeline(StandardScaler(), LogisticRegression(C=c, tol=tol, max_iter=10_000)).fit(x, y)
            w, b = fit_logistic(x, y, 4, l2, max_iter=10_000, tol=tol, solver=solver)
            probs = (xt.double() @ w + b).softmax(-1)  # (M, 4)
            ref_probs = torch.from_numpy(ref.predict_proba(xt.numpy().astype("float64")))
            assert torch.equal(probs.argmax(-1), ref_probs.argmax(-1)), (l2, tol)
            # At tol 1e-4 both solvers stop a few 1e-3 short of the optimum (in probability), each its own way.
            torch.testing.assert_close(probs, ref_probs, atol=1e-2 if tol > 1e-6 else 1e-6, rtol=0)
            if tol < 1e-6:
                # Weights on the standardised scale, as sklearn sees them; relative to their largest entry.
                w_std = w * x.double().std(0, unbiased=False)[:, None]  # (D, C)
                ref_w = torch.from_numpy(ref[-1].coef_.T)
                torch.testing.assert_close(w_std, ref_w, atol=1e-6 * ref_w.abs().max(), rtol=0)


def test_newton_and_lbfgs_reach_the_same_optimum_and_auto_picks_newton_for_small_problems():
    x, y = overlapping(300, seed=4, noise_seed=5)
    z = (x.double() - x.double().mean(0)) / x.double().std(0, unbiased=False)
    z1 = torch.cat([z, torch.ones(300, 1, dtype=torch.float64)], 1)
    start = torch.zeros(7, 4, dtype=torch.float64)
    newton, info_n = logistic.solve(z1, y, 4, 1e-4, start, tol=1e-9, max_iter=1000, solver="newton")
    lbfgs, info_l = logistic.solve(z1, y, 4, 1e-4, start, tol=1e-9, max_iter=10_000, solver="lbfgs")
    assert info_n.solver == "newton" and info_l.solver == "lbfgs" and info_n.converged and info_l.converged
    assert info_n.iterations < 30 < info_l.iterations  # quadratic vs superlinear convergence
    torch.testing.assert_close(newton, lbfgs, atol=1e-5 * newton.abs().max(), rtol=0)
    assert newton[-1].sum().abs() < 1e-9  # the bias null direction stays at its start (sum zero)
    assert logistic.choose_solver(300, 6, 4, 1e-4) == "newton"
    assert logistic.choose_solver(300, 6, 4, 0.0) == "lbfgs"  # no l2: the Hessian can be singular
    assert logistic.choose_solver(50_000, 512, 10, 1e-4) == "lbfgs"
    # Started at the optimum, no step is needed.
    again, info = logistic.solve(z1, y, 4, 1e-4, newton, tol=1e-6, max_iter=1000, solver="lbfgs")
    assert info.iterations == 0 and torch.equal(again, newton)


def test_newton_falls_back_to_lbfgs_when_the_hessian_is_not_definite(monkeypatch):
    x, y = overlapping(200, seed=6, noise_seed=7)
    expected = fit_logistic(x, y, 4, 1e-2, solver="lbfgs", tol=1e-8)
    failed = []

    def not_definite(matrix):
        failed.append(1)
        return matrix, torch.ones((), dtype=torch.int32)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", not_definite)
    w, b = fit_logistic(x, y, 4, 1e-2, solver="newton", tol=1e-8)
    assert failed == [1]
    for got, ref in zip((w, b), expected):
        torch.testing.assert_close(got, ref, atol=1e-5 * ref.abs().max(), rtol=0)


def test_warm_start_is_read_in_raw_feature_units():
    x, y = overlapping(200, seed=8, noise_seed=9)
    w, b = fit_logistic(x, y, 4, 1e-2, tol=1e-10)
    # From its own optimum (raw units) the fit takes no step: the same classifier comes back.
    w2, b2 = fit_logistic(x, y, 4, 1e-2, tol=1e-6, init=(w, b), max_iter=1)
    torch.testing.assert_close(w2, w, atol=1e-9 * w.abs().max(), rtol=0)
    torch.testing.assert_close(b2, b, atol=1e-9 * b.abs().max(), rtol=0)
    with pytest.raises(ValueError, match="init must be"):
        fit_logistic(x, y, 4, 1e-2, init=(w[:3], b))


def test_bad_inputs_are_named():
    x, y = overlapping(40, seed=0, noise_seed=1)
    with pytest.raises(ValueError, match="NaN"):
        fit_logistic(torch.where(x > 20, float("nan"), x), y, 4, 1e-2)
    with pytest.raises(ValueError, match="tol"):
        fit_logistic(x, y, 4, 1e-2, tol=0.0)
    with pytest.raises(ValueError, match="solver"):
        fit_logistic(x, y, 4, 1e-2, solver="sag")


@pytest.mark.parametrize("case", ["noisy", "blobs"])
def test_warm_started_search_picks_the_same_l2_as_a_cold_sweep(case):
    if case == "noisy":
        x, y, classes = *two_class_noisy(1, 0.3), 2
    else:
        x, y = blobs(300, 10, 32, 0.5, seed=11)
        classes = 10
    warm = select_l2(x, y, classes, seed=0, warm_start=True)
    cold = select_l2(x, y, classes, seed=0, warm_start=False)
    assert warm[0] == pytest.approx(cold[0], rel=1e-12) and warm[1] == cold[1]
    assert 1e-6 < warm[0] < 1e2  # an interior choice, so the search had something to find


def test_small_fits_run_on_one_thread_and_restore_the_setting():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        with logistic.cpu_threads_for(torch.device("cpu"), 300, 32, 10):
            seen.append(torch.get_num_threads())
        with logistic.cpu_threads_for(torch.device("cpu"), 50_000, 512, 10):
            seen.append(torch.get_num_threads())
        with pytest.raises(RuntimeError), logistic.cpu_threads_for(torch.device("cpu"), 300, 32, 10):
            raise RuntimeError("inside")
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
