"""`clipforge search INDEX QUERY...`: search an INDEX_DIR by text, image, row or embedding, with arithmetic.

Prints a table (rank, score, id, image_path, caption) or, with --json, one JSON object per result per line.
"""

from __future__ import annotations

import argparse
import sys

from ..jsonio import json_text
from .argtypes import positive_int
from .common import add_common_arguments, add_model_arguments, model_from_args, resolve_device
from .errors import INPUT_NOT_FOUND, MODEL_ERROR, CliError, CliParser, UsageError, command

QUERY_HELP = """query syntax (rclip's, https://github.com/yurijmikhalevich/rclip):
  "a red car"                     text
  ./photo.jpg  /abs/photo.jpg     an image file (a relative path starts with ./ so it is never read as text)
  https://example.org/cat.jpg     an image URL (fetched; needs the network)
  id:123                          row 123 of the index ("more like this")
  emb:query.npy  emb:rows.npy#3   a saved embedding (one row, or row 3)
  2:cat + ./pool.jpg - fruit      weights (WEIGHT:TERM, default 1) and + / - between terms (spaces around them)
The terms' embeddings are L2-normalised, weighted, added or subtracted, and the sum normalised again: scores are
cosine similarities with that query.

examples:
  clipforge search clipart/ "a smiling sun"
  clipforge search clipart/ "./cat.png - 0.5:black and white" -k 20 --dedup
  clipforge search clipart/ "id:42" --where source=openclipart --json
"""


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge search` argument parser (also the source of its --help)."""
    parser = CliParser(
        prog="clipforge search",
        description="Search an INDEX_DIR (made by `clipforge index build`) by text, image, row or embedding, and "
        "print the best matches. The model recorded in the index is loaded only when a query has text or image "
        "terms.",
        epilog=QUERY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("index", metavar="INDEX_DIR", help="an index folder made by `clipforge index build`")
    parser.add_argument(
        "query", nargs="+", metavar="QUERY", help="the query (see below); several words are joined with spaces"
    )
    parser.add_argument("-k", "--top-k", dest="k", type=positive_int, default=10, help="results to show (default 10)")
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="keep rows whose metadata COLUMN equals VALUE; repeat for several columns (all must match) or for "
        "several values of one column (any may match)",
    )
    parser.add_argument(
        "--dedup", action="store_true", help="drop results within --threshold cosine of a better-ranked one"
    )
    parser.add_argument(
        "--threshold",
        type=_cosine,
        default=0.94,
        help="cosine similarity at which two results are duplicates (default 0.94, clip-retrieval's)",
    )
    parser.add_argument(
        "--modality",
        choices=("image", "text"),
        default="image",
        help="search the image embeddings (default) or the caption embeddings",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per result per line (for scripts)")
    add_model_arguments(parser)
    parser.set_defaults(device="cpu")
    for action in parser._actions:  # the model is optional here: the index records one
        if action.dest == "model":
            action.help = "override the model recorded in the index (same embedding size); " + action.help
        if action.dest == "device":
            action.help = "torch device for query embedding: cpu (default), auto, cuda, cuda:N or mps"
    add_common_arguments(parser)
    return parser


def _cosine(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between -1 and 1, got {text!r}") from None
    if not -1.0 <= value <= 1.0:  # False for nan too
        raise argparse.ArgumentTypeError(f"must be a number between -1 and 1, got {text}")
    return value


def parse_where(items: list[str]) -> dict[str, str | list[str]]:
    """--where COLUMN=VALUE options -> {column: value or [values]} (a repeated column means any of its values)."""
    filters: dict[str, list[str]] = {}
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column.strip():
            raise UsageError(f"--where {item!r} is not COLUMN=VALUE", "e.g. --where license=cc0")
        filters.setdefault(column.strip(), []).append(value)
    return {column: values[0] if len(values) == 1 else values for column, values in filters.items()}


def open_searcher(args: argparse.Namespace):
    """A Searcher over args.index, with the --model/--pretrained override when given; missing folder -> exit 3."""
    from pathlib import Path

    from ..search.layout import IndexLayoutError
    from ..search.searcher import Searcher

    root = Path(args.index)
    if not root.is_dir():
        raise CliError(f"{root}: no such folder", "give an INDEX_DIR made by `clipforge index build`", INPUT_NOT_FOUND)
    model = None
    if args.model is not None or args.pretrained is not None:
        model, _ = model_from_args(args)
        model.eval()
    else:
        args.device = resolve_device(args.device)
    try:
        return Searcher(root, model=model, device=args.device)
    except IndexLayoutError as exc:
        raise CliError(str(exc), "", INPUT_NOT_FOUND) from exc
    except ValueError as exc:  # the model's embedding size differs from the index's
        raise CliError(str(exc), "", MODEL_ERROR) from exc


def _cell(value, width: int, keep_end: bool = False) -> str:
    """`value` on one line in at most `width` characters; a path keeps its end (the file name) when cut."""
    text = "" if value is None else " ".join(str(value).split())
    if len(text) <= width:
        return text
    return "…" + text[-(width - 1) :] if keep_end else text[: width - 1] + "…"


def print_table(results, out=None) -> None:
    """rank, score, id, image_path, caption: one line per result, columns cut to fit a terminal."""
    out = out or sys.stdout
    out.write(f"{'rank':>4}  {'score':>7}  {'id':>8}  {'image_path':<48}  caption\n")
    for rank, result in enumerate(results, 1):
        path = _cell(result.metadata.get("image_path"), 48, keep_end=True)
        caption = _cell(result.metadata.get("caption"), 60)
        out.write(f"{rank:>4}  {result.score:7.4f}  {result.id:>8}  {path:<48}  {caption}\n")


@command("clipforge search")
def main(argv: list[str] | None = None) -> int:
    """`clipforge search`: print the best matches of a query in an INDEX_DIR; returns the exit code."""
    args = build_parser().parse_args(argv)
    from ..search.layout import IndexLayoutError
    from ..search.query import parse_query

    filters = parse_where(args.where)
    terms = parse_query(args.query)  # a syntax error is reported before anything is opened
    searcher = open_searcher(args)
    try:
        results = searcher.search(
            terms, k=args.k, filters=filters or None, deduplicate=args.dedup, modality=args.modality,
            threshold=args.threshold,
        )
    except IndexLayoutError as exc:
        raise CliError(str(exc), "", INPUT_NOT_FOUND) from exc
    except KeyError as exc:  # --where on a column the metadata does not have (the message lists the columns)
        raise UsageError(f"--where: {exc.args[0]}", "filter on one of those columns") from exc
    if args.json:
        for rank, result in enumerate(results, 1):
            sys.stdout.write(json_text({"rank": rank, **result.to_dict()}) + "\n")
    else:
        print_table(results)
    if not results:
        print("clipforge search: no results" + (" (no row matches --where)" if filters else ""), file=sys.stderr)
    return 0
