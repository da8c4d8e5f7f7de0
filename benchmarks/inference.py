"""ViT-B/32 inference throughput: clipforge vs open_clip vs transformers, in one process.

All three libraries run the *same* random weights (clipforge's model exported to each format), on
the same inputs, at fp32 and bf16 (each library's weights cast to bf16, the fastest mode of each on
a CPU with bf16 matrix units such as AMX; see benchmarks/RESULTS.md). For every mode the script
reports images/s and texts/s, the ratio to the faster peer, and the cosine similarity of its features
to clipforge's fp32 features (the agreement check: ~1.0 at fp32, ~0.99+ at bf16). Tokenizer
throughput on 10,000 captions comes from benchmarks/tokenizer.py.

    .venv/bin/python benchmarks/inference.py                 # full run, writes a Markdown table
    .venv/bin/python benchmarks/inference.py --batch 8 --iters 1   # quick check

Issue 11 families (same batch and modes; `--model` picks them):

    .venv/bin/python benchmarks/inference.py --model SigLIP-B-16 --iters 1   # clipforge vs open_clip vs SiglipModel
    .venv/bin/python benchmarks/inference.py --model EVA02-B-16 --iters 1    # clipforge vs open_clip (timm EVA)
    .venv/bin/python benchmarks/inference.py --model convnext_base --iters 1  # clipforge vs open_clip (timm ConvNeXt)
    .venv/bin/python benchmarks/inference.py --model MobileCLIP-B --iters 1  # clipforge vs open_clip (timm MCi ViT)
    .venv/bin/python benchmarks/inference.py --model MobileCLIP-S2 --iters 1  # FastViT MCi2, both reparameterised
    .venv/bin/python benchmarks/inference.py --model SigLIP-B-16 --modes bf16 --batch 8 --iters 1   # bf16 only

SigLIP B/16 is transformers' default SiglipConfig (siglip-base-patch16-224) with clipforge's weights exported to
SiglipModel; open_clip's ViT-B-16-SigLIP gets the same weights when its state dict maps onto clipforge's (else its
own random weights, and its cosine column reads nan: throughput does not depend on the values). Its text rows are
random ids at the full 64 positions (SigLIP pads every caption to 64 and attends to the padding: no trimming).
EVA02-B/16 is open_clip's EVA02-B-16 (timm eva02_base_patch16_clip_224) with random weights, loaded into clipforge;
convnext_base and MobileCLIP-B likewise (open_clip's timm towers). bf16 (`--modes`, default "fp32,bf16") casts every
library's weights and the images to bfloat16, the same dtype for all (no autocast), and its cosine column compares
each library's bf16 features with clipforge's fp32 ones.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

# torchvision 0.28 from PyPI is a CUDA build; defining these two schemas lets open_clip import on CPU torch.
try:
    _TV = torch.library.Library("torchvision", "DEF")
    _TV.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TV.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
except RuntimeError:
    pass

sys.path.insert(0, str(Path(__file__).parent))

# Issue 11 rows (run_family); other names go through `run`. The open_clip-built families are loaded into clipforge
# from open_clip's random weights (build_openclip_family); SigLIP also runs transformers' SiglipModel.
OPENCLIP_FAMILIES = ("EVA02-B-16", "convnext_base", "MobileCLIP-B", "MobileCLIP-S2")
FAMILIES = ("SigLIP-B-16", *OPENCLIP_FAMILIES)

CAPTIONS = [
    "a photo of a dog running on the beach",
    "two people riding bicycles down a city street at night",
    "a bowl of fresh fruit on a wooden table",
    "an aerial view of a mountain lake surrounded by pine trees",
]


def timed(fn: Callable[[], torch.Tensor], iters: int) -> tuple[float, torch.Tensor]:
    """Median seconds per call after one warm-up call, and the last output."""
    with torch.inference_mode():
        out = fn()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times), out


def build_models(name: str):
    import open_clip
    import transformers

    import clipforge
    from clipforge.weights.hf import clipforge_to_hf, config_to_hf
    from clipforge.weights.openclip import clipforge_to_openclip_keys, config_to_openclip

    torch.manual_seed(0)
    ours = clipforge.create_model(name).eval()
    sd = ours.state_dict()
    oc_cfg = config_to_openclip(ours.config)["model_cfg"]
    theirs_oc = open_clip.model.CLIP(**oc_cfg).eval()
    theirs_oc.load_state_dict(clipforge_to_openclip_keys(sd), strict=True)
    hf_cfg = transformers.CLIPConfig.from_dict(config_to_hf(ours.config))
    theirs_hf = transformers.CLIPModel(hf_cfg).eval()
    missing, unexpected = theirs_hf.load_state_dict(clipforge_to_hf(sd, ours.config), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return ours, theirs_oc, theirs_hf


def build_siglip():
    """clipforge, open_clip and transformers SigLIP B/16 models; the first two share weights where they map."""
    import open_clip
    import transformers

    import clipforge
    from clipforge.weights.hf_siglip import clipforge_to_hf_siglip, config_from_hf_siglip
    from clipforge.weights.openclip import openclip_to_clipforge_keys

    hf_cfg = transformers.SiglipConfig()  # siglip-base-patch16-224: ViT-B/16 224 px, text width 768, 64 positions
    torch.manual_seed(0)
    ours = clipforge.CLIP(config_from_hf_siglip(hf_cfg.to_dict())).eval()
    oc = open_clip.create_model("ViT-B-16-SigLIP").eval()
    try:  # the same random weights in both when open_clip's SigLIP keys map onto clipforge's
        ours.load_state_dict(openclip_to_clipforge_keys(oc.state_dict()), strict=True)
        shared = True
    except (RuntimeError, KeyError, ValueError):
        shared = False
    hf = transformers.SiglipModel(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(clipforge_to_hf_siglip(ours.state_dict(), ours.config), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return ours, oc, hf, shared


def build_openclip_family(name: str = "EVA02-B-16"):
    """open_clip's model `name` (EVA02-B-16, convnext_base, MobileCLIP-B: timm towers) with random weights, and
    clipforge's model loaded from it."""
    import open_clip

    import clipforge
    from clipforge.weights.openclip import openclip_to_clipforge_keys

    torch.manual_seed(0)
    oc = open_clip.create_model(name).eval()
    with torch.no_grad():  # timm zero-inits biases: move every parameter so the agreement check means something
        for p in oc.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = clipforge.create_model(name).eval()
    ours.load_state_dict(openclip_to_clipforge_keys(oc.state_dict()), strict=True)
    if ours.config.vision.fastvit is not None:  # FastViT runs fused at inference in both libraries
        from timm.utils.model import reparameterize_model

        ours.visual.reparameterize()
        oc = reparameterize_model(oc)
    return ours, oc


