"""A newcomer's mistakes and an attacker's inputs against the search commands (index build/update, search, dedup,
serve): each test pins a fix (or a behaviour checked to be right) found by trying them."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import clipforge
from clipforge.cli.index import main as index_main
from clipforge.cli.main import main as clipforge_cli
from clipforge.cli.search import main as search_main
from clipforge.search.collection import detect_source
from clipforge.search.index import build_index
from clipforge.search.layout import IndexLayout
from clipforge.search.pipeline import PipelineConfig, build, model_record, skip_reason, update
from clipforge.search.searcher import Searcher


@pytest.fixture(scope="module")
def model():
    m = clipforge.create_model("tiny-vit")
    m.eval()
    return m


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    clipforge.save_model(model, folder)
    return str(folder)


def _png(path, seed: int, size: int = 18) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _folder(root, n: int = 6, captioned=lambda i: i % 2 == 0):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _png(root / f"img{i}.png", i)
        if captioned(i):
            (root / f"img{i}.txt").write_text(f"picture {i}")
    return root


def _cli_build(source, out, model_dir, *extra) -> int:
    args = ["build", str(source), "--out", str(out), "--pretrained", model_dir, "--no-progress", "--workers", "0"]
    return index_main([*args, "--batch-size", "4", *extra])


# ---------------------------------------------------------------- known 1: uncaptioned rows in the text index


def test_text_modality_never_returns_uncaptioned_rows_and_ids_stay_global(tmp_path, model):
    source = _folder(tmp_path / "src")
    (source / "img5.txt").write_text("   \n")  # a blank caption is no caption
    out = tmp_path / "idx"
    build(out, detect_source(str(source)), model, model_record(model, "tiny-vit", None), PipelineConfig(shard_size=4))
    layout = IndexLayout(out)
    assert np.load(layout.no_caption_path).tolist() == [1, 3, 5]
    assert layout.read_info()["captioned"] == 3
    for modality in ("image", "text"):
        build_index(out, modality)
    results = Searcher(out, model=model).search("picture 2", k=10, modality="text")
    assert sorted(r.id for r in results) == [0, 2, 4]  # global ids (row i is img{i}), uncaptioned rows left out
    assert all(r.metadata["caption"] == f"picture {r.id}" for r in results)
    assert results[0].id == 2 and results[0].score > 0.99
    assert len(Searcher(out, model=model).search("picture 2", k=10)) == 6  # the image index keeps every row


def test_no_text_index_when_no_row_has_a_caption(tmp_path, model_dir, capsys):
    source = tmp_path / "pairs"
    source.mkdir()
    for i in range(3):
        _png(source / f"{i}.png", i)
    (source / "pairs.csv").write_text("image_path,caption\n0.png,\n1.png,\n2.png,\n")
    assert _cli_build(source / "pairs.csv", tmp_path / "idx", model_dir) == 0
    printed = capsys.readouterr().out
    assert "text.index: not built (no row has a caption)" in printed
    assert IndexLayout(tmp_path / "idx").index_path("image").is_file()


# ---------------------------------------------------------------- known 2: one skipped count, by reason


def test_build_summary_counts_skipped_once_by_reason(tmp_path, model_dir, capsys):
    source = _folder(tmp_path / "src", n=3)
    (source / "broken.png").write_bytes(b"not a png")
    os.mkfifo(source / "pipe.png")
    assert _cli_build(source, tmp_path / "idx", model_dir) == 0
    printed = capsys.readouterr().out
    assert re.findall(r"\d+ skipped|skipped \d+", printed) == ["2 skipped"], printed
    assert "3 rows (3 live), 2 skipped (1 not a readable image, 1 not a regular file): listed in" in printed
    info = IndexLayout(tmp_path / "idx").read_info()
    assert info["skipped"] == 2 and info["skipped_reasons"] == {"not a readable image": 1, "not a regular file": 1}
    assert len(IndexLayout(tmp_path / "idx").skipped_path.read_text().splitlines()) == 2


def test_skip_reasons():
    assert skip_reason("caption not used: bad utf-8") == "unreadable caption file"
    assert skip_reason("a FIFO, not a regular image file; skipped without opening it") == "not a regular file"
    assert skip_reason("ImageTooLargeError: x.png: 100000x100000 pixels") == "too large"
    assert skip_reason("line 3: no such file") == "missing file"
    assert skip_reason("ImageLoadError: cannot read x.png as an image") == "not a readable image"


# ---------------------------------------------------------------- a newcomer's mistakes


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_dir):
    """A finished INDEX_DIR of 6 images (even ones captioned) in 3 shards, and its source folder."""
    base = tmp_path_factory.mktemp("built")
    source = _folder(base / "src")
    assert _cli_build(source, base / "idx", model_dir, "--shard-size", "2") == 0
    return {"source": source, "index": base / "idx"}


def _search(capsys, *argv):
    code = search_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, code, says",
    [
        (["{index}", "photo", "--where", "licence=cc0"], 2, "no metadata column 'licence'; the columns are"),
        (["{index}", "id:" + "9" * 30], 2, "beyond any index's rows"),
        (["{index}", "id:" + "9" * 5000], 2, "beyond any index's rows"),  # past Python's 4300-digit int() limit
        (["{index}", "emb:x.npy#" + "9" * 40], 2, "beyond any index's rows"),
        (["{index}", "x" * 2**20], 2, "over the limit of 10,000 characters"),
        (["{index}", "cat", "+", "+", "-"], 2, "two operators in a row"),
        (["photo of a cat", "{index}"], 3, "photo of a cat: no such folder"),  # arguments swapped
        (["{index}", "cat", "-k", "-3"], 2, "must be a positive integer"),
    ],
)
def test_search_mistakes_are_one_line_errors(built, capsys, argv, code, says):
    got, _, err = _search(capsys, *[a.format(index=built["index"]) for a in argv])
    assert got == code and says in err and "Traceback" not in err and "--debug" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_unicode_and_emoji_queries_search(built, capsys):
    code, out, _ = _search(capsys, built["index"], "🐱 ĉat ∑ \u202e", "-k", "2", "--json")
    assert code == 0 and len(out.splitlines()) == 2


def test_index_dir_given_as_source_and_source_as_index_dir(built, tmp_path, model_dir, capsys):
    capsys.readouterr()
    args = ["--pretrained", model_dir, "--workers", "0", "--no-progress"]
    assert clipforge_cli(["index", "build", str(built["index"]), "--out", str(tmp_path / "new"), *args]) == 1
    assert "is an INDEX_DIR, not an image folder; refresh it with `clipforge index update" in capsys.readouterr().err
    assert clipforge_cli(["index", "update", str(built["source"]), *args]) == 2
    assert f"to index the images in it: `clipforge index build {built['source']} --out" in capsys.readouterr().err
    assert clipforge_cli(["index", "update", str(tmp_path / "missing"), *args]) == 3
    assert "missing: no such folder; give an INDEX_DIR" in capsys.readouterr().err


def test_update_with_nothing_to_do_keeps_a_sound_index(built, model_dir, capsys):
    before = IndexLayout(built["index"]).index_path("image").stat().st_mtime_ns
    assert index_main(["update", str(built["index"]), "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "other ranks" not in out and "image.index: up to date" in out and "text.index: up to date" in out
    assert IndexLayout(built["index"]).index_path("image").stat().st_mtime_ns == before


# ---------------------------------------------------------------- damaged files: named, with a repair that works


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"\x00garbage" * 10)


def _results(capsys, index, *extra):
    code, out, err = _search(capsys, index, "picture 2", "-k", "6", "--json", *extra)
    assert code == 0, err
    return [(row["id"], row["image_path"]) for row in map(json.loads, out.splitlines())]


@pytest.mark.parametrize(
    "damaged, how",
    [
        ("img_emb/img_emb_00001.npy", "truncate"),
        ("img_emb/img_emb_00001.npy", "garbage"),
        ("text_emb/text_emb_00001.npy", "truncate"),
        ("metadata/metadata_00001.parquet", "garbage"),
        ("state/shard_00001.json", "truncate"),
        ("image.index", "truncate"),
        ("info.json", "garbage"),
        ("no_caption.npy", "truncate"),
    ],
)
def test_damaged_file_is_named_and_its_repair_works(built, tmp_path, capsys, damaged, how):
    index = tmp_path / "idx"
    shutil.copytree(built["index"], index)
    (index / "metadata.arrow").unlink(missing_ok=True)
    expected = {m: _results(capsys, index, "--modality", m) for m in ("image", "text")}
    _damage(index / damaged, how)
    errors = []
    for modality in ("image", "text"):
        code, _, err = _search(capsys, index, "picture 2", "--modality", modality)
        errors.append(err)
    if damaged.startswith("state/"):  # only `index update` reads the state files
        assert index_main(["update", str(index), "--workers", "0", "--no-progress"]) == 2
        errors.append(capsys.readouterr().err)
    err = next(e for e in errors if e)
    assert str(index / damaged) in err and "Traceback" not in err, err
    repair = re.search(r"(?:delete (\S+) and )?run `clipforge index update (\S+)`", err)
    assert repair, err  # every message says what to do, and doing it restores the index:
    if repair.group(1):  # "delete it": the file the message starts with
        os.unlink(index / damaged if repair.group(1) == "it" else repair.group(1))
    assert index_main(["update", repair.group(2), "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert {m: _results(capsys, index, "--modality", m) for m in ("image", "text")} == expected


def test_lost_files_say_rebuild(built, tmp_path, capsys):
    index = tmp_path / "idx"
    shutil.copytree(built["index"], index)
    np.save(index / "deleted.npy", np.array([1]))
    _damage(index / "deleted.npy", "truncate")
    code, _, err = _search(capsys, index, "cat")
    assert code == 3 and "deleted.npy: not a readable .npy file" in err and "rebuild the index" in err
    _damage(index / "manifest.json", "garbage")
    assert index_main(["update", str(index), "--workers", "0", "--no-progress"]) == 2
    assert "manifest.json: not valid JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- kill -9, a second run, a full disk

_KILLER = """
import os, signal, sys
import clipforge
from clipforge.search import pipeline
from clipforge.search.collection import detect_source

