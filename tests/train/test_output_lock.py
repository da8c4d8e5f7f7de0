"""The output-folder lock (clipforge.locking): a second writer gets a clear error, a killed holder frees it.

Two jobs writing one folder is a silent corruption (interleaved metrics.jsonl, wrong sizes.json), so
the lock must refuse at once, name the holder, and never outlive its holder (flock dies with the fd).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from clipforge.cli.errors import RUNTIME_ERROR, format_error
from clipforge.locking import LOCK_NAME, FolderInUseError, output_lock

_HOLDER = """
import sys, time
from clipforge.locking import output_lock
with output_lock(sys.argv[1], what="clipforge test-holder"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _spawn_holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_lock_in_one_process_is_refused_and_names_the_holder(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, what="clipforge train") as path:
        assert path == out / LOCK_NAME
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["what"] == "clipforge train"
        with pytest.raises(FolderInUseError) as info:
            with output_lock(out, what="clipforge train"):
                pytest.fail("a second holder got the lock")
        message = str(info.value)
        assert f"{out} is in use by another clipforge train (pid {os.getpid()} on " in message
        assert "wait for it or use another --output_dir" in message
    # Released: the next job gets it, and the file no longer names a holder.
    assert (out / LOCK_NAME).read_text() == ""
    with output_lock(out):
        pass


def test_lock_held_by_another_process_then_freed_by_kill_9(tmp_path):
    proc = _spawn_holder(tmp_path)
    try:
        with pytest.raises(FolderInUseError) as info:
            with output_lock(tmp_path, what="clipforge make-shards", hint="use another --output"):
                pass
        assert f"another clipforge test-holder (pid {proc.pid} on " in str(info.value)
        assert str(info.value).endswith("use another --output")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # No cleanup by hand: the kernel dropped the flock with the killed process's file descriptor.
    deadline = time.monotonic() + 10
    while True:
        try:
            with output_lock(tmp_path, what="clipforge train"):
                break
        except FolderInUseError:
            assert time.monotonic() < deadline, "lock still held 10 s after kill -9 of its holder"
            time.sleep(0.1)


def test_cli_reports_folder_in_use_as_one_line(tmp_path):
    error = FolderInUseError(tmp_path, {"pid": 42, "host": "node7", "what": "clipforge train"}, "wait for it")
    code, line = format_error("clipforge train", error)
    assert code == RUNTIME_ERROR
    expected = f"{tmp_path} is in use by another clipforge train (pid 42 on node7); wait for it"
    assert line == f"clipforge train: error: {expected}"



def test_a_second_train_into_a_running_trains_folder_is_refused(tmp_path, capsys):
    """Two `clipforge train` runs into one folder: the second stops at once with one line naming the first."""
    from clipforge.cli.main import main as cli
    from support.pairs import write_pair_dataset, write_recipe

    (tmp_path / "data").mkdir()
    write_pair_dataset(tmp_path / "data", n=32)
    recipe = write_recipe(tmp_path / "recipe.py", tmp_path / "data" / "train.csv", 8, "epochs=100, max_steps=400")
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    cmd = [sys.executable, "-m", "clipforge.cli.main", "train", str(recipe), "--arg", str(out)]
    first = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start training"
            time.sleep(0.2)
        capsys.readouterr()
        assert cli(["train", str(recipe), "--arg", str(out), "--schedule.max_steps=2"]) == RUNTIME_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        expected = f"clipforge train: error: {out} is in use by another clipforge train (pid {first.pid} on "
        assert len(err) == 1 and err[0].startswith(expected), err
        assert err[0].endswith("wait for it or use another --output_dir")
        assert first.poll() is None  # the first run goes on, its history untouched by the second
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        assert steps == list(range(1, len(steps) + 1))
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143
    # The lock went with the first run: the same command now resumes it.
    assert cli(["train", str(recipe), "--arg", str(out), f"--schedule.max_steps={max(steps) + 1}"]) == 0


def test_a_run_removes_the_temporaries_a_killed_run_left(tmp_path):
    """kill -9 in the middle of an atomic write leaves a hidden temporary; the next run (holding the lock) removes
    it, and leaves every other file alone."""
    from clipforge.cli.main import main as cli
    from support.pairs import write_pair_dataset, write_recipe

    (tmp_path / "data").mkdir()
    write_pair_dataset(tmp_path / "data", n=16)
    recipe = write_recipe(tmp_path / "recipe.py", tmp_path / "data" / "train.csv", 8, "epochs=1, max_steps=1")
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / ".config.json.x1.clipforge-partial.tmp", out / "checkpoints" / ".step_9.pt.x2.clipforge-partial.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    kept = out / "notes.txt"
    kept.write_text("mine")
    assert cli(["train", str(recipe), "--arg", str(out), "--no-progress"]) == 0
    assert not any(path.exists() for path in stale)
    assert kept.read_text() == "mine"
