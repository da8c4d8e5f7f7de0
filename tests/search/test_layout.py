import numpy as np
import pytest

from clipforge.search.layout import IndexLayout, IndexLayoutError, shard_stem


def _write(layout: IndexLayout, modality: str, shard: int, array: np.ndarray) -> None:
    layout.emb_dir(modality).mkdir(parents=True, exist_ok=True)
    np.save(layout.emb_path(modality, shard), array)


def test_shard_paths_are_in_numeric_order_and_padded(tmp_path):
    layout = IndexLayout(tmp_path)
    for shard in (10, 2, 0):
        _write(layout, "image", shard, np.full((shard + 1, 3), shard, dtype=np.float16))
    (layout.img_emb_dir / "notes.npy").write_bytes(b"")  # not a shard
    names = [p.name for p in layout.shard_paths("image")]
    assert names == ["img_emb_00000.npy", "img_emb_00002.npy", "img_emb_00010.npy"]
    assert shard_stem("metadata", 7) == "metadata_00007"
    assert layout.count("image") == 1 + 3 + 11
    assert layout.shard_rows("image") == [1, 3, 11]
    emb = layout.load_embeddings("image")
    assert emb.dtype == np.float32 and emb.shape == (15, 3)
    assert emb[0, 0] == 0 and emb[1, 0] == 2 and emb[-1, 0] == 10
    assert layout.count("text") == 0


def test_single_float32_shard_is_memory_mapped(tmp_path):
    layout = IndexLayout(tmp_path)
    _write(layout, "text", 0, np.eye(4, dtype=np.float32))
    emb = layout.load_embeddings("text", mmap=True)
    assert isinstance(emb, np.memmap)
    with pytest.raises(IndexLayoutError, match="build the index"):
        layout.load_embeddings("image")
    with pytest.raises(ValueError, match="modality"):
        layout.index_path("audio")


def test_info_merge_update_is_strict_json(tmp_path):
    layout = IndexLayout(tmp_path)
    assert layout.read_info() == {}
    layout.write_info({"model": {"name": "tiny-vit"}, "dim": 8})
    info = layout.write_info({"model": {"pretrained": "/w"}, "index": {"image": {"recall_at_10": float("nan")}}})
    assert info["model"] == {"name": "tiny-vit", "pretrained": "/w"}
    assert info["format_version"] == 1
    assert "NaN" not in layout.info_path.read_text()
    assert layout.read_info()["index"]["image"]["recall_at_10"] is None
    assert layout.is_index_dir()


def test_deleted_ids_mask_rows(tmp_path):
    layout = IndexLayout(tmp_path)
    _write(layout, "image", 0, np.zeros((3, 2), dtype=np.float16))
    _write(layout, "image", 1, np.zeros((2, 2), dtype=np.float16))
    assert layout.live_count() == 5
    np.save(layout.deleted_path, np.array([4, 1, 1], dtype=np.int64))
    assert layout.deleted_ids().tolist() == [1, 4]
    assert layout.live_mask().tolist() == [True, False, True, True, False]


def test_bad_info_json_names_the_file(tmp_path):
    layout = IndexLayout(tmp_path)
    layout.info_path.write_text("[1, 2]")
    with pytest.raises(IndexLayoutError, match="info.json"):
        layout.read_info()
