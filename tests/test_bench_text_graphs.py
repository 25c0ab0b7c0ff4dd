"""Scenario 'text' of the benchmark (crossmodal.bench.text_graphs): rows, profiles, result files, one tiny run.

No timing is asserted: the tables' arithmetic, the labels and what one tiny end-to-end run records.
"""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest

from crossmodal.bench import text_graphs
from crossmodal.bench.cli import build_parser
from crossmodal.bench.text_towers import split_name

CPU = {"model": "Test CPU 9000", "arch": "x86_64", "capabilities": ["avx2", "avx512_vnni"], "logical_cores": 2,
       "physical_cores": 2, "affinity": 2, "flags": ["avx2"], "machine": "x86_64"}


def _worker_result(batch_ms: dict[int, list[float]]) -> dict[str, Any]:
    return {"cases": {f"text_b{b}": {"tower": "text", "batch": b, "tokens": 12, "ms": ms} for b, ms in batch_ms.items()}}


def test_latency_rows_take_min_and_median_of_process_medians_and_compare_with_torch() -> None:
    results = {"torch-fp32": [_worker_result({1: [30.0, 30.0, 30.0]})] * 3,
               "crossmodal-cpu-int8": [_worker_result({1: [m, m, m]}) for m in (12.0, 10.0, 20.0)]}
    outputs = {"torch-fp32": {"text_b1": [[1.0, 0.0]]}, "crossmodal-cpu-int8": {"text_b1": [[1.0, 1.0]]}}
    rows = {r["engine"]: r for r in text_graphs.latency_rows("mbert", results, outputs, threads=1)}
    int8 = rows["crossmodal-cpu-int8"]
    assert (int8["p50_ms"], int8["min_process_ms"], int8["processes"]) == (12.0, 10.0, 3)
    assert int8["x_torch_fp32"] == pytest.approx(2.5)
    assert int8["fidelity"]["min_cos"] == pytest.approx(2 ** -0.5)
    assert rows["torch-fp32"]["x_torch_fp32"] == 1.0 and (int8["tower"], int8["threads"]) == ("mbert", 1)


def _event(cat: str, name: str, ts: int, dur: int, op: str = "") -> dict[str, Any]:
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"op_name": op} if op else {}}


def test_profile_summary_leaves_out_warm_up_runs_and_counts_dispatches_per_call() -> None:
    events = [_event("Session", "model_run", 0, 100), _event("Node", "mm_kernel_time", 10, 90, "MatMul"),  # warm-up
              _event("Session", "model_run", 200, 10), _event("Node", "mm_kernel_time", 201, 6, "MatMul"),
              _event("Node", "add_kernel_time", 207, 2, "Add"), _event("Node", "add2_kernel_time", 209, 1, "Add"),
              _event("Session", "model_run", 300, 10), _event("Node", "mm_kernel_time", 301, 6, "MatMul"),
              _event("Node", "add_kernel_time", 307, 2, "Add"), _event("Node", "add2_kernel_time", 309, 1, "Add"),
              _event("Node", "mm_fence_before", 301, 50, "MatMul")]  # not a kernel event
    prof = text_graphs.summarize_profile(events, skip_runs=1, wall_ms=0.01)
    assert prof["nodes_per_call"] == 3 and prof["node_us_per_call"] == 9
    assert list(prof["by_op"]) == ["MatMul", "Add"]
    assert prof["by_op"]["MatMul"]["share"] == pytest.approx(6 / 9)
    assert prof["by_op"]["Add"]["runs_per_call"] == 2
    with pytest.raises(ValueError, match="warm-up"):
        text_graphs.summarize_profile(events, skip_runs=3, wall_ms=0.01)


