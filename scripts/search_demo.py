"""Search demo: a collection indexed and searched end to end, with a CLIP trained here on it.

No pretrained weights are needed: the demo trains the packaged recipe `emoji` (a small CLIP that learns the
English names of the Noto emoji) and then runs, in this process, the same commands a user would type:

1. clipforge data export-collection emoji --out OUT/emoji --size 96      (PNGs + captions.csv, ~30 s once)
2. clipforge train emoji --arg OUT/emoji/captions.csv --output_dir=OUT/train    (~3 min on 2 CPU cores)
3. clipforge index build OUT/emoji/captions.csv --out OUT/emoji.index --pretrained OUT/train/model
4. clipforge search OUT/emoji.index "red heart"  (three text queries and one query by example, with the rank
   of the expected emoji), and the text->image recall of every emoji name over the whole index;
5. prints the command that opens the search page: clipforge serve OUT/emoji.index.

The recall is measured on the training images themselves: it shows the plumbing and a model that learned the
names, not generalisation to unseen images. Rerunning reuses what exists (the export, the trained model, the
index); delete OUT to start over.

    python scripts/search_demo.py                     # OUT = runs/search_demo
    python scripts/search_demo.py --smoke             # 40 emoji, 8 training steps: plumbing check (tests)
    python scripts/search_demo.py --limit 200 --max-steps 50 --out /tmp/demo
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from clipforge.atomic import atomic_write_bytes
from clipforge.cli.main import main as clipforge
from clipforge.cli.search import print_table
from clipforge.jsonio import json_text

EXPORT_SIZE = 96  # PNG side: the model sees 48 px; 96 px keeps the page's thumbnails readable and decoding cheap
SMOKE_LIMIT, SMOKE_STEPS = 40, 8
# (query, caption of the emoji it should find)
TEXT_QUERIES = (("red heart", "red heart"), ("cat face", "cat face"), ("flag of Japan", "flag of Japan"))
EXAMPLE_CAPTION = "grinning cat"  # the query by example: this emoji's exported PNG


class DemoError(RuntimeError):
    """A stage failed; the message names the command and its exit code."""


def run(argv: list[str]) -> None:
    """Print `clipforge ARGV` as a shell command, then run it in this process; DemoError if it fails."""
    print(f"\n$ clipforge {shlex.join(argv)}", flush=True)
    code = clipforge(argv)
    if code != 0:
        raise DemoError(f"`clipforge {shlex.join(argv)}` failed with exit code {code} (its message is above)")


def train_model(captions: Path, run_dir: Path, limit: int | None, max_steps: int | None) -> Path:
    """The trained model folder: reused when run_dir/model exists, else trained (an interrupted run resumes)."""
    model_dir = run_dir / "model"
    if (model_dir / "clipforge_model.safetensors").is_file():  # written last, when training finished
        print(f"\nreusing the trained model {model_dir} (delete {run_dir} to train again)")
        return model_dir
    argv = ["train", "emoji", "--arg", str(captions), f"--output_dir={run_dir}"]
    if max_steps is not None:
        argv.append(f"--schedule.max_steps={max_steps}")
        argv.append("--schedule.warmup_steps=1")
    if limit is not None and limit < 256:  # one batch must fit in the export (the last partial batch is dropped)
        argv.append(f"--data.batch_size={max(2, min(limit, 32))}")
    started = time.perf_counter()
    run(argv)
    print(f"training took {time.perf_counter() - started:.0f} s")
    return model_dir


def rank_of(results, caption: str) -> int | None:
    """1-based rank of the first result captioned `caption`, None if absent."""
    for rank, result in enumerate(results, 1):
        if result.metadata.get("caption") == caption:
            return rank
    return None


def show_query(searcher, query: str, expected: str, shown: int) -> int | None:
    """Print the top `shown` results of `query` as `clipforge search` does, and the rank of `expected`."""
    results = searcher.search(query, k=searcher.index("image").ntotal)
    print(f"\n$ clipforge search {shlex.quote(str(searcher.layout.root))} {shlex.quote(query)} -k {shown}")
    print_table(results[:shown])
    rank = rank_of(results, expected)
    print(f"-> {expected!r} is at rank {rank}" if rank else f"-> {expected!r} is not in this index")
    return rank


def recall_at(texts: np.ndarray, images: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Text->image R@k when text row i describes image row i: texts (N, D), images (N, D), unit rows."""
    sims = texts @ images.T  # (N texts, N images)
    # rank of the right image = how many images score strictly higher than it (ties count in its favour)
    ranks = (sims > np.diag(sims)[:, None]).sum(axis=1)  # (N,)
    return {f"R@{k}": float((ranks < k).mean()) for k in ks}


