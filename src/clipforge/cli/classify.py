"""`clipforge classify`: zero-shot classification of image files among text labels.

Output is JSON lines by default: one object per input image, in input order, written as each batch is
done, so `| head`, `jq -c` and line-by-line readers work on long runs. An unreadable image gets a line
with "error" instead of "label" (and a warning on stderr). `--format json` writes the previous single
document {"model", "pretrained", "random_weights", "results", "skipped"}.
"""

from __future__ import annotations

import argparse
import sys

from .argtypes import positive_int
from .common import (
    add_common_arguments,
    add_model_arguments,
    add_progress_arguments,
    json_text,
    model_from_args,
    preprocessed_batches,
    print_json,
    read_text_arg,
    report_skipped,
    show_progress,
)
from .errors import CliParser, UsageError, command


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge classify` argument parser (also the source of its --help)."""
    parser = CliParser(
        prog="clipforge classify",
        description="Zero-shot classify images: each label becomes text prompts (templates), the image goes to "
        "the label whose prompts it matches best. Prints one JSON object per image per line.",
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
    parser.add_argument("--top-k", type=positive_int, default=3, help="labels reported per image (default 3)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the results here instead of stdout")
    parser.add_argument("--output", dest="out", help=argparse.SUPPRESS)  # the old name of --out
    parser.add_argument(
        "--format",
        choices=["jsonl", "json"],
        default="jsonl",
        help="jsonl (default): one JSON object per image per line; json: one document with all results",
    )
    add_progress_arguments(parser)
    add_model_arguments(parser)
    add_common_arguments(parser)
    return parser


def parse_labels(spec: str) -> list[str]:
    """Labels from `--labels`: comma-separated names, or @FILE with one label per line."""
    if spec.startswith("@"):
        labels = [line.strip() for line in read_text_arg(spec[1:], "--labels @FILE").splitlines() if line.strip()]
    else:
        labels = [part.strip() for part in spec.split(",") if part.strip()]
    if not labels:
        raise UsageError(f"--labels {spec!r} contains no label", 'give comma-separated names, e.g. --labels "cat,dog"')
    return labels


def parse_templates(spec: str) -> list[str]:
    """--templates: a built-in set by name, or a file read like every file a flag names (regular file, size cap,
    UTF-8 with the bad line named); one template per line, blank lines and # comments skipped."""
    from ..zeroshot import get_templates
    from ..zeroshot.templates import BUILTIN_TEMPLATE_SETS, check_templates

    if spec in BUILTIN_TEMPLATE_SETS:
        return get_templates(spec)
    lines = [line.strip() for line in read_text_arg(spec, "--templates").splitlines()]
    return check_templates([line for line in lines if line and not line.startswith("#")], spec)


class _Lines:
    """JSON lines to stdout as they come (flushed per batch), or to --out atomically at the end."""

    def __init__(self, out: str | None) -> None:
        self.out = out
        self.lines: list[str] = []

    def write(self, record: dict) -> None:
        line = json_text(record)
        if self.out is None:
            sys.stdout.write(line + "\n")
        else:
            self.lines.append(line)

    def flush(self) -> None:
        if self.out is None:
            sys.stdout.flush()

    def close(self) -> None:
        if self.out is not None:
            from pathlib import Path

            from ..atomic import atomic_write_bytes

            atomic_write_bytes(Path(self.out), "".join(line + "\n" for line in self.lines).encode())


@command("clipforge classify")
def main(argv: list[str] | None = None) -> int:
    """`clipforge classify`: zero-shot labels for each image, one JSON object per line; returns the exit code."""
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from ..factory import get_preprocess, get_tokenizer
    from ..zeroshot import ZeroShotClassifier

    labels = parse_labels(args.labels)
    templates = parse_templates(args.templates)
    model, random_weights = model_from_args(args)
    classifier = ZeroShotClassifier(model, get_tokenizer(model), labels, templates)
    preprocess = get_preprocess(model)
    lines = _Lines(args.out) if args.format == "jsonl" else None
    records, errors = [], []
    batches = preprocessed_batches(args.images, preprocess, args.batch_size)
    total = -(-len(args.images) // args.batch_size)
    progress = tqdm(batches, total=total, desc="classify", unit="batch", disable=not show_progress(args))
    for start, (batch, paths, skipped) in zip(range(0, len(args.images), args.batch_size), progress):
        errors.extend(skipped)
        ranked_rows = classifier.top_k(batch.to(device=args.device), args.top_k) if batch is not None else []
        results = iter(
            {"image": path, "label": ranked[0][0], "top_k": [{"label": l, "prob": p} for l, p in ranked]}
            for path, ranked in zip(paths, ranked_rows)
        )
        bad = iter(skipped)
        kept = set(paths)
        for path in args.images[start : start + args.batch_size]:  # input order; an error line where skipped
            if path in kept:
                records.append(next(results))
                record = records[-1]
            else:
                item = next(bad)
                record = {"image": item["image"], "error": item["error"]}
            if lines is not None:
                lines.write(record)
        if lines is not None:
            lines.flush()
    report_skipped(errors, len(args.images))
    if lines is not None:
        lines.close()
    else:
        result = {"model": args.model, "pretrained": args.pretrained, "random_weights": random_weights}
        result["results"] = records
        if errors:
            result["skipped"] = [{"image": e["image"], "error": e["error"]} for e in errors]
        print_json(result, args.out)
    return 0
