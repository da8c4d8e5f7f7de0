"""`clipforge classify`: zero-shot classification of image files among text labels, as JSON."""

from __future__ import annotations

import argparse

from .common import add_model_arguments, fail, model_from_args, preprocessed_batches, print_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipforge classify",
        description="Zero-shot classify images: each label becomes text prompts (templates), the image goes to "
        "the label whose prompts it matches best. Prints one JSON record per image.",
        epilog='example: clipforge classify cat.jpg dog.png --labels "cat,dog,car" --model ViT-B-32 '
        "--pretrained laion2b_s34b_b79k",
    )
    parser.add_argument("images", nargs="+", help="image files (jpg, png, webp, ...)")
    parser.add_argument("--labels", required=True, help="comma-separated class names, or @FILE with one per line")
    parser.add_argument(
        "--templates",
        default="simple",
        help="prompt templates: 'simple' (7, default), 'imagenet' (the CLIP paper's 80), 'photo' "
        "('a photo of a {}.'), or a file with one template per line containing {}",
    )
    parser.add_argument("--top-k", type=int, default=3, help="labels reported per image (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default=None, help="write the JSON here instead of stdout")
    add_model_arguments(parser)
    return parser


def parse_labels(spec: str) -> list[str]:
    if spec.startswith("@"):
        with open(spec[1:], encoding="utf-8") as handle:
            labels = [line.strip() for line in handle if line.strip()]
    else:
        labels = [part.strip() for part in spec.split(",") if part.strip()]
    if not labels:
        raise ValueError(f"--labels {spec!r} contains no label")
    return labels


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..factory import get_preprocess, get_tokenizer
    from ..zeroshot import ZeroShotClassifier, get_templates

    try:
        labels = parse_labels(args.labels)
        templates = get_templates(args.templates)
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    model, random_weights = model_from_args(args)
    classifier = ZeroShotClassifier(model, get_tokenizer(model), labels, templates)
    preprocess = get_preprocess(model)
    records, errors = [], []
    for batch, paths, skipped in preprocessed_batches(args.images, preprocess, args.batch_size):
        errors.extend(skipped)
        if batch is None:
            continue
        for path, ranked in zip(paths, classifier.top_k(batch.to(device=args.device), args.top_k)):
            records.append(
                {"image": path, "label": ranked[0][0], "top_k": [{"label": l, "prob": p} for l, p in ranked]}
            )
    result = {"model": args.model, "pretrained": args.pretrained, "random_weights": random_weights, "results": records}
    if errors:
        result["skipped"] = errors
    print_json(result, args.output)
    return 0 if records or not errors else 1
