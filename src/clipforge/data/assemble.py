"""Building one batch from its sample slots: decode, augment with a per-slot seed, replace bad samples, tokenize.

A batch is a list of slots (source, reference, position); the position is the slot's index in this rank's epoch
(batch * batch_size + slot), and everything random about the slot derives from (seed, epoch, rank, position):
the transform's draws (its generator, or torch's global RNG inside `torch.random.fork_rng`, is seeded right
before the call), the caption template of a Fashion-MNIST sample, and the substitutes for a bad sample. So a
batch is the same whichever worker builds it and whether or not the batches before it were built.

A sample that cannot be used (see bad.py) is counted under its file or shard and replaced by its source's
`replacement` for that slot and attempt (a seeded random item of a map-style source, a buffered sample of a
shard stream), up to MAX_ATTEMPTS times; a slot still empty after that repeats another sample of the batch.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from clipforge.image import EvalTransform, ImageLoadError, load_image
from clipforge.models.config import PreprocessConfig

from .bad import BadSample, DataError
from .batch import Batch
from .seeding import AUGMENT, CAPTION, REPLACEMENT, derive_seed, derive_seeds
from .sources.base import TensorSource
from .tarsamples import RawSample

MAX_ATTEMPTS = 16

Slot = tuple[int, Any, int]  # (source id, reference: an index or a RawSample, position in the rank's epoch)


class Access(Protocol):
    """What the assembler needs from a source inside a worker (plan.MapAccess, plan.IndexCursor, ShardStream)."""

    source: Any

    def fetch(self, ref: Any) -> RawSample:
        """The raw sample `ref` points at (reading it may fail: the caller counts it as bad)."""

    def replacement(self, seed: int) -> Any | None:
        """A reference to use in place of a bad sample, chosen from `seed`; None when there is none."""

    def drain_bad(self) -> Counter[str]:
        """Bad samples counted since the last call, by shard or file, and reset the count."""


class BatchAssembler:
    """Turns slots into a Batch with a fixed transform and tokenizer.

    Args:
        transform: PIL image -> (3, S, S) tensor. A clipforge TrainTransform is copied and given its own
            generator, seeded per slot; an EvalTransform is used as is; any other callable runs with torch's
            global RNG seeded per slot inside fork_rng (the caller's RNG state is restored afterwards).
        tokenizer: list of captions -> (N, L) int64 tensor (CLIPTokenizer).
        seed: DataConfig.seed.
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], tokenizer: Callable, seed: int) -> None:
        self.seed = seed
        self.tokenizer = tokenizer
        cfg = getattr(transform, "cfg", None)
        self.preprocess_cfg: PreprocessConfig | None = cfg if isinstance(cfg, PreprocessConfig) else None
        self.deterministic = isinstance(transform, EvalTransform)
        self.owns_generator = hasattr(transform, "generator") and not self.deterministic
        self.transform = copy.copy(transform) if self.owns_generator else transform
        if self.owns_generator:
            self.transform.generator = None  # replaced by this assembler's own generator on first use
        self._caption_tokens: dict[int, np.ndarray] = {}

    def _apply(self, image: Image.Image, seed: int) -> torch.Tensor:
        if self.deterministic:
            return self.transform(image)
        if self.owns_generator:
            if not isinstance(self.transform.generator, torch.Generator):
                self.transform.generator = torch.Generator()  # made here, in the worker that uses it
            self.transform.generator.manual_seed(seed)
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image)

    def _decode(
        self, access: Access, ref: Any, position: int, coords: tuple[int, int], bad: Counter[str]
    ) -> tuple[torch.Tensor, str] | None:
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                ref = access.replacement(derive_seed(REPLACEMENT, self.seed, *coords, position, attempt))
                if ref is None:
                    return None
            try:
                raw = access.fetch(ref)
            except BadSample as exc:
                bad[exc.name] += 1
                continue
            try:
                image = load_image(raw.image, name=raw.label)
            except (OSError, ValueError):  # ImageLoadError (corrupt, truncated, not an image), unreadable file
                bad[raw.name] += 1
                continue
            try:
                tensor = self._apply(image, derive_seed(AUGMENT, self.seed, *coords, position, attempt))
            except ImageLoadError:  # ImageAspectError: an extreme aspect ratio the transform refuses to resize
                bad[raw.name] += 1
                continue
            return tensor, raw.caption
        return None

    def _tensor_slots(
        self, sid: int, source: TensorSource, slots: list[Slot], coords: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        indices = np.fromiter((ref for _, ref, _ in slots), dtype=np.int64, count=len(slots))
        positions = np.fromiter((pos for _, _, pos in slots), dtype=np.int64, count=len(slots))
        if self.preprocess_cfg is not None:
            images = source.images(indices, self.preprocess_cfg)  # (n, 3, S, S)
        else:
            seeds = [derive_seed(AUGMENT, self.seed, *coords, int(p), 0) for p in positions]
            images = torch.stack([self._apply(source.pil_image(int(i)), s) for i, s in zip(indices, seeds)])
        if sid not in self._caption_tokens:
            self._caption_tokens[sid] = self.tokenizer(source.caption_table).numpy()  # (captions, L)
        rows = source.caption_ids(indices, derive_seeds((CAPTION, self.seed, *coords), positions))  # (n,)
        return images, torch.from_numpy(self._caption_tokens[sid][rows])  # numpy gather: no torch threads

    def build(self, epoch: int, rank: int, accesses: Sequence[Access], slots: Sequence[Slot]) -> Batch:
        """The batch for `slots`; bad samples met while drawing and decoding them are in Batch.bad."""
        coords = (epoch, rank)
        bad: Counter[str] = Counter()
        for access in accesses:
            bad.update(access.drain_bad())  # found while the slots were drawn from streams
        by_source: dict[int, list[int]] = {}
        for index, (sid, _, _) in enumerate(slots):
            by_source.setdefault(sid, []).append(index)
        image_parts: list[tuple[list[int], torch.Tensor]] = []  # (batch rows, (n, 3, S, S))
        token_parts: list[tuple[list[int], torch.Tensor]] = []  # (batch rows, (n, L))
        text_rows: list[int] = []
        texts: list[str] = []
        for sid, rows in by_source.items():
            source = accesses[sid].source
            if isinstance(source, TensorSource):
                images, tokens = self._tensor_slots(sid, source, [slots[i] for i in rows], coords)
                image_parts.append((rows, images))
                token_parts.append((rows, tokens))
                continue
            decoded_rows, decoded = [], []
            for index in rows:
                _, ref, position = slots[index]
                result = self._decode(accesses[sid], ref, position, coords, bad)
                if result is not None:
                    decoded_rows.append(index)
                    decoded.append(result[0])
                    texts.append(result[1])
            if decoded_rows:
                image_parts.append((decoded_rows, torch.stack(decoded)))
                text_rows.extend(decoded_rows)
        if texts:
            token_parts.append((text_rows, self.tokenizer(texts)))
        return Batch(*_merge(len(slots), image_parts, token_parts, bad), bad=dict(bad))


def _merge(
    size: int,
    image_parts: list[tuple[list[int], torch.Tensor]],
    token_parts: list[tuple[list[int], torch.Tensor]],
    bad: Counter[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter the parts into (size, 3, S, S) images and (size, L) tokens; empty rows repeat a filled one."""
    if len(image_parts) == 1 and image_parts[0][0] == list(range(size)):
        return image_parts[0][1], token_parts[0][1]  # one source filled every row, in order
    filled = sorted(row for rows, _ in image_parts for row in rows)
    if not filled:
        worst = ", ".join(f"{name} ({n})" for name, n in bad.most_common(5))
        raise DataError(f"no sample of a batch could be used after {MAX_ATTEMPTS} tries each; bad: {worst}")
    images = torch.empty((size, *image_parts[0][1].shape[1:]), dtype=image_parts[0][1].dtype)
    tokens = torch.empty((size, token_parts[0][1].shape[1]), dtype=token_parts[0][1].dtype)
    for rows, part in image_parts:
        images[torch.tensor(rows)] = part
    for rows, part in token_parts:
        tokens[torch.tensor(rows)] = part
    empty = sorted(set(range(size)) - set(filled))
    if empty:  # every substitute failed too: repeat the next usable sample of the batch
        donors = [next((row for row in filled if row > index), filled[0]) for index in empty]
        images[torch.tensor(empty)] = images[torch.tensor(donors)]
        tokens[torch.tensor(empty)] = tokens[torch.tensor(donors)]
    return images, tokens
