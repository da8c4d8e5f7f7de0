"""The embedding pipeline behind `clipforge index build` and `index update`: a SOURCE -> an INDEX_DIR's shards.

Plan, then embed shard by shard:
- planning enumerates the source (search.collection) and cuts its items into shards of `shard_size` rows, each
  written as `state/plan_{i}.parquet` (the items, in order), then `manifest.json` (what the plan is for: source,
  model, dtype, shard count). A manifest present means the plan is complete; a rerun reads it and enumerates
  nothing.
- a shard is embedded in one go: images decoded in DataLoader workers, `model.encode_image(normalize=True)` in
  batches, captions through `encode_text`; then its files are written, each atomically (temporary file + rename):
  img_emb, text_emb, metadata, and last `state/shard_{i}.json` (rows, skipped items with reasons). That last file
  is what "finished" means, so after a kill -9 a rerun embeds exactly the shards without one.
- under torchrun (RANK / WORLD_SIZE) rank r embeds the shards i with i % world == r; every rank plans the same
  way (enumeration is deterministic) and whichever finds every shard finished writes info.json and skipped.jsonl
  (`finalize`, idempotent, under the folder's lock).
- `update` first finishes unfinished shards, then enumerates the source again and compares each item's
  (key, size, mtime_ns, caption, columns) with those embedded (rclip's size + mtime test): new and changed items
  go to new shards appended after the last, and the global ids of changed and deleted items' old rows are added
  to `deleted.npy` (search.layout), which the index and searches exclude. Shards are never rewritten, so ids
  stay stable and an interrupted update resumes like a build. Items skipped before (unreadable) are not retried
  unless they changed.

Rows without a caption (a folder image without x.txt, an empty caption) get a zero text embedding; `finalize` lists
their global ids in `no_caption.npy`, which the text index leaves out (search.layout `live_mask`), so a
text-modality search never returns them. Ids stay global row numbers in both modalities.

Skipped items are counted once, in info.json (`skipped`, and `skipped_reasons`: how many per `skip_reason`);
skipped.jsonl lists each with its error. A caption file that cannot be read does not skip its image (the image is
embedded without a caption): those are listed too but counted apart (`caption_errors`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clipforge.atomic import atomic_write_bytes, remove_stale_temporaries
from clipforge.image.loading import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageLoadError, load_image

from .collection import Enumeration, Item, SourceSpec, enumerate_source, read_image_bytes
from .layout import (
    FORMAT_VERSION,
    IndexLayout,
    IndexLayoutError,
    load_shard,
    read_json_file,
    shard_stem,
    write_json_file,
)

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1_000_000  # clip-retrieval inference's write_batch_size default (10**6 rows per file)
EMBEDDING_DTYPES = ("float16", "float32")  # float16: clip-retrieval's mapper (`.to(torch.float16)`)
_PLAN_COLUMNS = ("key", "image_path", "url", "caption", "columns", "size", "mtime_ns", "offset", "length")


class PipelineError(RuntimeError):
    """The INDEX_DIR cannot be built or updated as asked (a user's folder, another model, another source)."""


@dataclass(frozen=True)
class PipelineConfig:
    """How to embed. shard_size: rows per output shard; batch_size: images per forward pass; workers: DataLoader
    decoding processes (0: in this process); dtype: of the stored embeddings; rank / world_size: which shards this
    process takes (i % world_size == rank); max_pixels / max_bytes: image caps (image.loading)."""

    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = 256
    workers: int = 0
    dtype: str = "float16"
    rank: int = 0
    world_size: int = 1
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.shard_size < 1 or self.batch_size < 1 or self.workers < 0:
            raise ValueError("shard_size and batch_size must be >= 1 and workers >= 0")
        if self.dtype not in EMBEDDING_DTYPES:
            raise ValueError(f"dtype must be one of {EMBEDDING_DTYPES}, not {self.dtype!r}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")


@dataclass
class RunResult:
    """What one build/update call did: shards it embedded, rows written and skipped by it, whether the INDEX_DIR
    is complete (finalized), rows newly deleted (update)."""

    embedded_shards: list[int] = field(default_factory=list)
    rows: int = 0
    skipped: int = 0
    images_seen: int = 0
    seconds: float = 0.0
    finalized: bool = False
    deleted: int = 0
    added_items: int = 0


ShardHook = Callable[[int], None]


# ---------------------------------------------------------------- plans


def _plan_path(layout: IndexLayout, shard: int) -> Path:
    return layout.state_dir / f"{shard_stem('plan', shard)}.parquet"


def _write_parquet(path: Path, table) -> None:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _write_plan(layout: IndexLayout, shard: int, items: list[Item]) -> None:
    import pyarrow as pa

    data = {
        "key": [i.key for i in items],
        "image_path": [i.image_path for i in items],
        "url": [i.url for i in items],
        "caption": [i.caption for i in items],
        "columns": [json.dumps(i.columns) for i in items],
        "size": [i.size for i in items],
        "mtime_ns": [i.mtime_ns for i in items],
        "offset": [i.offset for i in items],
        "length": [i.length for i in items],
    }
    schema = pa.schema(
        [(c, pa.string()) for c in _PLAN_COLUMNS[:5]] + [(c, pa.int64()) for c in _PLAN_COLUMNS[5:]]
    )
    _write_parquet(_plan_path(layout, shard), pa.table(data, schema=schema))


def _read_parquet(path: Path, repair: str, columns: list[str] | None = None):
    """A parquet file of the INDEX_DIR; IndexLayoutError naming it and `repair` when it is damaged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise IndexLayoutError(f"{path}: missing or not a regular file; {repair}")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise IndexLayoutError(f"{path}: damaged parquet file ({exc}); {repair}") from exc


def read_plan(layout: IndexLayout, shard: int) -> list[Item]:
    """The items planned for `shard`, in order."""
    path = _plan_path(layout, shard)
    if not path.is_file():
        raise IndexLayoutError(f"{path}: missing plan of shard {shard}; the INDEX_DIR is damaged, rebuild it")
    data = _read_parquet(path, "rebuild the index (its plan is damaged)").to_pydict()
    return [
        Item(k, p, u, c, tuple(tuple(pair) for pair in json.loads(cols)), s, m, o, n)
        for k, p, u, c, cols, s, m, o, n in zip(*(data[c] for c in _PLAN_COLUMNS))
    ]


def read_manifest(layout: IndexLayout) -> dict[str, Any]:
    """manifest.json of an INDEX_DIR; IndexLayoutError when the folder has none (not made by `index build`)."""
    if not layout.root.is_dir():
        raise FileNotFoundError(2, "no such folder (an INDEX_DIR is made by `clipforge index build`)", str(layout.root))
    if not layout.manifest_path.is_file():
        raise IndexLayoutError(
            f"{layout.root}: no manifest.json; not an INDEX_DIR made by `clipforge index build` (to index the images "
            f"in it: `clipforge index build {layout.root} --out INDEX_DIR`)"
        )
    return read_json_file(layout.manifest_path, "the build's plan is lost: rebuild the index into a new --out")


def _plan(layout: IndexLayout, enumeration: Enumeration, first_shard: int, shard_size: int) -> list[dict[str, int]]:
    shards = []
    for n, start in enumerate(range(0, len(enumeration.items), shard_size)):
        chunk = enumeration.items[start : start + shard_size]
        _write_plan(layout, first_shard + n, chunk)
        shards.append({"index": first_shard + n, "items": len(chunk)})
    return shards


# ---------------------------------------------------------------- embedding one shard


class _RunImages(Dataset):
    """Decodes and preprocesses the images of a run's shards (in DataLoader workers): (tensor or None, flat
    position, error). One dataset for all the shards a run embeds, so worker processes start once per run."""

    def __init__(self, items: list[Item], preprocess, max_pixels: int | None, max_bytes: int) -> None:
        self.items, self.preprocess, self.max_pixels, self.max_bytes = items, preprocess, max_pixels, max_bytes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int):
        item = self.items[position]
        try:
            data = read_image_bytes(item, self.max_bytes)
            image = load_image(data, name=item.image_path, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
            return self.preprocess(image), position, ""
        except (ImageLoadError, OSError, ValueError) as exc:
            return None, position, f"{type(exc).__name__}: {exc}"


def _collate(batch):
    good = [(t, p) for t, p, err in batch if not err]
    bad = [(p, err) for _, p, err in batch if err]
    images = torch.stack([t for t, _ in good]) if good else None  # (B, 3, H, W)
    return images, [p for _, p in good], bad


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _metadata_table(items: list[Item], column_names: list[str]):
    """image_path, caption, then the source's columns (clip-retrieval's writer: image_path, caption, metadata)."""
    import pyarrow as pa

    data: dict[str, list] = {"image_path": [i.image_path for i in items], "caption": [i.caption for i in items]}
    for name in column_names:
        data[name] = [dict(i.columns).get(name) for i in items]
    return pa.table(data, schema=pa.schema([(name, pa.string()) for name in data]))


def has_caption(caption: str | None) -> bool:
    """Whether a row has a caption to embed (None and blank text do not: they would embed as noise)."""
    return caption is not None and bool(caption.strip())


def skip_reason(error: str) -> str:
    """The category of a skipped item's error message (info.json `skipped_reasons`, the CLI's summary)."""
    if error.startswith("caption not used"):
        return "unreadable caption file"
    if "not a regular" in error or "is a folder" in error:
        return "not a regular file"
    if error.startswith(("ImageTooLargeError", "FileTooLargeError")) or "over the" in error and "cap" in error:
        return "too large"
    if "no such file" in error or error.startswith("FileNotFoundError") or "empty path" in error:
        return "missing file"
    if error.startswith("ImageLoadError") or "no image member" in error:
        return "not a readable image"
    if "cannot stat" in error:
        return "unreachable path (a symlink loop, no permission)"
    if "cannot read shard" in error:
        return "unreadable shard"
    return "unreadable"


def _write_shard(layout, shard, items, image_emb, kept, skipped, manifest, model, tokenizer, config, device) -> None:
    """Embed the kept rows' captions and write shard `shard`'s files, each atomically, the state file last."""
    rows = [items[p] for p in kept]
    dim = int(model.config.embed_dim)
    text_emb = None
    if manifest["has_captions"]:
        text_emb = np.zeros((len(rows), dim), np.float32)  # (n, D); uncaptioned rows stay zero
        with_caption = [r for r, item in enumerate(rows) if has_caption(item.caption)]
        for start in range(0, len(with_caption), config.batch_size):
            chosen = with_caption[start : start + config.batch_size]
            tokens = tokenizer([rows[r].caption for r in chosen]).to(device)
            text_emb[chosen] = model.encode_text(tokens, normalize=True).float().cpu().numpy()
    store = np.dtype(manifest["dtype"])
    layout.img_emb_dir.mkdir(parents=True, exist_ok=True)
    layout.metadata_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(layout.emb_path("image", shard), _npy_bytes(image_emb.astype(store)))
    if text_emb is not None:
        layout.text_emb_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(layout.emb_path("text", shard), _npy_bytes(text_emb.astype(store)))
    _write_parquet(layout.metadata_path(shard), _metadata_table(rows, manifest["column_names"]))
    write_json_file(layout.shard_state_path(shard), {"shard": shard, "rows": len(rows), "skipped": skipped})


def _pending(layout: IndexLayout, manifest: dict[str, Any], config: PipelineConfig) -> list[dict[str, int]]:
    return [
        s
        for s in manifest["shards"]
        if s["index"] % config.world_size == config.rank and not layout.shard_state_path(s["index"]).is_file()
    ]


def _embed_pending(layout, manifest, model, config, progress, on_shard_done, result: RunResult) -> None:
    """Embed this rank's unfinished shards in order: one DataLoader over all of them (batches never cross a shard),
    each shard written as soon as its last batch is encoded, while the workers already decode the next."""
    from tqdm import tqdm

    from clipforge.eval.zeroshot import encoding_context
    from clipforge.factory import get_preprocess, get_tokenizer

    pending = _pending(layout, manifest, config)
    if not pending:
        return
    plans = [(s["index"], read_plan(layout, s["index"])) for s in pending]
    starts = np.cumsum([0] + [len(items) for _, items in plans]).tolist()
    batches = [
        list(range(start + b, start + min(b + config.batch_size, len(items))))
        for start, (_, items) in zip(starts, plans)
        for b in range(0, len(items), config.batch_size)
    ]
    flat = [item for _, items in plans for item in items]
    loader = DataLoader(
        _RunImages(flat, get_preprocess(model), config.max_pixels, config.max_bytes),
        batch_sampler=batches,
        num_workers=config.workers,
        collate_fn=_collate,
    )
    tokenizer = get_tokenizer(model)
    dim = int(model.config.embed_dim)
    started = time.perf_counter() - result.seconds  # update's second pass adds to its first
    batch_iter = iter(loader)
    bar = tqdm(total=len(flat), desc="index", unit="img", disable=not progress, dynamic_ncols=True)
    with bar, encoding_context(model) as device:
        dtype = next(model.parameters()).dtype
        for start, (shard, items) in zip(starts, plans):
            chunks: list[torch.Tensor] = []
            kept: list[int] = []
            skipped: list[dict[str, Any]] = []
            for _ in range(-(-len(items) // config.batch_size)):
                images, positions, bad = next(batch_iter)
                for p, error in bad:
                    skipped.append({"position": p - start, "image_path": flat[p].image_path, "error": error})
                if images is not None:
                    chunks.append(model.encode_image(images.to(device, dtype), normalize=True).float().cpu())  # (B, D)
                    kept.extend(p - start for p in positions)
                bar.update(len(positions) + len(bad))
            image_emb = torch.cat(chunks).numpy() if chunks else np.zeros((0, dim), np.float32)  # (n, D)
            _write_shard(layout, shard, items, image_emb, kept, skipped, manifest, model, tokenizer, config, device)
            result.embedded_shards.append(shard)
            result.rows += len(kept)
            result.skipped += len(skipped)
            result.images_seen += len(items)
            result.seconds = time.perf_counter() - started
            if on_shard_done is not None:
                on_shard_done(shard)


# ---------------------------------------------------------------- finalize


def _enumeration_skipped_path(layout: IndexLayout) -> Path:
    return layout.state_dir / "enumeration_skipped.jsonl"


def _write_enumeration_skipped(layout: IndexLayout, skipped: list[dict[str, Any]]) -> int:
    """Write the items enumeration skipped to state/enumeration_skipped.jsonl (atomically, before the manifest);
    their count, which is what the manifest keeps: a CSV of millions of bad rows would otherwise make manifest.json
    too large to read back."""
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in skipped)
    atomic_write_bytes(_enumeration_skipped_path(layout), lines.encode("utf-8"))
    return len(skipped)


def _read_enumeration_skipped(layout: IndexLayout, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    recorded = manifest.get("enumeration_skipped", [])
    if isinstance(recorded, list):  # an INDEX_DIR from before the separate file
        return list(recorded)
    path = _enumeration_skipped_path(layout)
    try:
        if not path.is_file():  # missing, or a FIFO that would block the read
            raise FileNotFoundError(2, "not a regular file")
        with open(path, encoding="utf-8") as handle:  # written by us, atomically; read line by line, not capped
            found = [json.loads(line) for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexLayoutError(f"{path}: missing or damaged ({exc}); rebuild the index into a new --out") from exc
    if len(found) != recorded:
        raise IndexLayoutError(
            f"{path}: lists {len(found)} skipped item(s), manifest.json says {recorded}; rebuild the index into a new "
            "--out"
        )
    return found


def shard_states(layout: IndexLayout, manifest: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """state/shard_{i}.json of every finished shard of the manifest."""
    states = {}
    for shard in manifest["shards"]:
        path = layout.shard_state_path(shard["index"])
        if path.is_file():
            states[shard["index"]] = read_json_file(
                path, f"delete it and run `clipforge index update {layout.root}` to embed that shard again"
            )
    return states


def finalize(layout: IndexLayout) -> bool:
    """When every planned shard is finished: write skipped.jsonl and info.json (model, dim, counts, dtype, source)
    and mark the manifest complete; False (nothing written) while shards are missing. Idempotent."""
    manifest = read_manifest(layout)
    states = shard_states(layout, manifest)
    if len(states) < len(manifest["shards"]):
        return False
    skipped = _read_enumeration_skipped(layout, manifest)
    for index in sorted(states):
        skipped.extend({"image_path": s["image_path"], "error": s["error"]} for s in states[index]["skipped"])
    lines = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in skipped)
    atomic_write_bytes(layout.skipped_path, lines.encode())
    reasons: dict[str, int] = {}
    for s in skipped:
        reason = skip_reason(s["error"])
        reasons[reason] = reasons.get(reason, 0) + 1
    caption_errors = reasons.pop("unreadable caption file", 0)
    rows = sum(s["rows"] for s in states.values())
    captioned = _write_no_caption(layout, manifest) if manifest["has_captions"] else 0
    dims = [load_shard(p).shape[1] for p in layout.shard_paths("image")[:1]]
    deleted = int(layout.deleted_ids().size)
    info = {
        "format_version": FORMAT_VERSION,
        "model": manifest["model"],
        "dim": dims[0] if dims else None,
        "count": {"image": rows, "text": rows if manifest["has_captions"] else 0},
        "live": rows - deleted,
        "deleted": deleted,
        "captioned": captioned,
        "skipped": sum(reasons.values()),
        "skipped_reasons": reasons,
        "caption_errors": caption_errors,
        "dtype": manifest["dtype"],
        "source": manifest["source"],
        "shards": len(manifest["shards"]),
    }
    layout.write_info(info)
    manifest = {**manifest, "complete": True, "rows": rows, "skipped": info["skipped"]}
    write_json_file(layout.manifest_path, manifest)
    return True


def _write_no_caption(layout: IndexLayout, manifest: dict[str, Any]) -> int:
    """Write no_caption.npy (global ids of rows whose caption is missing or blank, from the metadata shards, in
    shard order) atomically; the live rows that have a caption."""
    missing: list[np.ndarray] = []
    offset = 0
    for shard in manifest["shards"]:
        path = layout.metadata_path(shard["index"])
        state = layout.shard_state_path(shard["index"])
        repair = f"delete {state} and run `clipforge index update {layout.root}` to embed that shard again"
        captions = _read_parquet(path, repair, ["caption"]).column("caption").to_pylist()
        missing.append(offset + np.flatnonzero([not has_caption(c) for c in captions]).astype(np.int64))
        offset += len(captions)
    ids = np.concatenate(missing) if missing else np.zeros(0, np.int64)
    atomic_write_bytes(layout.no_caption_path, _npy_bytes(ids))
    return int(np.count_nonzero(layout.live_mask("text")))


def _finalize_locked(layout: IndexLayout, config: PipelineConfig) -> bool:
    """finalize; with several ranks, under the folder's lock so that two finishing ranks take turns."""
    if config.world_size == 1:
        return finalize(layout)
    from clipforge.locking import FolderInUseError, output_lock

    for _ in range(600):
        try:
            with output_lock(layout.state_dir, what="clipforge index build (finalize)"):
                return finalize(layout)
        except FolderInUseError:
            time.sleep(0.1)
    return False


