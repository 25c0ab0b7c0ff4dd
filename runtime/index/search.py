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

    def warm_up(self, threshold: int) -> None:
        """Build the scan table now if the default search of this tower would scan it."""
        if self._scans_in_numpy and len(self.graph) and self.uses_exact(threshold):
            self._build_table()

    def top_k(self, mat: NDArray[np.float32], k: int, *, exact: bool | None, threshold: int) -> TopK:
        """The best ``k`` (at most the tower's size) for each row of ``mat``; ``exact=None``: by the policy."""
        if exact is None:
            exact = self.uses_exact(threshold)
        if exact and self._scans_in_numpy:
            self._exact_calls += 1
            table = self.table
            if table is None and (self._exact_calls > 1 or len(mat) >= TABLE_BATCH):
                table = self._build_table()
            if table is not None:
                keys, scores = table.search(mat, k)
                return keys, scores, np.full(len(mat), keys.shape[1], dtype=np.int64)
        matches = self.graph.search(mat, k, exact=exact)
        keys = np.asarray(matches.keys, dtype=np.uint64).reshape(len(mat), -1)
        dists = np.asarray(matches.distances, dtype=np.float32).reshape(len(mat), -1)
        # usearch answers a one-row batch with a plain Matches (no counts): every slot is filled.
        counts = (np.asarray(matches.counts, dtype=np.int64).reshape(-1) if hasattr(matches, "counts")
                  else np.full(len(mat), keys.shape[1], dtype=np.int64))
        return keys, 1.0 - dists, counts

    def _build_table(self) -> ExactMatrix:
        with self._lock:
            if self.table is None:
                self.table = ExactMatrix.from_graph(self.graph, self._dim, self._normalize)
            return self.table


__all__ = ["TowerSearch", "TopK"]
