"""crossmodal.Index: storage, search, bad input, the on-disk format, durability under kill -9, concurrent readers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import IncompatibleTowersError, IndexStoreError, InputError
from crossmodal.index import (
    HEADER_FILE,
    META_FILE,
    Index,
    SearchResult,
    content_key,
    key_from_sha256,
    vectors_file,
)
from crossmodal.index.crash_points import STEPS
from helpers.fake_encoder import FakeEncoder

DIM = 16
FORMAT_1 = Path(__file__).parent / "golden" / "index-format-1"


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_index(tmp_path: Path, n: int = 100, seed: int = 0, **kw) -> tuple[Index, np.ndarray, np.ndarray]:
    idx = Index.create(tmp_path / "idx", bundle="fake-clip", space="fake-space", dim=DIM, root=tmp_path, **kw)
    vecs = unit(n, seed=seed)
    keys = idx.add(vecs, [{"path": f"img{i}.jpg", "caption": f"caption {i}"} for i in range(n)])
    return idx, vecs, keys


def scan_tables(idx: Index) -> dict:
    """The float32 scan tables an index has built so far, by tower."""
    return {name: t.table for name, t in idx._towers.items() if t.table is not None}


# ---------------------------------------------------------------- basics


def test_keys_are_63_bit_content_hashes() -> None:
    key, digest = content_key(b"hello")
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert key == int("2cf24dba5fb0a30e", 16) & ((1 << 63) - 1) == key_from_sha256(digest)
    assert 0 <= key < 2**63


def test_roundtrip_search_matches_numpy(tmp_path: Path) -> None:
    idx, vecs, keys = make_index(tmp_path)
    assert len(idx) == 100 and len(keys) == 100
    idx.save()
    idx.close()
    header = json.loads((tmp_path / "idx" / HEADER_FILE).read_text())
    assert header["count"] == 100 and header["dim"] == DIM and header["bundle"] == "fake-clip"
    assert header["metric"] == "cos" and header["dtype"] == "f32" and header["format_version"] == 1

    idx = Index.open(tmp_path / "idx", read_only=True)
    q = unit(5, seed=9)
    exact = idx.search(q, 7, exact=True)
    truth = np.argsort(-(q @ vecs.T), axis=1)[:, :7]
    for i in range(5):
        assert [r.path for r in exact[i]] == [str(tmp_path / f"img{j}.jpg") for j in truth[i]]
        np.testing.assert_allclose([r.score for r in exact[i]], (q[i] @ vecs.T)[truth[i]], atol=1e-5)
        assert exact[i][0].caption == f"caption {truth[i][0]}"
    # single query -> flat list, equal to the first row of the batch
    single = idx.search(q[0], 7, exact=True)
    assert isinstance(single[0], SearchResult) and [r.key for r in single] == [r.key for r in exact[0]]
    # BLAS may take another kernel for one row than for a batch: scores agree to float32 rounding
    np.testing.assert_allclose([r.score for r in single], [r.score for r in exact[0]], atol=1e-6)
    # a stored vector finds itself first with score 1
    hit = idx.search(vecs[42], 1)[0]
    assert hit.key == int(keys[42]) and hit.score == pytest.approx(1.0, abs=1e-5)
    rec = idx.get(int(keys[42]))
    assert rec is not None and rec.path == str(tmp_path / "img42.jpg")


def test_k_bounds_and_empty_index(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "idx", bundle="b", dim=DIM)
    assert idx.search(unit(1)[0], 5) == []
    assert idx.search(unit(3), 5) == [[], [], []]
    idx.add(unit(4))
    assert len(idx.search(unit(1)[0], 100)) == 4  # k > len: every item
    idx.expansion_search = 2048
    assert idx.expansion_search == 2048 and idx._towers["image"].graph.expansion_search == 2048
    with pytest.raises(InputError, match="expansion_search"):
        idx.expansion_search = 0
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(InputError, match="k must be a positive integer"):
            idx.search(unit(1)[0], bad)  # type: ignore[arg-type]


def test_wrong_dimensions_and_bad_values(tmp_path: Path) -> None:
    idx, _, _ = make_index(tmp_path, n=10)
    with pytest.raises(InputError, match="16-dimensional"):
        idx.add(unit(2, dim=8))
    with pytest.raises(InputError, match="16-dimensional"):
        idx.search(unit(1, dim=32)[0], 3)
    with pytest.raises(InputError, match="16-dimensional"):
        idx.search(np.zeros((2, 3, DIM), np.float32), 3)
    nan = unit(1)
    nan[0, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        idx.add(nan)
    with pytest.raises(InputError, match="metadata"):
        idx.add(unit(2), [{}])
    assert len(idx) == 10  # nothing half-added


def test_same_content_is_added_once(tmp_path: Path) -> None:
    idx, vecs, keys = make_index(tmp_path, n=10)
    again = idx.add(vecs, [{"path": f"other{i}.jpg"} for i in range(10)])
    assert len(again) == 0 and len(idx) == 10
    assert idx.get(int(keys[0])).path == str(tmp_path / "img0.jpg")  # first path kept
    dup = idx.add(np.concatenate([vecs[:1], unit(1, seed=5), unit(1, seed=5)]))
    assert len(dup) == 1 and len(idx) == 11


def test_remove_is_durable_before_and_after_save(tmp_path: Path) -> None:
    idx, vecs, keys = make_index(tmp_path, n=20)
    idx.save()
    assert idx.remove([int(keys[3]), 12345]) == 1
    assert all(r.key != int(keys[3]) for r in idx.search(vecs[3], 20))
    idx.close()  # no save: the removal is already committed in SQLite
    idx = Index.open(tmp_path / "idx")
    assert len(idx) == 19 and idx.get(int(keys[3])) is None
    assert idx.search(vecs[3], 1)[0].key != int(keys[3])
    idx.save()
    idx.close()
    idx = Index.open(tmp_path / "idx", read_only=True)
    assert len(idx) == 19 and not idx.contains(int(keys[3]))


def test_text_tower_is_separate(tmp_path: Path) -> None:
    idx, vecs, _ = make_index(tmp_path, n=10)
    tk = idx.add(vecs[:3], [{"path": "img0.jpg", "caption": "a"}, {"path": "img1.jpg", "caption": "b"},
                            {"path": "img2.jpg", "caption": "c"}], tower="text")
    assert idx.count("image") == 10 and idx.count("text") == 3 and len(idx) == 13 and len(tk) == 0 + 3
    idx.save()
    idx.close()
    idx = Index.open(tmp_path / "idx", read_only=True)
    hits = idx.search(vecs[1], 5, tower="text")
    assert [h.caption for h in hits][0] == "b" and len(hits) == 3 and hits[0].tower == "text"
    assert (tmp_path / "idx" / vectors_file("text")).is_file()


def test_encoder_compatibility(tmp_path: Path) -> None:
    # Searching by text or image is the Retriever's job (tests/test_retriever.py); the index checks the space.
    enc = FakeEncoder(dim=DIM)
    idx = Index.create(tmp_path / "idx", bundle=enc.bundle)
    assert (idx.bundle, idx.space, idx.dim) == ("fake-clip", "fake-space", DIM)
    idx.check_encoder(enc)
    with pytest.raises(IncompatibleTowersError, match="fake-space"):
        idx.check_encoder(FakeEncoder(dim=DIM, name="other", space="other-space"))
    with pytest.raises(IncompatibleTowersError, match="dim 16"):
        idx.check_encoder(FakeEncoder(dim=8))
    with pytest.raises(InputError, match="contradicts"):
        Index.create(tmp_path / "idx2", bundle=enc.bundle, dim=DIM + 1)
    for bad in (0, -3, True, 2.0):
        with pytest.raises(InputError, match="dim must be a positive integer"):
            Index.create(tmp_path / "idx3", bundle="b", dim=bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="connectivity must be a positive integer"):
        Index.create(tmp_path / "idx3", bundle="b", dim=DIM, connectivity=True)  # type: ignore[arg-type]
    assert not (tmp_path / "idx3").exists()  # refused before anything was written


def test_quantised_storage(tmp_path: Path) -> None:
    for dtype in ("f16", "i8"):
        idx = Index.create(tmp_path / dtype, bundle="b", dim=DIM, dtype=dtype)
        vecs = unit(200, seed=3)
        keys = idx.add(vecs)
        idx.save()
        idx.close()
        idx = Index.open(tmp_path / dtype, read_only=True)
        assert idx.dtype == dtype
        found = [idx.search(v, 1, exact=True)[0].key for v in vecs[:50]]
        assert found == [int(k) for k in keys[:50]]


# ---------------------------------------------------------------- on-disk format


def _copy_format_1(tmp_path: Path) -> tuple[Path, dict]:
    dest = tmp_path / "idx"
    shutil.copytree(FORMAT_1 / "idx", dest)
    with np.load(FORMAT_1 / "vectors.npz") as z:
        return dest, {k: z[k] for k in z.files}


def test_index_written_by_format_1_code_opens_and_grows(tmp_path: Path) -> None:
    # tests/golden/index-format-1 was written by the index code of commit ffe94cd (make.py there):
    # 6 image and 3 caption vectors saved, then one image removed and 2 added without a save.
    path, v = _copy_format_1(tmp_path)
    keys = [int(k) for k in v["keys"]]
    with Index.open(path, read_only=True) as old:
        assert (old.bundle, old.space, old.dim, old.metric, old.dtype) == ("fake-clip", "fake-space", 8, "cos", "f32")
        assert old.root == "/photos" and old.info == {"variant": "cpu-fp32"} and old.generation == 1
        assert old.count("image") == 7 and old.count("text") == 3  # 6 saved - 1 removed + 2 journaled
        assert old.get(keys[5]) is None and old.journal_size() == 2
        rec = old.get(keys[2])
        assert rec is not None and (rec.path, rec.caption, dict(rec.extra)) == ("/photos/photo2.jpg", "caption 2",
                                                                                {"album": 0})
        for exact in (True, False):
            assert [row[0].key for row in old.search(v["image"][:5], 1, exact=exact)] == keys[:5]
            assert old.search(v["later"][1], 1, exact=exact)[0].path == "/photos/late1.jpg"
            assert old.search(v["text"][2], 1, tower="text", exact=exact)[0].caption == "caption 2"
    with Index.open(path) as writer:  # the writer compacts the journal into format-1 files
        assert writer.repairs == []
        writer.add(np.ones((1, 8), np.float32), [{"path": "new.jpg"}])
    with Index.open(path, read_only=True) as again:
        assert again.generation == 2 and again.journal_size() == 0 and again.count("image") == 8
        assert again.search(np.ones(8, np.float32), 1)[0].path == "/photos/new.jpg"


def _layout(path: Path) -> dict:
    """What an index directory's format consists of: file names, header keys, SQLite schema, state names.

    The keyword-search FTS tables and their triggers (``items_fts*``, added on a writer's open) are
    the one addition to format 1; they are listed apart."""
    with sqlite3.connect(path / META_FILE) as conn:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        schema = sorted(r for r in rows if not r[1].startswith("items_fts"))
        fts = sorted((r[0], r[1]) for r in rows if r[1].startswith("items_fts"))
        state = sorted(name for (name,) in conn.execute("SELECT name FROM state"))
    conn.close()
    files = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    return {"files": files, "header": list(json.loads((path / HEADER_FILE).read_text())), "schema": schema,
            "state": state, "fts": fts}


def test_new_index_has_the_format_1_layout(tmp_path: Path) -> None:
    # Field for field what the format-1 code wrote: same files, header keys (in order), schema and state.
    old, v = _copy_format_1(tmp_path / "old")
    with Index.create(tmp_path / "new", bundle="b", dim=8, root=tmp_path, info={"variant": "x"}) as idx:
        idx.add(v["image"], [{"path": "a.jpg", "caption": "c", "album": 1}] * 6)
        idx.add(v["text"], [{"path": "a.jpg", "caption": "c"}] * 3, tower="text")
    new_layout, old_layout = _layout(tmp_path / "new"), _layout(old)
    assert old_layout["fts"] == []  # format-1 code wrote no FTS tables ...
    assert {n for _, n in new_layout["fts"]} >= {"items_fts_image", "items_fts_text", "items_fts_image_insert",
                                                 "items_fts_image_delete", "items_fts_text_update"}
    assert {**new_layout, "fts": []} == old_layout  # ... and nothing else differs
    header = json.loads((tmp_path / "new" / HEADER_FILE).read_text())
    assert header["format_version"] == 1 and header["counts"] == {"image": 6, "text": 3}


# ---------------------------------------------------------------- bad files


def test_open_refuses_missing_and_corrupt_stores(tmp_path: Path) -> None:
    with pytest.raises(IndexStoreError, match="not a crossmodal index"):
        Index.open(tmp_path / "nothing")
    idx, _, _ = make_index(tmp_path, n=30)
    idx.save()
    idx.close()
    path = tmp_path / "idx"
    with pytest.raises(IndexStoreError, match="not empty"):
        Index.create(path, bundle="b", dim=DIM)

    graph = path / vectors_file("image")
    good = graph.read_bytes()
    graph.write_bytes(good[: len(good) // 2])
    with pytest.raises(IndexStoreError, match="does not match the committed digest"):
        Index.open(path, read_only=True)
    graph.write_bytes(good)
    Index.open(path, read_only=True).close()

    header = path / HEADER_FILE
    good_header = header.read_text()
    header.write_text(good_header.replace('"dim": 16', '"dim": 17'))
    with pytest.raises(IndexStoreError, match="disagrees"):
        Index.open(path, read_only=True)
    fixed = Index.open(path, repair=True)
    assert any("header" in r for r in fixed.repairs) and len(fixed) == 30
    fixed.close()
    assert json.loads(header.read_text())["dim"] == DIM

    meta = path / META_FILE
    for extra in ("-wal", "-shm"):
        Path(str(meta) + extra).unlink(missing_ok=True)
    meta.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IndexStoreError, match="not a readable crossmodal metadata store"):
        Index.open(path, read_only=True)


def test_replaced_graph_is_refused_then_repaired(tmp_path: Path) -> None:
    idx, vecs, keys = make_index(tmp_path, n=30)
    idx.save()
    idx.close()
    path = tmp_path / "idx"
    other, _, _ = make_index(tmp_path / "o", n=5, seed=7)
    other.save()
    other.close()
    (path / vectors_file("image")).write_bytes((tmp_path / "o" / "idx" / vectors_file("image")).read_bytes())
    with pytest.raises(IndexStoreError, match="repair=True"):
        Index.open(path)
    idx = Index.open(path, repair=True)
    assert len(idx) == 0 and any("empty graph" in r for r in idx.repairs)
    assert list(idx.items()) == []  # the items lost their vectors and were dropped
    assert len(idx.add(vecs)) == 30  # ... so the next build re-embeds them


def test_paths_outside_root(tmp_path: Path) -> None:
    idx, vecs, keys = make_index(tmp_path / "root", n=5)
    for bad in ("../x.jpg", "/etc/passwd", str(tmp_path / "elsewhere.jpg"), "a/../../b.jpg"):
        with pytest.raises(InputError, match="outside the index root"):
            idx.add(unit(1, seed=11), [{"path": bad}])
    idx.add(unit(1, seed=12), [{"path": str(tmp_path / "root" / "sub" / "ok.jpg")}])
    assert idx.search(unit(1, seed=12)[0], 1)[0].path == str(tmp_path / "root" / "sub" / "ok.jpg")
    idx.save()
    idx.close()
    with sqlite3.connect(tmp_path / "root" / "idx" / META_FILE) as conn:
        conn.execute("UPDATE items SET path = '../../secret.jpg' WHERE key = ?", (int(keys[2]),))
    with pytest.raises(IndexStoreError, match="outside the index root"):
        Index.open(tmp_path / "root" / "idx", read_only=True)
    idx = Index.open(tmp_path / "root" / "idx", repair=True)
    assert len(idx) == 5 and idx.get(int(keys[2])) is None and not idx.contains(int(keys[2]))


def test_single_writer_many_readers(tmp_path: Path) -> None:
    idx, vecs, _ = make_index(tmp_path, n=10)
    with pytest.raises(IndexStoreError, match="open for writing by another process"):
        Index.open(tmp_path / "idx")
    reader = Index.open(tmp_path / "idx", read_only=True)
    assert len(reader) == 10  # journaled adds are visible before any save
    with pytest.raises(IndexStoreError, match="read_only"):
        reader.add(unit(1, seed=4))
    idx.close()
    Index.open(tmp_path / "idx").close()  # the lock is released on close


# ---------------------------------------------------------------- kill -9

WORKER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from crossmodal.index import Index, crash_points
    path, stop_at = sys.argv[1], sys.argv[2]
    idx = Index.open(path)
    def stop(step):
        if step == stop_at:
            print("AT", step, flush=True)
            time.sleep(60)
    crash_points.reached = stop
    v = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    idx.add(v, [{"path": f"new{i}.jpg"} for i in range(50)])
    idx.save()
    print("DONE", flush=True)
""")