# ---------------------------------------------------------------- build / update


def _check_model(manifest: dict[str, Any], model_record: dict[str, Any], root: Path) -> None:
    made_with = manifest.get("model", {})
    if made_with.get("weights_hash") != model_record.get("weights_hash"):
        def name(m: dict) -> str:
            pretrained = m.get("pretrained") or "none"
            return f"{m.get('name') or '?'} (pretrained {pretrained}, weights {m.get('weights_hash')})"

        raise PipelineError(
            f"{root} was embedded with {name(made_with)}, not with the model given, {name(model_record)}; "
            "use the same --model/--pretrained, or build a new index with --out elsewhere"
        )


def _prepare_out(layout: IndexLayout) -> None:
    """Refuse to write into a folder that holds anything but an INDEX_DIR (never overwrite a user's files)."""
    root = layout.root
    if root.exists() and not root.is_dir():
        raise PipelineError(f"--out {root} is a file, not a folder; give a new or empty folder")
    if root.is_dir() and not layout.is_index_dir():
        ours = {"img_emb", "text_emb", "metadata", "state", ".lock"}
        other = sorted(p.name for p in root.iterdir() if p.name not in ours)
        if other:
            raise PipelineError(
                f"--out {root} already holds files that are not a clipforge index ({', '.join(other[:5])}); "
                "give a new or empty folder"
            )
    root.mkdir(parents=True, exist_ok=True)


