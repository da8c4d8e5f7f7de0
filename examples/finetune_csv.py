"""Fine-tune a CLIP model on a CSV of (image, caption) pairs through clipforge's Python training API.

Shows how a run is described as code: a frozen `TrainConfig` made of small section configs (model, data,
optimizer, schedule, checkpoints, logging, evaluation), passed to `clipforge.train.loop.train`. The same
config is what a recipe file returns for `clipforge train recipe.py`. After training, the saved model is
reloaded with `clipforge.load_model` and its image-to-text retrieval on the validation pairs is printed.

    python examples/finetune_csv.py pairs.csv --steps 200 --out runs/finetune
    python examples/finetune_csv.py pairs.csv --model ViT-B-32 --pretrained openai --lr 1e-5 --batch-size 64
    python examples/finetune_csv.py pairs.csv --val-csv val.csv --lock-image    # LiT: train the text tower only

The CSV has a header; `--image-column` (default `filepath`) holds image paths, relative to the CSV's folder
or absolute, and `--caption-column` (default `title`) the captions: open_clip's CSV defaults. Rerunning the
same command resumes from the newest checkpoint in `--out`. Without `--pretrained` training starts from
random weights (`--model tiny-vit`), which is a quick way to check a dataset end to end.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

import clipforge
from clipforge.data import DataConfig, SourceConfig
from clipforge.train.config import (
    CheckpointConfig,
    EvalConfig,
    LogConfig,
    ModelSpec,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)
from clipforge.train.loop import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="training pairs: a CSV/TSV file with a header")
    parser.add_argument("--val-csv", type=Path, default=None, help="held-out pairs for retrieval (default: csv)")
    parser.add_argument("--image-column", default="filepath")
    parser.add_argument("--caption-column", default="title")
    parser.add_argument("--model", default="tiny-vit", help="architecture name (see `clipforge models`)")
    parser.add_argument("--pretrained", default=None, help="start from a pretrained tag, checkpoint path or hub id")
    parser.add_argument("--lock-image", action="store_true", help="freeze the image tower (LiT)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (cosine schedule)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up steps")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "pure_bf16"])
    parser.add_argument("--out", type=Path, default=Path("runs/finetune_csv"), help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs and CI)")
    return parser.parse_args(argv)


def count_rows(path: Path) -> int:
    """Data rows of a CSV/TSV file (header excluded)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The whole run as one validated, frozen config; a bad value fails here with the field's name."""
    source = SourceConfig(
        kind="csv", path=str(args.csv), image_column=args.image_column, caption_column=args.caption_column
    )
    val = SourceConfig(
        kind="csv",
        path=str(args.val_csv or args.csv),
        image_column=args.image_column,
        caption_column=args.caption_column,
    )
    return TrainConfig(
        output_dir=str(args.out),
        precision=args.precision,
        model=ModelSpec(name=args.model, pretrained=args.pretrained, lock_image=args.lock_image),
        data=DataConfig(sources=(source,), batch_size=args.batch_size),
        optim=OptimConfig(lr=args.lr, weight_decay=0.1),
        schedule=ScheduleConfig(epochs=10**6, max_steps=args.steps, warmup_steps=min(args.warmup, args.steps)),
        checkpoint=CheckpointConfig(every_steps=max(1, args.steps // 4), keep_last=2),
        logging=LogConfig(every_steps=max(1, args.steps // 20), progress=not args.no_progress, plot=False),
        # retrieval is encoded in batches of retrieval_max_samples: cap it at the pairs the CSV holds
        eval=EvalConfig(retrieval=val, retrieval_max_samples=min(1000, count_rows(Path(val.path)))),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.csv.is_file():
        print(f"error: {args.csv} does not exist; pass a CSV of image paths and captions", file=sys.stderr)
        return 1
    cfg = build_config(args)
    result = train(cfg)
    if result.interrupted:
        print(f"stopped at step {result.state.step}; rerun the same command to resume", file=sys.stderr)
        return 1

    losses = [r["loss"] for r in map(json.loads, (args.out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    print(f"trained {result.state.step} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    for name, value in sorted(result.final_metrics.items()):
        print(f"  {name}: {value:.4f}")

    model = clipforge.load_model(result.model_dir).eval()  # the saved folder is a normal clipforge checkpoint
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        probe = model.encode_text(clipforge.get_tokenizer(model)(["a photo"]), normalize=True)  # (1, embed_dim)
    print(f"model saved to {result.model_dir} ({n_params:,} parameters, embed_dim {probe.shape[-1]})")
    print(f"reload it with clipforge.load_model({str(result.model_dir)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