def run_family(name: str, batch: int = 32, iters: int = 3, threads: int | None = None,
               modes: tuple[str, ...] = ("fp32", "bf16")) -> list[dict]:
    """Rows as `run` for the issue-11 families: "SigLIP-B-16" (3 libraries) or one of OPENCLIP_FAMILIES (clipforge,
    open_clip)."""
    import open_clip

    import clipforge

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(1)
    if name == "SigLIP-B-16":
        ours, oc, hf, shared = build_siglip()
        tokens = torch.randint(2, ours.config.text.vocab_size, (batch, ours.context_length))  # (B, 64)
        libs = {
            "clipforge": (ours.encode_image, lambda: ours.encode_text(tokens)),
            "open_clip": (oc.encode_image, lambda: oc.encode_text(tokens)),
            "transformers": (
                lambda x: _features(hf.get_image_features(pixel_values=x)),
                lambda: _features(hf.get_text_features(input_ids=tokens)),
            ),
        }
        agreeing = {"clipforge", "transformers"} | ({"open_clip"} if shared else set())
        models = (ours, oc, hf)
    elif name in OPENCLIP_FAMILIES:
        ours, oc = build_openclip_family(name)
        texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
        tokens_cf, tokens_oc = clipforge.get_tokenizer(ours)(texts), open_clip.tokenize(texts)
        assert torch.equal(tokens_cf, tokens_oc)
        libs = {
            "clipforge": (ours.encode_image, lambda: ours.encode_text(tokens_cf)),
            "open_clip": (oc.encode_image, lambda: oc.encode_text(tokens_oc)),
        }
        agreeing = set(libs)
        models = (ours, oc)
    else:
        raise ValueError(f"unknown family {name!r}; expected one of {', '.join(FAMILIES)}")
    images = torch.randn(batch, 3, ours.image_size, ours.image_size)
    rows, reference = [], {}

    def cos(features: torch.Tensor, kind: str) -> float:
        """Mean cosine to clipforge's fp32 features of the same inputs (nan without an fp32 run)."""
        return float((features * reference[kind]).sum(-1).mean()) if kind in reference else float("nan")
    for mode in modes:
        if mode == "bf16":
            for model in models:
                model.to(torch.bfloat16)
        x = images.to(torch.bfloat16) if mode == "bf16" else images
        for lib, (enc_img, enc_txt) in libs.items():
            t_img, f_img = timed(lambda enc_img=enc_img, x=x: enc_img(x), iters)
            t_txt, f_txt = timed(enc_txt, iters)
            f_img, f_txt = F.normalize(f_img.float(), dim=-1), F.normalize(f_txt.float(), dim=-1)
            if lib == "clipforge" and mode == "fp32":
                reference = {"image": f_img, "text": f_txt}
            nan = float("nan")
            rows.append(
                {
                    "library": lib,
                    "mode": mode,
                    "images_per_s": batch / t_img,
                    "texts_per_s": batch / t_txt,
                    # nan when the library has other weights, or when fp32 did not run (no reference)
                    "image_cos_to_fp32": cos(f_img, "image") if lib in agreeing else nan,
                    "text_cos_to_fp32": cos(f_txt, "text") if lib in agreeing else nan,
                }
            )
    return rows


