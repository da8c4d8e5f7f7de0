"""A tiny INDEX_DIR for the search service tests, built once per test session by the real pipeline.

A saved tiny-vit model, a dozen generated PNGs (every other one with a caption .txt beside it, so there is a text
index too), `clipforge index build` in-process, and the flat faiss indexes it builds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

COLOURS = [
    (220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 20), (20, 210, 210), (200, 30, 200),
    (250, 140, 20), (120, 120, 120), (10, 10, 10), (245, 245, 245), (120, 60, 20), (90, 160, 250),
]  # fmt: skip


def png_bytes(colour: tuple[int, int, int], seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, np.float32) + 25 * rng.standard_normal((size, size, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_index(base: Path) -> dict:
    """{"index", "images", "model", "paths"} under `base` (built on the first call, reused after)."""
    root = base / "service_collection"
    index = root / "index"
    images = root / "images"
    paths = [images / f"img{i:02d}.png" for i in range(len(COLOURS))]
    if not (index / "image.index").is_file():
        import clipforge
        from clipforge.cli.main import main as cli

        images.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = clipforge.create_model("tiny-vit").eval()
        clipforge.save_model(model, root / "model")
        for i, (path, colour) in enumerate(zip(paths, COLOURS)):
            path.write_bytes(png_bytes(colour, i))
            if i % 2 == 0:
                path.with_suffix(".txt").write_text(f"photo number {i}")
        argv = ["index", "build", str(images), "--out", str(index), "--pretrained", str(root / "model")]
        code = cli([*argv, "--workers", "0", "--no-progress", "-q"])
        assert code == 0, f"clipforge index build failed with exit code {code}"
    return {"index": index, "images": images, "model": root / "model", "paths": paths}
