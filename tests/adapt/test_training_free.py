"""Training-free adapters: logits against formulas written out by hand, val-only searches with known answers,
save/load round trips, and the no-test-peeking guarantee."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from tests.support.tolerance import assert_close_rel

import clipforge.adapt as adapt
from clipforge.adapt import FitContext, LabelledFeatures
from clipforge.adapt.base import get_method

REL = 1e-5
NAMES = ("ok", "defect")

# 4 support features in D = 3, two per class, unit norm; text weights (D, C) unit-norm columns.
SUPPORT = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.8, 0.0, 0.3], [0.0, 1.0, 0.1], [0.2, 0.9, -0.2]]), dim=-1)
LABELS = torch.tensor([0, 0, 1, 1])
TEXT = F.normalize(torch.tensor([[0.9, 0.3], [0.3, 0.9], [0.1, 0.0]]), dim=0)
QUERIES = F.normalize(torch.tensor([[0.7, 0.6, 0.1], [0.1, 0.3, 0.9], [0.95, -0.1, 0.2]]), dim=-1)


def _train(views=None) -> LabelledFeatures:
    return LabelledFeatures(SUPPORT, LABELS, NAMES, views=views)


def _ctx(scale: float = 100.0) -> FitContext:
    return FitContext(text_weights=TEXT, logit_scale=scale)


def _dot(a, b) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


def _norm(v) -> list[float]:
    n = math.sqrt(sum(float(x) ** 2 for x in v))
    return [float(x) / n for x in v]


def _hand(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_zeroshot_logits_by_hand():
    adapter = adapt.fit("zeroshot", _ctx(), _train())
    expected = _hand([[100 * _dot(q, TEXT[:, c]) for c in range(2)] for q in QUERIES])
    assert_close_rel(adapter.logits(QUERIES), expected, REL, "zeroshot logits")


def test_prototype_logits_by_hand():
    adapter = adapt.fit("prototype", _ctx(), _train())
    protos = [_norm([(float(SUPPORT[0, d]) + float(SUPPORT[1, d])) / 2 for d in range(3)]),
              _norm([(float(SUPPORT[2, d]) + float(SUPPORT[3, d])) / 2 for d in range(3)])]
    expected = _hand([[100 * _dot(q, p) for p in protos] for q in QUERIES])
    assert_close_rel(adapter.logits(QUERIES), expected, REL, "prototype logits")


def test_nn1_logits_by_hand_and_softmax_confidence():
    adapter = adapt.fit("nn1", _ctx(), _train())
    expected = _hand([
        [max(_dot(q, SUPPORT[0]), _dot(q, SUPPORT[1])) / 0.01, max(_dot(q, SUPPORT[2]), _dot(q, SUPPORT[3])) / 0.01]
        for q in QUERIES
    ])
    assert_close_rel(adapter.logits(QUERIES), expected, REL, "nn1 logits")
    assert adapter.hparams == {"temperature": 0.01}
    # A query equal to a support example is that example's class, with its similarity 1 as the nearest.
    sims, idx = adapter.nearest(SUPPORT[2:3], k=2)
    assert int(idx[0, 0]) == 2 and abs(float(sims[0, 0]) - 1.0) < 1e-5
    assert adapter.predict(SUPPORT).tolist() == LABELS.tolist()


def test_tip_logits_by_hand_with_view_averaged_keys():
    views = torch.stack([F.normalize(SUPPORT + 0.1, dim=-1), F.normalize(SUPPORT - 0.05, dim=-1)])  # (V=2, N, D)
    adapter = adapt.fit("tip", _ctx(), _train(views), alpha=1.0, beta=5.5)
    keys = [_norm([(float(views[0, i, d]) + float(views[1, i, d])) / 2 for d in range(3)]) for i in range(4)]
    expected = []
    for q in QUERIES:
        row = []
        for c in range(2):
            cache = sum(math.exp(-5.5 * (1 - _dot(q, keys[i]))) for i in range(4) if int(LABELS[i]) == c)
            row.append(100 * _dot(q, TEXT[:, c]) + 1.0 * cache)
        expected.append(row)
    assert_close_rel(adapter.logits(QUERIES), _hand(expected), REL, "tip logits")
    assert adapter.hparams["searched"] is False and adapter.hparams["alpha"] == 1.0 and adapter.hparams["beta"] == 5.5


def _gda_by_hand(samples: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, alpha: float, queries):
    """GDA written out with Python loops in float64: means, pooled class-centred covariance (torch.cov's
    unbiased estimate of the centred samples), the official shrinkage precision, W and b, logits."""
    x = samples.double().tolist()
    n, d, c_num = len(x), len(x[0]), int(labels.max()) + 1
    mus = []
    for c in range(c_num):
        rows = [x[i] for i in range(n) if int(labels[i]) == c]
        mus.append([sum(r[k] for r in rows) / len(rows) for k in range(d)])
    centred = [[x[i][k] - mus[int(labels[i])][k] for k in range(d)] for i in range(n)]
    mean_c = [sum(r[k] for r in centred) / n for k in range(d)]
    cov = [
        [sum((r[a] - mean_c[a]) * (r[b] - mean_c[b]) for r in centred) / (n - 1) for b in range(d)] for a in range(d)
    ]
    trace = sum(cov[k][k] for k in range(d))
    m = torch.tensor([[(n - 1) * cov[a][b] + (trace if a == b else 0.0) for b in range(d)] for a in range(d)])
    precision = (d * torch.linalg.inv(m)).tolist()
    W = [[sum(precision[a][k] * mus[c][k] for k in range(d)) for c in range(c_num)] for a in range(d)]
    b = [math.log(1 / c_num) - 0.5 * sum(mus[c][a] * W[a][c] for a in range(d)) for c in range(c_num)]
    return _hand([
        [
            100 * _dot(q, text[:, c]) + alpha * (sum(float(q[a]) * W[a][c] for a in range(d)) + b[c])
            for c in range(c_num)
        ]
        for q in queries
    ])


def test_gda_logits_by_hand():
    adapter = adapt.fit("gda", _ctx(), _train(), alpha=0.5)
    expected = _gda_by_hand(SUPPORT, LABELS, TEXT, 0.5, QUERIES)
    assert_close_rel(adapter.logits(QUERIES), expected, 1e-4, "gda logits")
    assert adapter.hparams["alpha"] == 0.5 and adapter.hparams["searched"] is False


def test_gda_pools_augmented_views_as_samples():
    views = torch.stack([F.normalize(SUPPORT + 0.1, dim=-1), F.normalize(SUPPORT - 0.05, dim=-1)])
    adapter = adapt.fit("gda", _ctx(), _train(views), alpha=1.0)
    expected = _gda_by_hand(views.reshape(-1, 3), LABELS.repeat(2), TEXT, 1.0, QUERIES)
    assert_close_rel(adapter.logits(QUERIES), expected, 1e-4, "gda logits from views")


@pytest.mark.parametrize("method", ["zeroshot", "prototype", "nn1", "tip", "gda"])
def test_save_load_round_trip_gives_identical_logits(method, tmp_path):
    val = LabelledFeatures(QUERIES, torch.tensor([0, 1, 0]), NAMES)
    adapter = adapt.fit(method, _ctx(), _train(), val)
    folder = adapter.save(tmp_path / method)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.json", "adapter.safetensors"]
    loaded = adapt.load(folder)
    assert type(loaded) is type(adapter) and loaded.hparams == adapter.hparams and loaded.classnames == NAMES
    assert torch.equal(loaded.logits(QUERIES), adapter.logits(QUERIES))


def test_tip_search_picks_the_known_best_pair_on_val():
    # D = 2, scale 1: the zero-shot term prefers class 0 for x by cos30 - sin30 = 0.366; x's own class-1 cache key
    # only outvotes it with a sharp kernel and a large weight: of betas {0.1, 3.55} x alphas {0.1, 1.55}, only
    # (3.55, 1.55) classifies x correctly (cache margin ~0.17 * alpha at beta 0.1, ~1.0 * alpha at beta 3.55).
    x = torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6)]])
    train = LabelledFeatures(torch.tensor([[-1.0, 0.0], [float(x[0, 0]), float(x[0, 1])]]), torch.tensor([0, 1]), NAMES)
    val = LabelledFeatures(x, torch.tensor([1]), NAMES)
    ctx = FitContext(text_weights=torch.eye(2), logit_scale=1.0)
    adapter = adapt.fit("tip", ctx, train, val, search_scale=(7.0, 3.0), search_steps=(2, 2))
    assert adapter.hparams["searched"] is True
    assert adapter.hparams["beta"] == pytest.approx(3.55) and adapter.hparams["alpha"] == pytest.approx(1.55)
    assert adapter.hparams["val_accuracy"] == 1.0
    assert adapter.predict(x).tolist() == [1]
    # Without val nothing is searched: the paper's defaults stay.
    plain = adapt.fit("tip", ctx, train)
    assert (plain.hparams["alpha"], plain.hparams["beta"], plain.hparams["searched"]) == (1.0, 5.5, False)


def test_gda_search_picks_the_known_best_alpha_on_val():
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    feats = F.normalize(base.repeat(4, 1) + 0.1 * torch.randn(8, 3, generator=g), dim=-1)
    train = LabelledFeatures(feats, torch.tensor([0, 1] * 4), NAMES)
    val = LabelledFeatures(base, torch.tensor([0, 1]), NAMES)
    wrong_text = FitContext(text_weights=F.normalize(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.1, 0.1]]), dim=0))
    right_text = FitContext(text_weights=F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 0.1]]), dim=0))
    # Swapped text weights: only a large alpha (GDA dominating) gets val right.
    assert adapt.fit("gda", wrong_text, train, val, alpha_grid=(0.0, 1000.0)).hparams["alpha"] == 1000.0
    # Correct text weights: alpha 0 is already perfect and comes first.
    assert adapt.fit("gda", right_text, train, val, alpha_grid=(0.0, 1000.0)).hparams["alpha"] == 0.0
    # Swapping the val labels flips the answer: the choice follows val.
    flipped = LabelledFeatures(base, torch.tensor([1, 0]), NAMES)
    assert adapt.fit("gda", right_text, train, flipped, alpha_grid=(0.0, 1000.0)).hparams["val_accuracy"] == 0.0


class _ReadRaises(torch.Tensor):
    """A tensor whose every use (any torch op, indexing, .tolist()) raises: a test split no method may read."""

    reads = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is not torch.Tensor.__repr__:
            _ReadRaises.reads += 1
        raise AssertionError(f"a test tensor was read by {getattr(func, '__name__', func)}")


def test_no_method_reads_test_data():
    """fit takes (ctx, train, val, *, hparams): no argument can carry test data. A test split whose tensors raise
    when read exists throughout every method's fit (as it would in an evaluation run) and is never read."""
    features = torch.randn(3, 3).as_subclass(_ReadRaises)
    test_split = object.__new__(LabelledFeatures)  # bypasses validation, which would read it
    object.__setattr__(test_split, "features", features)
    object.__setattr__(test_split, "labels", torch.zeros(3, dtype=torch.long).as_subclass(_ReadRaises))
    object.__setattr__(test_split, "classnames", NAMES)
    object.__setattr__(test_split, "views", None)
    with pytest.raises(AssertionError, match="test tensor was read"):
        test_split.features.sum()  # the sentinel works
    _ReadRaises.reads = 0
    g = torch.Generator().manual_seed(0)
    train = LabelledFeatures(F.normalize(torch.randn(8, 8, generator=g), dim=-1), torch.arange(8) % 2, NAMES)
    val = LabelledFeatures(F.normalize(torch.randn(4, 8, generator=g), dim=-1), torch.arange(4) % 2, NAMES)
    ctx = FitContext(text_weights=F.normalize(torch.randn(8, 2, generator=g), dim=0))
    for method in adapt.list_methods():
        params = list(inspect.signature(get_method(method)).parameters.values())
        assert [p.name for p in params[:3]] == ["ctx", "train", "val"], method
        assert all(p.kind is p.KEYWORD_ONLY for p in params[3:]), f"{method}: hyper-parameters must be keyword-only"
        if getattr(get_method(method), "needs_model", False):
            continue  # prolip/coop need a model: covered in test_prompt_weight_ape.py
        adapt.fit(method, ctx, train, val)
    assert _ReadRaises.reads == 0
