import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from tests.support.tolerance import assert_close_rel as _assert_close_rel

import clipforge
from clipforge.search.collection import SourceSpec, detect_source, enumerate_source
from clipforge.search.layout import IndexLayout
from clipforge.search.pipeline import PipelineConfig, PipelineError, build, model_record, update


@pytest.fixture(scope="module")
def model():
    m = clipforge.create_model("tiny-vit")
    m.eval()
    return m


@pytest.fixture(scope="module")
def record(model):
    return model_record(model, "tiny-vit", None)


def assert_close_rel(actual, expected, rel: float) -> None:
    """Embeddings compared as float32 tensors (float16 storage rounds to ~1e-3 of the unit-norm scale)."""
    as_tensor = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
    _assert_close_rel(as_tensor(actual), as_tensor(expected), rel)


def _png(path, seed: int, size: int = 20) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _folder(tmp_path, n: int = 10, captions: bool = True):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        folder = root / "sub" if i % 3 == 0 else root
        _png(folder / f"img{i:02d}.png", i)
        if captions and i % 4 != 1:
            (folder / f"img{i:02d}.txt").write_text(f"a picture number {i}")
    return root


def _config(**kw):
    return PipelineConfig(**{"shard_size": 4, "batch_size": 3, **kw})


def _files(root):
    """Every output file's bytes except run-specific ones (times, locks)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if name == ".lock" or rel.startswith("state" + os.sep + "shard_"):
                continue
            out[rel] = open(path, "rb").read()
    return out


def test_build_writes_clip_retrieval_layout_in_source_order(tmp_path, model, record):
    source = _folder(tmp_path)
    (source / "broken.png").write_bytes(b"not a png")
    result = build(tmp_path / "idx", detect_source(str(source)), model, record, _config())
    layout = IndexLayout(tmp_path / "idx")
    assert result.finalized and result.rows == 10 and result.skipped == 1
    names = [p.name for p in layout.shard_paths("image")]
    assert names == ["img_emb_00000.npy", "img_emb_00001.npy", "img_emb_00002.npy"]
    shard0 = np.load(layout.shard_paths("image")[0])
    assert shard0.dtype == np.float16  # clip-retrieval's dtype
    emb = layout.load_embeddings("image")
    assert emb.shape == (10, model.config.embed_dim)
    assert_close_rel(np.linalg.norm(emb, axis=1), np.ones(10), rel=1e-2)
    meta = [pq.read_table(p).to_pydict() for p in layout.metadata_paths()]
    paths = [p for m in meta for p in m["image_path"]]
    expected = sorted(str(p) for p in source.rglob("*.png") if p.name != "broken.png")
    assert paths == expected
    captions = [c for m in meta for c in m["caption"]]
    assert captions[paths.index(str(source / "img01.png"))] is None
    assert captions[paths.index(str(source / "img02.png"))] == "a picture number 2"
    # rows match embedding the same image directly
    import torch

    from clipforge.factory import get_preprocess

    with torch.no_grad():
        pixels = get_preprocess(model)(Image.open(source / "img02.png").convert("RGB")).unsqueeze(0)  # (1, 3, S, S)
        direct = model.encode_image(pixels, normalize=True)
    assert_close_rel(emb[paths.index(str(source / "img02.png"))], direct[0].numpy(), rel=1e-2)
    text = layout.load_embeddings("text")
    assert text.shape == emb.shape and not text[paths.index(str(source / "img01.png"))].any()
    info = layout.read_info()
    assert info["count"] == {"image": 10, "text": 10} and info["dtype"] == "float16"
    assert info["source"]["kind"] == "folder"
    assert info["model"]["name"] == "tiny-vit" and info["dim"] == emb.shape[1]
    skipped = [json.loads(line) for line in layout.skipped_path.read_text().splitlines()]
    assert [s["image_path"] for s in skipped] == [str(source / "broken.png")]


def test_resume_embeds_only_unfinished_shards(tmp_path, model, record):
    source = _folder(tmp_path, captions=False)
    spec = detect_source(str(source))
    build(tmp_path / "clean", spec, model, record, _config())

    class Stop(Exception):
        pass

    def stop_after_first(shard):
        if shard == 1:
            raise Stop

    with pytest.raises(Stop):
        build(tmp_path / "idx", spec, model, record, _config(), on_shard_done=stop_after_first)
    layout = IndexLayout(tmp_path / "idx")
    assert not layout.info_path.exists() and len(layout.shard_paths("image")) == 2
    first = layout.emb_path("image", 0).stat().st_mtime_ns
    seen = []
    result = build(tmp_path / "idx", spec, model, record, _config(), on_shard_done=seen.append)
    assert seen == [2] and result.finalized
    assert layout.emb_path("image", 0).stat().st_mtime_ns == first
    clean, resumed = _files(tmp_path / "clean"), _files(tmp_path / "idx")
    assert clean.keys() == resumed.keys()
    for name in clean:
        if name.endswith(".npy"):
            assert_close_rel(np.load(tmp_path / "idx" / name), np.load(tmp_path / "clean" / name), rel=1e-2)
        elif name.endswith(".parquet"):
            assert pq.read_table(tmp_path / "idx" / name).equals(pq.read_table(tmp_path / "clean" / name))


def test_ranks_take_their_shards_and_match_one_process(tmp_path, model, record):
    source = _folder(tmp_path, captions=False)
    spec = detect_source(str(source))
    build(tmp_path / "one", spec, model, record, _config())
    r0 = build(tmp_path / "two", spec, model, record, _config(rank=0, world_size=2))
    assert r0.embedded_shards == [0, 2] and not r0.finalized
    r1 = build(tmp_path / "two", spec, model, record, _config(rank=1, world_size=2))
    assert r1.embedded_shards == [1] and r1.finalized
    one, two = IndexLayout(tmp_path / "one"), IndexLayout(tmp_path / "two")
    assert_close_rel(two.load_embeddings(), one.load_embeddings(), rel=1e-2)
    assert _files(tmp_path / "one").keys() == _files(tmp_path / "two").keys()
    assert two.read_info()["count"] == one.read_info()["count"]


def test_update_embeds_new_and_changed_drops_deleted(tmp_path, model, record):
    source = _folder(tmp_path, n=6, captions=False)
    build(tmp_path / "idx", detect_source(str(source)), model, record, _config())
    layout = IndexLayout(tmp_path / "idx")
    before = layout.load_embeddings()
    os.remove(source / "img02.png")  # deleted
    _png(source / "img04.png", 99, size=24)  # changed (size differs)
    _png(source / "new.png", 7)  # new
    nothing = []
    result = update(tmp_path / "idx", model, record, _config(), on_shard_done=nothing.append)
    assert result.added_items == 2 and result.deleted == 2 and nothing == [2]
    deleted = layout.deleted_ids().tolist()
    paths = [p for m in layout.metadata_paths() for p in pq.read_table(m).to_pydict()["image_path"]]
    assert [paths[i] for i in deleted] == [str(source / "img02.png"), str(source / "img04.png")]
    live = [p for i, p in enumerate(paths) if layout.live_mask()[i]]
    assert sorted(live) == sorted(str(p) for p in source.rglob("*.png"))
    assert_close_rel(layout.load_embeddings()[:6], before, rel=1e-3)  # old shards untouched
    assert layout.read_info()["live"] == 6
    again = update(tmp_path / "idx", model, record, _config())
    assert again.added_items == 0 and again.deleted == 0 and again.embedded_shards == []


def test_update_refuses_another_model(tmp_path, model, record):
    build(tmp_path / "idx", detect_source(str(_folder(tmp_path, n=3))), model, record, _config())
    other = clipforge.create_model("tiny-vit")
    with pytest.raises(PipelineError, match="was embedded with tiny-vit.*not with the model given, other"):
        update(tmp_path / "idx", other, model_record(other, "other", None), _config())


def test_refuses_user_folder_and_other_source(tmp_path, model, record):
    source = _folder(tmp_path, n=3)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(PipelineError, match="not a clipforge index"):
        build(out, detect_source(str(source)), model, record, _config())
    assert (out / "thesis.docx").read_text() == "precious"
    build(tmp_path / "idx", detect_source(str(source)), model, record, _config())
    elsewhere = _folder(tmp_path / "b", n=2)
    with pytest.raises(PipelineError, match="is an index of"):
        build(tmp_path / "idx", detect_source(str(elsewhere)), model, record, _config())


def test_fifo_in_folder_is_skipped_not_opened(tmp_path):
    source = _folder(tmp_path, n=2, captions=False)
    os.mkfifo(source / "pipe.png")
    found = enumerate_source(detect_source(str(source)))
    assert len(found.items) == 2
    assert found.skipped[0]["image_path"].endswith("pipe.png") and "FIFO" in found.skipped[0]["error"]


def test_csv_source_columns_and_missing_column(tmp_path, model, record):
    _folder(tmp_path, n=3, captions=False)
    table = tmp_path / "list.csv"
    table.write_text("filepath,title,license\nimages/img01.png,one,cc0\nimages/img02.png,two,by\nimages/gone.png,x,y\n")
    result = build(tmp_path / "idx", detect_source(str(table)), model, record, _config())
    assert result.rows == 2
    layout = IndexLayout(tmp_path / "idx")
    meta = pq.read_table(layout.metadata_paths()[0]).to_pydict()
    assert meta == {"image_path": ["images/img01.png", "images/img02.png"], "caption": ["one", "two"],
                    "license": ["cc0", "by"]}
    assert "gone.png" in layout.skipped_path.read_text()
    from clipforge.data.csvfile import CsvColumnError

    with pytest.raises(CsvColumnError, match=r"no image path column .*\['filepath', 'title', 'license'\]"):
        enumerate_source(SourceSpec("csv", str(table), path_column="nope"))
    bad = tmp_path / "bad.csv"
    bad.write_text("name,title\na,b\n")
    with pytest.raises(CsvColumnError, match=r"the columns are \['name', 'title'\]"):
        enumerate_source(detect_source(str(bad)))


def test_webdataset_shards(tmp_path, model, record):
    import io
    import tarfile

    shard = tmp_path / "shard-0000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(3):
            buf = io.BytesIO()
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(buf, format="PNG")
            for name, data in ((f"{i:04d}.png", buf.getvalue()), (f"{i:04d}.txt", f"caption {i}".encode()),
                               (f"{i:04d}.json", json.dumps({"url": f"http://x/{i}"}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    result = build(tmp_path / "idx", detect_source(str(shard)), model, record, _config())
    assert result.rows == 3 and result.skipped == 0
    meta = pq.read_table(IndexLayout(tmp_path / "idx").metadata_paths()[0]).to_pydict()
    assert meta["caption"] == ["caption 0", "caption 1", "caption 2"]
    assert meta["url"] == ["http://x/0", "http://x/1", "http://x/2"]
    assert meta["image_path"][0] == f"{shard}/0000.png"
    # the same shard through fsspec (as s3:// or https:// would be): ranged reads at the recorded offsets
    import fsspec

    with fsspec.open(f"memory://{tmp_path.name}/shard-0000.tar", "wb") as remote:
        remote.write(shard.read_bytes())
    url = build(tmp_path / "url", detect_source(f"memory://{tmp_path.name}/shard-0000.tar"), model, record, _config())
    assert url.rows == 3
    assert_close_rel(IndexLayout(tmp_path / "url").load_embeddings(), IndexLayout(tmp_path / "idx").load_embeddings(),
                     rel=1e-3)
