"""The honest few-shot protocol: Dassl/CoOp k-shot sampling, val carved from train, no test peeking, base-to-new,
and `clipforge eval --task adapt` end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clipforge.adapt import FitContext, LabelledFeatures, protocol
from clipforge.adapt.protocol import (
    BASE_TO_NEW,
    aggregate,
    base_new_classes,
    restrict_classes,
    run_base_to_new,
    run_protocol,
    sample_shots,
    take,
)

FAST = {
    "clip_adapter": {"epochs": 5},
    "tip": {"search_steps": (10, 5)},
    "tip_f": {"epochs": 2, "search_steps": (10, 5)},
    "lp_pp": {"epochs": 5},
    "clap": {"epochs": 5},
    "ape": {"search_steps": (5, 5, 3)},
}


def _task(classes: int = 4, per_class: int = 20, dim: int = 16, seed: int = 0):
    """Clustered unit features; text weights near the class means (zero-shot is good, not perfect)."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)  # (C, D)
    labels = torch.arange(classes).repeat_interleave(per_class)  # (N,)
    features = F.normalize(means[labels] + 0.4 * torch.randn(len(labels), dim, generator=g), dim=-1)  # (N, D)
    text = F.normalize(means + 0.3 * torch.randn(classes, dim, generator=g), dim=-1).T  # (D, C)
    names = tuple(f"c{i}" for i in range(classes))
    return FitContext(text.contiguous()), LabelledFeatures(features, labels, names)


def test_k_shot_counts_disjoint_val_and_determinism():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    for k in (1, 2, 4, 8, 16):
        split = sample_shots(labels, 3, k, seed=1)
        counts = torch.bincount(labels[split.train], minlength=3).tolist()
        assert counts == [min(k, 10), min(k, 3), min(k, 7)]  # exact k, all rows of a smaller class
        assert split.short_classes == {c: n for c, n in {0: 10, 1: 3, 2: 7}.items() if n < k}
        assert split.train.unique().numel() == split.train.numel()  # without replacement
        assert set(split.train.tolist()).isdisjoint(split.val.tolist())  # val disjoint from the support set
        val_counts = torch.bincount(labels[split.val], minlength=3).tolist()
        assert val_counts == [min(min(k, 4), max(0, n - k)) for n in (10, 3, 7)]
        again = sample_shots(labels, 3, k, seed=1)
        assert torch.equal(again.train, split.train) and torch.equal(again.val, split.val)
    assert not torch.equal(sample_shots(labels, 3, 2, seed=1).train, sample_shots(labels, 3, 2, seed=2).train)
    with pytest.raises(ValueError, match="positive"):
        sample_shots(labels, 3, 0, seed=1)


def test_take_and_restrict_keep_views_aligned():
    _, data = _task(classes=4, per_class=3)
    views = torch.stack([data.features, -data.features])  # (2, N, D)
    pre = 2 * data.features  # (N, P) stands in for pre-projection features
    data = LabelledFeatures(data.features, data.labels, data.classnames, views, pre)
    part = take(data, torch.tensor([0, 5]))
    assert torch.equal(part.views[1], -part.features) and torch.equal(part.pre_features, 2 * part.features)
    base = restrict_classes(data, [2, 3])
    assert base.classnames == ("c2", "c3") and base.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(base.views[0], base.features) and torch.equal(base.features, data.features[6:])
    assert torch.equal(base.pre_features, 2 * base.features)
    viewed = LabelledFeatures(data.features, data.labels, data.classnames, None, torch.stack([pre, pre]))
    assert take(viewed, torch.tensor([1, 2])).pre_features.shape == (2, 2, pre.shape[1])


class _Sealed(LabelledFeatures):
    """Test features whose data raise when read while no fit has finished or a fit is running."""

    state = {"fitting": False, "fits_done": 0, "armed": False}

    def __getattribute__(self, name):
        state = type(self).state
        if name in ("features", "labels", "views", "pre_features") and state["armed"]:
            if state["fitting"] or state["fits_done"] == 0:
                raise AssertionError(f"test data ({name}) read before/while fitting")
        return super().__getattribute__(name)


