"""Embedding throughput of `clipforge index build` against clip-retrieval's `inference` (issue 10, item 9).

Same images, same model, same settings for every pipeline: ViT-B-32 with random weights (throughput is the
architecture's, not the weights'), fp32 on the CPU, batch 32, DataLoader workers 0 and 2 (--workers), embeddings
stored as float16 (clip-retrieval's mapper casts to float16; so does `index build` by default). The images are
generated: --images JPEGs of 256x256 with varied content (gradients, shapes, noise), so decoding and resizing cost
what photos of that size cost.

Pipelines, each timed from "model ready" to "embeddings and metadata written" (model creation and a warm-up batch
are not counted, as clip-retrieval's own `load_clip` warms up before it starts its clock):
- clipforge: `clipforge.search.pipeline.build` (what `clipforge index build SOURCE --no-index` runs), in this
  process: enumeration, plan, decoding in DataLoader workers, encode_image, atomic .npy and parquet writes.
- clip-retrieval (--clip-retrieval-python PYTHON, a venv where `clip-retrieval` is installed): its
  `clip_inference.main.main` (what `clip-retrieval inference --input_dataset FOLDER --output_folder OUT` runs) in a
  subprocess, with `--clip_model open_clip:ViT-B-32/<local .safetensors>`: its open_clip loader takes what follows
  the first "/" as the checkpoint, and open_clip loads a local file, so no hub download is needed. The same random
  weights are exported to open_clip's key names for it.
- open_clip peer (--peer, or when no clip-retrieval is given): what clip-retrieval's inference does inside, in this
  process: open_clip's model and transform, a torch DataLoader over PIL decode + preprocess with the same batch
  size and workers, normalize, float16, np.save + parquet.

Each (pipeline, workers) pair runs --reps times, the pipelines' order rotating between repetitions (the machine may
be shared: the spread is printed beside the median). The agreement check compares clipforge's embeddings with each
peer's, image by image (cosine; ~1.0 means the same model and preprocessing were timed).

    .venv/bin/python benchmarks/search_embed.py --clip-retrieval-python /path/to/venv/bin/python
    .venv/bin/python benchmarks/search_embed.py --quick            # 64 images, workers 0, 1 repetition
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODEL = "ViT-B-32"

# Runs in clip-retrieval's venv: warm its model cache with the exact arguments its worker and mapper use (so the
# lru_cache'd load_clip is not timed, as in inference.py's own warm-up), then time its inference entry point.
CLIP_RETRIEVAL_DRIVER = r'''
import json, sys, time
import torch

def run():
    folder, out, clip_model, batch, workers, threads = sys.argv[1:7]
    torch.set_num_threads(int(threads))
    from all_clip import load_clip
    from clip_retrieval.clip_inference.main import main
    load_clip(clip_model=clip_model, use_jit=False, warmup_batch_size=int(batch), clip_cache_path=None)
    start = time.perf_counter()
    main(input_dataset=folder, output_folder=out, input_format="files", batch_size=int(batch),
         num_prepro_workers=int(workers), enable_text=False, enable_image=True, enable_metadata=False,
         clip_model=clip_model, use_jit=False)
    print("\nCLIP_RETRIEVAL_SECONDS " + json.dumps(time.perf_counter() - start), flush=True)

if __name__ == "__main__":
    run()
'''


def make_images(folder: Path, count: int, size: int = 256, seed: int = 0) -> list[Path]:
    """`count` JPEGs of size x size: a two-colour gradient, random ellipses/rectangles/lines, and noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]  # (1, S, 1)
    paths = []
    for i in range(count):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        pixels = a * (1 - ramp) + b * ramp + rng.normal(0, 12, (size, size, 3))  # (S, S, 3)
        if i % 2:
            pixels = pixels.transpose(1, 0, 2)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 12))):
            x0, y0 = (int(v) for v in rng.integers(0, size, 2))
            x1, y1 = x0 + int(rng.integers(8, size // 2)), y0 + int(rng.integers(8, size // 2))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                draw.ellipse((x0, y0, x1, y1), fill=colour)
            elif kind == 1:
                draw.rectangle((x0, y0, x1, y1), fill=colour)
            else:
                draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 8)))
        path = folder / f"img_{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def export_openclip(model: torch.nn.Module, path: Path) -> None:
    """The clipforge model's weights under open_clip's key names, as safetensors open_clip loads from a path."""
    from safetensors.torch import save_file

    from clipforge.weights.openclip import clipforge_to_openclip_keys

    state = clipforge_to_openclip_keys(model.state_dict())
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))


