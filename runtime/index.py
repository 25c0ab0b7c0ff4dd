"""A persistent search index: usearch holds the vectors, SQLite (stdlib) the metadata.

On disk an index is one directory::

    INDEX/header.json             bundle, space, dim, metric, dtype, counts, format version (a mirror, for humans)
    INDEX/meta.sqlite             items (key -> path, caption, sha256), the add journal, the committed state
    INDEX/vectors.image.usearch   HNSW graph of the image vectors (absent until the first save)
    INDEX/vectors.text.usearch    HNSW graph of the caption vectors (only when captions were embedded)

Durability model (why it is safe to kill the process at any instant):

* ``meta.sqlite`` runs in WAL mode with ``synchronous=FULL`` and every change is one
  transaction, so SQLite itself is always at some committed state.
* ``add`` commits the new vectors into a ``journal`` table *with* their metadata in one
  transaction before touching the in-memory graph: once ``add`` returns, the vectors
  are durable even though no ``.usearch`` file was rewritten.
* ``save`` compacts: each changed graph is written to ``<file>.tmp`` and fsynced, then
  one SQLite transaction records the tmp file's sha256/size as the committed file and
  empties the journal (the commit point), then the tmp file is ``os.replace``-d over
  the old one and the directory is fsynced. On ``open``, a graph file that does not
  match the committed sha256 is replaced by a ``.tmp`` that does (a crash after the
  commit point: roll forward) and a ``.tmp`` that does not is deleted (a crash before
  it: the journal still holds its vectors).
* ``header.json`` is rewritten atomically (tmp, fsync, rename, fsync dir) after each save.

Consistency policy on open (items = SQLite rows, vectors = graph file + journal):

* vectors without an item (left by ``remove`` until the next ``save``) are dropped silently;
* items without a vector, a graph file matching no committed digest, an item path outside
  the index root, or a header that disagrees with SQLite are *refused* with
  :class:`~crossmodal.errors.IndexStoreError`; ``Index.open(..., repair=True)`` (writers only)
  instead drops the offending items (their files are re-embedded by the next build) or
  rewrites the header, and reports what it dropped in ``Index.repairs``.

Search: a tower of at most ``exact_threshold`` vectors is scanned exactly (a float32 copy
of its vectors, see :mod:`crossmodal.index_exact`), a larger one walks its HNSW graph;
``search(..., exact=True/False)`` forces either.

Concurrency: one writer per index (an exclusive ``flock`` held while open), any number of
readers (``read_only=True``). Readers load under a shared lock which ``save`` takes
exclusively while it swaps files, so a reader never sees a half-swapped pair. A reader
sees the state of the moment it opened; results whose item was removed since are dropped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .durable_files import FileLock, atomic_write_bytes, file_digest, fsync_dir, fsync_file
from .errors import IncompatibleTowersError, IndexStoreError, InputError
from .index_bench import RecallReport, bench_recall
from .index_exact import EXACT_SCAN_BUDGET, TABLE_BATCH, ExactMatrix, default_exact_threshold
from .index_format import (
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
    as_matrix,
    check_setting,
    content_key,
    header_bytes,
    initial_state,
    key_from_sha256,
    relative_item_path,
    text_key,
    vectors_file,
)
from .index_meta import ItemRow, MetaStore, connect, create_meta, read_state
from .index_recovery import header_is_current, recover

if TYPE_CHECKING:  # pragma: no cover
    from usearch.index import Index as _UIndex

    from .manifest import BundleInfo
    from .rerank import Reranker

__all__ = [
    "Index", "SearchResult", "ItemRecord", "RecallReport", "bench_recall", "content_key", "text_key",
    "key_from_sha256", "vectors_file", "FORMAT_VERSION", "HEADER_FILE", "META_FILE", "LOCK_FILE",
    "WRITER_LOCK_FILE", "METRICS", "DTYPES", "TOWERS", "KEY_MASK", "DEFAULT_CONNECTIVITY",
    "DEFAULT_EXPANSION_ADD", "DEFAULT_EXPANSION_SEARCH", "EXACT_SCAN_BUDGET", "default_exact_threshold",
]


@dataclass(frozen=True)
class SearchResult:
    """One hit. ``score`` is the cosine similarity (``metric='cos'``) or inner product (``'ip'``).

    ``itm_score`` is set on hits re-scored by a re-ranker (``search_text(..., rerank=R)``):
    the ITM match logit the hits are then ordered by; None otherwise.
    """

    key: int
    score: float
    path: str | None
    caption: str | None
    tower: str = "image"
    itm_score: float | None = None


@dataclass(frozen=True)
class ItemRecord:
    """Metadata of one indexed vector."""

    key: int
    tower: str
    path: str | None
    caption: str | None
    sha256: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)


class Index:
    """A vector index bound to one embedding space. Build it with :meth:`create`, reopen it with :meth:`open`.

    >>> idx = Index.create("photos.idx", bundle="clip-vit-b-32", space="openai-clip-vit-b-32", dim=512)  # doctest: +SKIP
    >>> idx.add(vectors, [{"path": "a.jpg"}]); idx.save()                                          # doctest: +SKIP
    >>> idx.search(query_vector, k=5)                                                             # doctest: +SKIP
    """

    def __init__(self, path: Path, meta: MetaStore, state: dict[str, Any], *, read_only: bool,
                 writer_lock: FileLock | None, swap_lock: FileLock) -> None:
        # Private: use Index.create / Index.open, which validate everything first.
        self._path = path
        self._meta = meta
        self._state = state
        self._read_only = read_only
        self._writer_lock = writer_lock
        self._swap_lock = swap_lock
        self._graphs: dict[str, _UIndex] = {}
        self._dirty: set[str] = set()
        self._closed = False
        self.repairs: list[str] = []
        self._ef: int | None = None
        self._exact_threshold: int | None = None
        # Per-tower float32 copies for brute-force search (runtime/index_exact.py), built on a
        # tower's second exact search, a 32+ query batch or warm_up(); kept in step by add/remove.
        self._exact: dict[str, ExactMatrix] = {}
        self._exact_calls: dict[str, int] = {}
        # Held while a table is copied from a graph and while add/remove change a graph, so a
        # table built in one thread never misses vectors another thread is adding.
        self._table_lock = threading.Lock()
        # Tests set this to observe (and kill the process at) each step of add/save.
        self._hook: Callable[[str], None] | None = None

    # ------------------------------------------------------------- construction

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, bundle: "str | BundleInfo", dim: int | None = None,
               space: str | None = None, metric: str = "cos", dtype: str = "f32",
               connectivity: int = DEFAULT_CONNECTIVITY, expansion_add: int = DEFAULT_EXPANSION_ADD,
               expansion_search: int = DEFAULT_EXPANSION_SEARCH, root: str | os.PathLike[str] | None = None,
               info: Mapping[str, Any] | None = None) -> "Index":
        """Create an empty index directory at ``path`` and open it for writing.

        ``bundle`` is a :class:`~crossmodal.manifest.BundleInfo` (dim and space are taken
        from it) or a bundle name (then ``dim`` is required; ``space`` defaults to the name).
        ``root``: the folder item paths are stored relative to; paths outside it are refused.
        ``info``: extra JSON-able facts to record (the CLI stores the bundle path and variant).
        The directory appears atomically: it is assembled under a temporary name first.
        """
        state = initial_state(bundle, dim=dim, space=space, metric=metric, dtype=dtype, connectivity=connectivity,
                              expansion_add=expansion_add, expansion_search=expansion_search, root=root, info=info)
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise IndexStoreError(f"{path} already exists and is not empty; open it with Index.open "
                                  "(`crossmodal index add`) or choose another output path.")
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.creating-{os.getpid()}")
        if staging.exists():
            import shutil

            shutil.rmtree(staging)
        staging.mkdir()
        create_meta(staging / META_FILE, state)
        atomic_write_bytes(staging / HEADER_FILE, header_bytes(state, {t: 0 for t in TOWERS}))
        if path.exists():
            path.rmdir()
        os.rename(staging, path)
        fsync_dir(path.parent)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False, repair: bool = False,
             verify: bool = True) -> "Index":
        """Open an existing index; see the module docstring for the consistency policy.

        ``read_only``: no lock against other readers, no writes; many readers may coexist
        with one writer. ``repair`` (writers only): drop inconsistent items instead of
        refusing. ``verify``: check each graph file's sha256 (else only its size).
        """
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise IndexStoreError(f"{path} is not a crossmodal index ({META_FILE} is missing); "
                                  "build one with `crossmodal index build`.")
        if read_only and repair:
            raise InputError("repair=True needs a writable index (read_only=False).")
        writer_lock = None
        if not read_only:
            writer_lock = FileLock(path / WRITER_LOCK_FILE, create=True)
            if not writer_lock.acquire(exclusive=True, blocking=False):
                writer_lock.close()
                raise IndexStoreError(f"{path} is open for writing by another process; wait for it to "
                                      "finish or open with read_only=True.")
        swap_lock = FileLock(path / LOCK_FILE, create=not read_only)
        try:
            conn = connect(path / META_FILE, read_only)
            state = read_state(conn, path)
            idx = cls(path, MetaStore(conn, path), state, read_only=read_only, writer_lock=writer_lock,
                      swap_lock=swap_lock)
        except BaseException:
            swap_lock.close()
            if writer_lock is not None:
                writer_lock.close()
            raise
        try:
            swap_lock.acquire(exclusive=not read_only)
            try:
                idx._load(repair=repair, verify=verify)
            finally:
                swap_lock.release()
        except BaseException:
            idx.close()
            raise
        return idx

    # ------------------------------------------------------------- properties

    @property
    def path(self) -> Path:
        """The index directory."""
        return self._path

    @property
    def bundle(self) -> str:
        """Name of the bundle whose encoder made the vectors."""
        return str(self._state["bundle"])

    @property
    def space(self) -> str:
        """Embedding space; queries must come from an encoder of the same space."""
        return str(self._state["space"])

    @property
    def dim(self) -> int:
        return int(self._state["dim"])

    @property
    def metric(self) -> str:
        return str(self._state["metric"])

    @property
    def dtype(self) -> str:
        return str(self._state["dtype"])

    @property
    def expansion_search(self) -> int:
        """HNSW search breadth (recall vs latency); set it to change it for this instance only."""
        return int(self._ef if self._ef is not None else self._state["expansion_search"])

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"expansion_search must be a positive int, got {value!r}.")
        self._ef = value  # not persisted: the recorded default stays in meta.sqlite and the header
        for graph in self._graphs.values():
            graph.expansion_search = value

    @property
    def exact_threshold(self) -> int:
        """Towers with at most this many vectors are searched exactly by default (``exact=None``).

        Defaults to :func:`~crossmodal.index_exact.default_exact_threshold` of the dim
        (131,072 vectors at dim 512): up to it a scan is exact whatever the data and takes at
        most ~15 ms per query on 2 cores, while a graph can miss neighbours (README, Search).
        Set it (0 = always HNSW) for this instance only; not persisted.
        """
        return self._exact_threshold if self._exact_threshold is not None else default_exact_threshold(self.dim)

    @exact_threshold.setter
    def exact_threshold(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"exact_threshold must be an int >= 0, got {value!r}.")
        self._exact_threshold = value

    def uses_exact(self, tower: str = "image") -> bool:
        """Whether a search of ``tower`` with ``exact=None`` (the default) scans every vector."""
        check_setting("tower", tower, TOWERS)
        return len(self._graphs[tower]) <= self.exact_threshold

    @property
    def root(self) -> str | None:
        """Folder that item paths are relative to (None: paths are stored as given)."""
        return self._state.get("root")

    @property
    def info(self) -> dict[str, Any]:
        """Extra facts recorded at creation (bundle path, variant, ...)."""
        return dict(self._state.get("info") or {})

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def generation(self) -> int:
        """Number of completed saves."""
        return int(self._state["generation"])

    def __len__(self) -> int:
        return sum(len(g) for g in self._graphs.values())

    def count(self, tower: str | None = None) -> int:
        """Number of vectors of one tower (or all)."""
        if tower is None:
            return len(self)
        check_setting("tower", tower, TOWERS)
        return len(self._graphs[tower])

    def contains(self, key: int, tower: str = "image") -> bool:
        """Whether ``key`` is indexed for ``tower`` (thread-safe enough for ingest workers: read only)."""
        return bool(self._graphs[tower].contains(int(key)))

    def find_path(self, path: str | os.PathLike[str], *, tower: str = "image") -> list[int]:
        """Keys of ``tower`` items stored under ``path`` (one per content version ever indexed there)."""
        check_setting("tower", tower, TOWERS)
        keys = self._meta.keys_at_path(tower, relative_item_path(path, self.root))
        return [k for k in keys if self._graphs[tower].contains(k)]

    def keys(self, tower: str = "image") -> set[int]:
        """The keys of ``tower`` held by this instance."""
        check_setting("tower", tower, TOWERS)
        g = self._graphs[tower]
        return set(np.asarray(g.keys, dtype=np.uint64).tolist()) if len(g) else set()

    def __repr__(self) -> str:
        counts = ", ".join(f"{t}={len(g)}" for t, g in self._graphs.items())
        return (f"Index({str(self._path)!r}, bundle={self.bundle!r}, dim={self.dim}, metric={self.metric!r}, "
                f"dtype={self.dtype!r}, {counts}{', read_only' if self._read_only else ''})")

    # ------------------------------------------------------------- loading

    def _load(self, *, repair: bool, verify: bool) -> None:
        rec = recover(self._path, self._meta, read_only=self._read_only, repair=repair, verify=verify)
        self._state, self._graphs = rec.state, rec.graphs
        self._exact.clear()
        self._exact_calls.clear()
        self._dirty |= rec.dirty
        self.repairs.extend(rec.repairs)
        if self._read_only:
            self._dirty.clear()
        elif not header_is_current(self._path, self.generation, len(self)):
            self._write_header()

    # ------------------------------------------------------------- writing

    def _require_writable(self) -> None:
        if self._closed:
            raise IndexStoreError(f"index {self._path} is closed.")
        if self._read_only:
            raise IndexStoreError(f"index {self._path} was opened read_only; reopen with read_only=False to modify it.")

    def add(self, vectors: ArrayLike, metadata: Sequence[Mapping[str, Any]] | None = None, *,
            keys: Sequence[int] | NDArray[np.integer] | None = None, tower: str = "image") -> NDArray[np.uint64]:
        """Add vectors with their metadata; durable when this returns (journaled in SQLite).

        ``metadata[i]`` may hold ``path``, ``caption``, ``sha256`` and any JSON-able extras.
        Keys: ``keys`` if given, else derived from ``metadata[i]['sha256']``, else from the
        vector's bytes. A key already present (same content) is left unchanged and not
        returned: the result holds the keys actually added.
        """
        self._require_writable()
        check_setting("tower", tower, TOWERS)
        mat, _ = as_matrix(vectors, self.dim, "vectors")
        n = len(mat)
        metas = list(metadata) if metadata is not None else [{} for _ in range(n)]
        if len(metas) != n:
            raise InputError(f"{n} vectors but {len(metas)} metadata entries; give one mapping per vector.")
        if keys is not None:
            key_list = [int(k) for k in np.asarray(keys).reshape(-1)]
            if len(key_list) != n or any(k < 0 or k > KEY_MASK for k in key_list):
                raise InputError(f"keys must be {n} integers in [0, 2**63); got {len(key_list)}.")
        else:
            key_list = []
            for m, v in zip(metas, mat):
                sha = m.get("sha256")
                key_list.append(key_from_sha256(sha) if sha else content_key(v.tobytes())[0])
        graph = self._graphs[tower]
        seen: set[int] = set()
        rows, jrows, new_keys, new_idx = [], [], [], []
        now = time.time()
        for i, (key, meta) in enumerate(zip(key_list, metas)):
            if key in seen or graph.contains(key):
                continue
            seen.add(key)
            extra = {k: v for k, v in meta.items() if k not in ("path", "caption", "sha256")}
            rows.append((tower, key, relative_item_path(meta.get("path"), self.root), meta.get("caption"),
                         meta.get("sha256"), json.dumps(extra) if extra else None, now))
            jrows.append((tower, key, mat[i].tobytes()))
            new_keys.append(key)
            new_idx.append(i)
        if not new_keys:
            return np.zeros(0, dtype=np.uint64)
        self._meta.add_items(rows, jrows, before_commit=lambda: self._run_hook("add:journaled"))
        karr = np.asarray(new_keys, dtype=np.uint64)
        with self._table_lock:
            graph.add(karr, mat[new_idx])
            if tower in self._exact:
                self._exact[tower].add(karr, mat[new_idx])
        self._dirty.add(tower)
        return karr

    def remove(self, keys: int | Sequence[int] | NDArray[np.integer], *, tower: str = "image") -> int:
        """Remove keys (missing ones are ignored); durable when this returns. Returns how many were removed."""
        self._require_writable()
        check_setting("tower", tower, TOWERS)
        graph = self._graphs[tower]
        present = [int(k) for k in np.atleast_1d(np.asarray(keys, dtype=np.int64)) if graph.contains(int(k))]
        if not present:
            return 0
        self._meta.delete_items(tower, present)
        with self._table_lock:
            graph.remove(np.asarray(present, dtype=np.uint64))
            if tower in self._exact:
                self._exact[tower].remove(present)
        self._dirty.add(tower)
        return len(present)

    def _run_hook(self, step: str) -> None:
        if self._hook is not None:
            self._hook(step)

    def journal_size(self) -> int:
        """Vectors committed in the journal but not yet compacted into a graph file."""
        return self._meta.journal_size()

    def save(self) -> None:
        """Compact the journal into the graph files atomically (see the module docstring)."""
        self._require_writable()
        towers = sorted(self._dirty)
        if not towers and self.journal_size() == 0:
            return
        self._swap_lock.acquire(exclusive=True)
        try:
            files = dict(self._state.get("files") or {})
            written: dict[str, Path] = {}
            for tower in towers:
                tmp = self._path / (vectors_file(tower) + ".tmp")
                self._graphs[tower].save(str(tmp))
                fsync_file(tmp)
                digest, size = file_digest(tmp)
                files[tower] = {"sha256": digest, "size": size, "count": len(self._graphs[tower])}
                written[tower] = tmp
            self._run_hook("save:tmp-written")
            generation = self.generation + 1
            self._meta.commit_files(files, generation)
            self._state["files"] = files
            self._state["generation"] = generation
            self._run_hook("save:committed")
            for tower, tmp in written.items():
                os.replace(tmp, self._path / vectors_file(tower))
            fsync_dir(self._path)
            self._run_hook("save:replaced")
            self._write_header()
            self._dirty.clear()
        finally:
            self._swap_lock.release()

    def _write_header(self) -> None:
        counts = {t: len(g) for t, g in self._graphs.items()}
        atomic_write_bytes(self._path / HEADER_FILE, header_bytes(self._state, counts))

    def close(self) -> None:
        """Release the locks and the SQLite connection (unsaved journal entries stay durable)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._meta.close()
        finally:
            self._swap_lock.close()
            if self._writer_lock is not None:
                self._writer_lock.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and not self._read_only and not self._closed:
            self.save()
        self.close()

    # ------------------------------------------------------------- reading

    def get(self, key: int, *, tower: str = "image") -> ItemRecord | None:
        """Metadata of one key, or None."""
        if not self._graphs[tower].contains(int(key)):
            return None
        return self._records(tower, [int(key)]).get(int(key))

    def items(self, *, tower: str | None = None) -> Iterator[ItemRecord]:
        """All item records (ordered by tower, key) whose vectors this instance holds.

        A reader sees the items of the moment it opened, even while a writer adds more.
        """
        for row in self._meta.item_rows(tower):
            if row[0] in self._graphs and self._graphs[row[0]].contains(int(row[1])):
                yield self._record(row)

    def _record(self, row: ItemRow) -> ItemRecord:
        tower, key, p, caption, sha, extra = row
        if p is not None and self.root is not None:
            p = os.path.join(self.root, *p.split("/"))
        return ItemRecord(key=int(key), tower=tower, path=p, caption=caption, sha256=sha,
                          extra=json.loads(extra) if extra else {})

    def _records(self, tower: str, keys: Sequence[int]) -> dict[int, ItemRecord]:
        recs = (self._record(row) for row in self._meta.rows_for_keys(tower, keys))
        return {rec.key: rec for rec in recs}

    def search(self, vectors: ArrayLike, k: int = 10, *, tower: str = "image",
               exact: bool | None = None) -> list[SearchResult] | list[list[SearchResult]]:
        """Top-``k`` items of ``tower`` for one query vector (-> list) or a batch (-> list of lists).

        ``k`` larger than the index returns every item; ``k <= 0`` is an error.
        ``exact``: True scans every vector (brute force), False walks the HNSW graph, None
        (default) scans while the tower holds at most :attr:`exact_threshold` vectors and
        walks the graph above that. Scores are the same either way (cosine or inner product).
        """
        if self._closed:
            raise IndexStoreError(f"index {self._path} is closed.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise InputError(f"k must be a positive integer, got {k!r}.")
        if exact is not None and not isinstance(exact, bool):
            raise InputError(f"exact must be True, False or None (automatic), got {exact!r}.")
        check_setting("tower", tower, TOWERS)
        mat, single = as_matrix(vectors, self.dim, "query vectors")
        graph = self._graphs[tower]
        n = len(graph)
        if n == 0 or len(mat) == 0:
            empty: list[list[SearchResult]] = [[] for _ in range(len(mat))]
            return empty[0] if single else empty
        if exact is None:
            exact = self.uses_exact(tower)
        keys, scores, counts = self._top_k(tower, mat, min(int(k), n), exact)
        wanted = sorted({int(keys[i, j]) for i in range(len(mat)) for j in range(int(counts[i]))})
        recs = self._records(tower, wanted)
        out: list[list[SearchResult]] = []
        for i in range(len(mat)):
            row = []
            for j in range(int(counts[i])):
                rec = recs.get(int(keys[i, j]))
                if rec is None:
                    continue  # removed by the writer after this reader opened
                row.append(SearchResult(key=rec.key, score=float(scores[i, j]), path=rec.path,
                                        caption=rec.caption, tower=tower))
            out.append(row)
        return out[0] if single else out

    def _top_k(self, tower: str, mat: NDArray[np.float32], k: int,
               exact: bool) -> tuple[NDArray[np.uint64], NDArray[np.float32], NDArray[np.int64]]:
        """``(keys, scores, counts)``: row i holds ``counts[i]`` valid hits, best first."""
        graph = self._graphs[tower]
        if exact and self.dtype == "f32":
            calls = self._exact_calls[tower] = self._exact_calls.get(tower, 0) + 1
            table = self._exact.get(tower)
            if table is None and (calls > 1 or len(mat) >= TABLE_BATCH):
                table = self._table(tower)
            if table is not None:
                keys, scores = table.search(mat, k)
                return keys, scores, np.full(len(mat), keys.shape[1], dtype=np.int64)
        matches = graph.search(mat, k, exact=exact)
        keys = np.asarray(matches.keys, dtype=np.uint64).reshape(len(mat), -1)
        dists = np.asarray(matches.distances, dtype=np.float32).reshape(len(mat), -1)
        # usearch answers a one-row batch with a plain Matches (no counts): every slot is filled.
        counts = (np.asarray(matches.counts, dtype=np.int64).reshape(-1) if hasattr(matches, "counts")
                  else np.full(len(mat), keys.shape[1], dtype=np.int64))
        return keys, 1.0 - dists, counts

    def _table(self, tower: str) -> ExactMatrix:
        with self._table_lock:
            table = self._exact.get(tower)
            if table is None:
                table = self._exact[tower] = ExactMatrix.from_graph(self._graphs[tower], self.dim,
                                                                    self.metric == "cos")
            return table

    def warm_up(self) -> None:
        """Build now what the first searches would otherwise build: the float32 scan table
        of each tower that the default search scans (f32 indexes; ~1 s per 100k x 512).

        A service calls this once after :meth:`open`; without it the second exact search
        of a tower pays the build (the first scans inside usearch).
        """
        if self.dtype != "f32":
            return
        for tower, graph in self._graphs.items():
            if len(graph) and self.uses_exact(tower):
                self._table(tower)

    def check_encoder(self, encoder: Any) -> None:
        """Raise IncompatibleTowersError unless ``encoder`` embeds into this index's space and dim."""
        b = getattr(encoder, "bundle", None)
        space = getattr(b, "space", None)
        name = getattr(b, "name", None)
        dim = getattr(encoder, "dim", None)
        if space != self.space or dim != self.dim:
            raise IncompatibleTowersError(
                f"index {self._path} was built by bundle {self.bundle!r} (space {self.space!r}, dim {self.dim}) "
                f"but the encoder is bundle {name!r} (space {space!r}, dim {dim}). Query with a bundle of the "
                "same space, or rebuild the index with `crossmodal index build`.")

    def search_text(self, encoder: Any, texts: Sequence[str] | str, k: int = 10, *, tower: str = "image",
                    exact: bool | None = None, rerank: int | None = None,
                    reranker: "Reranker | None" = None) -> list[SearchResult] | list[list[SearchResult]]:
        """Encode ``texts`` with ``encoder`` and search ``tower`` (text -> image by default).

        With ``rerank=R`` (>= k) and a :class:`~crossmodal.rerank.Reranker` of the
        index's bundle, the top ``R`` embedding hits are re-scored from their image
        files and the best ``k`` by ITM score are returned (``itm_score`` set,
        ``score`` still the cosine). Unreadable files keep their embedding rank
        with ``itm_score=None``; see :mod:`crossmodal.index_rerank`.
        """
        from .index_rerank import check_rerank_args, rerank_hits

        check_rerank_args(self.space, k, rerank, reranker, tower)
        self.check_encoder(encoder)
        vecs = encoder.encode_text(texts)
        if rerank is None:
            return self.search(vecs[0] if isinstance(texts, str) else vecs, k, tower=tower, exact=exact)
        assert reranker is not None  # checked above
        queries = [texts] if isinstance(texts, str) else list(texts)
        hits = self.search(vecs, int(rerank), tower=tower, exact=exact)
        out = [rerank_hits(h, q, reranker, int(k)) for h, q in zip(hits, queries)]  # type: ignore[arg-type]
        return out[0] if isinstance(texts, str) else out

    def search_image(self, encoder: Any, images: Any, k: int = 10, *, tower: str = "image",
                     exact: bool | None = None) -> list[SearchResult] | list[list[SearchResult]]:
        """Encode ``images`` (one source or a list) and search ``tower`` (image -> image by default,
        ``tower='text'`` for image -> caption)."""
        self.check_encoder(encoder)
        single = not isinstance(images, (list, tuple))
        vecs = encoder.encode_image(images)
        return self.search(vecs[0] if single else vecs, k, tower=tower, exact=exact)