def _run_sealed(monkeypatch, ctx, pool, test_plain, methods, hparams):
    """run_protocol with the test set sealed (any read before the first fit ends, or during a fit, fails) and every
    fit checked to see support and validation rows of the training pool only, disjoint from each other."""
    test = _Sealed(
        test_plain.features, test_plain.labels, test_plain.classnames, test_plain.views, test_plain.pre_features
    )
    _Sealed.state.update(fitting=False, fits_done=0, armed=True)
    real_fit, seen = protocol._fit, []

    def guarded(method, ctx_, train, val, **hp):
        assert train.features.data_ptr() != test_plain.features.data_ptr()
        train_rows = {tuple(r.tolist()) for r in train.features}
        pool_rows = {tuple(r.tolist()) for r in pool.features}
        assert train_rows <= pool_rows and (val is None or {tuple(r.tolist()) for r in val.features} <= pool_rows)
        assert val is None or train_rows.isdisjoint({tuple(r.tolist()) for r in val.features})
        seen.append((method, len(train), 0 if val is None else len(val)))
        _Sealed.state["fitting"] = True
        try:
            return real_fit(method, ctx_, train, val, **hp)
        finally:
            _Sealed.state["fitting"] = False
            _Sealed.state["fits_done"] += 1

    monkeypatch.setattr(protocol, "_fit", guarded)
    try:
        records = run_protocol(ctx, pool, test, methods, shots=(2,), seeds=(1,), hparams=hparams)
    finally:
        _Sealed.state["armed"] = False
    assert [r["method"] for r in records] == methods
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["fit_seconds"] >= 0 for r in records)
    return records, seen


def test_no_test_peeking_for_every_method_and_val_from_train(monkeypatch):
    ctx, pool = _task(seed=1)
    _, test_plain = _task(seed=1, per_class=10)
    methods = ["zeroshot", "prototype", "nn1", "tip", "gda", "ape", "tip_f", "clip_adapter", "lp_pp", "clap"]
    methods.append("linear_probe")  # all cached-feature methods; the model methods are covered below
    records, seen = _run_sealed(monkeypatch, ctx, pool, test_plain, methods, FAST)
    assert {s[1:] for s in seen} == {(8, 8)}  # 2 shots x 4 classes; val min(2, 4) x 4 classes from the pool
    tip = next(r for r in records if r["method"] == "tip")
    assert set(tip["hparams"]) >= {"alpha", "beta"}  # the chosen values are reported


@pytest.fixture(scope="module")
def tiny_model():
    import clipforge

    torch.manual_seed(0)
    return clipforge.create_model("tiny-vit").eval()


def _model_task(model, classes: int = 4, per_class: int = 20, seed: int = 0):
    """Clustered pre-projection features of `model` (P wide) with their projected, normalised features."""
    from clipforge.adapt import context_for

    g = torch.Generator().manual_seed(seed)
    width = model.image_projection.shape[0]
    means = 3 * torch.randn(classes, width, generator=g)  # (C, P)
    labels = torch.arange(classes).repeat_interleave(per_class)
    pre = means[labels] + torch.randn(len(labels), width, generator=g)  # (N, P)
    with torch.no_grad():
        features = F.normalize(model.project_image(pre), dim=-1)  # (N, D)
    names = ("cat", "dog", "car", "tree")[:classes]
    return context_for(model, names), LabelledFeatures(features, labels, names, pre_features=pre)


def test_no_test_peeking_for_model_methods(monkeypatch, tiny_model):
    """prolip (pre-projection features), coop and cocoop (the text tower) under the same sealed test set."""
    ctx, pool = _model_task(tiny_model, seed=1)
    _, test_plain = _model_task(tiny_model, seed=1, per_class=5)
    fast = {"prolip": {"epochs": 5}, "coop": {"epochs": 2, "n_ctx": 4}, "cocoop": {"epochs": 1, "batch_size": 4}}
    methods = ["prolip", "coop", "cocoop"]
    records, seen = _run_sealed(monkeypatch, ctx, pool, test_plain, methods, fast)
    assert [s[0] for s in seen] == methods and {s[1:] for s in seen} == {(8, 8)}
    prolip = next(r for r in records if r["method"] == "prolip")["hparams"]
    assert prolip["lam_rule"] == "1/shots"  # lambda is validation-free; the lr is chosen on the k-shot val rows
    assert prolip["lr_chosen_on"] == "val" and prolip["lr"] in prolip["lr_grid"] and prolip["val_accuracy"] >= 0
    assert next(r for r in records if r["method"] == "coop")["hparams"]["epochs"] == 2


