"""Everyday mistakes end in ONE line `clipforge CMD: error: what; what to do` and a documented exit code.

No traceback unless --debug. Cases run in-process through `clipforge.cli.main.main` where they can, and in
real subprocesses for what only a process shows: broken pipes, signals, environment-dependent hub settings.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import clipforge
from clipforge.cli import errors
from clipforge.cli.common import resolve_device
from clipforge.cli.main import main as cli
from support.pairs import RECIPE, write_pair_dataset, write_recipe

SRC = str(Path(__file__).parents[2] / "src")
TESTS = str(Path(__file__).parents[1])


def one_error(err: str, command: str) -> str:
    """The single error line of `err` (asserting there is exactly one and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"clipforge {command}: error: ")]
    assert len(lines) == 1, err
    assert not [line for line in err.splitlines() if ": error: " in line and line not in lines], err
    return lines[0]


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(path)
    return str(path)


@pytest.fixture()
def saved_model(tmp_path):
    torch.manual_seed(0)
    clipforge.save_model(clipforge.create_model("tiny-vit"), tmp_path / "model")
    return str(tmp_path / "model")


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


# --- in-process: each mistake, its line and its code -------------------------------------------------------


def test_bad_checkpoint_file(image, tmp_path, capsys):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"this is not a checkpoint")
    assert cli(["classify", image, "--labels", "a,b", "--pretrained", str(bad)]) == errors.MODEL_ERROR
    assert str(bad) in one_error(capsys.readouterr().err, "classify")


def test_missing_pretrained_file(image, tmp_path, capsys):
    missing = str(tmp_path / "nowhere" / "model.safetensors")
    assert cli(["classify", image, "--labels", "a,b", "--pretrained", missing]) == errors.MODEL_ERROR
    assert missing in one_error(capsys.readouterr().err, "classify")


def test_missing_image_path(tmp_path, capsys):
    missing = str(tmp_path / "missing.jpg")
    code = cli(["classify", missing, "--labels", "a,b", "--model", "tiny-vit", "--no-progress"])
    assert code == errors.INPUT_NOT_FOUND
    err = capsys.readouterr().err
    assert f"clipforge classify: warning: skipped {missing}: no such file" in err
    line = one_error(err, "classify")
    assert "none of the 1 image(s) could be read" in line and "; check the paths" in line


def test_unknown_model_name(image, capsys):
    assert cli(["classify", image, "--labels", "a,b", "--model", "ViT-Q-99"]) == errors.MODEL_ERROR
    line = one_error(capsys.readouterr().err, "classify")
    assert "--model ViT-Q-99" in line and "clipforge models" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(image, capsys):
    assert cli(["embed", "--texts", "a", "--out", "x.npy", "--model", "tiny-vit", "--device", "cuda"]) == 2
    line = one_error(capsys.readouterr().err, "embed")
    assert "--device cuda: CUDA is not available" in line and "--device auto" in line


def test_device_auto_picks_the_best_available():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(errors.CliError, match="not a torch device"):
        resolve_device("gpu0")


def test_usage_errors_are_one_line(capsys):
    assert cli(["classify", "x.jpg"]) == errors.USAGE_ERROR  # --labels missing
    line = one_error(capsys.readouterr().err, "classify")
    assert "--labels" in line and "see clipforge classify --help" in line
    assert cli(["embed", "--texts", "a", "--out", "x.npy", "--batch-size", "many"]) == errors.USAGE_ERROR
    assert "--batch-size" in one_error(capsys.readouterr().err, "embed")


