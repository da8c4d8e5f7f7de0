"""Shipped recipes: found by name, the old configs/ path still works, and finetune_csv fine-tunes end to end."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.cli import train as train_cli
from clipforge.data import SourceConfig
from clipforge.models.config import ConfigError
from clipforge.recipes import list_recipes, load_recipe
from clipforge.recipes.finetune_csv import source_for
from support.pairs import caption_for, image_for

OLD_PATH = Path(__file__).parents[2] / "configs" / "fashion_mnist.py"


def test_shipped_recipes_load_by_name_and_the_old_file_path_gives_the_same_config():
    assert {"fashion_mnist", "finetune_csv"} <= set(list_recipes())
    assert all(summary for summary in list_recipes().values())
    for arg in (None, "smoke", "tiny"):
        assert load_recipe("fashion_mnist", arg) == load_recipe(str(OLD_PATH), arg)
    assert load_recipe("fashion_mnist", "smoke").schedule.max_steps == 300
    with pytest.raises(ConfigError, match="unknown --arg 'huge'"):
        load_recipe("fashion_mnist", "huge")


def test_a_user_recipe_file_without_get_config_is_a_clear_error(tmp_path):
    (tmp_path / "mine.py").write_text("X = 1\n")
    with pytest.raises(ConfigError, match=r"mine.py defines no get_config\(arg\)"):
        load_recipe(str(tmp_path / "mine.py"))
    (tmp_path / "wrong.py").write_text("def get_config(arg):\n    return {'lr': 1}\n")
    with pytest.raises(ConfigError, match="returned dict, not a TrainConfig"):
        load_recipe(str(tmp_path / "wrong.py"))


def test_finetune_csv_reads_the_data_kind_from_its_argument(tmp_path):
    assert source_for("pairs.csv") == SourceConfig(kind="csv", path="pairs.csv")
    assert source_for("pairs.TSV").kind == "csv"
    spec = "shards/shard-{000000..000009}.tar"
    assert source_for(spec) == SourceConfig(kind="wds", path=spec)
    assert source_for("s3://bucket/train-{0..3}.tar").kind == "wds"
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a.tar").write_bytes(b"")
    assert source_for(str(tmp_path / "shards")).kind == "wds"
    (tmp_path / "images").mkdir()
    assert source_for(str(tmp_path / "images")).kind == "folder"
    with pytest.raises(ConfigError, match=r"finetune_csv: --arg 'nothing-here' is not a .csv/.tsv file"):
        source_for("nothing-here")
    cfg = load_recipe("finetune_csv", "pairs.csv")
    assert cfg.model.lock_image and cfg.model.pretrained and cfg.data.sources == (source_for("pairs.csv"),)


def _write_pairs(root: Path, n: int = 24) -> Path:
    with (root / "pairs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "title"])
        for i in range(n):
            image_for(i).save(root / f"img_{i:02d}.png")  # 32x32, tiny-vit's input size
            writer.writerow([f"img_{i:02d}.png", caption_for(i)])
    return root / "pairs.csv"


def test_finetune_csv_fine_tunes_a_saved_model_on_a_csv_with_the_image_tower_locked(tmp_path):
    torch.manual_seed(0)
    base = clipforge.save_model(clipforge.create_model("tiny-vit"), tmp_path / "base")
    pairs = _write_pairs(tmp_path)
    out = tmp_path / "run"
    argv = ["finetune_csv", "--arg", str(pairs), "--model.name", "tiny-vit", "--model.pretrained", str(base)]
    argv += [f"--output_dir={out}", "--data.batch_size", "8", "--schedule.max_steps", "4", "--optim.lr=1e-3"]
    argv += ["--schedule.warmup_steps=1", "--logging.every_steps=1", "--logging.plot=false", "--no-progress"]
    assert train_cli.main(argv) == 0

    saved = json.loads((out / "config.json").read_text())  # the resolved config beside the outputs
    assert saved["model"]["pretrained"] == str(base) and saved["model"]["lock_image"] is True
    assert saved["data"]["sources"][0] == {**saved["data"]["sources"][0], "kind": "csv", "path": str(pairs)}
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)

    before = clipforge.load_model(base).state_dict()
    after = clipforge.load_model(out / "model").state_dict()
    visual = [k for k in before if k.startswith("visual.")]
    text = [k for k in before if not k.startswith("visual.") and before[k].is_floating_point()]
    assert visual and all(torch.equal(before[k], after[k]) for k in visual)  # LiT: the image tower never moved
    scale = max(before[k].abs().max().item() for k in text)
    assert any((before[k] - after[k]).abs().max().item() > 1e-6 * scale for k in text)  # the text side learned
