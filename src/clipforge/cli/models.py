"""`clipforge models`: the architectures clipforge builds and the pretrained weights it can fetch."""

from __future__ import annotations

import argparse

from .common import add_common_arguments, print_json
from .errors import CliParser, command


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge models` argument parser (also the source of its --help)."""
    parser = CliParser(
        prog="clipforge models",
        description="List model architectures (for --model) and pretrained tags (for --pretrained).",
    )
    parser.add_argument("--pretrained", action="store_true", help="list (architecture, tag) pairs with weights")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_common_arguments(parser)
    return parser


def _tower_name(cfg) -> str:
    """The image tower in a few characters: ConvNeXt, ModifiedResNet or ViT/patch (EVA for EVA blocks, MCi for
    MobileCLIP's convolutional stem)."""
    if cfg.vision.convnext:
        return "ConvNeXt"
    if cfg.vision.fastvit is not None:  # MobileCLIP's FastViT: MCi0-2 (4 stages) or MCi3/4 (5 stages)
        return f"FastViT-MCi/{len(cfg.vision.layers)}st"
    if cfg.vision.is_resnet:
        return "ModifiedResNet"
    kind = "EVA-ViT" if cfg.vision.rope else "MCi-ViT" if cfg.vision.conv_stem else "ViT"
    return f"{kind}/{cfg.vision.patch_size}" + ("+HF text" if cfg.text.is_hf else "")


@command("clipforge models")
def main(argv: list[str] | None = None) -> int:
    """`clipforge models`: list architectures, or (architecture, tag) pairs with --pretrained; returns the exit code."""
    from ..models.registry import get_model_config, list_models
    from ..weights.pretrained import PRETRAINED

    args = build_parser().parse_args(argv)
    if args.pretrained:
        rows = [{"model": p.arch, "tag": p.tag, "hub": p.hub_id} for p in PRETRAINED]
        if args.json:
            print_json(rows, None)
        else:
            for row in rows:
                print(f"{row['model']:<24} {row['tag']:<24} {row['hub']}")
        return 0
    rows = []
    for name in list_models():
        cfg = get_model_config(name)
        tower = _tower_name(cfg)
        rows.append({"model": name, "image": tower, "image_size": cfg.vision.image_size, "embed_dim": cfg.embed_dim})
    if args.json:
        print_json(rows, None)
    else:
        for row in rows:
            print(f"{row['model']:<26} {row['image']:<16} {row['image_size']:>4}px  dim {row['embed_dim']}")
    return 0
