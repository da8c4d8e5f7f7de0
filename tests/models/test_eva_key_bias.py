"""EVA02's attention has no key bias (timm: q_bias and v_bias only). With `vision.key_bias` false (the EVA02
configs) the k third of clipforge's packed `in_proj_bias` is a structural zero: training with AdamW and weight decay
leaves it exactly zero, so a trained EVA02 converts to open_clip; a nonzero one is refused on load, not ignored.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clipforge.models import CLIP, CLIPConfig, ConfigError, VisionConfig, get_model_config
from clipforge.weights.loading import save_model

SMALL_ROW = dict(image_size=64, patch_size=16, width=64, layers=2, heads=4)
SMALL_TRUNK = dict(img_size=64, depth=2, embed_dim=64, num_heads=4)
TOL = 1e-4


def _small_eva(key_bias=False):
    base = get_model_config("EVA02-B-16")
    vision = dataclasses.replace(base.vision, **SMALL_ROW, key_bias=key_bias)
    text = dataclasses.replace(base.text, width=32, heads=2, layers=2, vocab_size=1000)
    return base.replace(embed_dim=32, vision=vision, text=text)


def _key_biases(model):
    return [block.attn.in_proj_bias.detach().chunk(3) for block in model.visual.transformer.resblocks]  # (q, k, v)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(8, 3, 64, 64, generator=g)
    tokens = torch.randint(3, 990, (8, 77), generator=g)
    tokens[:, 12] = 999  # the end-of-text stand-in: CLIP's causal tower pools at the largest id
    tokens[:, 13:] = 0
    return images, tokens


def _train(model, steps=6):
    """A few AdamW steps (weight decay on every parameter, biases included) on a fixed batch: the losses."""
    images, tokens = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        logits = model.get_logits(images, tokens)[0]  # (B, B)
        labels = torch.arange(len(images))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_named_eva02_configs_have_no_key_bias():
    for name in ("EVA02-B-16", "EVA02-L-14", "EVA02-L-14-336"):
        assert get_model_config(name).vision.key_bias is False, name
    assert VisionConfig().key_bias is True  # every other tower keeps its trained key bias
    with pytest.raises(ConfigError, match="vision.key_bias=false applies to EVA attention blocks only"):
        CLIPConfig.from_dict({"vision": {"key_bias": False}})


def test_adamw_training_keeps_the_key_bias_exactly_zero_and_learns():
    torch.manual_seed(0)
    model = CLIP(_small_eva())
    before = [tuple(t.clone() for t in parts) for parts in _key_biases(model)]
    losses = _train(model)
    assert losses[-1] < losses[0] - 1e-3, f"training does not learn: {losses}"
    for (q0, _, v0), (q, k, v) in zip(before, _key_biases(model)):
        assert torch.equal(k, torch.zeros_like(k))  # exactly: no gradient, and decay of zero is zero
        assert not torch.equal(q, q0) and not torch.equal(v, v0)  # q and v biases do train


def test_a_trained_key_bias_moves_where_the_config_allows_one():
    """The same run with key_bias true (the pre-fix behaviour): rotary embeddings give the k bias a gradient."""
    torch.manual_seed(0)
    model = CLIP(_small_eva(key_bias=True))
    _train(model, steps=2)
    assert any(k.abs().max() > 0 for _, k, _ in _key_biases(model))
    with pytest.raises(ConfigError, match="nonzero key bias"):
        from clipforge.weights.openclip import openclip_state_dict

        openclip_state_dict(model.config, model.state_dict())


def test_compiled_image_tower_gives_the_key_bias_no_gradient():
    """torch.compile keeps the structural zero (no hook for it to drop)."""
    torch.manual_seed(0)
    model = CLIP(_small_eva()).train()
    images, _ = _batch()
    torch.compile(model.visual, backend="aot_eager")(images[:2]).pow(2).sum().backward()
    for block in model.visual.transformer.resblocks:
        q, k, v = block.attn.in_proj_bias.grad.chunk(3)
        assert torch.equal(k, torch.zeros_like(k)) and q.abs().max() > 0 and v.abs().max() > 0


def test_grad_checkpointing_gives_the_key_bias_no_gradient():
    torch.manual_seed(0)
    model = CLIP(_small_eva()).train()
    model.set_grad_checkpointing(True)
    images, _ = _batch()
    model.encode_image(images).pow(2).sum().backward()
    for block in model.visual.transformer.resblocks:
        q, k, v = block.attn.in_proj_bias.grad.chunk(3)
        assert torch.equal(k, torch.zeros_like(k)) and q.abs().max() > 0 and v.abs().max() > 0


def test_a_nonzero_key_bias_is_refused_on_load_naming_the_key():
    model = CLIP(_small_eva())
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["visual.transformer.resblocks.1.attn.in_proj_bias"][64:128] = 0.5
    with pytest.raises(RuntimeError, match=r"resblocks\.1\.attn\.in_proj_bias: its key third is nonzero.*key_bias"):
        model.load_state_dict(sd)
    CLIP(_small_eva(key_bias=True)).load_state_dict(sd)  # a config with a key bias takes it


def test_trained_eva02_converts_to_open_clip(monkeypatch, tmp_path):
    """After training, `clipforge convert --to openclip` succeeds and open_clip's own loader gives the same
    features (timm's tower shrunk to the small row, as tests/weights/test_export_families.py does)."""
    open_clip = pytest.importorskip("open_clip")
    timm = pytest.importorskip("timm")
    from clipforge.cli.convert import main as convert_main
    from clipforge.weights import openclip_timm

    name = "eva02_base_patch16_clip_224"
    monkeypatch.setitem(openclip_timm.TIMM_EVA_TOWERS, name, {**openclip_timm.TIMM_EVA_TOWERS[name], **SMALL_ROW})
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda model_name, **kw: create(model_name, **{**kw, **SMALL_TRUNK}))
    torch.manual_seed(0)
    model = CLIP(_small_eva())
    _train(model, steps=3)
    model.eval()
    native = save_model(model, tmp_path / "native", "clipforge")
    assert convert_main([str(native), str(tmp_path / "oc"), "--to", "openclip"]) == 0
    theirs = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}", require_pretrained=True).eval()
    images, _ = _batch(1)
    with torch.no_grad():
        ref = model.encode_image(images[:3], normalize=True)
        got = theirs.encode_image(images[:3], normalize=True)
    diff = (got - ref).abs().max().item()
    print(f"trained EVA02 -> open_clip: max abs diff {diff:.2e}")
    assert diff <= TOL