def run_until(args: list[str], marker: str, timeout: float = 30) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(marker):
            return proc
    proc.kill()
    raise AssertionError(f"worker never printed {marker!r} (exit code {proc.wait()})")


KILL_CASES = [
    ("add:journaled", 100, 1),    # inside the add transaction: rolled back
    ("save:tmp-written", 150, 1),  # before the commit point: vectors come back from the journal
    ("save:committed", 150, 2),   # after the commit point, before the rename: rolled forward
    ("save:replaced", 150, 2),    # before the header rewrite
]


def test_every_crash_point_has_a_kill_test() -> None:
    assert [case[0] for case in KILL_CASES] == list(STEPS)


@pytest.mark.parametrize("step,count,generation", KILL_CASES)
def test_kill_minus_9_mid_write(tmp_path: Path, step: str, count: int, generation: int) -> None:
    idx, vecs, keys = make_index(tmp_path, n=100)
    idx.save()
    idx.close()
    path = tmp_path / "idx"
    proc = run_until([WORKER, str(path), step], "AT")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL

    tmp_graph = path / (vectors_file("image") + ".tmp")
    assert tmp_graph.exists() == (step in ("save:tmp-written", "save:committed"))
    # a reader never modifies the directory but still sees the committed state
    reader = Index.open(path, read_only=True)
    assert len(reader) == count and reader.generation == generation
    reader.close()
    assert tmp_graph.exists() == (step in ("save:tmp-written", "save:committed"))
    writer = Index.open(path)
    assert not tmp_graph.exists()
    assert len(writer) == count and writer.generation == generation and writer.repairs == []
    assert writer.search(vecs[7], 1)[0].key == int(keys[7])
    new = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    assert (writer.search(new[3], 1)[0].path == str(tmp_path / "new3.jpg")) == (count == 150)
    writer.save()
    writer.close()
    assert json.loads((path / HEADER_FILE).read_text())["count"] == count


