"""The training matrix (test_towers_training_matrix.py) continued: torch.compile, patch dropout, FSDP2 view warnings.

- torch.compile: `encode_image` / `encode_text` of every tower kind compiled with the "aot_eager" backend (Dynamo
  tracing and AOTAutograd's joint graph, no code generation: quick on CPU) give eager's output and input gradients;
- patch dropout (FLIP) at 0.5 on the ViT-like towers (ViT, SigLIP's MAP head, EVA02's rotary ViT): training mode
  drops patches (the output changes, gradients flow to the patch embedding), eval mode is the plain tower;
- FSDP2: no unit returns a view (the MAP head's pooled token, mT5's relative position bias used to): FSDP2 warns of
  such outputs because an in-place op on one would skip the unit's all-gather.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch

from clipforge.models import CLIP
from clipforge.train.sharding import _sharded_units
from support.tolerance import assert_close_rel
from train.test_towers_training_matrix import BUILDERS, _inputs, _loss, gloo_group  # noqa: F401 (a fixture)

# Compile time per tower on 2 CPU cores is 1-2 s, so each distinct tower is compiled once: every image tower kind's
# image side; the text side of the kinds whose text tower differs (CLIP's causal transformer on tiny-vit, SigLIP's
# bidirectional one, the three Hugging Face encoders). The other kinds' text tower is tiny-vit's CLIP transformer.
TEXT_KINDS = {"tiny-vit", "tiny-siglip-map", "xlm-roberta", "nllb-m2m100", "mt5"}
HF_TEXT_KINDS = {"xlm-roberta", "nllb-m2m100", "mt5"}  # their image tower is the small ViT that tiny-vit covers
VIT_LIKE = ["tiny-vit", "tiny-siglip-map", "eva02"]


@pytest.fixture(scope="module")
def built() -> dict:
    out = {}
    for name, build in BUILDERS.items():
        torch.manual_seed(0)
        out[name] = build()
    return out


def _towers(kind: str) -> list[str]:
    return (["image"] if kind not in HF_TEXT_KINDS else []) + (["text"] if kind in TEXT_KINDS else [])


def _run_tower(model: CLIP, tower: str, fn, images: torch.Tensor, tokens: torch.Tensor):
    """(output, gradient w.r.t. the tower's first parameter) of `fn` (encode_image / encode_text, maybe compiled)."""
    model.zero_grad(set_to_none=True)
    out = fn(images) if tower == "image" else fn(tokens)  # (B, D)
    out.pow(2).sum().backward()
    module = model.visual if tower == "image" else model.text
    first = next(p for p in module.parameters() if p.grad is not None)
    return out.detach(), first.grad.detach().clone()


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_compiled_encoders_match_eager_forward_and_backward(kind, built):
    torch._dynamo.reset()
    model = copy.deepcopy(built[kind]).eval()  # eval: HF encoders' dropout off, so both runs are deterministic
    images, tokens = _inputs(model)
    for tower in _towers(kind):
        eager_fn = model.encode_image if tower == "image" else model.encode_text
        want, want_grad = _run_tower(model, tower, eager_fn, images, tokens)
        compiled = torch.compile(eager_fn, backend="aot_eager")
        got, got_grad = _run_tower(model, tower, compiled, images, tokens)
        assert_close_rel(got, want, rel=1e-5, what=f"{kind} compiled {tower} output")
        assert_close_rel(got_grad, want_grad, rel=1e-5, what=f"{kind} compiled {tower} gradient")


def _with_patch_dropout(model: CLIP, rate: float) -> CLIP:
    """The same weights in a tower whose config drops `rate` of the patches in training."""
    cfg = model.config
    dropped = CLIP(cfg.replace(vision=dataclasses.replace(cfg.vision, patch_dropout=rate)))
    dropped.load_state_dict(model.state_dict())
    return dropped


@pytest.mark.parametrize("kind", VIT_LIKE)
def test_patch_dropout_changes_training_output_keeps_eval_and_backprops(kind, built):
    plain = copy.deepcopy(built[kind]).eval()
    model = _with_patch_dropout(plain, 0.5)
    images, _ = _inputs(model)
    with torch.no_grad():
        reference = plain.encode_image(images)  # (B, D)
        assert_close_rel(model.eval().encode_image(images), reference, rel=1e-6, what=f"{kind} eval with dropout")
    model.train()
    torch.manual_seed(3)
    out = model.encode_image(images)
    assert out.shape == reference.shape
    assert (out.detach() - reference).abs().max() > 1e-3 * reference.abs().max(), f"{kind}: no patch was dropped"
    out.pow(2).sum().backward()
    grads = [p.grad for p in model.visual.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), f"{kind}: a parameter got no gradient"
    patch_weight = next(p for n, p in model.visual.named_parameters() if "conv1" in n or "patch" in n)
    assert patch_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["tiny-siglip-map", "mt5", "tiny-vit", "eva02"])
def test_fsdp2_training_warns_of_no_view_output(kind, built, gloo_group):  # noqa: F811 (the fixture)
    from torch.distributed.fsdp import fully_shard

    model = copy.deepcopy(built[kind]).train()
    for unit in _sharded_units(model):
        fully_shard(unit)
    images, tokens = _inputs(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _loss(model, images, tokens).backward()
    views = [str(w.message) for w in caught if "view" in str(w.message)]
    assert not views, f"{kind}: {views[0]}"
