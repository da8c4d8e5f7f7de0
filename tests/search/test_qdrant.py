"""search.qdrant: export an INDEX_DIR to Qdrant's local in-process mode and search it like the exact faiss index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipforge.search.index import build_index, open_index
from clipforge.search.qdrant import QdrantIndex, connect, export_to_qdrant
from support.indexdirs import make_index_dir
from support.tolerance import assert_close_rel


@pytest.fixture
def exported(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    layout = make_index_dir(tmp_path / "idx", vectors, metadata={"label": [f"l{i % 4}" for i in range(400)]})
    np.save(layout.deleted_path, np.array([7, 8], np.int64))
    build_index(layout.root, recall_sample=20)
    client = connect(":memory:")
    written = export_to_qdrant(layout.root, client, "test")
    return layout, vectors, client, written


def test_top_k_equals_exact_faiss(exported):
    layout, vectors, client, written = exported
    assert written == 398
    qdrant = QdrantIndex(client, "test")
    assert qdrant.ntotal == 398 and qdrant.dim == 16
    queries = np.random.default_rng(1).standard_normal((6, 16)).astype(np.float32)
    scores, ids = qdrant.search(queries, 10)
    want_scores, want_ids = open_index(layout.root).search(queries, 10)
    np.testing.assert_array_equal(ids, want_ids)
    assert_close_rel(torch.from_numpy(scores), torch.from_numpy(want_scores), 1e-5, "qdrant scores")
    allowed = np.arange(0, 400, 3)
    np.testing.assert_array_equal(qdrant.search(queries, 5, allowed_ids=allowed)[1],
                                  open_index(layout.root).search(queries, 5, allowed_ids=allowed)[1])
    _, few = qdrant.search(queries[:1], 5, allowed_ids=np.array([1, 2]))
    assert sorted(few[0, :2]) == [1, 2] and (few[0, 2:] == -1).all()


def test_payloads_vectors_and_deleted_rows(exported):
    _, vectors, client, _ = exported
    qdrant = QdrantIndex(client, "test")
    assert qdrant.payloads([5])[0] == {"image_path": "img/5.jpg", "caption": "caption 5", "label": "l1"}
    np.testing.assert_allclose(qdrant.reconstruct([3, 9]), vectors[[3, 9]], rtol=1e-6)
    with pytest.raises(KeyError, match=r"\[7\]"):
        qdrant.reconstruct([7])  # deleted rows are not exported
    with pytest.raises(ValueError, match=r"\(Q, 16\)"):
        qdrant.search(np.zeros((1, 3), np.float32), 2)


def test_existing_collection_is_refused_unless_recreated(exported, tmp_path):
    layout, _, client, _ = exported
    with pytest.raises(ValueError, match="recreate=True"):
        export_to_qdrant(layout.root, client, "test")
    assert export_to_qdrant(layout.root, client, "test", recreate=True) == 398
    with pytest.raises(ValueError, match="no Qdrant collection 'other'"):
        QdrantIndex(client, "other")
    on_disk = tmp_path / "qdrant"  # local in-process mode on a folder: the same code as for a server URL
    assert export_to_qdrant(layout.root, str(on_disk), "disk") == 398


def test_cli_export_then_search_and_its_errors(tmp_path, capsys):
    """`clipforge index export-qdrant` into a local folder: the collection answers like the faiss index."""
    from clipforge.cli.index import main as index_cli

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    layout = make_index_dir(tmp_path / "idx", vectors, metadata={"label": [f"l{i}" for i in range(60)]})
    build_index(layout.root, recall_sample=10)
    target = tmp_path / "qdrant"
    assert index_cli(["export-qdrant", str(layout.root), str(target), "--collection", "pics", "-q"]) == 0
    assert "exported 60 image vector(s)" in capsys.readouterr().out
    client = connect(str(target))
    scores, ids = QdrantIndex(client, "pics").search(vectors[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]
    client.close()
    again = index_cli(["export-qdrant", str(layout.root), str(target), "--collection", "pics", "-q"])
    assert again == 1 and "--recreate" in capsys.readouterr().err
    assert index_cli(["export-qdrant", str(tmp_path / "nope"), str(target)]) == 3
    (tmp_path / "plain").mkdir()
    assert index_cli(["export-qdrant", str(tmp_path / "plain"), str(target)]) == 3
