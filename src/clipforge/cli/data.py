"""`clipforge data`: data preparation commands. `make-shards` turns a CSV/TSV file or an image folder with
sidecar captions into WebDataset tar shards (img2dataset's layout, see clipforge.data.shards); `export-collection`
renders a built-in collection (OpenClipart, Noto emoji) to PNGs and a captions CSV (cli/data_export.py).

Inputs that cannot be used (unreadable or corrupt images, FIFOs or devices, oversized files, missing or empty
captions, malformed CSV rows) are skipped and counted; the count and the first few reasons are printed at the end.
The output folder is locked while shards are written: a second make-shards into it stops with a clear error.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from typing import Any

from ..safeio import DEFAULT_MAX_IMAGE_BYTES
from .argtypes import positive_int, positive_number
from .common import add_common_arguments, add_progress_arguments, show_progress
from .data_export import add_export_parser, export_collection_command
from .errors import INPUT_NOT_FOUND, CliError, CliParser, UsageError, command

_SHOW_SKIPPED = 5
DEFAULT_SAMPLES_PER_SHARD = 10_000  # img2dataset's default

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge data` parser with its subcommands (make-shards, export-collection)."""
    parser = CliParser(
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
    make.add_argument(
        "--samples-per-shard",
        type=positive_int,
        default=DEFAULT_SAMPLES_PER_SHARD,
        metavar="N",
        help=f"samples per tar shard (default: {DEFAULT_SAMPLES_PER_SHARD})",
    )
    make.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    make.add_argument("--image-column", default="filepath", help="CSV image path column (default: filepath)")
    make.add_argument("--caption-column", default="title", help="CSV caption column (default: title)")
    make.add_argument("--separator", default=None, help="CSV separator (default: tab for .tsv, else comma)")
    make.add_argument(
        "--encoding",
        default=None,
        help="CSV text encoding, e.g. latin-1 (default: UTF-8, or UTF-16 when the file starts with its BOM)",
    )
    make.add_argument(
        "--max-image-mb",
        type=positive_number,
        default=DEFAULT_MAX_IMAGE_BYTES / 2**20,
        metavar="MB",
        help=f"skip image files larger than this (default: {DEFAULT_MAX_IMAGE_BYTES // 2**20} MiB)",
    )
    add_progress_arguments(make)
    add_common_arguments(make)
    add_export_parser(commands)
    add_common_arguments(parser)
    return parser


_FLAGS = {"image": "--image-column", "caption": "--caption-column"}


def read_csv_source(args: argparse.Namespace) -> Any:
    """The CsvSource of --from-csv; errors name the CLI flags, not SourceConfig fields (CsvSource would say
    "set image_column / caption_column in the SourceConfig", which a command-line user cannot act on)."""
    from ..data.csvfile import CsvColumnError, CsvFormatError
    from ..data.sources import CsvSource

    try:
        return CsvSource(args.from_csv, args.image_column, args.caption_column, args.separator, encoding=args.encoding)
    except FileNotFoundError as exc:
        raise CliError(f"--from-csv {args.from_csv}: no such file", "check the path", INPUT_NOT_FOUND) from exc
    except CsvColumnError as exc:
        wanted = {"image": args.image_column, "caption": args.caption_column}
        missing = [f"{_FLAGS[role]} {name!r}" for role, name in wanted.items() if name in exc.missing]
        hint = "pass --image-column / --caption-column with names from the header"
        if len(exc.columns) <= 1:
            hint += f", or the right --separator (used: {exc.separator!r})"
        problem = f"--from-csv {args.from_csv} has no column for {' and '.join(missing)}; its columns: {exc.columns}"
        raise UsageError(problem, hint) from exc
    except CsvFormatError as exc:  # undecodable text, an unterminated quote, too many malformed rows
        raise UsageError(f"--from-csv {exc}".replace("(e.g. encoding='", "(e.g. --encoding '"), "") from exc


def _inputs(args: argparse.Namespace, skip: Any) -> tuple[int, Iterator[tuple[str, str, dict[str, Any]]]]:
    """(number of inputs, iterator of (image path, caption, extra json)) for the chosen source."""
    from ..data.bad import BadSample
    from ..data.sources import FolderSource

    if args.from_csv:
        table = read_csv_source(args)
        for line, reason in table.skipped_rows:
            skip(f"{args.from_csv}:{line}", f"malformed row: {reason}")
        rows = list(zip(table.paths, table.captions))
        total = len(rows) + len(table.skipped_rows)
        return total, ((path, caption or "", {"source": path}) for path, caption in rows)
    if not os.path.isdir(args.from_folder):
        what = "not a folder" if os.path.exists(args.from_folder) else "no such folder"
        raise CliError(f"--from-folder {args.from_folder}: {what}", "check the path", INPUT_NOT_FOUND)
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
    """`clipforge data make-shards`: write WebDataset tar shards from a folder or CSV; returns the exit code."""
    from tqdm import tqdm

    from ..data.shards import write_shards

    if args.samples_per_shard < 1:
        raise UsageError(f"--samples-per-shard must be positive, got {args.samples_per_shard}", "e.g. 10000")
    if not args.max_image_mb > 0:  # also refuses NaN
        raise UsageError(f"--max-image-mb must be positive, got {args.max_image_mb}", "e.g. --max-image-mb 64")
    skipped: list[tuple[str, str]] = []

    def skip(name: str, reason: str) -> None:
        skipped.append((name, reason))

    total, samples = _inputs(args, skip)
    progress = tqdm(samples, total=total, unit="img", disable=not show_progress(args), desc="make-shards")
    max_bytes = int(args.max_image_mb * 2**20)
    paths = write_shards(
        progress, args.out, args.samples_per_shard, args.prefix, on_skip=skip, max_image_bytes=max_bytes
    )
    written = total - len(skipped)
    print(f"wrote {written} samples in {len(paths)} shards to {args.out}; skipped {len(skipped)} bad inputs")
    for name, reason in skipped[:_SHOW_SKIPPED]:
        log.warning("skipped %s: %s", name, reason)
    if len(skipped) > _SHOW_SKIPPED:
        log.warning("... and %d more skipped inputs", len(skipped) - _SHOW_SKIPPED)
    if paths:
        last = len(paths) - 1
        print(f"use: SourceConfig(kind='wds', path='{args.out.rstrip('/')}/{args.prefix}-{{000000..{last:06d}}}.tar')")
    if written < 1:
        source = args.from_csv or args.from_folder
        raise CliError(f"no usable input in {source} ({total} found, {len(skipped)} skipped)", "see the reasons above")
    return 0


@command("clipforge data")
def main(argv: list[str] | None = None) -> int:
    """`clipforge data COMMAND`: dispatch to the data subcommand; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "make-shards":
        return make_shards(args)
    if args.command == "export-collection":
        return export_collection_command(args)
    raise UsageError("give a data command", "e.g. clipforge data make-shards --help")
