"""Training throughput: clipforge's training step vs open_clip's, same model, data, batch and init.

Each (library, precision) runs in its own subprocess so that peak memory (ru_maxrss, or CUDA peak
allocation on a GPU) is per library; the parent prints a table and ratios. open_clip's side is its
training recipe as `open_clip_train.main` runs it: `open_clip.model.CLIP`, `ClipLoss`, AdamW with its
no-decay rule (per-tensor loop), autocast for bf16 ("amp_bf16"), gradient clipping.

    .venv/bin/python benchmarks/train.py                       # Fashion-MNIST tiny ViT + ViT-B/32
    .venv/bin/python benchmarks/train.py --steps 30 --skip-vitb32
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SMALL = {
    "embed_dim": 64,
    "vision": {"image_size": 28, "patch_size": 7, "width": 64, "layers": 3, "heads": 4},
    "text": {"width": 64, "layers": 2, "heads": 4, "context_length": 32},
}


def _torchvision_workaround() -> None:
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _torchvision_workaround.lib = lib  # keep the registration alive
    except RuntimeError:
        pass


def make_batches(arch: str, batch: int, steps: int, device: str):
    import clipforge
    from clipforge.data import DataConfig, SourceConfig, TrainData

    overrides = SMALL if arch == "small" else {}
    model = clipforge.create_model("tiny-vit" if arch == "small" else "ViT-B-32", **overrides)
    if arch == "small":
        data = TrainData(
            DataConfig(sources=(SourceConfig(kind="fashion_mnist"),), batch_size=batch, seed=0),
            clipforge.get_preprocess(model, train=True),
            clipforge.get_tokenizer(model),
        )
        it = data.epoch(0)
        batches = [next(it) for _ in range(steps)]
        pairs = [(b.images, b.tokens) for b in batches]
    else:  # ViT-B/32: random pixels, real captions
        tok = clipforge.get_tokenizer(model)
        g = torch.Generator().manual_seed(0)
        caps = [f"a photo of a {w} number {i}" for i, w in enumerate(["cat", "dog", "car", "tree"] * (batch // 4))]
        pairs = [(torch.randn(batch, 3, 224, 224, generator=g), tok(caps[:batch])) for _ in range(steps)]
    return model, [(i.to(device), t.to(device)) for i, t in pairs]


def run_clipforge(model, batches, precision: str, device: str, warmup: int) -> tuple[list[float], float]:
    import contextlib

    from clipforge.train.config import LossConfig, OptimConfig
    from clipforge.train.losses import clamp_logit_scale_
    from clipforge.train.optim import build_optimizer
    from clipforge.train.step import run_step

    model = model.to(device).train()
    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1))
    autocast = (
        (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )
    losses, clock = [], Clock(warmup, device)
    for images, tokens in batches:
        clock.tick(len(losses))
        opt.zero_grad(set_to_none=True)
        losses.append(run_step(model, [(images, tokens)], LossConfig(), None, autocast).loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        clamp_logit_scale_(model.logit_scale)
    return losses, clock.elapsed()


def run_open_clip(model, batches, precision: str, device: str, warmup: int) -> tuple[list[float], float]:
    _torchvision_workaround()
    import open_clip
    from open_clip.loss import ClipLoss

    from clipforge.weights.openclip import clipforge_to_openclip_keys, config_to_openclip

    cfg = config_to_openclip(model.config)["model_cfg"]
    theirs = open_clip.model.CLIP(**cfg)
    theirs.load_state_dict(clipforge_to_openclip_keys(model.state_dict()))
    theirs = theirs.to(device).train()

    def exclude(n, p):  # open_clip_train.main's rule
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(theirs.named_parameters())
    gain = [p for n, p in named if exclude(n, p) and p.requires_grad]
    rest = [p for n, p in named if not exclude(n, p) and p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": gain, "weight_decay": 0.0}, {"params": rest, "weight_decay": 0.1}],
        lr=1e-3,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    loss_fn = ClipLoss()
    losses, clock = [], Clock(warmup, device)
    for images, tokens in batches:
        clock.tick(len(losses))
        opt.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            img, txt, scale = theirs(images, tokens)
            loss = loss_fn(img, txt, scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            theirs.logit_scale.clamp_(0, 4.6052)
        losses.append(float(loss.detach()))
    return losses, clock.elapsed()


class Clock:
    """Starts timing when step `warmup` begins; elapsed() ends at the last step (synchronising CUDA)."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.cuda, self.start = warmup, device.startswith("cuda"), None

    def tick(self, step: int) -> None:
        if step == self.warmup:
            if self.cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def elapsed(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - self.start


def child(args) -> None:
    torch.manual_seed(0)
    model, batches = make_batches(args.arch, args.batch, args.steps + args.warmup, args.device)
    runner = run_clipforge if args.lib == "clipforge" else run_open_clip
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    losses, elapsed = runner(model, batches, args.precision, args.device, args.warmup)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # growth of the process's peak resident memory during training (KiB on Linux)
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(
        json.dumps(
            {
                "samples_per_s": args.batch * args.steps / elapsed,
                "s_per_step": elapsed / args.steps,
                "peak_mib": peak,
                "final_loss": statistics.mean(losses[-5:]),
                "losses": losses,
            }
        )
    )


def spawn(lib: str, arch: str, precision: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--lib",
        lib,
        "--arch",
        arch,
        "--precision",
        precision,
        "--batch",
        str(args.batch if arch == "small" else args.vitb32_batch),
        "--steps",
        str(args.steps if arch == "small" else args.vitb32_steps),
        "--warmup",
        "3",
        "--device",
        args.device,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{lib} {arch} {precision} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lib", default="clipforge")
    parser.add_argument("--arch", default="small")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--vitb32-batch", type=int, default=32)
    parser.add_argument("--vitb32-steps", type=int, default=3)
    parser.add_argument("--skip-vitb32", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, device {args.device}")
    print("| model | precision | library | samples/s | x open_clip | s/step | peak MiB | loss (last 5) |")
    print("|---|---|---|---|---|---|---|---|")
    archs = ["small"] + ([] if args.skip_vitb32 else ["vitb32"])
    for arch in archs:
        for precision in ("fp32", "bf16"):
            theirs = spawn("open_clip", arch, precision, args)
            ours = spawn("clipforge", arch, precision, args)
            for lib, r in (("clipforge", ours), ("open_clip", theirs)):
                ratio = r["samples_per_s"] / theirs["samples_per_s"]
                name = "tiny ViT 28px/7 (Fashion-MNIST)" if arch == "small" else "ViT-B/32"
                print(
                    f"| {name} | {precision} | {lib} | {r['samples_per_s']:.1f} | {ratio:.2f} | {r['s_per_step']:.3f} "
                    f"| {r['peak_mib']:.0f} | {r['final_loss']:.4f} |"
                )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
