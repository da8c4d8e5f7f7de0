"""Zero-shot classify every photo in a folder among text labels, and print a table.

Shows the core inference path: build or load a model, get its tokenizer and preprocessing, build a
`ZeroShotClassifier` from label names and prompt templates (the CLIP paper's prompt ensembling), then
classify preprocessed image batches. No training and no labelled images are needed: the labels are text.

    python examples/zero_shot_folder.py photos/ --labels cat dog "sports car"
    python examples/zero_shot_folder.py photos/ --labels cat,dog --model ViT-B-32 --pretrained openai
    python examples/zero_shot_folder.py photos/ --labels cat,dog --pretrained path/to/checkpoint --top-k 2

Without `--pretrained` the model has random weights (`--model tiny-vit` by default): the run shows the
plumbing, the predictions are meaningless. `--pretrained` takes a tag from `clipforge models --pretrained`
(with `--model`), or a checkpoint file/folder or Hugging Face hub id (architecture read from it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import clipforge

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of photos (searched recursively)")
    parser.add_argument("--labels", nargs="+", required=True, help="class names, space- or comma-separated")
    parser.add_argument("--model", default=None, help="architecture name (default tiny-vit without --pretrained)")
    parser.add_argument("--pretrained", default=None, help="pretrained tag (with --model), checkpoint path or hub id")
    parser.add_argument("--templates", default="simple", help="prompt set: simple, photo, imagenet, or a text file")
    parser.add_argument("--top-k", type=int, default=3, help="how many labels to show per photo")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def load(model_name: str | None, pretrained: str | None, device: str) -> clipforge.CLIP:
    """A model from an architecture name and/or pretrained weights, as the `clipforge` CLI resolves them."""
    if pretrained is None:
        return clipforge.create_model(model_name or "tiny-vit", device=device)
    if model_name is None:
        return clipforge.load_model(pretrained, device=device)
    return clipforge.create_model(model_name, pretrained=pretrained, device=device)


def split_labels(values: list[str]) -> list[str]:
    labels = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if len(labels) < 2:
        raise SystemExit(f"error: --labels needs at least two class names, got {labels}")
    return labels


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    labels = split_labels(args.labels)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder of photos", file=sys.stderr)
        return 1
    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        print(f"error: no images ({', '.join(IMAGE_SUFFIXES)}) under {args.folder}", file=sys.stderr)
        return 1

    model = load(args.model, args.pretrained, args.device).eval()
    tokenizer, preprocess = clipforge.get_tokenizer(model), clipforge.get_preprocess(model)
    classifier = clipforge.ZeroShotClassifier(model, tokenizer, labels, clipforge.get_templates(args.templates))

    rows: list[tuple[str, list[tuple[str, float]]]] = []
    skipped: list[str] = []
    for start in range(0, len(paths), args.batch_size):
        batch_paths, tensors = [], []
        for path in paths[start : start + args.batch_size]:
            try:
                tensors.append(preprocess(clipforge.load_image(path)))  # (3, H, W)
                batch_paths.append(path)
            except (OSError, ValueError) as exc:  # unreadable photo: report it, keep going
                skipped.append(f"{path}: {exc}")
        if tensors:
            top = classifier.top_k(torch.stack(tensors), k=args.top_k)  # per image: [(label, prob), ...]
            rows.extend(zip((str(p.relative_to(args.folder)) for p in batch_paths), top))

    width = max([len("file")] + [len(name) for name, _ in rows])
    print(f"{'file':<{width}}  {'prediction':<20} {'prob':>6}  top-{args.top_k}")
    for name, top in rows:
        label, prob = top[0]
        others = ", ".join(f"{lab} {p:.2f}" for lab, p in top)
        print(f"{name:<{width}}  {label:<20} {prob:>6.3f}  {others}")
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(f"{len(rows)} photos classified among {len(labels)} labels, {len(skipped)} skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
