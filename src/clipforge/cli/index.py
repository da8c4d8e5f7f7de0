"""`clipforge index build SOURCE --out INDEX_DIR`, `index update INDEX_DIR`, `index export-qdrant INDEX_DIR LOCATION`.

build: SOURCE (an image folder, a CSV/TSV of paths with caption and metadata columns, or WebDataset .tar shards,
local or fsspec URLs) -> INDEX_DIR in clip-retrieval's layout (img_emb/, text_emb/, metadata/; see
clipforge.search.layout), then the faiss index over it (clipforge.search.index) unless --no-index. Rerunning an
interrupted build resumes it: finished shards are kept. Under torchrun each rank embeds its share of the shards
(shard i on rank i % WORLD_SIZE) and rank 0 builds the index once all are done.

update: enumerates the source recorded in INDEX_DIR again, embeds new and changed files (size + mtime, as rclip),
marks deleted and replaced rows in deleted.npy, and rebuilds the index. The model defaults to the one recorded in
info.json; another model is refused, naming both.

Unreadable images, FIFOs and devices are skipped, never fatal; INDEX_DIR/skipped.jsonl lists them with reasons.
"""

from __future__ import annotations

import argparse
import logging
import os

from .argtypes import non_negative_int, positive_int
from .common import add_common_arguments, add_model_arguments, add_progress_arguments, model_from_args, show_progress
from .errors import INPUT_NOT_FOUND, MODEL_ERROR, RUNTIME_ERROR, CliError, CliParser, command, exit_codes_epilog

log = logging.getLogger("clipforge.cli")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("embedding")
    group.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    group.add_argument(
        "--workers",
        type=non_negative_int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader processes that read and decode images (default: min(8, CPUs); 0: in the main process)",
    )
    group.add_argument("--no-index", action="store_true", help="only embed; do not build the faiss index")
    group.add_argument(
        "--index-memory",
        type=positive_int,
        default=None,
        metavar="BYTES",
        help="memory budget for the faiss index, which picks exact / HNSW / IVF-PQ (default: the index's own)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge index` parser with its `build` and `update` actions."""
    parser = CliParser(
        prog="clipforge index",
        description="Embed an image collection into a searchable INDEX_DIR (clip-retrieval's layout: "
        "img_emb/*.npy, text_emb/*.npy, metadata/*.parquet, plus a faiss index), or bring one up to date.",
        epilog="examples:\n"
        "  clipforge index build photos/ --out photos.index --pretrained ./my-model\n"
        "  clipforge index build pairs.csv --out pairs.index --model ViT-B-32 --pretrained openai\n"
        "  clipforge index build 's3://bucket/shard-{0000..0999}.tar' --out big.index --pretrained ./my-model\n"
        "  torchrun --nproc_per_node=8 -m clipforge index build ... (each rank embeds its shards)\n"
        "  clipforge index update photos.index\n"
        "  clipforge index export-qdrant photos.index http://qdrant:6333 --collection photos\n\n"
        + exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, parser_class=CliParser)
    build = actions.add_parser(
        "build",
        help="embed SOURCE into a new INDEX_DIR (or resume an interrupted build)",
        description="Embed SOURCE into INDEX_DIR (--out) and build its faiss index. Rerun the same command to "
        "resume an interrupted build; finished shards are kept.",
    )
    build.add_argument("source", help="an image folder (x.txt beside x.jpg is its caption), a .csv/.tsv, or .tar "
                       "shards (a path, an fsspec URL, or a brace pattern shard-{0000..0099}.tar)")
    build.add_argument("--out", required=True, help="INDEX_DIR to create (new or empty; or an interrupted build)")
    build.add_argument("--path-column", default=None,
                       help="CSV column of image paths (default: the first of image_path, filepath, path, image, "
                       "file); relative paths are taken from the CSV's folder")
    build.add_argument("--caption-column", default=None,
                       help="CSV column of captions (default: the first of caption, title, text; none: no captions)")
    build.add_argument("--shard-size", type=positive_int, default=1_000_000,
                       help="rows per output shard (default 1,000,000, clip-retrieval's write_batch_size): the unit "
                       "of resuming and of work per torchrun rank")
    build.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                       help="stored embedding dtype (default float16, as clip-retrieval writes)")
    _add_run_arguments(build)
    add_progress_arguments(build)
    add_model_arguments(build)
    add_common_arguments(build)
    update = actions.add_parser(
        "update",
        help="embed new and changed files of INDEX_DIR's source, drop deleted ones, rebuild the index",
        description="Bring INDEX_DIR up to date with the source it was built from: new and changed files (by "
        "size and mtime) are embedded into new shards, deleted and replaced ones are listed in deleted.npy and "
        "left out of the index. The model defaults to the one INDEX_DIR records.",
    )
    update.add_argument("index_dir", help="an INDEX_DIR made by `clipforge index build`")
    _add_run_arguments(update)
    add_progress_arguments(update)
    add_model_arguments(update)
    add_common_arguments(update)
    export = actions.add_parser(
        "export-qdrant",
        help="copy INDEX_DIR's vectors and metadata into a Qdrant collection (a server, a cluster or a folder)",
        description="Copy the live rows of INDEX_DIR (ids = its row numbers, payload = each row's metadata) into "
        "a Qdrant collection, for collections that outgrow one machine: Qdrant shards, replicates and serves them. "
        "LOCATION is an http(s) URL of a Qdrant server or cluster, or a folder (qdrant-client's local mode). Search "
        "it from Python with clipforge.search.qdrant.QdrantIndex (the same interface as the faiss index).",
    )
    export.add_argument("index_dir", help="an INDEX_DIR made by `clipforge index build`")
    export.add_argument("location", help="http(s)://HOST:6333 of a Qdrant server or cluster, or a local folder")
    export.add_argument("--collection", default="clipforge", help="collection name (default clipforge)")
    export.add_argument("--modality", choices=["image", "text"], default="image", help="which embeddings (image)")
    export.add_argument("--recreate", action="store_true", help="replace the collection if it exists")
    export.add_argument("--api-key", default=None, help="Qdrant API key (or env QDRANT_API_KEY)")
    add_progress_arguments(export)
    add_common_arguments(export)
    return parser


