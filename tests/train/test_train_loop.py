"""The trainer end to end on small captioned data: exact resume, bad samples, NaN policy, locking, phases."""

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import clipforge
from clipforge.data import DataConfig, SourceConfig
from clipforge.train.config import (
    CheckpointConfig,
    EvalConfig,
    LogConfig,
    ModelSpec,
    OptimConfig,
    PhaseConfig,
    ScheduleConfig,
    TrainConfig,
)
from clipforge.train.loop import TrainingError, train
from support.pairs import caption_for, image_for, write_pair_dataset, write_recipe


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_pair_dataset(tmp_path_factory.mktemp("pairs"))


MODEL = ModelSpec(name="tiny-vit", overrides={"vision": {"patch_dropout": 0.25}})  # patch dropout draws from RNG


def _config(out, source: SourceConfig, **changes) -> TrainConfig:
    base = TrainConfig(
        output_dir=str(out),
        model=MODEL,
        data=DataConfig(sources=(source,), batch_size=8, seed=3),
        optim=OptimConfig(lr=1e-3),
        schedule=ScheduleConfig(epochs=2, max_steps=14, warmup_steps=2),
        checkpoint=CheckpointConfig(every_steps=3, keep_last=2),
        logging=LogConfig(every_steps=1, progress=False, plot=False),
    )
    return base.replace(**changes)


def _losses(out) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _sources(dataset):
    return {
        "csv": SourceConfig(kind="csv", path=str(dataset / "train.csv")),
        "wds": SourceConfig(kind="wds", path=str(dataset / "shards" / "shard-{000000..000002}.tar"), shuffle_buffer=16),
    }


@pytest.mark.parametrize("kind", ["csv", "wds"])
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, dataset, kind):
    source = _sources(dataset)[kind]
    straight = train(_config(tmp_path / "straight", source))
    assert not straight.interrupted and straight.state.step == 14
    assert straight.state.epoch >= 1  # the run crossed an epoch boundary (12 batches per epoch)

    first = train(_config(tmp_path / "resumed", source), stop_after_steps=8)  # pre-empted mid-epoch
    assert first.interrupted and first.state.step == 8
    second = train(_config(tmp_path / "resumed", source))
    assert not second.interrupted and second.state.step == 14

    expected, got = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(got) == list(range(1, 15))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    a = clipforge.load_model(tmp_path / "straight" / "model").state_dict()
    b = clipforge.load_model(tmp_path / "resumed" / "model").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_checkpoints_keep_last_k_and_a_damaged_newest_falls_back(tmp_path, dataset):
    cfg = _config(tmp_path / "run", _sources(dataset)["csv"])
    train(cfg, stop_after_steps=7)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_000000006.pt", "step_000000007.pt"]
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:1000])  # a crash left the newest unreadable
    result = train(cfg)
    assert result.state.step == 14
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["state"]["step"] == 14


