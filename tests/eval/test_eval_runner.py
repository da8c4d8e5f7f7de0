"""The evaluation harness end to end: feature cache, tasks, report files and plots, `clipforge eval`."""

import json

import pytest
import torch

import clipforge
from clipforge.cli.main import main as cli
from clipforge.eval.datasets import load_eval_dataset
from clipforge.eval.features import encode_images, weights_hash
from clipforge.eval.runner import run_evaluations
from clipforge.eval.tasks import EvalContext, EvalRequest, run_task
from support.pairs import write_pair_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CLIP trained for 20 steps on Fashion-MNIST with the recipe's 'tiny' variant."""
    out = tmp_path_factory.mktemp("trained") / "run"
    from pathlib import Path

    recipe = Path(__file__).parents[2] / "configs" / "fashion_mnist.py"
    assert cli(["train", str(recipe), "--arg", "tiny", f"--output_dir={out}", "--logging.progress=false"]) == 0
    return out / "model"


def test_cache_hit_reencodes_nothing_and_a_changed_checkpoint_misses(tmp_path, trained):
    model = clipforge.load_model(trained)
    dataset = load_eval_dataset("fashion_mnist", split="test")
    subset = _Subset(dataset, 300)
    preprocess = clipforge.get_preprocess(model)
    first = encode_images(model, subset, preprocess, cache_dir=tmp_path, progress=False)
    again = encode_images(model, subset, preprocess, cache_dir=tmp_path, progress=False)
    assert not first.cache_hit and again.cache_hit
    torch.testing.assert_close(again.features, first.features, rtol=0, atol=0)
    with torch.no_grad():
        model.visual.proj.add_(0.01)
    changed = encode_images(model, subset, preprocess, cache_dir=tmp_path, progress=False)
    assert not changed.cache_hit
    assert weights_hash(model) != weights_hash(clipforge.load_model(trained))


class _Subset:
    """The first n items of a ClassificationSet (same protocol: name, fingerprint, labels, load)."""

    def __init__(self, dataset, n):
        self.dataset, self.n = dataset, n
        self.name, self.split = dataset.name, dataset.split
        self.fingerprint = f"{dataset.fingerprint}[:{n}]"
        self.labels = dataset.labels[:n]

    def __len__(self):
        return self.n

    def load(self, i):
        return self.dataset.load(i)


def test_report_for_a_model_trained_on_fashion_mnist(tmp_path, trained):
    model = clipforge.load_model(trained)
    requests = [  # seeded 2,000-image subsets keep this test short; the protocol is the same
        EvalRequest("zeroshot", "fashion_mnist", max_samples=2000),
        EvalRequest("linear_probe", "fashion_mnist", max_samples=2000),
        EvalRequest("fewshot", "fashion_mnist", ks=(1, 4), seeds=(0, 1), max_samples=2000),
    ]
    records = run_evaluations(
        {"fmnist-tiny": model}, requests, tmp_path / "report", cache_dir=tmp_path / "cache", progress=False
    )
    values = {(r["task"], r["metric"]): r["value"] for r in records}
    assert 0.3 < values[("zeroshot", "top1")] <= 1.0  # 20 training steps learn well above chance (0.1)
    assert values[("linear_probe", "top1")] > values[("zeroshot", "top1")] - 0.05
    assert 0.0 < values[("fewshot", "prototype_4shot_top1_mean")] <= 1.0
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert saved == records
    table = (tmp_path / "report" / "results.md").read_text()
    assert "## zeroshot" in table and "## linear_probe" in table and "fmnist-tiny" in table
    plots = {p.name for p in (tmp_path / "report" / "plots").glob("*.png")}
    assert {
        "fmnist-tiny_fashion_mnist_test_zeroshot_per_class.png",
        "fmnist-tiny_fashion_mnist_test_zeroshot_confusion.png",
        "fmnist-tiny_fashion_mnist_test_fewshot_fewshot.png",
    } <= plots
    # a second report re-encodes nothing
    ctx = EvalContext("fmnist-tiny", tmp_path / "cache", progress=False)
    assert run_task(model, requests[1], ctx).encoded_again == 0


