"""Inference shortcuts against the full computation, for every tower kind (issue 11 item 5).

Three shortcuts exist: text trimming (a causal text tower stops after the batch's last pooled position),
the class-token-only last ViT block (only the class token's query runs through the last block), and fused
attention (SDPA instead of softmax(QK^T)V). Each is checked where it is enabled (same output as the full path,
relative tolerance) and checked to be off where it would be inexact: bidirectional text towers (SigLIP) see
every position, "last" pooling needs the last one, and average pooling, SigLIP's MAP head and an attentional
pooler read every patch of the last block. The reference full computations are `forward_tokens` (no trimming,
every position through every block) of each tower.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clipforge.models import CLIP, TextConfig, VisionConfig, get_model_config
from clipforge.models.layers import Attention
from clipforge.models.text import TextTransformer
from support.tolerance import assert_close_rel

REL = 1e-5
CONTEXT, VOCAB, PAD, EOS = 16, 100, 0, 99  # EOS is the highest id, so "argmax" and "eos" pool at the same token


def _tokens() -> torch.Tensor:
    """(4, 16) right-padded rows whose last end token sits at position 7 (so trimming keeps 8 of 16), plus an
    all-padding row (pooled at 0, fully masked under pad_mask)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.full((4, CONTEXT), PAD, dtype=torch.long)
    for row, n in enumerate((3, 7, 5)):
        tokens[row, :n] = torch.randint(1, EOS, (n,), generator=g)
        tokens[row, n] = EOS
    return tokens


def _text_tower(**fields) -> TextTransformer:
    torch.manual_seed(0)
    cfg = TextConfig(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=2, layers=2, pad_id=PAD, eos_id=EOS,
                     **fields)
    return TextTransformer(cfg, 24).eval()


# (fields, whether trimming is on). Causal towers trim (after the last end token, or to position 0 for "first");
# bidirectional towers and "last" pooling never do.
TEXT_CASES = {
    "causal-argmax": (dict(), True),
    "causal-eos": (dict(pool_type="eos"), True),
    "causal-argmax-padmask": (dict(pad_mask=True), True),
    "causal-eos-padmask": (dict(pool_type="eos", pad_mask=True), True),
    "causal-first": (dict(pool_type="first"), True),
    "causal-last": (dict(pool_type="last"), False),
    "bidir-last": (dict(causal_mask=False, pool_type="last"), False),
    "bidir-last-padmask": (dict(causal_mask=False, pad_mask=True, pool_type="last"), False),
    "bidir-first-padmask": (dict(causal_mask=False, pad_mask=True, pool_type="first"), False),
    "bidir-eos-padmask": (dict(causal_mask=False, pad_mask=True, pool_type="eos"), False),
    "bidir-argmax": (dict(causal_mask=False), False),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_text_trimming_is_exact_where_enabled_and_off_elsewhere(case):
    fields, trims = TEXT_CASES[case]
    text, tokens = _text_tower(**fields), _tokens()
    positions = text.pool_positions(tokens) if text.cfg.pool_type in ("argmax", "eos") else None
    keep = text._trim_length(positions, CONTEXT)
    assert (keep < CONTEXT) == trims, f"{case}: trimming to {keep} of {CONTEXT} positions"
    with torch.no_grad():
        full = text.forward_tokens(tokens)[0]  # (4, 24): every position through every block
        assert_close_rel(text(tokens), full, rel=REL, what=f"{case}: forward vs full")
        embedded = text.token_embedding(tokens)
        prompt = text.forward_embeddings(embedded, tokens)  # the prompt learners' path trims the same way
        assert_close_rel(prompt, full, rel=REL, what=f"{case}: forward_embeddings vs full")


@pytest.mark.parametrize("pool", ["argmax", "eos"])
def test_trimming_a_bidirectional_tower_would_change_its_features(pool):
    """Why trimming stays off there: in a bidirectional tower without a pad mask (SigLIP's), the padding after
    the end token is attended to by every earlier position, so cutting it changes the pooled feature. The
    shortcut would be wrong there, not merely slower."""
    text, tokens = _text_tower(causal_mask=False, pool_type=pool), _tokens()
    positions = text.pool_positions(tokens)
    cut = tokens[:, : int(positions.max()) + 1]  # what the causal rule would keep: 8 of 16
    with torch.no_grad():
        full = text.forward_tokens(tokens)[0]
        trimmed = text._encode(text.token_embedding(cut), cut, positions)[0]
    assert not torch.allclose(trimmed, full, rtol=1e-3, atol=1e-3)


def _vision_model(name: str, **vision) -> CLIP:
    torch.manual_seed(0)
    cfg = get_model_config(name)
    if vision:
        cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, **vision))
    model = CLIP(cfg).eval()
    with torch.no_grad():  # LayerNorms and biases start at 1/0: move them so a skipped op cannot go unnoticed
        g = torch.Generator().manual_seed(1)
        for p in model.visual.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


def _small_eva(**vision) -> CLIP:
    base = get_model_config("EVA02-B-16")
    v = dataclasses.replace(base.vision, image_size=32, layers=2, width=64, heads=4, **vision)
    t = dataclasses.replace(base.text, width=32, heads=2, layers=1)
    torch.manual_seed(0)
    return CLIP(base.replace(embed_dim=32, vision=v, text=t)).eval()


