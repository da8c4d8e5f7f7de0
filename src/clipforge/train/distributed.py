"""Process-group setup and the collectives that contrastive training needs, one CPU to many GPU nodes.

This file owns everything that knows about ranks (DESIGN.md, "Boundaries"): `init_distributed` reads the
environment `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and returns a
frozen `DistInfo` that callers pass explicitly to losses and the trainer; nothing below looks the rank up
by itself. Without a launcher it returns a single-process `DistInfo` and creates no process group, and
every collective here is then a no-op, so the same code runs as one CPU process and as thousands of GPU
processes.

The feature gathers follow open_clip's `gather_features` (mlfoundations/open_clip, src/open_clip/loss.py);
the ring exchange is the one its `SigLipLoss` uses for the chunked sigmoid loss (Zhai et al. 2023,
"Sigmoid Loss for Language Image Pre-Training", Sec. 3.3), written here as autograd functions so that
gradients travel back to the rank that owns each chunk.

Launch:  torchrun --nproc_per_node=8 --nnodes=$N --node_rank=$R --master_addr=$HOST --master_port=29500 ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as tdist
from torch.autograd.function import FunctionCtx

__all__ = [
    "DistInfo",
    "all_gather_features",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "init_distributed",
    "neighbour_exchange",
    "neighbour_exchange_bidir",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job. Derived run state, never part of a config (STYLE.md rule 6).

    Fields:
    rank: global index of this process, 0 <= rank < world_size.
    local_rank: index on this node; selects the GPU.
    world_size: number of processes; 1 means no process group and no-op collectives.
    device: the device this process computes on.
    backend: the process group's backend ("nccl", "gloo"), None when no group was created.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        if self.local_rank < 0:
            raise ValueError(f"local_rank must be >= 0, got {self.local_rank}")

    @property
    def is_main(self) -> bool:
        """True on the one process that logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def _under_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _resolve_device(device: str | None, local_rank: int) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    index = local_rank if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"cuda:{index} requested but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda", index)


def init_distributed(device: str | None = None) -> DistInfo:
    """Set up this process and return its `DistInfo`.

    device: "cuda", "cuda:K", "cpu", ... or None for CUDA when available, else CPU. A bare "cuda" means
    the GPU numbered LOCAL_RANK. Under torchrun (RANK and WORLD_SIZE in the environment) the process group
    is initialised from the environment with NCCL for CUDA devices and gloo otherwise, and the CUDA device
    is made current; a group that already exists is reused. Without a launcher nothing is initialised and
    the result has world_size 1.
    """
    if not _under_launcher():
        return DistInfo(rank=0, local_rank=0, world_size=1, device=_resolve_device(device, 0), backend=None)
    if not tdist.is_available():
        raise RuntimeError("launched with RANK/WORLD_SIZE set but this torch build has no torch.distributed")
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # before the group exists: NCCL binds its communicator to this device
    if not tdist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        tdist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    backend = str(tdist.get_backend())
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev, backend=backend)


def cleanup_distributed(wait: bool = True) -> None:
    """Destroy the process group if one exists (safe to call in a single process).

    All ranks meet at a barrier first: a rank that tears gloo down while another still has work in
    flight (rank 0 saving the final model) can abort at exit ("terminate called without an active
    exception"). `wait=False` skips it when leaving on an error, where peers may never arrive.
    """
    if tdist.is_available() and tdist.is_initialized():
        try:
            if wait:
                tdist.barrier()
        finally:
            tdist.destroy_process_group()


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for a slice on the rank that owns it.

    torch.distributed.nn.functional.all_gather does the same but warns that it is deprecated in recent torch.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, rank: int, world_size: int, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world_size = rank, world_size  # type: ignore[attr-defined]
        parts = [torch.empty_like(x) for _ in range(world_size)]
        tdist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # (W * B, ...)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        rank, world_size = ctx.rank, ctx.world_size  # type: ignore[attr-defined]
        grad = grad.contiguous()  # (W * B, ...)
        if tdist.get_backend() == "gloo":
            # gloo has no reduce-scatter: sum the whole gradient and keep this rank's slice
            total = grad.clone()
            tdist.all_reduce(total, op=tdist.ReduceOp.SUM)
            return None, None, total.chunk(world_size, dim=0)[rank].contiguous()
        out = torch.empty_like(grad.chunk(world_size, dim=0)[rank])  # (B, ...)
        tdist.reduce_scatter_tensor(out, grad, op=tdist.ReduceOp.SUM)
        return None, None, out


def all_gather_features(x: torch.Tensor, dist: DistInfo, with_grad: bool) -> torch.Tensor:
    """Concatenate every rank's `x` (B, ...) along dim 0 -> (world_size * B, ...), rank order.

    Every rank must pass the same shape. with_grad=True: gradients that any rank computes for a slice are
    summed and returned to the rank that owns it (the backward is a reduce-scatter; an all-reduce on gloo),
    as with torch.distributed.nn.functional.all_gather. with_grad=False: other ranks' slices are constants
    and this rank's slice is `x` itself, still attached to the graph (open_clip's `gather_features`).
    Returns `x` at world_size 1.
    """
    if dist.world_size == 1:
        return x
    if with_grad:
        return _AllGatherWithGrad.apply(dist.rank, dist.world_size, x)
    parts = [torch.empty_like(x) for _ in range(dist.world_size)]
    tdist.all_gather(parts, x.detach().contiguous())
    parts[dist.rank] = x
    return torch.cat(parts, dim=0)