def build(
    root: str | Path,
    spec: SourceSpec,
    model: torch.nn.Module,
    model_record: dict[str, Any],
    config: PipelineConfig = PipelineConfig(),
    *,
    progress: bool = False,
    on_shard_done: ShardHook | None = None,
) -> RunResult:
    """Embed `spec` into INDEX_DIR `root`, resuming an interrupted build of the same source and model.

    model_record: {"name", "pretrained", "weights_hash"} as info.json keeps it (the CLI's `model_record`).
    on_shard_done(i) is called after shard i's files are written (tests use it to interrupt a run)."""
    layout = IndexLayout(root)
    _prepare_out(layout)
    with _lock(layout, config):
        return _build(layout, spec, model, model_record, config, progress, on_shard_done)


def _lock(layout: IndexLayout, config: PipelineConfig):
    """One process: hold the INDEX_DIR's lock for the run (a second build or update into it is refused at once).
    Several ranks share the folder by design, each writing only its own shards."""
    if config.world_size > 1:
        return contextlib.nullcontext()
    from clipforge.locking import output_lock

    return output_lock(layout.root, what="clipforge index", hint="wait for it or use another --out")


def _build(layout, spec, model, model_record, config, progress, on_shard_done) -> RunResult:
    root = layout.root
    if config.world_size == 1:  # what a killed run left; with several ranks another rank may be writing one now
        for folder in (layout.img_emb_dir, layout.text_emb_dir, layout.metadata_dir, layout.state_dir, layout.root):
            if folder.is_dir():
                remove_stale_temporaries(folder)
    result = RunResult()
    if layout.manifest_path.is_file():
        manifest = read_manifest(layout)
        if manifest.get("source") != spec.to_dict():
            raise PipelineError(
                f"{root} is an index of {manifest.get('source', {}).get('location')}, not of {spec.location}; "
                "give another --out, or `clipforge index update` to refresh it from its own source"
            )
        _check_model(manifest, model_record, layout.root)
    else:
        if spec.kind == "folder" and IndexLayout(spec.location).is_index_dir():
            raise PipelineError(
                f"SOURCE {spec.location} is an INDEX_DIR, not an image folder; refresh it with `clipforge index "
                f"update {spec.location}`, search it with `clipforge search {spec.location} QUERY`"
            )
        enumeration = enumerate_source(spec)
        if not enumeration.items:
            first = enumeration.skipped[0] if enumeration.skipped else None
            why = f" (first skipped: {first['image_path']}: {first['error']})" if first else ""
            raise PipelineError(f"{spec.location}: no image to embed{why}")
        layout.state_dir.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            "source": spec.to_dict(),
            "model": model_record,
            "dtype": config.dtype,
            "shard_size": config.shard_size,
            "has_captions": enumeration.has_captions,
            "column_names": list(enumeration.column_names),
            "enumeration_skipped": _write_enumeration_skipped(layout, enumeration.skipped),
            "shards": _plan(layout, enumeration, 0, config.shard_size),
            "complete": False,
        }
        write_json_file(layout.manifest_path, manifest)  # after the plans: a manifest means the plan is complete
    _embed_pending(layout, manifest, model, config, progress, on_shard_done, result)
    result.finalized = _finalize_locked(layout, config)
    return result


