"""Feature-trained adapters (tip_f, clip_adapter, lp_pp, clap, linear_probe): each learns a task built to need
adaptation, round-trips through save/load, and reduces to its training-free or zero-shot special case."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.support.tolerance import assert_close_rel

import clipforge.adapt as adapt
from clipforge.adapt import FitContext, LabelledFeatures
from clipforge.adapt.feature_trained import clap_multipliers, clap_outer_step, lp_pp_init_alpha, lp_pp_step_sizes
from clipforge.eval import probe

REL = 1e-5
C, D, SHOTS = 6, 32, 8


def _task(seed: int = 0):
    """Clustered classes whose odd-class text weights point mostly at the previous class: zero-shot gets about a
    third of those wrong, so a method that learns from the support set must beat it clearly. Returns
    (ctx, train with 4 augmented views, val with 4 per class, (test features, test labels) with 60 per class)."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(C, D, generator=g), dim=-1)  # (C, D)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(C).repeat_interleave(n)
        return F.normalize(means[y] + 0.9 * torch.randn(len(y), D, generator=g) / math.sqrt(D), dim=-1), y

    text = means.clone()
    text[1::2] = 0.8 * means[0::2] + 0.2 * means[1::2]
    names = tuple(f"class{c}" for c in range(C))
    x, y = draw(SHOTS)
    jitter = [F.normalize(x + 0.1 * torch.randn(x.shape, generator=g) / math.sqrt(D), dim=-1) for _ in range(4)]
    views = torch.stack(jitter)  # (4, N, D): augmented views of the support images
    ctx = FitContext(text_weights=F.normalize(text, dim=-1).T.contiguous())
    return ctx, LabelledFeatures(x, y, names, views), LabelledFeatures(*draw(4), names), draw(60)


@pytest.fixture(scope="module")
def task():
    return _task()


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=-1) == labels).float().mean().item()


# Fewer epochs than the papers only where the default would cost seconds here; all learn well within them.
LEARNERS = {
    "tip_f": {},
    "clip_adapter": {"epochs": 60},
    "lp_pp": {},
    "clap": {},
    "linear_probe": {},
}


@pytest.mark.parametrize("method", sorted(LEARNERS))
def test_trained_method_beats_zero_shot_on_held_out_features(task, method):
    ctx, train, val, (test_x, test_y) = task
    zero_shot = _accuracy(ctx.logit_scale * test_x @ ctx.text_weights, test_y)
    assert zero_shot < 0.75  # the task needs adaptation
    adapter = adapt.fit(method, ctx, train, val, **LEARNERS[method])
    learned = _accuracy(adapter.logits(test_x), test_y)
    assert learned >= zero_shot + 0.1, f"{method}: {learned:.3f} vs zero-shot {zero_shot:.3f}"
    assert torch.equal(adapter.predict(test_x), adapter.logits(test_x).argmax(dim=-1))


@pytest.mark.parametrize("method", sorted(LEARNERS))
def test_save_load_round_trip_gives_identical_logits(task, method, tmp_path):
    ctx, train, val, (test_x, _) = task
    kwargs = {k: min(v, 5) for k, v in LEARNERS[method].items()}
    adapter = adapt.fit(method, ctx, train, val, **kwargs)
    loaded = adapt.load(adapter.save(tmp_path / method))
    assert type(loaded) is type(adapter) and loaded.hparams == adapter.hparams
    assert loaded.classnames == train.classnames
    assert torch.equal(loaded.logits(test_x), adapter.logits(test_x))


@pytest.mark.parametrize("method", sorted(LEARNERS))
def test_fit_is_seeded_and_repeatable(task, method):
    ctx, train, val, (test_x, _) = task
    kwargs = {"epochs": 5} if method in ("tip_f", "clip_adapter", "lp_pp", "clap") else {}
    a = adapt.fit(method, ctx, train, val, **kwargs)
    b = adapt.fit(method, ctx, train, val, **kwargs)
    assert torch.equal(a.logits(test_x), b.logits(test_x))


def test_tip_f_without_training_equals_tip_adapter_and_the_formula(task):
    ctx, train, val, (test_x, _) = task
    tip_f = adapt.fit("tip_f", ctx, train, val, epochs=0, search=False, init_alpha=2.0, init_beta=3.0)
    tip = adapt.fit("tip", ctx, train, val, search=False, alpha=2.0, beta=3.0)
    assert_close_rel(tip_f.logits(test_x), tip.logits(test_x), REL, "tip_f(epochs=0) vs tip")
    # By hand: keys are the view means, renormalised; values one-hot.
    keys = F.normalize(train.views.mean(dim=0), dim=-1).double()
    f = test_x.double()
    cache = torch.exp(-3.0 * (1.0 - f @ keys.T)) @ F.one_hot(train.labels, C).double()
    expected = (100.0 * f @ ctx.text_weights.double() + 2.0 * cache).float()
    assert_close_rel(tip_f.logits(test_x), expected, REL, "tip_f(epochs=0) by hand")


