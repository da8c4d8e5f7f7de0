"""The two text-side anchors a FitContext carries, from ONE pass of every prompt through the text tower.

- text_weights (D, C): CLIP's prompt-ensemble classifier (Radford et al. 2021, 3.1.4; `zeroshot.build_class_weights`):
  each prompt's embedding L2-normalised, averaged over the templates, renormalised. Every method's zero-shot head.
- prompt_means (D, C): the plain mean of the UNnormalised prompt embeddings (`encode_text(t)` = EOS token @
  text_projection). CLAP (github.com/jusiro/CLAP, trainers/adapters.py `_get_base_text_features`) initialises its
  prototypes at these and measures its constraint `||p_c - t_c||^2` against them, so their norm sets the penalty's
  scale; keeping them lets `fit_clap` match the reference exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


@torch.no_grad()
def text_anchors(
    model: Any, classnames: Sequence[str], templates: Sequence[Any], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(text_weights (D, C) unit columns, prompt_means (D, C) unnormalised), float32, on the model's device."""
    from ..factory import get_tokenizer
    from ..zeroshot.templates import check_templates, render

    if not classnames:
        raise ValueError("the text anchors need at least one class name")
    templates = check_templates(list(templates))
    tokenizer = get_tokenizer(model)
    device = next(model.parameters()).device
    prompts = [render(t, c) for c in classnames for t in templates]  # class-major: C * T prompts
    chunks = [
        model.encode_text(tokenizer(prompts[start : start + batch_size]).to(device), normalize=False).float()
        for start in range(0, len(prompts), batch_size)
    ]
    per_prompt = torch.cat(chunks).view(len(classnames), len(templates), -1)  # (C, T, D)
    weights = F.normalize(F.normalize(per_prompt, dim=-1).mean(dim=1), dim=-1).T.contiguous()  # (D, C)
    return weights, per_prompt.mean(dim=1).T.contiguous()  # (D, C) each
