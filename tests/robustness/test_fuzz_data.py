"""Bad images, CSVs and captions through `clipforge data make-shards` (folder and CSV), `eval` on bad CSVs and
a short `clipforge train` whose CSV lists bad images: exit 0 with the bad items counted, or one clear error line.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from robustness.corpus import is_fifo, write_caption_folder, write_csvs
from robustness.runner import run_batch, run_cli, verdict

WROTE = re.compile(r"wrote (\d+) samples in (\d+) shards to .*; skipped (\d+) bad inputs")


def _shard_counts(run) -> tuple[int, int]:
    """(written, skipped) from make-shards' summary line."""
    found = WROTE.search(run.stdout)
    assert found, run.describe()
    return int(found.group(1)), int(found.group(3))


def _sizes_total(out: Path) -> int:
    sizes = json.loads((out / "sizes.json").read_text())
    return sum(sizes.values())


def _valid(images) -> list:
    return [i for i in images if i.expect == "valid" and "\n" not in i.arg]


def _copy_into(images, folder: Path) -> None:
    """Every image of the corpus into `folder` (non-regular files re-created), each with a caption beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in images:
        name = os.path.basename(item.arg)
        source, dest = item.arg, folder / name
        if os.path.islink(source):
            os.symlink(os.readlink(source), dest)
        elif is_fifo(source):
            os.mkfifo(dest)
        elif os.path.isdir(source):
            dest.mkdir()
        else:
            shutil.copyfile(source, dest)
        stem = name.rsplit(".", 1)[0]
        (folder / f"{stem}.txt").write_text(f"a caption for {stem!r}", errors="surrogateescape")


def test_make_shards_from_folder_counts_bad_images_and_captions(images, tmp_path):
    root = tmp_path / "folder"
    _copy_into(images, root / "corpus")
    counts = write_caption_folder(root / "captions")
    out = tmp_path / "shards"
    run = run_cli("data", "make-shards", "--from-folder", str(root), "--out", str(out), "--samples-per-shard", "16")
    assert verdict(run, allow_error=False) is None, f"{verdict(run, allow_error=False)}\n{run.describe()}"
    written, skipped = _shard_counts(run)
    valid = sum(1 for i in images if i.expect == "valid")
    regular_bad = sum(1 for i in images if i.expect != "valid" and i.kind not in
                      ("fifo", "directory", "symlink-loop", "device", "dangling-symlink"))
    oversize = sum(1 for i in images if i.expect == "oversize")  # stored as encoded bytes, never resized here
    good = valid + counts["good"]
    assert good <= written <= good + counts["either"] + oversize, (written, good, counts)
    assert skipped >= regular_bad - oversize + counts["must_skip"], (skipped, regular_bad, counts)
    assert _sizes_total(out) == written


def test_make_shards_from_csv_skips_exactly_the_bad_rows(images, tmp_path):
    table = tmp_path / "pairs.csv"
    listed = [i for i in images if "\n" not in i.arg and i.kind != "non-utf8-name"]
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "title"])
        writer.writerows([item.arg, f"caption of {item.name}"] for item in listed)
    out = tmp_path / "shards"
    run = run_cli("data", "make-shards", "--from-csv", str(table), "--out", str(out), "--samples-per-shard", "16")
    assert verdict(run, allow_error=False) is None, f"{verdict(run, allow_error=False)}\n{run.describe()}"
    written, skipped = _shard_counts(run)
    # make-shards stores encoded bytes and never resizes: an aspect-ratio bomb may be stored (the guard
    # applies where it is decoded for a model) or skipped, but it must be counted either way.
    bad = sum(1 for i in listed if i.expect == "refused")
    oversize = sum(1 for i in listed if i.expect == "oversize")
    assert written + skipped == len(listed), (written, skipped, len(listed))
    assert bad <= skipped <= bad + oversize, (skipped, bad, oversize)
    assert _sizes_total(out) == written


@pytest.fixture(scope="module")
def csv_runs(images, saved_model, tmp_path_factory):
    """Every bad CSV through make-shards and through eval (one interpreter, see runner.run_batch)."""
    root = tmp_path_factory.mktemp("csvs")
    good = [i.arg for i in _valid(images)][:6]
    shard_csvs = write_csvs(root / "shards", good, header=("filepath", "title"))
    eval_csvs = write_csvs(root / "eval", good, header=("path", "label"))
    commands = [["data", "make-shards", "--from-csv", c.path, "--out", str(root / f"out-{c.name}")] for c in shard_csvs]
    commands += [
        ["eval", "--pretrained", saved_model, "--dataset", "csv", "--root", c.path, "--task", "zeroshot", "--out",
         str(root / f"report-{c.name}"), "--cache-dir", "none", "--workers", "0", "--no-plots"]
        for c in eval_csvs
    ]
    runs = run_batch(commands, root / "batch")
    return list(zip(shard_csvs + eval_csvs, runs))


def test_bad_csvs_are_refused_or_reported(csv_runs):
    problems = []
    for case, run in csv_runs:
        what = f"{case.name} via {run.command}"
        wrong = verdict(run)
        if wrong:
            problems.append(f"{what}: {wrong}\n{run.describe()}")
        elif case.expect == "ok" and run.code != 0:
            problems.append(f"{what}: must succeed\n{run.describe()}")
        elif case.expect == "refuse" and run.code == 0:
            problems.append(f"{what}: must be refused, exit 0\n{run.describe()}")
        elif case.expect == "refuse_or_report" and run.code == 0:
            if not re.search(rf"(line|:){case.bad_line}\b", run.stderr):
                problems.append(f"{what}: exit 0 without naming line {case.bad_line}\n{run.describe()}")
    assert len(csv_runs) >= 20
    assert not problems, f"{len(problems)} of {len(csv_runs)} runs:\n" + "\n".join(problems)


RECIPE = """
from clipforge.data import DataConfig, SourceConfig
from clipforge.train.config import CheckpointConfig, LogConfig, ModelSpec, OptimConfig, ScheduleConfig, TrainConfig

