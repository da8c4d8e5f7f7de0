"""CoCoOp (prompt_learned): with its meta-net at zero it IS CoOp, it learns, it needs (and names) the model at
scoring time, and ctx + meta-net round-trip through save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.support.tolerance import assert_close_rel

import clipforge
import clipforge.adapt as adapt
from clipforge.adapt import FitContext, LabelledFeatures
from clipforge.adapt.prompt_learned import CoCoOpAdapter, meta_net

REL = 1e-5
NAMES = ("cat", "dog", "car", "tree")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return clipforge.create_model("tiny-vit").eval()


def _encode_prompts(model, prompts: list[str]) -> torch.Tensor:
    tokens = clipforge.get_tokenizer(model)(prompts)
    with torch.no_grad():
        return model.encode_text(tokens, normalize=True).float().T  # (D, C)


def _task(model, per_class: int = 4, seed: int = 3):
    """Images that look like the text of another context ("itap of my <name>."): prompts can learn to reach them."""
    g = torch.Generator().manual_seed(seed)
    means = _encode_prompts(model, [f"itap of my {name}." for name in NAMES]).T  # (C, D)
    y = torch.arange(4).repeat_interleave(per_class)
    x = F.normalize(means[y] + 0.1 * torch.randn(len(y), means.shape[1], generator=g) / math.sqrt(32), dim=-1)
    return LabelledFeatures(x, y, NAMES)


def _zeroed(dim: int, width: int) -> torch.nn.Sequential:
    net = meta_net(dim, width)
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    return net


@pytest.mark.parametrize("position", ["end", "middle"])
def test_zero_meta_net_is_coop_with_the_same_context(model, position):
    train = _task(model)
    ctx = adapt.context_for(model, NAMES)
    coop = adapt.fit("coop", ctx, train, n_ctx=4, epochs=2, lr=0.5, warmup_epochs=0, position=position)  # trained
    width = coop.ctx.shape[1]
    scale = coop.hparams["logit_scale"]
    hparams = {"n_ctx": 4, "position": position, "embed_dim": train.dim, "width": width, "logit_scale": scale}
    cocoop = CoCoOpAdapter(NAMES, hparams, ctx=coop.ctx, net=_zeroed(train.dim, width)).bind(model)
    assert_close_rel(cocoop.logits(train.features), coop.logits(train.features), REL, f"cocoop=coop {position}")


def test_untrained_cocoop_from_the_template_is_zero_shot_of_that_template(model):
    train = _task(model)
    ctx = adapt.context_for(model, NAMES)
    cocoop = adapt.fit("cocoop", ctx, train, epochs=0)  # the paper's init: "a photo of a"
    assert cocoop.hparams["n_ctx"] == 4 and cocoop.hparams["batch_size"] == 1 and cocoop.hparams["epochs"] == 0
    with torch.no_grad():
        for p in cocoop.meta_net.parameters():
            p.zero_()
    expected = ctx.logit_scale * train.features @ _encode_prompts(model, [f"a photo of a {n}." for n in NAMES])
    assert_close_rel(cocoop.logits(train.features), expected, REL, "cocoop@init")


ADAPT_NAMES = ("zebra", "violin", "ocean", "pizza")  # distinct in the tiny random text tower (cat/dog are not)


def _shifted_task(model, per_class: int, seed: int, beta: float = 0.2) -> LabelledFeatures:
    """Images that look like "itap of my <name>." pushed by `beta` from their class's zero-shot directions (the
    CLIP-ensemble weight and CoCoOp's initial prompt "a photo of a <name>.") towards the next class's: both
    classifiers confuse them, a learned context can reach them."""
    g = torch.Generator().manual_seed(seed)
    target = _encode_prompts(model, [f"itap of my {name}." for name in ADAPT_NAMES]).T  # (C, D)
    initial = _encode_prompts(model, [f"a photo of a {name}." for name in ADAPT_NAMES]).T  # (C, D)
    zero_shot = adapt.context_for(model, ADAPT_NAMES).text_weights.T  # (C, D)
    y = torch.arange(len(ADAPT_NAMES)).repeat_interleave(per_class)
    shift = (initial.roll(-1, dims=0) - initial + zero_shot.roll(-1, dims=0) - zero_shot)[y]  # (N, D)
    noise = 0.1 * torch.randn(len(y), target.shape[1], generator=g) / math.sqrt(target.shape[1])
    return LabelledFeatures(F.normalize(target[y] + beta * shift + noise, dim=-1), y, ADAPT_NAMES)


def test_cocoop_beats_zero_shot_on_held_out_features(model):
    train, test = _shifted_task(model, per_class=4, seed=13), _shifted_task(model, per_class=25, seed=11)
    ctx = adapt.context_for(model, ADAPT_NAMES)

    def accuracy(adapter) -> float:
        return (adapter.predict(test.features) == test.labels).float().mean().item()

    zero_shot = accuracy(adapt.fit("zeroshot", ctx, train))
    untrained = accuracy(adapt.fit("cocoop", ctx, train, epochs=0, seed=1))  # its initial prompts + meta-net
    assert max(zero_shot, untrained) < 0.75  # the task needs adaptation (measured: 0.50 and 0.50)
    cocoop = adapt.fit("cocoop", ctx, train, lr=0.2, epochs=15, batch_size=4, warmup_epochs=0, seed=1)
    learned = accuracy(cocoop)
    assert learned >= max(zero_shot, untrained) + 0.25, (learned, zero_shot, untrained)  # measured: 1.00


def test_cocoop_learns_and_round_trips(model, tmp_path):
    train = _task(model)
    ctx = adapt.context_for(model, NAMES)
    cocoop = adapt.fit("cocoop", ctx, train, lr=0.5, epochs=6, batch_size=4, warmup_epochs=0, seed=2)
    losses, accs = cocoop.hparams["train_loss"], cocoop.hparams["train_accuracy"]
    assert losses[-1] < 0.9 * losses[0], losses
    assert accs[-1] >= accs[0], accs
    assert all(p.requires_grad for p in model.parameters())  # the frozen tower's flags are restored
    assert not any(name.startswith("model") for name in cocoop.state_dict())  # the bound model is not saved
    folder = cocoop.save(tmp_path / "cocoop")
    loaded = adapt.load(folder)
    with pytest.raises(ValueError, match=r"bind\(model\)"):
        loaded.logits(train.features)  # needs the text tower, and says how to give it
    loaded.bind(model)
    assert_close_rel(loaded.logits(train.features), cocoop.logits(train.features), REL, "cocoop reloaded")
    assert_close_rel(loaded.ctx, cocoop.ctx, REL, "ctx")
    assert_close_rel(loaded.meta_net.linear2.weight, cocoop.meta_net.linear2.weight, REL, "meta-net")
    new = cocoop.for_classes(("bird", "fish"))  # base-to-new: the same prompt learner, other class names
    assert new.logits(train.features).shape == (len(train), 2)


def test_cocoop_errors_are_named(model):
    train = _task(model, per_class=1)
    ctx = adapt.context_for(model, NAMES)
    with pytest.raises(ValueError, match="FitContext.model"):
        adapt.fit("cocoop", FitContext(text_weights=ctx.text_weights), train, epochs=1)
    with pytest.raises(ValueError, match="batch_size"):
        adapt.fit("cocoop", ctx, train, batch_size=0)
    other = clipforge.create_model("tiny-vit")
    cocoop = adapt.fit("cocoop", ctx, train, epochs=0)
    bad = CoCoOpAdapter(NAMES, {**cocoop.hparams, "width": cocoop.ctx.shape[1] + 1})
    with pytest.raises(ValueError, match="text width"):
        bad.bind(other)
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        cocoop.logits(torch.zeros(2, 7))