def _export_qdrant(args: argparse.Namespace) -> int:
    """`index export-qdrant`: the live rows into a Qdrant collection; one line with the count."""
    from ..search.layout import IndexLayout, IndexLayoutError
    from ..search.qdrant import export_to_qdrant

    if not os.path.isdir(args.index_dir):
        raise CliError(f"{args.index_dir}: no such folder", "give an INDEX_DIR made by `clipforge index build`",
                       INPUT_NOT_FOUND)  # fmt: skip
    try:
        IndexLayout(args.index_dir).require_built()
    except IndexLayoutError as exc:
        raise CliError(str(exc), "", INPUT_NOT_FOUND) from exc
    try:
        import qdrant_client  # noqa: F401
    except ImportError as exc:
        raise CliError("qdrant-client is not installed", "pip install 'clipforge[qdrant]'") from exc
    api_key = args.api_key or os.environ.get("QDRANT_API_KEY")
    try:
        count = export_to_qdrant(
            args.index_dir, args.location, args.collection, modality=args.modality, recreate=args.recreate,
            api_key=api_key, progress=show_progress(args),
        )  # fmt: skip
    except ValueError as exc:
        raise CliError(str(exc), "pass --recreate to replace it, or --collection NAME for a new one") from exc
    print(f"exported {count} {args.modality} vector(s) of {args.index_dir} to Qdrant collection "
          f"{args.collection!r} at {args.location}")  # fmt: skip
    return 0


def _distributed(args: argparse.Namespace):
    """DistInfo from torchrun's environment (world 1 without it); --device auto means this rank's GPU, if any."""
    from ..train.distributed import init_distributed

    dist = init_distributed(None if args.device == "auto" else args.device)
    if dist.world_size > 1:
        args.device = str(dist.device)
    return dist


def _index_is_sound(root, modality: str) -> bool:
    """Whether {modality}.index opens and matches the embeddings (an update that changed nothing keeps it)."""
    from ..search.index import IndexFileError, open_index
    from ..search.layout import IndexLayoutError

    try:
        open_index(root, modality)
    except (IndexFileError, IndexLayoutError):
        return False
    return True


