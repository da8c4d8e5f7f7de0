"""ViT-B/32 inference throughput: clipforge vs open_clip vs transformers, in one process.

All three libraries run the *same* random weights (clipforge's model exported to each format), on
the same inputs, at fp32 and bf16 (each library's weights cast to bf16, the fastest mode of each on
a CPU with bf16 matrix units such as AMX; see benchmarks/RESULTS.md). For every mode the script
reports images/s and texts/s, the ratio to the faster peer, and the cosine similarity of its features
to clipforge's fp32 features (the agreement check: ~1.0 at fp32, ~0.99+ at bf16). Tokenizer
throughput on 10,000 captions comes from benchmarks/tokenizer.py.

    .venv/bin/python benchmarks/inference.py                 # full run, writes a Markdown table
    .venv/bin/python benchmarks/inference.py --batch 8 --iters 1   # quick check
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
    args = parser.parse_args(argv)
    print(
        f"# {args.model}, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(format_table(run(args.model, args.batch, args.iters, args.threads)))
    import tokenizer as tokenizer_bench

    tok = tokenizer_bench.run(args.captions)
    print(f"\ntokenizer on {args.captions} captions: {tok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
