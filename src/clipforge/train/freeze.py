"""Locking towers: LiT (Zhai et al. 2022) freezes the image tower; the text tower can be frozen too.

`unlocked` leaves the last N transformer blocks (ViT / text) or ResNet stages trainable, plus what
follows them (final norm, pooling, projection), which is how open_clip's lock options behave.
"""

from __future__ import annotations

from torch import nn

from ..models.clip import CLIP
from ..models.resnet import ModifiedResNet


def _freeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(False)


def _unfreeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(True)


def lock_image_tower(model: CLIP, unlocked_groups: int = 0) -> None:
    """Freeze the image tower except its last `unlocked_groups` blocks/stages and their head."""
    visual = model.visual
    _freeze(visual)
    if unlocked_groups <= 0:
        return
    if isinstance(visual, ModifiedResNet):
        stages = [visual.layer1, visual.layer2, visual.layer3, visual.layer4]
        for stage in stages[-unlocked_groups:]:
            _unfreeze(stage)
        _unfreeze(visual.attnpool)
        return
    for block in list(visual.transformer.resblocks)[-unlocked_groups:]:
        _unfreeze(block)
    _unfreeze(visual.ln_post)
    visual.proj.requires_grad_(True)
    if visual.attn_pool is not None:
        _unfreeze(visual.attn_pool)


def lock_text_tower(model: CLIP, unlocked_layers: int = 0) -> None:
    """Freeze the text tower except its last `unlocked_layers` blocks, final LayerNorm and projection."""
    text = model.text
    _freeze(text)
    if unlocked_layers <= 0:
        return
    for block in list(text.transformer.resblocks)[-unlocked_layers:]:
        _unfreeze(block)
    _unfreeze(text.ln_final)
    if isinstance(text.text_projection, nn.Module):
        _unfreeze(text.text_projection)
    else:
        text.text_projection.requires_grad_(True)
