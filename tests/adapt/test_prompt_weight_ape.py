"""ProLIP (weight_space), CoOp (prompt_learned) and APE: each reduces to its zero-shot / hand-computed special
case, the trained ones learn, and all round-trip through save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.support.tolerance import assert_close_rel

import clipforge
import clipforge.adapt as adapt
from clipforge.adapt import FitContext, LabelledFeatures
from clipforge.adapt.weight_space import labelled_features

REL = 1e-5
NAMES = ("cat", "dog", "car", "tree")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return clipforge.create_model("tiny-vit").eval()


@pytest.fixture(scope="module")
def encoded(model):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=g)
    labels = torch.arange(4).repeat(2)
    return labelled_features(model, images, labels, NAMES, batch_size=3)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def _encode_prompts(model, prompts: list[str]) -> torch.Tensor:
    tokens = clipforge.get_tokenizer(model)(prompts)
    with torch.no_grad():
        return model.encode_text(tokens, normalize=True).float().T  # (D, C)


# ----------------------------------------------------------------------------------------------- ProLIP


def test_labelled_features_projects_the_pre_features(model, encoded):
    with torch.no_grad():
        projected = encoded.pre_features @ model.image_projection.detach()
        assert_close_rel(projected, model.project_image(encoded.pre_features), REL, "pre @ proj")
        direct = F.normalize(model.encode_image(torch.randn(2, 3, 32, 32), project=True), dim=-1)
    assert encoded.pre_features.shape == (8, 64) and encoded.features.shape == (8, 32)
    assert direct.shape == (2, 32)


def test_prolip_without_training_is_zero_shot(model, encoded):
    ctx = adapt.context_for(model, NAMES)
    prolip = adapt.fit("prolip", ctx, encoded, epochs=0)
    zero_shot = adapt.fit("zeroshot", ctx, encoded)
    assert_close_rel(prolip.logits(encoded.pre_features), zero_shot.logits(encoded.features), REL, "prolip@0")
    assert prolip.hparams["lam"] == pytest.approx(1 / 2) and prolip.hparams["lam_rule"] == "1/shots"


def test_prolip_huge_lambda_stays_at_the_pretrained_map(model, encoded):
    ctx = adapt.context_for(model, NAMES)
    prolip = adapt.fit("prolip", ctx, encoded, epochs=20, lam=1e6, lr=1e-6)
    zero_shot = adapt.fit("zeroshot", ctx, encoded)
    assert_close_rel(prolip.logits(encoded.pre_features), zero_shot.logits(encoded.features), 1e-3, "prolip lam=1e6")


def _prolip_task(model, seed: int = 0):
    """Pre-projection clusters whose projected means are unrelated to the (random) class text weights:
    zero-shot is near chance, a learned projection maps each cluster onto its class's text direction."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, 64, generator=g) * 3.0

    def draw(n: int):
        y = torch.arange(4).repeat_interleave(n)
        return means[y] + torch.randn(len(y), 64, generator=g), y

    text = F.normalize(torch.randn(32, 4, generator=g), dim=0)
    ctx = FitContext(text_weights=text, logit_scale=100.0, model=model)
    with torch.no_grad():
        def features(pre):
            return F.normalize(model.project_image(pre), dim=-1)
        pre, y = draw(8)
        test_pre, test_y = draw(50)
        return ctx, LabelledFeatures(features(pre), y, NAMES, pre_features=pre), test_pre, features(test_pre), test_y


def test_prolip_learns_what_zero_shot_cannot(model):
    ctx, train, test_pre, test_features, test_y = _prolip_task(model)
    zero_shot = _accuracy(adapt.fit("zeroshot", ctx, train).logits(test_features), test_y)
    prolip = adapt.fit("prolip", ctx, train, lr=1e-2, epochs=100)
    learned = _accuracy(prolip.logits(test_pre), test_y)
    assert learned >= 0.9 and learned > zero_shot + 0.3, (learned, zero_shot)
    assert prolip.hparams["final_loss"] < prolip.hparams["first_loss"]
    weights = dict(model.named_parameters())["visual.proj"]
    assert not weights.requires_grad or weights.grad is None  # the model itself was not trained


