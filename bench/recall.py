"""Recall and latency of the index's search paths (HNSW graph, exact scan, the default choice).

Used by scenario (h) (:mod:`crossmodal.bench.index_recall`) and by the recall tests;
one figure in Python: ``bench_recall(100_000, 512, n_queries=1000, sweep=(1024, 2048))``.

Random isotropic unit vectors are the worst case for a graph index (nothing but noise
separates a point's neighbours from the rest); pass ``data``/``queries`` to measure on
real embeddings instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from crossmodal.errors import InputError
from crossmodal.index.exact import ExactMatrix, default_exact_threshold
from crossmodal.index.format import DEFAULT_CONNECTIVITY, DEFAULT_EXPANSION_ADD, DEFAULT_EXPANSION_SEARCH, new_graph
from crossmodal.inputs import positive_int


@dataclass(frozen=True)
class RecallReport:
    """What :func:`bench_recall` measured (recall: fraction of the float64 exact top-k found)."""

    n: int
    dim: int
    k: int
    n_queries: int
    recall: float          # HNSW graph top-k vs the float64 exact top-k
    exact_recall: float    # the index's exact scan over the stored dtype: the quantisation cost alone
    default_search: str    # what Index.search(exact=None) does at this size: "exact" or "hnsw"
    default_recall: float  # recall of that choice
    build_seconds: float
    hnsw_ms_per_query: float     # batch of n_queries, per query
    exact_ms_per_query: float
    hnsw_single_ms: float        # median latency of one query at a time
    exact_single_ms: float
    settings: Mapping[str, Any]
    # Other search breadths on the same graph: expansion_search -> {"recall", "ms_per_query"}.
    by_expansion: Mapping[int, Mapping[str, float]] = field(default_factory=dict)


def random_units(n: int, dim: int, seed: int) -> NDArray[np.float32]:
    """``n`` random unit vectors of ``dim`` (isotropic Gaussian, normalised)."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _single_ms(fn: Any, queries: NDArray[np.float32], reps: int = 30) -> float:
    times = []
    for q in queries[:reps]:
        _, dt = _timed(lambda: fn(q[None, :]))
        times.append(dt)
    return float(np.median(times) * 1000)


def bench_recall(n: int, dim: int, *, k: int = 10, n_queries: int = 1000, seed: int = 0, metric: str = "cos",
                 dtype: str = "f32", connectivity: int = DEFAULT_CONNECTIVITY,
                 expansion_add: int = DEFAULT_EXPANSION_ADD, expansion_search: int = DEFAULT_EXPANSION_SEARCH,
                 data: NDArray[np.float32] | None = None, queries: NDArray[np.float32] | None = None,
                 exact_threshold: int | None = None, sweep: Sequence[int] = ()) -> RecallReport:
    """Recall@k of the HNSW graph, of the exact scan and of the index's default choice.

    Without ``data``, ``n`` random unit vectors of ``dim`` (and ``n_queries`` fresh random
    queries); with ``data`` (and optionally ``queries``, else rows of ``data`` are held out)
    those vectors, ``n``/``dim`` taken from its shape. Ground truth is a float64 scan, so the
    figures include the storage quantisation of ``dtype='f16'`` / ``'i8'``. ``sweep``: more
    ``expansion_search`` values to measure on the same graph (``by_expansion``).
    """
    k, n_queries = positive_int("k", k), positive_int("n_queries", n_queries)
    if data is None:
        n, dim = positive_int("n", n), positive_int("dim", dim)
        data = random_units(n, dim, seed)
        queries = random_units(n_queries, dim, seed + 1)
    else:
        data = np.ascontiguousarray(data, dtype=np.float32)
        if queries is None:
            if len(data) <= n_queries:
                raise InputError(f"need more than n_queries={n_queries} rows of data to hold queries out.")
            data, queries = data[n_queries:], data[:n_queries]
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n, dim, n_queries = len(data), data.shape[1], len(queries)
    kk = min(k, n)
    graph = new_graph(dim, metric, dtype, connectivity, expansion_add, expansion_search)
    _, build = _timed(lambda: graph.add(np.arange(n, dtype=np.uint64), data))
    if dtype == "f32":
        table = ExactMatrix.from_graph(graph, dim, metric == "cos")

        def exact(q: NDArray[np.float32]) -> NDArray[Any]:
            return table.search(q, kk)[0]
    else:
        def exact(q: NDArray[np.float32]) -> NDArray[Any]:
            return np.asarray(graph.search(q, kk, exact=True).keys).reshape(len(q), -1)

    def hnsw(q: NDArray[np.float32]) -> NDArray[Any]:
        return np.asarray(graph.search(q, kk).keys).reshape(len(q), -1)

    found, hnsw_s = _timed(lambda: hnsw(queries))
    brute, exact_s = _timed(lambda: exact(queries))
    a, b = (queries, data) if metric == "ip" else (
        queries / np.linalg.norm(queries, axis=1, keepdims=True), data / np.linalg.norm(data, axis=1, keepdims=True))
    truth = np.empty((n_queries, kk), dtype=np.int64)
    b64 = b.T.astype(np.float64)  # once, not per block of queries
    for s in range(0, n_queries, 256):
        sims = a[s:s + 256].astype(np.float64) @ b64
        truth[s:s + 256] = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]

    def recall_of(keys: NDArray[Any]) -> float:
        hits = sum(len(set(keys[i, :kk].tolist()) & set(truth[i].tolist())) for i in range(n_queries))
        return hits / (n_queries * kk)

    by_expansion: dict[int, dict[str, float]] = {}
    for ef in sweep:
        graph.expansion_search = int(ef)
        keys, secs = _timed(lambda: hnsw(queries))
        by_expansion[int(ef)] = {"recall": recall_of(keys), "ms_per_query": secs * 1000 / n_queries}
    graph.expansion_search = expansion_search
    threshold = default_exact_threshold(dim) if exact_threshold is None else exact_threshold
    default = "exact" if n <= threshold else "hnsw"
    r_hnsw, r_exact = recall_of(found), recall_of(brute)
    return RecallReport(n=n, dim=dim, k=k, n_queries=n_queries, recall=r_hnsw, exact_recall=r_exact,
                        default_search=default, default_recall=r_exact if default == "exact" else r_hnsw,
                        build_seconds=build, hnsw_ms_per_query=hnsw_s * 1000 / n_queries,
                        exact_ms_per_query=exact_s * 1000 / n_queries,
                        hnsw_single_ms=_single_ms(hnsw, queries), exact_single_ms=_single_ms(exact, queries),
                        settings={"metric": metric, "dtype": dtype, "connectivity": connectivity,
                                  "expansion_add": expansion_add, "expansion_search": expansion_search,
                                  "exact_threshold": threshold},
                        by_expansion=by_expansion)


__all__ = ["RecallReport", "bench_recall", "random_units"]