action, source, out, victim, weights = sys.argv[1:6]
write = pipeline._write_parquet
def write_then_die(path, table):
    if path.name == victim:  # the shard's embeddings are written, its metadata and state are not
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, table)
pipeline._write_parquet = write_then_die
model = clipforge.load_model(weights)  # the test's model (random weights differ from process to process)
model.eval()
record = pipeline.model_record(model, "tiny-vit", None)
config = pipeline.PipelineConfig(shard_size=2, batch_size=2)
if action == "build":
    pipeline.build(out, detect_source(source), model, record, config)
else:
    pipeline.update(out, model, record, config)
"""


def _killed(*argv) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _KILLER, *map(str, argv)], capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()[-2000:]


def _same_rows(a, b) -> None:
    """Two INDEX_DIRs hold the same rows: metadata equal, embeddings equal up to float16 storage."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    la, lb = IndexLayout(a), IndexLayout(b)
    meta = [pa.concat_tables([pq.read_table(p) for p in x.metadata_paths()]).to_pylist() for x in (la, lb)]
    assert meta[0] == meta[1]
    for modality in ("image", "text"):
        ea, eb = la.load_embeddings(modality), lb.load_embeddings(modality)
        assert ea.shape == eb.shape and np.abs(ea - eb).max() <= 2e-2 * np.abs(eb).max()
    assert la.deleted_ids().tolist() == lb.deleted_ids().tolist()
    assert la.no_caption_ids().tolist() == lb.no_caption_ids().tolist()
    assert la.read_info()["live"] == lb.read_info()["live"]