def all_reduce_mean(x: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """Mean of `x` over ranks (for metrics and logging; not differentiable). A detached copy is returned."""
    out = x.detach().clone()
    if dist.world_size == 1:
        return out
    tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out / dist.world_size


def broadcast_object(obj: Any, dist: DistInfo, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank (run names, resolved paths, resume steps)."""
    if dist.world_size == 1:
        return obj
    box = [obj]
    device = dist.device if dist.backend == "nccl" else None
    tdist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def barrier(dist: DistInfo) -> None:
    """Wait for every rank."""
    if dist.world_size == 1:
        return
    if dist.backend == "nccl" and dist.device.type == "cuda":
        tdist.barrier(device_ids=[dist.device.index])
    else:
        tdist.barrier()


# --- ring exchange for the chunked sigmoid loss ------------------------------------------------------------


def _ring_neighbours(dist: DistInfo) -> tuple[int, int]:
    """(left, right) ranks on the ring."""
    return (dist.rank - 1) % dist.world_size, (dist.rank + 1) % dist.world_size


def _send_recv(to_rank: int, from_rank: int, x: torch.Tensor) -> torch.Tensor:
    """Send `x` to `to_rank` and receive a tensor of the same shape from `from_rank`."""
    x = x.contiguous()
    received = torch.empty_like(x)
    ops = [tdist.P2POp(tdist.isend, x, to_rank), tdist.P2POp(tdist.irecv, received, from_rank)]
    for req in tdist.batch_isend_irecv(ops):
        req.wait()
    return received


def _send_recv_bidir(
    left: int, right: int, to_left: torch.Tensor, to_right: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Send to both neighbours at once; returns (from_left, from_right)."""
    if left == right:
        # Two ranks: both messages go to the same peer and would be told apart only by posting order,
        # so exchange one direction after the other.
        return _send_recv(right, left, to_right), _send_recv(left, right, to_left)
    to_left, to_right = to_left.contiguous(), to_right.contiguous()
    from_left, from_right = torch.empty_like(to_right), torch.empty_like(to_left)
    ops = [
        tdist.P2POp(tdist.isend, to_right, right),
        tdist.P2POp(tdist.isend, to_left, left),
        tdist.P2POp(tdist.irecv, from_right, right),
        tdist.P2POp(tdist.irecv, from_left, left),
    ]
    for req in tdist.batch_isend_irecv(ops):
        req.wait()
    return from_left, from_right


class _NeighbourExchange(torch.autograd.Function):
    """Forward: send right, receive from left. Backward: the gradient goes back left, comes from right."""

    @staticmethod
    def forward(ctx: FunctionCtx, left: int, right: int, x: torch.Tensor) -> torch.Tensor:
        ctx.left, ctx.right = left, right  # type: ignore[attr-defined]
        return _send_recv(right, left, x)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, _NeighbourExchange.apply(ctx.right, ctx.left, grad)  # type: ignore[attr-defined]


class _NeighbourExchangeBidir(torch.autograd.Function):
    """Forward: send to both neighbours, receive from both. Backward: the same exchange, mirrored."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, left: int, right: int, to_left: torch.Tensor, to_right: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.left, ctx.right = left, right  # type: ignore[attr-defined]
        return _send_recv_bidir(left, right, to_left, to_right)

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_from_left: torch.Tensor, grad_from_right: torch.Tensor
    ) -> tuple[None, None, torch.Tensor, torch.Tensor]:
        # What arrived from the left was sent right by the left neighbour: its gradient returns leftwards.
        grad_to_right, grad_to_left = _NeighbourExchangeBidir.apply(
            ctx.right,  # type: ignore[attr-defined]
            ctx.left,  # type: ignore[attr-defined]
            grad_from_right,
            grad_from_left,
        )
        return None, None, grad_to_left, grad_to_right


def neighbour_exchange(x: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """Send `x` (B, D) to the right neighbour (rank + 1) and return the left neighbour's (B, D).

    Differentiable: the received tensor's gradient is sent back to its owner. Returns `x` at world_size 1
    (one rank is its own neighbour).
    """
    if dist.world_size == 1:
        return x
    left, right = _ring_neighbours(dist)
    return _NeighbourExchange.apply(left, right, x)


def neighbour_exchange_bidir(
    to_left: torch.Tensor, to_right: torch.Tensor, dist: DistInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """Send `to_left` to rank - 1 and `to_right` to rank + 1; returns (from_left, from_right).

    Differentiable like `neighbour_exchange`. At world_size 1 returns (to_right, to_left).
    """
    if dist.world_size == 1:
        return to_right, to_left
    left, right = _ring_neighbours(dist)
    return _NeighbourExchangeBidir.apply(left, right, to_left, to_right)
