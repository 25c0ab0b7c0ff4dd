"""Search latency over one index vs the same vectors split into shards (issue 14, item 4).

    python -m crossmodal.bench.shard_search [--n 400000] [--dim 512] [--shards 4] [--out DIR]

Builds one index of ``n`` random unit vectors (seeded, added with ``Index.add`` in large
batches), splits it with :func:`crossmodal.index.sharded.split_index`, and times single
queries (one at a time, after an untimed warm-up) over:

* the one index by its default policy (HNSW above the exact threshold, 131,072 vectors
  at dim 512) and forced exact;
* the shards by their default policy (each shard below the threshold: exact scans) and
  forced HNSW, fanned out on the default pool (one thread per core) and on one thread;

with recall@10 against the exact answer. Building HNSW graphs at 512-d with the index's
defaults costs ~5-10 ms per vector on 2 cores (over an hour for 400k, twice), so the
graphs here are built with cheap settings (``--connectivity 8 --expansion-add 16``, about
0.3 ms per vector): the HNSW rows show what such a graph answers, not what the default
graph would. The exact rows do not depend on the graph. Not a unit test: run it by hand,
under ``nice`` on a shared machine; it prints a Markdown table and writes
``shard_search.json`` (with the CPU, its flags and the load average) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .env import cpu_info, versions

ADD_BATCH = 50_000


def unit_vectors(n: int, dim: int, seed: int) -> NDArray[np.float32]:
    v = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build(path: Path, n: int, dim: int, connectivity: int, expansion_add: int) -> float:
    """One index of ``n`` random unit vectors; returns the seconds it took (adds and save)."""
    from crossmodal.index import Index

    t0 = time.perf_counter()
    with Index.create(path, bundle="random", space="random", dim=dim, connectivity=connectivity,
                      expansion_add=expansion_add) as idx:
        for start in range(0, n, ADD_BATCH):
            m = min(ADD_BATCH, n - start)
            # Keys are a hash's low bits in real indexes: spread them the same way here.
            keys = np.random.default_rng(start).integers(0, 2 ** 62, m, dtype=np.int64)
            idx.add(unit_vectors(m, dim, seed=1 + start), keys=keys)
    return time.perf_counter() - t0


def time_queries(index: Any, queries: NDArray[np.float32], k: int, exact: bool | None,
                 warm: int = 5) -> tuple[list[list[int]], NDArray[np.float64]]:
    """Each query searched alone; (hit keys per query, seconds per query)."""
    for q in queries[:warm]:
        index.search(q, k, exact=exact)
    keys, secs = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = index.search(q, k, exact=exact)
        secs.append(time.perf_counter() - t0)
        keys.append([h.key for h in hits])
    return keys, np.asarray(secs)


def blas_settings() -> list[int | None]:
    """BLAS thread counts to time: the default, and 1 when threadpoolctl is installed.

    Why: an exact scan of one query is a matrix-vector product; OpenBLAS splits it across
    its threads, and on a busy machine waking them costs more than the product itself.
    """
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return [None]
    return [None, 1]


def blas_limit(threads: int | None) -> Any:
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(threads, user_api="blas")


def recall(got: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)]))


def run(n: int, dim: int, shards: int, queries: int, k: int, connectivity: int, expansion_add: int,
        work: Path) -> dict[str, Any]:
    from crossmodal.index import Index
    from crossmodal.index.sharded import ShardedIndex, open_many, split_index

    load_before = os.getloadavg()
    src = work / "one.idx"
    build_s = build(src, n, dim, connectivity, expansion_add)
    t0 = time.perf_counter()
    paths = split_index(src, shards, work / "shards")
    split_s = time.perf_counter() - t0
    q = unit_vectors(queries, dim, seed=987654321)
    rows: list[dict[str, Any]] = []
    with Index.open(src, read_only=True) as one, open_many(paths) as many, ShardedIndex(many.shards, threads=1) as seq:
        t0 = time.perf_counter()
        one.warm_up()
        many.warm_up()  # seq shares these shards and their scan tables
        warm_s = time.perf_counter() - t0
        truth = [[h.key for h in row] for row in one.search(q, k, exact=True)]
        cases = [
            ("1 index", one, None, "hnsw" if not one.uses_exact() else "exact"),
            ("1 index", one, True, "exact"),
            (f"{shards} shards", many, None, "exact" if many.uses_exact() else "hnsw"),
            (f"{shards} shards", many, False, "hnsw"),
            (f"{shards} shards, 1 thread", seq, None, "exact" if seq.uses_exact() else "hnsw"),
            (f"{shards} shards, 1 thread", seq, False, "hnsw"),
        ]
        for blas in blas_settings():
            for label, index, exact, used in cases:
                with blas_limit(blas):
                    keys, secs = time_queries(index, q, k, exact)
                ms = secs * 1e3
                rows.append({"index": label, "policy": "default" if exact is None else "forced", "search": used,
                             "blas_threads": blas or "default", "p50_ms": float(np.percentile(ms, 50)),
                             "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean()),
                             "qps": float(1e3 / ms.mean()), "recall_at_10": recall(keys, truth)})
        sizes = [s.count("image") for s in many.shards]
    return {"n": n, "dim": dim, "shards": shards, "shard_sizes": sizes, "queries": queries, "k": k,
            "hnsw": {"connectivity": connectivity, "expansion_add": expansion_add},
            "build_s": build_s, "split_s": split_s, "warm_up_s": warm_s, "rows": rows,
            "cpu": cpu_info(), "versions": versions(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def markdown(r: dict[str, Any]) -> str:
    cpu = r["cpu"]
    lines = [f"{r['n']:,} random unit vectors, dim {r['dim']} f32, {r['queries']} single queries, k={r['k']}; "
             f"shards of {', '.join(f'{s:,}' for s in r['shard_sizes'])}. CPU: {cpu['model']} "
             f"({cpu['logical_cores']} logical cores; {' '.join(cpu['flags'])}); load average "
             f"{r['loadavg_before'][0]:.1f} before, {r['loadavg_after'][0]:.1f} after. HNSW graphs built with "
             f"connectivity {r['hnsw']['connectivity']}, expansion_add {r['hnsw']['expansion_add']}.",
             "",
             "| index | policy | search | BLAS threads | p50 ms | p95 ms | mean ms | queries/s | recall@10 |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['index']} | {row['policy']} | {row['search']} | {row['blas_threads']} | "
                     f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['mean_ms']:.1f} | {row['qps']:.0f} | "
                     f"{row['recall_at_10']:.3f} |")
    lines += ["", f"Build {r['build_s']:.0f} s (one index), split into {r['shards']} shards {r['split_s']:.0f} s, "
                  f"warm-up (scan tables) {r['warm_up_s']:.1f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossmodal.bench.shard_search", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=400_000, help="vectors (default 400000)")
    p.add_argument("--dim", type=int, default=512, help="dimension (default 512)")
    p.add_argument("--shards", type=int, default=4, help="shards (default 4)")
    p.add_argument("--queries", type=int, default=100, help="single queries timed per row (default 100)")
    p.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    p.add_argument("--connectivity", type=int, default=8, help="HNSW connectivity of the graphs (default 8)")
    p.add_argument("--expansion-add", type=int, default=16, help="HNSW expansion_add of the graphs (default 16)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for shard_search.json")
    p.add_argument("--work", type=Path, default=None, help="folder for the indexes (default: a temporary one, "
                   "removed afterwards; needs ~8 KB per vector)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="shard-bench-", dir=args.work))
    try:
        result = run(args.n, args.dim, args.shards, args.queries, args.k, args.connectivity, args.expansion_add,
                     work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shard_search.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
