"""Resume edge cases: damaged checkpoints are named, history is never lost, bad-sample counts survive a resume.

A rerun into a run folder must either continue that run and say how, or stop and say why; it must never
silently restart at step 0, truncate metrics.jsonl, or forget the bad samples it had counted.
"""

import csv
import io
import json
import logging

import pytest
import torch

from clipforge.cli.errors import MODEL_ERROR
from clipforge.cli.main import main as cli
from clipforge.data import DataConfig, SourceConfig
from clipforge.train.checkpoint import UnreadableCheckpointsError
from clipforge.train.config import CheckpointConfig, LogConfig, ModelSpec, OptimConfig, ScheduleConfig, TrainConfig
from clipforge.train.loop import train
from support.pairs import caption_for, image_for, write_pair_dataset, write_recipe


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_pair_dataset(tmp_path_factory.mktemp("pairs"), n=48)


def _config(out, csv_path, **changes) -> TrainConfig:
    base = TrainConfig(
        output_dir=str(out),
        model=ModelSpec(name="tiny-vit"),
        data=DataConfig(sources=(SourceConfig(kind="csv", path=str(csv_path)),), batch_size=8, seed=3),
        optim=OptimConfig(lr=1e-3),
        schedule=ScheduleConfig(epochs=2, max_steps=6),
        checkpoint=CheckpointConfig(every_steps=2, keep_last=3),
        logging=LogConfig(every_steps=1, progress=False, plot=False),
    )
    return base.replace(**changes)


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _damage(path):
    path.write_bytes(path.read_bytes()[:1000])  # a copy cut short, a disk error


