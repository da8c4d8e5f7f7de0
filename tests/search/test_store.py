"""search.store.MetadataStore: lookups by global id across shards, the memory-mapped cache and its refresh,
filters, and clear errors."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipforge.search.layout import IndexLayoutError
from clipforge.search.store import CACHE_NAME, MetadataStore
from support.indexdirs import make_index_dir


def _collection(tmp_path, n=1000, shards=3, row_group_size=None):
    vectors = np.zeros((n, 4), np.float32)
    metadata = {
        "label": [f"class{i % 7}" for i in range(n)],
        "width": [100 + i for i in range(n)],
        "score": [float("nan") if i == 5 else i / 10 for i in range(n)],
        "taken": [datetime.date(2020, 1, 1) + datetime.timedelta(days=i) for i in range(n)],
        "blob": [bytes([i % 256]) for i in range(n)],
    }
    return make_index_dir(tmp_path, vectors, shards=shards, metadata=metadata, row_group_size=row_group_size)


def test_get_returns_planted_values_across_shards(tmp_path):
    _collection(tmp_path, row_group_size=100)
    store = MetadataStore(tmp_path)
    assert len(store) == 1000
    assert store.columns == ["image_path", "caption", "label", "width", "score", "taken", "blob"]
    rows = store.get([999, 0, 333, 334, 667, 5, 333])  # shard boundaries at 333 and 666
    assert [r["image_path"] for r in rows] == [f"img/{i}.jpg" for i in (999, 0, 333, 334, 667, 5, 333)]
    assert rows[0]["width"] == 1099 and rows[0]["label"] == "class5" and rows[2]["caption"] == "caption 333"
    assert rows[5]["score"] is None  # NaN is not JSON
    assert rows[1]["taken"] == "2020-01-01" and rows[1]["blob"] == "AA=="
    assert store.get([]) == []
    chunked = MetadataStore(tmp_path, cache=False)  # 10 row groups of 100 per shard: many chunks to take from
    assert chunked.table.num_columns == 7 and len(chunked.table.column(0).chunks) > 3
    assert chunked.get([999, 0, 333, 334, 667, 5, 333]) == rows
    with pytest.raises(IndexError, match=r"\[0, 1000\)"):
        store.get([1000])


def test_cache_is_memory_mapped_reused_and_refreshed(tmp_path):
    layout = _collection(tmp_path)
    MetadataStore(tmp_path)
    cache = tmp_path / CACHE_NAME
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    assert MetadataStore(tmp_path).get([10])[0]["width"] == 110
    assert cache.stat().st_mtime_ns == stamp  # reused, not rewritten
    # index update appends a shard: the cache is stale and rebuilt
    pq.write_table(pa.table({"image_path": ["new.jpg"], "caption": [None], "label": ["new"], "width": [7],
                             "score": [0.5], "taken": [datetime.date(2030, 1, 1)], "blob": [b"x"]}),
                   layout.metadata_path(3))
    store = MetadataStore(tmp_path)
    assert len(store) == 1001 and store.get([1000])[0]["image_path"] == "new.jpg"
    assert MetadataStore(tmp_path, cache=False).get([1000]) == store.get([1000])


def test_read_only_index_dir_still_serves(tmp_path, monkeypatch):
    _collection(tmp_path)

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("clipforge.search.store.atomic_open", refuse)  # what a read-only mount does to the write
    store = MetadataStore(tmp_path)
    assert store.get([42])[0]["width"] == 142 and not (tmp_path / CACHE_NAME).exists()


def test_ids_where_equality_membership_and_types(tmp_path):
    layout = _collection(tmp_path)
    store = MetadataStore(tmp_path)
    np.testing.assert_array_equal(store.ids_where({"label": "class3"}), np.arange(3, 1000, 7))
    np.testing.assert_array_equal(store.ids_where({"label": ["class3", "class4"], "width": ["103", 104, 111]}),
                                  [3, 4, 11])  # "103" is converted to the integer column's type
    assert store.ids_where({"label": "nothing"}).size == 0
    assert store.ids_where({}).size == 1000
    with pytest.raises(KeyError, match="'colour'.*image_path.*label"):
        store.ids_where({"colour": "red"})
    with pytest.raises(ValueError, match="'width'"):
        store.ids_where({"width": "wide"})
    np.save(layout.deleted_path, np.array([3, 10], np.int64))
    np.testing.assert_array_equal(MetadataStore(tmp_path).ids_where({"label": "class3"}), np.arange(17, 1000, 7))


def test_missing_or_broken_shards_are_named(tmp_path):
    with pytest.raises(IndexLayoutError, match="no metadata"):
        MetadataStore(tmp_path)
    layout = _collection(tmp_path)
    layout.metadata_path(1).write_bytes(b"not parquet")
    with pytest.raises(IndexLayoutError, match="metadata_00001.parquet"):
        MetadataStore(tmp_path)
