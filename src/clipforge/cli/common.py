"""Arguments shared by the subcommands that need a model, and turning them into one."""

from __future__ import annotations

import argparse
import json
import sys

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,
        help="architecture name (see `clipforge models`); optional when --pretrained is a checkpoint that "
        "describes itself (a clipforge/OpenCLIP/HF folder or file)",
    )
    group.add_argument(
        "--pretrained",
        default=None,
        help="pretrained tag for --model (e.g. openai, laion2b_s34b_b79k), a checkpoint file or folder, or a "
        "hub id org/repo. Without it the weights are random.",
    )
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    group.add_argument("--precision", choices=sorted(DTYPES), default="fp32", help="weight dtype (default: fp32)")
    group.add_argument(
        "--allow-unsafe-pickle",
        action="store_true",
        help="allow full unpickling of a trusted legacy checkpoint that weights_only loading refuses",
    )


def model_from_args(args: argparse.Namespace):
    """(model, random_weights) built from --model / --pretrained."""
    from ..weights.loading import create_model, load_model

    dtype = DTYPES[args.precision]
    if args.pretrained is None:
        if args.model is None:
            raise SystemExit("error: give --model NAME and/or --pretrained TAG_OR_PATH")
        return create_model(args.model, device=args.device, dtype=dtype), True
    if args.model is None:
        model = load_model(
            args.pretrained, device=args.device, dtype=dtype, allow_unsafe_pickle=args.allow_unsafe_pickle
        )
        return model, False
    return create_model(args.model, pretrained=args.pretrained, device=args.device, dtype=dtype), False


def print_json(data, out_path: str | None) -> None:
    text = json.dumps(data, indent=2)
    if out_path:
        from pathlib import Path

        from ..atomic import atomic_write_bytes

        atomic_write_bytes(Path(out_path), (text + "\n").encode())
    else:
        sys.stdout.write(text + "\n")


def fail(message: str) -> int:
    print(f"clipforge: error: {message}", file=sys.stderr)
    return 1


def preprocessed_batches(paths: list[str], preprocess, batch_size: int):
    """Yield (images (B, 3, H, W) or None, readable paths, skipped [{"image", "error"}]) per batch of paths.

    Unreadable files are skipped and reported, never fatal (a long job keeps going).
    """
    import torch

    from ..image import ImageLoadError, load_image

    for start in range(0, len(paths), batch_size):
        tensors, kept, skipped = [], [], []
        for path in paths[start : start + batch_size]:
            try:
                tensors.append(preprocess(load_image(path)))
                kept.append(path)
            except (ImageLoadError, OSError) as exc:
                skipped.append({"image": path, "error": str(exc)})
        yield (torch.stack(tensors) if tensors else None), kept, skipped
