"""clipforge.train.distributed: one process without a launcher, and W gloo CPU processes under torchrun.

The multi-process test runs tests/train/dist_worker_losses.py with W = 2 (SigLIP's one-way exchange) and
W = 3 (its two-way exchange). Each rank computes the losses on its slice of a fixed global batch; here
one process redoes the whole batch and the results are compared as DDP training sees them: DDP
averages parameter gradients over ranks, and each feature belongs to exactly one rank, so the
gradient that reaches the parameters is cat(rank gradients of own features) / W. The worker also runs
a tiny two-tower model under real DistributedDataParallel and returns its averaged parameter gradients.
Expected (see clipforge.train.losses): equal to the one-process gradient for local_loss+gather_with_grad,
gather_with_grad, SigLIP and distillation; 1/W of it for the towers with open_clip's default ClipLoss
options, while logit_scale and logit_bias still get the full gradient. Float32 tolerance, relative to
each tensor's scale: max |ours - expected| <= 1e-5 * max |expected| (sums in another order over ranks;
see tests/support/tolerance.py).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.distributed as tdist

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
from support.tolerance import assert_close_rel

WORKER = Path(__file__).with_name("dist_worker_losses.py")
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")
REL = 1e-5
# DDP's parameter gradients equal the one-process ones (EXACT), or are 1/W of them for the towers (DIVIDED_BY_W)
EXACT = ("clip_gather_grad", "clip_local_gather_grad", "siglip", "siglip_shift", "distill_local_gather_grad")
DIVIDED_BY_W = ("clip", "clip_bias")
OPEN_CLIP_CASES = DIVIDED_BY_W + ("clip_gather_grad", "clip_local_gather_grad", "clip_local", "siglip", "siglip_shift")


def _load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dist_worker_losses", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)


# --- one process -------------------------------------------------------------------------------------------


def test_init_without_launcher_is_single_process(no_launcher: None) -> None:
    info = init_distributed(device="cpu")
    assert info == DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
    assert info.is_main and not info.is_distributed
    assert not (tdist.is_available() and tdist.is_initialized())
    default = init_distributed()
    assert default.world_size == 1 and default.backend is None
    assert default.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    cleanup_distributed()  # nothing to destroy: must not raise


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_init_rejects_cuda_without_cuda(no_launcher: None) -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        init_distributed(device="cuda")


def test_dist_info_is_validated_and_frozen() -> None:
    with pytest.raises(ValueError, match="rank"):
        DistInfo(rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        DistInfo(world_size=0)
    info = DistInfo(rank=1, local_rank=1, world_size=4)
    assert not info.is_main and info.is_distributed
    with pytest.raises(AttributeError):
        info.rank = 0  # type: ignore[misc]


def test_collectives_are_no_ops_in_one_process() -> None:
    info = DistInfo()
    x = torch.randn(3, 4, requires_grad=True)
    assert all_gather_features(x, info, with_grad=True) is x
    assert all_gather_features(x, info, with_grad=False) is x
    torch.testing.assert_close(all_reduce_mean(x, info), x.detach())
    assert not all_reduce_mean(x, info).requires_grad
    obj = {"run": "a"}
    assert broadcast_object(obj, info) is obj
    barrier(info)
    assert neighbour_exchange(x, info) is x  # one rank is its own neighbour
    y = torch.randn(3, 4)
    from_left, from_right = neighbour_exchange_bidir(x, y, info)
    assert from_left is y and from_right is x


# --- W processes under torchrun ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"W{w}")
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Launch the worker on W local processes (gloo, CPU, loopback only); the W result dicts, rank order."""
    if not (tdist.is_available() and tdist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    world_size: int = request.param
    out = tmp_path_factory.mktemp(f"dist_w{world_size}")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env.update(
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        PYTHONPATH=os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PYTHONWARNINGS="ignore::FutureWarning",  # open_clip's all_gather deprecation, once per rank
    )
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={world_size}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(WORKER),
        str(out),
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun timed out after 120 s\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode})\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _one_process(world_size: int, name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(feature-level, parameter-level) results of the whole global batch in this process."""
    batch = worker.global_batch(world_size)
    fn = worker.cases(batch, slice(None))[name]
    features = worker.feature_grads(fn, batch["image"], batch["text"], None)
    params = worker.model_grads(worker.tiny_model(name), fn, batch["x_image"], batch["x_text"], None)
    return features, params


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    # With clip_loss a logit_bias shifts every logit of a softmax row alike, so its exact gradient is 0 and
    # both sides are rounding noise of per-logit gradients of size <= 1: compare on that scale.
    zero_grad = what.startswith("clip_bias ") and "logit_bias" in what
    assert_close_rel(actual, expected, rel=REL, what=what, scale=1.0 if zero_grad else None)


def test_launcher_sets_up_gloo_ranks(ranks: list[dict[str, Any]]) -> None:
    w = len(ranks)
    for r, res in enumerate(ranks):
        assert res["dist"] == DistInfo(rank=r, local_rank=r, world_size=w, device=torch.device("cpu"), backend="gloo")


@pytest.mark.parametrize("name", EXACT + DIVIDED_BY_W + ("clip_local",))
def test_rank_losses_average_to_the_full_batch_loss(ranks: list[dict[str, Any]], name: str) -> None:
    full, _ = _one_process(len(ranks), name)
    mean = torch.stack([res["features"][name]["loss"] for res in ranks]).mean()
    _close(mean, full["loss"], f"{name} loss")


@pytest.mark.parametrize("name", EXACT + DIVIDED_BY_W)
def test_feature_gradients_as_ddp_averages_them(ranks: list[dict[str, Any]], name: str) -> None:
    w = len(ranks)
    full, _ = _one_process(w, name)
    factor = w if name in DIVIDED_BY_W else 1
    for key in ("image", "text"):
        ddp_view = torch.cat([res["features"][name][key] for res in ranks]) / w  # (N, D)
        _close(ddp_view, full[key] / factor, f"{name} d/d{key}")
    for key in ("logit_scale", "logit_bias"):  # shared scalars: DDP's average of the ranks' gradients
        ddp_view = torch.stack([res["features"][name][key] for res in ranks]).mean()
        _close(ddp_view, full[key], f"{name} d/d{key}")


@pytest.mark.parametrize("name", EXACT + DIVIDED_BY_W)
def test_ddp_parameter_gradients(ranks: list[dict[str, Any]], name: str) -> None:
    w = len(ranks)
    _, full = _one_process(w, name)
    factor = w if name in DIVIDED_BY_W else 1
    for res in ranks:  # DDP leaves the same averaged gradient on every rank
        grads = res["ddp"][name]
        assert grads.keys() == full.keys()
        for param, expected in full.items():
            scale = 1 if param.startswith("logit_") else factor
            _close(grads[param], expected / scale, f"{name} {param}")


@pytest.mark.parametrize("name", OPEN_CLIP_CASES)
def test_ranks_match_open_clip(ranks: list[dict[str, Any]], name: str) -> None:
    """Every option, including local_loss without gather_with_grad (not the full-batch gradient), is open_clip's."""
    for res in ranks:
        if not res["open_clip"]:
            pytest.skip("open_clip is not installed")
        ours, theirs = res["features"][name], res["open_clip"][name]
        for key in ours:
            _close(ours[key], theirs[key], f"{name} {key} vs open_clip")


def test_collectives(ranks: list[dict[str, Any]]) -> None:
    w = len(ranks)
    weights = torch.arange(2 * w, dtype=torch.float32)[:, None]  # what each rank multiplied the gather by
    for r, c in enumerate(res["collectives"] for res in ranks):
        left, right = (r - 1) % w, (r + 1) % w
        torch.testing.assert_close(c["gathered"], torch.arange(w).repeat_interleave(2)[:, None].expand(-1, 3).float())
        own = weights[2 * r : 2 * r + 2].expand(-1, 3)
        torch.testing.assert_close(c["gather_grad"], w * own)  # every rank's gradient for this slice, summed
        torch.testing.assert_close(c["gather_nograd_grad"], own)  # only this rank's own use
        assert c["mean"].item() == pytest.approx((w - 1) / 2)
        assert c["broadcast"] == {"run": "from-0"}
        torch.testing.assert_close(c["from_left"], torch.full((2,), float(left)))
        torch.testing.assert_close(c["exchange_grad"], torch.full((2,), float(right + 1)))  # the right rank's weight
        torch.testing.assert_close(c["bidir_from_left"], torch.full((2,), 20.0 + left))
        torch.testing.assert_close(c["bidir_from_right"], torch.full((2,), 10.0 + right))
        torch.testing.assert_close(c["bidir_grad_to_left"], torch.full((2,), 5.0))
        torch.testing.assert_close(c["bidir_grad_to_right"], torch.full((2,), 3.0))
