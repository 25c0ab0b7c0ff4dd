"""Keyword search: SQLite FTS5 over each item's caption and path, inside ``meta.sqlite``.

One FTS5 table per tower (``items_fts_image``, ``items_fts_text``) with two columns, the
item's stored path and its caption; the FTS rowid is the item's key. The ``unicode61``
tokenizer (diacritics folded, so ``cafe`` finds ``café``) splits a path into its words:
``2024/invoice_2024.jpg`` is indexed as ``2024 invoice 2024 jpg``, so the file name and the
folder names are searchable.

Kept in step by triggers on ``items``: every insert and delete of an item row changes
the FTS table inside the same SQLite transaction, so a kill at any instant never leaves
the two disagreeing, and code that predates this module (which knows nothing of FTS)
keeps them in step too when it writes the index. The triggers use only built-in SQL for
that reason. The index format version is unchanged: the tables are an addition that old
code ignores. An index created before them gets them on its first writable open, filled
from ``items`` in one transaction (:func:`ensure_fts`, no re-embedding); a read-only open
of such an index builds a private in-memory copy on its first keyword search
(:func:`build_temp_fts`).

Queries are user text, never FTS5 syntax: :func:`match_expression` splits the text at
white space and quotes every word, so ``"``, ``*``, ``:``, ``-``, parentheses and
AND/OR/NOT/NEAR are searched as words (punctuation inside a word splits it, like the
tokenizer does: ``invoice_2024.jpg`` is the phrase ``invoice 2024 jpg``). The words are
ORed and ranked by BM25, so an item matching some of the words still ranks, below items
matching more or rarer ones: a photo search should not come back empty because one word
of the query is missing from a file name.
"""

from __future__ import annotations

import heapq
import re
import sqlite3
from typing import Any, Iterator, Sequence

from ..errors import IndexStoreError, InputError, TextInputError
from .format import TOWERS

TOKENIZE = "unicode61 remove_diacritics 2"
FTS_PREFIX = "items_fts"
# A word must hold a letter or a digit to be searchable (the tokenizer drops the rest).
_SEARCHABLE = re.compile(r"[^\W_]")


def fts_table(tower: str) -> str:
    return f"{FTS_PREFIX}_{tower}"


def _trigger_sql(tower: str) -> list[str]:
    t = fts_table(tower)
    put = f"INSERT INTO {t}(rowid, path, caption) SELECT new.key, new.path, new.caption WHERE new.tower = '{tower}';"
    # Delete before insert: INSERT OR REPLACE on items removes the old row without firing the
    # delete trigger (unless recursive_triggers is on), so the insert trigger clears the key itself.
    return [
        f"CREATE TRIGGER {t}_insert AFTER INSERT ON items WHEN new.tower = '{tower}' BEGIN "
        f"DELETE FROM {t} WHERE rowid = new.key; {put} END",
        f"CREATE TRIGGER {t}_delete AFTER DELETE ON items WHEN old.tower = '{tower}' BEGIN "
        f"DELETE FROM {t} WHERE rowid = old.key; END",
        f"CREATE TRIGGER {t}_update AFTER UPDATE ON items BEGIN "
        f"DELETE FROM {t} WHERE old.tower = '{tower}' AND rowid = old.key; "
        f"DELETE FROM {t} WHERE new.tower = '{tower}' AND rowid = new.key; {put} END",
    ]


def _table_sql(tower: str, schema: str = "main") -> str:
    return f"CREATE VIRTUAL TABLE {schema}.{fts_table(tower)} USING fts5(path, caption, tokenize = '{TOKENIZE}')"


def _fill_sql(tower: str, schema: str = "main") -> str:
    return (f"INSERT INTO {schema}.{fts_table(tower)}(rowid, path, caption) "
            f"SELECT key, path, caption FROM main.items WHERE tower = '{tower}'")


def fts_statements() -> list[str]:
    """The SQL creating the FTS tables and their triggers, filled from ``items``."""
    out = []
    for tower in TOWERS:
        out += [_table_sql(tower), _fill_sql(tower), *_trigger_sql(tower)]
    return out


def _fts_objects() -> set[str]:
    return {name for tower in TOWERS
            for name in (fts_table(tower), *(f"{fts_table(tower)}_{op}" for op in ("insert", "delete", "update")))}


def has_fts(conn: sqlite3.Connection, schema: str = "main") -> bool:
    """Whether ``schema`` holds every FTS table and trigger (the triggers are what keep it exact)."""
    names = {n for (n,) in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE name LIKE 'items^_fts^_%' "
                                        "ESCAPE '^'")}
    return _fts_objects() <= names


