"""The `clipforge` command: every subcommand from Python (main(argv) -> int) and one real subprocess."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import clipforge
from clipforge.cli.main import COMMANDS
from clipforge.cli.main import main as cli


@pytest.fixture()
def photos(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    paths = []
    for name in ("astronaut", "coffee", "chelsea"):
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(getattr(skimage_data, name)()).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture()
def saved_model(tmp_path):
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    clipforge.save_model(model, tmp_path / "model")
    return model, str(tmp_path / "model")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    assert cli([command, "--help"]) == 0
    assert "usage: clipforge " + command in capsys.readouterr().out


def test_top_level_usage_and_unknown_command(capsys):
    assert cli([]) == 2
    assert cli(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_models_lists_architectures_and_tags(capsys):
    assert cli(["models", "--json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"ViT-B-32", "RN50", "ViT-L/14@336px", "ViT-bigG-14"} <= set(rows)
    towers = {name: rows[name]["image"] for name in ("ViT-B-32", "RN50", "convnext_base", "EVA02-B-16")}
    assert towers == {"ViT-B-32": "ViT/32", "RN50": "ModifiedResNet", "convnext_base": "ConvNeXt",
                      "EVA02-B-16": "EVA-ViT/16"}  # fmt: skip
    texts = {name: rows[name]["text"] for name in ("ViT-B-32", "ViT-B-16-SigLIP2", "xlm-roberta-base-ViT-B-32")}
    assert texts == {"ViT-B-32": "causal/77 CLIP-BPE", "ViT-B-16-SigLIP2": "bidir/64 vocab 256000",
                     "xlm-roberta-base-ViT-B-32": "HF xlm-roberta"}  # fmt: skip
    assert rows["MobileCLIP2-S3"]["image"] == "FastViT-MCi/5st"
    assert cli(["models", "--pretrained", "--json"]) == 0
    tags = json.loads(capsys.readouterr().out)
    assert sum(row["tag"] == "openai" for row in tags) == 9


def test_classify_matches_the_python_api(photos, saved_model, tmp_path):
    model, path = saved_model
    out = tmp_path / "pred.jsonl"
    assert cli(["classify", *photos, "--labels", "astronaut,coffee,cat", "--pretrained", path, "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]  # JSON lines: one object per image
    assert [r["image"] for r in records] == photos
    clf = clipforge.ZeroShotClassifier(
        model, clipforge.get_tokenizer(model), ["astronaut", "coffee", "cat"], clipforge.get_templates("simple")
    )
    preprocess = clipforge.get_preprocess(model)
    batch = torch.stack([preprocess(clipforge.load_image(p)) for p in photos])
    expected = clf.predict(batch)
    for record, probs in zip(records, expected):
        got = {item["label"]: item["prob"] for item in record["top_k"]}
        for label, p in zip(clf.classnames, probs.tolist()):
            assert got[label] == pytest.approx(p, abs=1e-5)


def test_classify_skips_unreadable_images_and_reports_them(photos, saved_model, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    missing = str(tmp_path / "missing.png")
    args = ["classify", photos[0], str(bad), missing, "--labels", "a,b", "--pretrained", saved_model[1]]
    assert cli(args) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["image"] for r in lines] == [photos[0], str(bad), missing]  # input order, one line each
    assert "label" in lines[0] and "error" in lines[1] and lines[2]["error"] == "no such file"
    assert f"clipforge classify: warning: skipped {missing}: no such file" in captured.err.splitlines()
    assert f"clipforge classify: warning: skipped {bad}: " in captured.err

    # --format json (and the old --output name): the single document of earlier versions
    out = tmp_path / "all.json"
    assert cli([*args, "--format", "json", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["random_weights"] is False and len(result["results"]) == 1
    assert {s["image"] for s in result["skipped"]} == {str(bad), missing}


def test_classify_without_pretrained_warns_on_stderr(photos, capsys):
    assert cli(["classify", photos[0], "--labels", "a,b", "--model", "tiny-vit", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "clipforge classify: warning: no --pretrained: the weights of tiny-vit are random" in captured.err
    assert len(captured.out.splitlines()) == 1


def test_embed_images_and_texts(photos, saved_model, tmp_path):
    model, path = saved_model
    out = tmp_path / "img.npy"
    assert (
        cli(
            [
                "embed",
                "--images",
                *photos,
                str(tmp_path / "nope.jpg"),
                "--out",
                str(out),
                "--pretrained",
                path,
                "--no-progress",
            ]
        )
        == 0
    )
    array = np.load(out)
    meta = json.loads((tmp_path / "img.npy.json").read_text())
    assert array.shape == (3, model.embed_dim) and array.dtype == np.float32
    assert meta["rows"] == photos and len(meta["skipped"]) == 1
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)
    preprocess = clipforge.get_preprocess(model)
    with torch.no_grad():
        ref = model.encode_image(preprocess(clipforge.load_image(photos[1])).unsqueeze(0), normalize=True)
    np.testing.assert_allclose(array[1], ref[0].numpy(), atol=1e-5)

    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("a cat\na dog on a skateboard\n")
    out_t = tmp_path / "txt.npy"
    assert (
        cli(["embed", "--text-file", str(texts_file), "--out", str(out_t), "--pretrained", path, "--no-progress"]) == 0
    )
    with torch.no_grad():
        ref_t = model.encode_text(clipforge.get_tokenizer(model)(["a cat", "a dog on a skateboard"]), normalize=True)
    np.testing.assert_allclose(np.load(out_t), ref_t.numpy(), atol=1e-5)


def test_embed_rejects_a_non_npy_output(saved_model, tmp_path, capsys):
    assert cli(["embed", "--texts", "x", "--out", str(tmp_path / "x.txt"), "--pretrained", saved_model[1]]) == 2
    assert "must end in .npy" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["hf", "openclip", "clipforge"])
def test_convert_round_trip_is_exact(saved_model, tmp_path, fmt):
    model, path = saved_model
    assert cli(["convert", path, str(tmp_path / fmt), "--to", fmt]) == 0
    back = clipforge.load_model(tmp_path / fmt)
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_convert_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    assert cli(["convert", str(bad), str(tmp_path / "out")]) == 4  # a checkpoint error
    assert "bad.safetensors" in capsys.readouterr().err


def test_console_script_runs_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "clipforge.cli.main", "models"], capture_output=True, text=True)
    assert result.returncode == 0 and "ViT-B-32" in result.stdout
