"""The service load benchmark's quick mode: every engine and workload runs, nothing fails.

Timings on CI mean nothing (tiny model, shared cores): the tests check that the
harness measures what it claims (requests answered, no errors, server memory
sampled, the overload run leaves the server alive and exiting 0 on SIGTERM) and
writes its table and JSON, never how fast anything was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crossmodal.bench import serve_load
from crossmodal.bench.serve_load import ENGINES, WORKLOADS, LoadConfig


@pytest.fixture(scope="module")
def quick_run(tiny_clip_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("serve-bench")
    cfg = LoadConfig.quick_config(out, out / "work", bundle=tiny_clip_bundle, concurrency=(2,), seconds=0.4,
                                  overload_seconds=1.0, index_size=500, log=lambda s: None)
    return serve_load.run(cfg, make_plot=False)


def test_quick_run_measures_every_engine_and_workload_without_errors(quick_run: dict[str, Any]) -> None:
    rows = quick_run["rows"]
    assert {(r["engine"], r["workload"]) for r in rows} == {(e, w) for e in ENGINES for w in WORKLOADS}
    for r in rows:
        assert r["errors"] == 0 and r["ok"] == r["requests"] > 0, r
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["peak_rss_mb"] > 20  # a process with onnxruntime and a model loaded, not a zero sample
    # The search index the server answered from holds the requested number of vectors.
    from crossmodal.index import Index

    idx_path = Path(quick_run["paths"]["json"]).parent / "work" / "indexes"
    (index,) = list(idx_path.glob("*.idx"))
    with Index.open(index, read_only=True) as idx:
        assert idx.count("image") == 500


def test_overload_run_leaves_the_server_alive_and_every_request_answered(quick_run: dict[str, Any]) -> None:
    (o,) = quick_run["overload"]
    assert o["workload"] == "image"
    assert o["alive_after"] and o["ready_after"] == 200 and o["exit_code"] == 0
    assert o["unanswered"] == 0 and o["sent"] > 0
    # Connections a flooded 2-core machine never accepted (refused before any byte was sent) are not
    # accepted requests; every request the server took is answered.
    assert set(o["by_status"]) - {"-1"} <= {"200", "429", "504"}
    assert o.get("429_without_retry_after", 0) == 0


def test_report_names_the_cpu_above_every_table(quick_run: dict[str, Any]) -> None:
    md = Path(quick_run["paths"]["markdown"]).read_text()
    cpu = quick_run["environment"]["cpu"]["model"]
    tables = md.count("| engine | clients |") + md.count("| workload | sustained")
    assert tables == 4
    assert md.count(f"CPU: {cpu}") >= tables + 1
    saved = json.loads(Path(quick_run["paths"]["json"]).read_text())
    assert len(saved["rows"]) == len(quick_run["rows"]) and saved["targets"] == []  # no 1- or 16-client point


def test_bench_cli_runs_the_serve_scenario_with_its_shared_flags(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    from crossmodal.bench import cli

    seen: dict[str, Any] = {}

    def fake_run(cfg: LoadConfig, make_plot: bool = True) -> dict[str, Any]:
        seen.update(cfg=cfg, plot=make_plot)
        return {"paths": {"markdown": str(tmp_path / "serve.md")}}

    monkeypatch.setattr(serve_load, "run", fake_run)
    assert cli.main(["--scenarios", "serve", "--quick", "--out", str(tmp_path), "--threads", "1", "--seconds", "0.5",
                     "--index-sizes", "2000", "--no-plots"]) == 0
    cfg = seen["cfg"]
    assert cfg.quick and cfg.out == tmp_path and cfg.threads == 1 and cfg.seconds == 0.5 and cfg.index_size == 2000
    assert seen["plot"] is False and "--scenarios serve" in cfg.command


def test_query_texts_never_repeat_across_jobs_so_the_cache_cannot_answer() -> None:
    # The engines stay up across concurrency levels: a job repeating the previous job's texts
    # would be answered from the query cache and measure no model at all.
    from crossmodal.bench.serve_client import texts_for

    first, second = texts_for({"texts": ["a dog"]}), texts_for({"texts": ["a dog"], "text_base": 10**9})
    a = {first(i) for i in range(500)}
    assert len(a) == 500
    assert a.isdisjoint(second(i) for i in range(500))
