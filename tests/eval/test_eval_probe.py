"""Linear probe: known answers on synthetic features, the l2 search, and the guard that test rows stay unread."""

import math

import pytest
import torch

from clipforge.eval import probe
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
    real_select, real_fit = probe.select_l2, probe.fit_logistic

    def spy_select(features, labels, *args, **kwargs):
        assert features is x and labels is y  # exactly the training rows, nothing else
        assert not any(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values()))
        out = real_select(features, labels, *args, **kwargs)
        events.append("selected")
        return out

    def spy_fit(features, labels, *args, **kwargs):
        events.append("final-fit" if features is x and events[-1:] == ["selected"] else "search-fit")
        return real_fit(features, labels, *args, **kwargs)

    monkeypatch.setattr(probe, "select_l2", spy_select)
    monkeypatch.setattr(probe, "fit_logistic", spy_fit)
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
