"""`clipforge convert`: rewrite a checkpoint in clipforge, OpenCLIP or Hugging Face format."""

from __future__ import annotations

import argparse

from .common import add_common_arguments
from .errors import CliParser, command


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge convert` argument parser (also the source of its --help)."""
    parser = CliParser(
        prog="clipforge convert",
        description="Read any checkpoint clipforge loads (OpenAI .pt/TorchScript, OpenCLIP .pt/.bin/.safetensors "
        "or hub folder, HF CLIPModel / SiglipModel / Siglip2Model / AltCLIPModel / ChineseCLIPModel folder, "
        "big_vision SigLIP .npz, clipforge folder) and write it "
        "as a folder in another format. A format that cannot hold the model is refused before anything is written "
        "(EVA02 / ConvNeXt as hf, a SigLIP or EVA02 no timm model has as openclip); SigLIP and EVA02 go to "
        "openclip, AltCLIP and Chinese-CLIP to hf (AltCLIPModel / ChineseCLIPModel); unsupported families (CoCa, "
        "reparameterised MobileCLIP, BLIP, ALIGN, NaFlex SigLIP 2) are named with the closest supported one.",
        epilog="examples: clipforge convert ViT-B-32.pt vitb32-hf --to hf; "
        "clipforge convert webli_en_b16_224_63724782.npz siglip-b16-hf --to hf",
    )
    parser.add_argument("source", help="checkpoint file, folder, ARCH:TAG or hub id")
    parser.add_argument("destination", help="output folder (created)")
    parser.add_argument("--to", choices=["clipforge", "openclip", "hf"], default="clipforge", help="output format")
    parser.add_argument("--arch", default=None, help="architecture of a bare state dict (e.g. ViT-B-32-quickgelu)")
    parser.add_argument("--allow-unsafe-pickle", action="store_true", help="trust a legacy pickle (full unpickling)")
    add_common_arguments(parser)
    return parser


@command("clipforge convert")
def main(argv: list[str] | None = None) -> int:
    """`clipforge convert SOURCE DESTINATION --to FORMAT`; returns the exit code."""
    args = build_parser().parse_args(argv)
    from ..weights.loading import convert

    # Errors (CheckpointError, ConfigError, OSError) are reported by cli.errors with their exit codes.
    out = convert(args.source, args.destination, args.to, arch=args.arch, allow_unsafe_pickle=args.allow_unsafe_pickle)
    print(f"wrote {args.to} checkpoint to {out}")
    return 0
