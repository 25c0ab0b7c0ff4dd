"""The index's metadata store: ``meta.sqlite`` (items, the add journal, the committed state,
and the FTS5 keyword tables of :mod:`crossmodal.index.keyword`).

Every change is one SQLite transaction (WAL, ``synchronous=FULL``), so the store is
always at some committed state; see :mod:`crossmodal.index.store` for how the graph files
are kept consistent with it. SQLite failures surface as IndexStoreError naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import IndexStoreError
from . import crash_points
from .format import FORMAT_VERSION, HEADER_FIELDS, META_FILE, TOWERS, escapes
from .keyword import build_temp_fts, ensure_fts, fts_unavailable, has_fts, keyword_hits

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    tower TEXT NOT NULL, key INTEGER NOT NULL, path TEXT, caption TEXT, sha256 TEXT,
    extra TEXT, added_at REAL NOT NULL, PRIMARY KEY (tower, key));
CREATE INDEX IF NOT EXISTS items_path ON items (path);
CREATE TABLE IF NOT EXISTS journal (
    tower TEXT NOT NULL, key INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (tower, key));
"""
ITEM_COLUMNS = "tower, key, path, caption, sha256, extra"
# SQLite caps the number of parameters of one statement.
_CHUNK = 500

ItemRow = tuple[str, int, "str | None", "str | None", "str | None", "str | None"]


def create_meta(db: Path, state: Mapping[str, Any]) -> None:
    """Write a new ``meta.sqlite`` holding ``state`` and empty item and journal tables."""
    conn = sqlite3.connect(db)
    try:
        conn.executescript(SCHEMA)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executemany("INSERT INTO state(name, value) VALUES (?, ?)",
                         [(k, json.dumps(v)) for k, v in state.items()])
        conn.commit()
    finally:
        conn.close()