def test_bad_override_value_for_train(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe.py", tmp_path / "train.csv", 8, "epochs=1")
    code = cli(["train", str(recipe), "--arg", str(tmp_path / "run"), "--optim.lr", "abc"])
    assert code == errors.USAGE_ERROR
    assert "optim.lr" in one_error(capsys.readouterr().err, "train")


def test_missing_webdataset_shards_are_named(tmp_path, capsys):
    spec = str(tmp_path / "shards" / "shard-{000000..000003}.tar")
    text = RECIPE.format(csv=spec, batch_size=8, schedule="epochs=1").replace('kind="csv"', 'kind="wds"')
    (tmp_path / "recipe.py").write_text(text)
    code = cli(["train", str(tmp_path / "recipe.py"), "--arg", str(tmp_path / "run")])
    assert code == errors.INPUT_NOT_FOUND
    line = one_error(capsys.readouterr().err, "train")
    assert "4 of 4 shard(s) not found" in line and "shard-000000.tar" in line and "too few samples" not in line


def test_training_into_another_models_folder(tmp_path, capsys):
    from clipforge.train.checkpoint import TrainState, save_checkpoint

    write_pair_dataset(tmp_path, n=16, samples_per_shard=16)
    out = tmp_path / "run"

    class _Scheduler:
        def state_dict(self) -> dict:
            return {}

    other = clipforge.create_model("tiny-rn")  # an earlier run of another architecture in the same folder
    save_checkpoint(out / "checkpoints", TrainState(step=5), other.state_dict(), {}, _Scheduler(), 1)
    (out / "config.json").write_text('{"the": "other run"}')
    recipe = write_recipe(tmp_path / "recipe.py", tmp_path / "train.csv", 8, "epochs=1, max_steps=1")
    assert cli(["train", str(recipe), "--arg", str(out)]) == errors.MODEL_ERROR
    line = one_error(capsys.readouterr().err, "train")
    assert f"{out} holds a checkpoint of a different model (step_000000005.pt: " in line
    assert f"use a new --output_dir or delete {out}" in line
    assert len(line) < 1000  # a summary, not hundreds of state-dict keys
    assert (out / "config.json").read_text() == '{"the": "other run"}'  # the other run's config is kept


def test_csv_column_errors_name_the_flags(tmp_path, capsys):
    table = tmp_path / "pairs.csv"
    table.write_text("filepath,caption\na.png,a cat\n")
    argv = ["data", "make-shards", "--from-csv", str(table), "--out", str(tmp_path / "out")]
    assert cli(argv) == errors.USAGE_ERROR
    line = one_error(capsys.readouterr().err, "data")
    assert "--caption-column 'title'" in line and "'caption'" in line and "SourceConfig" not in line
    assert cli([*argv, "--caption-column", "caption", "--no-progress"]) == errors.RUNTIME_ERROR  # a.png is absent
    assert "no usable input" in one_error(capsys.readouterr().err, "data")


def test_embed_says_which_inputs_were_skipped_and_why(image, saved_model, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "emb.npy"
    argv = ["embed", "--images", image, str(broken), str(tmp_path / "gone.png"), "--out", str(out)]
    assert cli([*argv, "--pretrained", saved_model, "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert f"clipforge embed: warning: skipped {tmp_path / 'gone.png'}: no such file" in err
    assert any(line.startswith(f"clipforge embed: warning: skipped {broken}: ") for line in err)
    listed = [json.loads(line) for line in (tmp_path / "emb.npy.skipped.jsonl").read_text().splitlines()]
    assert [item["image"] for item in listed] == [str(broken), str(tmp_path / "gone.png")]
    assert json.loads((tmp_path / "emb.npy.json").read_text())["rows"] == [image]


def test_interrupt_is_130_and_one_line(image, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("clipforge.cli.common.resolve_device", interrupted)
    assert cli(["classify", image, "--labels", "a", "--model", "tiny-vit"]) == errors.INTERRUPTED
    assert one_error(capsys.readouterr().err, "classify") == "clipforge classify: error: interrupted"


def test_unknown_errors_point_to_debug_and_debug_shows_the_traceback(image, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr("clipforge.cli.common.resolve_device", broken)
    argv = ["classify", image, "--labels", "a", "--model", "tiny-vit"]
    assert cli(argv) == errors.RUNTIME_ERROR
    line = one_error(capsys.readouterr().err, "classify")
    assert line == (
        "clipforge classify: error: RuntimeError: something unforeseen; run with --debug for the traceback"
    )
    for debug_argv in ([*argv, "--debug"], ["--debug", *argv]):  # after the subcommand, or before it
        assert cli(debug_argv) == errors.RUNTIME_ERROR
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "RuntimeError: something unforeseen" in err


def test_quiet_hides_warnings_and_help_lists_the_exit_codes(image, capsys):
    assert cli(["-q", "classify", image, "--labels", "a,b", "--model", "tiny-vit"]) == 0
    assert capsys.readouterr().err == ""
    assert cli(["--help"]) == 0
    usage = capsys.readouterr().out
    for code in (0, 1, 2, 3, 4, 130):
        assert f"\n  {code:<4} " in usage
    assert "--debug" in usage and "--device auto" in usage


# --- real processes: pipes, signals, hub settings -------------------------------------------------------


def test_broken_pipe_exits_quietly():
    """The reader is gone before the first write (`clipforge models | head -0`): no traceback, no noise."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipforge.cli.main", "models", "--pretrained"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    proc.stdout.close()  # the only reader of the pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == errors.BROKEN_PIPE, err
    assert err == "", err


def test_offline_hub_fails_fast_and_names_hf_hub_offline(image, tmp_path):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = textwrap.dedent(
        f"""
        import time
        from clipforge.cli.main import main
        start = time.monotonic()
        code = main(["classify", {image!r}, "--labels", "a,b", "--pretrained", "hf-hub:org/tiny-model"])
        print(f"seconds={{time.monotonic() - start:.2f}} code={{code}}")
        """
    )
    env = _env(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_CACHE=str(tmp_path / "cache"))
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    seconds = float(result.stdout.split("seconds=")[1].split()[0])
    assert f"code={errors.MODEL_ERROR}" in result.stdout, result.stdout + result.stderr
    assert seconds < 10, seconds
    line = one_error(result.stderr, "classify")
    assert "unreachable" in line and "HF_HUB_OFFLINE=1" in line and "org/tiny-model" in line


def test_sigint_during_training_checkpoints_and_exits_130(tmp_path):
    write_pair_dataset(tmp_path, n=32, samples_per_shard=32)
    recipe = write_recipe(tmp_path / "recipe.py", tmp_path / "train.csv", 8, "epochs=400, max_steps=2000")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "clipforge.cli.main", "train", str(recipe), "--arg", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == errors.INTERRUPTED, err
    assert "Traceback" not in err, err
    assert "clipforge train: interrupted at step " in err and "rerun the same command to resume" in err
    assert list((out / "checkpoints").glob("step_*.pt"))


def test_a_second_ctrl_c_stops_training_at_once():
    """The first SIGINT asks for a checkpoint at the end of the step; a second one does not wait."""
    from clipforge.train.loop import StopSignal

    with StopSignal() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