def _warm(model: torch.nn.Module, preprocess, image_path: Path, batch: int) -> None:
    """One forward pass at the benchmark's batch size (allocator and kernels warmed; not timed)."""
    from PIL import Image

    x = torch.stack([preprocess(Image.open(image_path).convert("RGB"))] * batch)  # (B, 3, H, W)
    with torch.no_grad():
        model.encode_image(x)


def run_clipforge(folder: Path, out: Path, model, record, batch: int, workers: int) -> tuple[float, int]:
    """Seconds of `pipeline.build` (no faiss index, like `index build --no-index`) and the rows it wrote."""
    from clipforge.search import pipeline
    from clipforge.search.collection import detect_source

    config = pipeline.PipelineConfig(batch_size=batch, workers=workers, dtype="float16")
    start = time.perf_counter()
    result = pipeline.build(out, detect_source(str(folder)), model, record, config)
    return time.perf_counter() - start, result.rows


class _PeerImages(torch.utils.data.Dataset):
    """clip-retrieval's files reader: PIL open + transform per file; None for an unreadable one."""

    def __init__(self, paths: list[Path], preprocess) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        try:
            return self.preprocess(Image.open(self.paths[i])), str(self.paths[i])
        except (UnidentifiedImageError, OSError):
            return None


def _peer_collate(batch):
    return torch.utils.data.default_collate([b for b in batch if b is not None])


