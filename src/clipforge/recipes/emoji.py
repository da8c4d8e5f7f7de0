"""Pretrain a small CLIP on the Noto emoji collection, captioned with their names (the search demo's model).

Each of the ~1,900 emoji (skin-tone variants left out) is one image-caption pair, the caption being its English
name ("red heart", "cat face", "flag of Japan"): exactly what a user types into a search box, so text search by
name works. There is no held-out set: the model is trained and measured on the same images (its retrieval
scores say it learned the names, not that it generalises); it exists so that `scripts/search_demo.sh` can show
indexing and search end to end on a machine without pretrained weights.

    clipforge train emoji                         # ~3-4 min on 2 CPU cores (the first run also renders the emoji)
    clipforge train emoji --arg openclipart       # also the ~8,100 OpenClipart drawings (renders ~15 min once)
    clipforge train emoji --arg tiny              # 20 steps: plumbing checks only
    clipforge train emoji --arg runs/search_demo/emoji/captions.csv   # an export of `clipforge data export-collection`

Measured (the demo's 96 px export, 210 steps, 2 busy CPU cores): 2 min 54 s (167 CPU-seconds); text->image
recall of all 1,899 names against all 1,899 images R@1 85.0%, R@10 99.4% (training images, see above).

The images are 48 px (a 6x6 grid of 8 px patches), chosen by measuring: a 64 px model (8x8 patches, width 128,
4 layers) cost 3.4x as much per step on CPU, and at 48 px the names are already learned in a few minutes. Training
reads PNGs, so an export at a small size (`--size 96`, as the demo does) decodes faster than the 256 px renders
of the "emoji" source.
"""

from __future__ import annotations

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

IMAGE_SIZE = 48
MODEL = ModelSpec(
    name="tiny-vit",
    overrides={
        "embed_dim": 96,
        "vision": {"image_size": IMAGE_SIZE, "patch_size": 8, "width": 96, "layers": 3, "heads": 4},
        # Emoji names are short (the longest is 13 BPE tokens with start and end): 16 tokens are enough.
        "text": {"width": 96, "layers": 2, "heads": 4, "context_length": 16},
    },
)
EPOCHS = 30  # 7 steps of 256 per epoch: 210 steps (R@10 of the names was ~0.9 after 100 steps of a longer run)
# The columns `clipforge data export-collection` writes (image_path relative to the CSV's folder).
EXPORT_COLUMNS = {"image_column": "image_path", "caption_column": "caption"}
VARIANTS = ("default", "openclipart", "tiny", "an export's captions.csv")


def _sources(arg: str | None) -> tuple[SourceConfig, ...]:
    if arg is None or arg == "tiny":
        return (SourceConfig(kind="emoji"),)
    if arg == "openclipart":
        # Emoji weigh as much as the 4x larger clip-art set, so the demo's emoji names stay learned.
        return (SourceConfig(kind="emoji", weight=1.0), SourceConfig(kind="openclipart", weight=1.0))
    if arg.lower().endswith((".csv", ".tsv")):
        return (SourceConfig(kind="csv", path=arg, **EXPORT_COLUMNS),)
    raise ConfigError(
        f"emoji: unknown --arg {arg!r}; expected none, 'openclipart', 'tiny' or the captions.csv of "
        "`clipforge data export-collection emoji --out DIR` (DIR/captions.csv)"
    )


def get_config(arg: str | None = None) -> TrainConfig:
    """`arg`: None (the emoji collection, ~3 min), "openclipart" (emoji and OpenClipart mixed), "tiny" (20 steps
    on small batches: plumbing only), or the path of an exported captions.csv (train on that export)."""
    sources = _sources(arg)
    tiny = arg == "tiny"
    mixed = len(sources) > 1
    if arg is None or tiny:
        name = "emoji" + ("_tiny" if tiny else "")
    elif mixed:
        name = "emoji_openclipart"
    else:
        name = "emoji_export"
    return TrainConfig(
        output_dir=f"runs/{name}",
        seed=0,
        precision="fp32",  # at these widths fp32 beats bf16 on CPUs
        model=MODEL,
        data=DataConfig(
            sources=sources,
            batch_size=32 if tiny else 256,
            # Mixed sources are streamed: one "epoch" is as many samples as the emoji and an equal clip-art share.
            epoch_samples=4_000 if mixed else None,
        ),
        optim=OptimConfig(lr=2e-3, weight_decay=0.1, grad_clip=1.0),
        schedule=ScheduleConfig(epochs=EPOCHS, max_steps=20 if tiny else None, warmup_steps=5 if tiny else 50),
        checkpoint=CheckpointConfig(every_steps=10 if tiny else 100, keep_last=2),
        logging=LogConfig(every_steps=5 if tiny else 20),
        # Recall of the names among (up to) 1,024 of the *training* pairs: a memorisation check, not a benchmark.
        eval=EvalConfig(
            retrieval=sources[0],
            retrieval_max_samples=64 if tiny else 1024,
            every_steps=None if tiny else 100,
        ),
    )