def get_config(arg=None):
    return TrainConfig(
        output_dir=arg,
        model=ModelSpec(name="tiny-vit"),
        data=DataConfig(sources=(SourceConfig(kind={kind!r}, path={path!r}),), batch_size=4, seed=1, num_workers=0),
        optim=OptimConfig(lr=1e-3),
        schedule=ScheduleConfig(epochs=1, max_steps=3, kind="constant"),
        checkpoint=CheckpointConfig(every_steps=1000, keep_last=1),
        logging=LogConfig(every_steps=1, progress=False, plot=False),
    )
"""


@pytest.mark.parametrize("kind", ["csv", "folder"])
def test_short_training_over_bad_items_counts_them(images, tmp_path, kind):
    """3 steps of tiny-vit over a CSV (or folder) that is mostly bad images: no hang on the FIFO or /dev/zero,
    exit 0, and the bad samples met are counted in summary.json by name."""
    listed = [i for i in images if "\n" not in i.arg and i.kind != "non-utf8-name"]
    bad_names = {i.arg for i in listed if i.expect != "valid"}
    if kind == "csv":
        source = tmp_path / "pairs.csv"
        with source.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filepath", "title"])
            writer.writerows([item.arg, f"caption of {item.kind}"] for item in listed)
    else:
        source = tmp_path / "folder"
        _copy_into(listed, source)
        bad_names = {str(source / os.path.basename(n)) for n in bad_names}
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE.format(kind=kind, path=str(source)))
    run = run_cli("train", str(recipe), "--arg", str(tmp_path / "run"), timeout=90)
    assert verdict(run, allow_error=False) is None, f"{verdict(run, allow_error=False)}\n{run.describe()}"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["bad_samples_total"] >= 1, summary
    named = set(summary["bad_samples_worst"])
    assert {os.path.basename(n) for n in named} <= {os.path.basename(n) for n in bad_names}, named
