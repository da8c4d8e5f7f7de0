"""The on-disk layout of an INDEX_DIR: clip-retrieval's embedding folders plus clipforge's info and manifest.

    INDEX_DIR/
      img_emb/img_emb_{i}.npy        shard i: (n_i, D) float16 (default) or float32, L2-normalised rows
      text_emb/text_emb_{i}.npy      the same rows' caption embeddings, only when the source has captions
      metadata/metadata_{i}.parquet  the same rows: image_path (str), caption (str|null), then source columns
      image.index / text.index       faiss index over all shards (search.index), ids = global row numbers
      deleted.npy                    int64 global ids dropped by `index update` (sorted, unique); absent: none
      no_caption.npy                 int64 global ids of rows without a caption (zero text embedding), which the
                                     text index never returns; absent: every row has one (or no text_emb/)
      info.json                      what the index holds (model, dim, counts, dtype, source, index settings)
      manifest.json                  pipeline state (search.pipeline): the plan and which shards are finished
      state/shard_{i}.json           one per finished shard, written last: its rows and source items

Where the choices come from (clip-retrieval's `clip_inference/writer.py` and `mapper.py`, so its back end, its
`embedding_reader` and users' notebooks read an INDEX_DIR unchanged): the folder and file names, float16
embeddings (`image_features.cpu().to(torch.float16)` in its mapper), metadata columns `image_path` and `caption`
first, extra source columns after them. Its shard numbers are zero-padded (`str(i).zfill(digits)`) so that a
lexicographic sort is the shard order; clipforge pads to a fixed `SHARD_DIGITS` digits (clip-retrieval pads to the
digits of the shard count, which changes when `index update` appends shards) and `shard_paths` sorts numerically.

Global id of a row = rows of all earlier shards + its row within its shard. Shards are never reordered or
rewritten: `index update` appends new shards (new and changed files) and adds the ids of changed and deleted files'
old rows to `deleted.npy`; indexes and searches exclude those ids (`live_mask`).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.atomic import atomic_write_bytes
from clipforge.jsonio import json_text
from clipforge.safeio import read_regular_file

FORMAT_VERSION = 1
SHARD_DIGITS = 5  # img_emb_00012.npy: a lexicographic sort is the shard order up to 100,000 shards
MODALITIES = ("image", "text")
_FOLDER = {"image": "img_emb", "text": "text_emb"}
_MAX_JSON_BYTES = 64 * 1024 * 1024
_MAX_IDS_BYTES = 8 * 2**30  # deleted.npy / no_caption.npy: 8 bytes per id, a billion rows


class IndexLayoutError(ValueError):
    """An INDEX_DIR is not one (or not a complete one): the message names the folder and what is wrong."""


def _check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")
    return modality


def shard_stem(prefix: str, index: int) -> str:
    """`img_emb_00003`: the file stem of shard `index` for `prefix` (img_emb, text_emb, metadata)."""
    return f"{prefix}_{index:0{SHARD_DIGITS}d}"


def _numbered(folder: Path, prefix: str, suffix: str) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+){re.escape(suffix)}$")
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = pattern.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found)


def load_shard(path: Path, mmap: bool = True) -> np.ndarray:
    """An embedding shard (.npy) of an INDEX_DIR, memory-mapped unless `mmap=False`; IndexLayoutError naming the
    file and the repair (re-embed that shard) when it is not a regular, readable, numeric 2-d .npy file."""
    path = Path(path)
    match = re.search(r"_(\d+)\.npy$", path.name)
    state = path.parent.parent / "state" / f"{shard_stem('shard', int(match.group(1)))}.json" if match else None
    repair = (
        f"delete {state} and run `clipforge index update {path.parent.parent}` to embed that shard again"
        if state is not None and state.is_file()
        else "rebuild the index"
    )
    if not path.is_file():  # a FIFO would block np.load; a folder or device is no shard
        raise IndexLayoutError(f"{path}: not a regular file; {repair}")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # truncated (mmap longer than the file), garbage, pickles
        raise IndexLayoutError(f"{path}: damaged .npy shard ({exc}); {repair}") from exc
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise IndexLayoutError(f"{path}: expected (n, D) float embeddings, found {array.dtype} {array.shape}; {repair}")
    return array


def read_json_file(path: Path, repair: str = "rebuild the index") -> dict[str, Any]:
    """A JSON object from a regular file (capped, no FIFOs); IndexLayoutError naming the file and `repair` (what
    to do) when it is not one."""
    try:
        data = json.loads(read_regular_file(path, _MAX_JSON_BYTES, what="JSON file").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexLayoutError(f"{path}: not valid JSON ({exc}); {repair}") from exc
    if not isinstance(data, dict):
        raise IndexLayoutError(f"{path}: expected a JSON object, found {type(data).__name__}; {repair}")
    return data


def write_json_file(path: Path, data: dict[str, Any]) -> None:
    """Strict JSON (NaN -> null), written atomically."""
    atomic_write_bytes(path, (json_text(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


class IndexLayout:
    """Paths and readers of one INDEX_DIR (see the module docstring). Holds no state beyond `root`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # paths
    @property
    def img_emb_dir(self) -> Path:
        """img_emb/: the image embedding shards."""
        return self.root / "img_emb"

    @property
    def text_emb_dir(self) -> Path:
        """text_emb/: the caption embedding shards (only when the source has captions)."""
        return self.root / "text_emb"

    @property
    def metadata_dir(self) -> Path:
        """metadata/: one parquet per shard, rows in the embedding shards' order."""
        return self.root / "metadata"

    @property
    def state_dir(self) -> Path:
        """state/: the pipeline's per-shard plans and finished-shard records (search.pipeline)."""
        return self.root / "state"

    @property
    def info_path(self) -> Path:
        """info.json: what the index holds (see the module docstring)."""
        return self.root / "info.json"

    @property
    def manifest_path(self) -> Path:
        """manifest.json: the pipeline's plan and state (search.pipeline)."""
        return self.root / "manifest.json"

    @property
    def deleted_path(self) -> Path:
        """deleted.npy: int64 global ids that `index update` dropped."""
        return self.root / "deleted.npy"

    @property
    def no_caption_path(self) -> Path:
        """no_caption.npy: int64 global ids of rows without a caption (their text embedding is zero)."""
        return self.root / "no_caption.npy"

    @property
    def skipped_path(self) -> Path:
        """skipped.jsonl: one {"image_path", "error"} per item that was not embedded."""
        return self.root / "skipped.jsonl"

    def index_path(self, modality: str = "image") -> Path:
        """image.index / text.index: the faiss index of `modality` (search.index writes it)."""
        return self.root / f"{_check_modality(modality)}.index"

    def emb_dir(self, modality: str) -> Path:
        """The embedding folder of `modality` (img_emb/ or text_emb/)."""
        return self.root / _FOLDER[_check_modality(modality)]

    def emb_path(self, modality: str, shard: int) -> Path:
        """The .npy file of shard `shard` of `modality`."""
        prefix = _FOLDER[_check_modality(modality)]
        return self.root / prefix / f"{shard_stem(prefix, shard)}.npy"

    def metadata_path(self, shard: int) -> Path:
        """The metadata parquet of shard `shard`."""
        return self.metadata_dir / f"{shard_stem('metadata', shard)}.parquet"

    def shard_state_path(self, shard: int) -> Path:
        """state/shard_{i}.json: written last when shard i is finished (its rows and skipped items)."""
        return self.state_dir / f"{shard_stem('shard', shard)}.json"

    # listings
    def shard_paths(self, modality: str = "image") -> list[Path]:
        """The embedding shards of `modality`, in shard (= global id) order."""
        prefix = _FOLDER[_check_modality(modality)]
        return [path for _, path in _numbered(self.root / prefix, prefix, ".npy")]

    def metadata_paths(self) -> list[Path]:
        """The metadata parquet shards in shard order (row r of shard i describes row r of its embedding shard)."""
        return [path for _, path in _numbered(self.metadata_dir, "metadata", ".parquet")]

    def is_index_dir(self) -> bool:
        """Whether `root` looks like an INDEX_DIR clipforge made (info.json or manifest.json present)."""
        return self.info_path.is_file() or self.manifest_path.is_file()

    def require_built(self) -> None:
        """IndexLayoutError saying what to do unless `root` is a finished INDEX_DIR (info.json present): an
        interrupted or running build is told apart from a folder that is no INDEX_DIR at all."""
        if self.info_path.is_file():
            return
        if self.manifest_path.is_file():
            try:
                planned = len(read_json_file(self.manifest_path).get("shards") or [])
            except (IndexLayoutError, OSError):
                planned = 0
            done = len(_numbered(self.state_dir, "shard", ".json"))
            raise IndexLayoutError(
                f"{self.root}: its `clipforge index build` is unfinished ({done} of {planned} shard(s) embedded) or "
                "still running; wait for it, or rerun the same `clipforge index build ... --out "
                f"{self.root}`, which resumes it"
            )
        raise IndexLayoutError(
            f"{self.root}: not an INDEX_DIR (no info.json); build one with `clipforge index build SOURCE --out "
            f"{self.root}`"
        )

    # info.json
    def read_info(self) -> dict[str, Any]:
        """info.json as a dict ({} when absent)."""
        if not self.info_path.exists():
            return {}
        return read_json_file(
            self.info_path, f"delete it and run `clipforge index update {self.root}`, which writes it again"
        )

    def write_info(self, updates: dict[str, Any]) -> dict[str, Any]:
        """Merge `updates` into info.json (top-level keys; a dict value merges one level deeper), atomically."""
        info = self.read_info()
        for key, value in updates.items():
            if isinstance(value, dict) and isinstance(info.get(key), dict):
                info[key] = {**info[key], **value}
            else:
                info[key] = value
        info.setdefault("format_version", FORMAT_VERSION)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_file(self.info_path, info)
        return info

    # embeddings
    def load_embeddings(self, modality: str = "image", mmap: bool = True) -> np.ndarray:
        """All rows of `modality` as (N, D) float32, including deleted ones (mask them with `live_mask`).

        One float32 shard memory-mapped is returned as a view; otherwise the shards are concatenated (float16
        shards, clip-retrieval's default, are widened, which needs N * D * 4 bytes of memory)."""
        paths = self.shard_paths(modality)
        if not paths:
            raise IndexLayoutError(f"{self.root}: no {_FOLDER[modality]}/*.npy shards; build the index first")
        arrays = [load_shard(path, mmap) for path in paths]
        dims = {a.shape[1] if a.ndim == 2 else None for a in arrays}
        if len(dims) != 1 or None in dims:
            shapes = sorted(map(str, dims))
            raise IndexLayoutError(f"{self.root}: {modality} shards are not all (n, D) with one D: {shapes}")
        if len(arrays) == 1 and arrays[0].dtype == np.float32:
            return arrays[0]
        return np.concatenate([np.asarray(a, dtype=np.float32) for a in arrays], axis=0)

    def shard_rows(self, modality: str = "image") -> list[int]:
        """Rows per shard (read from the .npy headers, no data loaded)."""
        return [int(load_shard(path).shape[0]) for path in self.shard_paths(modality)]

    def count(self, modality: str = "image") -> int:
        """Rows of `modality` over all shards, including deleted ones."""
        return sum(self.shard_rows(modality))

    def deleted_ids(self) -> np.ndarray:
        """Global ids `index update` dropped (int64, sorted, unique; empty when none)."""
        return self._ids_file(self.deleted_path, "the rows it dropped are lost: rebuild the index from its source")

    def no_caption_ids(self) -> np.ndarray:
        """Global ids of rows without a caption (int64, sorted, unique; empty when none or not recorded)."""
        return self._ids_file(self.no_caption_path, f"run `clipforge index update {self.root}` to write it again")

    def _ids_file(self, path: Path, repair: str) -> np.ndarray:
        if not path.exists():
            return np.zeros(0, dtype=np.int64)
        try:  # a regular file only (a FIFO named deleted.npy would block np.load forever)
            ids = np.load(io.BytesIO(read_regular_file(path, _MAX_IDS_BYTES, what="id list")), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise IndexLayoutError(f"{path}: not a readable .npy file ({exc}); {repair}") from exc
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise IndexLayoutError(f"{path}: expected a 1-d integer array, found {ids.dtype} {ids.shape}; {repair}")
        return np.unique(np.asarray(ids, dtype=np.int64))

    def live_mask(self, modality: str = "image") -> np.ndarray:
        """(N,) bool: True for rows that are searchable in `modality`: not deleted, and for text, captioned (a
        row without a caption has a zero text embedding, which matches nothing)."""
        mask = np.ones(self.count(modality), dtype=bool)
        excluded = self.deleted_ids()
        if modality == "text":
            excluded = np.union1d(excluded, self.no_caption_ids())
        mask[excluded[(excluded >= 0) & (excluded < mask.size)]] = False
        return mask

    def live_count(self, modality: str = "image") -> int:
        """Rows of `modality` that are searchable (`live_mask`)."""
        return int(self.live_mask(modality).sum())
