"""Filter: validation, and search(where=): before top-k for exact search (every path: scan table,
copied subset, usearch scan), a widened post-filter for HNSW, against numpy on the matching subset."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import InputError
from crossmodal.index import FILTER_FIELDS, META_FILE, Filter, Index
from crossmodal.index import search as index_search
from test_index import unit

DIM = 16


def build(tmp_path: Path, n: int = 400, dtype: str = "f32") -> tuple[Index, np.ndarray, np.ndarray]:
    """``n`` items: every 10th under ``b/`` (the rest under ``a/``), every 3rd captioned,
    the first half added at t=1000 and the rest at t=2000."""
    idx = Index.create(tmp_path / "idx", bundle="fake-clip", space="fake-space", dim=DIM, root=tmp_path, dtype=dtype)
    vecs = unit(n, seed=1)
    keys = idx.add(vecs, [{"path": f"{'b' if i % 10 == 0 else 'a'}/img{i}.jpg",
                           "caption": f"caption {i}" if i % 3 == 0 else None} for i in range(n)])
    # added_at is the time of the add; set it so the test does not depend on the clock.
    with sqlite3.connect(tmp_path / "idx" / META_FILE) as conn:
        conn.executemany("UPDATE items SET added_at = ? WHERE tower = 'image' AND key = ?",
                         [(1000.0 if i < n // 2 else 2000.0, int(k)) for i, k in enumerate(keys)])
    conn.close()
    return idx, vecs, keys


def truth(vecs: np.ndarray, keys: np.ndarray, q: np.ndarray, mask: np.ndarray, k: int) -> list[list[int]]:
    """The top-k keys among the rows ``mask`` keeps, by numpy (the vectors are unit length: cosine = dot)."""
    scores = np.atleast_2d(q) @ vecs.T
    scores[:, ~mask] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, int(mask.sum()))]
    return [[int(keys[j]) for j in row] for row in order]


def hit_keys(hits: list) -> list[list[int]]:
    return [[h.key for h in row] for row in hits]


IN_B = np.arange(400) % 10 == 0
CAPTIONED = np.arange(400) % 3 == 0
LATE = np.arange(400) >= 200


# ---------------------------------------------------------------- the Filter value


def test_filter_fields_and_validation() -> None:
    assert FILTER_FIELDS == ("path_prefix", "added_after", "has_caption")
    assert Filter().is_empty() and not Filter(has_caption=False).is_empty()
    assert Filter.from_mapping({"path_prefix": "b/", "added_after": 5, "has_caption": "true"}) == \
        Filter(path_prefix="b/", added_after=5.0, has_caption=True)
    assert Filter.from_mapping({"added_after": "1970-01-01T00:25:00"}).added_after == 1500.0  # no zone: UTC
    assert Filter.from_mapping({"added_after": "1970-01-01T01:25:00+01:00"}).added_after == 1500.0
    assert Filter.from_mapping({"path_prefix": None}).is_empty()
    with pytest.raises(InputError, match=r"unknown filter field\(s\) \['date', 'folder'\]; filters are "
                                         r"\['path_prefix', 'added_after', 'has_caption'\]"):
        Filter.from_mapping({"folder": "x", "date": 1})
    with pytest.raises(InputError, match="neither unix seconds nor an ISO 8601 date"):
        Filter.from_mapping({"added_after": "yesterday"})
    with pytest.raises(InputError, match="has_caption='maybe'"):
        Filter.from_mapping({"has_caption": "maybe"})
    with pytest.raises(InputError, match="must be an object"):
        Filter.from_mapping(["path_prefix"])  # type: ignore[arg-type]
    for bad in ({"path_prefix": ""}, {"path_prefix": 3}, {"added_after": float("nan")}, {"added_after": True},
                {"has_caption": 1}):
        with pytest.raises(InputError, match="filter"):
            Filter(**bad)  # type: ignore[arg-type]


def test_bad_where_values(tmp_path: Path) -> None:
    idx, vecs, _ = build(tmp_path, n=20)
    with pytest.raises(InputError, match=r"unknown filter field\(s\) \['size'\]"):
        idx.search(vecs[0], 3, where={"size": 3})
    with pytest.raises(InputError, match="where must be"):
        idx.search(vecs[0], 3, where="b/")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="outside the index root"):
        idx.search(vecs[0], 3, where=Filter(path_prefix="/elsewhere/b/"))


# ---------------------------------------------------------------- what each field keeps


def test_each_field_keeps_the_right_items(tmp_path: Path) -> None:
    idx, vecs, keys = build(tmp_path)
    q = vecs[5]
    cases = [
        (Filter(path_prefix="b/"), IN_B),
        (Filter(path_prefix=str(tmp_path / "b") + "/"), IN_B),  # an absolute path inside the root
        (Filter(path_prefix="a/img1"), np.array([f"a/img{i}".startswith("a/img1") and i % 10 for i in range(400)],
                                                bool)),
        (Filter(path_prefix=str(tmp_path)), np.ones(400, bool)),  # the root itself
        (Filter(added_after=1500), LATE),
        (Filter(added_after=2000), np.zeros(400, bool)),  # strictly after
        (Filter(has_caption=True), CAPTIONED),
        (Filter(has_caption=False), ~CAPTIONED),
        (Filter(path_prefix="b/", added_after=1000, has_caption=False), IN_B & LATE & ~CAPTIONED),
    ]
    for flt, mask in cases:
        for exact in (True, False):
            got = idx.search(q, 10, where=flt, exact=exact)
            assert [h.key for h in got] == truth(vecs, keys, q, mask, 10)[0], (flt, exact)
            if mask.any():
                assert got[0].score == pytest.approx(float((q @ vecs[mask].T).max()), abs=1e-5)


def test_prefix_characters_are_literal(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "idx", bundle="b", dim=DIM)  # no root: paths as given
    vecs = unit(4, seed=2)
    keys = idx.add(vecs, [{"path": p} for p in ("/x/100%_done/a.jpg", "/x/100ab_done/b.jpg", "/x/1*/c.jpg", None)])
    assert [h.key for h in idx.search(vecs[1], 4, where={"path_prefix": "/x/100%_"})] == [int(keys[0])]
    assert [h.key for h in idx.search(vecs[0], 4, where={"path_prefix": "/x/1*"})] == [int(keys[2])]
    assert len(idx.search(vecs[0], 4, where={"path_prefix": "/x/"})) == 3  # the path-less item never matches


def test_an_image_has_a_caption_when_a_caption_item_shares_its_path(tmp_path: Path) -> None:
    idx, vecs, keys = build(tmp_path, n=20)
    idx.add(unit(1, seed=8), [{"path": "a/img1.jpg", "caption": "added later"}], tower="text")
    with_caption = {h.key for h in idx.search(vecs[0], 20, where={"has_caption": True})}
    assert with_caption == {int(keys[i]) for i in range(20) if i % 3 == 0 or i == 1}
    assert int(keys[1]) not in {h.key for h in idx.search(vecs[0], 20, where={"has_caption": False})}


# ---------------------------------------------------------------- before top-k for exact search


def test_exact_search_filters_before_top_k_on_every_path(tmp_path: Path) -> None:
    idx, vecs, keys = build(tmp_path)
    q = unit(3, seed=4)
    searcher = idx._towers["image"]
    for flt, mask in ((Filter(path_prefix="b/"), IN_B), (Filter(has_caption=False), ~CAPTIONED)):
        want = truth(vecs, keys, q, mask, 10)
        # b/ keeps 40 of 400 (copied out and scanned), no caption keeps 266 (usearch ranks the tower)
        assert searcher.table is None
        assert hit_keys(idx.search(q, 10, where=flt, exact=True)) == want
        searcher._exact_calls = 0
    idx.warm_up()  # the scan table, rows outside the filter masked
    assert searcher.table is not None
    for flt, mask in ((Filter(path_prefix="b/"), IN_B), (Filter(has_caption=False), ~CAPTIONED)):
        got = idx.search(q, 10, where=flt)
        assert hit_keys(got) == truth(vecs, keys, q, mask, 10)
        assert all(len(row) == 10 for row in got)
    # fewer matches than k: every match, no more
    few = Filter(path_prefix="b/img1")  # b/img10, b/img100..190 -> 11 items
    assert [len(row) for row in idx.search(q, 50, where=few)] == [11, 11, 11]
    assert idx.search(q, 5, where={"added_after": 3000}) == [[], [], []]


def test_removed_rows_stay_out_of_a_filtered_scan(tmp_path: Path) -> None:
    idx, vecs, keys = build(tmp_path)
    idx.warm_up()
    gone = [int(keys[i]) for i in range(0, 400, 20)]  # half of b/
    idx.remove(gone)
    mask = IN_B & ~np.isin(keys, gone)
    assert [h.key for h in idx.search(vecs[0], 30, where={"path_prefix": "b/"})] == \
        truth(vecs, keys, vecs[0], mask, 30)[0]


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_quantised_filtered_search_is_the_unfiltered_ranking_restricted(tmp_path: Path, dtype: str) -> None:
    idx, _, _ = build(tmp_path, dtype=dtype)
    q = unit(2, seed=6)
    everything = idx.search(q, 400, exact=True)
    for exact in (True, False):
        got = idx.search(q, 10, where={"path_prefix": "b/"}, exact=exact)
        assert hit_keys(got) == [[h.key for h in row if h.path.startswith(str(tmp_path / "b"))][:10]
                                 for row in everything]


# ---------------------------------------------------------------- post-filter with widened k for HNSW


def test_hnsw_post_filter_widens_until_k_hits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    idx, vecs, keys = build(tmp_path, n=4000)
    idx.exact_threshold = 0  # HNSW by default
    in_b = np.arange(4000) % 10 == 0
    asked: list[int] = []
    real = index_search.TowerSearch._graph_top_k

    def spy(self, mat, k, exact):  # type: ignore[no-untyped-def]
        asked.append(-k if exact else k)
        return real(self, mat, k, exact)

    monkeypatch.setattr(index_search.TowerSearch, "_graph_top_k", spy)
    q = unit(8, seed=9)
    got = idx.search(q, 10, where={"path_prefix": "b/"})
    want = truth(vecs, keys, q, in_b, 10)
    assert all(len(row) == 10 for row in got)
    assert all(h.path.startswith(str(tmp_path / "b")) for row in got for h in row)
    # a graph of 4000 vectors at ef=512 finds the true neighbours
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hit_keys(got), want)]) >= 0.95
    assert asked[0] == 200  # 2 * k * n / m = 2 * 10 * 4000 / 400
    # a rarer filter (134 of 4000) starts wider
    asked.clear()
    rare = Filter(path_prefix="b/", has_caption=True)
    got = idx.search(q, 10, where=rare)
    mask = in_b & (np.arange(4000) % 3 == 0)
    assert mask.sum() == 134 and all(len(row) == 10 for row in got)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hit_keys(got), truth(vecs, keys, q, mask, 10))]) >= 0.95
    assert asked[0] == -(-2 * 10 * 4000 // 134)
    # so few matches that widening would cover half the tower: an exact scan of the matches at once
    asked.clear()
    few = Filter(path_prefix="b/img12")  # b/img120, b/img1200..1290 -> 11 items
    n_few = sum(f"b/img{i}".startswith("b/img12") for i in range(0, 4000, 10))
    got = idx.search(q, 20, where=few)
    assert [len(row) for row in got] == [n_few] * 8
    assert hit_keys(got) == truth(vecs, keys, q, np.array([i % 10 == 0 and f"b/img{i}".startswith("b/img12")
                                                           for i in range(4000)]), 20)
    assert asked == []  # 11 of 4000 vectors: copied out and scanned in numpy, no graph walk


@pytest.mark.parametrize("every,rounds", [
    (10, [200, 800]),           # 400 match: 3200 * 2 >= 4000 -> their 400 vectors copied out and scanned
    (4, [80, 320, 1280, -4000]),  # 1000 match (more than an eighth): usearch ranks the tower exactly
])
def test_hnsw_widening_rounds_then_an_exact_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: int,
                                                 rounds: list[int]) -> None:
    idx, vecs, keys = build(tmp_path, n=4000)
    searcher = idx._towers["image"]
    mask = np.arange(4000) % every == 0
    allowed = np.sort(np.asarray(keys, dtype=np.uint64)[mask])
    asked: list[int] = []
    real = index_search.TowerSearch._graph_top_k

    def blind(self, mat, k, exact):  # type: ignore[no-untyped-def]
        # a graph walk that never meets a matching key: only the exact fallback can answer
        asked.append(-k if exact else k)
        if exact:
            return real(self, mat, k, exact)
        n = len(mat)
        return np.full((n, k), 2**62, np.uint64), np.zeros((n, k), np.float32), np.full(n, k, np.int64)

    monkeypatch.setattr(index_search.TowerSearch, "_graph_top_k", blind)
    q = unit(2, seed=3)
    got_keys, got_scores, counts = searcher.top_k(q, 10, exact=False, threshold=0, allowed=allowed)
    assert asked == rounds
    assert counts.tolist() == [10, 10]
    assert got_keys.tolist() == truth(vecs, keys, q, mask, 10)
    np.testing.assert_allclose(got_scores, np.sort(q @ vecs[mask].T, axis=1)[:, ::-1][:, :10], atol=1e-5)
