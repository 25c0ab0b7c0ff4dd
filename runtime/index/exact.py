"""Exact (brute-force) search over an in-memory float32 copy of one tower's vectors.

Why it exists: on isotropic 512-d vectors an HNSW graph at interactive settings finds
only ~60% of the true top-10 at 100k vectors, while one matrix-vector product over the
same 100k vectors takes ~11 ms on this 2-core machine and is exact. usearch's own ``exact=True``
scan was 3-4x slower than numpy's BLAS here, so the index keeps this copy for the
towers it searches exactly (see :data:`EXACT_SCAN_BUDGET`).

The matrix is a per-index, per-tower cache, copied from the graph's stored vectors
(about 0.6-1.2 s for 100k x 512 here, mostly usearch's per-vector ``get``; when it is
built is :mod:`crossmodal.index.search`'s choice), updated in place by ``add`` / ``remove``
(amortised O(1) per vector: capacity grows by a quarter, removed rows are masked and
compacted when they reach half), and dropped with the index. Memory: ``4 * dim`` bytes
per vector, the same as the f32 graph's own copy; f16 / i8 indexes do not use it (they
chose small memory, and their exact search runs on their quantised vectors inside usearch).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # pragma: no cover
    from usearch.index import Index as UsearchIndex

# Exact search is the default while a tower holds at most EXACT_SCAN_BUDGET // dim vectors:
# 2**26 floats = 256 MB per scan, ~131k vectors at dim 512 (about 15 ms per single query on
# 2 cores here, faster per query in batches), ~1M at dim 64. Above it HNSW answers.
EXACT_SCAN_BUDGET = 1 << 26
# A batch this large pays for building the table at once (~30 in-place scans cost as much).
TABLE_BATCH = 32
# Scores of at most this many (query, vector) pairs are held at once when a batch is scanned.
_BLOCK_FLOATS = 1 << 24


def default_exact_threshold(dim: int) -> int:
    """Largest tower size searched exactly by default for vectors of ``dim``."""
    return max(1, EXACT_SCAN_BUDGET // max(1, int(dim)))


def _grown(a: NDArray[Any], rows: int, cap: int) -> NDArray[Any]:
    """A zeroed array of ``cap`` rows shaped like ``a``, holding ``a``'s first ``rows`` rows."""
    out = np.zeros((cap, *a.shape[1:]), dtype=a.dtype)
    out[:rows] = a[:rows]
    return out


class ExactMatrix:
    """The vectors of one tower as a dense float32 matrix with their keys, for brute-force top-k.

    ``normalize`` (metric ``cos``): rows and queries are L2-normalised so the dot product is
    the cosine, as usearch's ``cos`` metric scores it.
    """

    def __init__(self, dim: int, normalize: bool) -> None:
        self._dim = int(dim)
        self._normalize = normalize
        self._mat = np.zeros((0, self._dim), dtype=np.float32)
        self._keys = np.zeros(0, dtype=np.uint64)
        self._alive = np.zeros(0, dtype=bool)
        self._rows = 0
        self._dead = 0
        self._row_of: dict[int, int] | None = None  # key -> row, built on the first remove
        self._lock = threading.Lock()

    @classmethod
    def from_graph(cls, graph: "UsearchIndex", dim: int, normalize: bool) -> "ExactMatrix":
        """A copy of every vector ``graph`` holds (as float32)."""
        out = cls(dim, normalize)
        if len(graph):
            keys = np.asarray(graph.keys, dtype=np.uint64)
            vecs = np.asarray(graph.get(keys), dtype=np.float32).reshape(len(keys), dim)
            out.add(keys, vecs)
        return out

    def __len__(self) -> int:
        return self._rows - self._dead

    def _prepare(self, mat: NDArray[np.float32]) -> NDArray[np.float32]:
        # No copy unless normalising (which writes a new array): queries arrive on the hot path.
        mat = np.asarray(mat, dtype=np.float32)
        if not self._normalize:
            return mat
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        # A zero vector has no direction: usearch scores it as distance 1 (cosine 0); so do we.
        return mat / np.where(norms > 0, norms, 1.0)

    def add(self, keys: NDArray[np.uint64], mat: NDArray[np.float32]) -> None:
        """Append rows (keys not already present; the index guarantees that)."""
        if len(keys) == 0:
            return
        rows = self._prepare(mat)
        with self._lock:
            need = self._rows + len(rows)
            if need > len(self._mat):
                # 1.25x growth: amortised O(1) appends without reserving twice the memory.
                cap = max(need, len(self._mat) + len(self._mat) // 4, 1024)
                self._mat, self._keys, self._alive = (_grown(a, self._rows, cap)
                                                      for a in (self._mat, self._keys, self._alive))
            s = slice(self._rows, need)
            self._mat[s] = rows
            self._keys[s] = keys
            self._alive[s] = True
            if self._row_of is not None:
                self._row_of.update(zip(keys.tolist(), range(self._rows, need)))
            self._rows = need

    def remove(self, keys: NDArray[np.uint64] | list[int]) -> None:
        """Mask rows out; compact once half of the rows are dead."""
        with self._lock:
            if self._row_of is None:
                self._row_of = dict(zip(self._keys[:self._rows].tolist(), range(self._rows)))
            for k in np.asarray(keys, dtype=np.uint64).tolist():
                i = self._row_of.pop(int(k), None)
                if i is not None:
                    self._alive[i] = False
                    self._dead += 1
            if self._dead and self._dead * 2 >= self._rows:
                keep = np.flatnonzero(self._alive[:self._rows])
                self._mat = np.ascontiguousarray(self._mat[keep])
                self._keys = self._keys[keep]
                self._alive = np.ones(len(keep), dtype=bool)
                self._rows, self._dead = len(keep), 0
                self._row_of = None  # rows moved: rebuilt by the next remove

    def search(self, queries: NDArray[np.float32], k: int, allowed: NDArray[np.uint64] | None = None,
               ) -> tuple[NDArray[np.uint64], NDArray[np.float32]]:
        """``(keys, scores)`` of shape ``(len(queries), min(k, candidates))``, best first.

        ``allowed`` (sorted keys): only these rows compete, so the top-k is taken among them.
        """
        q = self._prepare(queries)
        # Snapshot under the lock, scan outside it: add() only writes rows past the snapshot's
        # end and remove() replaces arrays instead of shrinking them, so concurrent searches
        # (numpy releases the GIL) never wait on each other.
        with self._lock:
            n, mat, keys = self._rows, self._mat[:self._rows], self._keys[:self._rows]
            dead = None if self._dead == 0 else ~self._alive[:n]
        if allowed is not None:
            outside = ~np.isin(keys, allowed)
            dead = outside if dead is None else dead | outside
        kk = min(int(k), n - (0 if dead is None else int(dead.sum())))
        out_keys = np.zeros((len(q), max(kk, 0)), dtype=np.uint64)
        out_scores = np.zeros((len(q), max(kk, 0)), dtype=np.float32)
        if kk <= 0:
            return out_keys, out_scores
        step = max(1, _BLOCK_FLOATS // max(1, n))
        for s in range(0, len(q), step):
            scores = q[s:s + step] @ mat.T
            if dead is not None:
                scores[:, dead] = -np.inf
            if kk < n:
                top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            else:
                top = np.broadcast_to(np.arange(n), scores.shape).copy()
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            out_keys[s:s + step] = keys[np.take_along_axis(top, order, axis=1)]
            out_scores[s:s + step] = np.take_along_axis(top_scores, order, axis=1)
        return out_keys, out_scores