def test_retrieval_report_with_examples(tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    write_pair_dataset(data, n=24)
    csv = data / "captions.csv"
    csv.write_text("path,caption\n" + "".join(f"img_{i:03d}.png,caption number {i}\n" for i in range(24)))
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    records = run_evaluations(
        {"tiny": model}, [EvalRequest("retrieval", "csv", root=str(csv))], tmp_path / "r", progress=False
    )
    metrics = {r["metric"] for r in records}
    assert {"image_to_text_R@1", "text_to_image_R@10"} <= metrics
    assert (tmp_path / "r" / "plots" / "tiny_csv_test_retrieval_retrieval.png").stat().st_size > 5000


def test_eval_cli(tmp_path, trained, capsys):
    code = cli(
        [
            "eval",
            "--pretrained",
            str(trained),
            "--task",
            "zeroshot",
            "--dataset",
            "fashion_mnist",
            "--out",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
            "--workers",
            "0",
        ]
    )
    assert code == 0
    assert "| model | dataset | split | top1" in capsys.readouterr().out
    assert (
        cli(
            [
                "eval",
                "--pretrained",
                str(trained),
                "--dataset",
                "no_such_set",
                "--out",
                str(tmp_path / "x"),
                "--no-progress",
            ]
        )
        == 2  # a bad argument (cli/errors.py's exit codes)
    )
    assert "no_such_set" in capsys.readouterr().err


def test_trainer_periodic_evaluation_uses_the_harness(tmp_path):
    from pathlib import Path

    recipe = Path(__file__).parents[2] / "configs" / "fashion_mnist.py"
    harness = '[{"task": "zeroshot", "dataset": "fashion_mnist"}]'
    out = tmp_path / "run"
    assert (
        cli(
            [
                "train",
                str(recipe),
                "--arg",
                "tiny",
                f"--output_dir={out}",
                "--logging.progress=false",
                "--schedule.max_steps=4",
                "--eval.zeroshot=null",
                f"--eval.harness={harness}",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/fashion_mnist_zeroshot_top1" in r for r in records)


def test_eval_cli_matrix_config(tmp_path, trained, capsys):
    """Two models x two evaluations from one JSON file: one record per (model, dataset, task, metric)."""
    torch.manual_seed(0)
    clipforge.save_model(clipforge.create_model("tiny-vit", vision={"image_size": 28, "patch_size": 7}), tmp_path / "r")
    spec = {
        "models": [
            {"name": "trained", "pretrained": str(trained)},
            {"name": "random", "pretrained": str(tmp_path / "r")},
        ],
        "evaluations": [
            {"task": "zeroshot", "dataset": "fashion_mnist", "max_samples": 500},
            {"task": "fewshot", "dataset": "fashion_mnist", "ks": [1, 2], "seeds": [0], "max_samples": 500},
        ],
        "out": str(tmp_path / "matrix"),
    }
    (tmp_path / "matrix.json").write_text(json.dumps(spec))
    assert (
        cli(
            [
                "eval",
                "--config",
                str(tmp_path / "matrix.json"),
                "--no-progress",
                "--workers",
                "0",
                "--cache-dir",
                "none",
                "--no-plots",
            ]
        )
        == 0
    )
    records = json.loads((tmp_path / "matrix" / "results.json").read_text())
    assert {r["model"] for r in records} == {"trained", "random"}
    assert {r["task"] for r in records} == {"zeroshot", "fewshot"}
    top1 = {r["model"]: r["value"] for r in records if r["task"] == "zeroshot" and r["metric"] == "top1"}
    assert top1["trained"] > top1["random"]


def test_results_json_stays_strict_json_when_a_metric_is_not_finite(tmp_path):
    """A NaN metric (e.g. from NaN weights loaded with check_finite=False) is written as null, never as the bare
    word NaN that strict JSON readers refuse; results.md still renders."""
    from clipforge.eval.report import write_results

    records = [
        {"model": "m", "dataset": "d", "split": "test", "task": "zeroshot", "metric": "top1", "value": float("nan")},
        {"model": "m", "dataset": "d", "split": "test", "task": "zeroshot", "metric": "top5", "value": 1.0},
    ]
    json_path, md_path = write_results(records, tmp_path)
    parsed = json.loads(json_path.read_text(), parse_constant=lambda word: pytest.fail(f"non-strict JSON: {word}"))
    assert [r["value"] for r in parsed] == [None, 1.0]
    assert "top1" in md_path.read_text()


def test_weights_hash_ignores_config_fields_left_at_their_defaults():
    """A later clipforge that adds a defaulted config field must not change existing models' identity (feature
    caches, search indexes): only fields that differ from their defaults enter the hash."""
    import dataclasses

    from clipforge.eval.features import _set_fields

    model = clipforge.create_model("tiny-vit")
    fields = _set_fields(model.config)
    assert "rope" not in fields["vision"] and "hf_config" not in fields["text"]  # defaults: left out
    assert fields["vision"]["image_size"] == model.config.vision.image_size  # tiny-vit's own value: kept
    before = weights_hash(model)
    patch_dropout = dataclasses.replace(model.config.vision, patch_dropout=0.5)  # a set field changes the hash
    model.config = dataclasses.replace(model.config, vision=patch_dropout)
    assert weights_hash(model) != before