def test_prolip_chooses_lr_on_val_from_the_grid_and_records_it(model):
    ctx, train, test_pre, test_features, test_y = _prolip_task(model)
    val = LabelledFeatures(test_features, test_y, NAMES, pre_features=test_pre)
    grid = (1e-6, 1e-2, 1e-4)  # the best (1e-2: val 1.0 vs 0.31 and 0.38) neither first nor last
    searched = adapt.fit("prolip", ctx, train, val, epochs=30, lr_grid=grid)
    h = searched.hparams
    assert h["lr_chosen_on"] == "val" and h["lr_grid"] == list(grid) and h["lr"] in grid
    assert h["lam_rule"] == "1/shots" and h["lam"] == pytest.approx(1 / 8)  # lambda stays validation-free
    accs = [_accuracy(adapt.fit("prolip", ctx, train, lr=g, epochs=30).logits(test_pre), test_y) for g in grid]
    assert h["lr"] == grid[accs.index(max(accs))] and h["val_accuracy"] == pytest.approx(max(accs)), accs
    assert _accuracy(searched.logits(test_pre), test_y) == pytest.approx(max(accs))
    plain = adapt.fit("prolip", ctx, train, epochs=2)  # no val: the paper's validation-free default
    assert plain.hparams["lr"] == 1e-5 and plain.hparams["lr_chosen_on"] == "default"
    assert plain.hparams["val_accuracy"] is None
    given = adapt.fit("prolip", ctx, train, val, epochs=2, lr=1e-3)  # an explicit lr is not searched
    assert given.hparams["lr"] == 1e-3 and given.hparams["lr_chosen_on"] == "given"
    joint = adapt.fit("prolip", ctx, train, val, epochs=5, lr_grid=(1e-2,), lam_grid=(1.0, 0.0))  # the repo's joint
    assert joint.hparams["lam_rule"] == "val" and joint.hparams["lam"] in (1.0, 0.0)
    with pytest.raises(ValueError, match="lr_grid is empty"):
        adapt.fit("prolip", ctx, train, val, lr_grid=())
    with pytest.raises(ValueError, match="val has none"):
        adapt.fit("prolip", ctx, train, LabelledFeatures(test_features, test_y, NAMES), epochs=1)


def test_prolip_save_load_and_errors(model, encoded, tmp_path):
    ctx = adapt.context_for(model, NAMES)
    prolip = adapt.fit("prolip", ctx, encoded, epochs=3, lr=1e-3)
    loaded = adapt.load(prolip.save(tmp_path / "prolip"))
    assert_close_rel(loaded.logits(encoded.pre_features), prolip.logits(encoded.pre_features), REL, "reloaded")
    with pytest.raises(ValueError, match="PRE-projection"):
        prolip.logits(encoded.features)
    plain = LabelledFeatures(encoded.features, encoded.labels, NAMES)
    with pytest.raises(ValueError, match="pre-projection features"):
        adapt.fit("prolip", ctx, plain)
    with pytest.raises(ValueError, match="pre_features must be"):
        LabelledFeatures(encoded.features, encoded.labels, NAMES, pre_features=torch.zeros(3, 64))
    views = torch.stack([encoded.pre_features, encoded.pre_features + 0.01])  # (V, N, P) accepted
    adapt.fit("prolip", ctx, LabelledFeatures(encoded.features, encoded.labels, NAMES, pre_features=views), epochs=2)


# ----------------------------------------------------------------------------------------------- CoOp


def test_coop_initial_prompt_is_the_template(model, encoded):
    ctx = adapt.context_for(model, NAMES)
    coop = adapt.fit("coop", ctx, encoded, ctx_init="a photo of a", epochs=0)
    expected = _encode_prompts(model, [f"a photo of a {name}." for name in NAMES])  # (D, C)
    assert_close_rel(coop.text_weights, expected, REL, "coop end @ init")
    zero_shot = adapt.fit("zeroshot", FitContext(text_weights=expected, logit_scale=ctx.logit_scale), encoded)
    assert_close_rel(coop.logits(encoded.features), zero_shot.logits(encoded.features), REL, "coop logits")
    middle = adapt.fit("coop", ctx, encoded, ctx_init="a photo of a", epochs=0, position="middle")
    expected_middle = _encode_prompts(model, [f"a photo {name} of a." for name in NAMES])
    assert_close_rel(middle.text_weights, expected_middle, REL, "coop middle @ init")
    assert_close_rel(middle.text_features(model, ["bird"]), _encode_prompts(model, ["a photo bird of a."]), REL, "new")


def test_coop_learns_and_round_trips(model, tmp_path):
    # Images that look like the text of another context ("itap of my <name>."): a learned context can reach them.
    g = torch.Generator().manual_seed(3)
    means = _encode_prompts(model, [f"itap of my {name}." for name in NAMES]).T  # (C, D)
    y = torch.arange(4).repeat_interleave(6)
    x = F.normalize(means[y] + 0.1 * torch.randn(len(y), 32, generator=g) / math.sqrt(32), dim=-1)
    train = LabelledFeatures(x, y, NAMES)
    ctx = adapt.context_for(model, NAMES)
    coop = adapt.fit("coop", ctx, train, n_ctx=4, lr=0.5, epochs=40, warmup_epochs=0, seed=2)
    losses, accs = coop.hparams["train_loss"], coop.hparams["train_accuracy"]
    assert losses[-1] < 0.9 * losses[0], losses
    assert accs[-1] > accs[0], accs
    assert all(p.requires_grad for p in model.parameters())  # the frozen tower's flags are restored
    loaded = adapt.load(coop.save(tmp_path / "coop"))
    assert_close_rel(loaded.logits(x), coop.logits(x), REL, "coop reloaded")
    assert_close_rel(loaded.ctx, coop.ctx, REL, "ctx")
    with pytest.raises(ValueError, match="FitContext.model"):
        adapt.fit("coop", FitContext(text_weights=ctx.text_weights), train, epochs=1)


