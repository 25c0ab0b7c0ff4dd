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

Concurrency: one writer per index (an exclusive ``flock`` held while open), any number of
readers (``read_only=True``). Readers load under a shared lock which ``save`` takes
exclusively while it swaps files, so a reader never sees a half-swapped pair. A reader
sees the state of the moment it opened; results whose item was removed since are dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import IncompatibleTowersError, IndexStoreError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from usearch.index import Index as _UIndex

    from .manifest import BundleInfo

FORMAT_VERSION = 1
HEADER_FILE = "header.json"
META_FILE = "meta.sqlite"
LOCK_FILE = ".lock"
WRITER_LOCK_FILE = ".writer.lock"
METRICS = ("cos", "ip")
DTYPES = ("f32", "f16", "i8")
TOWERS = ("image", "text")
# HNSW defaults chosen so that recall@10 against exact search is >= 0.99 on 100k random
# unit vectors of dim 64 (see bench_recall); random high-dim vectors are the hard case.
DEFAULT_CONNECTIVITY = 32
DEFAULT_EXPANSION_ADD = 256
DEFAULT_EXPANSION_SEARCH = 512
KEY_MASK = (1 << 63) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    tower TEXT NOT NULL, key INTEGER NOT NULL, path TEXT, caption TEXT, sha256 TEXT,
    extra TEXT, added_at REAL NOT NULL, PRIMARY KEY (tower, key));
CREATE INDEX IF NOT EXISTS items_path ON items (path);
CREATE TABLE IF NOT EXISTS journal (
    tower TEXT NOT NULL, key INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (tower, key));
"""


def vectors_file(tower: str) -> str:
    """File name of the graph holding ``tower``'s vectors inside an index directory."""
    return f"vectors.{tower}.usearch"


def key_from_sha256(hexdigest: str) -> int:
    """A 63-bit key from a sha256 hex digest (63 bits: fits SQLite's signed INTEGER)."""
    return int(hexdigest[:16], 16) & KEY_MASK


def content_key(data: bytes) -> tuple[int, str]:
    """``(key, sha256 hex)`` of a file's bytes: identical content always gets the same key."""
    digest = hashlib.sha256(data).hexdigest()
    return key_from_sha256(digest), digest


def text_key(text: str) -> tuple[int, str]:
    """``(key, sha256 hex)`` of a caption's UTF-8 bytes."""
    return content_key(text.encode("utf-8"))


@dataclass(frozen=True)
class SearchResult:
    """One hit. ``score`` is the cosine similarity (``metric='cos'``) or inner product (``'ip'``)."""

    key: int
    score: float
    path: str | None
    caption: str | None
    tower: str = "image"


@dataclass(frozen=True)
class ItemRecord:
    """Metadata of one indexed vector."""

    key: int
    tower: str
    path: str | None
    caption: str | None
    sha256: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)


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


# --------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory entry is; Windows cannot open directories.
    if os.name == "nt":  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class _FileLock:
    """An advisory ``flock`` on a file; a no-op where fcntl is missing (Windows)."""

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        self.fd: int | None = None
        try:
            import fcntl  # noqa: F401

            flags = os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
            self.fd = os.open(path, flags, 0o644)
        except (ImportError, OSError):
            # A read-only copy on a read-only medium has no writer to race with.
            self.fd = None

    def acquire(self, *, exclusive: bool, blocking: bool = True) -> bool:
        if self.fd is None:
            return True
        import fcntl

        op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if not blocking:
            op |= fcntl.LOCK_NB
        try:
            fcntl.flock(self.fd, op)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------- usearch


def _usearch_index_class() -> type:
    # Load order matters: with usearch 2.26 and onnxruntime 1.32 wheels, importing onnxruntime
    # *after* usearch's compiled module segfaults the process (usearch links libstdc++
    # statically). Importing onnxruntime first, when it is installed, is safe in either use.
    if "usearch.compiled" not in sys.modules and "onnxruntime" not in sys.modules:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass
    from usearch.index import Index as UIndex

    return UIndex


