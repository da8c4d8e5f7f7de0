"""The unit the trainer consumes: one batch of preprocessed images, their caption tokens, and bad-sample counts."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    """One batch for one rank.

    Fields:
        images: (B, 3, H, W) float32, preprocessed by the transform.
        tokens: (B, L) int64 caption token ids.
        bad: bad samples skipped (and replaced) while this batch was built, keyed by the file or shard they came
            from; the DataError check over all batches is done by TrainData.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    bad: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def pin_memory(self) -> Batch:
        """A copy in pinned memory (called by the DataLoader when DataConfig.pin_memory is set)."""
        return Batch(self.images.pin_memory(), self.tokens.pin_memory(), dict(self.bad))
