"""Configs as code: recipes, --section.field=value overrides, validation, the `clipforge train` CLI."""

import json
from pathlib import Path

import pytest

from clipforge.cli import train as train_cli
from clipforge.cli.main import main as cli
from clipforge.data import SourceConfig
from clipforge.models.config import ConfigError
from clipforge.train.config import TrainConfig
from clipforge.train.optim import is_no_decay, lr_factor
from clipforge.train.overrides import apply_overrides

RECIPE = Path(__file__).parents[2] / "configs" / "fashion_mnist.py"  # the old path re-exports the packaged recipe


def test_nested_overrides_parse_json_values():
    cfg = apply_overrides(
        TrainConfig(),
        [
            "--optim.lr=1e-3",
            "--schedule.max_steps=7",
            "--precision=bf16",
            "--model.overrides.vision.patch_dropout=0.5",
            "--eval.zeroshot=fashion_mnist",
            '--data.sources=[{"kind": "csv", "path": "x.csv"}]',
            "--checkpoint.every_steps=null",
        ],
    )
    assert cfg.optim.lr == 1e-3 and cfg.schedule.max_steps == 7 and cfg.precision == "bf16"
    assert cfg.model.overrides == {"vision": {"patch_dropout": 0.5}}
    assert cfg.data.sources == (SourceConfig(kind="csv", path="x.csv"),)
    assert cfg.checkpoint.every_steps is None
    assert TrainConfig().optim.lr == 5e-4  # the original is untouched (frozen dataclasses)


def test_unknown_fields_and_bad_values_are_clear_errors():
    with pytest.raises(ConfigError, match=r"--optim.lrr: unknown field 'lrr'.*valid fields: beta1, beta2"):
        apply_overrides(TrainConfig(), ["--optim.lrr=1"])
    with pytest.raises(ConfigError, match="optim.lr must be positive"):
        apply_overrides(TrainConfig(), ["--optim.lr=-1"])
    with pytest.raises(ConfigError, match=r"--optim.lr: needs a value"):
        apply_overrides(TrainConfig(), ["--optim.lr"])
    with pytest.raises(ConfigError, match="--strategy: expected one of 'ddp', 'fsdp', got 'zero3'"):
        apply_overrides(TrainConfig(), ["--strategy=zero3"])


def test_weight_decay_exclusions_and_schedule():
    import torch

    assert is_no_decay("visual.ln_post.weight", torch.zeros(3))
    assert is_no_decay("text.token_embedding.weight", torch.zeros(3, 3))
    assert is_no_decay("logit_scale", torch.zeros(()))
    assert not is_no_decay("visual.transformer.resblocks.0.mlp.c_fc.weight", torch.zeros(3, 3))
    from clipforge.train.config import ScheduleConfig

    sched = ScheduleConfig(warmup_steps=10)
    assert lr_factor(0, 110, sched) == pytest.approx(0.1)
    assert lr_factor(9, 110, sched) == pytest.approx(1.0)
    assert lr_factor(60, 110, sched) == pytest.approx(0.5)
    assert lr_factor(110, 110, sched) == pytest.approx(0.0)


def test_train_cli_prints_the_resolved_config(capsys):
    assert cli(["train", str(RECIPE), "--arg", "tiny", "--optim.lr=0.01", "--print-config"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["optim"]["lr"] == 0.01 and data["schedule"]["max_steps"] == 20


def test_train_cli_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing.py not found"):
        train_cli.main([str(tmp_path / "missing.py")])
    with pytest.raises(ConfigError, match="unexpected argument 'stray-argument'"):
        train_cli.main([str(RECIPE), "stray-argument"])
    with pytest.raises(ConfigError, match="fashion_mnist: unknown --arg 'huge'"):
        train_cli.main(["fashion_mnist", "--arg", "huge", "--print-config"])


def test_train_cli_runs_the_tiny_recipe_and_writes_outputs(tmp_path):
    out = tmp_path / "run"
    assert cli(["train", str(RECIPE), "--arg", "tiny", f"--output_dir={out}", "--logging.progress=false"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["output_dir"] == str(out)
    assert (out / "model" / "clipforge_config.json").exists() and (out / "curves.png").exists()
    assert json.loads((out / "summary.json").read_text())["state"]["step"] == 20
