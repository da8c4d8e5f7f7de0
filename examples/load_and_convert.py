"""Load a checkpoint in one format, save it as clipforge / OpenCLIP / Hugging Face, reload each, compare embeddings.

Shows checkpoint interop: `clipforge.load_model` reads any supported format (OpenAI TorchScript or state dict,
OpenCLIP files and hub folders, Hugging Face `CLIPModel` folders, clipforge folders) and infers the
architecture; `clipforge.convert` / `clipforge.save_model` write the three folder formats. Each converted
folder is loaded back and must give the same image and text embeddings as the original.

    python examples/load_and_convert.py                                   # a random tiny-vit, all three formats
    python examples/load_and_convert.py ViT-B-32.pt --out converted/      # OpenAI checkpoint -> all formats
    python examples/load_and_convert.py --model ViT-B-32 --pretrained openai --formats hf --image cat.jpg

The HF folder loads with `transformers.CLIPModel.from_pretrained`, the OpenCLIP folder with
`open_clip.create_model_from_pretrained("local-dir:...")`; this script only needs clipforge.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

import clipforge

FORMATS = ("clipforge", "openclip", "hf")
TEXTS = ["a photo of a cat.", "a diagram of a neural network.", "an empty street at night."]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", default=None, help="checkpoint file/folder or hub id to convert")
    parser.add_argument("--model", default="tiny-vit", help="architecture, when no source is given")
    parser.add_argument("--pretrained", default=None, help="pretrained tag for --model (instead of a source)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--out", type=Path, default=Path("converted"), help="one sub-folder per format")
    parser.add_argument("--image", type=Path, default=None, help="image to embed (default: a generated one)")
    parser.add_argument("--rtol", type=float, default=1e-5, help="allowed difference relative to the scale")
    return parser.parse_args(argv)


def demo_image(size: int = 256) -> Image.Image:
    """A deterministic colourful picture, so the check needs no file."""
    x = torch.linspace(0, 1, size)
    r, g = x.view(1, -1).expand(size, size), x.view(-1, 1).expand(size, size)
    b = ((r * 8).floor() + (g * 8).floor()) % 2  # checkerboard
    pixels = (torch.stack([r, g, b], dim=-1) * 255).round().to(torch.uint8)  # (H, W, 3)
    return Image.fromarray(pixels.numpy())


@torch.no_grad()
def embed(model: clipforge.CLIP, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image (1, D) and text (len(TEXTS), D) embeddings in fp32."""
    model = model.float().eval()
    pixels = clipforge.get_preprocess(model)(image).unsqueeze(0)  # (1, 3, H, W)
    tokens = clipforge.get_tokenizer(model)(TEXTS)  # (T, context_length)
    return model.encode_image(pixels, normalize=True), model.encode_text(tokens, normalize=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.source is not None:
        source = args.source
    else:  # no checkpoint given: make one, so the demo converts a file like a user would
        torch.manual_seed(0)
        model = clipforge.create_model(args.model, pretrained=args.pretrained)
        source = str(clipforge.save_model(model, args.out / "source"))
    original = clipforge.load_model(source)
    print(f"loaded {source}: {sum(p.numel() for p in original.parameters()):,} parameters")
    image = clipforge.load_image(args.image) if args.image else demo_image()
    ref_image, ref_text = embed(original, image)

    failures = 0
    print(f"{'format':<10} {'folder':<40} {'image max|diff|':>16} {'text max|diff|':>15}  ok")
    for fmt in args.formats:
        folder = clipforge.convert(source, args.out / fmt, format=fmt)  # read any format, write this one
        image_features, text_features = embed(clipforge.load_model(folder), image)
        d_image = (image_features - ref_image).abs().max().item()
        d_text = (text_features - ref_text).abs().max().item()
        ok = d_image <= args.rtol * ref_image.abs().max().item() and d_text <= args.rtol * ref_text.abs().max().item()
        failures += not ok
        print(f"{fmt:<10} {str(folder):<40} {d_image:>16.2e} {d_text:>15.2e}  {'yes' if ok else 'NO'}")
    if failures:
        print(f"error: {failures} format(s) changed the embeddings beyond rtol={args.rtol}", file=sys.stderr)
        return 1
    print(f"all {len(args.formats)} formats reload with the same embeddings (rtol {args.rtol})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
