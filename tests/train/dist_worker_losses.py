"""torchrun worker for tests/train/test_distributed.py: losses and collectives on W gloo CPU processes.

Run: python -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=P \
         tests/train/dist_worker_losses.py OUT_DIR

Every rank builds the same global batch from a fixed seed, takes its slice of B rows and writes
OUT_DIR/rank{r}.pt with, for each case, the loss, the gradients of its own features, logit_scale and
logit_bias, the same from open_clip's losses run with the same ranks, and the parameter gradients of a
tiny two-tower model wrapped in DistributedDataParallel (what DDP training actually applies), plus the
results of the collectives on known inputs. The test imports this file to redo every case in one process
from the same seeds.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clipforge.train.distributed import (
    DistInfo,
    all_gather_features,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    neighbour_exchange,
    neighbour_exchange_bidir,
)
from clipforge.train.losses import clip_loss, distillation_loss, siglip_loss

B, D, D_IN = 4, 8, 6  # local batch, embedding dim, tiny model's input dim
LOGIT_SCALE, LOGIT_BIAS = 7.5, -2.0


def global_batch(world_size: int) -> dict[str, torch.Tensor]:
    """The same (N, .) tensors on every rank, N = world_size * B."""
    g = torch.Generator().manual_seed(1234)
    n = world_size * B
    return {
        "image": F.normalize(torch.randn(n, D, generator=g), dim=-1),
        "text": F.normalize(torch.randn(n, D, generator=g), dim=-1),
        "teacher_image": F.normalize(torch.randn(n, D, generator=g), dim=-1),
        "teacher_text": F.normalize(torch.randn(n, D, generator=g), dim=-1),
        "x_image": torch.randn(n, D_IN, generator=g),
        "x_text": torch.randn(n, D_IN, generator=g),
    }


BIAS_CASES = frozenset({"clip_bias", "siglip", "siglip_shift"})  # the tiny model has a logit_bias only here
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, DistInfo | None], torch.Tensor]


def cases(batch: dict[str, torch.Tensor], rows: slice) -> dict[str, LossFn]:
    """name -> loss(image (B, D), text (B, D), logit_scale, logit_bias, dist)."""
    t_img, t_txt = batch["teacher_image"][rows], batch["teacher_text"][rows]
    return {
        "clip": lambda i, t, s, b, d: clip_loss(i, t, s, d),
        "clip_bias": lambda i, t, s, b, d: clip_loss(i, t, s, d, logit_bias=b),
        "clip_gather_grad": lambda i, t, s, b, d: clip_loss(i, t, s, d, gather_with_grad=True),
        "clip_local_gather_grad": lambda i, t, s, b, d: clip_loss(i, t, s, d, local_loss=True, gather_with_grad=True),
        "clip_local": lambda i, t, s, b, d: clip_loss(i, t, s, d, local_loss=True),
        "siglip": lambda i, t, s, b, d: siglip_loss(i, t, s, b, d),
        "siglip_shift": lambda i, t, s, b, d: siglip_loss(i, t, s, b, d, bidirectional=False),
        "distill_local_gather_grad": lambda i, t, s, b, d: distillation_loss(
            i, t, s, t_img, t_txt, s.detach() * 2, feature_weight=0.5, dist=d, local_loss=True, gather_with_grad=True
        ),
    }


def load_open_clip_loss() -> Any:
    """open_clip's loss.py alone (its package __init__ imports torchvision, which this venv cannot)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    loss_spec = importlib.util.spec_from_file_location("open_clip_loss", Path(spec.origin).parent / "loss.py")
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    return module


def open_clip_cases(oc: Any, dist: DistInfo) -> dict[str, LossFn]:
    r, w = dist.rank, dist.world_size
    return {
        "clip": lambda i, t, s, b, d: oc.ClipLoss(rank=r, world_size=w)(i, t, s),
        "clip_bias": lambda i, t, s, b, d: oc.ClipLoss(rank=r, world_size=w)(i, t, s, b),
        "clip_gather_grad": lambda i, t, s, b, d: oc.ClipLoss(gather_with_grad=True, rank=r, world_size=w)(i, t, s),
        "clip_local_gather_grad": lambda i, t, s, b, d: oc.ClipLoss(
            local_loss=True, gather_with_grad=True, rank=r, world_size=w
        )(i, t, s),
        "clip_local": lambda i, t, s, b, d: oc.ClipLoss(local_loss=True, rank=r, world_size=w)(i, t, s),
        "siglip": lambda i, t, s, b, d: oc.SigLipLoss(rank=r, world_size=w, dist_impl="bidir")(i, t, s, b),
        "siglip_shift": lambda i, t, s, b, d: oc.SigLipLoss(rank=r, world_size=w, dist_impl="shift")(i, t, s, b),
    }