def _embedded_items(layout: IndexLayout, manifest: dict[str, Any]) -> tuple[dict[tuple, list[int]], set[tuple]]:
    """(signature -> live global ids, signatures of items skipped as unreadable) over every finished shard."""
    deleted = set(layout.deleted_ids().tolist())
    live: dict[tuple, list[int]] = {}
    bad: set[tuple] = set()
    states = shard_states(layout, manifest)
    next_id = 0
    for shard in manifest["shards"]:
        state = states[shard["index"]]
        items = read_plan(layout, shard["index"])
        skipped = {s["position"] for s in state["skipped"]}
        for position, item in enumerate(items):
            if position in skipped:
                bad.add(item.signature())
                continue
            if next_id not in deleted:
                live.setdefault(item.signature(), []).append(next_id)
            next_id += 1
    return live, bad


def update(
    root: str | Path,
    model: torch.nn.Module,
    model_record: dict[str, Any],
    config: PipelineConfig = PipelineConfig(),
    *,
    progress: bool = False,
    on_shard_done: ShardHook | None = None,
) -> RunResult:
    """Bring INDEX_DIR `root` up to date with its source (see the module docstring): finish unfinished shards,
    embed new and changed items into new shards, add deleted and changed items' old ids to deleted.npy."""
    layout = IndexLayout(root)
    read_manifest(layout)  # not an INDEX_DIR: refused before taking a lock in it
    with _lock(layout, config):
        return _update(layout, model, model_record, config, progress, on_shard_done)


