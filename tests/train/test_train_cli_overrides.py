"""Typed command-line overrides of training recipes, and `clipforge train RECIPE --help` listing every field."""

import dataclasses
import json
import sys

import pytest

from clipforge.cli import train as train_cli
from clipforge.data import SourceConfig
from clipforge.eval.tasks import EvalRequest
from clipforge.models.config import ConfigError
from clipforge.recipes import load_recipe
from clipforge.train.config import PhaseConfig, TrainConfig
from clipforge.train.fieldinfo import field_docs, iter_fields
from clipforge.train.overrides import apply_overrides


def _apply(*items: str) -> TrainConfig:
    return apply_overrides(TrainConfig(), list(items))


def test_type_errors_name_the_option_and_the_expected_type():
    with pytest.raises(ConfigError, match=r"^--optim.lr: expected float, got 'abc'$"):
        _apply("--optim.lr", "abc")
    with pytest.raises(ConfigError, match=r"^--optim.lr: expected float, got 'abc'$"):
        _apply("--optim.lr=abc")
    with pytest.raises(ConfigError, match=r"^--seed: expected int, got '1.5'$"):
        _apply("--seed=1.5")
    with pytest.raises(ConfigError, match=r"^--schedule.max_steps: expected int \| None, got 'many'$"):
        _apply("--schedule.max_steps", "many")
    with pytest.raises(ConfigError, match=r"^--data.batch_size: needs a value \(.*expected int\)"):
        _apply("--data.batch_size")
    with pytest.raises(ConfigError, match=r"^--model.lock_image: expected bool .*got 'maybe'$"):
        _apply("--model.lock_image", "maybe")
    # validation in the dataclasses still runs and names the field
    with pytest.raises(ConfigError, match="optim.lr must be positive"):
        _apply("--optim.lr=-1")
    with pytest.raises(ConfigError, match=r"^--data.batch_size: batch_size must be positive, got 0$"):
        _apply("--data.batch_size", "0")
    with pytest.raises(ConfigError, match=r"^--data.sources.0: source weight must be positive, got 0.0$"):
        _apply('--data.sources=[{"kind": "csv", "path": "x.csv", "weight": 0}]')


def test_both_value_forms_negative_numbers_and_strings_stay_strings():
    spaced = _apply("--optim.lr", "1e-3", "--data.batch_size", "16", "--model.name", "123", "--optim.eps", "-1e-8")
    joined = _apply("--optim.lr=1e-3", "--data.batch_size=16", "--model.name=123", "--optim.eps=-1e-8")
    assert spaced == joined
    assert spaced.optim.lr == 1e-3 and isinstance(spaced.optim.lr, float)
    assert spaced.data.batch_size == 16 and spaced.model.name == "123" and spaced.optim.eps == -1e-8


def test_bools_accept_words_digits_and_a_bare_flag():
    assert _apply("--model.lock_image").model.lock_image is True
    assert _apply("--model.lock_image", "--optim.lr=1e-3").model.lock_image is True  # flag before another option
    for word, expected in [("true", True), ("1", True), ("false", False), ("0", False), ("False", False)]:
        assert _apply(f"--logging.progress={word}").logging.progress is expected
        assert _apply("--logging.progress", word).logging.progress is expected


def test_literal_fields_list_their_allowed_values():
    assert _apply("--precision", "bf16").precision == "bf16"
    assert _apply("--schedule.kind=constant").schedule.kind == "constant"
    with pytest.raises(ConfigError, match=r"^--precision: expected one of 'fp32', 'bf16', 'pure_bf16', got 'fp16'$"):
        _apply("--precision=fp16")
    with pytest.raises(ConfigError, match=r"--data.sources.0.kind: expected one of 'fashion_mnist', .*, got 'tsv'"):
        _apply("--data.sources.0.kind=tsv")


