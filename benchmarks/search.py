"""Index benchmark for issue 10: build time, memory, recall@10 and single-query latency of clipforge's faiss index.

    python benchmarks/search.py                  # 1M x 512-d clustered synthetic vectors (about 5-10 minutes, 2 cores)
    python benchmarks/search.py --quick          # 100k rows
    python benchmarks/search.py --rows 2000000 --kind ivfpq --memory-budget 1e9 --json results.json

The collection is synthetic but shaped like CLIP embeddings: 1000 clusters in a 32-d latent space mapped to 512
dimensions plus noise, L2-normalised, stored as clip-retrieval's float16 shards of 100k rows. `build_index` chooses
the index (autofaiss's rules, see clipforge.search.index) unless --kind says otherwise, and records recall@10
against exact search on rows drawn from the collection. This script then measures, on the memory-mapped index:

- recall@10 against exact search for *held-out* queries (collection rows plus noise, not in the index);
- single-query latency (one query per call, k=10, as a service answers them): p50 / p99 and the resulting QPS of one
  thread; the exact (brute-force Flat) index's latency on the same queries for comparison (--no-exact skips it);
- peak resident memory of the build (ru_maxrss) and the index file's size.

10M rows: float16 shards take 10 GB, `build_index` widens them to float32 (20 GB, above this machine's 23 GB with
the index beside it) and assigning 10M rows to 16k lists is ~170 TFLOP, hours on 2 cores; run it where memory and
cores allow (`--rows 10000000`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np


def synthetic(out: Path, rows: int, dim: int, seed: int = 0, shard_rows: int = 100_000) -> None:
    """Write `rows` clustered unit vectors as float16 img_emb shards (with minimal metadata) under `out`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipforge.search.layout import IndexLayout

    layout = IndexLayout(out)
    rng = np.random.default_rng(seed)
    latent = 32
    centres = 1.5 * rng.standard_normal((1000, latent)).astype(np.float32)
    mix = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
    for shard, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        points = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, latent)).astype(np.float32)
        block = points @ mix + 0.1 * rng.standard_normal((n, dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        layout.emb_path("image", shard).parent.mkdir(parents=True, exist_ok=True)
        np.save(layout.emb_path("image", shard), block.astype(np.float16))
        layout.metadata_dir.mkdir(parents=True, exist_ok=True)
        names = [f"img/{i}.jpg" for i in range(start, start + n)]
        pq.write_table(pa.table({"image_path": names, "caption": names}), layout.metadata_path(shard))
    layout.write_info({"dim": dim, "count": {"image": rows}, "dtype": "float16"})


def latencies(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query seconds (one search call per query) and the (Q, k) ids found."""
    seconds = np.empty(len(queries))
    ids = np.empty((len(queries), k), np.int64)
    for i, query in enumerate(queries):
        start = time.perf_counter()
        ids[i] = index.search(query[None, :], k)[1][0]
        seconds[i] = time.perf_counter() - start
    return seconds, ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="collection size (default 1M)")
    parser.add_argument("--quick", action="store_true", help="100k rows")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kind", default="auto", help="auto (default), flat, ivfflat, ivfpq or hnsw")
    parser.add_argument("--memory-budget", type=float, default=None, help="index memory budget in bytes")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries for recall and latency")
    parser.add_argument("--out", type=Path, default=None, help="INDEX_DIR to write (default: a temporary folder)")
    parser.add_argument("--no-exact", action="store_true", help="skip the brute-force latency comparison")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--service", action="store_true",
        help="then load `clipforge serve` on the index over loopback: p50/p99 and QPS (benchmarks/search_service.py)",
    )  # fmt: skip
    parser.add_argument("--service-clients", type=int, default=8, help="client processes for --service (default 8)")
    parser.add_argument("--service-requests", type=int, default=5000, help="requests for --service (default 5000)")
    args = parser.parse_args(argv)
    rows = 100_000 if args.quick else args.rows

    import faiss

    from clipforge.search.index import build_index, open_index
    from clipforge.search.layout import IndexLayout

    if args.out is None:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="clipforge-search-bench-"))
    else:
        out = args.out
    start = time.perf_counter()
    synthetic(out, rows, args.dim)
    print(f"wrote {rows:,} x {args.dim} float16 rows in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    budget = int(args.memory_budget) if args.memory_budget else None
    record = build_index(out, kind=args.kind, memory_budget_bytes=budget, progress=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(record), file=sys.stderr)

    vectors = IndexLayout(out).load_embeddings("image")  # (N, D) float32
    rng = np.random.default_rng(1)
    queries = vectors[rng.choice(rows, args.queries, replace=False)] + 0.05 * rng.standard_normal(
        (args.queries, args.dim)
    ).astype(np.float32)
    queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)
    _, truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)

    index = open_index(out)  # memory-mapped
    latencies(index, queries[:50], 10)  # warm-up: page in the lists and the coarse quantizer
    seconds, found = latencies(index, queries, 10)
    recall = float(np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth)]))
    result = {
        "rows": rows,
        "dim": args.dim,
        "factory": record["factory"],
        "params": record["params"],
        "build_seconds": record["build_seconds"],
        "index_bytes": record["memory_bytes"],
        "build_peak_rss_bytes": int(peak_rss),
        "recall_at_10_build_sample": record["recall_at_10"],
        "recall_at_10_held_out": recall,
        "p50_ms": float(np.percentile(seconds, 50) * 1e3),
        "p99_ms": float(np.percentile(seconds, 99) * 1e3),
        "qps_one_thread": float(len(seconds) / seconds.sum()),
        "threads": faiss.omp_get_max_threads(),
    }
    if not args.no_exact:
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(vectors)
        exact_seconds, _ = latencies(flat, queries[:200], 10)
        result["exact_p50_ms"] = float(np.percentile(exact_seconds, 50) * 1e3)
        result["exact_p99_ms"] = float(np.percentile(exact_seconds, 99) * 1e3)
    print("| rows | index | params | build s | index MB | build peak RSS MB | recall@10 (build / held-out) "
          "| p50 ms | p99 ms | QPS (1 thread) | exact p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    tuned = {k: v for k, v in result["params"].items() if k in ("nprobe", "efSearch", "pq_m", "nlist") and v}
    exact = f"{result['exact_p50_ms']:.1f} / {result['exact_p99_ms']:.1f}" if "exact_p50_ms" in result else "-"
    print(f"| {rows:,} | {result['factory']} | {tuned} | {result['build_seconds']:.0f} | "
          f"{result['index_bytes'] / 1e6:.0f} | {peak_rss / 1e6:.0f} | "
          f"{result['recall_at_10_build_sample']:.3f} / {recall:.3f} | {result['p50_ms']:.2f} | "
          f"{result['p99_ms']:.2f} | {result['qps_one_thread']:.0f} | {exact} |")
    if args.service:
        from search_service import markdown_row
        from search_service import run as run_service

        result["service"] = run_service(out, clients=args.service_clients, requests=args.service_requests)
        print("\n| rows | k | clients | search slots | requests | errors | p50 ms | p99 ms | QPS |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(markdown_row(result["service"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.out is None:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