def _tower(name: str, int8_ms: float, floor: float, *, fused_kept: bool) -> dict[str, Any]:
    graph = {"stored_nodes": 10, "runtime_nodes": 5, "runtime_by_op": {"MatMul": 3, "Add": 2}, "mb": 1.0}
    env = {"cpu": CPU, "threads": 2, "packages": {"onnxruntime": "1.x", "torch": "2.x"}, "load_average_at_start": [0.1]}
    return {
        "prepared": {"description": f"{name} tower", "exported": "today", "export_s": 60.0,
                     "exporter": {"git": "abc1234", "key": "k"}, "fused_fp32": "/x/fused.onnx",
                     "graphs": {"before": {**graph, "stored_nodes": 500, "runtime_nodes": 250},
                                "fused-fp32": graph,
                                "cpu-fp32": {**graph, "graph_rewrites": ["ort-fusion:bert"] if fused_kept else [],
                                             "rewrite_trials": [{"rewrite": "none", "ms": 9.0, "min_cosine": 1.0},
                                                                {"rewrite": "ort-fusion:bert", "rejected": "not faster"}]},
                                "cpu-int8": {**graph, "quantization": {"recipe": "dynamic", "trials": [
                                    {"recipe": "dynamic", "ms": 2.0, "min_cosine": 0.9999}]}}}},
        "rows": [{"engine": "crossmodal-cpu-int8", "threads": t, "batch": 1, "tokens": 12, "p50_ms": int8_ms * t,
                  "min_process_ms": int8_ms, "floor_ms": floor, "x_floor": int8_ms * t / floor, "x_torch_fp32": 3.0,
                  "fidelity": {"min_cos": 0.9999}} for t in (1, 2)],
        "op_profile": {"cpu-int8": {"nodes_per_call": 64, "wall_ms_profiled": 3.0,
                                    "by_op": {"MatMulInteger": {"share": 0.7, "runs_per_call": 19}}}},
        "run": {"started": "now", "command": "crossmodal bench --scenarios text", "environment": env, "processes": 3,
                "peaks": {"1": {"fp32_gflops": 100.0, "int8_gops": 1000.0, "bandwidth_gbs": 20.0, "threads": 1}}},
    }


def test_markdown_names_the_cpu_the_choices_and_the_target_per_tower() -> None:
    md = text_graphs.markdown({"towers": {"mbert": _tower("mbert", 10.0, 2.0, fused_kept=False),
                                          "albef": _tower("albef", 3.0, 2.0, fused_kept=True)}})
    assert md.count("Test CPU 9000") >= 4  # each tower's run line and its tables
    assert "| before | 500 | 250 |" in md
    assert "rewrites kept: none (trials: none 9 ms min cos 1.00000; ort-fusion:bert rejected)" in md
    assert "recipe `dynamic` (trials: dynamic 2 ms min cos 0.99990)" in md
    assert "(not kept by the export; timed below as onnxruntime-graph:fused-fp32)" in md
    assert "as the export tries it (kept)" in md
    assert "**5.00x** at 1 thread(s) (10.0 ms, floor 2.00 ms): not met." in md
    assert "**1.50x** at 1 thread(s) (3.00 ms, floor 2.00 ms): met." in md
    assert "MatMulInteger 70% (19)" in md
    assert "- the 1-thread part met other load" in text_graphs.markdown(
        {"towers": {}, "notes": ["the 1-thread part met other load"]})
    unmeasured = _tower("clip", 1.0, 1.0, fused_kept=False)
    del unmeasured["run"]
    md = text_graphs.markdown({"towers": {"clip": unmeasured}})
    assert "(not kept by the export)" in md and "Not timed yet" in md and "| engine |" not in md


def test_a_run_of_one_tower_keeps_the_others_in_the_result_file(tmp_path: Path) -> None:
    path = tmp_path / "text_graphs.json"
    path.write_text(json.dumps({"towers": {"mbert": {"old": True}, "albef": {"old": True}}}))
    merged = text_graphs.merge(path, {"towers": {"albef": {"new": True}}})
    assert merged == {"towers": {"mbert": {"old": True}, "albef": {"new": True}}}
    assert text_graphs.merge(tmp_path / "absent.json", {"towers": {"x": {}}}) == {"towers": {"x": {}}}


def test_extra_graphs_measure_the_fusion_only_when_the_export_did_not_keep_it() -> None:
    assert text_graphs.extra_graphs(_tower("m", 1, 1, fused_kept=False)["prepared"]) == {"fused-fp32": "/x/fused.onnx"}
    assert text_graphs.extra_graphs(_tower("m", 1, 1, fused_kept=True)["prepared"]) == {}


def test_cli_flags_and_tower_names() -> None:
    args = build_parser().parse_args(["--scenarios", "text", "--text-towers", "mbert@dynamic", "--text-threads", "1",
                                      "--tokens", "16", "--prepare-only"])
    assert (args.text_towers, args.text_threads, args.tokens, args.prepare_only) == ("mbert@dynamic", (1,), 16, True)
    assert build_parser().parse_args([]).text_threads == (1, 2)
    assert split_name("albef@nbits8-fused") == ("albef", "nbits8-fused") and split_name("clip") == ("clip", None)
    with pytest.raises(ValueError, match="unknown text tower 'bert'"):
        split_name("bert")