def run_peer(paths: list[Path], out: Path, model, preprocess, batch: int, workers: int) -> tuple[float, int]:
    """Seconds of the open_clip peer (clip-retrieval's reader -> mapper -> writer, in this process) and rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        _PeerImages(sorted(paths), preprocess), batch_size=batch, num_workers=workers, collate_fn=_peer_collate,
        prefetch_factor=2 if workers else None,
    )
    chunks, names = [], []
    with torch.no_grad():
        for images, files in loader:
            features = model.encode_image(images)  # (B, D)
            features /= features.norm(dim=-1, keepdim=True)
            chunks.append(features.to(torch.float16).numpy())
            names.extend(files)
    (out / "img_emb").mkdir(parents=True)
    (out / "metadata").mkdir()
    np.save(out / "img_emb" / "img_emb_0.npy", np.concatenate(chunks))
    pq.write_table(pa.table({"image_path": names}), out / "metadata" / "metadata_0.parquet")
    return time.perf_counter() - start, len(names)


def run_clip_retrieval(python: str, driver: Path, folder: Path, out: Path, checkpoint: Path, batch: int,
                       workers: int, threads: int) -> tuple[float, float, int]:
    """(seconds of its inference entry point, seconds inside its runner loop, rows); RuntimeError with its output.

    The runner-loop time comes from its own stats file (the sum of its batches' read + inference + write times):
    it leaves out what happens before its first batch and after its last (listing the folder twice, starting and
    joining its logger processes), though the start-up of those spawned processes (each imports its whole stack)
    still competes for the CPU during the first batches. Both are fixed costs: they weigh less with more images."""
    args = [python, str(driver), str(folder), str(out), f"open_clip:{MODEL}/{checkpoint}", str(batch), str(workers),
            str(threads)]
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=3600)
    marks = [line for line in proc.stdout.splitlines() if line.startswith("CLIP_RETRIEVAL_SECONDS ")]  # own line
    if proc.returncode != 0 or not marks:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"clip-retrieval inference failed (exit {proc.returncode}):\n{tail}")
    rows = sum(np.load(p, mmap_mode="r", allow_pickle=False).shape[0] for p in (out / "img_emb").glob("*.npy"))
    loop = sum(json.loads(p.read_text())["total_duration"] for p in (out / "stats").glob("[0-9]*.json"))
    return float(json.loads(marks[-1].split(" ", 1)[1])), loop, rows


def read_embeddings(out: Path) -> dict[str, np.ndarray]:
    """file name -> embedding (float32) from an img_emb/ + metadata/ folder (clip-retrieval's layout)."""
    import pyarrow.parquet as pq

    vectors = {}
    for npy in sorted((out / "img_emb").glob("img_emb_*.npy")):
        stem = npy.stem.replace("img_emb_", "metadata_")
        names = pq.read_table(out / "metadata" / f"{stem}.parquet", columns=["image_path"]).column(0).to_pylist()
        emb = np.load(npy, allow_pickle=False).astype(np.float32)  # (n, D)
        vectors.update((os.path.basename(n), e) for n, e in zip(names, emb))
    return vectors


def agreement(ours: Path, theirs: Path) -> tuple[int, float, float]:
    """(images in common, min cosine, mean cosine) between two outputs' embeddings of the same files."""
    a, b = read_embeddings(ours), read_embeddings(theirs)
    common = sorted(set(a) & set(b))
    if not common:
        return 0, float("nan"), float("nan")
    x = np.stack([a[n] for n in common])
    y = np.stack([b[n] for n in common])
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return len(common), float(cos.min()), float(cos.mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="generated JPEGs (default 512)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of every pipeline (default 32)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers (default 0 2)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions per pipeline and workers (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clip-retrieval-python", default=None, metavar="PYTHON",
                        help="python of a venv with clip-retrieval installed: time its inference too")
    parser.add_argument("--peer", action="store_true",
                        help="also time the in-process open_clip peer (the default when no clip-retrieval)")
    parser.add_argument("--quick", action="store_true", help="64 images, workers 0, 1 repetition")
    parser.add_argument("--workdir", default=None, help="folder for images and outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.workers, args.reps = 64, [0], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    import clipforge
    from clipforge.factory import get_preprocess
    from clipforge.search import pipeline

    work = Path(args.workdir or tempfile.mkdtemp(prefix="clipforge-embed-bench-"))
    folder = work / "images"
    paths = sorted(folder.glob("img_*.jpg"))
    if len(paths) != args.images:
        shutil.rmtree(folder, ignore_errors=True)
        paths = make_images(folder, args.images)
    torch.manual_seed(0)
    model = clipforge.create_model(MODEL).eval()
    record = pipeline.model_record(model, MODEL, None)
    checkpoint = work / f"{MODEL}-random.safetensors"
    export_openclip(model, checkpoint)
    _warm(model, get_preprocess(model), paths[0], args.batch)

    pipelines = ["clipforge"]
    oc_model = oc_preprocess = None
    if args.clip_retrieval_python:
        pipelines.append("clip-retrieval")
        driver = work / "clip_retrieval_driver.py"
        driver.write_text(CLIP_RETRIEVAL_DRIVER)
    if args.peer or not args.clip_retrieval_python:
        import open_clip

        pipelines.append("open_clip peer")
        oc_model, _, oc_preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=str(checkpoint))
        oc_model.eval()
        _warm(oc_model, oc_preprocess, paths[0], args.batch)

    print(f"{len(paths)} JPEGs 256x256 in {folder}; {MODEL} random weights, fp32 CPU, batch {args.batch}, "
          f"{threads} torch threads, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})",
          flush=True)
    rates: dict[tuple[str, int], list[float]] = {}
    agree: dict[tuple[str, int], tuple[int, float, float]] = {}
    for rep in range(args.reps):
        for workers in args.workers:
            order = pipelines[rep % len(pipelines):] + pipelines[: rep % len(pipelines)]
            outs = {}
            for name in order:
                out = work / f"out-{name.replace(' ', '-')}-w{workers}"
                shutil.rmtree(out, ignore_errors=True)
                if name == "clipforge":
                    seconds, rows = run_clipforge(folder, out, model, record, args.batch, workers)
                elif name == "clip-retrieval":
                    seconds, loop, rows = run_clip_retrieval(args.clip_retrieval_python, driver, folder, out,
                                                             checkpoint, args.batch, workers, threads)
                    rates.setdefault(("clip-retrieval loop", workers), []).append(rows / loop)
                else:
                    out.mkdir(parents=True)
                    seconds, rows = run_peer(paths, out, oc_model, oc_preprocess, args.batch, workers)
                if rows != len(paths):
                    raise RuntimeError(f"{name} wrote {rows} rows for {len(paths)} images")
                rates.setdefault((name, workers), []).append(rows / seconds)
                outs[name] = out
                loop_note = f", {rows / loop:.1f} inside its runner loop" if name == "clip-retrieval" else ""
                print(f"rep {rep + 1} workers {workers} {name:15s} {rows / seconds:8.1f} images/s ({seconds:.1f} s"
                      f"{loop_note})", flush=True)
            for name in pipelines[1:]:
                if (name, workers) not in agree:
                    agree[(name, workers)] = agreement(outs["clipforge"], outs[name])

    print("\n| pipeline | workers | images/s (median) | min-max | runs | clipforge / it | cosine to clipforge "
          "(min / mean) |")
    print("|---|---:|---:|---|---:|---:|---|")
    for workers in args.workers:
        ours = statistics.median(rates[("clipforge", workers)])
        shown = [n for name in pipelines for n in (name, f"{name} loop") if (n, workers) in rates]
        for name in shown:
            runs = rates[(name, workers)]
            median = statistics.median(runs)
            ratio = "" if name == "clipforge" else f"{ours / median:.2f}x"
            cos = ""
            if name != "clipforge":
                n, low, mean = agree[(name.removesuffix(" loop"), workers)]
                cos = f"{low:.4f} / {mean:.4f} over {n}"
            print(f"| {name} | {workers} | {median:.1f} | {min(runs):.1f}-{max(runs):.1f} | {len(runs)} | {ratio} | "
                  f"{cos} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
