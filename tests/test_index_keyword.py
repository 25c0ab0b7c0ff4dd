"""Index.keyword_search: FTS5 over captions and path words, user text never parsed as FTS syntax,
FTS kept in step with the items (remove, kill -9, writes by code that knows no FTS), the upgrade of
an index made before keyword search, and captions_of."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import InputError, TextInputError
from crossmodal.index import META_FILE, Filter, Index
from test_index import FORMAT_1, KILL_CASES, WORKER, run_until, unit

DIM = 16
NAMES = ["beach/sunset.jpg", "beach/dog_running.jpg", "docs/invoice_2024.jpg", "docs/receipt.png",
         "family/birthday cake.jpg", "family/caf\u00e9 paris.jpg"]
CAPTIONS = ["a red sunset over the sea", "a dog running on sand", None, "a paper receipt",
            "a red car and a cake", "do not disturb sign"]


def build(tmp_path: Path) -> tuple[Index, np.ndarray, np.ndarray]:
    idx = Index.create(tmp_path / "idx", bundle="fake-clip", space="fake-space", dim=DIM, root=tmp_path)
    vecs = unit(len(NAMES), seed=3)
    keys = idx.add(vecs, [{"path": n, "caption": c} for n, c in zip(NAMES, CAPTIONS)])
    return idx, vecs, keys


def fts_rows(path: Path) -> dict[str, list[int]]:
    """Rowids of each FTS table of the index at ``path`` (from the file, as another process sees it)."""
    with sqlite3.connect(path / META_FILE) as conn:
        out = {t: sorted(r for (r,) in conn.execute(f"SELECT rowid FROM items_fts_{t}")) for t in ("image", "text")}
        items = {t: sorted(r for (r,) in conn.execute("SELECT key FROM items WHERE tower = ?", (t,)))
                 for t in ("image", "text")}
    conn.close()
    assert out == items, "FTS tables and items disagree"
    return out


def test_a_file_name_word_finds_what_the_vector_search_ranks_low(tmp_path: Path) -> None:
    idx, vecs, keys = build(tmp_path)
    # The query vector is the sunset's own: the invoice is not the vector search's first hit ...
    by_vector = idx.search(vecs[0], 6)
    assert by_vector[0].key == int(keys[0]) and by_vector[0].path != str(tmp_path / "docs/invoice_2024.jpg")
    # ... but its file name holds the word.
    hits = idx.keyword_search("invoice")
    assert [h.path for h in hits] == [str(tmp_path / "docs/invoice_2024.jpg")]
    assert hits[0].key == int(keys[2]) and hits[0].tower == "image" and hits[0].caption is None
    assert hits[0].score > 0  # BM25 relevance, higher is better
    # the year, the folder, the extension and the whole file name are words of the path too
    assert [h.key for h in idx.keyword_search("2024")] == [int(keys[2])]
    assert [h.key for h in idx.keyword_search("invoice_2024.jpg")] == [int(keys[2])]
    assert {h.key for h in idx.keyword_search("docs")} == {int(keys[2]), int(keys[3])}
    assert {h.key for h in idx.keyword_search("png")} == {int(keys[3])}
    # whole words only, case and diacritics ignored
    assert idx.keyword_search("invoi") == []
    assert [h.key for h in idx.keyword_search("CAFE")] == [int(keys[5])]


def test_words_are_ored_and_ranked_by_bm25(tmp_path: Path) -> None:
    idx, _, keys = build(tmp_path)
    hits = idx.keyword_search("red cake")
    # both words (birthday cake: "red" and "cake", twice in its path and caption) before one word (sunset: "red")
    assert [h.key for h in hits] == [int(keys[4]), int(keys[0])]
    assert hits[0].score > hits[1].score > 0
    assert [h.key for h in idx.keyword_search("red cake", k=1)] == [int(keys[4])]
    # a word nobody has does not empty the result
    assert [h.key for h in idx.keyword_search("receipt zebra")] == [int(keys[3])]
    assert idx.keyword_search("zebra") == []


@pytest.mark.parametrize("query", [
    '"invoice', 'invoice"', 'invoice*', '* invoice', '(invoice', 'invoice)', 'docs:invoice', '-invoice', '+invoice',
    'invoice AND', 'OR invoice', 'NOT invoice', 'NEAR( invoice, 2)', 'invoice ^', '{invoice}', "invoice'", '"invoice 2024"',
])
def test_fts_syntax_characters_are_searched_as_text(tmp_path: Path, query: str) -> None:
    idx, _, keys = build(tmp_path)
    assert idx.keyword_search(query)[0].key == int(keys[2])


def test_punctuation_inside_a_word_splits_it_into_a_phrase(tmp_path: Path) -> None:
    idx, _, keys = build(tmp_path)
    assert [h.key for h in idx.keyword_search("docs/invoice")] == [int(keys[2])]  # adjacent words of the path
    assert idx.keyword_search('in"vo"ice') == []  # the phrase "in vo ice", which nothing holds


def test_operator_words_are_plain_words(tmp_path: Path) -> None:
    idx, _, keys = build(tmp_path)
    # "not" is a word of the sign's caption, not FTS5's NOT operator
    assert [h.key for h in idx.keyword_search("NOT")] == [int(keys[5])]
    assert [h.key for h in idx.keyword_search("AND OR NEAR")] == [int(keys[4])]  # "and" of "a red car and a cake"
    assert idx.keyword_search('"sunset over"')[0].key == int(keys[0])


@pytest.mark.parametrize("query", ["", "   ", "*", '" ( ) -', "_"])
def test_a_query_without_words_is_refused(tmp_path: Path, query: str) -> None:
    idx, _, _ = build(tmp_path)
    with pytest.raises(InputError, match="no word to search"):
        idx.keyword_search(query)


def test_bad_arguments(tmp_path: Path) -> None:
    idx, _, _ = build(tmp_path)
    with pytest.raises(TextInputError, match="must be a str"):
        idx.keyword_search(["invoice"])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="positive integer"):
        idx.keyword_search("invoice", k=0)
    with pytest.raises(InputError, match="tower"):
        idx.keyword_search("invoice", tower="audio")
    with pytest.raises(InputError, match=r"unknown filter field\(s\) \['folder'\]"):
        idx.keyword_search("invoice", where={"folder": "docs"})


def test_where_filters_keyword_hits(tmp_path: Path) -> None:
    idx, _, keys = build(tmp_path)
    assert {h.key for h in idx.keyword_search("red")} == {int(keys[0]), int(keys[4])}
    assert [h.key for h in idx.keyword_search("red", where=Filter(path_prefix="family/"))] == [int(keys[4])]
    assert [h.key for h in idx.keyword_search("docs", where={"has_caption": False})] == [int(keys[2])]
    assert idx.keyword_search("red", where=Filter(added_after=4e9)) == []


def test_removed_items_leave_the_keyword_index(tmp_path: Path) -> None:
    idx, _, keys = build(tmp_path)
    idx.save()
    assert idx.remove([int(keys[2])]) == 1
    assert idx.keyword_search("invoice") == []
    idx.close()
    assert int(keys[2]) not in fts_rows(tmp_path / "idx")["image"]
    with Index.open(tmp_path / "idx", read_only=True) as reader:
        assert reader.keyword_search("invoice") == [] and len(reader.keyword_search("docs")) == 1


def test_a_reader_drops_hits_it_holds_no_vector_for(tmp_path: Path) -> None:
    idx, _, _ = build(tmp_path)
    idx.save()
    reader = Index.open(tmp_path / "idx", read_only=True)
    idx.add(unit(1, seed=9), [{"path": "docs/invoice_2025.jpg"}])  # after the reader opened
    assert [h.path for h in reader.keyword_search("invoice")] == [str(tmp_path / "docs/invoice_2024.jpg")]
    assert len(idx.keyword_search("invoice")) == 2
    reader.close()
    idx.close()


def test_captions_added_later_are_found_and_listed(tmp_path: Path) -> None:
    idx, _, keys = build(tmp_path)
    # caption items (text tower) under an image's path, as ingestion and the service store them
    tkeys = idx.add(unit(3, seed=7), [{"path": "docs/invoice_2024.jpg", "caption": "an electricity bill"},
                                      {"path": "docs/invoice_2024.jpg", "caption": "paper on a desk"},
                                      {"path": "elsewhere.jpg", "caption": "an unrelated bill"}], tower="text")
    hits = idx.keyword_search("electricity")
    assert [h.key for h in hits] == [int(keys[2])] and hits[0].tower == "image"  # the image, found by its caption
    assert [h.key for h in idx.keyword_search("bill")] == [int(keys[2])]  # elsewhere.jpg is no image
    text_hits = idx.keyword_search("bill", tower="text")
    assert {h.key for h in text_hits} == {int(tkeys[0]), int(tkeys[2])} and text_hits[0].tower == "text"
    # one image counted once even when its own row and two caption rows match
    assert [h.key for h in idx.keyword_search("invoice paper")].count(int(keys[2])) == 1
    assert idx.keyword_search("electricity", where=Filter(has_caption=False)) == []
    got = idx.captions_of([int(keys[2]), int(keys[0])])
    assert got == {int(keys[2]): sorted([(int(tkeys[0]), "an electricity bill"), (int(tkeys[1]), "paper on a desk")]),
                   int(keys[0]): []}
    idx.remove([int(tkeys[1])], tower="text")
    assert idx.captions_of(np.asarray([keys[2]]))[int(keys[2])] == [(int(tkeys[0]), "an electricity bill")]


# ---------------------------------------------------------------- in step with the items


@pytest.mark.parametrize("step,count,generation", KILL_CASES)
def test_kill_minus_9_leaves_fts_and_items_in_step(tmp_path: Path, step: str, count: int, generation: int) -> None:
    idx = Index.create(tmp_path / "idx", bundle="fake-clip", space="fake-space", dim=16, root=tmp_path)
    idx.add(unit(100), [{"path": f"img{i}.jpg", "caption": f"caption {i}"} for i in range(100)])
    idx.save()
    idx.close()
    path = tmp_path / "idx"
    proc = run_until([WORKER, str(path), step], "AT")  # adds new0..new49.jpg, stopped at `step`
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert len(fts_rows(path)["image"]) == count
    with Index.open(path, read_only=True) as reader:
        assert [h.path for h in reader.keyword_search("new3")] == ([str(tmp_path / "new3.jpg")] if count == 150 else [])
        assert len(reader.keyword_search("img7")) == 1
    with Index.open(path) as writer:
        assert len(writer) == count and len(writer.keyword_search("jpg", k=1000)) == count
    assert len(fts_rows(path)["image"]) == count


def test_writes_by_code_that_knows_no_fts_keep_it_in_step(tmp_path: Path) -> None:
    # Older crossmodal writes the items table with plain SQL; the triggers update FTS inside its transaction.
    idx, _, keys = build(tmp_path)
    idx.close()
    path = tmp_path / "idx"
    with sqlite3.connect(path / META_FILE) as conn:
        conn.execute("INSERT OR REPLACE INTO items VALUES ('image', 42, 'old/tractor.jpg', NULL, NULL, NULL, 1.0)")
        conn.execute("INSERT OR REPLACE INTO items VALUES ('image', ?, 'docs/renamed.jpg', NULL, NULL, NULL, 1.0)",
                     (int(keys[3]),))
        conn.execute("DELETE FROM items WHERE tower = 'image' AND key = ?", (int(keys[2]),))
        conn.execute("UPDATE items SET caption = 'a golden sunrise' WHERE tower = 'image' AND key = ?",
                     (int(keys[0]),))
    conn.close()
    rows = fts_rows(path)
    assert 42 in rows["image"] and int(keys[2]) not in rows["image"] and len(rows["image"]) == 6
    with sqlite3.connect(path / META_FILE) as conn:
        match = lambda q: sorted(r for (r,) in conn.execute(
            "SELECT rowid FROM items_fts_image WHERE items_fts_image MATCH ?", (q,)))
        assert match("tractor") == [42] and match("receipt") == [] and match("renamed") == [int(keys[3])]
        assert match("sunrise") == [int(keys[0])] and match("sunset") == [int(keys[0])]  # caption changed, path kept
        assert match("invoice") == []
    conn.close()


def test_missing_fts_objects_are_rebuilt_by_a_writer(tmp_path: Path) -> None:
    idx, _, keys = build(tmp_path)
    idx.close()
    path = tmp_path / "idx"
    with sqlite3.connect(path / META_FILE) as conn:
        conn.execute("DROP TRIGGER items_fts_image_delete")  # FTS no longer trustworthy:
        conn.execute("DELETE FROM items WHERE tower = 'image' AND key = ?", (int(keys[2]),))  # a stale row stays
    conn.close()
    with pytest.raises(AssertionError, match="disagree"):
        fts_rows(path)
    with Index.open(path) as writer:
        assert writer.keyword_search("invoice") == [] and len(writer) == 5
    assert len(fts_rows(path)["image"]) == 5  # rebuilt from the items


# ---------------------------------------------------------------- an index made before keyword search


def test_an_index_from_before_keyword_search_is_searchable_and_upgraded_by_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    shutil.copytree(FORMAT_1 / "idx", path)
    with np.load(FORMAT_1 / "vectors.npz") as z:
        keys = [int(k) for k in z["keys"]]
        image = z["image"]

    def schema() -> set[str]:
        with sqlite3.connect(f"file:{path / META_FILE}?mode=ro", uri=True) as conn:
            names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
        conn.close()
        return names

    assert not any(n.startswith("items_fts") for n in schema())
    with Index.open(path, read_only=True) as reader:  # builds a private in-memory FTS
        assert [h.key for h in reader.keyword_search("photo2")] == [keys[2]]
        assert [h.path for h in reader.keyword_search("late1")] == ["/photos/late1.jpg"]  # journaled item
        assert reader.keyword_search("photo5") == []  # removed: an orphan vector, no item
        assert len(reader.keyword_search("caption", where={"path_prefix": "photo"})) == 5  # photo0-4.jpg
        assert [h.key for h in reader.search(image[3], 1, where={"path_prefix": "/photos/photo3"})] == [keys[3]]
        # caption fusion and hybrid ranking on it too (the golden index's space is the fake encoder's)
        from crossmodal.retriever import Retriever
        from helpers.fake_encoder import FakeEncoder

        r = Retriever(FakeEncoder(dim=8), reader)
        with np.load(FORMAT_1 / "vectors.npz") as z:
            text = z["text"]
        fused = r.search_text("q", k=7, vectors=text[1], fuse="captions", fuse_weight=1.0)
        assert fused[0].key == keys[1] and fused[0].score == pytest.approx(1.0, abs=1e-6)  # its caption is the query
        hybrid = r.search_text("photo4", k=3, vectors=image[0], hybrid=True)
        assert {h.key for h in hybrid[:2]} == {keys[0], keys[4]}  # 1st by vector, 1st by keyword: one RRF term each
    assert not any(n.startswith("items_fts") for n in schema())  # a reader writes nothing
    with Index.open(path) as writer:
        assert writer.repairs == [] and writer.count("image") == 7
        assert [h.key for h in writer.keyword_search("photo2")] == [keys[2]]
        assert [h.key for h in writer.search(image[2], 1)] == [keys[2]]  # the same vectors, nothing re-embedded
    assert {"items_fts_image", "items_fts_text"} <= schema()
    rows = fts_rows(path)
    assert len(rows["image"]) == 7 and len(rows["text"]) == 3
    with Index.open(path, read_only=True) as reader:
        hits = reader.keyword_search("caption 1", tower="text")
        assert hits[0].caption == "caption 1" and len(hits) == 3
