"""`clipforge dedup SOURCE`: near-duplicate groups in a collection, a keep-list, and evaluation contamination.

SOURCE is an INDEX_DIR (`clipforge index build`) or a .npy of L2-normalised embeddings from `clipforge embed`
(its rows named by the OUT.npy.json beside it). An image folder or CSV is embedded first with `clipforge index
build` or `clipforge embed`; this command does not run a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..jsonio import json_text
from .common import add_common_arguments, add_progress_arguments, show_progress
from .errors import INPUT_NOT_FOUND, CliError, CliParser, UsageError, command
from .search import _cell, _cosine

MAX_ROW_INDEX_BYTES = 512 * 2**20  # OUT.npy.json of `clipforge embed`: millions of paths


@dataclass(frozen=True)
class Rows:
    """Embeddings of a collection's live rows with their ids and a way to name them (image path, else id)."""

    where: Path
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    ids: np.ndarray  # (N,) int64: global row ids (an INDEX_DIR) or row numbers (a .npy)
    names: object  # callable: ids (n,) -> list[str]

    def name(self, ids: np.ndarray) -> list[str]:
        """What the output calls rows `ids`: their image paths (or `id:N` / `row:N` when a row has none)."""
        return self.names(np.asarray(ids, dtype=np.int64))  # type: ignore[operator]


def _index_rows(root: Path, modality: str) -> Rows:
    from ..search.layout import IndexLayout, IndexLayoutError

    layout = IndexLayout(root)
    try:
        layout.require_built()  # an unfinished build has embeddings without their metadata
        embeddings = layout.load_embeddings(modality)
    except IndexLayoutError as exc:
        raise CliError(str(exc), "", INPUT_NOT_FOUND) from exc
    ids = np.flatnonzero(layout.live_mask(modality)).astype(np.int64)
    embeddings = embeddings if ids.size == embeddings.shape[0] else embeddings[ids]

    def names(wanted: np.ndarray) -> list[str]:
        from ..search.store import MetadataStore

        records = MetadataStore(root).get(wanted) if wanted.size else []
        return [str(r.get("image_path") or f"id:{i}") for i, r in zip(wanted.tolist(), records)]

    return Rows(root, np.asarray(embeddings, dtype=np.float32), ids, names)


def _npy_rows(path: Path) -> Rows:
    from ..safeio import open_regular_file, read_text_file

    with open_regular_file(path, "embedding file"):  # refuses FIFOs and devices before numpy opens it
        pass
    try:
        embeddings = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise UsageError(f"{path}: not a numpy .npy array of numbers ({exc})", "give embed's .npy") from exc
    if embeddings.ndim != 2 or embeddings.dtype.kind != "f":
        raise UsageError(f"{path}: expected (N, D) float embeddings, found {embeddings.dtype} {embeddings.shape}")
    listing = path.with_suffix(".npy.json")
    rows: list[str] | None = None
    if listing.exists():
        try:
            rows = json.loads(read_text_file(listing, MAX_ROW_INDEX_BYTES, what="row index")).get("rows")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise UsageError(f"{listing}: not the JSON row index `clipforge embed` writes ({exc})") from exc
        if not isinstance(rows, list) or len(rows) != embeddings.shape[0]:
            raise UsageError(f"{listing}: its 'rows' do not list the {embeddings.shape[0]} rows of {path}")

    def names(wanted: np.ndarray) -> list[str]:
        return [str(rows[i]) if rows is not None else f"row:{i}" for i in wanted.tolist()]

    ids = np.arange(embeddings.shape[0], dtype=np.int64)
    return Rows(path, np.asarray(embeddings, dtype=np.float32), ids, names)