def test_kill_9_in_build_and_update_then_rerun_matches_a_clean_run(tmp_path, model, model_dir):
    source = _folder(tmp_path / "src", n=5)
    record = model_record(model, "tiny-vit", None)
    config = PipelineConfig(shard_size=2, batch_size=2)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    build(clean, detect_source(str(source)), model, record, config)
    _killed("build", source, killed, "metadata_00001.parquet", model_dir)
    assert not IndexLayout(killed).info_path.exists()  # unfinished: nothing claims to be complete
    assert IndexLayout(killed).metadata_path(0).is_file() and not IndexLayout(killed).metadata_path(1).exists()
    result = build(killed, detect_source(str(source)), model, record, config)
    assert result.embedded_shards == [1, 2] and result.finalized
    _same_rows(killed, clean)

    _png(source / "img9.png", 9)  # new
    _png(source / "img0.png", 100)  # changed
    (source / "img3.png").unlink()  # deleted
    clean_update = tmp_path / "clean_update"
    shutil.copytree(clean, clean_update)
    update(clean_update, model, record, config)
    _killed("update", source, killed, "metadata_00003.parquet", model_dir)
    assert not list(killed.rglob("*.clipforge-partial.tmp"))  # atomic writes: no half file under a final name
    result = update(killed, model, record, config)
    assert result.finalized and not list(killed.rglob("*.clipforge-partial.tmp"))
    _same_rows(killed, clean_update)
    assert IndexLayout(killed).read_info()["live"] == 5