def _write_bad_dataset(root):
    rows = []
    for i in range(48):
        path = root / f"img_{i:03d}.png"
        if i % 12 == 5:
            path.write_bytes(b"\x89PNG\r\n\x1a\n corrupt")  # corrupt image
        elif i % 12 == 7:
            buf = io.BytesIO()
            image_for(i).save(buf, format="PNG")
            path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated image
        else:
            image_for(i).save(path)
        caption = "" if i % 12 == 9 else caption_for(i)  # empty caption
        rows.append((path.name, caption))
    with (root / "bad.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    return root / "bad.csv"


def test_corrupt_images_and_empty_captions_are_skipped_and_counted(tmp_path):
    (tmp_path / "data").mkdir()
    csv_path = _write_bad_dataset(tmp_path / "data")
    cfg = _config(tmp_path / "run", SourceConfig(kind="csv", path=str(csv_path)))
    cfg = cfg.replace(data=DataConfig(sources=cfg.data.sources, batch_size=8, max_bad_fraction=0.5))
    result = train(cfg)
    assert result.state.step == 12  # 6 batches per epoch x 2 epochs: bad samples are replaced, not dropped
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["bad_samples_total"] >= 12  # 3 bad kinds x 4 each, seen once per epoch or more
    assert sum(result.bad_samples.values()) == summary["bad_samples_total"]
    last = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["bad_samples"] == summary["bad_samples_total"]


def test_too_many_bad_samples_stops_with_an_error_naming_the_file(tmp_path):
    (tmp_path / "data").mkdir()
    csv_path = _write_bad_dataset(tmp_path / "data")
    cfg = _config(tmp_path / "run", SourceConfig(kind="csv", path=str(csv_path)))
    cfg = cfg.replace(data=DataConfig(sources=cfg.data.sources, batch_size=8, max_bad_fraction=0.05))
    cfg = cfg.replace(schedule=ScheduleConfig(epochs=40, max_steps=None))
    with pytest.raises(TrainingError, match="bad"):
        train(cfg)


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_non_finite_loss_policy(tmp_path, dataset, monkeypatch, policy):
    import clipforge.train.step as step_module

    real = step_module.clip_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(step_module, "clip_loss", flaky)
    cfg = _config(tmp_path / "run", _sources(dataset)["csv"], nan_policy=policy)
    if policy == "stop":
        with pytest.raises(TrainingError, match="non-finite loss .* at step 3"):
            train(cfg)
        return
    result = train(cfg)
    assert result.state.skipped_nan_steps == 1 and result.state.step == 14
    assert all(math.isfinite(p.sum().item()) for p in clipforge.load_model(tmp_path / "run" / "model").parameters())


def test_locked_image_tower_does_not_change(tmp_path, dataset):
    torch.manual_seed(0)
    init = clipforge.create_model("tiny-vit")
    clipforge.save_model(init, tmp_path / "init")
    spec = ModelSpec(name="tiny-vit", pretrained=str(tmp_path / "init"), lock_image=True)
    cfg = _config(tmp_path / "run", _sources(dataset)["csv"], model=spec)
    train(cfg.replace(schedule=ScheduleConfig(epochs=1, max_steps=4)))
    trained = clipforge.load_model(tmp_path / "run" / "model")
    before, after = init.state_dict(), trained.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("text."))


def test_clipa_phases_train_at_reduced_size_then_full(tmp_path, dataset, monkeypatch):
    import clipforge.train.loop as loop_module

    seen = []
    real = loop_module.run_step

    def spy(model, micro, *args, **kwargs):
        seen.append((micro[0][0].shape[-1], micro[0][1].shape[1]))
        return real(model, micro, *args, **kwargs)

    monkeypatch.setattr(loop_module, "run_step", spy)
    phases = (PhaseConfig(fraction=0.5, image_size=16, context_length=8), PhaseConfig(fraction=0.5))
    cfg = _config(tmp_path / "run", _sources(dataset)["csv"], phases=phases)
    train(cfg.replace(schedule=ScheduleConfig(epochs=1, max_steps=6)))
    assert seen == [(16, 8)] * 3 + [(32, 77)] * 3


