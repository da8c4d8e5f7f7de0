"""Locking towers for training runs: LiT (Zhai et al. 2022) freezes the image tower; the text tower can be frozen too.

The training options count blocks: `unlocked` leaves the last N transformer blocks (ViT / text) or ResNet
stages trainable, plus what follows them (final norm, pooling, projection). The model's own
`CLIP.lock_image_tower` / `lock_text_tower` (models/freeze.py) count open_clip's groups, where the
projection is a group of its own; N blocks are therefore N + 1 groups there.
"""

from __future__ import annotations

from ..models.clip import CLIP


def _groups(unlocked_blocks: int, name: str) -> int:
    if isinstance(unlocked_blocks, bool) or not isinstance(unlocked_blocks, int) or unlocked_blocks < 0:
        raise ValueError(f"{name} must be a non-negative int, got {unlocked_blocks!r}")
    return unlocked_blocks + 1 if unlocked_blocks else 0


def lock_image_tower(model: CLIP, unlocked_groups: int = 0) -> None:
    """Freeze the image tower except its last `unlocked_groups` blocks/stages and their head."""
    model.lock_image_tower(_groups(unlocked_groups, "lock_image_unlocked_groups"))


def lock_text_tower(model: CLIP, unlocked_layers: int = 0) -> None:
    """Freeze the text tower except its last `unlocked_layers` blocks, final LayerNorm and projection.

    A Hugging Face encoder's groups are its layers alone (its projection always stays trainable, as in
    open_clip's HFTextEncoder.lock), so there N blocks are N groups.
    """
    groups = _groups(unlocked_layers, "lock_text_unlocked_layers")
    model.lock_text_tower(unlocked_layers if model.config.text.is_hf else groups)