def test_optional_fields_take_null_or_none():
    cfg = _apply("--optim.grad_clip=null", "--schedule.max_steps", "None", "--checkpoint.resume=none")
    assert cfg.optim.grad_clip is None and cfg.schedule.max_steps is None and cfg.checkpoint.resume is None
    assert _apply("--optim.grad_clip=2").optim.grad_clip == 2.0
    assert _apply("--model.pretrained", "openai").model.pretrained == "openai"


def test_tuples_of_dataclasses_lists_and_dicts_take_json_and_are_checked():
    cfg = _apply(
        '--data.sources=[{"kind": "csv", "path": "a.csv"}, {"kind": "wds", "path": "s/{0..1}.tar", "weight": 2}]',
        '--phases=[{"fraction": 0.5, "image_size": 16}, {"fraction": 0.5}]',
        '--eval.harness=[{"task": "zeroshot", "dataset": "cifar10", "ks": [1, 2]}]',
        '--model.overrides={"vision": {"patch_dropout": 0.5}}',
        "--model.overrides.text.layers=3",  # dict keys by dotted path
    )
    assert cfg.data.sources == (
        SourceConfig(kind="csv", path="a.csv"),
        SourceConfig(kind="wds", path="s/{0..1}.tar", weight=2.0),
    )
    assert cfg.data.sources[1].weight == 2.0 and isinstance(cfg.data.sources[1].weight, float)
    assert cfg.phases == (PhaseConfig(fraction=0.5, image_size=16), PhaseConfig(fraction=0.5))
    assert cfg.eval.harness == (EvalRequest(task="zeroshot", dataset="cifar10", ks=(1, 2)),)
    assert cfg.model.overrides == {"vision": {"patch_dropout": 0.5}, "text": {"layers": 3}}
    # items of a list by index
    indexed = apply_overrides(cfg, ["--data.sources.0.path", "b.csv", "--data.sources.1.weight=3"])
    assert indexed.data.sources[0].path == "b.csv" and indexed.data.sources[1].weight == 3.0
    assert indexed.data.sources[1].path == "s/{0..1}.tar"
    # the checks reach inside the JSON
    with pytest.raises(ConfigError, match=r"^--eval.harness.0.ks.1: expected int, got \"a\"$"):
        _apply('--eval.harness=[{"task": "zeroshot", "dataset": "x", "ks": [1, "a"]}]')
    with pytest.raises(ConfigError, match=r"^--data.sources.0: a 'csv' source needs a path$"):
        _apply('--data.sources=[{"kind": "csv"}]')
    with pytest.raises(ConfigError, match=r"^--data.sources.0: SourceConfig needs field\(s\) \['kind'\]$"):
        _apply('--data.sources=[{"path": "x.csv"}]')
    with pytest.raises(ConfigError, match=r"^--data.sources: expected tuple\[SourceConfig, ...\] as JSON, got 'x.csv'"):
        _apply("--data.sources=x.csv")
    with pytest.raises(ConfigError, match=r"--data.sources.1: data.sources has 1 item\(s\).*set the whole list"):
        _apply("--data.sources.1.path=x.csv")
    with pytest.raises(ConfigError, match=r"--eval.retrieval.path: eval.retrieval is null; set it as a whole"):
        _apply("--eval.retrieval.path=val.csv")
    assert _apply('--eval.retrieval={"kind": "csv", "path": "v.csv"}').eval.retrieval == SourceConfig("csv", "v.csv")


def test_unknown_fields_suggest_the_closest_valid_name():
    with pytest.raises(ConfigError) as info:
        _apply("--optim.lrr=1")
    assert str(info.value) == (
        "--optim.lrr: unknown field 'lrr' in optim; did you mean 'lr'? "
        "valid fields: beta1, beta2, eps, grad_clip, lr, weight_decay"
    )
    with pytest.raises(ConfigError, match=r"^--lr: unknown field 'lr'; did you mean --optim.lr\? valid fields: "):
        _apply("--lr=1")
    with pytest.raises(ConfigError, match=r"--data.sources.0.pth: .*did you mean 'path'\?"):
        _apply('--data.sources=[{"kind": "csv", "pth": "x"}]')
    with pytest.raises(ConfigError, match=r"^--optim.lr.x: optim.lr is a float, it has no field 'x'$"):
        _apply("--optim.lr.x=1")
    with pytest.raises(ConfigError, match=r"^unexpected argument 'stray'"):
        _apply("stray")


