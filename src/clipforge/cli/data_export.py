"""`clipforge data export-collection {openclipart,emoji} --out DIR`: the built-in collections as PNGs + captions.csv.

The parser and the runner of the `data` subcommand's export-collection action (cli/data.py adds the parser and
dispatches here); the work itself is clipforge.collections.export.
"""

from __future__ import annotations

import argparse
import logging
import os

from .argtypes import non_negative_int, positive_int
from .common import SHOW_SKIPPED, add_common_arguments, add_progress_arguments, show_progress
from .errors import INPUT_NOT_FOUND, CliError, UsageError

log = logging.getLogger("clipforge.cli")

DEFAULT_SIZE = 224


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    """Add `export-collection` to the `clipforge data` subcommands."""
    from ..collections.render import MAX_SIZE, MIN_SIZE

    export = commands.add_parser(
        "export-collection",
        prog="clipforge data export-collection",
        help="render a built-in collection (OpenClipart, Noto emoji) to PNGs with a captions CSV",
        description="Render every item of a built-in collection to a SIZE x SIZE PNG (drawn on white, aspect kept) "
        "under DIR, and write DIR/captions.csv (image_path,caption,title,keywords,category; image_path relative "
        "to DIR) for `clipforge index build DIR/captions.csv` or any tool that reads an image-caption CSV. "
        "Items that cannot be rendered are skipped and listed with their reasons in DIR/skipped.jsonl. Rerun "
        "the same command to resume an interrupted export: PNGs already in DIR are kept. DIR must be new, empty "
        "or an earlier export with the same --size/--variants; a folder holding other files is refused.\n\n"
        "collections:\n"
        "  openclipart  ~8,100 drawings of Debian's openclipart-svg, captioned with cleaned titles\n"
        "  emoji        the Noto Color Emoji font's emoji (fonts-noto-color-emoji), captioned with their names",
        epilog="examples:\n"
        "  clipforge data export-collection emoji --out emoji-png/ --limit 50     # a quick look\n"
        "  clipforge data export-collection openclipart --out clipart/ --workers 4\n"
        "  clipforge index build clipart/captions.csv --out clipart.index --pretrained ./my-model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("collection", choices=("openclipart", "emoji"), help="the collection to export")
    export.add_argument("--out", required=True, metavar="DIR", help="export folder (created if missing)")
    export.add_argument(
        "--size",
        type=positive_int,
        default=DEFAULT_SIZE,
        help=f"PNG side in pixels, {MIN_SIZE}..{MAX_SIZE} (default: {DEFAULT_SIZE}, CLIP's input size)",
    )
    export.add_argument(
        "--workers",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="render in N worker processes (default: 0, in this process; SVG rendering takes ~0.1 s per file)",
    )
    export.add_argument(
        "--variants",
        action="store_true",
        help="emoji: also export the skin-tone variants (left out by default: near copies of their base emoji)",
    )
    export.add_argument(
        "--limit", type=positive_int, default=None, metavar="N", help="export only the first N items (a quick try)"
    )
    export.add_argument(
        "--source",
        default=None,
        metavar="PATH",
        help="openclipart: the SVG folder (default /usr/share/openclipart/svg); emoji: the colour font file "
        "(default: Noto Color Emoji under /usr/share/fonts)",
    )
    export.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="render cache shared with training and evaluation (default: $XDG_CACHE_HOME/clipforge/render)",
    )
    add_progress_arguments(export)
    add_common_arguments(export)


def export_collection_command(args: argparse.Namespace) -> int:
    """`clipforge data export-collection`: render a collection into --out; returns the exit code."""
    from tqdm import tqdm

    from ..collections.export import SKIPPED, ExportFolderError, ExportSettings, export_collection
    from ..collections.render import MAX_SIZE, MIN_SIZE, RenderCache
    from ..locking import output_lock

    if not MIN_SIZE <= args.size <= MAX_SIZE:
        raise UsageError(f"--size must be in {MIN_SIZE}..{MAX_SIZE} pixels, got {args.size}", "e.g. --size 224")
    if args.variants and args.collection != "emoji":
        raise UsageError("--variants applies to the emoji collection only", "drop --variants")
    settings = ExportSettings(args.collection, args.size, args.variants)
    cache = RenderCache(args.cache_dir) if args.cache_dir else None
    bars: list[tqdm] = []  # made once the number of items is known

    def set_total(total: int) -> None:
        bars.append(tqdm(total=total, unit="img", disable=not show_progress(args), desc=f"export {args.collection}"))

    try:
        with output_lock(args.out, what="clipforge data export-collection", hint="wait for it or use another --out"):
            summary = export_collection(
                settings,
                args.out,
                root=args.source,
                limit=args.limit,
                workers=args.workers,
                cache=cache,
                on_total=set_total,
                on_item=lambda: bars[-1].update(1),
            )
    except ExportFolderError as exc:
        raise UsageError(str(exc), "") from exc
    except FileNotFoundError as exc:  # the collection is not installed: the message names the install command
        raise CliError(str(exc), "", INPUT_NOT_FOUND) from exc
    finally:
        for bar in bars:
            bar.close()
    for label, reason in summary.skipped[:SHOW_SKIPPED]:
        log.warning("skipped %s: %s", label, reason)
    listing = os.path.join(args.out, SKIPPED)
    if len(summary.skipped) > SHOW_SKIPPED:
        log.warning("... and %d more skipped items; all are listed in %s", len(summary.skipped) - SHOW_SKIPPED, listing)
    print(
        f"exported {summary.exported} {args.collection} images to {args.out} ({summary.rendered} rendered now, "
        f"{summary.kept} kept from an earlier run); skipped {len(summary.skipped)} that could not be rendered"
        + (f" (see {listing})" if summary.skipped else "")
    )
    captions = os.path.join(args.out, "captions.csv")
    print(f"captions: {captions}; next: clipforge index build {captions} --out INDEX_DIR --pretrained MODEL")
    if summary.exported < 1:
        raise CliError(f"no {args.collection} item could be rendered", f"see {listing}")
    return 0