def test_second_build_or_update_is_refused_naming_the_holder(built, tmp_path, model_dir, capsys):
    from clipforge.locking import output_lock

    args = ["--pretrained", model_dir, "--workers", "0", "--no-progress"]
    with output_lock(built["index"], what="clipforge index (the first run)"):
        assert clipforge_cli(["index", "update", str(built["index"]), *args]) == 1
        err = capsys.readouterr().err
        assert "clipforge index (the first run)" in err and f"pid {os.getpid()}" in err, err
        assert clipforge_cli(["index", "build", str(built["source"]), "--out", str(built["index"]), *args]) == 1
        assert "clipforge index (the first run)" in capsys.readouterr().err


def test_full_disk_while_writing_a_shard(tmp_path, model, model_dir, monkeypatch, capsys):
    import errno

    from clipforge.search import pipeline

    source = _folder(tmp_path / "src", n=5)
    write = pipeline.atomic_write_bytes

    def full_disk(path, data):
        if path.name == "img_emb_00001.npy":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    monkeypatch.setattr(pipeline, "atomic_write_bytes", full_disk)
    out = tmp_path / "idx"
    assert _cli_build(source, out, model_dir, "--shard-size", "2") == 1
    err = capsys.readouterr().err
    assert "no space left on device" in err.lower() and "img_emb_00001.npy" in err, err
    layout = IndexLayout(out)
    assert layout.shard_state_path(0).is_file() and not layout.shard_state_path(1).exists()
    assert not layout.emb_path("image", 1).exists() and not layout.info_path.exists()
    assert not list(out.rglob("*.clipforge-partial.tmp"))
    monkeypatch.undo()
    assert _cli_build(source, out, model_dir, "--shard-size", "2") == 0  # space freed: the rerun finishes it
    assert "embedded 3 image(s) in 2 shard(s)" in capsys.readouterr().out
    assert layout.read_info()["live"] == 5


# ---------------------------------------------------------------- an unfinished build: search, dedup, serve