LOOP_WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    from crossmodal.index import Index
    idx = Index.open(sys.argv[1])
    rng = np.random.default_rng(2)
    for i in range(10_000):
        v = rng.standard_normal((20, 16)).astype(np.float32)
        idx.add(v, [{"path": f"loop{i}_{j}.jpg"} for j in range(20)])
        print("COMMITTED", len(idx), flush=True)
        if i % 3 == 2:
            idx.save()
            print("SAVED", len(idx), flush=True)
""")


def test_kill_minus_9_at_an_arbitrary_moment(tmp_path: Path) -> None:
    idx, _, _ = make_index(tmp_path, n=10)
    idx.save()
    idx.close()
    path = tmp_path / "idx"
    for attempt, wait_lines in enumerate((7, 20, 33)):
        proc = subprocess.Popen([sys.executable, "-c", LOOP_WORKER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        last = 0
        for _ in range(wait_lines):
            last = int(proc.stdout.readline().split()[1])
        time.sleep(0.002 * attempt)  # land at different points of the next add/save
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        idx = Index.open(path)  # must open without repair
        assert idx.repairs == [] and len(idx) >= last
        assert len(list(idx.items())) == len(idx)
        probe = np.random.default_rng(2).standard_normal((20, 16)).astype(np.float32)
        assert idx.search(probe[5], 1)[0].path == str(tmp_path / "loop0_5.jpg")
        idx.close()


READER = textwrap.dedent("""
    import sys, sqlite3
    from crossmodal.index import Index
    import numpy as np
    checks = 0
    for _ in range(int(sys.argv[2])):
        idx = Index.open(sys.argv[1], read_only=True)
        n = len(idx)
        assert n == len(list(idx.items())), "items and vectors disagree"
        assert n >= 10
        hit = idx.search(np.ones(16, np.float32), 3)
        assert len(hit) == 3
        idx.close()
        checks += 1
    print("OK", checks, flush=True)