def test_tip_f_training_moves_keys_and_search_reads_val_only(task):
    ctx, train, val, _ = task
    trained = adapt.fit("tip_f", ctx, train, val, epochs=3)
    assert 1 <= trained.hparams["chosen_epoch"] <= 3
    assert not torch.equal(trained.keys, F.normalize(train.views.mean(dim=0), dim=-1))
    assert trained.hparams["search"] and trained.hparams["val_accuracy"] is not None
    no_val = adapt.fit("tip_f", ctx, train, None, epochs=3)
    assert no_val.hparams["chosen_epoch"] == 3 and not no_val.hparams["search"]
    assert (no_val.hparams["alpha"], no_val.hparams["beta"]) == (1.0, 1.0)


def test_clip_adapter_with_ratio_zero_is_zero_shot(task):
    ctx, train, _, (test_x, _) = task
    adapter = adapt.fit("clip_adapter", ctx, train, None, ratio=0.0, epochs=3)
    assert_close_rel(adapter.logits(test_x), 100.0 * test_x @ ctx.text_weights, REL, "clip_adapter(ratio=0)")
    assert adapter.down.shape == (D // 4, D) and adapter.up.shape == (D, D // 4)


def test_lp_pp_data_derived_quantities_by_hand(task):
    ctx, train, _, _ = task
    x, y, t = train.features.double(), train.labels, ctx.text_weights.double()
    lr_w, lr_alpha = lp_pp_step_sizes(train.features, ctx.text_weights)
    assert math.isclose(lr_w, 4 * len(x) / torch.linalg.eigvalsh(x.T @ x).max().item(), rel_tol=1e-9)
    assert math.isclose(lr_alpha, len(x) / (4 * ((x @ t) ** 2).sum(0).max().item()), rel_tol=1e-9)
    class_means = torch.stack([(x[y == c] @ t).mean(0) for c in range(C)])  # (C, C)
    assert math.isclose(lp_pp_init_alpha(train.features, y, ctx.text_weights, C), 250 * class_means.mean().item(),
                        rel_tol=1e-9)
    # epochs=0: the initial classifier, W = per-class sums of the features, b = 0, alpha = the initial blend.
    adapter = adapt.fit("lp_pp", ctx, train, None, epochs=0)
    sums = torch.stack([x[y == c].sum(0) for c in range(C)])
    assert_close_rel(adapter.weight, sums.float(), REL, "lp_pp initial weight")
    f = train.features.double()
    expected = (f @ sums.T + 250 * class_means.mean() * (f @ t)).float()
    assert_close_rel(adapter.logits(train.features), expected, REL, "lp_pp initial logits")


def test_clap_multipliers_and_outer_step_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    p = logits.softmax(-1)
    expected = torch.tensor([p[0, 0], (p[1, 1] + p[2, 1]) / 2])
    assert_close_rel(clap_multipliers(logits, labels, 2), expected, REL, "clap multipliers")
    lam, rho = clap_outer_step(torch.tensor([0.5, 2.0]), torch.tensor([0.2, -1.0]), torch.tensor([1.0, 0.1]))
    assert_close_rel(lam, torch.tensor([0.7, 0.0]), REL, "PHR multipliers")  # max(0, lambda + rho h)
    assert torch.equal(rho, torch.tensor([0.5, 2.0]))


def test_clap_constraint_holds_confident_classes_near_zero_shot(task):
    ctx, train, _, _ = task
    constrained = adapt.fit("clap", ctx, train, None)
    free = adapt.fit("clap", ctx, train, None, constraint="none")
    lam = torch.tensor(constrained.hparams["initial_multipliers"])
    assert lam[0::2].min() > lam[1::2].max()  # zero-shot is right on even classes, wrong on odd ones
    base = ctx.text_weights.T
    moved_c = (constrained.prototypes - base).norm(dim=-1)
    moved_f = (free.prototypes - base).norm(dim=-1)
    assert (moved_c[0::2] < moved_f[0::2]).all()  # the penalty keeps well-served classes closer
    adaptive = adapt.fit("clap", ctx, train, None, adaptive=True, epochs=20)
    assert adaptive.hparams["adaptive"]


def test_clap_penalty_is_measured_against_the_unnormalised_prompt_means(task, monkeypatch):
    """As jusiro/CLAP: prototypes start at, and are held to, the unnormalised mean prompt embeddings."""
    from clipforge.adapt import feature_trained

    ctx0, train, _, _ = task
    g = torch.Generator().manual_seed(5)
    means = ctx0.text_weights * (2.0 + torch.rand(C, generator=g)) + 0.1 * torch.randn(D, C, generator=g)  # (D, C)
    ctx = FitContext(text_weights=ctx0.text_weights, prompt_means=means)
    calls, real = [], feature_trained.clap_penalty

    def spy(prototypes, anchors, multipliers):
        value = real(prototypes, anchors, multipliers)
        calls.append((prototypes.detach().clone(), anchors.clone(), multipliers.clone(), float(value.detach())))
        return value

    monkeypatch.setattr(feature_trained, "clap_penalty", spy)
    adapter = adapt.fit("clap", ctx, train, epochs=3, lr=0.5)
    assert adapter.hparams["anchors"] == "prompt_means" and len(calls) == 3
    # multipliers: zero-shot probability of the true class under the initial prototypes normalize(means)
    pool = F.normalize(train.views, dim=-1).reshape(-1, D)  # (V N, D)
    labels = train.labels.repeat(train.views.shape[0])
    probs = (ctx.logit_scale * pool @ F.normalize(means, dim=0)).softmax(dim=-1)[torch.arange(len(labels)), labels]
    hand = torch.stack([probs[labels == c].mean() for c in range(C)])
    assert_close_rel(torch.tensor(adapter.hparams["initial_multipliers"]), hand, REL, "multipliers")
    assert_close_rel(calls[0][0], means.T, REL, "prototypes start at the prompt means")
    assert (calls[-1][0] - means.T).abs().max() > 1e-3  # and then move
    for prototypes, anchors, lam, value in calls:
        assert torch.equal(anchors, means.T)
        by_hand = sum(
            float(lam[c]) * sum((float(prototypes[c, d]) - float(means[d, c])) ** 2 for d in range(D)) for c in range(C)
        ) / C
        assert value == pytest.approx(by_hand, rel=1e-4, abs=1e-9)
    fallback = adapt.fit("clap", ctx0, train, epochs=1)  # no prompt means: anchored to the unit text weights
    assert fallback.hparams["anchors"] == "text_weights"


def test_context_for_keeps_the_unnormalised_prompt_means():
    import clipforge
    from clipforge.zeroshot import build_class_weights, get_templates

    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit").eval()
    names = ("cat", "dog")
    ctx = adapt.context_for(model, names)
    templates = get_templates("simple")
    with torch.no_grad():
        rows = []
        for name in names:
            prompts = [t.format(name) if isinstance(t, str) else t(name) for t in templates]
            tokens = clipforge.get_tokenizer(model)(prompts)
            rows.append(model.encode_text(tokens).float().mean(dim=0))  # unnormalised mean over the templates
        expected = build_class_weights(model, clipforge.get_tokenizer(model), list(names), templates)
    assert_close_rel(ctx.prompt_means, torch.stack(rows).T, REL, "prompt means")
    assert_close_rel(ctx.text_weights, expected, REL, "text weights = the CLIP ensemble")
    with pytest.raises(ValueError, match="prompt_means"):
        FitContext(text_weights=ctx.text_weights, prompt_means=ctx.prompt_means[:, :1])


def test_linear_probe_agrees_with_eval_probe(task):
    ctx, train, val, (test_x, test_y) = task
    adapter = adapt.fit("linear_probe", ctx, train, None)
    ref = probe.linear_probe(train.features, train.labels, test_x, test_y, C)
    assert adapter.hparams["l2"] == ref.l2
    assert_close_rel(adapter.weight, ref.weight, 1e-6, "probe weight")
    expected = (test_x.double() @ ref.weight + ref.bias).float()
    assert_close_rel(adapter.logits(test_x), expected, REL, "probe logits")
    fixed = adapt.fit("linear_probe", ctx, train, val, l2=1e-3)
    w, b = probe.fit_logistic(train.features, train.labels, C, 1e-3)
    assert_close_rel(fixed.weight, w, 1e-6, "probe weight at fixed l2")
    on_val = adapt.fit("linear_probe", ctx, train, val)
    assert on_val.hparams["l2_chosen_on"] == "val" and on_val.hparams["val_top1"] is not None


@pytest.mark.parametrize(
    "method, bad",
    [
        ("tip_f", {"lr": -1.0}),
        ("clip_adapter", {"ratio": 1.5}),
        ("lp_pp", {"epochs": -1}),
        ("clap", {"constraint": "x"}),
    ],
)
def test_bad_hyper_parameters_are_named(task, method, bad):
    ctx, train, _, _ = task
    with pytest.raises(ValueError, match=next(iter(bad))):
        adapt.fit(method, ctx, train, None, **bad)


def test_methods_are_registered():
    assert {"tip_f", "clip_adapter", "lp_pp", "clap", "linear_probe"} <= set(adapt.list_methods())
