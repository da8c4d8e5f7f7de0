"""Training-data throughput: batches per second of `TrainData` epochs, one process, no workers.

Measures what used to be a timed assertion in tests/data/test_data_fashion.py (an epoch of Fashion-MNIST
batches "well under a second"): timings belong here, where a busy machine gives a slow figure instead of a
failed test. Two sources: Fashion-MNIST (vectorised TensorSource path, 28 px, batch 256) and a folder of
small PNG files with sidecar captions (decode + augment per file, the path CSV/folder/shard data takes).

    .venv/bin/python benchmarks/data.py                 # best of 3 epochs per source
    .venv/bin/python benchmarks/data.py --repeats 5 --files 2000
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipforge.data import DataConfig, SourceConfig, TrainData
from clipforge.image import build_transform
from clipforge.models.config import PreprocessConfig
from clipforge.text import CLIPTokenizer


def _write_folder(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG")
        (root / f"img{i:05d}.png").write_bytes(out.getvalue())
        (root / f"img{i:05d}.txt").write_text(f"a photo of thing {i}\n", encoding="utf-8")


def time_epochs(data: TrainData, repeats: int) -> tuple[int, float]:
    """(batches per epoch, best seconds per epoch) over `repeats` epochs after one warm-up epoch."""
    count = sum(1 for _ in data.epoch(0))  # warm-up: caption table, first allocations
    best = float("inf")
    for epoch in range(1, repeats + 1):
        start = time.perf_counter()
        seen = sum(1 for _ in data.epoch(epoch))
        best = min(best, time.perf_counter() - start)
        assert seen == count, (seen, count)
    return count, best


def run(repeats: int = 3, files: int = 1000) -> list[dict[str, float | int | str]]:
    """One row per source: name, batches, batch size, best seconds per epoch, batches/s, samples/s."""
    tokenizer = CLIPTokenizer()
    rows = []
    fashion = TrainData(
        DataConfig(sources=(SourceConfig("fashion_mnist"),), batch_size=256),
        build_transform(PreprocessConfig(size=28), train=True),
        tokenizer,
    )
    rows.append(("Fashion-MNIST train, 28 px", 256, *time_epochs(fashion, repeats)))
    with tempfile.TemporaryDirectory() as tmp:
        _write_folder(Path(tmp), files)
        folder = TrainData(
            DataConfig(sources=(SourceConfig("folder", tmp),), batch_size=64),
            build_transform(PreprocessConfig(size=32), train=True),
            tokenizer,
        )
        rows.append((f"folder of {files} 64x48 PNG + .txt, 32 px", 64, *time_epochs(folder, repeats)))
    return [
        {
            "source": name,
            "batches": n,
            "batch_size": size,
            "seconds": s,
            "batches_per_s": n / s,
            "samples_per_s": n * size / s,
        }
        for name, size, n, s in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per source (best is reported)")
    parser.add_argument("--files", type=int, default=1000, help="image files in the folder source")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.machine()}")
    print("| source | batches x size | best s / epoch | batches/s | samples/s |")
    print("|---|---:|---:|---:|---:|")
    for row in run(args.repeats, args.files):
        print(
            f"| {row['source']} | {row['batches']} x {row['batch_size']} | {row['seconds']:.3f} | "
            f"{row['batches_per_s']:.0f} | {row['samples_per_s']:,.0f} |"
        )


if __name__ == "__main__":
    main()
