import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import clipforge
from clipforge.cli.index import main
from clipforge.search.layout import IndexLayout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    clipforge.save_model(clipforge.create_model("tiny-vit"), folder)
    return str(folder)


def _images(root, n=5):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 255, (18, 18, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"p{i}.png")
        (root / f"p{i}.txt").write_text(f"photo {i}")
    return root


def _run(args, model_dir):
    return main([*args, "--pretrained", model_dir, "--no-progress", "--batch-size", "2"])


def test_build_then_update_through_the_cli(tmp_path, model_dir, capsys):
    pytest.importorskip("clipforge.search.index")
    source = _images(tmp_path / "photos")
    out = tmp_path / "idx"
    assert _run(["build", str(source), "--out", str(out), "--shard-size", "2", "--workers", "2"], model_dir) == 0
    printed = capsys.readouterr().out
    assert "embedded 5 image(s) in 3 shard(s)" in printed and "images/s" in printed
    layout = IndexLayout(out)
    assert layout.index_path("image").is_file() and layout.index_path("text").is_file()
    info = layout.read_info()
    assert info["count"]["image"] == 5 and info["model"]["pretrained"] == model_dir
    assert "index" in info
    (source / "p1.png").unlink()
    Image.new("RGB", (12, 12), "red").save(source / "q.png")
    assert main(["update", str(out), "--no-progress", "--workers", "0"]) == 0  # model from info.json
    printed = capsys.readouterr().out
    assert "1 new or changed, 1 dropped" in printed
    assert layout.live_count() == 5 and layout.count() == 6
    paths = [p for m in layout.metadata_paths() for p in pq.read_table(m).to_pydict()["image_path"]]
    assert paths[-1] == str(source / "q.png")


def test_build_refuses_a_users_folder(tmp_path, model_dir, capsys):
    source = _images(tmp_path / "photos", n=2)
    out = tmp_path / "docs"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert _run(["build", str(source), "--out", str(out), "--no-index", "--workers", "0"], model_dir) == 1
    err = capsys.readouterr().err
    assert "not a clipforge index (notes.txt)" in err and "new or empty folder" in err
    assert (out / "notes.txt").read_text() == "keep me"


def test_csv_missing_column_names_the_columns(tmp_path, model_dir, capsys):
    _images(tmp_path / "photos", n=1)
    table = tmp_path / "list.csv"
    table.write_text("filepath,title\nphotos/p0.png,a photo\n")
    args = ["build", str(table), "--out", str(tmp_path / "idx"), "--caption-column", "words", "--workers", "0"]
    assert _run(args, model_dir) == 2
    err = capsys.readouterr().err
    assert "no caption column 'words'" in err and "['filepath', 'title']" in err


def test_update_refuses_another_model(tmp_path, model_dir, capsys):
    source = _images(tmp_path / "photos", n=2)
    out = tmp_path / "idx"
    assert _run(["build", str(source), "--out", str(out), "--no-index", "--workers", "0"], model_dir) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    clipforge.save_model(clipforge.create_model("tiny-vit"), other)
    assert main(["update", str(out), "--pretrained", str(other), "--no-progress", "--workers", "0"]) == 4
    err = capsys.readouterr().err
    assert model_dir in err and str(other) in err and "was embedded with" in err


def test_skipped_fifo_is_listed_and_progress_shows_rate(tmp_path, model_dir, capsys):
    import os

    source = _images(tmp_path / "photos", n=2)
    os.mkfifo(source / "stuck.png")
    out = tmp_path / "idx"
    args = ["build", str(source), "--out", str(out), "--no-index", "--workers", "0", "--pretrained", model_dir]
    assert main([*args, "--progress"]) == 0
    assert "img/s" in capsys.readouterr().err
    skipped = [json.loads(line) for line in IndexLayout(out).skipped_path.read_text().splitlines()]
    assert [s["image_path"] for s in skipped] == [str(source / "stuck.png")] and "FIFO" in skipped[0]["error"]


def test_help_explains(capsys):
    for args in (["--help"], ["build", "--help"], ["update", "--help"]):
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "clip-retrieval" in text and "--shard-size" in text and "deleted.npy" in text
