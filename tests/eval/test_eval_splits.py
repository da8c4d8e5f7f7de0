"""Probes and few-shot classifiers never learn from test images (issue 8, part 1).

A dataset without a separate train split used to resolve "train" and "test" to the same images, so a random
model on noise images reported linear-probe top-1 0.918. Now such a pair gets a seeded, stratified, disjoint
carved split (recorded in the report), an overlapping pair is refused, and distinct splits are used as they are.
"""

import json

import pytest

from clipforge.cli.main import main as cli
from clipforge.eval import tasks
from clipforge.eval.datasets import load_eval_dataset
from clipforge.eval.items import item_name
from clipforge.eval.splits import carve_rows, plan_train_test
from clipforge.eval.tasks import EvalContext, EvalRequest, run_task
from support.noise_images import write_noise_folder


def _paths(dataset):
    return {item_name(dataset, i) for i in range(len(dataset))}


def test_carve_rows_is_stratified_seeded_and_disjoint():
    labels = [0] * 10 + [1] * 5 + [2] * 2 + [3]
    train, test = carve_rows(labels, 0.2, seed=3)
    assert set(train).isdisjoint(test) and sorted(train + test) == list(range(len(labels)))
    per_class = {c: sum(labels[i] == c for i in test) for c in range(4)}
    assert per_class == {0: 2, 1: 1, 2: 1, 3: 0}  # round(n * 0.2), at least one each side; a lone item trains
    assert carve_rows(labels, 0.2, seed=3) == (train, test)
    assert carve_rows(labels, 0.2, seed=4) != (train, test)
    with pytest.raises(ValueError, match="fraction"):
        carve_rows(labels, 1.0, seed=0)


def test_folder_without_splits_gets_a_disjoint_carved_split_and_chance_accuracy(tmp_path, tiny_model, monkeypatch):
    root = tmp_path / "noise"
    all_paths = {str(p) for p in write_noise_folder(root, classes=8, per_class=10)}
    train_full = load_eval_dataset("folder", str(root), "train")
    test_full = load_eval_dataset("folder", str(root), "test")
    assert _paths(train_full) == _paths(test_full) == all_paths  # the loader's fallback: both are everything

    plan = plan_train_test(train_full, test_full, test_fraction=0.2, seed=0)
    assert plan.carved and _paths(plan.train).isdisjoint(_paths(plan.test))
    assert _paths(plan.train) | _paths(plan.test) == all_paths and len(plan.test) == 16

    encoded = []  # the sets the task really encodes: the probe's train set, then its test set
    real_encode = tasks._encode

    def spy(model, dataset, ctx):
        encoded.append(dataset)
        return real_encode(model, dataset, ctx)

    monkeypatch.setattr(tasks, "_encode", spy)
    request = EvalRequest("linear_probe", "folder", root=str(root))
    records = run_task(tiny_model, request, EvalContext("random", progress=False)).records
    train_paths, test_paths = _paths(encoded[0]), _paths(encoded[1])
    assert train_paths.isdisjoint(test_paths) and len(train_paths) + len(test_paths) == 80
    policies = {r["split_policy"] for r in records}
    assert len(policies) == 1 and policies.pop().startswith("carved:")
    top1 = next(r["value"] for r in records if r["metric"] == "top1")
    # Noise carries no class signal: 8 classes -> chance 0.125 (16 test images; measured 0.125). Trained on the
    # test images, the probe memorises them (32-d features, 80 images): measured 0.825.
    assert top1 < 0.5, top1


def test_fewshot_on_a_folder_without_splits_records_the_carved_split(tmp_path, tiny_model):
    root = tmp_path / "noise"
    write_noise_folder(root, classes=3, per_class=10)
    request = EvalRequest("fewshot", "folder", root=str(root), ks=(1, 2), seeds=(0,))
    records = run_task(tiny_model, request, EvalContext("random", progress=False)).records
    assert all(r["split_policy"].startswith("carved:") for r in records)
    skips = {r["split"] for r in records if r["metric"] == "skipped_images"}
    assert skips == {"train (carved)", "test (carved)"}


