"""`clipforge data`: data preparation commands. `make-shards` turns a CSV/TSV file or an image folder with
sidecar captions into WebDataset tar shards (img2dataset's layout, see clipforge.data.shards).

Inputs that cannot be used (unreadable or corrupt images, missing or empty captions) are skipped and counted;
the count and the first few reasons are printed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Any

from .common import fail

_SHOW_SKIPPED = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipforge data",
        description="Prepare training data.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    make = commands.add_parser(
        "make-shards",
        prog="clipforge data make-shards",
        help="write WebDataset tar shards from a CSV/TSV file or an image folder",
        description="Write image-caption pairs as WebDataset tar shards (img2dataset layout: KEY.jpg|png|webp, "
        "KEY.txt, KEY.json) plus sizes.json, for SourceConfig(kind='wds', path='DIR/shard-{000000..NNNNNN}.tar'). "
        "Unreadable images and empty captions are skipped and counted.",
        epilog="examples:\n"
        "  clipforge data make-shards --from-folder photos/ --out shards/ --samples-per-shard 1000\n"
        "  clipforge data make-shards --from-csv train.tsv --caption-column caption --out shards/ "
        "--samples-per-shard 5000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = make.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-csv", metavar="FILE", help="CSV/TSV file with an image path and a caption column")
    source.add_argument("--from-folder", metavar="DIR", help="folder of images with sidecar captions (x.jpg + x.txt)")
    make.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    make.add_argument("--samples-per-shard", type=int, required=True, metavar="N", help="samples per tar shard")
    make.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    make.add_argument("--image-column", default="filepath", help="CSV image path column (default: filepath)")
    make.add_argument("--caption-column", default="title", help="CSV caption column (default: title)")
    make.add_argument("--separator", default=None, help="CSV separator (default: tab for .tsv, else comma)")
    make.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _inputs(args: argparse.Namespace, skip: Any) -> tuple[int, Iterator[tuple[str, str, dict[str, Any]]]]:
    """(number of inputs, iterator of (image path, caption, extra json)) for the chosen source."""
    from ..data.bad import BadSample
    from ..data.sources import CsvSource, FolderSource

    if args.from_csv:
        table = CsvSource(args.from_csv, args.image_column, args.caption_column, args.separator)
        rows = list(zip(table.paths, table.captions))
        return len(rows), ((path, caption or "", {"source": path}) for path, caption in rows)
    folder = FolderSource(args.from_folder)

    def read() -> Iterator[tuple[str, str, dict[str, Any]]]:
        for index, path in enumerate(folder.paths):
            try:
                sample = folder.read(index)
            except BadSample as exc:
                skip(exc.name, exc.reason)
                continue
            yield path, sample.caption, {"source": os.path.relpath(path, args.from_folder)}

    return len(folder), read()


def make_shards(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.shards import write_shards
    from ..models.config import ConfigError

    if args.samples_per_shard < 1:
        return fail(f"--samples-per-shard must be positive, got {args.samples_per_shard}")
    skipped: list[tuple[str, str]] = []

    def skip(name: str, reason: str) -> None:
        skipped.append((name, reason))

    try:
        total, samples = _inputs(args, skip)
    except (ConfigError, OSError) as exc:
        return fail(str(exc))
    progress = tqdm(samples, total=total, unit="img", disable=args.no_progress, desc="make-shards")
    paths = write_shards(progress, args.out, args.samples_per_shard, args.prefix, on_skip=skip)
    written = total - len(skipped)
    print(f"wrote {written} samples in {len(paths)} shards to {args.out}; skipped {len(skipped)} bad inputs")
    for name, reason in skipped[:_SHOW_SKIPPED]:
        print(f"  skipped {name}: {reason}", file=sys.stderr)
    if len(skipped) > _SHOW_SKIPPED:
        print(f"  ... and {len(skipped) - _SHOW_SKIPPED} more", file=sys.stderr)
    if paths:
        last = len(paths) - 1
        print(f"use: SourceConfig(kind='wds', path='{args.out.rstrip('/')}/{args.prefix}-{{000000..{last:06d}}}.tar')")
    return 0 if written > 0 else fail("no usable input")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "make-shards":
        return make_shards(args)
    parser.print_help()
    return 2
