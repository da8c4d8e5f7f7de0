"""`clipforge embed`: L2-normalised embeddings of images or texts, written as a float32 .npy file.

Unreadable images are skipped, never fatal, and each is named on stderr with the reason. Beside OUT
(x.npy) go x.npy.json, the row index: the inputs in row order ("rows") and the skipped ones with their
reasons ("skipped"), and, when some were skipped, x.npy.skipped.jsonl with one {"image", "error"} per line.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from ..jsonio import json_text
from .argtypes import positive_int
from .common import (
    add_common_arguments,
    add_model_arguments,
    add_progress_arguments,
    model_from_args,
    preprocessed_batches,
    read_text_arg,
    report_skipped,
    show_progress,
)
from .errors import CliParser, UsageError, command

MAX_TEXT_FILE_BYTES = 256 * 2**20  # --text-file: millions of captions fit; /dev/zero or a runaway log does not


def read_text_lines(path: str) -> list[str]:
    """The lines of --text-file, decoded as UTF-8 (a BOM is dropped).

    Undecodable bytes are one error naming the line and byte offset, so the user can find and fix them; the file
    must be a regular file (a FIFO would block) of at most 256 MiB. The same rules as every file a flag names
    (common.read_text_arg), with a larger cap.
    """
    return read_text_arg(path, "--text-file", max_bytes=MAX_TEXT_FILE_BYTES).splitlines()


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge embed` argument parser (also the source of its --help)."""
    parser = CliParser(
        prog="clipforge embed",
        description="Embed images or texts with a CLIP model into OUT (.npy, float32, one L2-normalised row per "
        "input) plus OUT.json listing the inputs in row order and the skipped ones with the reason.",
        epilog="examples: clipforge embed --images photos/*.jpg --out img.npy --model ViT-B-32 --pretrained openai\n"
        '          clipforge embed --texts "a dog" "a cat" --out txt.npy --pretrained ./my-model',
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image files")
    source.add_argument("--texts", nargs="+", help="texts")
    source.add_argument("--text-file", help="a UTF-8 file with one text per line")
    parser.add_argument("--out", required=True, help="output .npy path")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="inputs per forward pass (default 64)")
    add_progress_arguments(parser)
    add_model_arguments(parser)
    add_common_arguments(parser)
    return parser


def _save_npy(array, path: Path) -> None:
    import numpy as np

    from ..atomic import atomic_write_bytes

    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


@command("clipforge embed")
def main(argv: list[str] | None = None) -> int:
    """`clipforge embed`: write L2-normalised image or text embeddings to a .npy file; returns the exit code."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".npy":
        raise UsageError(f"--out {out} must end in .npy", f"e.g. --out {out.with_suffix('.npy')}")
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..atomic import atomic_write_bytes
    from ..factory import get_preprocess, get_tokenizer

    texts = read_text_lines(args.text_file) if args.text_file else args.texts
    model, random_weights = model_from_args(args)
    progress = show_progress(args)
    rows, kept, skipped = [], [], []
    with torch.no_grad():
        if texts is not None:
            tokenizer = get_tokenizer(model)
            for start in tqdm(range(0, len(texts), args.batch_size), desc="texts", disable=not progress):
                chunk = texts[start : start + args.batch_size]
                rows.append(model.encode_text(tokenizer(chunk).to(args.device), normalize=True).float().cpu())
            kept = list(texts)
        else:
            preprocess = get_preprocess(model)
            batches = preprocessed_batches(args.images, preprocess, args.batch_size)
            total = -(-len(args.images) // args.batch_size)
            for batch, paths, bad in tqdm(batches, total=total, desc="images", disable=not progress):
                kept.extend(paths)
                skipped.extend({"image": b["image"], "error": b["error"], "missing": b["missing"]} for b in bad)
                if batch is not None:
                    rows.append(model.encode_image(batch.to(args.device), normalize=True).float().cpu())
    listing = out.with_name(out.name + ".skipped.jsonl")
    report_skipped(skipped, len(args.images or texts or []), listing=listing)
    if not rows:
        raise UsageError("nothing to embed: no input given", "pass --images, --texts or a non-empty --text-file")
    array = torch.cat(rows).numpy().astype(np.float32)  # (inputs kept, embed_dim)
    _save_npy(array, out)
    reasons = [{"image": s["image"], "error": s["error"]} for s in skipped]
    meta = {
        "rows": kept,
        "skipped": reasons,
        "model": args.model,
        "pretrained": args.pretrained,
        "random_weights": random_weights,
        "shape": list(array.shape),
    }
    atomic_write_bytes(out.with_suffix(".npy.json"), (json_text(meta, indent=2) + "\n").encode())
    if reasons:
        atomic_write_bytes(listing, "".join(json.dumps(r) + "\n" for r in reasons).encode())
    else:
        listing.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    where = f"; skipped {len(reasons)} input(s), listed in {listing}" if reasons else ""
    print(f"wrote {array.shape[0]} x {array.shape[1]} embeddings to {out} (row index: {out}.json){where}")
    return 0
