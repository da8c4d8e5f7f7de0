"""Patch dropout with rotary embeddings (EVA02 training, as EVA-CLIP trains): the kept patches keep THEIR positions'
rotations. Checked against a per-image manual computation and against timm's Eva given the same keep indices
(timm eva.py: PatchDropoutWithIndices, then the rope tables gathered by the keep indices).

Parity bar: max abs diff <= 1e-4 on L2-normalised fp32 features, random weights.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clipforge.models import CLIP, get_model_config
from clipforge.models.layers import PatchDropout
from clipforge.models.rope import rope_tables
from clipforge.weights.openclip import openclip_to_clipforge_keys
from support.tolerance import assert_close_rel

TOL = 1e-4


def _config(patch_dropout: float = 0.5):
    """A small EVA02-B/16 (rope with reference grid 16, SwiGLU, sub-LNs): 2 blocks of width 64 at 64 px."""
    base = get_model_config("EVA02-B-16")
    vision = dataclasses.replace(base.vision, image_size=64, layers=2, width=64, heads=4, patch_dropout=patch_dropout)
    text = dataclasses.replace(base.text, width=32, heads=2, layers=2)
    return base.replace(embed_dim=32, vision=vision, text=text)


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _capture_keep(model: CLIP) -> list[torch.Tensor]:
    """Record the keep indices the model's PatchDropout draws (the real draw and gather still run)."""
    seen: list[torch.Tensor] = []
    drop = model.visual.patch_dropout
    assert isinstance(drop, PatchDropout)
    original = drop.forward_with_indices

    def recording(x):
        out, keep = original(x)
        seen.append(keep)
        return out, keep

    drop.forward_with_indices = recording
    return seen


def _manual_features(
    model: CLIP, images: torch.Tensor, keep: torch.Tensor, table_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Per image: drop the patches not in keep, rotate each kept patch by its own grid position's angles (the
    un-batched (N, head_dim) table path; `table_rows` overrides which rows, to show a wrong table is caught), pool
    the class token and project; L2-normalised (B, D)."""
    rows = keep if table_rows is None else table_rows
    visual = model.visual
    visual.eval()  # the un-dropped embedding: dropout is done by hand below
    try:
        full = visual.embed(images)  # (B, 1 + N, width): ln_pre is per token, so dropping after it is the same
        sin, cos = rope_tables((4, 4), 16, ref_grid=visual.cfg.rope_ref_grid, theta=visual.cfg.rope_theta)
        outs = []
        for b in range(images.shape[0]):
            kept = torch.cat([full[b : b + 1, :1], full[b : b + 1, 1:][:, keep[b]]], dim=1)  # (1, 1 + kept, width)
            x = visual.transformer(kept, rope=(sin[rows[b]], cos[rows[b]]))
            outs.append(visual.project(visual.ln_post(x[:, 0])))
    finally:
        visual.train()
    return F.normalize(torch.cat(outs), dim=-1)


def test_rope_patch_dropout_is_accepted_and_kept_patches_keep_their_rotations():
    torch.manual_seed(0)
    model = CLIP(_config()).train()
    seen = _capture_keep(model)
    images = _images()
    got = model.encode_image(images, normalize=True)
    (keep,) = seen
    assert keep.shape == (3, 8), "half of the 16 patches are kept"
    with torch.no_grad():
        want = _manual_features(model, images, keep)
    diff = (got.detach() - want).abs().max().item()
    assert diff <= TOL, f"patch dropout + rope vs manual: max abs diff {diff:.2e}"
    # The un-gathered table (the first `kept` grid positions instead of each patch's own) is visibly wrong.
    with torch.no_grad():
        first_rows = torch.arange(keep.shape[1]).expand_as(keep)
        wrong = _manual_features(model, images, keep, table_rows=first_rows)
    assert (wrong - got.detach()).abs().max().item() > 100 * TOL


def test_eval_mode_is_unaffected_by_patch_dropout():
    torch.manual_seed(0)
    dropping = CLIP(_config(0.5)).eval()
    plain = CLIP(_config(0.0)).eval()
    plain.load_state_dict(dropping.state_dict())
    images = _images()
    with torch.no_grad():
        assert torch.equal(dropping.encode_image(images), plain.encode_image(images))


def test_matches_timm_eva_given_the_same_keep_indices(monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    timm = pytest.importorskip("timm")
    create = timm.create_model
    trunk = dict(img_size=64, depth=2, embed_dim=64, num_heads=4, patch_drop_rate=0.5)
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: create(name, **{**kw, **trunk}))
    cfg = dict(open_clip.get_model_config("EVA02-B-16"))
    cfg.update(embed_dim=32, text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2})
    cfg.pop("custom_text")
    torch.manual_seed(1)
    theirs = open_clip.CustomTextCLIP(**cfg).train()
    with torch.no_grad():  # timm zero-inits biases and open_clip some scales: randomise all for a real test
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = CLIP(_config()).train()
    ours.load_state_dict(openclip_to_clipforge_keys(theirs.state_dict()), strict=True)
    seen = _capture_keep(ours)
    images = _images()
    got = ours.encode_image(images, normalize=True).detach()
    (keep,) = seen

    class FixedKeep(torch.nn.Module):
        """timm's PatchDropoutWithIndices with its random draw replaced by our keep indices."""

        def forward(self, x):
            prefix, tokens = x[:, :1], x[:, 1:]
            tokens = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
            return torch.cat([prefix, tokens], dim=1), keep

    assert type(theirs.visual.trunk.patch_drop).__name__ == "PatchDropoutWithIndices"
    theirs.visual.trunk.patch_drop = FixedKeep()
    with torch.no_grad():
        want = theirs.encode_image(images, normalize=True)
    diff = (got - want).abs().max().item()
    print(f"EVA02 patch dropout + rope vs timm: max abs diff {diff:.2e}")
    assert diff <= TOL, f"max abs diff {diff:.2e}"