def test_records_and_aggregation():
    ctx, pool = _task(seed=2)
    _, test = _task(seed=2, per_class=15)
    records = run_protocol(ctx, pool, test, ["zeroshot", "prototype"], shots=(1, 4), seeds=(1, 2, 3))
    assert len(records) == 2 * 2 * 3
    zs = [r["accuracy"] for r in records if r["method"] == "zeroshot"]
    assert len(set(zs)) == 1  # zero-shot ignores the shots: the same accuracy every run
    summary = aggregate(records)
    assert [(s["method"], s["shots"]) for s in summary] == [
        ("zeroshot", 1), ("prototype", 1), ("zeroshot", 4), ("prototype", 4)
    ]
    proto4 = next(s for s in summary if (s["method"], s["shots"]) == ("prototype", 4))
    runs = [r["accuracy"] for r in records if (r["method"], r["shots"]) == ("prototype", 4)]
    assert proto4["runs"] == runs
    assert proto4["mean"] == pytest.approx(sum(runs) / 3)
    assert proto4["std"] == pytest.approx(torch.tensor(runs, dtype=torch.float64).std(unbiased=False).item())
    with pytest.raises(ValueError, match="class names"):
        run_protocol(ctx, pool, restrict_classes(test, [0, 1]), ["zeroshot"], (1,), (1,))


def test_base_to_new_trains_on_base_classes_only(monkeypatch):
    assert base_new_classes(5) == ([0, 1, 2], [3, 4])
    ctx, pool = _task(classes=4, seed=3)
    _, test = _task(classes=4, seed=3, per_class=10)
    real_fit, seen = protocol._fit, []

    def spy(method, ctx_, train, val, **hp):
        seen.append((train.classnames, ctx_.text_weights.shape, set(train.labels.tolist())))
        return real_fit(method, ctx_, train, val, **hp)

    monkeypatch.setattr(protocol, "_fit", spy)
    records = run_base_to_new(ctx, pool, test, ["zeroshot", "clip_adapter"], shots=(4,), seeds=(1,), hparams=FAST)
    assert all(s == (("c0", "c1"), (16, 2), {0, 1}) for s in seen)
    zs = next(r for r in records if r["method"] == "zeroshot")
    # zero-shot on the new classes is exactly the zero-shot classifier of those two classes
    new_test = restrict_classes(test, [2, 3])
    expected = ((new_test.features @ ctx.text_weights[:, 2:]).argmax(-1) == new_test.labels).float().mean().item()
    assert zs["new"] == pytest.approx(expected)
    assert zs["harmonic"] == pytest.approx(2 * zs["base"] * zs["new"] / (zs["base"] + zs["new"]))
    assert set(BASE_TO_NEW) == {"zeroshot", "clip_adapter", "cocoop", "coop"}
    with pytest.raises(ValueError, match="cannot score unseen classes"):
        run_base_to_new(ctx, pool, test, ["tip"], shots=(1,), seeds=(1,))


def test_cli_adapt_task_writes_records_and_plot(tmp_path):
    from clipforge.cli.main import main as cli
    from support.noise_images import write_noise_folder

    write_noise_folder(tmp_path / "data" / "train", classes=2, per_class=5)
    write_noise_folder(tmp_path / "data" / "test", classes=2, per_class=3, seed=1)
    out = tmp_path / "report"
    code = cli(
        [
            "eval", "--model", "tiny-vit", "--task", "adapt", "--dataset", "folder", "--root", str(tmp_path / "data"),
            "--methods", "zeroshot,prototype,clap", "--shots", "1", "2", "--seeds", "1", "2", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--quiet",
        ]
    )
    assert code == 0
    records = json.loads((out / "results.json").read_text())
    adapt = [r for r in records if r["task"] == "adapt"]
    metrics = {r["metric"] for r in adapt}
    for method in ("zeroshot", "prototype"):
        for k in (1, 2):
            assert {f"{method}_{k}shot_top1_mean", f"{method}_{k}shot_top1_std", f"{method}_{k}shot_fit_s"} <= metrics
    runs = [r for r in adapt if r["metric"].endswith("shot_top1_mean")]
    assert all(len(r["runs"]) == 2 and "hparams" in r for r in runs)
    # CLAP anchors to the unnormalised prompt means the eval task computes, as the reference does.
    clap = [h for r in runs if r["metric"].startswith("clap_") for h in r["hparams"]]
    assert clap and all(h["anchors"] == "prompt_means" for h in clap)
    assert {"zeroshot_base", "zeroshot_new", "zeroshot_harmonic"} <= metrics
    assert "adapt" in (out / "results.md").read_text()
    pytest.importorskip("matplotlib")
    assert list((out / "plots").glob("*adapt_accuracy_vs_k.png"))