def test_every_train_config_field_is_documented():
    fields = iter_fields(load_recipe("fashion_mnist"))
    undocumented = [f.name for f in fields if not f.doc] + [
        f"{f.name}.{k.name}" for f in fields for k in f.keys if not k.doc
    ]
    assert undocumented == []
    docs = field_docs(type(TrainConfig().optim))
    assert set(docs) == {f.name for f in dataclasses.fields(type(TrainConfig().optim))}
    assert field_docs(EvalRequest)["train_split"].startswith("the split probes")  # "...; train_split: ..." entries
    assert field_docs(SourceConfig)["caption_column"] == field_docs(SourceConfig)["image_column"]  # "a / b: ..."


def test_help_lists_every_field_with_type_recipe_default_and_doc(capsys):
    assert train_cli.main(["fashion_mnist", "--arg", "smoke", "--optim.lr=0.003", "--help"]) == 0
    out = capsys.readouterr().out
    recipe = load_recipe("fashion_mnist", "smoke")
    for info in iter_fields(recipe):
        assert f"  --{info.name}  {info.type} = " in out, info.name
    assert '  --output_dir  str = "runs/fashion_mnist_smoke"\n      folder of this run\'s outputs' in out
    assert "  --schedule.max_steps  int | None = 300\n      cap on optimizer steps" in out  # the recipe's value
    assert "  --optim.lr  float = 0.003\n      peak learning rate" in out  # after the given override
    assert "  --schedule.kind  'cosine' | 'constant' = \"cosine\"" in out
    kinds = "'fashion_mnist' | 'tuxpaint' | 'openclipart' | 'emoji' | 'csv' | 'folder' | 'wds'"
    assert f"  --data.sources.0.kind  {kinds}" in out
    assert "      keys of each object:\n        fraction: float = 1.0. share of all steps" in out  # phases=()
    assert "recipe fashion_mnist (--arg smoke):" in out


def test_listing_recipes_and_unknown_recipes(capsys):
    assert train_cli.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "fashion_mnist" in listing and "finetune_csv" in listing
    assert train_cli.main([]) == 2
    assert "finetune_csv" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"'fashin_mnist' is not a shipped recipe; did you mean 'fashion_mnist'"):
        train_cli.main(["fashin_mnist"])
    with pytest.raises(ConfigError, match="config overrides go after the recipe"):
        train_cli.main(["--optim.lr=1", "fashion_mnist"])


def test_print_config_resolves_typed_overrides_and_common_options(capsys):
    argv = ["fashion_mnist", "--arg", "tiny", "--optim.lr", "0.01", "--model.lock_image", "--no-progress"]
    assert train_cli.main([*argv, "--device", "auto", "--print-config"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["optim"]["lr"] == 0.01 and data["model"]["lock_image"] is True
    assert data["logging"]["progress"] is False and data["device"] is None and data["schedule"]["max_steps"] == 20


def test_progress_bar_only_on_a_terminal_unless_asked(capsys, monkeypatch):
    for tty, extra, expected in [(False, [], False), (True, [], True), (False, ["--progress"], True),
                                 (False, ["--logging.progress", "true"], True), (True, ["--no-progress"], False)]:
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        assert train_cli.main(["fashion_mnist", "--arg", "tiny", *extra, "--print-config"]) == 0
        assert json.loads(capsys.readouterr().out)["logging"]["progress"] is expected, (tty, extra)