def test_every_checkpoint_unreadable_refuses_and_keeps_history(tmp_path, dataset):
    out = tmp_path / "run"
    cfg = _config(out, dataset / "train.csv")
    train(cfg, stop_after_steps=4)
    ckpts = sorted((out / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_000000002.pt", "step_000000004.pt"]
    for path in ckpts:
        _damage(path)
    history = (out / "metrics.jsonl").read_bytes()

    with pytest.raises(UnreadableCheckpointsError) as info:
        train(cfg)
    message = str(info.value)
    assert "none is readable" in message and "--restart" in message
    assert "step_000000002.pt" in message and "step_000000004.pt" in message
    assert (out / "metrics.jsonl").read_bytes() == history  # nothing truncated
    assert sorted((out / "checkpoints").glob("step_*.pt")) == ckpts  # nothing overwritten


def test_cli_unreadable_checkpoints_is_one_line_then_restart_moves_history_aside(tmp_path, dataset, capsys):
    recipe = write_recipe(tmp_path / "recipe.py", dataset / "train.csv", 8, 'epochs=2, max_steps=3, kind="constant"')
    out = tmp_path / "run"
    assert cli(["train", str(recipe), "--arg", str(out), "--checkpoint.every_steps=1", "--checkpoint.keep_last=2"]) == 0
    old_checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step_*.pt"))
    for path in (out / "checkpoints").glob("step_*.pt"):
        _damage(path)
    history = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()

    assert cli(["train", str(recipe), "--arg", str(out)]) == MODEL_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clipforge train: error: ") and "--restart" in err[0], err

    assert cli(["train", str(recipe), "--arg", str(out), "--restart", "--schedule.max_steps=2"]) == 0
    stdout = capsys.readouterr().out
    assert "metrics.jsonl -> metrics.jsonl.1" in stdout and "checkpoints -> checkpoints.1" in stdout
    assert (out / "metrics.jsonl.1").read_bytes() == history  # the earlier run's history, byte for byte
    assert sorted(p.name for p in (out / "checkpoints.1").glob("step_*.pt")) == old_checkpoints
    assert [r["step"] for r in _records(out) if "loss" in r] == [1, 2]  # the new run, from step 1
    assert (out / "model.1").is_dir() and (out / "model").is_dir()


def test_damaged_newest_warns_naming_both_and_keeps_earlier_records(tmp_path, dataset, caplog):
    out = tmp_path / "run"
    cfg = _config(out, dataset / "train.csv")
    train(cfg, stop_after_steps=5)  # checkpoints at 2, 4 and 5 (the stop)
    newest = out / "checkpoints" / "step_000000005.pt"
    _damage(newest)
    before = (out / "metrics.jsonl").read_text().splitlines()
    with caplog.at_level(logging.WARNING, logger="clipforge"):
        result = train(cfg)
    assert result.state.step == 6
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    skipped = [w for w in warnings if w.startswith("skipped damaged checkpoint")]
    assert len(skipped) == 1, warnings
    assert str(newest) in skipped[0] and "resuming from" in skipped[0] and "step_000000004.pt" in skipped[0]
    # Step 5 is redone from the step-4 checkpoint: its old record is dropped (and said), the earlier ones kept.
    assert any("dropped 1 record(s) of steps after 4" in w for w in warnings), warnings
    after = (out / "metrics.jsonl").read_text().splitlines()
    assert after[:4] == [line for line in before if json.loads(line)["step"] <= 4]
    assert [r["step"] for r in _records(out) if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_fresh_start_in_a_folder_with_an_earlier_run_keeps_its_metrics(tmp_path, dataset, caplog):
    out = tmp_path / "run"
    cfg = _config(out, dataset / "train.csv", checkpoint=CheckpointConfig(every_steps=2, resume=None))
    train(cfg.replace(schedule=ScheduleConfig(epochs=1, max_steps=2)))
    history = (out / "metrics.jsonl").read_bytes()
    with caplog.at_level(logging.WARNING, logger="clipforge"):
        train(cfg.replace(schedule=ScheduleConfig(epochs=1, max_steps=3)))
    assert any("earlier run" in r.getMessage() for r in caplog.records), caplog.text
    assert (out / "metrics.jsonl.1").read_bytes() == history
    assert [r["step"] for r in _records(out) if "loss" in r] == [1, 2, 3]
    # The new run's checkpoints are not mixed with (nor pruned against) the earlier run's.
    assert [p.name for p in sorted((out / "checkpoints").glob("*.pt"))] == ["step_000000002.pt", "step_000000003.pt"]


def _write_bad_dataset(root):
    rows = []
    for i in range(48):
        path = root / f"img_{i:03d}.png"
        if i % 12 == 5:
            path.write_bytes(b"\x89PNG\r\n\x1a\n corrupt")
        elif i % 12 == 7:
            buf = io.BytesIO()
            image_for(i).save(buf, format="PNG")
            path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        else:
            image_for(i).save(path)
        rows.append((path.name, caption_for(i)))
    with (root / "bad.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    return root / "bad.csv"


def test_bad_sample_counts_continue_across_a_resume(tmp_path):
    (tmp_path / "data").mkdir()
    csv_path = _write_bad_dataset(tmp_path / "data")
    source = SourceConfig(kind="csv", path=str(csv_path))
    data = DataConfig(sources=(source,), batch_size=8, seed=3, max_bad_fraction=0.5)
    straight = train(_config(tmp_path / "straight", csv_path, data=data))
    assert sum(straight.bad_samples.values()) > 0

    out = tmp_path / "resumed"
    first = train(_config(out, csv_path, data=data), stop_after_steps=3)
    assert 0 < sum(first.bad_samples.values()) < sum(straight.bad_samples.values())
    stored = torch.load(out / "checkpoints" / "step_000000003.pt", weights_only=True)["state"]
    assert stored["bad_samples"] == first.bad_samples and stored["good_samples"] > 0
    second = train(_config(out, csv_path, data=data))

    assert second.bad_samples == straight.bad_samples  # per file, the same as without the interruption
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_samples_total"] == sum(straight.bad_samples.values())
    assert _records(out)[-1]["bad_samples"] == summary["bad_samples_total"]
    assert [r["bad_samples"] for r in _records(out)] == [r["bad_samples"] for r in _records(tmp_path / "straight")]
