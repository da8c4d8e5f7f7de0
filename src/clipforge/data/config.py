"""Configuration of the training data layer: where samples come from and how an epoch is cut into batches.

Two frozen dataclasses, validated on construction (STYLE.md guideline 2): `SourceConfig` describes one data
source, `DataConfig` the mixture of sources and the batching. Run state (rank, world size, epoch) is not part of
the config: `TrainData` takes rank and world size, `TrainData.epoch` the epoch.
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass
from typing import Literal

from clipforge.models.config import ConfigError

SourceKind = Literal["fashion_mnist", "tuxpaint", "openclipart", "emoji", "csv", "folder", "wds"]
SOURCE_KINDS: tuple[str, ...] = ("fashion_mnist", "tuxpaint", "openclipart", "emoji", "csv", "folder", "wds")
# random access, known length
MAP_KINDS: tuple[str, ...] = ("fashion_mnist", "tuxpaint", "openclipart", "emoji", "csv", "folder")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class SourceConfig:
    """One data source.

    Fields:
        kind: "fashion_mnist" (the Debian dataset-fashion-mnist files, captions from templates), "tuxpaint"
            (Tux Paint stamps with their English captions), "openclipart" (OpenClipart drawings rendered from SVG,
            captioned by their cleaned titles), "emoji" (Noto Color Emoji, captioned by their names), "csv" (a
            CSV/TSV file of image paths and captions),
            "folder" (images with sidecar captions: x.jpg + x.txt), "wds" (WebDataset tar shards in
            img2dataset's layout).
        path: csv: the CSV/TSV file; folder: the directory; wds: a shard spec ("dir/shard-{000000..000009}.tar",
            several joined by "::"), a directory of .tar files, local or an fsspec URL (s3://, http://, ...);
            fashion_mnist, tuxpaint and openclipart: the dataset's directory, emoji: the colour emoji font file;
            None for the Debian install location.
        weight: mixing weight among the sources (relative; only ratios matter).
        image_column / caption_column: csv: column names of the image path and the caption (open_clip's
            defaults). Relative image paths are relative to the CSV file's folder.
        separator: csv: the field separator; None means tab for .tsv files and comma otherwise.
        encoding: csv: the file's text encoding (a Python codec name such as "latin-1"); None means UTF-8, or
            UTF-16 when the file starts with its byte-order mark (Excel's "Unicode text").
        templates: fashion_mnist: caption templates with one "{}" for the class name; None means
            FASHION_TRAIN_TEMPLATES.
        split: fashion_mnist: "train" (60,000 images) or "test" (10,000).
        shuffle_buffer: wds: samples held (still encoded) in the shuffle buffer of each worker, so that batches
            mix samples from several shards; 0 keeps the shards' own order.
    """

    kind: SourceKind
    path: str | None = None
    weight: float = 1.0
    image_column: str = "filepath"
    caption_column: str = "title"
    separator: str | None = None
    encoding: str | None = None
    templates: tuple[str, ...] | None = None
    split: str = "train"
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        _check(self.kind in SOURCE_KINDS, f"source kind {self.kind!r} is not one of {list(SOURCE_KINDS)}")
        if self.kind in ("csv", "folder", "wds"):
            _check(bool(self.path), f"a {self.kind!r} source needs a path")
        _check(math.isfinite(self.weight) and self.weight > 0, f"source weight must be positive, got {self.weight}")
        _check(
            self.separator is None or len(self.separator) == 1,
            f"separator must be one character, got {self.separator!r}",
        )
        if self.encoding is not None:
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ConfigError(f"encoding {self.encoding!r} is not a Python codec name (e.g. 'latin-1')") from None
        if self.templates is not None:
            object.__setattr__(self, "templates", tuple(self.templates))
            _check(len(self.templates) > 0, "templates must not be empty")
            for template in self.templates:
                _check(template.count("{}") == 1, f"template {template!r} needs exactly one '{{}}'")
        _check(self.split in ("train", "test"), f"split must be 'train' or 'test', got {self.split!r}")
        _check(self.shuffle_buffer >= 0, f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")


@dataclass(frozen=True)
class DataConfig:
    """The training data: sources, batching and the bad-sample policy.

    Fields:
        sources: one or more SourceConfig; several are mixed by weight.
        batch_size: samples per batch on each rank.
        num_workers: DataLoader worker processes (0: batches are built in the calling process).
        seed: the root of every random choice (orders, mixing, augmentation, caption templates).
        resampled: wds sources draw shards with replacement (an endless stream; needs epoch_samples);
            otherwise each epoch visits every shard once before any shard is repeated.
        max_bad_fraction: once at least 100 samples were seen, a bad fraction above this raises DataError
            naming the worst shards/files.
        epoch_samples: samples per epoch over all ranks, for mixed or streaming data; None means the sum of
            the sources' sizes (wds sizes come from sizes.json next to the shards, or from reading the tars).
        pin_memory: let the DataLoader pin batches (for asynchronous copies to a GPU).
    """

    sources: tuple[SourceConfig, ...]
    batch_size: int = 256
    num_workers: int = 0
    seed: int = 0
    resampled: bool = False
    max_bad_fraction: float = 0.05
    epoch_samples: int | None = None
    pin_memory: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.sources, SourceConfig):
            object.__setattr__(self, "sources", (self.sources,))
        object.__setattr__(self, "sources", tuple(self.sources))
        _check(len(self.sources) > 0, "DataConfig needs at least one source")
        _check(all(isinstance(s, SourceConfig) for s in self.sources), "sources must be SourceConfig objects")
        _check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        _check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(0.0 <= self.max_bad_fraction <= 1.0, f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        _check(
            self.epoch_samples is None or self.epoch_samples > 0,
            f"epoch_samples must be positive or None, got {self.epoch_samples}",
        )
        if self.resampled and any(s.kind == "wds" for s in self.sources):
            _check(self.epoch_samples is not None, "resampled wds streams are endless: set epoch_samples")

    @property
    def streaming(self) -> bool:
        """Whether epochs are cut from per-worker streams (wds, several sources, or a fixed epoch_samples)
        rather than from one permutation of a single map-style source."""
        return len(self.sources) > 1 or self.sources[0].kind == "wds" or self.epoch_samples is not None
