"""Worker for tests/train/test_towers_training_matrix.py: a tiny ConvNeXt CLIP under FSDP2 on 2 gloo CPU processes.

Run: python tests/models/convnext_fsdp_worker.py PORT OUT_FILE

Each rank shards the model as the trainer does (train/sharding.py: every ConvNeXt block and text block, then both
towers), takes its own batch (seeded by rank), runs forward and backward in training mode, and rank 0 writes
OUT_FILE (safetensors) with both ranks' losses (`loss`, shape (2,)) and the full gradients of a few parameters; the
test redoes both ranks' batches in one process and compares (FSDP2 averages gradients over ranks).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

from clipforge.models import CLIP, get_model_config

CHECKED = (
    "visual.stem.0.weight",
    "visual.stages.0.blocks.0.conv_dw.weight",
    "visual.stages.2.blocks.1.mlp.fc1.weight",
    "visual.stages.3.downsample.1.weight",
    "visual.head.proj.weight",
    "text.transformer.resblocks.0.attn.in_proj_weight",
    "text.token_embedding.weight",
)


def tiny_convnext() -> CLIP:
    """The same tiny model on every rank and in the test (seeded): the registry's tiny-convnext (64 px)."""
    torch.manual_seed(0)
    return CLIP(get_model_config("tiny-convnext"))


def loss(model: CLIP, rank: int) -> torch.Tensor:
    """Rank `rank`'s scalar loss on its own 2 images (2, 3, 64, 64) and 2 token rows (2, 77), reaching both towers."""
    gen = torch.Generator().manual_seed(rank)
    images = torch.randn(2, 3, 64, 64, generator=gen)
    tokens = torch.randint(1, 1000, (2, 77), generator=gen)
    return model.encode_image(images).pow(2).sum() + model.encode_text(tokens).pow(2).sum()


def _run(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.fsdp import fully_shard

    from clipforge.train.sharding import _sharded_units

    model = tiny_convnext().train()
    for unit in _sharded_units(model):
        fully_shard(unit)
    value = loss(model, rank)
    value.backward()
    losses = [torch.zeros(()) for _ in range(2)]
    dist.all_gather(losses, value.detach())
    params = dict(model.named_parameters())
    grads = {name: params[name].grad.full_tensor().contiguous() for name in CHECKED}
    if rank == 0:
        save_file({**grads, "loss": torch.stack(losses)}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_run, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