def _new_graph(dim: int, metric: str, dtype: str, connectivity: int, expansion_add: int,
               expansion_search: int) -> "_UIndex":
    UIndex = _usearch_index_class()

    return UIndex(ndim=dim, metric=metric, dtype=dtype, connectivity=connectivity,
                  expansion_add=expansion_add, expansion_search=expansion_search)


def _check_setting(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InputError(f"{name}={value!r} is not supported; use one of {list(allowed)}.")
    return str(value)


def _as_matrix(vectors: ArrayLike, dim: int, what: str) -> tuple[NDArray[np.float32], bool]:
    """Float32 C-contiguous ``(n, dim)``; the flag says whether a single vector was given."""
    arr = np.asarray(vectors)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{what} must be a numeric array of shape (n, {dim}) or ({dim},), got dtype {arr.dtype}.")
    single = arr.ndim == 1
    if single:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InputError(f"{what} have shape {tuple(np.asarray(vectors).shape)} but this index holds "
                         f"{dim}-dimensional vectors; encode with the bundle that built the index.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"{what} contain NaN or infinity; check the encoder output.")
    return arr, single


# --------------------------------------------------------------------------- Index


class Index:
    """A vector index bound to one embedding space. Build it with :meth:`create`, reopen it with :meth:`open`.

    >>> idx = Index.create("photos.idx", bundle="clip-vit-b-32", space="openai-clip-vit-b-32", dim=512)  # doctest: +SKIP
    >>> idx.add(vectors, [{"path": "a.jpg"}]); idx.save()                                          # doctest: +SKIP
    >>> idx.search(query_vector, k=5)                                                             # doctest: +SKIP
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, state: dict[str, Any], *, read_only: bool,
                 writer_lock: _FileLock | None, swap_lock: _FileLock) -> None:
        # Private: use Index.create / Index.open, which validate everything first.
        self._path = path
        self._conn = conn
        self._state = state
        self._read_only = read_only
        self._writer_lock = writer_lock
        self._swap_lock = swap_lock
        self._graphs: dict[str, _UIndex] = {}
        self._dirty: set[str] = set()
        self._db_lock = threading.RLock()
        self._closed = False
        self.repairs: list[str] = []
        self._ef: int | None = None
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
        if isinstance(bundle, str):
            name, bspace, bdim = bundle, space or bundle, dim
        else:
            name, bspace, bdim = bundle.name, bundle.space, bundle.dim
            if dim is not None and dim != bundle.dim:
                raise InputError(f"dim={dim} contradicts bundle {bundle.name!r} (dim {bundle.dim}).")
            if space is not None and space != bundle.space:
                raise InputError(f"space={space!r} contradicts bundle {bundle.name!r} (space {bundle.space!r}).")
        if not isinstance(bdim, int) or bdim <= 0:
            raise InputError(f"dim must be a positive int, got {bdim!r}.")
        _check_setting("metric", metric, METRICS)
        _check_setting("dtype", dtype, DTYPES)
        for label, v in (("connectivity", connectivity), ("expansion_add", expansion_add),
                         ("expansion_search", expansion_search)):
            if not isinstance(v, int) or v <= 0:
                raise InputError(f"{label} must be a positive int, got {v!r}.")
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise IndexStoreError(f"{path} already exists and is not empty; open it with Index.open "
                                  "(`crossmodal index add`) or choose another output path.")
        state: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "bundle": name, "space": bspace, "dim": bdim,
            "metric": metric, "dtype": dtype, "connectivity": connectivity,
            "expansion_add": expansion_add, "expansion_search": expansion_search,
            "root": None if root is None else os.path.abspath(root),
            "generation": 0, "files": {}, "created_at": time.time(), "info": dict(info or {}),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.creating-{os.getpid()}")
        if staging.exists():
            import shutil

            shutil.rmtree(staging)
        staging.mkdir()
        conn = sqlite3.connect(staging / META_FILE)
        try:
            conn.executescript(_SCHEMA)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executemany("INSERT INTO state(name, value) VALUES (?, ?)",
                             [(k, json.dumps(v)) for k, v in state.items()])
            conn.commit()
        finally:
            conn.close()
        _atomic_write_bytes(staging / HEADER_FILE, _header_bytes(state, {t: 0 for t in TOWERS}))
        if path.exists():
            path.rmdir()
        os.rename(staging, path)
        _fsync_dir(path.parent)
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
            writer_lock = _FileLock(path / WRITER_LOCK_FILE, create=True)
            if not writer_lock.acquire(exclusive=True, blocking=False):
                writer_lock.close()
                raise IndexStoreError(f"{path} is open for writing by another process; wait for it to "
                                      "finish or open with read_only=True.")
        swap_lock = _FileLock(path / LOCK_FILE, create=not read_only)
        try:
            conn = _connect(path / META_FILE, read_only)
            state = _read_state(conn, path)
            idx = cls(path, conn, state, read_only=read_only, writer_lock=writer_lock, swap_lock=swap_lock)
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

    @contextlib.contextmanager
    def _db(self) -> Iterator[None]:
        # One connection shared by threads, and SQLite failures (a damaged page, a lock held
        # past the timeout) surface as IndexStoreError naming the file, like every other store error.
        with self._db_lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise IndexStoreError(f"{self._path / META_FILE}: {exc}. If it persists the metadata store is "
                                      "damaged; rebuild the index with `crossmodal index build`.") from exc

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
        _check_setting("tower", tower, TOWERS)
        return len(self._graphs[tower])

    def contains(self, key: int, tower: str = "image") -> bool:
        """Whether ``key`` is indexed for ``tower`` (thread-safe enough for ingest workers: read only)."""
        return bool(self._graphs[tower].contains(int(key)))

    def find_path(self, path: str | os.PathLike[str], *, tower: str = "image") -> list[int]:
        """Keys of ``tower`` items stored under ``path`` (one per content version ever indexed there)."""
        _check_setting("tower", tower, TOWERS)
        rel = self._rel_path(path)
        with self._db():
            rows = self._conn.execute("SELECT key FROM items WHERE tower = ? AND path = ?", (tower, rel)).fetchall()
        return [int(r[0]) for r in rows if self._graphs[tower].contains(int(r[0]))]

    def keys(self, tower: str = "image") -> set[int]:
        """The keys of ``tower`` held by this instance."""
        _check_setting("tower", tower, TOWERS)
        g = self._graphs[tower]
        return set(np.asarray(g.keys, dtype=np.uint64).tolist()) if len(g) else set()

    def __repr__(self) -> str:
        counts = ", ".join(f"{t}={len(g)}" for t, g in self._graphs.items())
        return (f"Index({str(self._path)!r}, bundle={self.bundle!r}, dim={self.dim}, metric={self.metric!r}, "
                f"dtype={self.dtype!r}, {counts}{', read_only' if self._read_only else ''})")

    # ------------------------------------------------------------- loading

    def _load(self, *, repair: bool, verify: bool) -> None:
        with self._db():
            cur = self._conn.cursor()
            cur.execute("BEGIN")  # one snapshot of items + journal + state
            try:
                state = _read_state(self._conn, self._path)
                self._state = state
                item_keys = {t: set() for t in TOWERS}
                for tower, key in cur.execute("SELECT tower, key FROM items"):
                    if tower in item_keys:
                        item_keys[tower].add(int(key))
                journal = {t: [] for t in TOWERS}
                for tower, key, blob in cur.execute("SELECT tower, key, vector FROM journal"):
                    if tower in journal:
                        journal[tower].append((int(key), blob))
                bad_paths = self._rows_outside_root(cur)
            finally:
                cur.execute("COMMIT")
        self._check_header(repair)
        for tower in TOWERS:
            graph = self._load_graph(tower, repair=repair, verify=verify)
            present = set(int(k) for k in np.asarray(graph.keys, dtype=np.uint64)) if len(graph) else set()
            jkeys, jvecs = [], []
            for key, blob in journal[tower]:
                if key not in present:
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if vec.shape != (self.dim,):
                        raise IndexStoreError(f"{self._path / META_FILE}: journal vector {key} has {vec.size} "
                                              f"values, expected {self.dim}; the file is corrupt.")
                    jkeys.append(key)
                    jvecs.append(vec)
            if jkeys:
                graph.add(np.asarray(jkeys, dtype=np.uint64), np.stack(jvecs))
                present.update(jkeys)
                self._dirty.add(tower)
            orphans = present - item_keys[tower]
            if orphans:
                # Left by remove() before the next save (or a crash): not part of the index.
                graph.remove(np.fromiter(orphans, dtype=np.uint64, count=len(orphans)))
                self._dirty.add(tower)
            missing = item_keys[tower] - present
            if missing:
                msg = (f"{len(missing)} {tower} item(s) in {self._path / META_FILE} have no vector "
                       f"(e.g. key {min(missing)}); the graph file was replaced or truncated")
                if not repair:
                    raise IndexStoreError(msg + ". Open with repair=True (`crossmodal index add --repair`) to drop "
                                          "them; the next build re-embeds their files.")
                self._delete_items(tower, sorted(missing))
                self.repairs.append(msg + ": dropped")
            self._graphs[tower] = graph
        if bad_paths:
            msg = (f"{len(bad_paths)} item path(s) in {self._path / META_FILE} point outside the index root "
                   f"{self.root!r} (e.g. {bad_paths[0][2]!r})")
            if not repair:
                raise IndexStoreError(msg + "; the metadata was edited by hand. Open with repair=True to drop them.")
            for tower, key, _ in bad_paths:
                self._graphs[tower].remove(key)
                self._delete_items(tower, [key])
                self._dirty.add(tower)
            self.repairs.append(msg + ": dropped")
        if self._read_only:
            self._dirty.clear()
        else:
            self._refresh_header()

    def _refresh_header(self) -> None:
        # A kill between the commit point and the header rewrite leaves stale counts in the
        # mirror; the writer rolls it forward like the graph file.
        try:
            header = json.loads((self._path / HEADER_FILE).read_bytes())
        except (OSError, ValueError):
            header = {}
        if header.get("generation") != self.generation or header.get("count") != len(self):
            self._write_header()

    def _rows_outside_root(self, cur: sqlite3.Cursor) -> list[tuple[str, int, str]]:
        if self.root is None:
            return []
        bad = []
        for tower, key, p in cur.execute("SELECT tower, key, path FROM items WHERE path IS NOT NULL"):
            if _escapes(p):
                bad.append((tower, int(key), p))
        return bad

    def _check_header(self, repair: bool) -> None:
        hp = self._path / HEADER_FILE
        try:
            header = json.loads(hp.read_bytes())
            ok = isinstance(header, dict) and all(
                header.get(k) == self._state[k] for k in ("format_version", "bundle", "space", "dim", "metric", "dtype"))
        except (OSError, ValueError):
            ok = False
        if ok:
            return
        msg = f"{hp} is missing, unreadable or disagrees with {META_FILE}"
        if not repair:
            raise IndexStoreError(msg + ". Open with repair=True to rewrite it from the metadata store.")
        self._write_header()
        self.repairs.append(msg + ": rewritten")

    def _load_graph(self, tower: str, *, repair: bool, verify: bool) -> "_UIndex":
        s = self._state
        graph = _new_graph(self.dim, self.metric, self.dtype, s["connectivity"], s["expansion_add"],
                           s["expansion_search"])
        committed = (s.get("files") or {}).get(tower)
        final = self._path / vectors_file(tower)
        tmp = final.with_name(final.name + ".tmp")
        if committed is None:
            if tmp.exists() and not self._read_only:
                tmp.unlink()  # a save that died before its commit point
            return graph
        source = None
        if final.exists() and _matches(final, committed, full=verify or tmp.exists()):
            source = final
        elif tmp.exists() and _matches(tmp, committed, full=True):
            source = tmp
        if source is None:
            msg = f"{final} does not match the committed digest in {META_FILE} (missing, truncated or replaced)"
            if not repair:
                raise IndexStoreError(msg + ". Restore it from a backup, or open with repair=True to drop its "
                                      "items (the next build re-embeds them).")
            self.repairs.append(msg + ": started from an empty graph")
            self._dirty.add(tower)
            return graph
        try:
            graph.load(str(source))
        except (RuntimeError, ValueError, OSError) as exc:
            raise IndexStoreError(f"{source} cannot be read by usearch ({exc}); it is corrupt.") from exc
        if graph.ndim != self.dim:
            raise IndexStoreError(f"{source} holds {graph.ndim}-d vectors but the index records dim {self.dim}.")
        graph.expansion_search = int(s["expansion_search"])
        if not self._read_only:
            if source is tmp:
                os.replace(tmp, final)  # crash after the commit point: roll forward
                _fsync_dir(self._path)
            elif tmp.exists():
                tmp.unlink()
        return graph

    # ------------------------------------------------------------- writing

    def _require_writable(self) -> None:
        if self._closed:
            raise IndexStoreError(f"index {self._path} is closed.")
        if self._read_only:
            raise IndexStoreError(f"index {self._path} was opened read_only; reopen with read_only=False to modify it.")

    def _rel_path(self, p: str | os.PathLike[str] | None) -> str | None:
        if p is None:
            return None
        s = os.fspath(p)
        if self.root is None:
            return s
        if os.path.isabs(s):
            rel = os.path.relpath(os.path.abspath(s), self.root)
        else:
            rel = s
        rel = posixpath.normpath(rel.replace(os.sep, "/"))
        if _escapes(rel):
            raise InputError(f"path {s!r} is outside the index root {self.root!r}; add files from inside it "
                             "or build a separate index.")
        return rel

    def add(self, vectors: ArrayLike, metadata: Sequence[Mapping[str, Any]] | None = None, *,
            keys: Sequence[int] | NDArray[np.integer] | None = None, tower: str = "image") -> NDArray[np.uint64]:
        """Add vectors with their metadata; durable when this returns (journaled in SQLite).

        ``metadata[i]`` may hold ``path``, ``caption``, ``sha256`` and any JSON-able extras.
        Keys: ``keys`` if given, else derived from ``metadata[i]['sha256']``, else from the
        vector's bytes. A key already present (same content) is left unchanged and not
        returned: the result holds the keys actually added.
        """
        self._require_writable()
        _check_setting("tower", tower, TOWERS)
        mat, _ = _as_matrix(vectors, self.dim, "vectors")
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
            rows.append((tower, key, self._rel_path(meta.get("path")), meta.get("caption"), meta.get("sha256"),
                         json.dumps(extra) if extra else None, now))
            jrows.append((tower, key, mat[i].tobytes()))
            new_keys.append(key)
            new_idx.append(i)
        if not new_keys:
            return np.zeros(0, dtype=np.uint64)
        with self._db():
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                self._conn.executemany("INSERT OR REPLACE INTO journal VALUES (?, ?, ?)", jrows)
                self._run_hook("add:journaled")
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        karr = np.asarray(new_keys, dtype=np.uint64)
        graph.add(karr, mat[new_idx])
        self._dirty.add(tower)
        return karr

    def remove(self, keys: int | Sequence[int] | NDArray[np.integer], *, tower: str = "image") -> int:
        """Remove keys (missing ones are ignored); durable when this returns. Returns how many were removed."""
        self._require_writable()
        _check_setting("tower", tower, TOWERS)
        graph = self._graphs[tower]
        present = [int(k) for k in np.atleast_1d(np.asarray(keys, dtype=np.int64)) if graph.contains(int(k))]
        if not present:
            return 0
        self._delete_items(tower, present)
        graph.remove(np.asarray(present, dtype=np.uint64))
        self._dirty.add(tower)
        return len(present)

    def _delete_items(self, tower: str, keys: Sequence[int]) -> None:
        with self._db():
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany("DELETE FROM items WHERE tower = ? AND key = ?", [(tower, k) for k in keys])
                self._conn.executemany("DELETE FROM journal WHERE tower = ? AND key = ?", [(tower, k) for k in keys])
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _run_hook(self, step: str) -> None:
        if self._hook is not None:
            self._hook(step)

    def journal_size(self) -> int:
        """Vectors committed in the journal but not yet compacted into a graph file."""
        with self._db():
            return int(self._conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0])

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
                _fsync_file(tmp)
                digest, size = _file_digest(tmp)
                files[tower] = {"sha256": digest, "size": size, "count": len(self._graphs[tower])}
                written[tower] = tmp
            self._run_hook("save:tmp-written")
            generation = self.generation + 1
            with self._db():
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._conn.execute("DELETE FROM journal")
                    self._conn.executemany("INSERT OR REPLACE INTO state(name, value) VALUES (?, ?)",
                                           [("files", json.dumps(files)), ("generation", json.dumps(generation))])
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            self._state["files"] = files
            self._state["generation"] = generation
            self._run_hook("save:committed")
            for tower, tmp in written.items():
                os.replace(tmp, self._path / vectors_file(tower))
            _fsync_dir(self._path)
            self._run_hook("save:replaced")
            self._write_header()
            self._dirty.clear()
        finally:
            self._swap_lock.release()

    def _write_header(self) -> None:
        counts = {t: len(g) for t, g in self._graphs.items()}
        _atomic_write_bytes(self._path / HEADER_FILE, _header_bytes(self._state, counts))

    def close(self) -> None:
        """Release the locks and the SQLite connection (unsaved journal entries stay durable)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.close()
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
        sql = "SELECT tower, key, path, caption, sha256, extra FROM items"
        args: tuple[Any, ...] = ()
        if tower is not None:
            sql += " WHERE tower = ?"
            args = (tower,)
        with self._db():
            rows = self._conn.execute(sql + " ORDER BY tower, key", args).fetchall()
        for row in rows:
            if row[0] in self._graphs and self._graphs[row[0]].contains(int(row[1])):
                yield self._record(row)

    def _record(self, row: Sequence[Any]) -> ItemRecord:
        tower, key, p, caption, sha, extra = row
        if p is not None and self.root is not None:
            p = os.path.join(self.root, *p.split("/"))
        return ItemRecord(key=int(key), tower=tower, path=p, caption=caption, sha256=sha,
                          extra=json.loads(extra) if extra else {})

    def _records(self, tower: str, keys: Sequence[int]) -> dict[int, ItemRecord]:
        out: dict[int, ItemRecord] = {}
        with self._db():
            for start in range(0, len(keys), 500):  # SQLite caps the number of parameters
                chunk = list(keys[start:start + 500])
                marks = ",".join("?" * len(chunk))
                for row in self._conn.execute(
                        f"SELECT tower, key, path, caption, sha256, extra FROM items WHERE tower = ? AND key IN ({marks})",
                        (tower, *chunk)):
                    rec = self._record(row)
                    out[rec.key] = rec
        return out

    def search(self, vectors: ArrayLike, k: int = 10, *, tower: str = "image",
               exact: bool = False) -> list[SearchResult] | list[list[SearchResult]]:
        """Top-``k`` items of ``tower`` for one query vector (-> list) or a batch (-> list of lists).

        ``k`` larger than the index returns every item; ``k <= 0`` is an error.
        ``exact=True`` scans every vector (brute force) instead of walking the HNSW graph.
        """
        if self._closed:
            raise IndexStoreError(f"index {self._path} is closed.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise InputError(f"k must be a positive integer, got {k!r}.")
        _check_setting("tower", tower, TOWERS)
        mat, single = _as_matrix(vectors, self.dim, "query vectors")
        graph = self._graphs[tower]
        n = len(graph)
        if n == 0 or len(mat) == 0:
            empty: list[list[SearchResult]] = [[] for _ in range(len(mat))]
            return empty[0] if single else empty
        kk = min(int(k), n)
        matches = graph.search(mat, kk, exact=exact)
        keys = np.asarray(matches.keys).reshape(len(mat), -1)
        dists = np.asarray(matches.distances).reshape(len(mat), -1)
        # usearch answers a one-row batch with a plain Matches (no counts): every slot is filled.
        counts = (np.asarray(matches.counts).reshape(-1) if hasattr(matches, "counts")
                  else np.full(len(mat), keys.shape[1]))
        wanted = sorted({int(keys[i, j]) for i in range(len(mat)) for j in range(int(counts[i]))})
        recs = self._records(tower, wanted)
        out: list[list[SearchResult]] = []
        for i in range(len(mat)):
            row = []
            for j in range(int(counts[i])):
                rec = recs.get(int(keys[i, j]))
                if rec is None:
                    continue  # removed by the writer after this reader opened
                row.append(SearchResult(key=rec.key, score=float(1.0 - dists[i, j]), path=rec.path,
                                        caption=rec.caption, tower=tower))
            out.append(row)
        return out[0] if single else out

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
                    exact: bool = False) -> list[SearchResult] | list[list[SearchResult]]:
        """Encode ``texts`` with ``encoder`` and search ``tower`` (text -> image by default)."""
        self.check_encoder(encoder)
        vecs = encoder.encode_text(texts)
        return self.search(vecs[0] if isinstance(texts, str) else vecs, k, tower=tower, exact=exact)

    def search_image(self, encoder: Any, images: Any, k: int = 10, *, tower: str = "image",
                     exact: bool = False) -> list[SearchResult] | list[list[SearchResult]]:
        """Encode ``images`` (one source or a list) and search ``tower`` (image -> image by default,
        ``tower='text'`` for image -> caption)."""
        self.check_encoder(encoder)
        single = not isinstance(images, (list, tuple))
        vecs = encoder.encode_image(images)
        return self.search(vecs[0] if single else vecs, k, tower=tower, exact=exact)


# --------------------------------------------------------------------------- helpers


def _escapes(rel: str) -> bool:
    norm = posixpath.normpath(rel.replace("\\", "/"))
    return norm.startswith("/") or norm == ".." or norm.startswith("../") or (len(norm) > 1 and norm[1] == ":")


def _matches(path: Path, committed: Mapping[str, Any], *, full: bool) -> bool:
    try:
        if path.stat().st_size != int(committed["size"]):
            return False
        if not full:
            return True
        return _file_digest(path)[0] == committed["sha256"]
    except OSError:
        return False


def _header_bytes(state: Mapping[str, Any], counts: Mapping[str, int]) -> bytes:
    header = {k: state[k] for k in ("format_version", "bundle", "space", "dim", "metric", "dtype",
                                    "connectivity", "expansion_add", "expansion_search", "generation")}
    header["count"] = int(sum(counts.values()))
    header["counts"] = dict(counts)
    return (json.dumps(header, indent=2) + "\n").encode("utf-8")


def _connect(db: Path, read_only: bool) -> sqlite3.Connection:
    try:
        if read_only:
            from urllib.parse import quote

            conn = sqlite3.connect(f"file:{quote(str(db.resolve()))}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=30)
        else:
            conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed add survives power loss too, not only a process kill.
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("SELECT COUNT(*) FROM state").fetchone()
    except sqlite3.Error as exc:
        raise IndexStoreError(f"{db} is not a readable crossmodal metadata store ({exc}); it is corrupt. "
                              "Rebuild the index with `crossmodal index build`.") from exc
    return conn


def _read_state(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    try:
        state = {name: json.loads(value) for name, value in conn.execute("SELECT name, value FROM state")}
    except (sqlite3.Error, ValueError) as exc:
        raise IndexStoreError(f"{path / META_FILE}: unreadable state table ({exc}).") from exc
    need = ("format_version", "bundle", "space", "dim", "metric", "dtype", "connectivity", "expansion_add",
            "expansion_search", "generation")
    missing = [k for k in need if k not in state]
    if missing:
        raise IndexStoreError(f"{path / META_FILE}: state lacks {missing}; not an index written by this crossmodal.")
    if state["format_version"] != FORMAT_VERSION:
        raise IndexStoreError(f"{path}: index format {state['format_version']} is not supported by this "
                              f"crossmodal (expects {FORMAT_VERSION}); rebuild the index.")
    return state


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
    graph = _new_graph(dim, metric, dtype, connectivity, expansion_add, expansion_search)
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