def _update(layout, model, model_record, config, progress, on_shard_done) -> RunResult:
    if config.world_size == 1:  # what a killed run left (see _build)
        for folder in (layout.img_emb_dir, layout.text_emb_dir, layout.metadata_dir, layout.state_dir, layout.root):
            if folder.is_dir():
                remove_stale_temporaries(folder)
    manifest = read_manifest(layout)
    _check_model(manifest, model_record, layout.root)
    result = RunResult()
    _embed_pending(layout, manifest, model, config, progress, on_shard_done, result)  # an interrupted run first
    if not _finalize_locked(layout, config):
        return result  # other ranks' shards are unfinished: they finish, then update again
    manifest = read_manifest(layout)
    spec = SourceSpec.from_dict(manifest["source"])
    enumeration = enumerate_source(spec)
    live, bad = _embedded_items(layout, manifest)
    new_items: list[Item] = []
    for item in enumeration.items:
        ids = live.get(item.signature())
        if ids:
            ids.pop(0)  # still there and unchanged: keeps its row
        elif item.signature() not in bad:
            new_items.append(item)
    gone = sorted(i for ids in live.values() for i in ids)
    result.deleted, result.added_items = len(gone), len(new_items)
    if not gone and not new_items:
        result.finalized = True  # finalized above; nothing changed since
        return result
    if enumeration.has_captions and not manifest["has_captions"]:
        log.warning("the source now has captions but the index was built without: new captions are not embedded")
    known = list(manifest["column_names"])
    columns = known + [c for c in enumeration.column_names if c not in known]
    first = max((s["index"] for s in manifest["shards"]), default=-1) + 1
    enumeration_new = Enumeration(new_items, [], manifest["has_captions"], tuple(columns))
    added = _plan(layout, enumeration_new, first, int(manifest["shard_size"]))
    if gone:
        deleted = np.union1d(layout.deleted_ids(), np.asarray(gone, dtype=np.int64)).astype(np.int64)
        atomic_write_bytes(layout.deleted_path, _npy_bytes(deleted))
    update_record = {"time": time.time(), "added_shards": [s["index"] for s in added], "deleted": len(gone)}
    manifest = {
        **manifest,
        "shards": manifest["shards"] + added,
        "column_names": columns,
        "enumeration_skipped": _write_enumeration_skipped(layout, enumeration.skipped),
        "complete": False,
        "updates": manifest.get("updates", []) + [update_record],
    }
    write_json_file(layout.manifest_path, manifest)
    _embed_pending(layout, manifest, model, config, progress, on_shard_done, result)
    result.finalized = _finalize_locked(layout, config)
    return result


def model_record(model: torch.nn.Module, name: str | None, pretrained: str | None) -> dict[str, Any]:
    """What info.json keeps of the model: enough to reload it (name, pretrained as an absolute path when it is
    one) and a content hash that `update` compares."""
    from clipforge.eval.features import weights_hash

    if pretrained is not None and os.path.exists(pretrained):
        pretrained = os.path.abspath(pretrained)
    return {"name": name, "pretrained": pretrained, "weights_hash": weights_hash(model)}
