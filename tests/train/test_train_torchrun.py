"""The trainer under torchrun: two CPU processes with gloo, DDP and FSDP2, including resume.

DDP and FSDP2 must train identically (both give the exact full-batch gradient with the default
local_loss + gather_with_grad), and a run stopped and resumed under torchrun must continue exactly.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

import clipforge
from support.pairs import write_pair_dataset, write_recipe
from support.tolerance import assert_close_rel


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    (root / "data").mkdir()
    write_pair_dataset(root / "data")
    path = root / "recipe.py"
    write_recipe(path, root / "data" / "train.csv", 4, 'epochs=4, max_steps=6, kind="constant"')
    return path


def _torchrun(recipe, out, *overrides, timeout=300):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "clipforge.cli.main",
        "train",
        str(recipe),
        "--arg",
        str(out),
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A new session, so that a hang (the failure some of these tests exist for) kills the workers too.
    pipe = subprocess.PIPE
    proc = subprocess.Popen(cmd, env=env, stdout=pipe, stderr=pipe, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _losses(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_ddp_and_fsdp_train_identically_and_resume(recipe, tmp_path):
    _torchrun(recipe, tmp_path / "ddp", "--strategy=ddp")
    _torchrun(recipe, tmp_path / "fsdp", "--strategy=fsdp")
    ddp, fsdp = _losses(tmp_path / "ddp"), _losses(tmp_path / "fsdp")
    assert sorted(ddp) == sorted(fsdp) == list(range(1, 7))
    for step in ddp:
        assert fsdp[step] == pytest.approx(ddp[step], rel=1e-5), step
    a = clipforge.load_model(tmp_path / "ddp" / "model").state_dict()
    b = clipforge.load_model(tmp_path / "fsdp" / "model").state_dict()
    for key in a:  # gradients reduced in another order (all-reduce vs reduce-scatter), then 6 AdamW steps
        assert_close_rel(b[key], a[key], rel=1e-4, what=f"{key} after FSDP vs DDP training")

    # Stop after 3 steps, then resume to 6 under FSDP: same losses as the uninterrupted run.
    _torchrun(recipe, tmp_path / "resumed", "--strategy=fsdp", "--schedule.max_steps=3")
    _torchrun(recipe, tmp_path / "resumed", "--strategy=fsdp")
    resumed = _losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 7))
    for step in fsdp:
        assert resumed[step] == pytest.approx(fsdp[step], rel=1e-5), step


def test_fsdp_run_evaluates_periodically_and_at_the_end_then_rank_0_alone_reports(recipe, tmp_path):
    """FSDP2's forward all-gathers parameters, so an evaluation on rank 0 alone used to wait forever.

    With zero-shot evaluation on (every 2 steps and at the end), the run must finish within the timeout
    (a hang fails as TimeoutExpired), log the metrics, and print one "done:" line (rank 0's), not one per rank.
    """
    out = tmp_path / "fsdp_eval"
    result = _torchrun(
        recipe,
        out,
        "--strategy=fsdp",
        "--schedule.max_steps=4",
        "--eval.zeroshot=fashion_mnist",
        "--eval.zeroshot_max_samples=64",
        "--eval.every_steps=2",
        timeout=240,
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/zeroshot_top1" in r] == [2, 4]
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["final_metrics"]["zeroshot_top1"] <= 1.0
    done = [line for line in result.stdout.splitlines() if line.startswith("done:")]
    assert len(done) == 1, result.stdout
    assert "zeroshot_top1" in done[0] and f"model saved to {out / 'model'}" in done[0]
