"""How a tower of the index is searched: an exact scan or a walk of its HNSW graph.

The policy: a tower of at most ``exact_threshold`` vectors (by default
:func:`~crossmodal.index.exact.default_exact_threshold` of the dim) is scanned exactly,
a larger one walks its graph; a caller may force either (``exact=True/False``).

The scan of an f32 index runs in numpy on a float32 copy of the tower's vectors
(:class:`~crossmodal.index.exact.ExactMatrix`, the scan table). Copying it out of the
graph costs about a second per 100k x 512 vectors, so it is built on the tower's second
exact search, on a batch of :data:`~crossmodal.index.exact.TABLE_BATCH` queries, or by
:meth:`TowerSearch.warm_up`; a one-off search scans inside usearch instead. f16 / i8
indexes keep no copy: usearch scans their quantised vectors. Once built, the table is
kept in step with every add and remove.

Filtered search (``allowed``: the keys a :class:`~crossmodal.index.filters.Filter` keeps):

* exact: the filter applies *before* top-k, so the k hits are the k best matching items.
  The scan table masks the other rows; without a table, the matching vectors are copied
  out and scanned when they are few (at most an eighth of the tower), else usearch ranks
  the whole tower exactly and the matching hits are kept in order.
* HNSW: a post-filter with widened k. The graph is asked for ``k' = 2 * k * n / m``
  neighbours (n vectors, m matching: twice what an even spread of the matches needs),
  the matching ones are kept, and queries still short of k hits ask again with ``k' * 4``.
  Once ``k'`` would reach half the tower, those queries scan the matching items exactly
  instead (see above), so a query gets k hits whenever k items match.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from .exact import TABLE_BATCH, ExactMatrix

if TYPE_CHECKING:  # pragma: no cover
    from usearch.index import Index as UsearchIndex

# (keys, scores, counts): row i of keys/scores holds counts[i] valid hits, best first.
TopK = tuple[NDArray[np.uint64], NDArray[np.float32], NDArray[np.int64]]
# HNSW post-filter: the widening factor per round.
WIDEN = 4


class TowerSearch:
    """One tower's vectors as searched: its HNSW graph and, for f32 indexes, the float32 scan table.

    ``add`` / ``remove`` change both under one lock, so a table built in one thread
    never misses vectors another thread is adding.
    """

    def __init__(self, graph: "UsearchIndex", *, dim: int, metric: str, dtype: str) -> None:
        self.graph = graph
        self._dim = dim
        self._normalize = metric == "cos"
        self._scans_in_numpy = dtype == "f32"
        self.table: ExactMatrix | None = None
        self._exact_calls = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.graph)

    def contains(self, key: int) -> bool:
        return bool(self.graph.contains(int(key)))

    def keys(self) -> set[int]:
        return set(np.asarray(self.graph.keys, dtype=np.uint64).tolist()) if len(self.graph) else set()

    def uses_exact(self, threshold: int) -> bool:
        """Whether a search with ``exact=None`` scans every vector (the tower holds at most ``threshold``)."""
        return len(self.graph) <= threshold

    def add(self, keys: NDArray[np.uint64], mat: NDArray[np.float32]) -> None:
        """Add vectors whose keys are not present yet (the store checks that)."""
        with self._lock:
            self.graph.add(keys, mat)
            if self.table is not None:
                self.table.add(keys, mat)

    def remove(self, keys: list[int]) -> None:
        """Remove present keys."""
        with self._lock:
            self.graph.remove(np.asarray(keys, dtype=np.uint64))
            if self.table is not None:
                self.table.remove(keys)

    def vectors(self, keys: NDArray[np.uint64]) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """``(rows, found)``: the stored vector of each key as float32 (NaN rows for keys not held).

        Read from the graph, the one copy every index has: its stored values as added (f16 / i8
        decoded), about 4 us per key at dim 512. The scan table is not used: for ``cos`` it
        holds normalised copies, and one source keeps the answer the same whether it is built.
        """
        out = np.full((len(keys), self._dim), np.nan, dtype=np.float32)
        with self._lock:  # not while add/remove change the graph
            found = np.asarray(self.graph.contains(keys), dtype=bool).reshape(-1) if len(keys) \
                else np.zeros(0, dtype=bool)
            if found.any():
                got = self.graph.get(keys[found], dtype=np.float32)
                out[found] = np.asarray(got, dtype=np.float32).reshape(int(found.sum()), self._dim)
        return out, found

    def warm_up(self, threshold: int) -> None:
        """Build the scan table now if the default search of this tower would scan it."""
        if self._scans_in_numpy and len(self.graph) and self.uses_exact(threshold):
            self._build_table()

    def top_k(self, mat: NDArray[np.float32], k: int, *, exact: bool | None, threshold: int,
              allowed: NDArray[np.uint64] | None = None) -> TopK:
        """The best ``k`` (at most the tower's size) for each row of ``mat``; ``exact=None``: by the policy.

        ``allowed`` (sorted keys): only these may be returned (see the module docstring).
        """
        if exact is None:
            exact = self.uses_exact(threshold)
        if allowed is not None and not exact:
            return self._post_filtered(mat, k, allowed)
        table = self._scan_table(len(mat)) if exact else None
        if table is not None:
            keys, scores = table.search(mat, k) if allowed is None else table.search(mat, k, allowed)
            return keys, scores, np.full(len(mat), keys.shape[1], dtype=np.int64)
        if allowed is not None:
            return self._exact_subset(mat, k, allowed)
        return self._graph_top_k(mat, k, exact)

    def _scan_table(self, batch: int) -> ExactMatrix | None:
        """The scan table for an exact search of ``batch`` queries, built when it pays (module docstring)."""
        if not self._scans_in_numpy:
            return None
        self._exact_calls += 1
        table = self.table
        if table is None and (self._exact_calls > 1 or batch >= TABLE_BATCH):
            table = self._build_table()
        return table

    def _graph_top_k(self, mat: NDArray[np.float32], k: int, exact: bool) -> TopK:
        matches = self.graph.search(mat, k, exact=exact)
        keys = np.asarray(matches.keys, dtype=np.uint64).reshape(len(mat), -1)
        dists = np.asarray(matches.distances, dtype=np.float32).reshape(len(mat), -1)
        # usearch answers a one-row batch with a plain Matches (no counts): every slot is filled.
        counts = (np.asarray(matches.counts, dtype=np.int64).reshape(-1) if hasattr(matches, "counts")
                  else np.full(len(mat), keys.shape[1], dtype=np.int64))
        return keys, 1.0 - dists, counts

    def _exact_subset(self, mat: NDArray[np.float32], k: int, allowed: NDArray[np.uint64]) -> TopK:
        """Exact top-``k`` among ``allowed`` without the scan table."""
        n = len(self.graph)
        if self._scans_in_numpy and len(allowed) * 8 <= n:
            present = allowed[np.asarray(self.graph.contains(allowed), dtype=bool).reshape(-1)] if len(allowed) \
                else allowed
            subset = ExactMatrix(self._dim, self._normalize)
            if len(present):
                subset.add(present, np.asarray(self.graph.get(present), dtype=np.float32).reshape(len(present), -1))
            keys, scores = subset.search(mat, k)
            return keys, scores, np.full(len(mat), keys.shape[1], dtype=np.int64)
        return _keep_allowed(self._graph_top_k(mat, n, True), allowed, k)

    def _post_filtered(self, mat: NDArray[np.float32], k: int, allowed: NDArray[np.uint64]) -> TopK:
        """HNSW top-``k`` among ``allowed``, widening k' geometrically (module docstring)."""
        n = len(self.graph)
        out_keys = np.zeros((len(mat), k), dtype=np.uint64)
        out_scores = np.zeros((len(mat), k), dtype=np.float32)
        counts = np.zeros(len(mat), dtype=np.int64)
        todo = np.arange(len(mat))
        wide = min(n, max(2 * k, -(-2 * k * n // max(1, len(allowed)))))
        while len(todo):
            if wide * 2 >= n:
                got = self._exact_subset(mat[todo], k, allowed)
            else:
                got = _keep_allowed(self._graph_top_k(mat[todo], wide, False), allowed, k)
            keys, scores, found = got
            w = keys.shape[1]
            out_keys[todo, :w], out_scores[todo, :w], counts[todo] = keys, scores, found
            if wide * 2 >= n:
                break
            todo = todo[found < k]
            wide = min(n, wide * WIDEN)
        return out_keys, out_scores, counts

    def _build_table(self) -> ExactMatrix:
        with self._lock:
            if self.table is None:
                self.table = ExactMatrix.from_graph(self.graph, self._dim, self._normalize)
            return self.table


def _keep_allowed(top: TopK, allowed: NDArray[np.uint64], k: int) -> TopK:
    """The first ``k`` hits of each row of ``top`` whose key is in ``allowed`` (sorted), in order."""
    keys, scores, counts = top
    valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
    keep = valid & np.isin(keys, allowed)
    # A stable sort of "not kept" moves the kept hits to the front, keeping their order.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    found = np.minimum(keep.sum(axis=1), k).astype(np.int64)
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(scores, order, axis=1), found


__all__ = ["TowerSearch", "TopK"]
