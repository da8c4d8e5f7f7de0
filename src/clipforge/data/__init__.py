"""Training data for clipforge: sources, deterministic resumable epochs split by rank and worker, shard writing.

    TrainData(DataConfig(sources=(SourceConfig(kind, path, weight), ...), batch_size, num_workers, seed, ...),
              transform, tokenizer, rank, world_size).epoch(e, start_batch) -> Iterator[Batch]

Sources: Fashion-MNIST (vectorised, no PIL), Tux Paint stamps, CSV/TSV files, image folders with sidecar
captions, and WebDataset tar shards in img2dataset's layout (local or fsspec URLs, e.g. s3://). `write_shards`
and `clipforge data make-shards` write such shards. Module map: config.py (the dataclasses), sources/ (one kind
each), tarsamples.py and shardspec.py (reading shards), plan.py (which sample goes in which batch),
assemble.py (decode, seed, replace bad samples), loader.py (TrainData), bad.py (DataError and the bad-sample
tally), builtins.py and greyscale.py (the built-in datasets), shards.py (writing).
"""

from .bad import DataError
from .batch import Batch
from .builtins import (
    FASHION_MNIST_CLASSES,
    FASHION_TEST_TEMPLATES,
    FASHION_TRAIN_TEMPLATES,
    fashion_mnist_eval_set,
    load_fashion_mnist,
    load_tuxpaint_pairs,
)
from .config import DataConfig, SourceConfig
from .loader import TrainData
from .shards import write_shards
from .shardspec import expand_shards

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_TEST_TEMPLATES",
    "FASHION_TRAIN_TEMPLATES",
    "Batch",
    "DataConfig",
    "DataError",
    "SourceConfig",
    "TrainData",
    "expand_shards",
    "fashion_mnist_eval_set",
    "load_fashion_mnist",
    "load_tuxpaint_pairs",
    "write_shards",
]
