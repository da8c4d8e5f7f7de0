"""`TrainData`: the trainer's view of the data, an epoch at a time, split by rank and worker, resumable exactly.

Usage (one process per rank, as under torchrun):

    data = TrainData(DataConfig(sources=(SourceConfig("wds", "shards/shard-{000000..000099}.tar"),),
                                batch_size=256, num_workers=8, epoch_samples=1_000_000),
                     transform=build_transform(model.cfg.preprocess, train=True), tokenizer=CLIPTokenizer(),
                     rank=rank, world_size=world_size)
    for epoch in range(start_epoch, epochs):
        for step, batch in enumerate(data.epoch(epoch, start_batch=resume_step if epoch == start_epoch else 0)):
            ...   # batch.images (B, 3, S, S), batch.tokens (B, L)

Batches are a pure function of (seed, epoch, rank, world_size, num_workers) and their index (plan.py), so a
checkpoint needs only the epoch and the number of batches done. Batches are assembled inside the DataLoader
workers and handed back in order; the bad-sample check (bad.py) runs here, in the calling process, over all
batches this object has yielded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipforge.models.config import ConfigError

from .assemble import BatchAssembler
from .bad import BadTally
from .batch import Batch
from .config import DataConfig
from .plan import EpochJob, count_batches
from .seeding import derive_seed
from .sources import WdsSource, build_source


class _EpochDataset(IterableDataset):
    """One epoch's batches; each DataLoader worker yields its own share (EpochJob.batches)."""

    def __init__(self, job: EpochJob) -> None:
        self.job = job

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        return self.job.batches(info.id if info is not None else 0)


class TrainData:
    """Training batches for one rank.

    Args:
        cfg: sources, batch size, workers, seed and bad-sample policy.
        transform: PIL image -> (3, S, S) float tensor, e.g. `build_transform(preprocess_cfg, train=True)`; its
            random draws are seeded per sample (assemble.py). Its `cfg` (a PreprocessConfig) gives the size and
            normalisation of Fashion-MNIST's vectorised path.
        tokenizer: list of captions -> (N, L) int64 tensor, e.g. `CLIPTokenizer()`.
        rank / world_size: this process's place in distributed training.
    """

    def __init__(
        self,
        cfg: DataConfig,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.sources = [build_source(source) for source in cfg.sources]
        self.assembler = BatchAssembler(transform, tokenizer, cfg.seed)
        self.tally = BadTally(cfg.max_bad_fraction)
        self._num_batches = count_batches(cfg, self.sources, world_size)
        readers = world_size * max(1, cfg.num_workers)
        for source in self.sources:
            if isinstance(source, WdsSource) and not cfg.resampled and len(source.urls) < readers:
                warnings.warn(
                    f"{source.name}: {len(source.urls)} shards for {readers} readers (world_size x num_workers): "
                    "some shards are read by several workers in each epoch; use more shards, fewer workers, or "
                    "resampled=True",
                    stacklevel=2,
                )
        if self._num_batches < 1:
            raise ConfigError(
                f"an epoch has no batch: {', '.join(s.name for s in self.sources)} hold too few samples for "
                f"batch_size={cfg.batch_size} x world_size={world_size} (set epoch_samples, or a smaller batch)"
            )

    def batches_per_epoch(self) -> int:
        """Batches each rank yields per epoch (every rank the same; the remainder of the data is dropped)."""
        return self._num_batches

    @property
    def bad_counts(self) -> dict[str, int]:
        """Bad samples met so far by this object, per file/shard."""
        return dict(self.tally.bad)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from index `start_batch` on (resume: exactly those an uninterrupted epoch yields).

        Raises DataError (while iterating) once the bad fraction exceeds cfg.max_bad_fraction.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_batch <= self._num_batches:
            raise ValueError(f"start_batch must be in [0, {self._num_batches}], got {start_batch}")
        workers = max(1, self.cfg.num_workers)
        job = EpochJob(
            self.cfg,
            self.sources,
            self.assembler,
            epoch,
            self.rank,
            self.world_size,
            workers,
            start_batch,
            self._num_batches,
        )
        return self._iterate(job)

    def _iterate(self, job: EpochJob) -> Iterator[Batch]:
        if self.cfg.num_workers == 0:
            batches: Iterator[Batch] = job.batches(0)
        else:
            # A private generator: the DataLoader's base seed must not consume the trainer's global RNG.
            seed = derive_seed(0, self.cfg.seed, job.epoch, self.rank) & ((1 << 63) - 1)
            batches = iter(
                DataLoader(
                    _EpochDataset(job),
                    batch_size=None,
                    num_workers=self.cfg.num_workers,
                    pin_memory=self.cfg.pin_memory,
                    generator=torch.Generator().manual_seed(seed),
                )
            )
        for batch in batches:
            self.tally.add(len(batch), batch.bad)
            yield batch
