"""Which samples make up which batch: the epoch's order, its split by rank and worker, and resuming mid-epoch.

Global batch g of a rank (0 <= g < num_batches) is built by DataLoader worker (g - start_batch) % W, where W is
max(1, num_workers), so the DataLoader's round-robin hands batches back in order start_batch, start_batch + 1, ...
Two ways to cut an epoch:

* Exact (one map-style source, no epoch_samples): a seeded permutation of the whole source; rank r takes the
  r-th of world_size equal contiguous shares (the remainder is dropped) and batch g is items
  [g * B, (g + 1) * B) of that share. The result does not depend on num_workers; resuming at batch k starts at
  item k * B; nothing is read for the skipped batches.
* Stream (wds, several sources, or epoch_samples): logical worker w = g % W owns batches w, w + W, ... and a
  stream of W-th of the data per source: a map-style source's items at positions slot, slot + U, ... of an endless
  concatenation of seeded permutations (slot = rank + w * world_size, U = world_size * W), a wds source its
  shards (sources/webdataset.py). Each slot of the worker's stream picks its source with probability
  proportional to the weights (one seeded draw per epoch and worker). Resuming counts how many slots before the
  first batch went to each source and skips as many items of each: index arithmetic for map-style sources,
  reading (not decoding) tar members for shards. Streams depend on num_workers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .assemble import BatchAssembler
from .batch import Batch
from .config import DataConfig
from .seeding import MIXING, PERMUTATION, generator
from .sources.base import MapSource, TensorSource
from .sources.webdataset import WdsSource
from .tarsamples import RawSample


class MapAccess:
    """A map-style source as the assembler sees it: fetch an index, draw a seeded substitute index."""

    def __init__(self, source: MapSource | TensorSource) -> None:
        self.source = source

    def fetch(self, ref: int) -> RawSample:
        """Read sample `ref` (an index) from the map-style source."""
        return self.source.read(ref)

    def replacement(self, seed: int) -> int:
        """The index that replaces a bad sample: derived from `seed`, so a resumed run picks the same one."""
        return seed % len(self.source)

    def drain_bad(self) -> Counter[str]:
        """Map-style sources count nothing themselves: always empty."""
        return Counter()


class IndexCursor(MapAccess):
    """One worker's endless stream of indices of a map-style source (see the module docstring)."""

    def __init__(
        self, source: MapSource | TensorSource, seed: int, epoch: int, source_id: int, slot: int, slots: int
    ) -> None:
        super().__init__(source)
        self.coords = (seed, epoch, source_id)
        self.slot, self.slots = slot, slots
        self.count = 0
        self._pass, self._permutation = -1, np.arange(0)

    def next_ref(self) -> int:
        """The next index of this slot in the seeded per-pass permutation (a new permutation each pass)."""
        size = len(self.source)
        pass_index, offset = divmod(self.slot + self.count * self.slots, size)
        if pass_index != self._pass:
            self._permutation = generator(PERMUTATION, *self.coords, pass_index).permutation(size)
            self._pass = pass_index
        self.count += 1
        return int(self._permutation[offset])

    def skip(self, count: int) -> None:
        """Advance past `count` indices without reading them (resuming mid-epoch)."""
        self.count += count


def source_size(source: Any) -> int:
    """The number of samples in a source (for wds, from sizes.json or by reading the shards)."""
    return source.size() if isinstance(source, WdsSource) else len(source)


def count_batches(cfg: DataConfig, sources: Sequence[Any], world_size: int) -> int:
    """Batches per epoch on each rank (the same on every rank)."""
    if not cfg.streaming:
        return len(sources[0]) // world_size // cfg.batch_size
    total = cfg.epoch_samples if cfg.epoch_samples is not None else sum(source_size(s) for s in sources)
    return total // (world_size * cfg.batch_size)


@dataclass
class EpochJob:
    """Everything a worker needs to build its batches of one epoch (picklable, sent to DataLoader workers)."""

    cfg: DataConfig
    sources: list[Any]
    assembler: BatchAssembler
    epoch: int
    rank: int
    world_size: int
    workers: int  # W = max(1, num_workers)
    start_batch: int
    num_batches: int

    def batches(self, worker: int) -> Iterator[Batch]:
        """The batches of DataLoader worker `worker`: global batches start_batch + worker + m * W, in order."""
        first = self.start_batch + worker
        if first >= self.num_batches:
            return iter(())
        return self._stream(first) if self.cfg.streaming else self._exact(first)

    def _exact(self, first: int) -> Iterator[Batch]:
        source, size = self.sources[0], self.cfg.batch_size
        share = len(source) // self.world_size
        permutation = generator(PERMUTATION, self.cfg.seed, self.epoch, 0, 0).permutation(len(source))
        mine = permutation[self.rank * share : (self.rank + 1) * share]
        accesses = [MapAccess(source)]
        for g in range(first, self.num_batches, self.workers):
            start = g * size
            slots = [(0, int(mine[start + s]), start + s) for s in range(size)]
            yield self.assembler.build(self.epoch, self.rank, accesses, slots)

    def _cursor(self, source_id: int, source: Any, slot: int) -> Any:
        if isinstance(source, WdsSource):
            return source.stream(
                seed=self.cfg.seed,
                epoch=self.epoch,
                source_id=source_id,
                rank=self.rank,
                world_size=self.world_size,
                worker=(slot - self.rank) // self.world_size,
                workers=self.workers,
                resampled=self.cfg.resampled,
            )
        return IndexCursor(source, self.cfg.seed, self.epoch, source_id, slot, self.world_size * self.workers)

    def _stream(self, first: int) -> Iterator[Batch]:
        size, workers = self.cfg.batch_size, self.workers
        worker, skipped = first % workers, first // workers
        quota = len(range(worker, self.num_batches, workers))  # batches of this logical worker
        slot, slots = self.rank + worker * self.world_size, self.world_size * workers
        cursors = [self._cursor(i, source, slot) for i, source in enumerate(self.sources)]
        if len(self.sources) == 1:
            cursors[0].skip(skipped * size)
            for j in range(skipped, quota):
                g = j * workers + worker
                slots_of_batch = [(0, cursors[0].next_ref(), g * size + s) for s in range(size)]
                yield self.assembler.build(self.epoch, self.rank, cursors, slots_of_batch)
            return
        weights = np.array([s.weight for s in self.cfg.sources], dtype=np.float64)
        mixer = generator(MIXING, self.cfg.seed, self.epoch, slot, slots)
        choices = mixer.choice(len(self.sources), size=quota * size, p=weights / weights.sum())  # (quota * B,)
        for cursor, count in zip(cursors, np.bincount(choices[: skipped * size], minlength=len(cursors))):
            cursor.skip(int(count))
        for j in range(skipped, quota):
            start, g = j * size, j * workers + worker
            slots_of_batch = [
                (int(choices[start + s]), cursors[choices[start + s]].next_ref(), g * size + s) for s in range(size)
            ]
            yield self.assembler.build(self.epoch, self.rank, cursors, slots_of_batch)
