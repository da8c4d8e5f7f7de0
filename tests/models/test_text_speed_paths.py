"""Speed paths of the bidirectional (SigLIP-style) text tower, pinned against the full computation.

Two things make clipforge's SigLIP text tower as fast as transformers' (issue 11, Z9): with no padding
mask, attention goes to SDPA without a mask and without the causal flag, which the fused (flash) CPU kernel
takes; and a tower pooled at its last (or first) position runs its last block for that one position only
(`TextTransformer._encode`, `pooled_only`). The reference is `forward_tokens`, which runs every position
through every block.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge.models import TextConfig
from clipforge.models.text import TextTransformer
from support.tolerance import assert_close_rel

REL = 1e-5
CONTEXT, VOCAB, PAD, EOS = 16, 100, 0, 99


def _tokens() -> torch.Tensor:
    """(3, 16): padded rows of different lengths (bidirectional towers without pad_mask attend to the padding)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.full((3, CONTEXT), PAD, dtype=torch.long)
    for row, n in enumerate((3, 9, 15)):
        tokens[row, :n] = torch.randint(1, EOS, (n,), generator=g)
        tokens[row, n] = EOS
    return tokens


def _tower(**fields) -> TextTransformer:
    torch.manual_seed(0)
    fields = {"causal_mask": False, **fields}
    cfg = TextConfig(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=2, layers=3, pad_id=PAD, eos_id=EOS,
                     proj_bias=True, layer_norm_eps=1e-6, **fields)
    return TextTransformer(cfg, 24).eval()


# fields -> whether the last block computes one position only.
CASES = {
    "siglip-last": (dict(pool_type="last"), True),
    "bidirectional-first": (dict(pool_type="first"), True),
    "bidirectional-last-padmask": (dict(pool_type="last", pad_mask=True), False),
    "bidirectional-eos": (dict(pool_type="eos"), False),
    "causal-last": (dict(pool_type="last", causal_mask=True), False),
}


def _last_block_positions(tower: TextTransformer, run) -> int:
    """How many positions the last block outputs while `run()` executes."""
    seen = []
    handle = tower.transformer.resblocks[-1].register_forward_hook(lambda m, i, out: seen.append(out.shape[1]))
    try:
        run()
    finally:
        handle.remove()
    return seen[-1]


@pytest.mark.parametrize("case", list(CASES))
def test_single_position_last_block_matches_the_full_run_where_enabled(case):
    fields, enabled = CASES[case]
    tower, tokens = _tower(**fields), _tokens()
    with torch.no_grad():
        full = tower.forward_tokens(tokens)[0]  # (B, D), every position through every block
        fast = tower(tokens)
        via_embeddings = tower.forward_embeddings(tower.token_embedding(tokens), tokens)
        positions = _last_block_positions(tower, lambda: tower(tokens))
    assert positions == (1 if enabled else CONTEXT)
    assert_close_rel(fast, full, REL, f"{case}: forward vs forward_tokens")
    assert torch.equal(via_embeddings, fast), "forward_embeddings must stay bit-identical to forward"
    if enabled:  # the full run keeps every position's features
        assert tower.forward_tokens(tokens)[1].shape == (3, CONTEXT, 32)


def test_single_position_path_reads_every_position():
    """Changing a token anywhere (not only the pooled one) still changes the feature: all keys are attended."""
    tower, tokens = _tower(pool_type="last"), _tokens()
    changed = tokens.clone()
    changed[:, 1] = (changed[:, 1] + 1) % EOS
    with torch.no_grad():
        assert (tower(tokens) - tower(changed)).abs().amax(dim=-1).min() > 1e-4


@pytest.mark.parametrize("checkpointing", [False, True])
def test_single_position_path_trains_like_the_full_run(checkpointing):
    """Gradients of every parameter through the shortcut equal those of the full run (eval mode: no dropout)."""
    tower, tokens = _tower(pool_type="last"), _tokens()
    tower.set_grad_checkpointing(checkpointing)
    target = torch.randn(3, 24, generator=torch.Generator().manual_seed(1))

    def grads(run):
        tower.zero_grad()
        (run() * target).sum().backward()
        return {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}

    fast, full = grads(lambda: tower(tokens)), grads(lambda: tower.forward_tokens(tokens)[0])
    assert fast.keys() == full.keys() == {n for n, _ in tower.named_parameters()}
    for name in full:
        assert_close_rel(fast[name], full[name], REL, f"grad {name}")


def test_torch_compile_of_the_single_position_path():
    tower, tokens = _tower(pool_type="last"), _tokens()
    compiled = torch.compile(tower, backend="aot_eager")
    with torch.no_grad():
        assert_close_rel(compiled(tokens), tower(tokens), REL, "compiled forward")


def test_unmasked_bidirectional_attention_is_sdpa_without_mask_or_causal_flag(monkeypatch):
    """No padding mask -> SDPA gets attn_mask=None and is_causal=False: nothing that would force the math
    kernel (a materialised (B, 1, L, L) mask) on a tower that does not need one."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((attn_mask, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    tower, tokens = _tower(pool_type="last"), _tokens()
    with torch.no_grad():
        tower(tokens)
    assert len(calls) == 3 and all(mask is None and not causal for mask, causal in calls)
    calls.clear()
    with torch.no_grad():
        _tower(pool_type="last", pad_mask=True)(tokens)
    assert len(calls) == 3 and all(mask is not None and mask.dtype == torch.bool for mask, _ in calls)


def test_unmasked_bidirectional_attention_runs_the_fused_cpu_kernel():
    tower, tokens = _tower(pool_type="last"), _tokens()
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        tower(tokens)
    ops = {event.key for event in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops, sorted(o for o in ops if "attention" in o)
    assert "aten::_scaled_dot_product_attention_math" not in ops