# name -> (model factory, whether the class-token-only last block is used)
VISION_CASES = {
    "vit-tok": (lambda: _vision_model("tiny-vit"), True),
    "vit-tok-final-ln-after-pool": (lambda: _vision_model("tiny-vit", final_ln_after_pool=True), True),
    "vit-tok-layerscale": (lambda: _vision_model("tiny-vit", ls_init_value=0.1), True),
    "eva-rope-tok": (_small_eva, True),
    "eva-rope-tok-no-ln-pre": (lambda: _small_eva(no_ln_pre=True), True),
    "vit-avg-class-token": (lambda: _vision_model("tiny-siglip"), False),
    "vit-avg-no-class-token": (lambda: _vision_model("tiny-siglip", class_token=False), False),
    "vit-map-no-class-token": (lambda: _vision_model("tiny-siglip-map"), False),
    "vit-map-class-token": (lambda: _vision_model("tiny-siglip-map", class_token=True), False),
    "vit-attentional-pool": (lambda: _vision_model("tiny-vit-attnpool"), False),
    "eva-rope-avg": (lambda: _small_eva(pool_type="avg"), False),
}


@pytest.mark.parametrize("case", list(VISION_CASES))
def test_class_token_block_is_exact_where_enabled_and_off_elsewhere(case):
    factory, shortcut = VISION_CASES[case]
    visual = factory().visual
    assert visual.class_token_shortcut == shortcut, case
    size = visual.cfg.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = visual.forward_tokens(images)[0]  # every position through the last block
        assert_close_rel(visual(images), full, rel=REL, what=f"{case}: forward vs full")


def test_class_token_block_is_exact_at_an_interpolated_size_with_rope():
    """Another input size resamples positions and builds rotary tables for its grid; the shortcut still holds."""
    visual = _small_eva().visual
    visual.set_position_interpolation(True)
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close_rel(visual(images), visual.forward_tokens(images)[0], rel=REL, what="interpolated EVA")


def test_map_head_reads_every_patch_of_the_last_block():
    """Why the shortcut stays off for the MAP head: running the last block for the first token alone and pooling
    that gives another feature (the probe would attend to one token instead of all)."""
    visual = _vision_model("tiny-siglip-map").visual
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = visual(images)
        shortcut = visual.project(visual.pool(visual._run_blocks(images, last_block_queries=1))[0])
    assert not torch.allclose(shortcut, full, rtol=1e-3, atol=1e-3)


def _hf_text_model() -> CLIP:
    pytest.importorskip("transformers")
    hf = {"model_type": "bert", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32, "pad_token_id": PAD}
    cfg = get_model_config("tiny-vit")
    torch.manual_seed(0)
    return CLIP(cfg.replace(text=TextConfig(context_length=CONTEXT, hf_config=hf))).eval()


@pytest.mark.parametrize(
    "factory",
    [lambda: _vision_model("tiny-vit"), _small_eva, lambda: _vision_model("tiny-siglip-map"),
     lambda: _siglip_padmask()],
    ids=["vit", "eva", "siglip-map", "siglip-padmask-text"],
)
def test_fused_attention_matches_explicit_softmax(factory):
    """SDPA (default) and softmax(QK^T)V agree on every tower with clipforge attention, masks and rope included."""
    model = factory()
    assert any(isinstance(m, Attention) for m in model.modules())
    images = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(5))
    tokens = _tokens()
    with torch.no_grad():
        fused = model(images, tokens)
        model.set_fused_attention(False)
        plain = model(images, tokens)
    assert_close_rel(fused.image_features, plain.image_features, rel=REL, what="image: fused vs plain")
    assert_close_rel(fused.text_features, plain.text_features, rel=REL, what="text: fused vs plain")


def _siglip_padmask() -> CLIP:
    cfg = get_model_config("tiny-siglip-map")
    text = dataclasses.replace(cfg.text, context_length=CONTEXT, vocab_size=VOCAB, pad_mask=True, pool_type="eos",
                               pad_id=PAD, eos_id=EOS)
    torch.manual_seed(0)
    return CLIP(cfg.replace(text=text)).eval()


def test_towers_without_shortcuts_give_their_full_computation():
    """ConvNeXt and Hugging Face text towers have none of the shortcuts: their forward is the full computation
    (ConvNeXt: forward == forward_tokens), and trailing padding leaves HF text features unchanged (the padding
    mask already makes the padded length irrelevant, so no trimming is needed)."""
    convnext = _vision_model("tiny-convnext")
    assert not any(isinstance(m, Attention) for m in convnext.visual.modules())
    images = torch.randn(2, 3, convnext.image_size, convnext.image_size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert_close_rel(convnext.visual(images), convnext.visual.forward_tokens(images)[0], rel=REL, what="convnext")
    hf = _hf_text_model()
    assert not any(isinstance(m, Attention) for m in hf.text.modules())
    tokens = _tokens()[:3]
    with torch.no_grad():
        padded = hf.encode_text(tokens)
        short = hf.encode_text(tokens[:, :8])
    assert_close_rel(short, padded, rel=REL, what="HF text: padding changes nothing")


def test_vision_config_defaults_keep_the_shortcut():
    """The stock CLIP ViT (class token, tok pooling) keeps the shortcut; ViT-B-16's config says so too."""
    assert VisionConfig().pool_type == "tok" and VisionConfig().class_token
    with torch.device("meta"):
        assert CLIP(get_model_config("ViT-B-16")).visual.class_token_shortcut