def ensure_fts(conn: sqlite3.Connection) -> bool:
    """Give a writable ``meta.sqlite`` its FTS tables if it lacks them (or part of them);
    True when it has them afterwards. One transaction: a kill leaves all or nothing.

    False (nothing changed) when this Python's SQLite lacks FTS5: the index still opens and
    searches by vector; :meth:`~crossmodal.index.Index.keyword_search` says why it cannot.
    """
    if has_fts(conn):
        return True
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Part of the objects (dropped by hand?) cannot be trusted to be in step: rebuild all.
            for name, kind in conn.execute("SELECT name, type FROM sqlite_master WHERE name IN "
                                           f"({','.join('?' * len(_fts_objects()))}) AND type IN ('table', 'trigger')",
                                           sorted(_fts_objects())).fetchall():
                conn.execute(f"DROP {'TRIGGER' if kind == 'trigger' else 'TABLE'} IF EXISTS {name}")
            for sql in fts_statements():
                conn.execute(sql)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as exc:
        if "fts5" in str(exc):
            return False
        raise
    return True


def build_temp_fts(conn: sqlite3.Connection) -> None:
    """In-memory FTS tables (``temp`` schema) filled from ``items``, for a read-only open of an
    index written before the FTS tables existed. Private to this connection; costs one pass
    over the items (about 1.5 s per 100k items on 2 cores here)."""
    for tower in TOWERS:
        conn.execute(f"DROP TABLE IF EXISTS temp.{fts_table(tower)}")
        conn.execute(_table_sql(tower, "temp"))
        conn.execute(_fill_sql(tower, "temp"))


def fts_unavailable(path: Any) -> IndexStoreError:
    return IndexStoreError(f"keyword search of {path} needs SQLite's FTS5 extension, which this Python's sqlite3 "
                           f"(SQLite {sqlite3.sqlite_version}) lacks; use a Python built with FTS5 (the official "
                           "builds are).")


def match_expression(query: Any) -> str:
    """The FTS5 MATCH expression for user text: each white-space separated word quoted, ORed.

    InputError when the text holds no searchable word (empty, or only punctuation).
    """
    if not isinstance(query, str):
        raise TextInputError(f"a keyword query must be a str, got {type(query).__name__}.")
    words = [w for w in query.split() if _SEARCHABLE.search(w)]
    if not words:
        raise InputError(f"keyword query {query!r} holds no word to search for; give at least one word "
                         "(letters or digits).")
    # Inside a quoted FTS5 string only the quote itself is special; it is escaped by doubling.
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in dict.fromkeys(words))


def _stream(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Iterator[tuple[int, float]]:
    cur = conn.execute(sql, params)
    try:
        for key, score in cur:
            yield int(key), float(score)
    finally:
        cur.close()


def keyword_hits(conn: sqlite3.Connection, schema: str, tower: str, match: str, where_sql: str,
                 where_params: Sequence[Any]) -> Iterator[tuple[int, float]]:
    """``(key, score)`` of ``tower`` items matching ``match`` and ``where_sql`` (on ``items AS i``),
    best first, each key once; score = BM25 relevance, higher is better.

    For the image tower, an image also matches through its caption items (text tower,
    same path) and scores the best of its own row and theirs.
    """
    own = fts_table(tower)
    sql = (f"SELECT i.key, -bm25({own}) AS s FROM {schema}.{own} "
           f"JOIN main.items i ON i.tower = '{tower}' AND i.key = {own}.rowid "
           f"WHERE {own} MATCH ? AND {where_sql} ORDER BY s DESC, i.key")
    streams = [_stream(conn, sql, [match, *where_params])]
    if tower == "image":
        cap = fts_table("text")
        via = (f"SELECT i.key, -bm25({cap}) AS s FROM {schema}.{cap} "
               f"JOIN main.items t ON t.tower = 'text' AND t.key = {cap}.rowid "
               f"JOIN main.items i ON i.tower = 'image' AND i.path = t.path "
               f"WHERE {cap} MATCH ? AND {where_sql} ORDER BY s DESC, i.key")
        streams.append(_stream(conn, via, [match, *where_params]))
    seen: set[int] = set()
    try:
        for key, score in heapq.merge(*streams, key=lambda hit: -hit[1]):
            if key not in seen:
                seen.add(key)
                yield key, score
    finally:
        for stream in streams:
            stream.close()


__all__ = ["TOKENIZE", "FTS_PREFIX", "fts_table", "fts_statements", "has_fts", "ensure_fts", "build_temp_fts",
           "fts_unavailable", "match_expression", "keyword_hits"]
