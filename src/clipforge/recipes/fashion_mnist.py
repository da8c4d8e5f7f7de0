"""Pretrain a tiny CLIP on Fashion-MNIST images with generated captions (the quickstart).

Each training image gets a caption from several templates ("a photo of a sneaker.", ...) built from
its class; evaluation is zero-shot on the 10,000-image test split with *different* templates, so the
score measures language transfer, not memorised captions. Fashion-MNIST: Xiao et al. 2017
(Debian `dataset-fashion-mnist`).

    clipforge train fashion_mnist                 # default: ~1-2 min on 2 CPU cores
    clipforge train fashion_mnist --arg smoke     # 300 steps: >= 80% in under two minutes
    clipforge train fashion_mnist --arg tiny      # 20 steps on small batches: plumbing checks only
    torchrun --nproc_per_node=2 -m clipforge.cli.main train fashion_mnist --data.batch_size=128
"""

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

MODEL = ModelSpec(
    name="tiny-vit",
    overrides={
        "embed_dim": 64,
        # 28 px: Fashion-MNIST's own size (no resize), a 4x4 grid of 7 px patches; the preprocessing follows
        # vision.image_size, so training, evaluation and the exports all feed the model 28 px images.
        "vision": {"image_size": 28, "patch_size": 7, "width": 64, "layers": 3, "heads": 4},
        "text": {"width": 64, "layers": 2, "heads": 4, "context_length": 32},
    },
)


def get_config(arg: str | None = None) -> TrainConfig:
    """`arg`: None (the quickstart: ~85%+ zero-shot top-1), "smoke" (~300 steps, >= 80%, under two
    minutes of training), or "tiny" (20 steps on small batches: plumbing checks only)."""
    if arg not in (None, "smoke", "tiny"):
        raise ConfigError(f"fashion_mnist: unknown --arg {arg!r}; expected none, 'smoke' or 'tiny'")
    steps = {None: None, "smoke": 300, "tiny": 20}[arg]
    return TrainConfig(
        output_dir="runs/fashion_mnist" + (f"_{arg}" if arg else ""),
        seed=0,
        precision="fp32",  # at these widths fp32 beats bf16 on this CPU
        model=MODEL,
        data=DataConfig(sources=(SourceConfig(kind="fashion_mnist"),), batch_size=64 if arg == "tiny" else 256),
        optim=OptimConfig(lr=2e-3, weight_decay=0.1, grad_clip=1.0),
        schedule=ScheduleConfig(epochs=3, max_steps=steps, warmup_steps=5 if arg == "tiny" else 50),
        checkpoint=CheckpointConfig(every_steps=10 if arg == "tiny" else 200, keep_last=2),
        logging=LogConfig(every_steps=5 if arg == "tiny" else 20),
        eval=EvalConfig(
            zeroshot="fashion_mnist",
            zeroshot_max_samples=1000 if arg == "tiny" else None,
            every_steps=None if arg else 200,
        ),
    )
