"""Worker for tests/models/test_fastvit.py: a tiny FastViT CLIP image tower under FSDP2 on 2 gloo CPU processes.

Run: python tests/models/fastvit_fsdp_worker.py PORT OUT_FILE

Each rank shards the model as the trainer does (train/sharding.py: every FastViT block, then both towers), takes its
own 2 images (seeded by rank), runs forward and backward in training mode (BatchNorm on batch statistics) and rank 0
writes OUT_FILE (safetensors) with the full gradients of a few parameters; the test redoes both ranks' batches in
one process and compares (FSDP2 averages gradients over ranks).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

from clipforge.models import CLIP, get_model_config
from clipforge.models.config import VisionConfig

CHECKED = (
    "visual.head.fc.weight",
    "visual.stem.0.conv_kxk.0.conv.weight",
    "visual.stages.3.blocks.0.token_mixer.qkv.weight",
)


def tiny_fastvit() -> CLIP:
    """The same tiny model on every rank and in the test (seeded): MCi0-style, 4 stages of one block, 32 px."""
    cfg = get_model_config("MobileCLIP2-S0")
    vision = VisionConfig(image_size=32, layers=(1, 1, 1, 1), width=8, patch_size=4, mlp_ratio=2.0, pool_type="avg",
                          fastvit="mci")
    text = cfg.text.__class__(**{**cfg.text.__dict__, "width": 32, "heads": 2, "layers": 1})
    torch.manual_seed(0)
    return CLIP(cfg.replace(embed_dim=16, vision=vision, text=text))


def images(rank: int) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(rank))


def _run(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.fsdp import fully_shard

    from clipforge.train.sharding import _sharded_units

    model = tiny_fastvit().train()
    for unit in _sharded_units(model):
        fully_shard(unit)
    model.encode_image(images(rank)).pow(2).sum().backward()
    params = dict(model.named_parameters())
    grads = {name: params[name].grad.full_tensor().contiguous() for name in CHECKED}
    if rank == 0:
        save_file(grads, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_run, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