# ----------------------------------------------------------------------------------------------- APE


def _ape_by_hand(text, keys, values, labels, f, feat_num, w, alpha, beta, gamma, scale):
    """The reference's loops, element by element."""
    d, c = text.shape
    groups = [[text[:, i]] + [keys[n] for n in range(len(labels)) if labels[n] == i] for i in range(c)]
    sim_sum, count = torch.zeros(d, dtype=torch.float64), 0
    for i in range(c):
        for j in range(c):
            if i != j:
                for a in groups[i]:
                    for b in groups[j]:
                        sim_sum += a.double() * b.double()
                        count += 1
    criterion = -w[0] * sim_sum / count + w[1] * text.double().var(dim=1)
    idx = torch.topk(criterion.float(), feat_num).indices
    nt = text[idx] / text[idx].norm(dim=0, keepdim=True)
    nk = keys[:, idx] / keys[:, idx].norm(dim=-1, keepdim=True)
    nf = f[:, idx] / f[:, idx].norm(dim=-1, keepdim=True)
    probs = (nk @ nt).softmax(1)
    div = torch.sum(values * torch.log2((values + 1e-6) / (probs + 1e-6)), dim=1)[:, None]
    soft = values * (div * gamma).exp()
    return scale * f @ text + alpha * (-(beta - beta * (nf @ nk.T))).exp() @ soft


def test_ape_logits_by_hand(tmp_path):
    g = torch.Generator().manual_seed(5)
    d, names = 12, ("a", "b", "c")
    text = F.normalize(torch.randn(d, 3, generator=g), dim=0)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # unequal shots
    keys = F.normalize(torch.randn(6, d, generator=g), dim=-1)
    f = F.normalize(torch.randn(5, d, generator=g), dim=-1)
    train = LabelledFeatures(keys, labels, names)
    ctx = FitContext(text_weights=text, logit_scale=50.0)
    ape = adapt.fit("ape", ctx, train, feat_num=7, w=(0.6, 0.4), alpha=1.5, beta=2.0, gamma=0.3)
    values = F.one_hot(labels, 3).float()
    expected = _ape_by_hand(text, keys, values, labels, f, 7, (0.6, 0.4), 1.5, 2.0, 0.3, 50.0)
    assert_close_rel(ape.logits(f), expected, REL, "ape logits")
    loaded = adapt.load(ape.save(tmp_path / "ape"))
    assert_close_rel(loaded.logits(f), ape.logits(f), REL, "ape reloaded")
    assert adapt.fit("ape", ctx, train).hparams["feat_num"] == round(d * 500 / 1024)


def test_ape_search_reads_val_only_and_improves_on_it():
    g = torch.Generator().manual_seed(7)
    means = F.normalize(torch.randn(4, 16, generator=g), dim=-1)

    def draw(n):
        y = torch.arange(4).repeat_interleave(n)
        return F.normalize(means[y] + 0.25 * torch.randn(len(y), 16, generator=g), dim=-1), y

    text = F.normalize(torch.randn(16, 4, generator=g), dim=0)  # uninformative text: the cache must carry it
    ctx = FitContext(text_weights=text, logit_scale=100.0)
    train, val = LabelledFeatures(*draw(4), NAMES), LabelledFeatures(*draw(4), NAMES)
    plain = adapt.fit("ape", ctx, train, search=False)
    searched = adapt.fit("ape", ctx, train, val, search_steps=(20, 10, 3))
    assert searched.hparams["searched"] and not plain.hparams["searched"]
    assert searched.hparams["val_accuracy"] >= _accuracy(plain.logits(val.features), val.labels)
    assert searched.hparams["val_accuracy"] == pytest.approx(_accuracy(searched.logits(val.features), val.labels))


def test_model_methods_cannot_receive_test_data(model, encoded):
    """fit takes (ctx, train, val, *, hparams) for prolip and coop too: no argument can carry a test split."""
    import inspect

    from clipforge.adapt.base import get_method

    ctx = adapt.context_for(model, NAMES)
    for method in ("prolip", "coop"):
        params = list(inspect.signature(get_method(method)).parameters.values())
        assert [p.name for p in params[:3]] == ["ctx", "train", "val"], method
        assert all(p.kind is p.KEYWORD_ONLY for p in params[3:]), method
        adapt.fit(method, ctx, encoded, encoded, epochs=1)
