"""`clipforge search` and `clipforge dedup` end to end on a tiny index embedded by a saved tiny-vit model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import clipforge
from clipforge.cli.main import main as cli
from clipforge.search.index import build_index
from clipforge.search.layout import IndexLayout
from clipforge.search.searcher import ModelEncoder, Searcher

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 20)}


def _image(colour, seed: int, noise: float = 40.0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, np.float32) + noise * rng.standard_normal((32, 32, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A saved tiny-vit model; images (4 colours, plus row 4 = an exact copy of row 0); an INDEX_DIR of them."""
    root = tmp_path_factory.mktemp("search_cli")
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit").eval()
    clipforge.save_model(model, root / "model")
    paths = []
    for i, (name, colour) in enumerate(COLOURS.items()):
        paths.append(root / f"{name}.png")
        _image(colour, i).save(paths[-1])
    paths.append(root / "red_copy.png")
    paths[-1].write_bytes(paths[0].read_bytes())
    encoder = ModelEncoder(model)
    images = encoder.encode_images([Image.open(p).convert("RGB") for p in paths])  # (5, D)
    captions = ["a red square", "a green square", "a blue square", "a yellow square", "a red square again"]
    layout = IndexLayout(root / "index")
    layout.img_emb_dir.mkdir(parents=True)
    layout.metadata_dir.mkdir()
    np.save(layout.emb_path("image", 0), images.astype(np.float16))
    table = {"image_path": [str(p) for p in paths], "caption": captions, "kind": ["a", "b", "a", "b", "b"]}
    pq.write_table(pa.table(table), layout.metadata_path(0))
    from clipforge.eval.features import weights_hash

    record = {"name": None, "pretrained": str(root / "model"), "weights_hash": weights_hash(model)}
    layout.write_info({"dim": int(images.shape[1]), "count": {"image": len(paths)}, "model": record})
    build_index(layout.root, "image", kind="flat", recall_sample=5)
    return {"root": root, "index": str(layout.root), "paths": [str(p) for p in paths], "model": model}


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_search_text_json_matches_the_library(collection, capsys):
    assert cli(["search", collection["index"], "a", "red", "square", "-k", "3", "--json"]) == 0
    rows = json_lines(capsys.readouterr().out)
    expected = Searcher(collection["index"], model=collection["model"]).search("a red square", k=3)
    assert [r["id"] for r in rows] == [e.id for e in expected] and [r["rank"] for r in rows] == [1, 2, 3]
    assert [r["score"] for r in rows] == pytest.approx([e.score for e in expected], abs=1e-4)
    assert {"image_path", "caption", "kind"} <= set(rows[0])
    # rclip's command-line form: operators as separate words
    assert cli(["search", collection["index"], "id:2", "-", "0.5:id:0", "+", "red", "--json"]) == 0
    expected = Searcher(collection["index"], model=collection["model"]).search("id:2 - 0.5:id:0 + red", k=10)
    assert [r["id"] for r in json_lines(capsys.readouterr().out)] == [e.id for e in expected]


def test_search_by_image_file_finds_it_and_its_copy(collection, capsys):
    assert cli(["search", collection["index"], collection["paths"][2], "-k", "1", "--json"]) == 0
    (row,) = json_lines(capsys.readouterr().out)
    assert row["id"] == 2 and row["score"] == pytest.approx(1.0, abs=5e-3)  # float16 rows
    assert cli(["search", collection["index"], collection["paths"][0], "-k", "2", "--json"]) == 0
    assert {r["id"] for r in json_lines(capsys.readouterr().out)} == {0, 4}


