"""How the model is spread over ranks: DDP (replicated) or FSDP2 (sharded towers), and full state dicts.

DDP keeps a whole replica per rank and averages gradients. FSDP2 (`torch.distributed.fsdp.fully_shard`)
shards every transformer block and both towers across ranks, for towers too big for one device. The
0-dim temperature and bias cannot be sharded by FSDP2, so they stay replicated and their gradients
are averaged by hand before each optimizer step. Checkpoints always hold full (unsharded) state
dicts, gathered to CPU, so a run can resume under the same strategy and a saved model loads anywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.distributed as torch_dist
from torch import nn

from ..models.clip import CLIP
from .distributed import DistInfo

Strategy = Literal["ddp", "fsdp"]
_REPLICATED = ("logit_scale", "logit_bias")


def _tower_units(tower: nn.Module) -> list[nn.Module]:
    """A tower's own FSDP2 units: the blocks it names (`shard_units`: ConvNeXt, FastViT, ResNet, Hugging Face
    encoders, whose block lists live under different names), else a transformer tower's residual blocks."""
    if hasattr(tower, "shard_units"):
        return list(tower.shard_units())
    return list(tower.transformer.resblocks)


def _sharded_units(model: CLIP) -> list[nn.Module]:
    """Every block of both towers, then the towers themselves (whose remaining parameters form one unit each)."""
    return _tower_units(model.visual) + _tower_units(model.text) + [model.visual, model.text]


def uses_fsdp(strategy: Strategy, dist: DistInfo) -> bool:
    """Whether the model is sharded: the fsdp strategy with more than one process."""
    return strategy == "fsdp" and dist.world_size > 1


def wrap_model(model: CLIP, strategy: Strategy, dist: DistInfo) -> tuple[nn.Module, Callable | None]:
    """(module to call in the training step, a no-gradient-sync context factory for accumulation)."""
    if dist.world_size == 1:
        return model, None
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        units = _sharded_units(model)
        for unit in units:
            fully_shard(unit)

        @contextlib.contextmanager
        def no_sync():
            for unit in units:
                unit.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                for unit in units:
                    unit.set_requires_gradient_sync(True)

        return model, no_sync
    ids = [dist.local_rank] if dist.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return ddp, ddp.no_sync


def sync_replicated_grads(model: CLIP, strategy: Strategy, dist: DistInfo) -> None:
    """Average the gradients of the unsharded scalars across ranks (FSDP only; DDP does it itself)."""
    if not uses_fsdp(strategy, dist):
        return
    for name in _REPLICATED:
        param = getattr(model, name, None)
        if isinstance(param, nn.Parameter) and param.grad is not None:
            torch_dist.all_reduce(param.grad)
            param.grad /= dist.world_size


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: CLIP, strategy: Strategy, dist: DistInfo) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU (a collective under FSDP: every rank must call it)."""
    if uses_fsdp(strategy, dist):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_options(cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def full_optimizer_state(model: CLIP, optimizer: torch.optim.Optimizer, strategy: Strategy, dist: DistInfo) -> dict:
    """The full (unsharded) optimizer state for a checkpoint, whatever the strategy."""
    if uses_fsdp(strategy, dist):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    return optimizer.state_dict()


def load_full_states(
    model: CLIP, optimizer: torch.optim.Optimizer, payload: dict[str, Any], strategy: Strategy, dist: DistInfo
) -> None:
    """Restore model and optimizer from a checkpoint's full state dicts, whichever strategy is active."""
    if uses_fsdp(strategy, dist):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(model, payload["model"], options=_options())
        set_optimizer_state_dict(model, optimizer, payload["optimizer"], options=_options())
        return
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