def test_sigterm_checkpoints_and_the_same_command_resumes(tmp_path, dataset):
    recipe = tmp_path / "recipe.py"
    write_recipe(recipe, dataset / "train.csv", 8, "epochs=40, max_steps=400")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "clipforge.cli.main", "train", str(recipe), "--arg", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training is under way
        jsonl = out / "metrics.jsonl"
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output
    ckpts = list((out / "checkpoints").glob("step_*.pt"))
    assert len(ckpts) == 1
    stopped_at = int(ckpts[0].stem.split("_")[1])
    assert 3 <= stopped_at < 400
    resumed = subprocess.run(
        cmd + ["--schedule.max_steps=" + str(stopped_at + 3)], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert max(_losses(out)) == stopped_at + 3


def test_distillation_from_a_frozen_teacher(tmp_path, dataset, monkeypatch):
    """model.teacher adds the CLIP-KD term; the teacher is frozen and its weights never change."""
    import clipforge.train.step as step_module

    torch.manual_seed(1)
    teacher = clipforge.create_model("tiny-vit")
    clipforge.save_model(teacher, tmp_path / "teacher")
    calls = []
    real = step_module.distillation_loss

    def spy(*args, **kwargs):
        value = real(*args, **kwargs)
        calls.append(float(value))
        return value

    monkeypatch.setattr(step_module, "distillation_loss", spy)
    spec = ModelSpec(name="tiny-vit", teacher=str(tmp_path / "teacher"))
    cfg = _config(tmp_path / "run", _sources(dataset)["csv"], model=spec)
    result = train(cfg.replace(schedule=ScheduleConfig(epochs=1, max_steps=3)))
    assert result.state.step == 3 and len(calls) == 3 and all(c > 0 for c in calls)
    after = clipforge.load_model(tmp_path / "teacher").state_dict()
    assert all(torch.equal(v, after[k]) for k, v in teacher.state_dict().items())


def test_pure_bf16_with_grad_checkpointing_and_retrieval_eval(tmp_path, dataset):
    spec = ModelSpec(name="tiny-vit", grad_checkpointing=True)
    source = _sources(dataset)["csv"]
    cfg = _config(tmp_path / "run", source, model=spec, precision="pure_bf16")
    cfg = cfg.replace(
        schedule=ScheduleConfig(epochs=1, max_steps=4),
        eval=EvalConfig(every_steps=2, retrieval=source, retrieval_max_samples=40),
    )
    result = train(cfg)
    assert result.state.step == 4
    assert set(result.final_metrics) >= {"retrieval_image_to_text_R@1", "retrieval_text_to_image_R@10"}
    assert all(0.0 <= v <= 1.0 for v in result.final_metrics.values())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/retrieval_image_to_text_R@1" in r] == [2, 4]
    assert clipforge.load_model(tmp_path / "run" / "model").logit_scale.dtype == torch.float32


def test_tensorboard_and_wandb_sinks_receive_the_metrics(tmp_path, dataset, monkeypatch):
    """Both sinks are optional packages; fakes stand in for them and record what the monitor sends."""
    import types

    events = {"tb": [], "wandb": []}

    class FakeWriter:
        def __init__(self, logdir):
            events["tb_dir"] = logdir

        def add_scalar(self, key, value, step):
            events["tb"].append((key, step))

        def close(self):
            events["tb_closed"] = True

    fake_wandb = types.SimpleNamespace(
        init=lambda **kw: types.SimpleNamespace(
            log=lambda data, step: events["wandb"].append((tuple(sorted(data)), step)),
            finish=lambda: events.setdefault("wandb_finished", True),
        )
    )
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    cfg = _config(tmp_path / "run", _sources(dataset)["csv"])
    cfg = cfg.replace(
        schedule=ScheduleConfig(epochs=1, max_steps=3),
        logging=LogConfig(every_steps=1, progress=False, plot=False, tensorboard=True, wandb="proj"),
    )
    train(cfg)
    assert ("loss", 3) in events["tb"] and events["tb_closed"]
    assert events["tb_dir"].endswith("tensorboard")
    assert [step for _, step in events["wandb"]] == [1, 2, 3] and events["wandb_finished"]


def test_missing_optional_logger_is_a_clear_error(tmp_path, dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    cfg = _config(tmp_path / "run", _sources(dataset)["csv"])
    cfg = cfg.replace(logging=LogConfig(progress=False, wandb="proj"))
    with pytest.raises(ImportError, match="pip install wandb"):
        train(cfg)


def test_lock_with_unlocked_groups():
    from clipforge.train.freeze import lock_image_tower, lock_text_tower

    model = clipforge.create_model("tiny-vit")
    lock_image_tower(model, unlocked_groups=1)
    lock_text_tower(model, unlocked_layers=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in trainable
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" not in trainable
    assert {"visual.proj", "visual.ln_post.weight", "text.text_projection", "text.ln_final.weight"} <= trainable
    assert "text.token_embedding.weight" not in trainable and "logit_scale" in trainable
    rn = clipforge.create_model("tiny-rn")
    lock_image_tower(rn, unlocked_groups=1)
    assert {n.split(".")[1] for n, p in rn.visual.named_parameters(prefix="visual") if p.requires_grad} == {
        "layer4",
        "attnpool",
    }


@pytest.mark.parametrize("limit", [None, 1000, 7])
def test_retrieval_eval_keeps_every_pair_of_a_small_held_out_set(tmp_path, dataset, limit):
    from clipforge.train.evaluation import PeriodicEvaluator

    lines = (dataset / "train.csv").read_text().splitlines()
    held_out = tmp_path / "val.csv"  # 13 pairs: fewer than one batch of 256 and prime, so no batch size but 1 or 13
    held_out.write_text("\n".join([lines[0]] + [f"{dataset / line}" for line in lines[1:14]]) + "\n")
    model = clipforge.create_model("tiny-vit")
    cfg = EvalConfig(retrieval=SourceConfig(kind="csv", path=str(held_out)), retrieval_max_samples=limit)
    evaluator = PeriodicEvaluator(cfg, model, clipforge.get_tokenizer(model), torch.device("cpu"), None)
    images, tokens = evaluator._load_retrieval()
    expected = 13 if limit is None or limit > 13 else limit
    assert images.shape[0] == tokens.shape[0] == expected
    assert set(evaluator()) >= {"retrieval_image_to_text_R@1", "retrieval_text_to_image_R@10"}