def test_tiny_albef_tower_end_to_end(tmp_path: Path) -> None:
    """Export a tiny random ALBEF text tower, count its nodes, time it once per engine, write the files."""
    args = Namespace(out=tmp_path / "out", work=tmp_path / "work", text_towers="albef", quick=True, prepare_only=False,
                     recount_floors=False, seconds=None, text_threads=(1,), text_batches=(1,), tokens=12, processes=None,
                     text_engines="fp32,int8,torch,graphs")
    result = text_graphs.run(args, "crossmodal bench --quick --scenarios text", log=lambda s: None)
    assert result is not None
    tower = result["towers"]["albef"]
    g = tower["prepared"]["graphs"]
    # the trace's shape arithmetic is folded or fused away: fewer nodes run than the file holds, and the
    # exported graphs run fewer than the trace
    assert g["before"]["runtime_nodes"] < g["before"]["stored_nodes"]
    assert g["cpu-int8"]["runtime_nodes"] < g["before"]["runtime_nodes"]
    assert g["cpu-int8"]["quantization"]["recipe"]
    engines = {r["engine"] for r in tower["rows"]}
    assert {"crossmodal-cpu-fp32", "crossmodal-cpu-int8", "torch-fp32"} <= engines
    for r in tower["rows"]:
        assert r["tokens"] == 12 and r["floor_ms"] > 0 and r["x_floor"] > 0
        if r["engine"] != "torch-fp32":
            assert r["fidelity"]["min_cos"] > 0.99
    assert set(tower["op_profile"]) >= {"cpu-fp32", "cpu-int8"}
    md = (tmp_path / "out" / "text_graphs.md").read_text()
    assert "## albef: ALBEF 4M text tower (tiny widths)" in md and "random weights" in md
    assert json.loads((tmp_path / "out" / "text_graphs.json").read_text())["towers"]["albef"]["rows"]
    # A forced recipe timed alone (int8 only) takes its fidelity reference from the run above.
    args.text_towers, args.text_engines = "albef@dynamic", "int8"
    again = text_graphs.run(args, "crossmodal bench --quick --scenarios text", log=lambda s: None)
    assert again is not None and set(again["towers"]) == {"albef", "albef@dynamic"}
    forced = again["towers"]["albef@dynamic"]
    assert forced["prepared"]["graphs"]["cpu-int8"]["quantization"]["recipe"] == "dynamic"
    assert [r["engine"] for r in forced["rows"]] == ["crossmodal-cpu-int8"]
    assert forced["rows"][0]["fidelity"]["min_cos"] > 0.99 and forced["rows"][0]["x_torch_fp32"] is None
    assert "int8 recipe `dynamic` forced" in (tmp_path / "out" / "text_graphs.md").read_text()


def test_side_by_side_comparisons_survive_tower_runs_and_are_rendered(tmp_path: Path) -> None:
    from crossmodal.bench.compare_graphs import add_to_result

    env = {"cpu": CPU, "threads": 2, "packages": {}}
    rows = [{"graph": "dynamic", "threads": 1, "batch": 1, "p50_ms": 4.3, "min_process_ms": 4.2, "min_cos": 0.9999},
            {"graph": "nbits8-fused", "threads": 1, "batch": 1, "p50_ms": 18.8, "min_process_ms": 18.0, "min_cos": None}]
    add_to_result(tmp_path, "int8 graphs of mbert", {"tower": "mbert", "started": "now", "environment": env,
                                                    "rows": rows, "command": "python -m crossmodal.bench.compare_graphs"})
    merged = text_graphs.merge(tmp_path / "text_graphs.json", {"towers": {"albef": _tower("albef", 3.0, 2.0, fused_kept=True)}})
    assert set(merged["comparisons"]) == {"int8 graphs of mbert"} and set(merged["towers"]) == {"albef"}
    md = text_graphs.markdown(merged)
    assert "## Side by side: int8 graphs of mbert" in md and "Test CPU 9000" in md.split("## Side by side")[1]
    assert "| dynamic | 1 | 1 | 4.30 | 4.20 | 0.99990 |" in md and "| nbits8-fused | 1 | 1 | 18.8 | 18.0 | - |" in md


def test_tiny_mclip_tower_is_exported_from_a_multilingual_clip_checkpoint(tmp_path: Path) -> None:
    from crossmodal.bench.text_towers import prepare

    prepared = prepare("mclip", tmp_path, tiny=True, log=lambda s: None)
    g = prepared["graphs"]
    manifest = json.loads((Path(prepared["bundle"]) / "text" / "cpu-int8" / "manifest.json").read_text())
    assert manifest["extra"]["source_format"] == "m-clip" and manifest["extra"]["pooling"] == "mean"
    assert manifest["dim"] == 16 and prepared["int8_recipe_forced"] is None
    # onnxruntime's BERT fusion applies to the XLM-R trace: far fewer nodes run than in the trace
    assert g["fused-fp32"]["runtime_nodes"] < g["before"]["runtime_nodes"] / 2
    assert "Attention" in g["fused-fp32"]["runtime_by_op"]
    assert prepare("mclip", tmp_path, tiny=True, log=lambda s: None) == prepared  # exported once, then reused