def text_recall(index_dir: Path) -> dict[str, float]:
    """Text->image R@1/R@5/R@10 of every caption against every image, from the embeddings the index stored."""
    from clipforge.search.layout import IndexLayout

    layout = IndexLayout(index_dir)
    images = np.asarray(layout.load_embeddings("image", mmap=False), dtype=np.float32)  # (N, D), unit rows
    texts = np.asarray(layout.load_embeddings("text", mmap=False), dtype=np.float32)  # (N, D), row i = caption i
    return recall_at(texts, images) | {"n": len(texts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/search_demo", help="folder of everything the demo makes")
    parser.add_argument("--limit", type=int, default=None, help="export and index only the first N emoji")
    parser.add_argument("--max-steps", type=int, default=None, help="cap the training steps (default: the recipe's)")
    parser.add_argument("--smoke", action="store_true", help=f"--limit {SMOKE_LIMIT} --max-steps {SMOKE_STEPS}")
    parser.add_argument("--port", type=int, default=1234, help="the port printed in the serve command")
    args = parser.parse_args(argv)
    if args.smoke:
        args.limit = args.limit or SMOKE_LIMIT
        args.max_steps = args.max_steps or SMOKE_STEPS
    out = Path(args.out)
    export_dir, index_dir = out / "emoji", out / "emoji.index"
    captions = export_dir / "captions.csv"
    started = time.perf_counter()
    try:
        export = ["data", "export-collection", "emoji", "--out", str(export_dir), "--size", str(EXPORT_SIZE)]
        run(export + (["--limit", str(args.limit)] if args.limit else []))
        model_dir = train_model(captions, out / "train", args.limit, args.max_steps)
        run(["index", "build", str(captions), "--out", str(index_dir), "--pretrained", str(model_dir)])
    except DemoError as exc:
        print(f"search demo: {exc}", file=sys.stderr)
        return 1

    from clipforge.search.searcher import Searcher

    searcher = Searcher(index_dir)
    ranks = {query: show_query(searcher, query, expected, shown=5) for query, expected in TEXT_QUERIES}
    example = _example_image(captions)
    query = str(example) if example.is_absolute() else f"./{example}"  # rclip syntax: a path, not text
    results = searcher.search(query, k=5)
    print(f"\nquery by example (the exported image of {_caption_of(captions, example)!r}):")
    print(f"$ clipforge search {shlex.quote(str(index_dir))} {shlex.quote(query)} -k 5")
    print_table(results)
    ranks[query] = rank_of(results, _caption_of(captions, example))
    print(f"-> the image itself is at rank {ranks[query]}")
    recall = text_recall(index_dir)
    print(
        f"\ntext->image recall of all {recall['n']} emoji names (measured on the training images: the model "
        f"learned the names, this is not generalisation): R@1 {recall['R@1']:.1%}, R@5 {recall['R@5']:.1%}, "
        f"R@10 {recall['R@10']:.1%}"
    )
    wall = time.perf_counter() - started
    summary = {"ranks": ranks, "recall": recall, "wall_s": round(wall, 1)}
    atomic_write_bytes(out / "summary.json", (json_text(summary, indent=2) + "\n").encode())
    print(f"\ndemo took {wall:.0f} s; summary: {out / 'summary.json'}")
    print(
        f"\nopen the search page:\n  clipforge serve {shlex.quote(str(index_dir))} --port {args.port}\n"
        f"  then browse http://127.0.0.1:{args.port}/"
    )
    return 0


def _rows(captions: Path) -> list[dict[str, str]]:
    import csv

    with captions.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _example_image(captions: Path) -> Path:
    """The exported PNG of EXAMPLE_CAPTION, or the first exported image when the export lacks it (--limit)."""
    rows = _rows(captions)
    row = next((r for r in rows if r["caption"] == EXAMPLE_CAPTION), rows[0])
    return captions.parent / row["image_path"]


def _caption_of(captions: Path, image: Path) -> str:
    relative = image.relative_to(captions.parent).as_posix()
    return next(r["caption"] for r in _rows(captions) if r["image_path"] == relative)


if __name__ == "__main__":
    sys.exit(main())