""")


def test_concurrent_readers_while_writer_adds(tmp_path: Path) -> None:
    idx, _, _ = make_index(tmp_path, n=10)
    idx.save()
    idx.close()
    path = tmp_path / "idx"
    writer = subprocess.Popen([sys.executable, "-c", LOOP_WORKER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        writer.stdout.readline()
        readers = [subprocess.run([sys.executable, "-c", READER, str(path), "10"], capture_output=True, text=True,
                                  timeout=60) for _ in range(2)]
    finally:
        writer.kill()
        writer.wait()
        if writer.stdout:
            writer.stdout.close()
    for r in readers:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "OK 10"


# ---------------------------------------------------------------- search policy


def test_default_search_is_exact_below_threshold_and_hnsw_above(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from crossmodal.index import exact as index_exact

    scans: list[int] = []
    real = index_exact.ExactMatrix.search

    def spy(self, q, k):  # type: ignore[no-untyped-def]
        scans.append(len(q))
        return real(self, q, k)

    monkeypatch.setattr(index_exact.ExactMatrix, "search", spy)
    idx, vecs, keys = make_index(tmp_path, n=300)
    assert idx.exact_threshold == (1 << 26) // DIM and idx.uses_exact()
    q = unit(4, seed=5)
    truth = np.argsort(-(q @ vecs.T), axis=1)[:, :10]
    first = idx.search(q, 10)
    assert scans == [] and scan_tables(idx) == {}  # a one-off search scans inside usearch: no table built
    auto = idx.search(q, 10)
    assert scans == [4]  # the second builds the float32 table and scans it
    assert [[r.key for r in row] for row in auto] == [[r.key for r in row] for row in first] == keys[truth].tolist()
    np.testing.assert_allclose([[r.score for r in row] for row in auto],
                               [[r.score for r in row] for row in first], atol=1e-5)
    idx.exact_threshold = 299
    assert not idx.uses_exact()
    hnsw = idx.search(q, 10)
    assert scans == [4]  # the graph answered
    # The graph is approximate (its build is multi-threaded, so not even the same graph twice): at 300 points
    # it finds nearly all of the true top 10 (one miss in 40 was seen once in CI), the scan finds all.
    found = sum(len({r.key for r in row} & set(t)) for row, t in zip(hnsw, keys[truth].tolist()))
    assert found >= 38, f"HNSW found {found} of the 40 true neighbours"
    assert idx.search(q, 10, exact=True) == auto and scans == [4, 4]
    for bad in (-1, 1.5, True, "7"):
        with pytest.raises(InputError, match="exact_threshold"):
            idx.exact_threshold = bad  # type: ignore[assignment]
    with pytest.raises(InputError, match="exact must be"):
        idx.search(q, 3, exact="yes")  # type: ignore[arg-type]
    idx.close()


def test_exact_scan_follows_add_and_remove(tmp_path: Path) -> None:
    idx, vecs, keys = make_index(tmp_path, n=200)
    idx.warm_up()  # builds the scan table now
    assert set(scan_tables(idx)) == {"image"}
    more = unit(50, seed=11)
    new_keys = idx.add(more, [{"path": f"new{i}.jpg"} for i in range(50)])
    assert [idx.search(v, 1)[0].key for v in more[:5]] == new_keys[:5].tolist()
    gone = keys[:150]  # three quarters of the first batch: forces a compaction of the table
    assert idx.remove(gone) == 150
    alive_vecs = np.concatenate([vecs[150:], more])
    alive_keys = np.concatenate([keys[150:], new_keys])
    q = unit(6, seed=12)
    truth = np.argsort(-(q @ alive_vecs.T), axis=1)[:, :8]
    got = idx.search(q, 8)
    assert [[r.key for r in row] for row in got] == alive_keys[truth].tolist()
    assert len(idx.search(q[0], 1000)) == 100  # k above the size: every live item, none removed
    idx.save()
    idx.close()
    # the reopened index answers the same: a batch of 32 queries builds the table from the saved graph at once
    again = Index.open(tmp_path / "idx", read_only=True)
    q32 = np.concatenate([q, unit(26, seed=13)])
    assert [[r.key for r in row] for row in again.search(q32, 8)[:6]] == alive_keys[truth].tolist()
    assert set(scan_tables(again)) == {"image"}
    again.close()


@pytest.mark.parametrize("metric", ["cos", "ip"])
def test_exact_scores_match_the_metric_on_unnormalised_vectors(tmp_path: Path, metric: str) -> None:
    idx = Index.create(tmp_path / "idx", bundle="b", dim=DIM, metric=metric)
    vecs = unit(40, seed=1) * np.linspace(0.5, 3.0, 40, dtype=np.float32)[:, None]
    keys = idx.add(vecs, keys=np.arange(40))
    q = unit(3, seed=2) * 2.0
    if metric == "cos":
        sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).T
    else:
        sims = q @ vecs.T
    truth = np.argsort(-sims, axis=1)[:, :5]
    for exact in (True, False):
        got = idx.search(q, 5, exact=exact)
        assert [[r.key for r in row] for row in got] == keys[truth].tolist()
        np.testing.assert_allclose([[r.score for r in row] for row in got], np.take_along_axis(sims, truth, 1),
                                   rtol=1e-4, atol=1e-4)
    idx.close()


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_quantised_index_scans_its_stored_vectors(tmp_path: Path, dtype: str) -> None:
    idx, vecs, keys = make_index(tmp_path, n=200, dtype=dtype)
    q = unit(5, seed=4)
    truth = np.argsort(-(q @ vecs.T), axis=1)[:, 0]
    got = idx.search(q, 3)
    if dtype == "f16":
        assert [row[0].key for row in got] == keys[truth].tolist()
    else:  # 8-bit storage of 16-d vectors reorders near ties: the true best stays in the top 3
        assert all(int(keys[t]) in [r.key for r in row] for t, row in zip(truth, got))
    assert scan_tables(idx) == {}  # no float32 copy of a quantised index: usearch scans its own storage
    idx.close()


def test_partial_tmp_graph_from_a_killed_save_is_ignored(tmp_path: Path) -> None:
    idx, vecs, keys = make_index(tmp_path, n=40)
    idx.save()
    idx.close()
    tmp_graph = tmp_path / "idx" / (vectors_file("image") + ".tmp")
    tmp_graph.write_bytes((tmp_path / "idx" / vectors_file("image")).read_bytes()[:1000])  # died mid-write
    with Index.open(tmp_path / "idx", read_only=True) as reader:
        assert len(reader) == 40 and reader.search(vecs[9], 1)[0].key == int(keys[9])
    assert tmp_graph.exists()  # readers never touch the directory
    Index.open(tmp_path / "idx").close()
    assert not tmp_graph.exists()


def test_threads_searching_while_one_adds_see_every_added_vector(tmp_path: Path) -> None:
    from helpers.threads import run_concurrently

    idx, vecs, keys = make_index(tmp_path, n=200)
    batches = [unit(20, seed=100 + j) for j in range(15)]

    def searcher() -> None:
        for _ in range(30):
            idx.search(vecs[:2], 3)  # the second call of some thread builds the table mid-adds

    def writer() -> None:
        for b in batches:
            idx.add(b)

    run_concurrently([searcher, searcher, searcher, writer])
    # every vector added while tables were being built is found by the table
    found = [r[0].score for r in idx.search(np.concatenate(batches), 1)]
    assert np.allclose(found, 1.0, atol=1e-5) and len(scan_tables(idx)["image"]) == 500
    idx.close()
