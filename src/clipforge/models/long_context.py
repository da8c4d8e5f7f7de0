"""Longer text context for CLIP's text transformer, as Long-CLIP does it (Zhang et al. 2024, arXiv:2403.15378).

CLIP's learned positions beyond the first ~20 are poorly trained (captions are short), so Long-CLIP keeps the
first `keep` = 20 positions as they are and stretches the rest `factor` = 4 times by linear interpolation
between neighbouring positions, extrapolating the last `factor` rows from the final step: 77 positions become
4 * 77 - 3 * 20 = 248 (its "knowledge-preserved stretching"). A text shorter than `keep` tokens therefore gets
exactly the features it had before. The stretched model is then fine-tuned on long captions; Long-CLIP's own
checkpoints store the frozen stretched table and a trainable copy (`positional_embedding_res`) and use the first
for the kept positions, the second for the rest; `merge_longclip_positions` folds them into one table.
"""

from __future__ import annotations

import dataclasses

import torch

from .clip import CLIP

LONGCLIP_KEEP = 20
LONGCLIP_FACTOR = 4


def stretched_length(length: int, keep: int = LONGCLIP_KEEP, factor: int = LONGCLIP_FACTOR) -> int:
    """Positions after stretching `length` positions: keep + factor * (length - keep) (248 for 77)."""
    return factor * length - (factor - 1) * keep


def stretch_positions(
    positions: torch.Tensor, keep: int = LONGCLIP_KEEP, factor: int = LONGCLIP_FACTOR
) -> torch.Tensor:
    """Positional table (L, width) -> (factor * L - (factor - 1) * keep, width), Long-CLIP's interpolation.

    Rows [0, keep) are copied; each later gap i -> i + 1 becomes `factor` rows pe[i] + j / factor * (pe[i + 1]
    - pe[i]) for j = 0 .. factor - 1; the last row L - 1 is continued the same way with the step pe[L-1] - pe[L-2].
    """
    if positions.ndim != 2:
        raise ValueError(f"positions must be a (length, width) table, got shape {tuple(positions.shape)}")
    length = positions.shape[0]
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= length - 2:
        raise ValueError(f"keep must be an int in [0, {length - 2}] for {length} positions, got {keep!r}")
    table = positions.detach()
    start = table[keep:]  # (L - keep, width): each row starts a group of `factor` rows
    step = torch.cat([table[keep + 1 :] - table[keep:-1], (table[-1] - table[-2])[None]])  # (L - keep, width)
    fractions = torch.arange(factor, dtype=table.dtype, device=table.device) / factor  # (factor,)
    stretched = start[:, None] + fractions[None, :, None] * step[:, None]  # (L - keep, factor, width)
    return torch.cat([table[:keep], stretched.reshape(-1, table.shape[1])]).to(positions.dtype)


def extend_text_context(model: CLIP, keep: int = LONGCLIP_KEEP, factor: int = LONGCLIP_FACTOR) -> CLIP:
    """A copy of `model` whose text tower takes `stretched_length(context_length)` tokens (77 -> 248).

    Every weight is copied; only the text positions are stretched (`stretch_positions`). Texts shorter than
    `keep` tokens encode exactly as before; longer ones need fine-tuning on long captions to encode well, as in
    Long-CLIP. Tokenize for the new model with `get_tokenizer(new_model)` (its context length is the new one).
    """
    if model.config.text.is_hf:
        raise ValueError(
            "extend_text_context stretches CLIP's learned text positions; a Hugging Face text tower "
            f"(text.hf_config) has its own position table of {model.text.max_length} positions"
        )
    text = model.config.text
    new_length = stretched_length(text.context_length, keep, factor)
    config = model.config.replace(text=dataclasses.replace(text, context_length=new_length))
    state = dict(model.state_dict())
    state["text.positional_embedding"] = stretch_positions(state["text.positional_embedding"], keep, factor)
    extended = CLIP(config).to(device=model.logit_scale.device)
    extended.load_state_dict(state)
    return extended.train(model.training)


def merge_longclip_positions(
    state_dict: dict[str, torch.Tensor], keep: int = LONGCLIP_KEEP, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """A Long-CLIP state dict with `positional_embedding_res` folded into `positional_embedding`.

    Long-CLIP's text forward adds `positional_embedding * mask1 + positional_embedding_res * mask2`, mask1 being
    1 on the first `keep` positions and mask2 on the rest; the merged table gives the same sum in one tensor, the
    layout of an ordinary CLIP state dict (`prefix` is the text tower's key prefix, "" for OpenAI's layout).
    """
    base_key, res_key = prefix + "positional_embedding", prefix + "positional_embedding_res"
    if res_key not in state_dict:
        return dict(state_dict)
    base, res = state_dict[base_key], state_dict[res_key]
    if base.shape != res.shape:
        raise ValueError(
            f"{res_key} has shape {tuple(res.shape)} but {base_key} has {tuple(base.shape)}; not a Long-CLIP checkpoint"
        )
    out = {k: v for k, v in state_dict.items() if k != res_key}
    out[base_key] = torch.cat([base[:keep], res[keep:]])
    return out
