"""Fine-tune a pretrained CLIP on your own image-caption pairs (CSV/TSV, WebDataset shards or a folder).

Small data over-fits a whole CLIP quickly, so the image tower is locked (LiT, Zhai et al. 2022): only the
text tower (with its projection) and the temperature learn, at a low learning rate with warm-up. The
data is the recipe argument:

    clipforge train finetune_csv --arg pairs.csv          # CSV/TSV with filepath,title columns
    clipforge train finetune_csv --arg "shards/shard-{000000..000009}.tar"   # WebDataset shards
    clipforge train finetune_csv --arg shards/            # a folder of .tar shards
    clipforge train finetune_csv --arg images/            # images with sidecar captions (x.jpg + x.txt)

Common changes: other columns `--data.sources.0.caption_column=caption`; another model
`--model.name=ViT-B-16 --model.pretrained=datacomp_xl_s13b_b90k` (or a checkpoint folder); more capacity
`--model.lock_image_unlocked_groups=2` (last two image blocks learn) or `--model.lock_image=false`; held-out
recall `--eval.retrieval='{"kind": "csv", "path": "val.csv"}'`. `--help` lists every field.
"""

from __future__ import annotations

from pathlib import Path

from clipforge.data import DataConfig, SourceConfig
from clipforge.models.config import ConfigError
from clipforge.train.config import (
    CheckpointConfig,
    EvalConfig,
    LogConfig,
    ModelSpec,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)

DEFAULT_DATA = "train.csv"


def source_for(path: str) -> SourceConfig:
    """The SourceConfig for a data path: .csv/.tsv file, shard spec / URL / folder of .tar, or image folder."""
    lower = path.lower()
    if lower.endswith((".csv", ".tsv")):
        return SourceConfig(kind="csv", path=path)
    if ".tar" in lower or "::" in path or "{" in path or "://" in path:
        return SourceConfig(kind="wds", path=path)
    folder = Path(path)
    if folder.is_dir():
        kind = "wds" if any(folder.glob("*.tar")) else "folder"
        return SourceConfig(kind=kind, path=path)
    raise ConfigError(
        f"finetune_csv: --arg {path!r} is not a .csv/.tsv file, a .tar shard spec or an existing folder; "
        "give the image-caption data as --arg PATH"
    )


def get_config(arg: str | None = None) -> TrainConfig:
    """`arg`: the training data (see the module docstring); None reads ./train.csv."""
    return TrainConfig(
        output_dir="runs/finetune_csv",
        seed=0,
        model=ModelSpec(name="ViT-B-32", pretrained="laion2b_s34b_b79k", lock_image=True),
        data=DataConfig(sources=(source_for(arg or DEFAULT_DATA),), batch_size=64, max_bad_fraction=0.05),
        optim=OptimConfig(lr=1e-5, weight_decay=0.1, grad_clip=1.0),
        schedule=ScheduleConfig(epochs=10, warmup_steps=20, kind="cosine"),
        checkpoint=CheckpointConfig(every_steps=200, keep_last=2),
        logging=LogConfig(every_steps=10),
        eval=EvalConfig(),
    )
