"""WiSE-FT on Fashion-MNIST: zero-shot model -> end-to-end fine-tuning -> alpha sweep on in- and out-of-distribution.

The full path of issue 9's fine-tuning item, as a user runs it, in one process:

1. the zero-shot model: the quickstart's `runs/fashion_mnist` (trained with `clipforge train fashion_mnist` when
   missing);
2. end-to-end fine-tuning of its image tower with cross-entropy against its own zero-shot head
   (`clipforge train fashion_mnist_ft`, WiSE-FT's / FLYP's recipe; the text tower stays locked);
3. `clipforge eval --task wise_ft`: the weight-space interpolation at each alpha, scored by zero-shot top-1 on the
   10,000 test images (in distribution) and on five deterministic shifts of them (out of distribution: inverted,
   rotated by 90 degrees, Gaussian noise, blurred, low contrast).

    .venv/bin/python benchmarks/wise_ft.py                    # ~5 min on 2 idle cores
    .venv/bin/python benchmarks/wise_ft.py --reuse            # keep runs/fashion_mnist_ft if it is there
    .venv/bin/python benchmarks/wise_ft.py --max-samples 2000 # a quicker, noisier sweep

Prints the report's Markdown table; the JSON, Markdown and the OOD-vs-ID plot are left in --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from clipforge.cli.main import main as clipforge


def _run(argv: list[str]) -> None:
    print("$ clipforge " + " ".join(argv), flush=True)
    start = time.perf_counter()
    code = clipforge(argv)
    if code != 0:
        sys.exit(f"clipforge {argv[0]} failed with exit code {code}")
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zero-shot-run", default="runs/fashion_mnist", help="quickstart run (trained if missing)")
    parser.add_argument("--fine-tuned-run", default="runs/fashion_mnist_ft", help="where the fine-tuning run goes")
    parser.add_argument("--reuse", action="store_true", help="reuse --fine-tuned-run's model when it exists")
    parser.add_argument("--alphas", nargs="+", default=["0", "0.25", "0.5", "0.75", "1"])
    parser.add_argument("--max-samples", type=int, default=None, help="test images per set (default: all 10,000)")
    parser.add_argument("--out", default="runs/wise_ft_report", help="report folder")
    args = parser.parse_args(argv)

    zero_shot, fine_tuned = Path(args.zero_shot_run), Path(args.fine_tuned_run)
    if not (zero_shot / "model").is_dir():
        _run(["train", "fashion_mnist", f"--output_dir={zero_shot}", "--logging.progress=false"])
    if not (args.reuse and (fine_tuned / "model").is_dir()):
        _run(
            [
                "train", "fashion_mnist_ft", "--arg", str(zero_shot), f"--output_dir={fine_tuned}", "--restart",
                "--logging.progress=false",
            ]
        )
    sweep = [
        "eval", "--task", "wise_ft", "--dataset", "fashion_mnist",
        "--zero-shot", str(zero_shot / "model"), "--fine-tuned", str(fine_tuned / "model"),
        "--alphas", *args.alphas, "--ood", "invert", "rotate90", "noise", "blur", "lowcontrast",
        "--out", args.out, "--quiet",
    ]
    if args.max_samples:
        sweep += ["--max-samples", str(args.max_samples)]
    _run(sweep)
    print((Path(args.out) / "wise_ft.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
