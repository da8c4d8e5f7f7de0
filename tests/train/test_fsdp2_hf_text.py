"""FSDP2 on two gloo CPU processes with a Hugging Face text tower (a tiny random XLM-R, tests/support/hf_text.py).

The trainer shards each `XLMRobertaLayer` as its own FSDP2 unit (train/sharding.py) besides the ViT blocks and both
towers. A few steps under `torchrun --nproc_per_node=2 --strategy=fsdp` must train (finite, decreasing loss on a
batch that is the whole dataset), and the checkpoint written under FSDP2 (full state dicts gathered from the shards)
must load into a plain, unsharded model with exactly the weights the run saved.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

import clipforge
from clipforge.models import CLIP, CLIPConfig, TextConfig, VisionConfig
from clipforge.train.checkpoint import list_checkpoints, load_checkpoint
from support.hf_text import make_hf_text_folder
from support.pairs import write_pair_dataset

pytest.importorskip("transformers")

STEPS = 4

RECIPE = """
from clipforge.data import DataConfig, SourceConfig
from clipforge.train.config import CheckpointConfig, LogConfig, ModelSpec, OptimConfig, ScheduleConfig, TrainConfig

def get_config(arg=None):
    return TrainConfig(
        output_dir=arg,
        model=ModelSpec(name={model!r}),
        data=DataConfig(sources=(SourceConfig(kind="csv", path={csv!r}),), batch_size=4, seed=1),
        optim=OptimConfig(lr=2e-3),
        schedule=ScheduleConfig(epochs=100, max_steps={steps}, warmup_steps=0, kind="constant"),
        checkpoint=CheckpointConfig(every_steps={steps}, keep_last=1),
        logging=LogConfig(every_steps=1, progress=False, plot=False),
    )
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-rank FSDP2 run of a tiny ViT + tiny XLM-R CLIP on 8 pairs (4 per rank: every step sees all 8)."""
    root = tmp_path_factory.mktemp("fsdp2_hf")
    folder, fields = make_hf_text_folder(root)
    text = TextConfig(context_length=20, hf_config=fields, hf_model_name=str(folder))
    vision = VisionConfig(image_size=32, layers=2, width=32, patch_size=16, heads=2)
    torch.manual_seed(0)
    init = clipforge.save_model(CLIP(CLIPConfig(embed_dim=16, vision=vision, text=text)), root / "init")
    (root / "data").mkdir()
    data = write_pair_dataset(root / "data", n=8, samples_per_shard=8)
    recipe = root / "recipe.py"
    recipe.write_text(RECIPE.format(model=f"local-dir:{init}", csv=str(data / "train.csv"), steps=STEPS))
    out = root / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "clipforge.cli.main", "train", str(recipe), "--arg", str(out),
        "--strategy=fsdp",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A new session, so that a hang kills the workers too.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]
    return init, out


def test_fsdp2_trains_the_hf_text_clip(run):
    _, out = run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert losses[STEPS] < losses[1], f"the loss did not decrease over {STEPS} steps on a fixed batch: {losses}"


def test_fsdp2_checkpoint_loads_into_a_plain_model(run):
    init, out = run
    saved = clipforge.load_model(out / "model")
    assert saved.config.text.is_hf
    (path,) = list_checkpoints(out / "checkpoints")
    payload = load_checkpoint(path)
    plain = CLIP(saved.config)  # unsharded, never wrapped
    plain.load_state_dict(payload["model"], strict=True)
    want, got = saved.state_dict(), plain.state_dict()
    assert sorted(want) == sorted(got)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    # The shards really trained: the XLM-R layers (each its own FSDP2 unit) and the image blocks moved.
    before = clipforge.load_model(init).state_dict()
    for key in ("text.transformer.encoder.layer.0.attention.self.query.weight",
                "text.transformer.encoder.layer.1.output.dense.weight",
                "visual.transformer.resblocks.1.mlp.c_fc.weight"):
        assert not torch.equal(before[key], got[key]), f"{key} did not change under FSDP2"
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.randint(3, 100, (2, 20))
    with torch.no_grad():
        features = plain.eval().encode_image(images), plain.encode_text(tokens)
    assert all(torch.isfinite(f).all() for f in features)
