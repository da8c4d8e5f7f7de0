"""Small learnable image-caption datasets written on the fly for trainer tests (CSV + WebDataset shards)."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from clipforge.data import write_shards

WORDS = ["red", "green", "blue", "striped", "dotted", "plain"]
SHAPES = ["square", "circle", "cross"]


def image_for(i: int) -> Image.Image:
    """A 32x32 picture whose colour and pattern follow its caption, so the pairs are learnable."""
    colour = [(200, 30, 30), (30, 200, 30), (30, 30, 200)][i % 3]
    image = Image.new("RGB", (32, 32), (240, 240, 240))
    for x in range(32):
        for y in range(32):
            if (i // 3) % 3 == 0 and (x // 4) % 2 == 0 or (i // 3) % 3 == 1 and (x + y) % 8 < 3:
                image.putpixel((x, y), colour)
    return image


def caption_for(i: int) -> str:
    return f"a {WORDS[i % 3]} {WORDS[3 + (i // 3) % 3]} {SHAPES[i % len(SHAPES)]}"


def write_pair_dataset(root: Path, n: int = 96, samples_per_shard: int = 32) -> Path:
    """root/img_*.png, root/train.csv (filepath,title) and root/shards/shard-*.tar with the same pairs."""
    rows = []
    for i in range(n):
        path = root / f"img_{i:03d}.png"
        image_for(i).save(path)
        rows.append((path.name, caption_for(i)))
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    write_shards(((root / name, cap, None) for name, cap in rows), root / "shards", samples_per_shard=samples_per_shard)
    return root


RECIPE = """
from clipforge.data import DataConfig, SourceConfig
from clipforge.train.config import CheckpointConfig, LogConfig, ModelSpec, OptimConfig, ScheduleConfig, TrainConfig

def get_config(arg=None):
    return TrainConfig(
        output_dir=arg,
        model=ModelSpec(name="tiny-vit"),
        data=DataConfig(sources=(SourceConfig(kind="csv", path={csv!r}),), batch_size={batch_size}, seed=1),
        optim=OptimConfig(lr=1e-3),
        schedule=ScheduleConfig({schedule}),
        checkpoint=CheckpointConfig(every_steps=1000, keep_last=1),
        logging=LogConfig(every_steps=1, progress=False, plot=False),
    )
"""


def write_recipe(path: Path, csv_path: Path, batch_size: int, schedule: str) -> Path:
    """A recipe file (for `clipforge train`) training tiny-vit on `csv_path`; `--arg` is the output folder.

    `schedule` is the ScheduleConfig argument list, e.g. 'epochs=4, max_steps=6, kind="constant"'.
    """
    path.write_text(RECIPE.format(csv=str(csv_path), batch_size=batch_size, schedule=schedule))
    return path