def test_search_dedup_where_and_table(collection, capsys):
    assert cli(["search", collection["index"], "id:0", "-k", "2", "--dedup", "--json"]) == 0
    found = [r["id"] for r in json_lines(capsys.readouterr().out)]
    assert found[0] in (0, 4) and found[1] not in (0, 4)  # the exact copy is dropped, another row fills in
    assert cli(["search", collection["index"], "id:0", "--where", "kind=a", "--json"]) == 0
    assert {r["id"] for r in json_lines(capsys.readouterr().out)} == {0, 2}
    assert cli(["search", collection["index"], "id:1", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "id", "image_path", "caption"]
    rank, score, row = lines[1].split()[:3]
    assert (rank, row) == ("1", "1") and float(score) == pytest.approx(1.0, abs=2e-3)
    assert "green.png" in lines[1] and len(lines) == 3


def test_search_errors_are_one_line(collection, tmp_path, capsys):
    assert cli(["search", str(tmp_path / "missing"), "cat"]) == 3
    assert "no such folder" in capsys.readouterr().err
    assert cli(["search", str(tmp_path), "cat"]) == 3
    assert "not an INDEX_DIR" in capsys.readouterr().err
    assert cli(["search", collection["index"], "cat", "+", "+", "dog"]) == 2
    assert "two operators" in capsys.readouterr().err
    assert cli(["search", collection["index"], "./no_such.png"]) == 2
    assert "no_such.png: no such file" in capsys.readouterr().err
    assert cli(["search", collection["index"], "cat", "--where", "oops"]) == 2
    assert "COLUMN=VALUE" in capsys.readouterr().err


def test_dedup_groups_and_keep_list(collection, tmp_path, capsys):
    keep = tmp_path / "keep.txt"
    assert cli(["dedup", collection["index"], "--json", "--keep-list", str(keep)]) == 0
    captured = capsys.readouterr()
    (group,) = json_lines(captured.out)
    assert [item["id"] for item in group["items"]] == [0, 4] and group["items"][0]["keep"]
    assert group["items"][1]["similarity"] == pytest.approx(1.0, abs=1e-3)
    paths = collection["paths"]
    assert keep.read_text().splitlines() == paths[:4]
    assert "1 near-duplicate groups" in captured.err
    assert cli(["dedup", collection["index"]]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["group", "keep", "id"] and len(table) == 3 and "*" in table[1]


def test_dedup_against_finds_evaluation_images_in_the_collection(collection, tmp_path, capsys):
    evaluation = tmp_path / "eval.npy"
    unseen = tmp_path / "unseen.png"
    _image((128, 0, 128), 99, noise=90.0).save(unseen)
    paths = collection["paths"]
    embed = ["embed", "--images", paths[2], str(unseen), "--out", str(evaluation)]
    assert cli(embed + ["--pretrained", str(collection["root"] / "model"), "--device", "cpu"]) == 0
    capsys.readouterr()
    keep = tmp_path / "train_keep.txt"
    argv = ["dedup", collection["index"], "--against", str(evaluation), "--json", "--keep-list", str(keep)]
    assert cli(argv + ["--threshold", "0.999"]) == 0
    captured = capsys.readouterr()
    (match,) = json_lines(captured.out)
    assert (match["eval_path"], match["train_id"], match["train_path"]) == (paths[2], 2, paths[2])
    assert "1 of 2 evaluation rows" in captured.err
    assert keep.read_text().splitlines() == [p for i, p in enumerate(paths) if i != 2]


def test_dedup_errors(tmp_path, capsys):
    assert cli(["dedup", str(tmp_path / "nothing")]) == 3
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "photos.csv").write_text("image_path\n")
    assert cli(["dedup", str(tmp_path / "photos.csv")]) == 2
    assert "clipforge index build" in capsys.readouterr().err
    assert cli(["dedup", str(tmp_path), "--threshold", "2"]) == 2


def test_model_override_replaces_the_recorded_one(collection, tmp_path, capsys):
    moved = tmp_path / "index_without_model"
    shutil.copytree(collection["index"], moved)
    IndexLayout(moved).write_info({"model": {"name": None, "pretrained": str(tmp_path / "gone"), "weights_hash": "x"}})
    assert cli(["search", str(moved), "a red square", "--json"]) == 4  # the recorded model is gone
    assert "gone" in capsys.readouterr().err
    argv = ["search", str(moved), "a red square", "--json", "--pretrained", str(collection["root"] / "model")]
    assert cli(argv) == 0
    expected = Searcher(collection["index"], model=collection["model"]).search("a red square", k=5)
    assert [r["id"] for r in json_lines(capsys.readouterr().out)] == [e.id for e in expected]


def test_index_build_then_search_and_dedup_end_to_end(collection, tmp_path, capsys):
    """The user's path: `clipforge index build FOLDER`, then `search` by text and image, then `dedup`."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in collection["paths"]:
        shutil.copy(path, folder)
    (folder / "green.txt").write_text("a green square")  # a caption beside its image
    index = str(tmp_path / "index")
    model = str(collection["root"] / "model")
    assert cli(["index", "build", str(folder), "--out", index, "--pretrained", model, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert cli(["search", index, str(folder / "blue.png"), "-k", "1", "--json"]) == 0
    (top,) = json_lines(capsys.readouterr().out)
    assert top["image_path"].endswith("blue.png") and top["score"] == pytest.approx(1.0, abs=5e-3)
    assert cli(["search", index, "a green square", "-k", "5", "--json", "--dedup"]) == 0
    found = json_lines(capsys.readouterr().out)
    assert len(found) == 4  # five images, the red copy dropped
    assert cli(["dedup", index, "--json"]) == 0
    (group,) = json_lines(capsys.readouterr().out)
    assert sorted(item["image_path"].rsplit("/", 1)[1] for item in group["items"]) == ["red.png", "red_copy.png"]