def open_rows(source: str, modality: str) -> Rows:
    """The rows of SOURCE: an INDEX_DIR or a .npy; exit 3 when missing, 2 when neither."""
    path = Path(source)
    if not path.exists():
        raise CliError(f"{path}: no such file or folder", "give an INDEX_DIR or a .npy from `clipforge embed`", 3)
    if path.is_dir():
        return _index_rows(path, modality)
    if path.suffix == ".npy":
        return _npy_rows(path)
    raise UsageError(
        f"{path}: neither an INDEX_DIR nor a .npy of embeddings",
        "embed it first: `clipforge index build SOURCE --out INDEX_DIR` (or `clipforge embed`), then dedup that",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge dedup` argument parser (also the source of its --help)."""
    parser = CliParser(
        prog="clipforge dedup",
        description="Find near-duplicate images in a collection (groups of rows whose embeddings are within "
        "--threshold cosine of each other, joined transitively), print the groups and optionally write a "
        "keep-list (one of each group plus every unique row). With --against, find rows of an evaluation set "
        "that have a near-duplicate in SOURCE (training data contamination) instead.",
        epilog="SOURCE and --against: an INDEX_DIR (`clipforge index build`) or a .npy from `clipforge embed`.\n"
        "examples:\n"
        "  clipforge dedup train_index/ --keep-list keep.txt\n"
        "  clipforge dedup train_index/ --against eval_index/ --json > contaminated.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SOURCE", help="INDEX_DIR or embeddings .npy of the collection")
    parser.add_argument(
        "--against", metavar="EVAL", help="INDEX_DIR or .npy of an evaluation set: report its rows found in SOURCE"
    )
    parser.add_argument(
        "--threshold", type=_cosine, default=0.94, help="cosine similarity that makes two rows duplicates (0.94)"
    )
    parser.add_argument(
        "--modality", choices=("image", "text"), default="image", help="compare image (default) or caption embeddings"
    )
    parser.add_argument(
        "--keep-list",
        metavar="PATH",
        help="write the rows to keep, one image path (or id) per line: without --against the first row of each "
        "group and every unique row; with --against the SOURCE rows that match no evaluation row",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    add_progress_arguments(parser)
    add_common_arguments(parser)
    return parser


def _write_keep_list(path: str, names: list[str]) -> None:
    from ..atomic import atomic_write_bytes

    atomic_write_bytes(Path(path), "".join(name + "\n" for name in names).encode("utf-8"))


def _groups(args: argparse.Namespace, rows: Rows) -> int:
    from ..search.dedup import near_duplicate_groups

    groups = near_duplicate_groups(rows.embeddings, args.threshold, progress=show_progress(args))
    out = sys.stdout
    if not args.json and groups:
        out.write(f"{'group':>5}  {'keep':<4}  {'id':>8}  {'similarity':>10}  image_path\n")
    for number, group in enumerate(groups, 1):
        positions = np.asarray(group, dtype=np.int64)
        similarity = rows.embeddings[positions] @ rows.embeddings[positions[0]]  # (g,): cosine to the kept row
        similarity = np.clip(similarity, -1.0, 1.0)  # float16-stored unit rows give 1.0001 for the kept row itself
        names = rows.name(rows.ids[positions])
        items = [
            {"id": int(rows.ids[p]), "image_path": name, "similarity": float(s), "keep": i == 0}
            for i, (p, name, s) in enumerate(zip(positions.tolist(), names, similarity.tolist()))
        ]
        if args.json:
            out.write(json_text({"group": number, "size": len(items), "items": items}) + "\n")
            continue
        for item in items:
            keep = "*" if item["keep"] else ""
            path = _cell(item["image_path"], 80, keep_end=True)
            out.write(f"{number:>5}  {keep:<4}  {item['id']:>8}  {item['similarity']:10.4f}  {path}\n")
    dropped = sum(len(group) - 1 for group in groups)
    message = (
        f"clipforge dedup: {rows.ids.size} rows, {len(groups)} near-duplicate groups at cosine >= {args.threshold}, "
        f"{dropped} duplicates beyond the first of each group"
    )
    if args.keep_list:
        dropped_positions = {p for group in groups for p in group[1:]}
        kept = np.array([p for p in range(rows.ids.size) if p not in dropped_positions], dtype=np.int64)
        _write_keep_list(args.keep_list, rows.name(rows.ids[kept]))
        message += f"; keep-list of {kept.size} rows in {args.keep_list}"
    print(message, file=sys.stderr)
    return 0


def _contamination(args: argparse.Namespace, train: Rows) -> int:
    from ..search.dedup import cross_matches

    evaluation = open_rows(args.against, args.modality)
    if evaluation.embeddings.shape[1] != train.embeddings.shape[1]:
        raise UsageError(
            f"{args.against} holds {evaluation.embeddings.shape[1]}-d embeddings, {train.where} "
            f"{train.embeddings.shape[1]}-d; embed both with the same model"
        )
    matches = cross_matches(evaluation.embeddings, train.embeddings, args.threshold, progress=show_progress(args))
    eval_names = evaluation.name(evaluation.ids[[m.query for m in matches]]) if matches else []
    train_names = train.name(train.ids[[m.corpus for m in matches]]) if matches else []
    out = sys.stdout
    if not args.json and matches:
        out.write(f"{'eval_id':>8}  {'train_id':>8}  {'similarity':>10}  eval_path -> train_path\n")
    for match, eval_name, train_name in zip(matches, eval_names, train_names):
        record = {
            "eval_id": int(evaluation.ids[match.query]),
            "eval_path": eval_name,
            "train_id": int(train.ids[match.corpus]),
            "train_path": train_name,
            "similarity": match.similarity,
        }
        if args.json:
            out.write(json_text(record) + "\n")
        else:
            out.write(
                f"{record['eval_id']:>8}  {record['train_id']:>8}  {match.similarity:10.4f}  "
                f"{_cell(eval_name, 50, keep_end=True)} -> {_cell(train_name, 50, keep_end=True)}\n"
            )
    found = len({m.query for m in matches})
    message = (
        f"clipforge dedup: {found} of {evaluation.ids.size} evaluation rows have a near-duplicate "
        f"(cosine >= {args.threshold}) among {train.ids.size} rows of {train.where}"
    )
    if args.keep_list:
        hit = {m.corpus for m in matches}
        kept = np.array([p for p in range(train.ids.size) if p not in hit], dtype=np.int64)
        _write_keep_list(args.keep_list, train.name(train.ids[kept]))
        message += f"; keep-list of the {kept.size} other training rows in {args.keep_list}"
    print(message, file=sys.stderr)
    return 0


@command("clipforge dedup")
def main(argv: list[str] | None = None) -> int:
    """`clipforge dedup`: near-duplicate groups (or contamination with --against); returns the exit code."""
    args = build_parser().parse_args(argv)
    rows = open_rows(args.source, args.modality)
    return _contamination(args, rows) if args.against else _groups(args, rows)
