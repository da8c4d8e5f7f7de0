"""Hand-built INDEX_DIRs for the search tests: float32 (or float16) embedding shards, metadata parquet, info.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipforge.search.layout import IndexLayout


def clustered(n: int, dim: int, clusters: int = 50, latent: int = 16, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 unit rows with the structure real embeddings have: `clusters` clusters in a `latent`-d space
    mapped into `dim` dimensions, plus a little noise. Isotropic noise around centres has no near neighbours worth
    finding (every cluster mate is about as far), which makes every approximate index look bad."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((clusters, latent))
    points = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, latent))  # (n, latent)
    rows = points @ rng.standard_normal((latent, dim)) / np.sqrt(latent) + 0.1 * rng.standard_normal((n, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def make_index_dir(
    root: Path,
    vectors: np.ndarray,
    shards: int = 2,
    metadata: dict[str, list] | None = None,
    dtype=np.float32,
    row_group_size: int | None = None,
) -> IndexLayout:
    """Write `vectors` as `shards` img_emb shards with matching metadata shards (image_path, caption, + `metadata`)."""
    layout = IndexLayout(root)
    n = vectors.shape[0]
    columns = {"image_path": [f"img/{i}.jpg" for i in range(n)], "caption": [f"caption {i}" for i in range(n)]}
    columns.update(metadata or {})
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        path = layout.emb_path("image", shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors[lo:hi].astype(dtype))
        table = pa.table({name: values[lo:hi] for name, values in columns.items()})
        layout.metadata_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, layout.metadata_path(shard), row_group_size=row_group_size)
    layout.write_info({"dim": int(vectors.shape[1]), "count": {"image": n}, "dtype": np.dtype(dtype).name})
    return layout