def test_cli_adapt_task_runs_prolip_and_coop_end_to_end(tmp_path):
    """ProLIP needs pre-projection features of train AND test, CoOp the text tower: eval supplies both."""
    from clipforge.cli.main import main as cli
    from support.noise_images import write_noise_folder

    write_noise_folder(tmp_path / "data" / "train", classes=2, per_class=4)
    write_noise_folder(tmp_path / "data" / "test", classes=2, per_class=3, seed=1)
    out = tmp_path / "report"
    args = [
        "eval", "--model", "tiny-vit", "--task", "adapt", "--dataset", "folder", "--root", str(tmp_path / "data"),
        "--methods", "prolip,coop", "--shots", "1", "--seeds", "1", "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--quiet",
    ]
    assert cli(args) == 0
    records = json.loads((out / "results.json").read_text())
    means = {r["metric"]: r for r in records if r["task"] == "adapt" and r["metric"].endswith("shot_top1_mean")}
    assert set(means) == {"prolip_1shot_top1_mean", "coop_1shot_top1_mean"}
    assert all(0.0 <= r["value"] <= 1.0 for r in means.values())
    prolip, coop = means["prolip_1shot_top1_mean"]["hparams"][0], means["coop_1shot_top1_mean"]["hparams"][0]
    assert prolip["epochs"] == 300 and prolip["lam"] == pytest.approx(1.0)  # the paper's defaults, lambda = 1/1
    assert coop["epochs"] == 50 and len(coop["train_loss"]) == 50  # CoOp's 1-shot budget


def test_base_to_new_scores_cocoop_on_classes_it_never_saw(tiny_model):
    ctx, pool = _model_task(tiny_model, seed=4, per_class=6)
    _, test = _model_task(tiny_model, seed=4, per_class=3)
    fast = {"cocoop": {"epochs": 1, "batch_size": 4}}
    (record,) = run_base_to_new(ctx, pool, test, ["cocoop"], shots=(2,), seeds=(1,), hparams=fast)
    assert 0.0 <= record["base"] <= 1.0 and 0.0 <= record["new"] <= 1.0
    assert record["hparams"]["embed_dim"] == pool.dim and record["hparams"]["epochs"] == 1


def test_base_to_new_scores_coop_new_classes_with_its_learned_context(tiny_model, monkeypatch, tmp_path):
    """CoOp's new-class classifier is its learned context prompting the new names, not the zero-shot head."""
    from tests.support.tolerance import assert_close_rel

    import clipforge.adapt as adapt

    ctx, pool = _model_task(tiny_model, seed=4, per_class=6)
    _, test = _model_task(tiny_model, seed=4, per_class=3)
    scored, real_accuracy = [], protocol.accuracy

    def spy(adapter, data):
        scored.append((adapter, data))
        return real_accuracy(adapter, data)

    monkeypatch.setattr(protocol, "accuracy", spy)
    fast = {"coop": {"epochs": 3, "n_ctx": 4, "lr": 0.5, "warmup_epochs": 0}}
    (record,) = run_base_to_new(ctx, pool, test, ["coop"], shots=(2,), seeds=(1,), hparams=fast)
    (fitted, base_test), (on_new, new_test) = scored
    new_names = ("car", "tree")
    assert fitted.classnames == ("cat", "dog") and on_new.classnames == new_names
    assert base_test.classnames == ("cat", "dog") and new_test.classnames == new_names
    learned = fitted.text_features(tiny_model, new_names)  # (D, 2): the learned context + the new names
    expected = ctx.logit_scale * new_test.features @ learned
    assert_close_rel(on_new.logits(new_test.features), expected, 1e-5, "coop new classes")
    zero_shot = ctx.logit_scale * new_test.features @ ctx.text_weights[:, 2:]
    assert (on_new.logits(new_test.features) - zero_shot).abs().max() > 0.05 * zero_shot.abs().max()
    hits = on_new.predict(new_test.features) == new_test.labels
    assert record["new"] == pytest.approx(hits.float().mean().item())
    loaded = adapt.load(fitted.save(tmp_path / "coop"))
    with pytest.raises(ValueError, match=r"bind\(model\)"):
        loaded.for_classes(new_names)
    assert_close_rel(loaded.bind(tiny_model).for_classes(new_names).text_weights, learned, 1e-5, "reloaded")
