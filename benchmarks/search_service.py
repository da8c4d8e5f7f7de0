"""Service benchmark for issue 10: p50/p99 latency and QPS of `clipforge serve` under concurrent load over loopback.

    python benchmarks/search_service.py --index INDEX_DIR [--clients 8] [--requests 5000] [--seconds 60] [--k 10]
    python benchmarks/search_service.py --rows 1000000 --dim 512 --out /tmp/bench1m   (synthetic, clustered)
    python benchmarks/search.py --service ...    (the index benchmark, then this one on the index it built)

The server is `clipforge serve` in its own process (as users run it: one uvicorn worker, --max-concurrency
searches at once), bound to 127.0.0.1 on a free port; the load comes from `--clients` client processes, each with
one keep-alive HTTP/1.1 connection, sending POST /search {"embedding": [...], "k": K} with query vectors taken from
the index's rows plus noise (a text query would time the query model, not the service). Each client sends its share
of `--requests` or stops after `--seconds`. Latency is measured per request by the clients (send to last byte
read); QPS is answered requests over the wall time of the load. A warm-up of 200 requests is not counted.

Goal (issue 10): p99 < 10 ms at 1M vectors, k=10, and > 500 QPS; clip-retrieval's back end reports ~50 ms, ~20 QPS.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/search.py, run as a script too


def synthetic_index(out: Path, rows: int, dim: int) -> Path:
    """benchmarks/search.py's clustered synthetic INDEX_DIR with the index `build_index` picks."""
    from clipforge.search.index import build_index
    from clipforge.search.layout import IndexLayout
    from search import synthetic  # benchmarks/search.py, beside this file

    if not IndexLayout(out).index_path("image").is_file():
        synthetic(out, rows, dim)
        record = build_index(out, "image", progress=True)
        print(f"built {record.get('factory')} over {rows:,} rows: {json.dumps(record)}", file=sys.stderr)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server on port {port} did not answer /health within {timeout:.0f} s")


def client(port: int, bodies: list[bytes], seconds: float, start_at: float, out: mp.Queue) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    latencies, errors = [], 0
    while time.time() < start_at:
        time.sleep(0.001)
    stop = time.time() + seconds
    for body in bodies:
        if time.time() > stop:
            break
        t0 = time.perf_counter()
        conn.request("POST", "/search", body=body, headers=headers)
        reply = conn.getresponse()
        reply.read()
        latencies.append(time.perf_counter() - t0)
        errors += reply.status != 200
    out.put((latencies, errors))


def run(index: Path, clients: int = 8, requests: int = 5000, seconds: float = 60.0, k: int = 10,
        concurrency: int = 8) -> dict:
    """Serve `index` with `clipforge serve` in a subprocess and load it from `clients` processes (module docstring)."""
    from clipforge.search.layout import IndexLayout

    vectors = IndexLayout(index).load_embeddings("image", mmap=True)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, vectors.shape[0], requests + 200)
    queries = np.asarray(vectors[np.sort(picks)], np.float32)[rng.permutation(len(picks))]
    queries += 0.05 * rng.standard_normal(queries.shape).astype(np.float32)
    bodies = [json.dumps({"embedding": [round(float(x), 5) for x in q], "k": k}).encode() for q in queries]
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    argv = [sys.executable, "-m", "clipforge", "serve", str(index), "--port", str(port), "--lazy-model",
            "--no-clipback-images", "--max-concurrency", str(concurrency), "-q"]  # fmt: skip
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_ready(port, 600)
        warm = http.client.HTTPConnection("127.0.0.1", port)
        for body in bodies[:200]:
            warm.request("POST", "/search", body=body, headers={"Content-Type": "application/json"})
            assert warm.getresponse().read()
        queue: mp.Queue = mp.Queue()
        share = [bodies[200 + i :: clients] for i in range(clients)]
        start_at = time.time() + 1.0
        procs = [mp.Process(target=client, args=(port, s, seconds, start_at, queue)) for s in share]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        wall = time.time() - start_at
        for p in procs:
            p.join()
    finally:
        server.terminate()
        server.wait(30)
    latencies = np.array([x for lat, _ in results for x in lat]) * 1000
    errors = sum(e for _, e in results)
    return {
        "rows": int(vectors.shape[0]), "dim": int(vectors.shape[1]), "k": k, "clients": clients,
        "max_concurrency": concurrency, "requests": int(latencies.size), "errors": int(errors),
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "qps": round(latencies.size / wall, 1), "wall_s": round(wall, 2), "cpus": os.cpu_count(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="an existing INDEX_DIR (default: build a synthetic one at --out)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/clipforge-bench-service"), help="synthetic INDEX_DIR")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5000, help="requests in all (bounded), after warm-up")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop the load after this long (bounded)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    index = args.index or synthetic_index(args.out, args.rows, args.dim)
    result = run(index, args.clients, args.requests, args.seconds, args.k, args.max_concurrency)
    print(json.dumps(result))
    print(markdown_row(result))
    return 0


def markdown_row(result: dict) -> str:
    """One RESULTS.md table row (header: | rows | k | clients | slots | requests | errors | p50 ms | p99 ms | QPS |)."""
    return (f"| {result['rows']:,} | {result['k']} | {result['clients']} | {result['max_concurrency']} | "
            f"{result['requests']:,} | {result['errors']} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} | "
            f"{result['qps']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