def test_search_dedup_and_serve_tell_an_unfinished_build_apart(tmp_path, model, capsys):
    from clipforge.search.service import ServiceConfig, create_app

    source = _folder(tmp_path / "src", n=5)
    record = model_record(model, "tiny-vit", None)

    def stop(shard):
        if shard == 0:
            raise KeyboardInterrupt

    half = tmp_path / "half"
    with pytest.raises(KeyboardInterrupt):
        build(half, detect_source(str(source)), model, record, PipelineConfig(shard_size=2), on_shard_done=stop)
    says = "its `clipforge index build` is unfinished (1 of 3 shard(s) embedded) or still running"
    code, _, err = _search(capsys, half, "cat")
    assert code == 3 and says in err, err
    assert clipforge_cli(["dedup", str(half)]) == 3  # was an IndexError: embeddings without their metadata
    assert says in capsys.readouterr().err
    for where in (half, tmp_path / "missing", source):
        with pytest.raises((ValueError, FileNotFoundError)) as caught:
            create_app({"x": str(where)}, ServiceConfig())
        assert str(where) in str(caught.value)
    assert "not an INDEX_DIR (no info.json)" in str(caught.value)  # the source folder


def test_dedup_similarity_is_a_cosine(built, capsys):
    assert clipforge_cli(["dedup", str(built["index"]), "--threshold", "-1", "--json"]) == 0
    rows = [item for line in capsys.readouterr().out.splitlines() for item in json.loads(line)["items"]]
    assert len(rows) == 6 and all(-1.0 <= r["similarity"] <= 1.0 for r in rows)


# ---------------------------------------------------------------- a hostile CSV


def test_csv_of_100k_rows_mostly_bad_with_paths_outside_its_folder(tmp_path, model_dir, capsys):
    from fastapi.testclient import TestClient

    from clipforge.search.service import ServiceConfig, create_app

    folder, outside = tmp_path / "in", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    for i in range(3):
        _png(folder / f"{i}.png", i)
    _png(outside / "secret.png", 7)
    rows = [f"{i % 3}.png,ok {i}" if i % 1000 == 0 else f"missing{i}.png,bad {i}" for i in range(100_000)]
    rows += ["../outside/secret.png,relative escape", f"{outside}/secret.png,absolute escape"]
    (folder / "pairs.csv").write_text("image_path,caption\n" + "\n".join(rows) + "\n")
    out = tmp_path / "idx"
    assert _cli_build(folder / "pairs.csv", out, model_dir) == 0
    assert "102 rows (102 live), 99900 skipped (99900 missing file)" in capsys.readouterr().out
    # the skipped list lives beside the manifest, which stays small enough to read back (64 MiB cap)
    assert (out / "manifest.json").stat().st_size < 10_000
    assert len((out / "skipped.jsonl").read_text().splitlines()) == 99_900
    with TestClient(create_app({"pairs": str(out)}, ServiceConfig()), raise_server_exceptions=False) as client:
        assert client.get("/items/0/image").status_code == 200  # 0.png, under the CSV's folder
        for item in (100, 101):  # embedded, as the CSV asks, but never served
            reply = client.get(f"/items/{item}/image")
            assert reply.status_code == 403 and "secret" not in reply.headers["content-type"], reply.text
            assert "outside the indexed roots" in reply.text or "contains '..'" in reply.text


# ---------------------------------------------------------------- a hostile folder


def _png_header(path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels in a few hundred bytes (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_bombs_symlink_loops_and_escapes_are_skipped_and_counted(tmp_path, model_dir, capsys):
    source = _folder(tmp_path / "src", n=3)
    _png_header(source / "bomb.png", 100_000, 100_000)
    _png_header(source / "wide.png", 2**31 - 1, 1)
    os.symlink(source / "loop_b.png", source / "loop_a.png")
    os.symlink(source / "loop_a.png", source / "loop_b.png")
    os.symlink(source, source / "folder_loop")  # a folder symlink to itself: not followed
    (tmp_path / "secret.txt").write_text("not an image")
    os.symlink(tmp_path / "secret.txt", source / "escape.png")
    assert _cli_build(source, tmp_path / "idx", model_dir) == 0
    out = capsys.readouterr().out
    assert "3 rows (3 live), 5 skipped (2 too large, 2 unreachable path (a symlink loop, no permission), " \
        "1 not a readable image)" in out, out
