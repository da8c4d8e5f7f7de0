"""A newcomer's mistakes and an attacker's inputs against the search commands (index build/update, search, dedup,
serve): each test pins a fix (or a behaviour checked to be right) found by trying them."""

import os
import re

import numpy as np
import pytest
from PIL import Image

import clipforge
from clipforge.cli.index import main as index_main
from clipforge.search.collection import detect_source
from clipforge.search.index import build_index
from clipforge.search.layout import IndexLayout
from clipforge.search.pipeline import PipelineConfig, build, model_record, skip_reason
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