def test_training_step_with_patch_dropout_checkpointing_and_compile():
    torch.manual_seed(0)
    model = CLIP(_config()).train()
    images = _images(2)
    text = torch.randint(1, 1000, (2, 77))

    def grads(seed: int) -> dict[str, torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(seed)  # the same keep indices for both runs
        out = model(images, text)
        loss = out.image_features.pow(2).sum() + (out.image_features @ out.text_features.T).sum()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.visual.named_parameters()}

    ref = grads(3)
    assert all(torch.isfinite(g).all() for g in ref.values())
    missing = [n for n, g in ref.items() if g.abs().sum() == 0]
    assert missing == [], f"visual parameters without gradient: {missing}"
    model.set_grad_checkpointing(True)
    ck = grads(3)
    model.set_grad_checkpointing(False)
    for n in ref:
        assert_close_rel(ck[n], ref[n], rel=1e-5, what=f"checkpointed grad {n}")
    compiled = torch.compile(model.visual, backend="aot_eager")
    torch.manual_seed(5)
    out = compiled(images)
    torch.manual_seed(5)
    assert_close_rel(out, model.visual(images), rel=1e-5, what="compiled training forward")
    out.sum().backward()  # the compiled graph trains too


def test_phase_patch_dropout_on_a_rope_tower_without_class_token():
    """A training phase's patch dropout (train/loop.py apply_phase) on a rope tower with no class token drops from
    all tokens, so the keep indices index the patch grid the rope tables are gathered from."""
    from clipforge.train.config import PhaseConfig
    from clipforge.train.loop import apply_phase

    base = _config(0.0)
    vision = dataclasses.replace(base.vision, class_token=False, pool_type="avg")
    model = CLIP(base.replace(vision=vision)).train()
    images = _images(2)
    apply_phase(PhaseConfig(patch_dropout=0.5), model, images, None, 0)
    drop = model.visual.patch_dropout
    assert isinstance(drop, PatchDropout) and not drop.exclude_first_token
    seen = _capture_keep(model)
    got = model.encode_image(images, normalize=True).detach()
    (keep,) = seen
    assert keep.shape == (2, 8)
    visual = model.visual
    with torch.no_grad():
        visual.eval()
        full = visual.embed(images)  # (B, N, width): no class token
        visual.train()
        sin, cos = rope_tables((4, 4), 16, ref_grid=visual.cfg.rope_ref_grid, theta=visual.cfg.rope_theta)
        outs = []
        for b in range(2):
            x = visual.transformer(full[b : b + 1, keep[b]], rope=(sin[keep[b]], cos[keep[b]]))
            outs.append(visual.project(visual.ln_post(x).mean(dim=1)))
    want = F.normalize(torch.cat(outs), dim=-1)
    diff = (got - want).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff:.2e}"