def _build_index(root, args: argparse.Namespace, progress: bool, changed: bool = True) -> list[str]:
    """Build image.index (and text.index when there are captions) with search.index; lines to print. Unless
    `changed`, an index that opens and matches its embeddings is kept."""
    from ..search.index import build_index
    from ..search.layout import IndexLayout

    layout = IndexLayout(root)
    lines = []
    for modality in ("image", "text"):
        if not layout.shard_paths(modality):
            continue
        if not changed and _index_is_sound(root, modality):
            lines.append(f"{modality}.index: up to date")
            continue
        if modality == "text" and layout.live_count("text") == 0:
            lines.append("text.index: not built (no row has a caption); search with --modality image")
            continue
        record = build_index(root, modality, memory_budget_bytes=args.index_memory, progress=progress)
        recall = record.get("recall_at_10")
        shown = f", recall@10 {recall:.3f}" if isinstance(recall, float) else ""
        lines.append(f"{modality}.index: {record.get('kind')}{shown}")
    return lines


def _run(args: argparse.Namespace) -> int:
    from ..search import pipeline
    from ..search.collection import detect_source
    from ..search.layout import IndexLayout
    from ..train.distributed import barrier, cleanup_distributed

    dist = _distributed(args)
    progress = show_progress(args) and dist.rank == 0
    root = args.out if args.action == "build" else args.index_dir
    if args.action == "update" and not os.path.isdir(root):
        raise CliError(f"{root}: no such folder", "give an INDEX_DIR made by `clipforge index build`", INPUT_NOT_FOUND)
    if args.action == "update" and args.model is None and args.pretrained is None:
        made_with = pipeline.read_manifest(IndexLayout(root)).get("model", {})  # the model it was built with
        args.model, args.pretrained = made_with.get("name"), made_with.get("pretrained")
    model, _ = model_from_args(args)
    record = pipeline.model_record(model, args.model, args.pretrained)
    config = pipeline.PipelineConfig(
        shard_size=getattr(args, "shard_size", pipeline.DEFAULT_SHARD_SIZE),
        batch_size=args.batch_size,
        workers=args.workers,
        dtype=getattr(args, "dtype", "float16"),
        rank=dist.rank,
        world_size=dist.world_size,
    )
    try:
        if args.action == "build":
            spec = detect_source(args.source, path_column=args.path_column, caption_column=args.caption_column)
            result = pipeline.build(root, spec, model, record, config, progress=progress)
        else:
            result = pipeline.update(root, model, record, config, progress=progress)
    except pipeline.PipelineError as exc:
        code = MODEL_ERROR if "was embedded with" in str(exc) else RUNTIME_ERROR
        raise CliError(str(exc), "", code) from exc
    if dist.world_size > 1:
        barrier(dist)  # every rank's shards are written: rank 0 finalizes (idempotent) and indexes once
        result.finalized = pipeline.finalize(IndexLayout(root)) if dist.rank == 0 else result.finalized
        cleanup_distributed()
        if dist.rank != 0:
            return 0
    rate = result.images_seen / result.seconds if result.seconds > 0 else 0.0
    what = f"{args.action}: embedded {result.rows} image(s) in {len(result.embedded_shards)} shard(s)"
    if args.action == "update":
        what += f" ({result.added_items} new or changed, {result.deleted} dropped)"
    if not result.finalized:
        print(f"{what}, {result.skipped} unreadable, {rate:.1f} images/s -> {root}")
        print(f"{root}: shards of other ranks are still unfinished; the last rank to finish completes the index")
        return 0
    print(f"{what}, {rate:.1f} images/s -> {root}")
    layout = IndexLayout(root)
    print(summary_line(layout.read_info(), layout.skipped_path))
    if not args.no_index:
        changed = args.action == "build" or bool(result.embedded_shards or result.deleted)
        for line in _build_index(root, args, progress, changed):
            print(line)
    return 0


def summary_line(info: dict, skipped_path) -> str:
    """The index's counts in one line: rows, live rows, and the skipped items once, broken down by reason
    (info.json `skipped_reasons`); caption files that could not be read are reported apart (their images are in)."""
    reasons = info.get("skipped_reasons") or {}
    detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
    line = f"{info['count']['image']} rows ({info['live']} live), {info['skipped']} skipped"
    if detail:
        line += f" ({detail})"
    if info.get("caption_errors"):
        line += f", {info['caption_errors']} caption file(s) unreadable (images kept without caption)"
    if info.get("skipped") or info.get("caption_errors"):
        line += f": listed in {skipped_path}"
    return line


@command("clipforge index")
def main(argv: list[str] | None = None) -> int:
    """`clipforge index build|update|export-qdrant`; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.action == "export-qdrant":
        return _export_qdrant(args)
    return _run(args)