def on_read_only_file_system(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only (nothing there can change it)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


def _reader_uri(db: Path) -> str:
    """The URI a reader opens ``meta.sqlite`` with.

    In WAL mode even a read-only connection needs the ``-shm`` file, which it creates when
    it is missing; a writer that closes removes it. On a read-only file system it cannot
    be created, so there the database is opened ``immutable``: no ``-shm``, no locks, and
    the ``-wal`` file is ignored. That is safe because nothing can write there, provided
    the last writer checkpointed the WAL into the database: :meth:`MetaStore.close` does
    (a writer leaves no ``-wal``, or an empty one). A non-empty ``-wal`` (the writer was
    killed, or writes the same files through another mount) may hold commits an immutable
    reader would miss, so it is refused rather than read as an older state.
    """
    from urllib.parse import quote

    uri = f"file:{quote(str(db.resolve()))}?mode=ro"
    if not on_read_only_file_system(db.parent):
        return uri
    wal = db.with_name(db.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise IndexStoreError(
            f"{wal} is not empty: the index's last writer did not close it (killed, or still writing through "
            f"another mount), and on this read-only file system its last commits cannot be read. Open the index "
            "once for writing where its storage is writable, e.g. `python -c \"from crossmodal.index import "
            f"Index; Index.open('{db.parent}').close()\"` (that checkpoints the WAL), then mount it read-only again.")
    return uri + "&immutable=1"


def connect(db: Path, read_only: bool) -> sqlite3.Connection:
    """Open ``meta.sqlite`` (autocommit: transactions are explicit); IndexStoreError if it is not one.

    A reader opens it read-only, ``immutable`` on a read-only file system (see :func:`_reader_uri`).
    """
    try:
        if read_only:
            conn = sqlite3.connect(_reader_uri(db), uri=True, isolation_level=None, check_same_thread=False,
                                   timeout=30)
        else:
            conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed add survives power loss too, not only a process kill.
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("SELECT COUNT(*) FROM state").fetchone()
    except sqlite3.Error as exc:
        if read_only and not os.access(db.parent, os.W_OK) and not on_read_only_file_system(db.parent):
            # SQLite only says "unable to open database file".
            raise IndexStoreError(
                f"{db} cannot be opened ({exc}): {db.parent} is not writable by this user, and a reader of an "
                f"index in WAL mode needs to create {db.name}-shm there (a writer may be changing the index). "
                "Give this user write access to the folder, or mount the storage read-only (readers then open "
                "the index without that file).") from exc
        raise IndexStoreError(f"{db} is not a readable crossmodal metadata store ({exc}); it is corrupt. "
                              "Rebuild the index with `crossmodal index build`.") from exc
    return conn


def read_state(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """The ``state`` table of the index at ``path``, checked for completeness and format version."""
    try:
        state = {name: json.loads(value) for name, value in conn.execute("SELECT name, value FROM state")}
    except (sqlite3.Error, ValueError) as exc:
        raise IndexStoreError(f"{path / META_FILE}: unreadable state table ({exc}).") from exc
    missing = [k for k in HEADER_FIELDS if k not in state]
    if missing:
        raise IndexStoreError(f"{path / META_FILE}: state lacks {missing}; not an index written by this crossmodal.")
    if state["format_version"] != FORMAT_VERSION:
        raise IndexStoreError(f"{path}: index format {state['format_version']} is not supported by this "
                              f"crossmodal (expects {FORMAT_VERSION}); rebuild the index.")
    return state


class MetaStore:
    """The SQLite connection of one open index, shared by threads under one lock."""

    def __init__(self, conn: sqlite3.Connection, index_path: Path, *, read_only: bool = False) -> None:
        self.conn = conn
        self.index_path = index_path
        self.read_only = read_only
        self._lock = threading.RLock()
        self._fts_schema: str | None = None  # where the FTS tables are: "main", or "temp" (built by a reader)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Serialise access and turn SQLite failures (a damaged page, a lock held past the
        timeout) into IndexStoreError naming the file, like every other store error."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise IndexStoreError(f"{self.index_path / META_FILE}: {exc}. If it persists the metadata store "
                                      "is damaged; rebuild the index with `crossmodal index build`.") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` .. ``COMMIT``), rolled back on any exception."""
        with self.guard():
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise

    def snapshot(self) -> tuple[dict[str, Any], dict[str, set[int]], dict[str, list[tuple[int, bytes]]],
                                list[tuple[str, int, str]]]:
        """One consistent read of state, item keys, journal and item paths outside the root."""
        with self.guard():
            cur = self.conn.cursor()
            cur.execute("BEGIN")
            try:
                state = read_state(self.conn, self.index_path)
                item_keys: dict[str, set[int]] = {t: set() for t in TOWERS}
                for tower, key in cur.execute("SELECT tower, key FROM items"):
                    if tower in item_keys:
                        item_keys[tower].add(int(key))
                journal: dict[str, list[tuple[int, bytes]]] = {t: [] for t in TOWERS}
                for tower, key, blob in cur.execute("SELECT tower, key, vector FROM journal"):
                    if tower in journal:
                        journal[tower].append((int(key), blob))
                bad_paths: list[tuple[str, int, str]] = []
                if state.get("root") is not None:
                    for tower, key, p in cur.execute("SELECT tower, key, path FROM items WHERE path IS NOT NULL"):
                        if escapes(p):
                            bad_paths.append((tower, int(key), p))
            finally:
                cur.execute("COMMIT")
        return state, item_keys, journal, bad_paths

    def journal_size(self) -> int:
        """Vectors committed in the journal but not yet compacted into a graph file."""
        with self.guard():
            return int(self.conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0])

    def add_items(self, rows: Sequence[tuple[Any, ...]], journal_rows: Sequence[tuple[str, int, bytes]]) -> None:
        """Commit item rows with their journaled vectors in one transaction."""
        with self.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.executemany("INSERT OR REPLACE INTO journal VALUES (?, ?, ?)", journal_rows)
            crash_points.reached("add:journaled")

    def delete_items(self, tower: str, keys: Sequence[int]) -> None:
        """Delete items and any journaled vectors of theirs, in one transaction."""
        with self.transaction() as conn:
            conn.executemany("DELETE FROM items WHERE tower = ? AND key = ?", [(tower, k) for k in keys])
            conn.executemany("DELETE FROM journal WHERE tower = ? AND key = ?", [(tower, k) for k in keys])

    def commit_files(self, files: Mapping[str, Any], generation: int,
                     items: Sequence[tuple[Any, ...]] = ()) -> None:
        """The commit point of a save: record the new graph files, add the ``items`` whose vectors
        only those files hold (added without the journal), and empty the journal."""
        with self.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", items)
            conn.execute("DELETE FROM journal")
            conn.executemany("INSERT OR REPLACE INTO state(name, value) VALUES (?, ?)",
                             [("files", json.dumps(files)), ("generation", json.dumps(generation))])

    def item_rows(self, tower: str | None = None) -> list[ItemRow]:
        """Item rows (``ITEM_COLUMNS``) of one tower or all, ordered by tower, key."""
        sql = f"SELECT {ITEM_COLUMNS} FROM items"
        args: tuple[Any, ...] = ()
        if tower is not None:
            sql += " WHERE tower = ?"
            args = (tower,)
        with self.guard():
            return self.conn.execute(sql + " ORDER BY tower, key", args).fetchall()

    def rows_for_keys(self, tower: str, keys: Sequence[int]) -> list[ItemRow]:
        """Item rows of ``tower`` whose key is in ``keys`` (missing keys are skipped)."""
        out: list[ItemRow] = []
        with self.guard():
            for start in range(0, len(keys), _CHUNK):
                chunk = list(keys[start:start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                out.extend(self.conn.execute(
                    f"SELECT {ITEM_COLUMNS} FROM items WHERE tower = ? AND key IN ({marks})", (tower, *chunk)))
        return out

    def keys_at_path(self, tower: str, rel: str | None) -> list[int]:
        """Keys of ``tower`` items stored under the relative path ``rel``."""
        with self.guard():
            rows = self.conn.execute("SELECT key FROM items WHERE tower = ? AND path = ?", (tower, rel)).fetchall()
        return [int(r[0]) for r in rows]

    def keys_where(self, tower: str, where_sql: str, params: Sequence[Any]) -> NDArray[np.uint64]:
        """Keys of ``tower`` items (``items AS i``) satisfying ``where_sql``, sorted."""
        with self.guard():
            cur = self.conn.execute(f"SELECT i.key FROM items i WHERE i.tower = ? AND {where_sql} ORDER BY i.key",
                                    (tower, *params))
            return np.fromiter((r[0] for r in cur), dtype=np.uint64)

    def caption_rows(self, image_keys: Sequence[int]) -> list[tuple[int, int, str]]:
        """``(image key, caption key, caption)`` for the text-tower items stored under each image's path."""
        out: list[tuple[int, int, str]] = []
        with self.guard():
            for start in range(0, len(image_keys), _CHUNK):
                chunk = list(image_keys[start:start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                out.extend(self.conn.execute(
                    # Without the hint SQLite reaches the caption side through the primary key (tower, key) and
                    # scans every text row per image: 3.7 s for 200 keys at 20k captions, 6 ms with it.
                    "SELECT i.key, t.key, t.caption FROM items i JOIN items t INDEXED BY items_path "
                    "ON t.tower = 'text' AND t.path = i.path "
                    f"WHERE i.tower = 'image' AND i.key IN ({marks}) AND t.caption IS NOT NULL ORDER BY i.key, t.key",
                    chunk))
        return out

    def ensure_fts(self) -> None:
        """Writers: add the FTS tables to an index made before them (see :mod:`crossmodal.index.keyword`)."""
        with self.guard():
            self._fts_schema = "main" if ensure_fts(self.conn) else None

    def keyword_hits(self, tower: str, match: str, where_sql: str, params: Sequence[Any], k: int,
                     keep: Callable[[int], bool]) -> list[tuple[int, float]]:
        """The best ``k`` ``(key, BM25 score)`` of ``tower`` for an FTS5 ``match`` among items
        passing ``where_sql`` and ``keep`` (see :func:`crossmodal.index.keyword.keyword_hits`)."""
        out: list[tuple[int, float]] = []
        with self.guard():
            hits = keyword_hits(self.conn, self._fts(), tower, match, where_sql, params)
            try:
                for key, score in hits:
                    if keep(key):
                        out.append((key, score))
                        if len(out) >= k:
                            break
            finally:
                hits.close()  # ends the statements now: an open read would hold back WAL checkpoints
        return out

    def _fts(self) -> str:
        if self._fts_schema is None:
            if has_fts(self.conn):
                self._fts_schema = "main"
            elif self.read_only:
                try:
                    build_temp_fts(self.conn)
                except sqlite3.OperationalError as exc:
                    if "fts5" in str(exc):
                        raise fts_unavailable(self.index_path) from exc
                    raise
                self._fts_schema = "temp"
            else:
                raise fts_unavailable(self.index_path)
        return self._fts_schema

    def close(self) -> None:
        """Close the connection (committed changes are already durable).

        A writer first checkpoints the WAL into the database and truncates it, so the
        closed index is complete in ``meta.sqlite`` alone: a copy of it, or a reader on a
        read-only mount (which ignores the WAL), sees every commit.
        """
        try:
            if not self.read_only:
                with self.guard():
                    # TRUNCATE waits (busy timeout) for readers in a read transaction; ours hold one only
                    # while a query runs, so 2 s, not the 30 s writes wait. A checkpoint that cannot
                    # finish leaves the WAL for the next writer (a read-only mount then refuses it).
                    self.conn.execute("PRAGMA busy_timeout = 2000")
                    self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except IndexStoreError:
            pass
        finally:
            self.conn.close()
