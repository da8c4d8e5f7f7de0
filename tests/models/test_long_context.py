"""Long-CLIP's stretched text positions (models/long_context.py), checked on hand-built tables."""

from __future__ import annotations

import pytest
import torch

from clipforge import create_model, tokenize
from clipforge.models.long_context import (
    extend_text_context,
    merge_longclip_positions,
    stretch_positions,
    stretched_length,
)
from support.tolerance import assert_close_rel


def _longclip_loop(pe: torch.Tensor, keep: int = 20) -> torch.Tensor:
    """Long-CLIP's `load_from_clip` interpolation written as its element loop (factor 4)."""
    length, dim = pe.shape
    new = torch.zeros(4 * length - 3 * keep, dim, dtype=pe.dtype)
    new[:keep] = pe[:keep]
    for i in range(length - 1 - keep):
        for j in range(4):
            new[4 * i + j + keep] = (4 - j) * pe[i + keep] / 4 + j * pe[i + 1 + keep] / 4
    for j in range(4):
        new[4 * length - 3 * keep - 4 + j] = pe[length - 1] + j * (pe[length - 1] - pe[length - 2]) / 4
    return new


def test_a_linear_ramp_becomes_a_ramp_four_times_slower():
    """Hand-built: row i holds i. Kept rows stay; after row 20 each step is 1/4, the tail extrapolated alike."""
    pe = torch.arange(77, dtype=torch.float64)[:, None].repeat(1, 3)  # (77, 3)
    out = stretch_positions(pe)
    assert out.shape == (248, 3) and stretched_length(77) == 248
    expected = torch.cat([torch.arange(20.0), 20 + torch.arange(228.0) / 4]).double()
    assert torch.equal(out[:, 0], expected)
    assert out[21, 0] == 20.25 and out[-1, 0] == 76.75


def test_matches_long_clip_loop_on_random_table():
    torch.manual_seed(0)
    pe = torch.randn(77, 8)
    assert_close_rel(stretch_positions(pe), _longclip_loop(pe), 1e-6, "stretched positions")
    assert stretch_positions(pe, keep=5, factor=2).shape == (2 * 77 - 5, 8)
    with pytest.raises(ValueError, match="keep"):
        stretch_positions(pe, keep=76)


def test_extended_model_encodes_short_text_as_before():
    """Captions shorter than the 20 kept positions: identical features at 248 tokens; the table is stretched."""
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    long = extend_text_context(model)
    assert long.context_length == 248 and long.text.positional_embedding.shape[0] == 248
    assert torch.equal(long.text.positional_embedding[:20], model.text.positional_embedding[:20])
    assert_close_rel(long.text.positional_embedding, stretch_positions(model.text.positional_embedding), 1e-6, "pe")
    with torch.no_grad():
        before = model.encode_text(tokenize(["a photo of a cat"]))
        after = long.encode_text(tokenize(["a photo of a cat"], context_length=248))
    assert_close_rel(after, before, 1e-5, "short caption features")
    long_caption = " ".join(["a small red cat"] * 40)
    assert long.encode_text(tokenize([long_caption], context_length=248)).shape == (1, 32)


def test_merge_longclip_positions():
    base, res = torch.zeros(248, 4), torch.ones(248, 4)
    merged = merge_longclip_positions({"positional_embedding": base, "positional_embedding_res": res, "x": base})
    assert set(merged) == {"positional_embedding", "x"}
    assert merged["positional_embedding"][:20].sum() == 0 and (merged["positional_embedding"][20:] == 1).all()
    with pytest.raises(ValueError, match="not a Long-CLIP"):
        merge_longclip_positions({"positional_embedding": base, "positional_embedding_res": res[:10]})
