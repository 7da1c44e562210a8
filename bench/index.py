"""Index benchmark: flat / IVF / HNSW side by side on synthetic clustered vectors, and incremental reindexing.

    nice python bench/index.py --sizes 10000 100000            # quick
    nice python bench/index.py --sizes 1000000 --skip-reindex  # the 1M row of the table (minutes, ~4 GB RAM)

Per size and index kind: build time, index size (serialized = in memory), recall@10 against exact search
at the search effort the builder would publish (raised until recall >= --min-recall, as `index build` does),
single-query latency p50/p99 (one thread) and batch-64 throughput (all threads). Then, through the real pipeline (LanceDB catalogue,
ingest, fake embedder at the same dimension), the time of a full build against a reindex after 1% of rows
changed. Prints a markdown table and, with --json, writes the raw figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shopclip.indexer import ann

DEFAULT_DIM = 256
"""Embedding dimension of the default model bundle."""


def index_bytes(index) -> int:
    """Serialized size, which is what the index holds in memory (RSS deltas are blurred by the allocator)."""
    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss") as handle:
        faiss.write_index(index, handle.name)
        return os.path.getsize(handle.name)


def peak_rss_mb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def clustered_vectors(count: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` centres (products of one type sit together), generated in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        chunk = centres[rng.integers(0, clusters, stop - start)]
        chunk += 0.8 * rng.standard_normal(chunk.shape).astype(np.float32)
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def latency_ms(index, queries: np.ndarray, k: int) -> tuple[float, float]:
    """One query at a time on one thread: a server answers concurrent requests in parallel, and OpenMP
    fan-out for a single query only adds overhead (and spin-waits badly on a busy machine)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    timings = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None, :], k)
        timings.append((time.perf_counter() - start) * 1000)
    faiss.omp_set_num_threads(threads)
    return float(np.percentile(timings, 50)), float(np.percentile(timings, 99))


def batch_qps(index, queries: np.ndarray, k: int, batch: int = 64) -> float:
    rounds = max(1, len(queries) // batch)
    start = time.perf_counter()
    for i in range(rounds):
        index.search(queries[i * batch:(i + 1) * batch], k)
    return rounds * batch / (time.perf_counter() - start)


def bench_kind(vectors: np.ndarray, kind: str, queries: np.ndarray, truth: np.ndarray, args) -> dict:
    gc.collect()
    start = time.perf_counter()
    params = ann.AnnParams(kind=kind, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    index = ann.build_index(vectors, kind, params)
    build_s = time.perf_counter() - start
    memory = index_bytes(index)
    start_effort = params.nprobe if kind == "ivf" else params.ef_search
    recall = ann.tune_recall(index, kind, queries, truth, args.min_recall, start_effort)
    p50, p99 = latency_ms(index, queries[: args.latency_queries], 10)
    qps = batch_qps(index, queries, 10)
    del index
    return {"size": len(vectors), "kind": kind, "build_s": round(build_s, 2), "index_mb": round(memory / 2**20),
            "effort": recall.effort, "recall_at_10": round(recall.recall, 4), "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3), "batch64_qps": round(qps)}


def bench_size(size: int, args) -> list[dict]:
    vectors = clustered_vectors(size, args.dim, clusters=max(27, size // 1000))
    queries = ann.sample_queries(vectors, args.queries, seed=1)
    truth = ann.exact_neighbours(vectors, queries, 10, use_gpu=False)
    rows = []
    for kind in args.kinds:
        row = bench_kind(vectors, kind, queries, truth, args)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- incremental reindex


def write_drop(folder: Path, productids: range, word: str) -> None:
    """A challenge-layout drop of text-only products (X and Y csv), through the one challenge-layout writer."""
    from shopclip.indexer.export import DROP_X_FILE, DROP_Y_FILE, write_challenge_folder

    rows = [{"productid": productid, "designation": f"produit {10 + productid % 27} modèle {productid} {word}",
             "description": f"type {10 + productid % 27}", "imageid": None, "prdtypecode": 10 + productid % 27,
             "image_uri": None} for productid in productids]
    write_challenge_folder(folder, rows, DROP_X_FILE, DROP_Y_FILE)


def bench_reindex(rows: int, dim: int) -> dict:
    """Full build vs rebuild after 1% of rows changed, through ingest + build (embedding is the work saved)."""
    from shopclip.indexer.build import BuildOptions, build_and_publish
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.indexer.ingest import ingest_folder
    from shopclip.model import load_embedder

    embedder = load_embedder(f"fake:dim={dim},classes=27")
    options = BuildOptions(ann=ann.AnnParams(kind="flat"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_drop(root / "full", range(rows), "v1")
        changed = max(1, rows // 100)
        write_drop(root / "delta", range(0, rows, rows // changed), "v2")
        catalogue = Catalogue(str(root / "db"))
        timings = {}
        for name in ("full", "delta"):
            start = time.perf_counter()
            ingest = ingest_folder(root / name, catalogue)
            middle = time.perf_counter()
            result = build_and_publish(catalogue, root / "index", embedder, options)
            end = time.perf_counter()
            timings[name] = {"ingested": ingest.changed, "embedded": result.embedded,
                             "ingest_s": round(middle - start, 2), "build_s": round(end - middle, 2),
                             "total_s": round(end - start, 2)}
    return {"rows": rows, "dim": dim, **timings}


def markdown(rows: list[dict]) -> str:
    header = ["size", "kind", "build_s", "index_mb", "effort", "recall_at_10", "p50_ms", "p99_ms", "batch64_qps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[name]) for name in header) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"], choices=["flat", "ivf", "hnsw"])
    parser.add_argument("--dim", type=int, default=DEFAULT_DIM)
    parser.add_argument("--queries", type=int, default=1000, help="recall and batch queries")
    parser.add_argument("--latency-queries", type=int, default=300, help="single queries timed for p50/p99")
    parser.add_argument("--min-recall", type=float, default=0.95)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--reindex-rows", type=int, default=20_000)
    parser.add_argument("--skip-reindex", action="store_true")
    parser.add_argument("--threads", type=int, help="FAISS OpenMP threads for builds and batches (default: all)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    results: dict = {"cpus": os.cpu_count(), "dim": args.dim, "indexes": []}
    for size in args.sizes:
        results["indexes"] += bench_size(size, args)
    results["peak_rss_mb"] = peak_rss_mb()
    print(markdown(results["indexes"]))
    print(f"peak RSS {results['peak_rss_mb']} MB, {os.cpu_count()} CPUs")
    if not args.skip_reindex:
        results["reindex"] = bench_reindex(args.reindex_rows, args.dim)
        print(json.dumps(results["reindex"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
