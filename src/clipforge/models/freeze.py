"""Locking towers (LiT, Zhai et al. 2022): freeze a tower, leaving its last groups of parameters trainable.

A tower is split into groups in forward order and `unlocked` counts groups from the end, as open_clip's
`lock_image_tower(unlocked_groups)` / `lock_text_tower(unlocked_layers)` count them, so code written for
open_clip leaves the same parameters trainable:

    ViT image tower:  [conv1, class/positional embedding, ln_pre], block 0, ..., block n-2,
                      [block n-1, attentional pooler, ln_post], [proj]
    ResNet tower:     [stem], layer1, layer2, layer3, layer4, [attnpool]
    text tower:       [token/positional embedding], block 0, ..., block n-2, [block n-1, ln_final],
                      [text_projection]

So `unlocked=1` leaves only the projection trainable and `unlocked=2` also the last block and final
norm. Two deliberate extensions: open_clip refuses partial locking of a ResNet (clipforge unlocks
whole stages), and it never unlocks a ViT's attentional pooler (clipforge unlocks it with the last block,
between which and ln_post it runs). Parameters outside the towers (logit_scale, logit_bias) are not touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .resnet import ModifiedResNet
from .text import TextTransformer
from .vit import VisionTransformer

Group = Sequence[nn.Module | nn.Parameter | None]


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that always normalises with its running statistics and never updates them, in train
    mode too (open_clip's `freeze_bn_stats`). Same parameters and buffers as BatchNorm2d, so state dicts,
    checkpoints and optimizers that already hold its parameters are unaffected."""

    def forward(self, x: Tensor) -> Tensor:
        """Batch norm with the stored statistics and affine terms: (B, C, H, W) -> (B, C, H, W)."""
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def freeze_batch_norm_stats(module: nn.Module) -> int:
    """Turn every BatchNorm2d under `module` into a FrozenBatchNorm2d in place; returns how many.

    The class of each instance is swapped rather than the module replaced, so parameter objects (and any
    optimizer state keyed by them) stay the same.
    """
    count = 0
    for child in module.modules():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = FrozenBatchNorm2d
            count += 1
    return count


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (groups left trainable, from the end), got {value!r}")
    return value


def image_tower_groups(visual: nn.Module) -> list[Group]:
    """The image tower's parameter groups in forward order (see the module docstring)."""
    if isinstance(visual, ModifiedResNet):
        stem = [visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3]
        return [stem, [visual.layer1], [visual.layer2], [visual.layer3], [visual.layer4], [visual.attnpool]]
    if isinstance(visual, VisionTransformer):
        blocks = list(visual.transformer.resblocks)
        stem = [visual.conv1, visual.class_embedding, visual.positional_embedding, visual.ln_pre]
        head = [blocks[-1], visual.attn_pool, visual.ln_post, visual.map_head]
        # No projection (SigLIP's MAP towers, no_proj): no empty last group, so unlocked=1 still trains something.
        return [stem, *([b] for b in blocks[:-1]), head] + ([[visual.proj]] if visual.proj is not None else [])
    if hasattr(visual, "parameter_groups"):  # towers that state their own groups (ConvNeXt)
        return visual.parameter_groups()
    raise TypeError(f"cannot lock an image tower of type {type(visual).__name__}")


def text_tower_groups(text: TextTransformer) -> list[Group]:
    """The text tower's parameter groups in forward order (see the module docstring)."""
    blocks = list(text.transformer.resblocks)
    embed = [text.token_embedding, text.positional_embedding]
    return [embed, *([b] for b in blocks[:-1]), [blocks[-1], text.ln_final], [text.text_projection]]


def _set_trainable(groups: Sequence[Group], trainable: bool) -> None:
    for group in groups:
        for item in group:
            if item is not None:  # a ViT without an attentional pooler has None in its head group
                item.requires_grad_(trainable)


def lock_image(visual: nn.Module, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
    """Freeze `visual` except its last `unlocked_groups` groups; `freeze_bn_stats` also stops every
    BatchNorm's running statistics from updating (ResNet towers; ViTs have none)."""
    _check_count(unlocked_groups, "unlocked_groups")
    visual.requires_grad_(False)
    if unlocked_groups:
        _set_trainable(image_tower_groups(visual)[-unlocked_groups:], True)
    if freeze_bn_stats:
        freeze_batch_norm_stats(visual)


def lock_text(text: TextTransformer, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
    """Freeze `text` except its last `unlocked_layers` groups.

    `freeze_layer_norm=False` is refused as open_clip refuses it: LayerNorms are locked with their group.
    A Hugging Face text tower locks as open_clip's HFTextEncoder does ([embeddings], layer 0, ..., layer n-1;
    the projection always trainable; `freeze_layer_norm=False` keeps frozen groups' LayerNorms trainable).
    """
    _check_count(unlocked_layers, "unlocked_layers")
    if hasattr(text, "lock"):  # a Hugging Face encoder (HFTextTower): open_clip's HFTextEncoder.lock groups
        text.lock(unlocked_layers, freeze_layer_norm)
        return
    if not freeze_layer_norm:
        raise ValueError(
            "freeze_layer_norm=False is not supported (as in open_clip): LayerNorms are locked and unlocked "
            "together with the group they belong to; raise unlocked_layers to train the final LayerNorm"
        )
    text.requires_grad_(False)
    if unlocked_layers:
        _set_trainable(text_tower_groups(text)[-unlocked_layers:], True)
