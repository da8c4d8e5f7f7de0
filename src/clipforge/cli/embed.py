"""`clipforge embed`: L2-normalised embeddings of images or texts, written as a float32 .npy file.

Unreadable images are skipped and counted, never fatal; a JSON sidecar (`OUT.json`) lists the
inputs in row order and the skipped ones, so rows can be matched back to files.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from .common import add_model_arguments, fail, model_from_args, preprocessed_batches


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipforge embed",
        description="Embed images or texts with a CLIP model into OUT (.npy, float32, one L2-normalised row per "
        "input) plus OUT.json listing the inputs in row order.",
        epilog="examples: clipforge embed --images photos/*.jpg --out img.npy --model ViT-B-32 --pretrained openai\n"
        '          clipforge embed --texts "a dog" "a cat" --out txt.npy --pretrained ./my-model',
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image files")
    source.add_argument("--texts", nargs="+", help="texts")
    source.add_argument("--text-file", help="a UTF-8 file with one text per line")
    parser.add_argument("--out", required=True, help="output .npy path")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_arguments(parser)
    return parser


def _save_npy(array, path: Path) -> None:
    import numpy as np

    from ..atomic import atomic_write_bytes

    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..factory import get_preprocess, get_tokenizer

    out = Path(args.out)
    if out.suffix != ".npy":
        return fail(f"--out {out} must end in .npy")
    if args.text_file:
        try:
            texts = [ln.rstrip("\n") for ln in Path(args.text_file).read_text(encoding="utf-8").splitlines()]
        except OSError as exc:
            return fail(f"cannot read --text-file: {exc}")
    else:
        texts = args.texts
    model, random_weights = model_from_args(args)
    rows, kept, skipped = [], [], []
    with torch.no_grad():
        if texts is not None:
            tokenizer = get_tokenizer(model)
            for start in tqdm(range(0, len(texts), args.batch_size), desc="texts", disable=args.no_progress):
                chunk = texts[start : start + args.batch_size]
                rows.append(model.encode_text(tokenizer(chunk).to(args.device), normalize=True).float().cpu())
            kept = list(texts)
        else:
            preprocess = get_preprocess(model)
            batches = preprocessed_batches(args.images, preprocess, args.batch_size)
            total = -(-len(args.images) // args.batch_size)
            for batch, paths, bad in tqdm(batches, total=total, desc="images", disable=args.no_progress):
                kept.extend(paths)
                skipped.extend(bad)
                if batch is not None:
                    rows.append(model.encode_image(batch.to(args.device), normalize=True).float().cpu())
    if not rows:
        return fail(f"nothing to embed: all {len(skipped)} inputs were unreadable")
    array = torch.cat(rows).numpy().astype(np.float32)
    _save_npy(array, out)
    meta = {
        "rows": kept,
        "skipped": skipped,
        "model": args.model,
        "pretrained": args.pretrained,
        "random_weights": random_weights,
        "shape": list(array.shape),
    }
    from ..atomic import atomic_write_bytes

    atomic_write_bytes(out.with_suffix(".npy.json"), (json.dumps(meta, indent=2) + "\n").encode())
    print(f"wrote {array.shape[0]} x {array.shape[1]} embeddings to {out}; skipped {len(skipped)} input(s)")
    return 0
