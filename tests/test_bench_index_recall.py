"""Recall of the index's search paths (crossmodal.bench.recall) and scenario (h): its rows, table and target line."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossmodal.bench.index_recall import markdown_rows, recall_captions, scenario_index_recall
from crossmodal.bench.recall import bench_recall
from crossmodal.errors import InputError
from crossmodal.bench.targets import evaluate


def test_hnsw_recall_at_10_vs_exact() -> None:
    report = bench_recall(10_000, 64, k=10, n_queries=300, seed=0)
    assert report.recall >= 0.99 and report.exact_recall >= 0.999, report
    assert report.settings["connectivity"] == 32 and report.n == 10_000
    # Forced onto the graph (threshold 0) the default choice is HNSW and its recall is reported.
    forced = bench_recall(3_000, 64, n_queries=100, exact_threshold=0)
    assert forced.default_search == "hnsw" and forced.default_recall == forced.recall


def test_default_search_recall_at_clip_dimension() -> None:
    # Random 512-d unit vectors are the graph's worst case (issue 5; 100k figures in
    # docs/bench/index_recall.md): below the exact threshold the default search scans,
    # so its recall@10 is exactly 1 whatever the graph does.
    report = bench_recall(4_000, 512, n_queries=100, seed=3)
    assert report.default_search == "exact" and report.settings["exact_threshold"] == (1 << 26) // 512
    assert report.default_recall == 1.0 and report.exact_recall == 1.0, report
    # The graph alone is measured too, and at this easy size it still finds most neighbours.
    assert 0.8 <= report.recall <= 1.0


def test_bench_recall_refuses_bad_sizes() -> None:
    for kw in ({"k": 0}, {"k": True}, {"n_queries": -1}):
        with pytest.raises(InputError, match="must be a positive integer"):
            bench_recall(100, 8, **kw)
    with pytest.raises(InputError, match="dim must be a positive integer"):
        bench_recall(100, 0)


def test_old_import_path_still_works() -> None:
    import crossmodal.index

    assert crossmodal.index.bench_recall is bench_recall


def test_recall_captions_are_distinct_and_seeded() -> None:
    caps = recall_captions(5000)
    assert len(set(caps)) == 5000 and caps == recall_captions(5000)
    assert all(c == c.strip() and "  " not in c for c in caps)
    with pytest.raises(ValueError, match="at most 240000"):
        recall_captions(240_001)


def test_quick_scenario_rows_table_and_target(tmp_path: Path) -> None:
    rows = scenario_index_recall(tmp_path, quick=True, log=lambda s: None)
    by_case = {r["case"]: r for r in rows}
    assert set(by_case) == {"random-512 f32", "random-512 f16", "random-512 i8"}
    f32 = by_case["random-512 f32"]
    assert f32["n"] == 3000 and f32["dim"] == 512 and f32["default_search"] == "exact"
    assert f32["default_recall"] == f32["exact_recall"] == 1.0
    # f16 storage costs (almost) nothing; i8 storage of 512-d random vectors costs visibly more
    assert by_case["random-512 f16"]["exact_recall"] >= 0.99
    assert by_case["random-512 i8"]["exact_recall"] < by_case["random-512 f16"]["exact_recall"]
    table = markdown_rows(rows)
    assert table[0].startswith("| vectors |") and len(table) == 2 + 3
    assert "| random-512 f32 | 3,000 | exact | 1.0000 |" in table[2]
    targets = evaluate({"rows": rows, "settings": {"quick": False}})
    (t,) = [t for t in targets if "issue 5" in t["target"]]
    assert t["met"] is False  # 3,000 vectors are not the 100k the target names
    assert "default search (exact) 1.0000 over 3,000 x 512" in t["measured"]
