"""WebDataset shards as a source: each worker streams its own shards through a sample shuffle buffer.

Shard order: without resampling, the epoch's shard list is the concatenation of seeded permutations of all
shards (pass 0, pass 1, ...); worker u = rank + worker * world_size of U = world_size * workers takes positions
u, u + U, u + 2U, ... So shards are split by rank, then by worker, every shard is visited once before any is
repeated, and a worker that needs more samples than its shards hold simply goes on into the next pass. With
resampling, each worker draws shards with replacement from its own seeded generator (open_clip's
ResampledShards, https://github.com/mlfoundations/open_clip). Every order is a function of (seed, epoch, source,
rank, worker), never of what was read before.

Samples pass through a buffer of `shuffle_buffer` encoded samples (WebDataset's shuffle stage): each draw takes
a seeded-random element out and the buffer is refilled from the shard stream, so a batch mixes many shards; at
the end of a worker's share of a pass the buffer is drained before the next pass is read.
Skipping ahead for a resume performs the same reads and draws without decoding any image. A bad image found
when the batch decodes it is replaced by `replacement`: an element of the buffer chosen by seed and left in
place, so the stream after a batch is the same whatever the decoding found.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator

import numpy as np

from ..bad import BadSample, DataError
from ..seeding import RESAMPLE, SHARD_ORDER, SHUFFLE, generator
from ..shardspec import check_local_shards, expand_shards, is_url, open_binary
from ..tarsamples import RawSample, count_shard_samples, iter_shard

SIZES_FILE = "sizes.json"  # {"shard-000000.tar": 1000, ...}, as written by write_shards and read by open_clip


def _split_folder(url: str) -> tuple[str, str]:
    if is_url(url):
        folder, _, base = url.rpartition("/")
        return folder, base
    return os.path.dirname(url), os.path.basename(url)


def _read_sizes(folder: str) -> dict[str, int]:
    path = f"{folder}/{SIZES_FILE}" if is_url(folder) else os.path.join(folder, SIZES_FILE)
    try:
        with open_binary(path) as file:
            sizes = json.loads(file.read().decode("utf-8"))
        return {str(k): int(v) for k, v in sizes.items()} if isinstance(sizes, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


class WdsSource:
    """Tar shards named by a spec (see shardspec.py)."""

    def __init__(self, spec: str, shuffle_buffer: int = 1000) -> None:
        self.name = spec
        self.urls = expand_shards(spec)
        check_local_shards(spec, self.urls)  # a missing path is a clear error, not "an epoch has no batch"
        self.shuffle_buffer = shuffle_buffer

    def size(self) -> int:
        """Samples in all shards: from sizes.json beside the shards where listed, else by reading the tar headers."""
        sizes_by_folder: dict[str, dict[str, int]] = {}
        total = 0
        for url in self.urls:
            folder, base = _split_folder(url)
            if folder not in sizes_by_folder:
                sizes_by_folder[folder] = _read_sizes(folder)
            sizes = sizes_by_folder[folder]
            total += sizes[base] if base in sizes else count_shard_samples(url)
        return total

    def stream(
        self,
        *,
        seed: int,
        epoch: int,
        source_id: int,
        rank: int,
        world_size: int,
        worker: int,
        workers: int,
        resampled: bool,
    ) -> ShardStream:
        """The samples of this rank's and worker's shards for one epoch, in a seeded order."""
        return ShardStream(self, seed, epoch, source_id, rank, world_size, worker, workers, resampled)


class ShardStream:
    """One worker's stream of samples from a WdsSource in one epoch (see the module docstring)."""

    def __init__(
        self,
        source: WdsSource,
        seed: int,
        epoch: int,
        source_id: int,
        rank: int,
        world_size: int,
        worker: int,
        workers: int,
        resampled: bool,
    ) -> None:
        self.source = source
        self.coords = (seed, epoch, source_id)
        self.slot = rank + worker * world_size  # this worker's place among all workers of all ranks
        self.slots = world_size * workers
        self.resampled = resampled
        self.capacity = source.shuffle_buffer
        self.buffer: list[RawSample] = []
        self.bad: Counter[str] = Counter()
        self._draining = False
        self._rng = generator(SHUFFLE, *self.coords, self.slot, self.slots)
        self._samples = self._read()

    def _shards(self) -> Iterator[tuple[str, int]]:
        """(shard URL, round) in this worker's order; a round is this worker's share of one pass over all shards."""
        urls, count = self.source.urls, len(self.source.urls)
        if self.resampled:
            rng = generator(RESAMPLE, *self.coords, self.slot, self.slots)
            while True:
                for index in rng.integers(0, count, size=64):
                    yield urls[index], 0
        step, permutation, permuted_pass = 0, np.arange(0), -1
        while True:
            pass_index, offset = divmod(self.slot + step * self.slots, count)
            if pass_index != permuted_pass:
                permutation = generator(SHARD_ORDER, *self.coords, pass_index).permutation(count)
                permuted_pass = pass_index
            yield urls[permutation[offset]], pass_index
            step += 1

    def _read(self) -> Iterator[RawSample | None]:
        """Good samples in shard order, with None between rounds; bad ones are counted in self.bad."""
        dry, limit, current_round = 0, 2 * len(self.source.urls) + 16, 0
        for url, round_index in self._shards():
            if round_index != current_round:
                current_round = round_index
                yield None
            good = False
            for item in iter_shard(url):
                if isinstance(item, BadSample):
                    self.bad[item.name] += 1
                else:
                    good = True
                    yield item
            dry = 0 if good else dry + 1
            if dry >= limit:
                worst = ", ".join(f"{name} ({n})" for name, n in self.bad.most_common(5))
                raise DataError(f"{dry} shards in a row of {self.source.name} held no usable sample; bad: {worst}")

    def next_ref(self) -> RawSample:
        """The next sample of the stream, drawn from the shuffle buffer.

        The buffer is not refilled across the end of a round: it is drained first, so every sample of this
        worker's shards comes out before any shard is read a second time.
        """
        if self.capacity == 0:
            item = next(self._samples)
            while item is None:
                item = next(self._samples)
            return item
        while True:
            if not self._draining:
                while len(self.buffer) < self.capacity:
                    item = next(self._samples)
                    if item is None:
                        self._draining = True
                        break
                    self.buffer.append(item)
            if self.buffer:
                break
            self._draining = False  # the round is used up: go on with the next one
        index = int(self._rng.integers(len(self.buffer)))
        item = self.buffer[index]
        self.buffer[index] = self.buffer[-1]
        self.buffer.pop()
        return item

    def skip(self, count: int) -> None:
        """Advance by `count` samples without decoding; bad samples met on the way are not reported."""
        for _ in range(count):
            self.next_ref()
        self.bad.clear()

    def fetch(self, ref: RawSample) -> RawSample:
        """Stream samples are already read: the reference is the sample."""
        return ref

    def replacement(self, seed: int) -> RawSample | None:
        """A substitute for a sample whose image failed to decode: a buffered sample, left in the buffer."""
        return self.buffer[seed % len(self.buffer)] if self.buffer else None

    def drain_bad(self) -> Counter[str]:
        """Bad samples counted since the last call, by shard, and reset the count."""
        bad, self.bad = self.bad, Counter()
        return bad