def test_distinct_splits_are_used_as_they_are_and_recorded(tmp_path, tiny_model):
    root = tmp_path / "split"
    write_noise_folder(root / "train", classes=3, per_class=6, seed=1)
    write_noise_folder(root / "test", classes=3, per_class=4, seed=2)
    request = EvalRequest("linear_probe", "folder", root=str(root))
    records = run_task(tiny_model, request, EvalContext("random", progress=False)).records
    policy = records[0]["split_policy"]
    assert policy.startswith("train: split 'train' (18 images under ") and "test: split 'test' (12 images" in policy
    assert str(root / "train") in policy and "disjoint" in policy


def test_overlapping_splits_are_refused(tmp_path, tiny_model):
    paths = write_noise_folder(tmp_path / "imgs", classes=2, per_class=4)
    rows = [f"{p},{p.parent.name}\n" for p in paths]
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(rows[:5]))
    (tmp_path / "test.csv").write_text("path,label\n" + "".join(rows[4:]))  # row 4 in both
    request = EvalRequest("linear_probe", "csv", root=str(tmp_path))
    with pytest.raises(ValueError, match=r"share 1 of 4 images .*img_000\.png"):
        run_task(tiny_model, request, EvalContext("random", progress=False))


def test_a_single_csv_for_both_splits_is_carved_or_refused(tmp_path, tiny_model):
    paths = write_noise_folder(tmp_path / "imgs", classes=2, per_class=5)
    csv = tmp_path / "all.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in paths))
    ctx = EvalContext("random", progress=False)
    records = run_task(tiny_model, EvalRequest("linear_probe", "csv", root=str(csv)), ctx).records
    assert records[0]["split_policy"].startswith("carved:")
    with pytest.raises(ValueError, match="no separate 'train' split"):
        run_task(tiny_model, EvalRequest("linear_probe", "csv", root=str(csv), carve_test_fraction=None), ctx)


def test_cli_report_says_which_split_trained_what(tmp_path, capsys):
    root = tmp_path / "noise"
    write_noise_folder(root, classes=2, per_class=6)
    out = tmp_path / "report"
    args = ["eval", "--model", "tiny-vit", "--task", "linear_probe", "--dataset", "folder", "--root", str(root)]
    args += ["--out", str(out), "--cache-dir", "none", "--no-plots", "--no-progress", "--workers", "0"]
    assert cli(args) == 0
    records = json.loads((out / "results.json").read_text())
    assert all(r["split_policy"].startswith("carved:") for r in records)
    markdown = (out / "results.md").read_text()
    assert "## splits" in markdown and "carved: the dataset has no separate 'train' split" in markdown
    capsys.readouterr()
    assert cli(args + ["--no-carve"]) != 0
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "no separate 'train' split" in errors[0] and "Traceback" not in err


def test_shards_without_split_folders_are_carved(tmp_path, tiny_model):
    import io
    import tarfile

    paths = write_noise_folder(tmp_path / "imgs", classes=2, per_class=5)
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "shard-000000.tar", "w") as tar:
        for i, path in enumerate(paths):
            for name, data in ((f"{i:04d}.png", path.read_bytes()), (f"{i:04d}.cls", str(i // 5).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (shards / "classnames.txt").write_text("zero\none\n")
    train_full = load_eval_dataset("wds", str(shards), "train")
    plan = plan_train_test(train_full, load_eval_dataset("wds", str(shards), "test"), test_fraction=0.2, seed=0)
    assert plan.carved and _paths(plan.train).isdisjoint(_paths(plan.test)) and len(plan.test) == 2
    request = EvalRequest("linear_probe", "wds", root=str(shards))
    records = run_task(tiny_model, request, EvalContext("r", progress=False)).records
    assert records[0]["split_policy"].startswith("carved:")
