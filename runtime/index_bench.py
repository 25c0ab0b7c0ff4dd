"""Recall and latency of the index's HNSW settings, measured on random unit vectors."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from numpy.typing import NDArray

from .errors import InputError
from .index_format import DEFAULT_CONNECTIVITY, DEFAULT_EXPANSION_ADD, DEFAULT_EXPANSION_SEARCH, new_graph


@dataclass(frozen=True)
class RecallReport:
    """What :func:`bench_recall` measured."""

    n: int
    dim: int
    k: int
    n_queries: int
    recall: float          # HNSW top-k vs the float64 exact top-k
    exact_recall: float    # brute force over the stored dtype vs the same truth: the quantisation cost alone
    build_seconds: float
    hnsw_ms_per_query: float
    exact_ms_per_query: float
    settings: Mapping[str, Any]


def bench_recall(n: int, dim: int, *, k: int = 10, n_queries: int = 1000, seed: int = 0, metric: str = "cos",
                 dtype: str = "f32", connectivity: int = DEFAULT_CONNECTIVITY,
                 expansion_add: int = DEFAULT_EXPANSION_ADD,
                 expansion_search: int = DEFAULT_EXPANSION_SEARCH) -> RecallReport:
    """Recall@k of the HNSW graph against exact search on ``n`` random unit vectors.

    Queries are fresh random unit vectors; ground truth is a float64 numpy scan, so the
    figure also covers the storage quantisation of ``dtype='f16'`` / ``'i8'``.
    """
    if n <= 0 or dim <= 0 or k <= 0 or n_queries <= 0:
        raise InputError("n, dim, k and n_queries must be positive.")
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    graph = new_graph(dim, metric, dtype, connectivity, expansion_add, expansion_search)
    t0 = time.perf_counter()
    graph.add(np.arange(n, dtype=np.uint64), data)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = np.asarray(graph.search(queries, k).keys).reshape(n_queries, -1)
    hnsw_ms = (time.perf_counter() - t0) * 1000 / n_queries
    t0 = time.perf_counter()
    brute = np.asarray(graph.search(queries, k, exact=True).keys).reshape(n_queries, -1)
    exact_ms = (time.perf_counter() - t0) * 1000 / n_queries
    kk = min(k, n)
    truth = np.empty((n_queries, kk), dtype=np.int64)
    for s in range(0, n_queries, 256):
        sims = queries[s:s + 256].astype(np.float64) @ data.T.astype(np.float64)
        truth[s:s + 256] = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]

    def recall_of(keys: NDArray[Any]) -> float:
        hits = sum(len(set(keys[i, :kk].tolist()) & set(truth[i].tolist())) for i in range(n_queries))
        return hits / (n_queries * kk)

    return RecallReport(n=n, dim=dim, k=k, n_queries=n_queries, recall=recall_of(found), exact_recall=recall_of(brute),
                        build_seconds=build, hnsw_ms_per_query=hnsw_ms, exact_ms_per_query=exact_ms,
                        settings={"metric": metric, "dtype": dtype, "connectivity": connectivity,
                                  "expansion_add": expansion_add, "expansion_search": expansion_search})
