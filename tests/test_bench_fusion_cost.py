"""bench/fusion_cost.py on a small collection: the fused top k it times is the rule's top k."""

from __future__ import annotations

import json
from pathlib import Path

from crossmodal.bench import fusion_cost


def test_fused_top_k_equals_the_rule_over_every_image_in_both_collections(tmp_path: Path) -> None:
    result = fusion_cost.run(n=400, dim=32, queries=6, work=tmp_path)
    assert set(result["rows"]) == {"independent", "correlated"}
    for row in result["rows"].values():
        assert row["agree"] == row["queries"] == 6
        assert row["shared_hits"] == 1.0
        assert set(row["ms_per_query"]) == {"plain", "fuse weighted", "fuse rrf", "hybrid"}
        assert all(ms > 0 for ms in row["ms_per_query"].values())
    assert "| independent |" in fusion_cost.table(result)


def test_main_writes_the_json_and_refuses_a_zero_count(tmp_path: Path, capsys) -> None:
    assert fusion_cost.main(["--n", "200", "--dim", "16", "--queries", "3", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "fusion_cost.json").read_text())
    assert saved["n"] == 200 and saved["cpu"]["model"]
    assert "weighted top 10 = rule" in capsys.readouterr().out
    try:
        fusion_cost.main(["--queries", "0"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--queries 0 was accepted")
