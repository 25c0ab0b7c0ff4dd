"""Bulk adds without the journal (``Index.add(..., journal=False)``, used by ``index import`` and
split_index): every vector is written once (into the graph file at the save), and a writer
killed at any step of that save leaves the index at the state before it or after it."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from crossmodal.index import META_FILE, Index
from crossmodal.index.format import vectors_file
from test_index import WORKER, make_index, run_until, unit


def journal_rows(path: Path) -> int:
    with sqlite3.connect(path / META_FILE) as conn:
        n = conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
    conn.close()
    return int(n)


def test_bulk_add_writes_no_journal_and_commits_with_the_save(tmp_path: Path) -> None:
    idx, vecs, keys = make_index(tmp_path, n=20)
    idx.save()
    new = unit(30, seed=5)
    added = idx.add(new, [{"path": f"bulk{i}.jpg", "caption": f"bulk {i}"} for i in range(30)], journal=False)
    assert len(added) == 30 and idx.contains(int(added[0]))
    assert journal_rows(tmp_path / "idx") == 0  # the vectors went nowhere but the graph in memory
    with Index.open(tmp_path / "idx", read_only=True) as reader:
        assert len(reader) == 20  # not committed yet
    # a key held but not yet committed is skipped like any present key; removing it drops its row
    assert len(idx.add(new[:2], [{"path": "again.jpg"}] * 2, journal=False)) == 0
    assert idx.remove(int(added[1])) == 1
    idx.save()
    assert journal_rows(tmp_path / "idx") == 0
    idx.close()
    with Index.open(tmp_path / "idx") as idx:
        assert len(idx) == 49 and idx.repairs == []
        assert idx.get(int(added[0])).path == str(tmp_path / "bulk0.jpg")
        assert idx.get(int(added[1])) is None
        hit = idx.search(new[5], 1)[0]
        assert (hit.key, hit.caption) == (int(added[5]), "bulk 5")
        assert [h.key for h in idx.keyword_search("bulk", 50)] and idx.search(vecs[3], 1)[0].key == int(keys[3])


def test_bulk_add_closed_without_save_is_dropped_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    idx, _, _ = make_index(tmp_path, n=10)
    idx.save()
    idx.add(unit(5, seed=6), [{"path": f"lost{i}.jpg"} for i in range(5)], journal=False)
    with caplog.at_level("WARNING", logger="crossmodal.index"):
        idx.close()  # no save: those items never reached SQLite, and nothing is half there
    assert "5 item(s) added with journal=False are dropped" in caplog.text
    with Index.open(tmp_path / "idx") as idx:
        assert len(idx) == 10 and idx.repairs == [] and idx.find_path(tmp_path / "lost0.jpg") == []


# test_index's kill worker, adding its 50 vectors without the journal.
BULK_WORKER = WORKER.replace('for i in range(50)])', 'for i in range(50)], journal=False)')
assert BULK_WORKER != WORKER


@pytest.mark.parametrize("step,count,generation", [
    ("save:tmp-written", 100, 1),  # before the commit point: neither the items nor their vectors
    ("save:committed", 150, 2),    # after it, before the rename: rolled forward, items and vectors
    ("save:replaced", 150, 2),
])
def test_kill_minus_9_during_a_bulk_save(tmp_path: Path, step: str, count: int, generation: int) -> None:
    idx, vecs, keys = make_index(tmp_path, n=100)
    idx.save()
    idx.close()
    path = tmp_path / "idx"
    proc = run_until([BULK_WORKER, str(path), step], "AT")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    with Index.open(path, read_only=True) as reader:
        assert (len(reader), reader.generation) == (count, generation)
    with Index.open(path) as writer:
        assert (len(writer), writer.generation, writer.repairs) == (count, generation, [])
        assert not (path / (vectors_file("image") + ".tmp")).exists()
        new = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
        assert (writer.search(new[3], 1)[0].path == str(tmp_path / "new3.jpg")) == (count == 150)
        assert writer.search(vecs[7], 1)[0].key == int(keys[7])
