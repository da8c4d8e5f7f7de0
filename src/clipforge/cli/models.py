"""`clipforge models`: the architectures clipforge builds and the pretrained weights it can fetch."""

from __future__ import annotations

import argparse

from .common import add_common_arguments, print_json
from .errors import CliParser, command


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge models` argument parser (also the source of its --help)."""
    parser = CliParser(
        prog="clipforge models",
        description="List model architectures (for --model): image tower, input size, embedding width and text tower "
        "(causal or bidirectional attention / context length / vocabulary, or the Hugging Face encoder), or with "
        "--pretrained the (architecture, tag) pairs that have published weights.",
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
    return f"{kind}/{cfg.vision.patch_size}"


def _text_name(cfg) -> str:
    """The text tower and its tokenizer in a few words, so a newcomer sees which family a name belongs to:
    `HF xlm-roberta`, `causal/77 CLIP-BPE`, `bidir/64 vocab 256000` (SentencePiece / tokenizer.json vocabularies)."""
    text = cfg.text
    if text.is_hf:
        return f"HF {text.hf_config.get('model_type', '?')}"
    attention = "causal" if text.causal_mask else "bidir"
    vocab = "CLIP-BPE" if text.vocab_size == 49408 else f"vocab {text.vocab_size}"
    return f"{attention}/{text.context_length} {vocab}"


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
        rows.append(
            {
                "model": name, "image": tower, "text": _text_name(cfg), "image_size": cfg.vision.image_size,
                "embed_dim": cfg.embed_dim,
            }
        )
    if args.json:
        print_json(rows, None)
    else:
        for row in rows:
            print(
                f"{row['model']:<30} {row['image']:<16} {row['image_size']:>4}px  dim {row['embed_dim']:<5} "
                f"text {row['text']}"
            )
    return 0
