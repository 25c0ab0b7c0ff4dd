"""ExactMatrix: the brute-force table behind the index's exact search, against numpy."""

from __future__ import annotations

import numpy as np
import pytest

import crossmodal.index.native_imports  # noqa: F401  (usearch after onnxruntime)
from crossmodal.index.exact import EXACT_SCAN_BUDGET, ExactMatrix, default_exact_threshold
from helpers.threads import run_concurrently


def _vecs(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_threshold_scales_with_dimension() -> None:
    assert default_exact_threshold(512) == 131_072 == EXACT_SCAN_BUDGET // 512
    assert default_exact_threshold(64) == 1_048_576
    assert default_exact_threshold(10**9) == 1  # never zero: a one-vector index is always scanned


def test_topk_matches_numpy_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossmodal.index import exact as index_exact

    monkeypatch.setattr(index_exact, "_BLOCK_FLOATS", 3 * 500)  # 3 queries per block: exercise the loop
    x, q = _vecs(500, 24, 0), _vecs(10, 24, 1)
    table = ExactMatrix(24, normalize=True)
    keys = np.arange(1000, 1500, dtype=np.uint64)
    table.add(keys[:200], x[:200])
    table.add(keys[200:], x[200:])  # grows past the first capacity
    got_keys, got_scores = table.search(q, 7)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = qn @ xn.T
    order = np.argsort(-sims, axis=1)[:, :7]
    assert got_keys.tolist() == keys[order].tolist()
    np.testing.assert_allclose(got_scores, np.take_along_axis(sims, order, 1), atol=1e-6)
    assert got_keys.dtype == np.uint64 and got_scores.dtype == np.float32


def test_removed_rows_never_come_back_and_k_clips_to_live_rows() -> None:
    x = _vecs(10, 8, 2)
    table = ExactMatrix(8, normalize=False)
    table.add(np.arange(10, dtype=np.uint64), x)
    table.remove([3, 4, 99])  # 99 is unknown: ignored
    assert len(table) == 8
    keys, scores = table.search(x[3:4], 50)
    assert keys.shape == (1, 8) and 3 not in keys[0] and 4 not in keys[0]
    assert np.all(np.isfinite(scores))
    table.remove([0, 1, 2])  # 5 of 10 dead: compacted
    assert len(table) == 5
    keys, _ = table.search(x[5:6], 5)
    assert sorted(keys[0].tolist()) == [5, 6, 7, 8, 9] and keys[0, 0] == 5
    table.add(np.array([20, 21], dtype=np.uint64), x[:2])  # rows added after a remove are removable too
    table.remove([21])
    keys, _ = table.search(x[1:2], 10)
    assert sorted(keys[0].tolist()) == [5, 6, 7, 8, 9, 20]
    table.remove([5, 6, 7, 8, 9, 20])
    keys, scores = table.search(x[:2], 3)
    assert keys.shape == (2, 0) and scores.shape == (2, 0)


def test_zero_vector_scores_zero_under_cosine() -> None:
    table = ExactMatrix(4, normalize=True)
    table.add(np.array([1, 2], dtype=np.uint64), np.array([[0, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32))
    keys, scores = table.search(np.array([[2.0, 0, 0, 0]], dtype=np.float32), 2)
    assert keys.tolist() == [[2, 1]] and scores.tolist() == [[1.0, 0.0]]


def test_from_graph_copies_usearch_vectors() -> None:
    from crossmodal.index.format import new_graph

    x = _vecs(300, 16, 3)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    graph = new_graph(16, "cos", "f32", 16, 64, 64)
    graph.add(np.arange(7, 307, dtype=np.uint64), x)
    table = ExactMatrix.from_graph(graph, 16, normalize=True)
    keys, scores = table.search(x[:20], 1)
    assert keys[:, 0].tolist() == list(range(7, 27))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-6)


def test_concurrent_searches_and_adds_stay_consistent() -> None:
    dim = 32
    table = ExactMatrix(dim, normalize=True)
    base = _vecs(2000, dim, 5)
    table.add(np.arange(2000, dtype=np.uint64), base)

    def searcher() -> None:
        for i in range(40):
            keys, _ = table.search(base[i:i + 1], 1)
            assert int(keys[0, 0]) == i

    def writer() -> None:
        for j in range(20):
            extra = _vecs(500, dim, 100 + j)
            table.add(np.arange(10_000 + 500 * j, 10_500 + 500 * j, dtype=np.uint64), extra)

    run_concurrently([searcher, searcher, searcher, writer])
    assert len(table) == 12_000


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_get_vectors_returns_stored_vectors_by_key_with_missing_ones_named(tmp_path, dtype: str) -> None:
    from crossmodal.errors import IndexStoreError, InputError
    from crossmodal.index import Index

    x = _vecs(40, 16, 5)
    keys = np.arange(100, 140, dtype=np.uint64)
    with Index.create(tmp_path / "v.idx", bundle="b", dim=16, dtype=dtype) as idx:
        idx.add(x, keys=keys)
        idx.add(x[:3] * 2, keys=[7, 8, 9], tower="text")
        idx.remove([105])
    want = [139, 100, 105, 3, 139]
    with Index.open(tmp_path / "v.idx", read_only=True) as idx:
        for warm in (False, True):  # the same answer before and after the scan table is built
            vecs, missing = idx.get_vectors(want)
            assert vecs.shape == (5, 16) and vecs.dtype == np.float32
            assert missing == [105, 3]
            atol = 0 if dtype == "f32" else 2e-3  # f16 storage rounds
            np.testing.assert_allclose(vecs[[0, 1, 4]], x[[39, 0, 39]], atol=atol, rtol=0 if dtype == "f32" else 1e-3)
            assert np.isnan(vecs[[2, 3]]).all()
            idx.warm_up()
        text, missing = idx.get_vectors(np.array([8], dtype=np.uint64), tower="text")
        assert missing == [] and np.allclose(text[0], x[1] * 2, rtol=1e-3)  # stored as added, not normalised
        _, missing = idx.get_vectors(want, where={"added_after": 4102444800})  # 2100-01-01: the filter keeps none
        assert missing == want
        with pytest.raises(InputError, match="unknown filter field"):
            idx.get_vectors(want, where={"colour": "red"})
        empty, missing = idx.get_vectors([])
        assert empty.shape == (0, 16) and missing == []
        with pytest.raises(InputError, match="non-negative integers"):
            idx.get_vectors([-1])
        with pytest.raises(InputError, match="non-negative integers"):
            idx.get_vectors([1.5])
    with pytest.raises(IndexStoreError, match="closed"):
        idx.get_vectors([100])