def feature_grads(fn: LossFn, image: torch.Tensor, text: torch.Tensor, dist: DistInfo | None) -> dict:
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale, bias = torch.tensor(LOGIT_SCALE, requires_grad=True), torch.tensor(LOGIT_BIAS, requires_grad=True)
    loss = fn(image, text, scale, bias, dist)
    loss.backward()
    zero = torch.zeros(())
    return {
        "loss": loss.detach(),
        "image": image.grad,
        "text": text.grad,
        "logit_scale": scale.grad,
        "logit_bias": bias.grad if bias.grad is not None else zero,
    }


class TinyTowers(nn.Module):
    """Two linear towers, a log-temperature and optionally a bias: enough parameters to see DDP's averaging.

    The bias exists only for losses that use it: DDP requires every parameter to receive a gradient.
    """

    def __init__(self, with_bias: bool) -> None:
        super().__init__()
        self.visual = nn.Linear(D_IN, D)
        self.text = nn.Linear(D_IN, D)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.logit_bias = nn.Parameter(torch.tensor(LOGIT_BIAS)) if with_bias else None

    def forward(self, x_image: torch.Tensor, x_text: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return {
            "image": F.normalize(self.visual(x_image), dim=-1),  # (B, D)
            "text": F.normalize(self.text(x_text), dim=-1),  # (B, D)
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }


def tiny_model(name: str) -> TinyTowers:
    """The same initial parameters on every rank and in the test's single process."""
    torch.manual_seed(0)
    return TinyTowers(with_bias=name in BIAS_CASES)


def model_grads(
    model: nn.Module, fn: LossFn, x_image: torch.Tensor, x_text: torch.Tensor, dist: DistInfo | None
) -> dict[str, torch.Tensor]:
    """Parameter gradients after one backward (all-reduced and averaged over ranks when `model` is DDP)."""
    model.zero_grad(set_to_none=True)
    out = model(x_image, x_text)
    fn(out["image"], out["text"], out["logit_scale"], out["logit_bias"], dist).backward()
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    return {name: p.grad.clone() for name, p in inner.named_parameters()}


def collectives(dist: DistInfo) -> dict[str, Any]:
    x = torch.full((2, 3), float(dist.rank), requires_grad=True)
    gathered = all_gather_features(x, dist, with_grad=True)  # (W * 2, 3)
    weights = torch.arange(gathered.shape[0], dtype=torch.float32)[:, None]
    (gathered * weights).sum().backward()
    y = torch.full((2, 3), float(dist.rank), requires_grad=True)
    gathered_nograd = all_gather_features(y, dist, with_grad=False)
    (gathered_nograd * weights).sum().backward()
    z = torch.full((2,), float(dist.rank), requires_grad=True)
    from_left = neighbour_exchange(z, dist)
    (from_left * (dist.rank + 1)).sum().backward()
    u = torch.full((2,), 10.0 + dist.rank, requires_grad=True)
    v = torch.full((2,), 20.0 + dist.rank, requires_grad=True)
    bidir_from_left, bidir_from_right = neighbour_exchange_bidir(u, v, dist)
    (bidir_from_left * 3 + bidir_from_right * 5).sum().backward()
    barrier(dist)
    return {
        "gathered": gathered.detach(),
        "gather_grad": x.grad,
        "gather_nograd_grad": y.grad,
        "mean": all_reduce_mean(torch.tensor([float(dist.rank)]), dist),
        "broadcast": broadcast_object({"run": f"from-{dist.rank}"}, dist),
        "from_left": from_left.detach(),
        "exchange_grad": z.grad,
        "bidir_from_left": bidir_from_left.detach(),
        "bidir_from_right": bidir_from_right.detach(),
        "bidir_grad_to_left": u.grad,
        "bidir_grad_to_right": v.grad,
    }


def main(argv: list[str] | None = None) -> int:
    out_dir = Path((sys.argv[1:] if argv is None else argv)[0])
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated")  # inside open_clip's loss.py
    dist = init_distributed(device="cpu")
    rows = slice(dist.rank * B, (dist.rank + 1) * B)
    batch = global_batch(dist.world_size)
    image, text = batch["image"][rows], batch["text"][rows]

    result: dict[str, Any] = {"dist": dist, "features": {}, "open_clip": {}, "ddp": {}}
    for name, fn in cases(batch, rows).items():
        result["features"][name] = feature_grads(fn, image, text, dist)
    oc = load_open_clip_loss()
    if oc is not None:
        for name, fn in open_clip_cases(oc, dist).items():
            result["open_clip"][name] = feature_grads(fn, image, text, dist)

    x_image, x_text = batch["x_image"][rows], batch["x_text"][rows]
    for name, fn in cases(batch, rows).items():
        result["ddp"][name] = model_grads(DistributedDataParallel(tiny_model(name)), fn, x_image, x_text, dist)

    result["collectives"] = collectives(dist)
    torch.save(result, out_dir / f"rank{dist.rank}.pt")
    cleanup_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
