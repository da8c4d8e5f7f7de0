"""The trainer under torchrun: two CPU processes with gloo, DDP and FSDP2, including resume.

DDP and FSDP2 must train identically (both give the exact full-batch gradient with the default
local_loss + gather_with_grad), and a run stopped and resumed under torchrun must continue exactly.
"""

import json
import os
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


def _torchrun(recipe, out, *overrides):
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
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
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
