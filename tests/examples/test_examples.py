"""Every script in examples/ runs as a user would run it: a subprocess, tiny models, data made here."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import clipforge
from support.pairs import write_pair_dataset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def test_the_index_lists_every_example():
    assert SCRIPTS == [
        "evaluate_matrix.py",
        "finetune_csv.py",
        "load_and_convert.py",
        "textile_inspection.py",
        "zero_shot_folder.py",
    ]
    index = (EXAMPLES / "README.md").read_text()
    for name in SCRIPTS:
        assert f"({name})" in index, f"examples/README.md does not link {name}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_docstring_shows_how_to_run_it_and_help_works(script, tmp_path):
    doc = ast.get_docstring(ast.parse((EXAMPLES / script).read_text()))
    assert doc and f"python examples/{script}" in doc, f"{script}: the module docstring must show the command"
    out = ok(run(script, "--help", cwd=tmp_path))
    assert "usage:" in out and doc.splitlines()[0] in " ".join(out.split())


def _photos(root: Path) -> Path:
    """ROOT/{train,test}/{red_square,blue_circle}/*.png: a labelled folder with both splits."""
    for split in ("train", "test"):
        for name, colour in (("red_square", (220, 30, 30)), ("blue_circle", (30, 30, 220))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40 + i, 32), tuple(max(0, c - 12 * i) for c in colour)).save(folder / f"{i}.png")
    return root


def test_zero_shot_folder_prints_a_row_per_photo_and_skips_unreadable_ones(tmp_path):
    photos = _photos(tmp_path / "photos") / "test"
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    labels = ("--labels", "red square,blue circle", "car")
    result = run("zero_shot_folder.py", photos, *labels, "--top-k", "2", cwd=tmp_path)
    lines = ok(result).splitlines()
    assert lines[0].split()[:3] == ["file", "prediction", "prob"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {f"{c}/{i}.png" for c in ("red_square", "blue_circle") for i in range(4)}
    for row in rows.values():
        prob = float(row.split("  ")[-2].split()[-1])
        assert 1 / 3 <= prob <= 1  # the top-1 probability among three labels
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr
    assert "8 photos classified among 3 labels, 1 skipped" in result.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    missing = run("zero_shot_folder.py", empty, "--labels", "a,b", cwd=tmp_path)
    assert missing.returncode == 1 and "no images" in missing.stderr


def test_finetune_csv_trains_saves_and_reloads(tmp_path):
    (tmp_path / "pairs").mkdir()
    data = write_pair_dataset(tmp_path / "pairs", n=32)
    out = tmp_path / "run"
    args = ("--steps", "4", "--batch-size", "8", "--lr", "1e-3", "--warmup", "1", "--out", out, "--no-progress")
    stdout = ok(run("finetune_csv.py", data / "train.csv", *args, cwd=tmp_path))
    assert "trained 4 steps: loss" in stdout
    assert "retrieval_image_to_text_R@1" in stdout
    model = clipforge.load_model(out / "model")
    assert model.config.vision.image_size == clipforge.create_model("tiny-vit").config.vision.image_size
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in records) == 4

    missing = run("finetune_csv.py", tmp_path / "nope.csv", cwd=tmp_path)
    assert missing.returncode == 1 and "nope.csv" in missing.stderr


def test_evaluate_matrix_runs_every_fitting_pair_and_its_config_runs_in_the_cli(tmp_path):
    photos = _photos(tmp_path / "photos")
    classes = ("red_square", "blue_circle")
    rows = [f"test/{c}/{i}.png,a {c.replace('_', ' ')} number {i}" for c in classes for i in range(4)]
    (photos / "pairs.csv").write_text("path,caption\n" + "\n".join(rows) + "\n")
    out = tmp_path / "report"
    result = run(
        "evaluate_matrix.py",
        *("--model", "tiny-vit", "--model", "rn=tiny-rn"),
        *("--dataset", f"folder={photos}", f"csv={photos / 'pairs.csv'}"),
        *("--task", "zeroshot", "linear_probe", "fewshot", "retrieval"),
        *("--ks", "1", "2", "--seeds", "0", "--no-plots", "--out", out, "--write-config", tmp_path / "matrix.json"),
        cwd=tmp_path,
    )
    stdout = ok(result)
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table] == ["model", "tiny-vit", "rn"]
    assert "folder linear_probe top1" in table[0] and "csv retrieval image_to_text_R@1" in table[0]
    assert "nan" not in stdout
    assert "skipped retrieval on folder" in result.stderr and "skipped zeroshot on csv" in result.stderr
    records = json.loads((out / "results.json").read_text())  # one record per (model, dataset, task, metric)
    cells = {(r["model"], r["dataset"], r["task"]) for r in records}
    expected = {(m, "folder", t) for m in ("tiny-vit", "rn") for t in ("zeroshot", "linear_probe", "fewshot")}
    assert cells == expected | {("tiny-vit", "csv", "retrieval"), ("rn", "csv", "retrieval")}

    spec = json.loads((tmp_path / "matrix.json").read_text())
    assert [m["name"] for m in spec["models"]] == ["tiny-vit", "rn"]
    spec["out"] = str(tmp_path / "from_cli")
    (tmp_path / "matrix.json").write_text(json.dumps(spec))
    cli = subprocess.run(
        [sys.executable, "-m", "clipforge", "eval", "--config", tmp_path / "matrix.json", "--no-progress"]
        + ["--workers", "0", "--cache-dir", "none", "--no-plots"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "from_cli" / "results.json").is_file()


def test_load_and_convert_round_trips_every_format_and_catches_a_difference(tmp_path):
    stdout = ok(run("load_and_convert.py", "--out", tmp_path / "conv", cwd=tmp_path))
    assert "all 3 formats reload with the same embeddings" in stdout
    source_config = clipforge.load_model(tmp_path / "conv" / "source").config
    for fmt in ("clipforge", "openclip", "hf"):
        assert clipforge.load_model(tmp_path / "conv" / fmt).config == source_config, fmt

    # an HF folder as the source; a negative tolerance makes even identical embeddings fail the check
    args = ("--formats", "clipforge", "--rtol", "-1", "--out", tmp_path / "again")
    strict = run("load_and_convert.py", tmp_path / "conv" / "hf", *args, cwd=tmp_path)
    assert strict.returncode == 1 and "changed the embeddings" in strict.stderr


def test_textile_inspection_fits_runs_and_scores(tmp_path):
    """A few textile images per class: the inspector is fitted and run, every new part scored, a report written."""
    pytest.importorskip("conformal_clip_data")
    saved = tmp_path / "model"  # a checkpoint folder that describes its own architecture (as the quickstart's)
    clipforge.save_model(clipforge.create_model("tiny-vit", embed_dim=24), saved)
    out = ok(run("textile_inspection.py", "--out", tmp_path / "demo", "--per-class", "6", "--test-per-class", "3",
                 "--pretrained", saved, cwd=tmp_path))
    assert "new parts: 9; method nn1" in out, out
    accuracy = float(out.split("accuracy ")[1].split()[0])
    coverage = float(out.split("conformal coverage ")[1].split()[0])
    assert 0.0 <= accuracy <= 1.0 and 0.0 <= coverage <= 1.0
    lines = (tmp_path / "demo" / "decisions.jsonl").read_text().splitlines()
    assert len(lines) == 9 and all(json.loads(line)["prediction_set"] for line in lines)
    assert (tmp_path / "demo" / "inspector" / "report").is_dir()
    again = run("textile_inspection.py", "--out", tmp_path / "demo", cwd=tmp_path)  # never writes into a used folder
    assert again.returncode != 0 and "not empty" in again.stderr
