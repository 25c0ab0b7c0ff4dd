"""The persistent index: open and close, locks, add and remove, save, recovery on open.

The files an index directory holds are described in :mod:`crossmodal.index.format`.

Durability model (why it is safe to kill the process at any instant; the steps named
in :mod:`crossmodal.index.crash_points` are where the tests kill it):

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
  it: the journal still holds its vectors); see :mod:`crossmodal.index.recovery`.
* Bulk loads skip the journal (``add(..., journal=False)``): their item rows are inserted
  by the save's commit-point transaction itself, so items and the graph file holding
  their vectors become durable together, and each vector is written once.
* ``header.json`` is rewritten atomically (tmp, fsync, rename, fsync dir) after each save.

Consistency policy on open (items = SQLite rows, vectors = graph file + journal):

* vectors without an item (left by ``remove`` until the next ``save``) are dropped silently;
* items without a vector, a graph file matching no committed digest, an item path outside
  the index root, or a header that disagrees with SQLite are *refused* with
  :class:`~crossmodal.errors.IndexStoreError`; ``Index.open(..., repair=True)`` (writers only)
  instead drops the offending items (their files are re-embedded by the next build) or
  rewrites the header, and reports what it dropped in ``Index.repairs``.

Search: exact scan or HNSW graph by the tower's size, see :mod:`crossmodal.index.search`;
``where=`` filters by metadata (:mod:`crossmodal.index.filters`). Keyword search runs on
SQLite FTS5 tables kept in step with the items by triggers (:mod:`crossmodal.index.keyword`);
a writer adds them on open to an index made before them.
Turning texts and images into query vectors, and re-ranking, is the job of
:class:`crossmodal.retriever.Retriever`.

Concurrency: one writer per index (an exclusive ``flock`` held while open), any number of
readers (``read_only=True``). Readers load under a shared lock which ``save`` takes
exclusively while it swaps files, so a reader never sees a half-swapped pair. A reader
sees the state of the moment it opened; results whose item was removed since are dropped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..durable_files import FileLock, atomic_write_bytes, file_digest, fsync_dir, fsync_file
from ..errors import IncompatibleTowersError, IndexStoreError, InputError
from ..inputs import non_negative_int, optional_bool, positive_int
from . import crash_points
from .exact import default_exact_threshold
from .filters import Filter, as_filter, filter_sql
from .format import (
    DEFAULT_CONNECTIVITY,
    DEFAULT_EXPANSION_ADD,
    DEFAULT_EXPANSION_SEARCH,
    HEADER_FILE,
    KEY_MASK,
    LOCK_FILE,
    META_FILE,
    TOWERS,
    WRITER_LOCK_FILE,
    as_matrix,
    check_setting,
    content_key,
    header_bytes,
    initial_state,
    key_from_sha256,
    relative_item_path,
    vectors_file,
)
from .keyword import match_expression
from .meta import ItemRow, MetaStore, connect, create_meta, on_read_only_file_system, read_state
from .records import ItemRecord, SearchResult
from .recovery import header_is_current, recover
from .search import TowerSearch

_log = logging.getLogger("crossmodal.index")

if TYPE_CHECKING:  # pragma: no cover
    from ..manifest import BundleInfo


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
        # Each tower's graph and scan table (crossmodal.index.search), set by _load.
        self._towers: dict[str, TowerSearch] = {}
        self._dirty: set[str] = set()
        # Items added with journal=False: their rows go into SQLite with the next save's commit.
        self._pending: dict[tuple[str, int], tuple[Any, ...]] = {}
        self._closed = False
        self.repairs: list[str] = []
        self._ef: int | None = None
        self._exact_threshold: int | None = None

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
        if not read_only and on_read_only_file_system(path):
            raise IndexStoreError(f"{path} is on a read-only file system: open it with read_only=True "
                                  "(`crossmodal search`, `crossmodal serve --index ... --read-only`), or write it "
                                  "where its storage is writable.")
        writer_lock = None
        if not read_only:
            writer_lock = FileLock(path / WRITER_LOCK_FILE, create=True)
            if not writer_lock.acquire(exclusive=True, blocking=False):
                writer_lock.close()
                raise IndexStoreError(f"{path} is open for writing by another process; wait for it to "
                                      "finish or open with read_only=True.")
        try:
            swap_lock = FileLock(path / LOCK_FILE, create=not read_only)
        except BaseException:
            # FileLock raises when its file cannot be opened: the writer lock must not outlive this call.
            if writer_lock is not None:
                writer_lock.close()
            raise
        try:
            conn = connect(path / META_FILE, read_only)
            state = read_state(conn, path)
            meta = MetaStore(conn, path, read_only=read_only)
            if not read_only:
                meta.ensure_fts()  # an index made before keyword search gets its FTS tables (no re-embedding)
            idx = cls(path, meta, state, read_only=read_only, writer_lock=writer_lock, swap_lock=swap_lock)
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
    def connectivity(self) -> int:
        """HNSW connectivity the graphs were built with (fixed at :meth:`create`)."""
        return int(self._state["connectivity"])

    @property
    def expansion_add(self) -> int:
        """HNSW build breadth the graphs were built with (fixed at :meth:`create`)."""
        return int(self._state["expansion_add"])

    @property
    def expansion_search(self) -> int:
        """HNSW search breadth (recall vs latency); set it to change it for this instance only."""
        return int(self._ef if self._ef is not None else self._state["expansion_search"])

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        value = positive_int("expansion_search", value)
        self._ef = value  # not persisted: the recorded default stays in meta.sqlite and the header
        for t in self._towers.values():
            t.graph.expansion_search = value

    @property
    def exact_threshold(self) -> int:
        """Towers with at most this many vectors are searched exactly by default (``exact=None``).

        Defaults to :func:`~crossmodal.index.exact.default_exact_threshold` of the dim
        (131,072 vectors at dim 512): up to it a scan is exact whatever the data and takes at
        most ~15 ms per query on 2 cores, while a graph can miss neighbours (README, Search).
        Set it (0 = always HNSW) for this instance only; not persisted.
        """
        return self._exact_threshold if self._exact_threshold is not None else default_exact_threshold(self.dim)

    @exact_threshold.setter
    def exact_threshold(self, value: int) -> None:
        self._exact_threshold = non_negative_int("exact_threshold", value)

    def uses_exact(self, tower: str = "image") -> bool:
        """Whether a search of ``tower`` with ``exact=None`` (the default) scans every vector."""
        check_setting("tower", tower, TOWERS)
        return self._towers[tower].uses_exact(self.exact_threshold)

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
        return sum(len(t) for t in self._towers.values())

    def count(self, tower: str | None = None) -> int:
        """Number of vectors of one tower (or all)."""
        if tower is None:
            return len(self)
        check_setting("tower", tower, TOWERS)
        return len(self._towers[tower])

    def contains(self, key: int, tower: str = "image") -> bool:
        """Whether ``key`` is indexed for ``tower`` (thread-safe enough for ingest workers: read only)."""
        return self._towers[tower].contains(key)

    def find_path(self, path: str | os.PathLike[str], *, tower: str = "image") -> list[int]:
        """Keys of ``tower`` items stored under ``path`` (one per content version ever indexed there)."""
        check_setting("tower", tower, TOWERS)
        keys = self._meta.keys_at_path(tower, relative_item_path(path, self.root))
        return [k for k in keys if self._towers[tower].contains(k)]

    def keys(self, tower: str = "image") -> set[int]:
        """The keys of ``tower`` held by this instance."""
        check_setting("tower", tower, TOWERS)
        return self._towers[tower].keys()

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={len(t)}" for name, t in self._towers.items())
        return (f"Index({str(self._path)!r}, bundle={self.bundle!r}, dim={self.dim}, metric={self.metric!r}, "
                f"dtype={self.dtype!r}, {counts}{', read_only' if self._read_only else ''})")

    # ------------------------------------------------------------- loading

    def _load(self, *, repair: bool, verify: bool) -> None:
        rec = recover(self._path, self._meta, read_only=self._read_only, repair=repair, verify=verify)
        self._state = rec.state
        self._towers = {name: TowerSearch(graph, dim=self.dim, metric=self.metric, dtype=self.dtype)
                        for name, graph in rec.graphs.items()}
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
            keys: Sequence[int] | NDArray[np.integer] | None = None, tower: str = "image",
            journal: bool = True) -> NDArray[np.uint64]:
        """Add vectors with their metadata; durable when this returns (journaled in SQLite).

        ``metadata[i]`` may hold ``path``, ``caption``, ``sha256`` and any JSON-able extras.
        Keys: ``keys`` if given, else derived from ``metadata[i]['sha256']``, else from the
        vector's bytes. A key already present (same content) is left unchanged and not
        returned: the result holds the keys actually added.

        ``journal=False`` (bulk loads: ``index import``, :func:`~crossmodal.index.sharded.split_index`):
        the vectors are not written to the SQLite journal, only to the graph in memory, and the
        items are durable once the next :meth:`save` commits them together with the graph
        files. That writes every vector once instead of twice (journal, then graph file); a
        crash before the save loses those items whole (a rerun adds them again), never half
        of one. Until then they are held (``contains``) but not searchable.
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
        searcher = self._towers[tower]
        seen: set[int] = set()
        rows, jrows, new_keys, new_idx = [], [], [], []
        now = time.time()
        for i, (key, meta) in enumerate(zip(key_list, metas)):
            if key in seen or searcher.contains(key):
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
        if journal:
            self._meta.add_items(rows, jrows)
        else:
            self._pending.update(((tower, key), row) for key, row in zip(new_keys, rows))
        karr = np.asarray(new_keys, dtype=np.uint64)
        searcher.add(karr, mat[new_idx])
        self._dirty.add(tower)
        return karr

    def remove(self, keys: int | Sequence[int] | NDArray[np.integer], *, tower: str = "image") -> int:
        """Remove keys (missing ones are ignored); durable when this returns. Returns how many were removed."""
        self._require_writable()
        check_setting("tower", tower, TOWERS)
        searcher = self._towers[tower]
        present = [int(k) for k in np.atleast_1d(np.asarray(keys, dtype=np.int64)) if searcher.contains(int(k))]
        if not present:
            return 0
        for k in present:
            self._pending.pop((tower, k), None)
        self._meta.delete_items(tower, present)
        searcher.remove(present)
        self._dirty.add(tower)
        return len(present)

    def journal_size(self) -> int:
        """Vectors committed in the journal but not yet compacted into a graph file."""
        return self._meta.journal_size()

    def save(self) -> None:
        """Compact the journal into the graph files atomically, committing the items added with
        ``journal=False`` in the same transaction (see the module docstring)."""
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
                graph = self._towers[tower].graph
                graph.save(str(tmp))
                fsync_file(tmp)
                digest, size = file_digest(tmp)
                files[tower] = {"sha256": digest, "size": size, "count": len(graph)}
                written[tower] = tmp
            crash_points.reached("save:tmp-written")
            generation = self.generation + 1
            self._meta.commit_files(files, generation, list(self._pending.values()))
            self._pending.clear()
            self._state["files"] = files
            self._state["generation"] = generation
            crash_points.reached("save:committed")
            for tower, tmp in written.items():
                os.replace(tmp, self._path / vectors_file(tower))
            fsync_dir(self._path)
            crash_points.reached("save:replaced")
            self._write_header()
            self._dirty.clear()
        finally:
            self._swap_lock.release()

    def _write_header(self) -> None:
        counts = {name: len(t) for name, t in self._towers.items()}
        atomic_write_bytes(self._path / HEADER_FILE, header_bytes(self._state, counts))

    def close(self) -> None:
        """Release the locks and the SQLite connection (unsaved journal entries stay durable)."""
        if self._closed:
            return
        self._closed = True
        if self._pending:
            # Documented (add(journal=False)), but silent loss is the one thing a caller cannot see.
            _log.warning("closing index %s without save(): %d item(s) added with journal=False are dropped; "
                         "call save() before close() to keep them", self._path, len(self._pending))
            self._pending.clear()
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
        check_setting("tower", tower, TOWERS)
        if not self._towers[tower].contains(key):
            return None
        return self._records(tower, [int(key)]).get(int(key))

    def items(self, *, tower: str | None = None) -> Iterator[ItemRecord]:
        """All item records (ordered by tower, key) whose vectors this instance holds.

        A reader sees the items of the moment it opened, even while a writer adds more.
        """
        for row in self._meta.item_rows(tower):
            if row[0] in self._towers and self._towers[row[0]].contains(row[1]):
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

    def search(self, vectors: ArrayLike, k: int = 10, *, tower: str = "image", exact: bool | None = None,
               where: Filter | Mapping[str, Any] | None = None) -> list[SearchResult] | list[list[SearchResult]]:
        """Top-``k`` items of ``tower`` for one query vector (-> list) or a batch (-> list of lists).

        ``k`` larger than the index returns every item; ``k <= 0`` is an error.
        ``exact``: True scans every vector (brute force), False walks the HNSW graph, None
        (default) scans while the tower holds at most :attr:`exact_threshold` vectors and
        walks the graph above that. Scores are the same either way (cosine or inner product).
        ``where``: a :class:`~crossmodal.index.filters.Filter` (or its mapping); only items it
        keeps are returned: chosen before top-k by an exact scan, post-filtered with a widened
        k on the graph (fewer than ``k`` hits only when fewer items match).
        """
        if self._closed:
            raise IndexStoreError(f"index {self._path} is closed.")
        k = positive_int("k", k)
        exact = optional_bool("exact", exact)
        check_setting("tower", tower, TOWERS)
        mat, single = as_matrix(vectors, self.dim, "query vectors")
        allowed = self._allowed_keys(tower, where)
        searcher = self._towers[tower]
        n = len(searcher)
        if n == 0 or len(mat) == 0 or (allowed is not None and len(allowed) == 0):
            empty: list[list[SearchResult]] = [[] for _ in range(len(mat))]
            return empty[0] if single else empty
        keys, scores, counts = searcher.top_k(mat, min(k, n), exact=exact, threshold=self.exact_threshold,
                                              allowed=allowed)
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

    def _allowed_keys(self, tower: str, where: Any) -> NDArray[np.uint64] | None:
        """Sorted keys of ``tower`` that ``where`` keeps (None: no filter)."""
        flt = as_filter(where)
        if flt is None:
            return None
        sql, params = filter_sql(flt, tower, self.root)
        return self._meta.keys_where(tower, sql, params)

    def keyword_search(self, query: str, k: int = 10, *, tower: str = "image",
                       where: Filter | Mapping[str, Any] | None = None) -> list[SearchResult]:
        """Items of ``tower`` whose caption or path words match ``query``, best first (at most ``k``).

        SQLite FTS5 (see :mod:`crossmodal.index.keyword`): the query's words are searched as
        plain words (FTS syntax characters are not operators), ORed, and ranked by BM25;
        ``score`` is the BM25 relevance, higher is better (not comparable with vector scores).
        Images also match through their caption items (text tower, same path). Words are
        matched whole (``invoice`` finds ``invoice_2024.jpg``; ``invoi`` does not), ignoring
        case and diacritics. ``where`` filters as in :meth:`search`. An empty query (no letter
        or digit) is an InputError.
        """
        if self._closed:
            raise IndexStoreError(f"index {self._path} is closed.")
        match = match_expression(query)
        k = positive_int("k", k)
        check_setting("tower", tower, TOWERS)
        flt = as_filter(where)
        sql, params = filter_sql(flt, tower, self.root) if flt is not None else ("1", [])
        searcher = self._towers[tower]
        hits = self._meta.keyword_hits(tower, match, sql, params, k, searcher.contains)
        recs = self._records(tower, [key for key, _ in hits])
        return [SearchResult(key=key, score=score, path=recs[key].path, caption=recs[key].caption, tower=tower)
                for key, score in hits if key in recs]

    def get_vectors(self, keys: int | Sequence[int] | NDArray[np.integer], *, tower: str = "image",
                    where: Filter | Mapping[str, Any] | None = None) -> tuple[NDArray[np.float32], list[int]]:
        """The stored vectors of ``keys`` in ``tower``: ``(vectors, missing)``.

        ``vectors`` is float32 of shape ``(len(keys), dim)``, row ``i`` the vector of ``keys[i]``
        as the index stores it (as added for f32; f16 / i8 decoded, so quantised), not
        normalised; ``missing`` lists, in order, the keys this instance does not hold, whose
        rows are NaN (so they cannot be used by accident). A reader sees the vectors of the
        moment it opened. ``where`` (a :class:`~crossmodal.index.filters.Filter` or its mapping):
        keys the filter does not keep count as missing too. Caption fusion scores its
        candidates with it; copying items between indexes reads it too.
        """
        if self._closed:
            raise IndexStoreError(f"index {self._path} is closed.")
        check_setting("tower", tower, TOWERS)
        arr = np.atleast_1d(np.asarray(keys))
        if arr.size and (arr.dtype.kind not in "iu" or (arr.dtype.kind == "i" and int(arr.min()) < 0)):
            raise InputError(f"keys must be non-negative integers (index keys), got {arr.dtype} values.")
        karr = arr.reshape(-1).astype(np.uint64)
        vecs, found = self._towers[tower].vectors(karr)
        allowed = self._allowed_keys(tower, where)
        if allowed is not None and found.any():
            found &= np.isin(karr, allowed)
            vecs[~found] = np.nan
        return vecs, [int(k) for k in karr[~found]]

    def captions_of(self, image_keys: Sequence[int] | NDArray[np.integer]) -> dict[int, list[tuple[int, str]]]:
        """For each image key, the caption items ``(text key, caption)`` of the text tower stored
        under that image's path (ingestion and the service add one per caption); ``[]`` for
        an image with none. Only captions whose vector this instance holds are listed."""
        keys = [int(k) for k in np.atleast_1d(np.asarray(image_keys, dtype=np.int64))]
        out: dict[int, list[tuple[int, str]]] = {k: [] for k in keys}
        text = self._towers["text"]
        for image_key, text_key, caption in self._meta.caption_rows(sorted(set(keys))):
            if text.contains(text_key):
                out[int(image_key)].append((int(text_key), caption))
        return out

    def warm_up(self) -> None:
        """Build now what the first searches would otherwise build: the float32 scan table
        of each tower that the default search scans (f32 indexes; ~1 s per 100k x 512).

        A service calls this once after :meth:`open`; without it the second exact search
        of a tower pays the build (the first scans inside usearch).
        """
        for searcher in self._towers.values():
            searcher.warm_up(self.exact_threshold)

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


__all__ = ["Index", "SearchResult", "ItemRecord"]
