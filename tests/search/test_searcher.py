"""search.searcher: Searcher over a hand-built INDEX_DIR with a fake encoder (dict text -> vector)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipforge.search.index import build_index
from clipforge.search.layout import IndexLayout, IndexLayoutError
from clipforge.search.query import QueryError
from clipforge.search.searcher import Searcher
from clipforge.weights.formats import CheckpointError

D = 16
BASIS = np.linalg.qr(np.random.default_rng(0).standard_normal((D, D)))[0].astype(np.float32)  # orthonormal rows


def bent(base: np.ndarray, other: np.ndarray, cosine: float) -> np.ndarray:
    return (cosine * base + np.sqrt(1 - cosine**2) * other).astype(np.float32)


# Rows: 0 cat, 1 dog, 2 a near copy of cat (0.98), 3 an exact copy of cat, 4 cat-ish (0.8 towards dog), 5..9 other
IMAGES = np.stack(
    [BASIS[0], BASIS[1], bent(BASIS[0], BASIS[5], 0.98), BASIS[0], bent(BASIS[0], BASIS[1], 0.8)]
    + [BASIS[i] for i in range(6, 11)]
)
COLOURS = ["red", "blue", "red", "blue", "red", "green", "green", "green", "green", "green"]
TEXTS = {"cat": 3 * BASIS[0], "dog": BASIS[1], "kitten": BASIS[0] + 0.1 * BASIS[1]}


class FakeEncoder:
    dim = D

    def __init__(self) -> None:
        self.calls = 0

    def encode_texts(self, texts):
        self.calls += 1
        return np.stack([TEXTS[t] for t in texts])

    def encode_images(self, images):  # pragma: no cover - these tests query by text, id and vector
        raise AssertionError("no image terms here")


def write_index(root, images=IMAGES, texts=None, shards=2, model=None):
    """INDEX_DIR by hand: `shards` img_emb (and text_emb) shards, metadata parquet, info.json, flat faiss index."""
    layout = IndexLayout(root)
    n = images.shape[0]
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        for modality, rows in (("image", images), ("text", texts)):
            if rows is not None:
                layout.emb_path(modality, shard).parent.mkdir(parents=True, exist_ok=True)
                np.save(layout.emb_path(modality, shard), rows[lo:hi].astype(np.float16))
        layout.metadata_dir.mkdir(parents=True, exist_ok=True)
        table = {
            "image_path": [f"img/{i}.png" for i in range(lo, hi)],
            "caption": [f"caption {i}" for i in range(lo, hi)],
            "colour": (COLOURS * (n // len(COLOURS) + 1))[lo:hi],
        }
        pq.write_table(pa.table(table), layout.metadata_path(shard))
    counts = {"image": n} | ({"text": n} if texts is not None else {})
    layout.write_info({"dim": int(images.shape[1]), "count": counts, "dtype": "float16", "model": model})
    for modality in counts:
        build_index(root, modality, kind="flat", recall_sample=10)
    return layout


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    texts = np.stack([BASIS[(i + 3) % D] for i in range(IMAGES.shape[0])])  # caption i = basis row i+3
    write_index(root, texts=texts, model={"name": None, "pretrained": "/nonexistent/model", "weights_hash": "0"})
    return root


def ids(results):
    return [r.id for r in results]


def test_text_query_ranks_and_scores_are_cosines(index_dir):
    results = Searcher(index_dir, model=FakeEncoder()).search("cat", k=4)
    assert ids(results)[:2] in ([0, 3], [3, 0]) and ids(results)[2:] == [2, 4]
    assert results[0].score == pytest.approx(1.0, abs=2e-3)  # float16 shards
    assert results[3].score == pytest.approx(0.8, abs=2e-3)
    assert results[2].metadata == {"image_path": "img/2.png", "caption": "caption 2", "colour": "red"}


def test_arithmetic_query(index_dir):
    # cat + dog points between rows 0 and 1: row 4 (0.8 cat, 0.6 dog) scores (0.8 + 0.6) / sqrt(2) = 0.99
    results = Searcher(index_dir, model=FakeEncoder()).search("cat + dog", k=1)
    assert ids(results) == [4] and results[0].score == pytest.approx(1.4 / np.sqrt(2), abs=2e-3)
    assert ids(Searcher(index_dir, model=FakeEncoder()).search("dog - 0.5:cat", k=1)) == [1]


def test_id_and_vector_queries_never_load_the_model(index_dir):
    searcher = Searcher(index_dir)  # info.json names a model that does not exist: loading it would fail
    assert ids(searcher.search("id:1", k=2)) == [1, 4]
    assert ids(searcher.search(BASIS[7] * 5, k=1)) == [6]  # row 6 is BASIS[7]
    with pytest.raises(QueryError, match=r"id:99: the index holds rows 0..9"):
        searcher.search("id:99")
    with pytest.raises(CheckpointError, match="/nonexistent/model"):  # a text term loads the recorded model
        searcher.search("cat")


def test_deduplicate_keeps_the_best_of_each_group_and_still_returns_k(index_dir):
    searcher = Searcher(index_dir, model=FakeEncoder())
    plain = searcher.search("kitten", k=3)
    deduplicated = searcher.search("kitten", k=3, deduplicate=True)
    assert ids(plain)[0] in (0, 3) and set(ids(plain)) <= {0, 2, 3}
    assert ids(deduplicated) == [ids(plain)[0], 4, 1]  # 0, 2, 3 are one group; over-fetching finds 4 and 1
    assert ids(searcher.search("kitten", k=3, deduplicate=True, threshold=0.99)) == [ids(plain)[0], 2, 4]


def test_filters_restrict_results(index_dir):
    searcher = Searcher(index_dir, model=FakeEncoder())
    assert ids(searcher.search("cat", k=10, filters={"colour": "red"})) == [0, 2, 4]
    assert ids(searcher.search("kitten", k=2, filters={"colour": ["blue", "green"]})) == [3, 1]
    assert searcher.search("cat", filters={"colour": "purple"}) == []


def test_text_modality_searches_caption_embeddings(index_dir):
    results = Searcher(index_dir).search(BASIS[5], k=1, modality="text")  # caption 2 = basis row 5
    assert ids(results) == [2] and results[0].metadata["caption"] == "caption 2"


def test_model_of_another_size_is_refused_naming_both(index_dir):
    class Wide(FakeEncoder):
        dim = D + 1

    with pytest.raises(ValueError, match=rf"embeds into {D + 1} dimensions but .* holds {D}-d"):
        Searcher(index_dir, model=Wide())


def test_bad_folders_and_arguments(tmp_path, index_dir):
    with pytest.raises(IndexLayoutError, match="not an INDEX_DIR"):
        Searcher(tmp_path)
    with pytest.raises(ValueError, match="k must be"):
        Searcher(index_dir).search("id:1", k=0)
    root = tmp_path / "images_only"
    write_index(root)
    with pytest.raises(IndexLayoutError, match="no text index"):
        Searcher(root).search("id:1", modality="text")


def test_deduplicate_fetches_again_when_duplicates_fill_the_first_fetch(tmp_path):
    # 40 near copies of cat outrank dog: the first fetch (k + 20 rows) holds only cats, one group
    rng = np.random.default_rng(1)
    cats = np.stack([bent(BASIS[0], BASIS[2 + i % 8], 0.99 + 0.0002 * (i % 10)) for i in range(40)])
    images = np.concatenate([cats, bent(BASIS[1], BASIS[0], 0.5)[None]])[rng.permutation(41)]
    write_index(tmp_path, images=images, shards=1)
    dog = int(np.argmax(images @ BASIS[1]))
    results = Searcher(tmp_path, model=FakeEncoder()).search("cat", k=2, deduplicate=True)
    assert len(results) == 2 and results[1].id == dog


def test_deleted_rows_are_neither_results_nor_queries(tmp_path):
    layout = write_index(tmp_path)
    np.save(layout.deleted_path, np.array([0], dtype=np.int64))  # `index update` dropped row 0
    searcher = Searcher(tmp_path, model=FakeEncoder())
    assert 0 not in ids(searcher.search("cat", k=10))
    with pytest.raises(QueryError, match="id:0: that row was removed"):
        searcher.search("id:0")
