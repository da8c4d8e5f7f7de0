"""Tokenizer speed: clipforge's `CLIPTokenizer` against open_clip's `tokenize`, same captions, one process.

Both produce OpenAI's CLIP token ids (Radford et al. 2021; OpenAI's simple_tokenizer); the run checks the
two outputs are identical before reporting captions per second.

    .venv/bin/python benchmarks/tokenizer.py            # 10,000 captions
    .venv/bin/python benchmarks/tokenizer.py -n 50000

`run(n)` returns the numbers as a dict for benchmarks/inference.py. open_clip's import sets
TOKENIZERS_PARALLELISM=false for the whole process; clipforge is timed both with the Rust thread pool
(the `tokenizers` default) and single-threaded, and the variable is restored afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

_ADJ = "red blue green yellow white black brown small large old young happy wooden tall empty busy".split()
_NOUN = (
    "dog cat man woman child boy girl bird horse car bus train bicycle table chair pizza cake plate "
    "laptop phone kite surfboard skateboard umbrella clock vase bench elephant giraffe zebra sheep cow"
).split()
_VERB = "sitting standing running riding holding eating playing looking walking lying flying parked".split()
_PLACE = ["the beach", "a street", "the kitchen", "a field", "the park", "a table", "the snow", "a room", "the city"]
_TV_LIB: torch.library.Library | None = None  # keeps the torchvision schemas below registered


def make_captions(n: int, seed: int = 0) -> list[str]:
    """`n` short COCO-style captions, deterministic in `seed`."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        subject = f"A {rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_VERB)}"
        place = f"next to {rng.randint(2, 9)} {rng.choice(_NOUN)}s on {rng.choice(_PLACE)}"
        out.append(f"{subject} {place}{rng.choice(['.', '', ' .', ' in the morning.', ', with a view.'])}")
    return out


def _import_open_clip() -> ModuleType:
    """Import open_clip beside a CUDA torchvision wheel (see tests/conftest.py), keeping the environment."""
    global _TV_LIB
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TV_LIB = lib
    except RuntimeError:  # already defined (a real CPU torchvision, or a second call)
        pass
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    import open_clip

    if before is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = before
    return open_clip


def _rate(fn: Callable[[list[str]], Any], captions: list[str], repeats: int) -> float:
    """Median captions per second over `repeats` timed calls on the whole list."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(captions)
        times.append(time.perf_counter() - t0)
    return len(captions) / statistics.median(times)


def _with_parallelism(value: str, fn: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    def call(captions: list[str]) -> Any:
        before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = value  # read by `tokenizers` at each batch call
        try:
            return fn(captions)
        finally:
            if before is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before

    return call


def run(n: int = 10000, repeats: int = 3) -> dict:
    """Time both tokenizers on `n` captions (after a warm-up on other captions) and compare their ids."""
    from clipforge.text import CLIPTokenizer

    open_clip = _import_open_clip()
    captions, warmup = make_captions(n, seed=0), make_captions(1000, seed=1)
    ours = CLIPTokenizer()
    theirs = open_clip.tokenize
    parallel, single = _with_parallelism("true", ours), _with_parallelism("false", ours)
    for fn in (theirs, parallel, single):
        fn(warmup)
    identical = torch.equal(parallel(captions), theirs(captions))
    result = {
        "n": n,
        "identical_ids": identical,
        "open_clip_captions_per_s": _rate(theirs, captions, repeats),
        "clipforge_captions_per_s": _rate(parallel, captions, repeats),
        "clipforge_single_thread_captions_per_s": _rate(single, captions, repeats),
        "cpu_count": os.cpu_count(),
    }
    baseline = result["open_clip_captions_per_s"]
    result["speedup"] = result["clipforge_captions_per_s"] / baseline
    result["speedup_single_thread"] = result["clipforge_single_thread_captions_per_s"] / baseline
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10000, help="number of captions")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per tokenizer (median reported)")
    args = parser.parse_args(argv)
    r = run(args.n, args.repeats)
    print(f"{r['n']} captions, {r['cpu_count']} CPUs, identical ids: {r['identical_ids']}")
    print(f"open_clip.tokenize            {r['open_clip_captions_per_s']:>12,.0f} captions/s")
    print(f"clipforge CLIPTokenizer       {r['clipforge_captions_per_s']:>12,.0f} captions/s  ({r['speedup']:.1f}x)")
    print(
        f"clipforge, one Rust thread    {r['clipforge_single_thread_captions_per_s']:>12,.0f} captions/s  "
        f"({r['speedup_single_thread']:.1f}x)"
    )
    return 0 if r["identical_ids"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