def _features(out) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features; 4.x a tensor."""
    return out if torch.is_tensor(out) else out.pooler_output


def encoders(ours, oc, hf, tokens_cf, tokens_oc):
    def hf_image(x):
        out = hf.get_image_features(pixel_values=x)
        return out if torch.is_tensor(out) else out.pooler_output

    def hf_text(t):
        out = hf.get_text_features(input_ids=t)
        return out if torch.is_tensor(out) else out.pooler_output

    return {
        "clipforge": (ours.encode_image, lambda: ours.encode_text(tokens_cf)),
        "open_clip": (oc.encode_image, lambda: oc.encode_text(tokens_oc)),
        "transformers": (hf_image, lambda: hf_text(tokens_oc)),
    }


def run(name: str = "ViT-B-32", batch: int = 32, iters: int = 3, threads: int | None = None) -> list[dict]:
    import open_clip

    import clipforge

    if threads:
        torch.set_num_threads(threads)
    ours, oc, hf = build_models(name)
    torch.manual_seed(1)
    images = torch.randn(batch, 3, ours.image_size, ours.image_size)
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    tokens_cf = clipforge.get_tokenizer(ours)(texts)
    tokens_oc = open_clip.tokenize(texts)
    assert torch.equal(tokens_cf, tokens_oc)

    rows = []
    reference: dict[str, torch.Tensor] = {}
    for mode in ("fp32", "bf16"):
        if mode == "bf16":
            for model in (ours, oc, hf):
                model.to(torch.bfloat16)
        x = images.to(torch.bfloat16) if mode == "bf16" else images
        for lib, (enc_img, enc_txt) in encoders(ours, oc, hf, tokens_cf, tokens_oc).items():
            t_img, f_img = timed(lambda enc_img=enc_img, x=x: enc_img(x), iters)
            t_txt, f_txt = timed(enc_txt, iters)
            f_img, f_txt = F.normalize(f_img.float(), dim=-1), F.normalize(f_txt.float(), dim=-1)
            if lib == "clipforge" and mode == "fp32":
                reference = {"image": f_img, "text": f_txt}
            rows.append(
                {
                    "library": lib,
                    "mode": mode,
                    "images_per_s": batch / t_img,
                    "texts_per_s": batch / t_txt,
                    "image_cos_to_fp32": float((f_img * reference["image"]).sum(-1).mean()),
                    "text_cos_to_fp32": float((f_txt * reference["text"]).sum(-1).mean()),
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| library | mode | images/s | x best peer | texts/s | x best peer | image cos vs fp32 | text cos vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        peers = [r for r in rows if r["mode"] == row["mode"] and r["library"] != "clipforge"]
        best_img = max(r["images_per_s"] for r in peers)
        best_txt = max(r["texts_per_s"] for r in peers)
        lines.append(
            f"| {row['library']} | {row['mode']} | {row['images_per_s']:.1f} | {row['images_per_s'] / best_img:.2f} "
            f"| {row['texts_per_s']:.1f} | {row['texts_per_s'] / best_txt:.2f} | {row['image_cos_to_fp32']:.5f} "
            f"| {row['text_cos_to_fp32']:.5f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--captions", type=int, default=10000, help="tokenizer benchmark size")
    parser.add_argument(
        "--modes", default="fp32,bf16", help=f"{' / '.join(FAMILIES)} only: comma-separated modes (fp32, bf16)"
    )
    args = parser.parse_args(argv)
    print(
        f"# {args.model}, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    if args.model in FAMILIES:
        modes = tuple(m for m in args.modes.split(",") if m)
        print(format_table(run_family(args.model, args.batch, args.iters, args.threads, modes)))
        return 0
    print(format_table(run(args.model, args.batch, args.iters, args.threads)))
    import tokenizer as tokenizer_bench

    tok = tokenizer_bench.run(args.captions)
    print(f"\ntokenizer on {args.captions} captions: {tok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
