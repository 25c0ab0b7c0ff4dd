"""A persistent search index: usearch holds the vectors, SQLite (stdlib) the metadata.

``from crossmodal.index import Index`` (see :class:`~crossmodal.index.store.Index`). One job per module:

* :mod:`~crossmodal.index.store`: :class:`Index`, the persistent store (open/close, locks,
  add/remove, save; the durability model and the consistency policy on open);
* :mod:`~crossmodal.index.search`: how a tower is searched (exact scan or HNSW graph, filtered or not);
* :mod:`~crossmodal.index.filters`: :class:`Filter`, metadata filters (path prefix, added after, has caption);
* :mod:`~crossmodal.index.keyword`: keyword search (SQLite FTS5 over captions and paths);
* :mod:`~crossmodal.index.exact`: the float32 scan table behind the exact search;
* :mod:`~crossmodal.index.format`: the on-disk names, settings, keys and header;
* :mod:`~crossmodal.index.meta`: the SQLite metadata store (items, add journal, state, FTS tables);
* :mod:`~crossmodal.index.recovery`: what ``open`` does after a crash;
* :mod:`~crossmodal.index.sharded`: :class:`ShardedIndex` / :func:`open_many`, several indexes searched
  as one (top-k merged), and :func:`split_index`;
* :mod:`~crossmodal.index.crash_points`: the steps of add/save the kill tests stop at;
* :mod:`~crossmodal.index.native_imports`: the one way to import usearch (after onnxruntime).

Searching by text or image, and re-ranking, is :class:`crossmodal.retriever.Retriever`'s
job; measuring recall is :func:`crossmodal.bench.recall.bench_recall`.
"""

from __future__ import annotations

from typing import Any

from .exact import EXACT_SCAN_BUDGET, default_exact_threshold
from .filters import FILTER_FIELDS, Filter
from .format import (
    DEFAULT_CONNECTIVITY,
    DEFAULT_EXPANSION_ADD,
    DEFAULT_EXPANSION_SEARCH,
    DTYPES,
    FORMAT_VERSION,
    HEADER_FILE,
    KEY_MASK,
    LOCK_FILE,
    META_FILE,
    METRICS,
    TOWERS,
    WRITER_LOCK_FILE,
    content_key,
    key_from_sha256,
    text_key,
    vectors_file,
)
from .records import ItemRecord, SearchResult
from .sharded import ShardedIndex, open_many, split_index
from .store import Index


def __getattr__(name: str) -> Any:
    # bench_recall moved to crossmodal.bench.recall; the old names keep working, imported on use.
    if name in ("bench_recall", "RecallReport"):
        from ..bench import recall

        return getattr(recall, name)
    raise AttributeError(f"module 'crossmodal.index' has no attribute {name!r}")


__all__ = [
    "Index", "ShardedIndex", "open_many", "split_index", "SearchResult", "ItemRecord", "Filter", "FILTER_FIELDS", "RecallReport", "bench_recall", "content_key", "text_key",
    "key_from_sha256", "vectors_file", "FORMAT_VERSION", "HEADER_FILE", "META_FILE", "LOCK_FILE",
    "WRITER_LOCK_FILE", "METRICS", "DTYPES", "TOWERS", "KEY_MASK", "DEFAULT_CONNECTIVITY",
    "DEFAULT_EXPANSION_ADD", "DEFAULT_EXPANSION_SEARCH", "EXACT_SCAN_BUDGET", "default_exact_threshold",
]
