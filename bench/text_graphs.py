"""Scenario ``text``: the text towers of M-BERT, ALBEF (and CLIP), node counts before / after the export and
latency as a multiple of this machine's floor (issue 15, item 3).

``crossmodal bench --scenarios text --text-towers mbert,albef --out docs/bench`` does, per tower:

1. once (cached in ``WORK/text-towers/NAME``, :mod:`crossmodal.bench.text_towers`): build the full-size
   random module, trace it as the exporter does ("before"), export ``cpu-fp32`` and ``cpu-int8`` ("after");
   node counts stored in the file and at run time (after onnxruntime's own ENABLE_ALL rewrites);
2. this machine's peaks at each ``--text-threads`` count (:func:`crossmodal.bench.roofline.worker_peaks`)
   and each graph's work at the case's shapes (``graph_costs``), so every latency is also a multiple of its floor;
3. latency at each batch (``--text-batches``, default 1 and 8) of exactly ``--tokens`` tokens (default 12)
   for the fp32 and int8 graphs and the PyTorch fp32 module, ``--processes`` fresh processes each, engines
   alternating (``crossmodal.bench.runner``); min and median of the per-process medians;
4. one onnxruntime profile of each graph at batch 1, one thread: time and node runs by op type.

``--recount-floors`` counts the floors of ``OUT/text_graphs.json`` again from its recorded peaks (no timing).
``--prepare-only`` stops after step 1 (exports take minutes: run them niced, outside any timing) and records
the node counts of towers the result file does not hold yet. Results go
to ``OUT/text_graphs.json`` and ``OUT/text_graphs.md``; towers measured in earlier runs stay in those files
with their own run, peaks and machine, so one tower can be measured at a time.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .timing import Budget

VARIANTS = ("cpu-fp32", "cpu-int8")
ENGINES = ("crossmodal-cpu-fp32", "crossmodal-cpu-int8", "torch-fp32")
GRAPH_ENGINE = "onnxruntime-graph:"  # as crossmodal.bench.worker (not imported here: it times at import)
TARGET_X_FLOOR = 3.0  # issue 15: text int8 at batch 1 (12 tokens) <= 3x its floor
RESULT_NAME = "text_graphs"
# Per peak microbenchmark and process: 30+ GEMMs of 1024^3, enough for a stable median, and short enough
# that peaks at two thread counts plus three engines fit one paused-machine window of < 3 minutes per tower.
PEAK_SECONDS = 0.5


def run(args: Any, command: str, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The scenario from ``crossmodal bench`` flags; returns the merged result (None with ``--prepare-only``)."""
    from .text_towers import prepare

    out: Path = args.out
    work: Path = args.work or out / ".work"
    if args.recount_floors:
        recount(out / f"{RESULT_NAME}.json")
        log(f"recounted the floors in {out / (RESULT_NAME + '.md')}")
        return None
    towers = [t for t in args.text_towers.split(",") if t]
    from .text_towers import split_name

    for t in towers:
        split_name(t)  # a typo stops here, before minutes of export
    log(f"scenario text: preparing {', '.join(towers)} (exported once, cached in {work / 'text-towers'}) ...")
    prepared = {name: prepare(name, work, tiny=args.quick, log=log) for name in towers}
    if args.prepare_only:
        # Node counts are worth recording without timing; a tower measured earlier keeps its run.
        path = out / f"{RESULT_NAME}.json"
        known = json.loads(path.read_text())["towers"] if path.is_file() else {}
        new = {name: {"prepared": p, "rows": []} for name, p in prepared.items() if name not in known}
        if new:
            write(merge(path, {"towers": new}), out)
            log(f"node counts of {', '.join(new)} written to {out / (RESULT_NAME + '.md')} (no timing)")
        return None
    budget = Budget(seconds=args.seconds or (0.2 if args.quick else 1.0), warmup_seconds=0.05 if args.quick else 0.3,
                    min_runs=3 if args.quick else 5)
    result = measure(prepared, out=out, work=work, threads=args.text_threads, batches=args.text_batches or (1, 8),
                     tokens=args.tokens, processes=args.processes or (1 if args.quick else 3), budget=budget,
                     quick=args.quick, command=command, log=log, engine_kinds=args.text_engines.split(","))
    merged = merge(out / f"{RESULT_NAME}.json", result)
    write(merged, out)
    log(f"wrote {out / (RESULT_NAME + '.md')}")
    return merged


ENGINE_KINDS = ("fp32", "int8", "torch", "graphs")


def _wanted(engine: str, kinds: Sequence[str]) -> bool:
    kind = ("graphs" if engine.startswith(GRAPH_ENGINE) else "torch" if engine.startswith("torch")
            else engine.rsplit("-", 1)[-1])
    return kind in kinds


def reference_outputs(work: Path, tower: str) -> dict[str, Any]:
    """The PyTorch outputs a run of this tower (or of its NAME without @RECIPE: the same module and inputs)
    saved, for fidelity when this run leaves torch out."""
    for name in (tower, tower.partition("@")[0]):
        path = work / f"text-{name}-torch-fp32.npz"
        if path.is_file():
            return dict(np.load(path))
    return {}


def measure(prepared: dict[str, dict[str, Any]], *, out: Path, work: Path, threads: Sequence[int],
            batches: Sequence[int], tokens: int, processes: int, budget: Budget, quick: bool, command: str,
            log: Callable[[str], None] = print, engine_kinds: Sequence[str] = ENGINE_KINDS) -> dict[str, Any]:
    """Peaks, floors, latencies and op profiles of the prepared towers, in one run."""
    from .env import environment
    from .roofline import CostCache, worker_peaks
    from .runner import Runner

    t0 = time.time()
    run_info = {"command": command, "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "environment": environment(max(threads)), "processes": processes, "budget": budget.to_dict(),
                "tokens": tokens, "batches": list(batches), "threads": list(threads)}
    out.mkdir(parents=True, exist_ok=True)
    inputs = {name: write_inputs(p, work, tokens, batches) for name, p in prepared.items()}
    costs = {name: CostCache(Path(p["bundle"])) for name, p in prepared.items()}
    peaks = {}
    per_tower: dict[str, Any] = {name: {"prepared": p, "rows": []} for name, p in prepared.items()}
    for t in threads:
        runner = Runner(threads=t, log=log)
        peaks[t] = worker_peaks(runner, processes=processes, quick=quick, log=log, seconds=PEAK_SECONDS)
        for name, p in prepared.items():
            graphs = extra_graphs(p)
            engines = tuple(e for e in ENGINES + tuple(GRAPH_ENGINE + g for g in graphs) if _wanted(e, engine_kinds))
            jobs = {e: {"kind": "towers", "engine": e, "bundle": p["bundle"], "hf_dir": "", "torch_module": p["torch_module"],
                        "graphs": graphs, "input_names": p["input_names"], "inputs": str(inputs[name]),
                        "image_batches": [], "text_batches": list(batches), "budget": budget.to_dict(),
                        "outputs": str(work / f"text-{name}-{e.replace(':', '-')}.npz")} for e in engines}
            results = runner.alternate(jobs, processes, f"text {name} {t} thread(s)")
            outputs = {e: dict(np.load(jobs[e]["outputs"])) for e in engines}
            if "torch-fp32" not in engines:
                outputs["torch-fp32"] = reference_outputs(work, name)  # an earlier run's, same inputs
            rows = latency_rows(name, results, outputs, threads=t)
            for r in rows:
                r["input_names"] = p["input_names"]
            per_tower[name]["rows"] += rows
    log("  counting each graph's work (one profiled run per graph) ...")
    for name, tower in per_tower.items():
        annotate_floors(tower["rows"], costs[name], peaks, tokens, extra_graphs(tower["prepared"]))
        feeds = dict(np.load(inputs[name]))
        b1 = {k.split("__", 1)[1]: v for k, v in feeds.items() if k.startswith(f"text_b{min(batches)}__")}
        profiled = [v for v in ("fused-fp32", *VARIANTS) if v in tower["prepared"]["graphs"]]
        tower["op_profile"] = {v: op_profile(Path(tower["prepared"]["graphs"][v]["path"]), b1, threads=1,
                                             runs=5 if quick else 50) for v in profiled}
        tower["run"] = {**run_info, "peaks": {str(t): p.to_dict() for t, p in peaks.items()},
                        "elapsed_s": round(time.time() - t0, 1)}
    return {"towers": per_tower}


def extra_graphs(prepared: dict[str, Any]) -> dict[str, str]:
    """Graphs measured besides the bundle's: onnxruntime's fusion of the trace when the export did not keep it."""
    kept = prepared["graphs"]["cpu-fp32"].get("graph_rewrites") or []
    fused = prepared.get("fused_fp32")
    if fused and not any(r.startswith("ort-fusion") for r in kept):
        return {"fused-fp32": fused}
    return {}


def annotate_floors(rows: list[dict[str, Any]], costs: Any, peaks: dict[int, Any], tokens: int,
                    graphs: dict[str, str] | None = None) -> None:
    """Each row's floor at its batch and thread count (torch-fp32 against the fp32 graph, a graph engine
    against its own graph) and p50 / floor."""
    from .roofline import GraphCost, floor_ms, graph_costs

    counted: dict[str, tuple[GraphCost, GraphCost]] = {}
    for r in rows:
        if r["engine"].startswith(GRAPH_ENGINE):
            variant = r["engine"][len(GRAPH_ENGINE):]
            if variant not in counted:
                names = [n for n in r.get("input_names") or ("input_ids", "attention_mask")]
                one, two = graph_costs(Path((graphs or {})[variant]), [{n: (b, tokens) for n in names} for b in (1, 2)])
                counted[variant] = (one, two)
            cost = GraphCost.at_batch(*counted[variant], r["batch"])
        else:
            variant = "cpu-int8" if r["engine"] == "crossmodal-cpu-int8" else "cpu-fp32"
            cost = costs.get("text", variant, r["batch"], tokens)
        r["floor_ms"] = floor_ms(cost, peaks[r["threads"]])
        r["floor_of"] = variant
        r["cost"] = cost.to_dict()
        r["x_floor"] = r["p50_ms"] / r["floor_ms"]


def recount(path: Path) -> dict[str, Any]:
    """Floors of a result file counted again with this revision's roofline, from the peaks each run measured
    (no timing: for a fix in the work counting, the latencies and peaks stay those measured)."""
    from .roofline import CostCache, Peaks

    result = json.loads(path.read_text())
    for tower in result["towers"].values():
        run = tower.get("run")
        if run:
            peaks = {int(t): Peaks.from_dict(p) for t, p in run["peaks"].items()}
            annotate_floors(tower["rows"], CostCache(Path(tower["prepared"]["bundle"])), peaks, int(run["tokens"]),
                            extra_graphs(tower["prepared"]))
            run["floors_recounted"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write(result, path.parent)
    return result


def write_inputs(prepared: dict[str, Any], work: Path, tokens: int, batches: Sequence[int]) -> Path:
    """Token arrays of captions of exactly ``tokens`` tokens under the tower's own tokenizer, one set per batch."""
    from .fixtures import save_inputs
    from .scenarios import bundle_tokenizer, texts_of_length

    tok = bundle_tokenizer(Path(prepared["bundle"]))
    texts = texts_of_length(tok, tokens, max(batches))
    arrays = {}
    for b in batches:
        for key, arr in tok.encode(texts[:b]).items():
            arrays[f"text_b{b}__{key}"] = arr
    return save_inputs(work / f"inputs-text-{Path(prepared['folder']).name}.npz", arrays)


def latency_rows(tower: str, results: dict[str, list[dict[str, Any]]], outputs: dict[str, dict[str, Any]], *,
                 threads: int) -> list[dict[str, Any]]:
    """One row per engine and batch: min / median of the per-process medians, vs PyTorch fp32, fidelity."""
    from .runner import merge_cases
    from .scenarios import TORCH_FP32, fidelity
    from .timing import summarize

    rows = []
    merged = {e: merge_cases(rs) for e, rs in results.items()}
    for engine, cases in merged.items():
        for case, meta in cases.items():
            s = summarize(meta["per_process_ms"], int(meta["batch"]))
            rows.append({"tower": tower, "engine": engine, "threads": threads, "batch": int(meta["batch"]),
                         "tokens": int(meta["tokens"]), **s, "min_process_ms": min(s["process_medians_ms"]),
                         "fidelity": fidelity(outputs.get(TORCH_FP32, {}).get(case), outputs.get(engine, {}).get(case))})
    torch_p50 = {(r["batch"]): r["p50_ms"] for r in rows if r["engine"] == TORCH_FP32}
    for r in rows:
        r["x_torch_fp32"] = torch_p50[r["batch"]] / r["p50_ms"] if r["batch"] in torch_p50 else None
    return rows


def op_profile(model: Path, feeds: dict[str, np.ndarray], *, threads: int, runs: int) -> dict[str, Any]:
    """Where one call's time goes, by op type, in the graph as onnxruntime runs it (ENABLE_ALL, as the runtime).

    Returns per op type the share of node time and the node runs per call; ``nodes_per_call`` is the number of
    kernel dispatches of one call, the per-query overhead a lean graph cuts.
    """
    import tempfile

    import onnxruntime as ort

    warmup = 3
    with tempfile.TemporaryDirectory(prefix="opprof-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "p")
        sess = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        for _ in range(warmup):
            sess.run(None, feeds)
        t0 = time.perf_counter()
        for _ in range(runs):
            sess.run(None, feeds)
        wall_ms = (time.perf_counter() - t0) * 1e3 / runs
        events = json.loads(Path(sess.end_profiling()).read_text())
    return summarize_profile(events, skip_runs=warmup, wall_ms=wall_ms)


def summarize_profile(events: list[dict[str, Any]], *, skip_runs: int, wall_ms: float) -> dict[str, Any]:
    """Node kernel events of an onnxruntime profile -> time share and node runs per call, by op type.

    The first ``skip_runs`` calls (warm-up: first-run allocations) are left out.
    """
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    counted = starts[skip_runs:]
    if not counted:
        raise ValueError(f"the profile holds {len(starts)} runs, none after the {skip_runs} warm-up runs")
    by_op: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= counted[0]:
            op = e.get("args", {}).get("op_name", "?")
            by_op.setdefault(op, []).append(float(e["dur"]))
    n = len(counted)
    total = sum(sum(v) for v in by_op.values()) or 1.0
    ops = {op: {"share": sum(v) / total, "us_per_call": sum(v) / n, "runs_per_call": len(v) / n}
           for op, v in sorted(by_op.items(), key=lambda kv: -sum(kv[1]))}
    return {"wall_ms_profiled": round(wall_ms, 3), "node_us_per_call": total / n,
            "nodes_per_call": sum(len(v) for v in by_op.values()) / n, "by_op": ops}


# ----------------------------------------------------------------------------- result files


def merge(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """This run's towers over those of an earlier result file (each tower keeps its own run and peaks)."""
    old = json.loads(path.read_text()) if path.is_file() else {"towers": {}}
    return {**old, "towers": {**old.get("towers", {}), **result["towers"]}}


def write(result: dict[str, Any], out: Path) -> dict[str, Path]:
    from .runner import dump_json

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{RESULT_NAME}.json", "markdown": out / f"{RESULT_NAME}.md"}
    dump_json(paths["json"], result)
    paths["markdown"].write_text(markdown(result), encoding="utf-8")
    return paths


def _ms(x: float | None) -> str:
    from .report import fmt_ms

    return fmt_ms(x)


def _top_ops(by_op: dict[str, int], n: int = 6) -> str:
    return ", ".join(f"{c} {op}" for op, c in list(by_op.items())[:n])


def _trial(t: dict[str, Any], key: str) -> str:
    if "rejected" in t:
        return f"{t.get(key)} rejected"
    ms = f" {t['ms']:.3g} ms" if t.get("ms") is not None else ""
    cos = f" min cos {t['min_cosine']:.5f}" if t.get("min_cosine") is not None else ""
    return f"{t.get(key)}{ms}{cos}"


def _choice(graph: dict[str, Any]) -> str:
    """What the export kept, with the trials it chose from (export-time timings, their own machine load)."""
    q = graph.get("quantization")
    if q:
        trials = "; ".join(_trial(t, "recipe") for t in q.get("trials") or [])
        return f"recipe `{q.get('recipe')}`" + (f" (trials: {trials})" if trials else "")
    kept = ", ".join(graph.get("graph_rewrites") or []) or "none"
    trials = "; ".join(_trial(t, "rewrite") for t in graph.get("rewrite_trials") or [])
    return f"rewrites kept: {kept}" + (f" (trials: {trials})" if trials else "")


def markdown(result: dict[str, Any]) -> str:
    """Node counts, peaks, latency with floor multiples and op profiles, every table with its CPU named."""
    from .report import cpu_line

    lines = ["# Text towers: graph size before / after the export, latency as a multiple of the floor", "",
             "Issue 15, item 3: a lean text graph, text int8 at batch 1 (12 tokens) <= 3x its floor. Produced by "
             "`crossmodal bench --scenarios text` (`crossmodal.bench.text_graphs`); each tower below names the run, "
             "machine and peaks it was measured with. Full-size architectures with random weights: latency and "
             "node counts are those of the real models, fidelity on random weights is optimistic.", "",
             "Graphs: **before** = the module traced as the exporter traces it, no rewrite; **cpu-fp32** / "
             "**cpu-int8** = the exported graphs. *Stored* = nodes in the file; *runtime* = nodes after "
             "onnxruntime's own rewrites at session start (ENABLE_ALL), what runs per call. Latency: "
             "median (and min) over fresh processes of each process's median; floor = int8 FLOPs / int8 peak + "
             "fp32 FLOPs / fp32 peak + weight bytes / bandwidth (`crossmodal.bench.roofline`), torch-fp32 against "
             "the fp32 graph's floor.", ""]
    if result.get("notes"):
        # What the numbers alone cannot say (a run that met other load, earlier runs): written by whoever measured.
        lines += ["Notes on these runs:", "", *[f"- {n}" for n in result["notes"]], ""]
    for name, tower in result["towers"].items():
        p, run = tower["prepared"], tower.get("run")
        forced = p.get("int8_recipe_forced")
        lines += [f"## {name}: {p['description']}" + (f"; int8 recipe `{forced}` forced (not the export's choice)"
                                                      if forced else ""), ""]
        if run:
            env = run["environment"]
            lines += [f"Run {run['started']}: `{run['command']}`; {cpu_line(env)}, {env['cpu']['logical_cores']} logical "
                      f"cores; onnxruntime {env['packages'].get('onnxruntime')}, torch {env['packages'].get('torch')}; "
                      f"{run['processes']} fresh processes per engine and thread count, load average at start "
                      f"{env.get('load_average_at_start')}.  ",
                      f"Bundle exported {p['exported']} by the exporter at {p['exporter']['git']} "
                      f"({p['export_s']:.0f} s).", ""]
        g = p["graphs"]
        lines += ["| graph | stored nodes | runtime nodes | MB | most frequent at run time | what the export chose |",
                  "|---|---:|---:|---:|---|---|"]
        notes = {"before": "traced, no rewrite",
                 "fused-fp32": "onnxruntime's transformer fusion of *before*, as the export tries it"
                               + ((" (not kept by the export" + ("; timed below as onnxruntime-graph:fused-fp32)" if run else ")"))
                                  if extra_graphs(p) else " (kept)")}
        for k in ("before", "fused-fp32", *VARIANTS):
            if k not in g:
                continue
            mb = g[k].get("mb")
            lines.append(f"| {k} | {g[k]['stored_nodes']} | {g[k]['runtime_nodes']} | {'-' if mb is None else mb} | "
                         f"{_top_ops(g[k]['runtime_by_op'])} | {notes.get(k) or _choice(g[k])} |")
        lines.append("")
        if not run:
            lines += ["Not timed yet (exported and counted with `--prepare-only`).", ""]
            continue
        lines += [f"_{cpu_line(run['environment'])}._", "", "| threads | fp32 GEMM GFLOP/s | int8 GEMM GOP/s | bandwidth GB/s |",
                  "|---:|---:|---:|---:|"]
        for t, pk in run["peaks"].items():
            lines.append(f"| {t} | {pk['fp32_gflops']:.0f} | {pk['int8_gops']:.0f} | {pk['bandwidth_gbs']:.1f} |")
        lines += ["", "| engine | threads | batch x tokens | p50 ms (median) | min of process medians | floor ms | x floor "
                  "| vs torch fp32 | fidelity min cos |", "|---|---:|---|---:|---:|---:|---:|---:|---|"]
        for r in sorted(tower["rows"], key=lambda r: (r["batch"], r["engine"], r["threads"])):
            xf = f"{r['x_floor']:.2f}x"
            if r["engine"] == "crossmodal-cpu-int8" and r["batch"] == 1:
                xf = f"**{xf}**"  # the target case
            fid = r.get("fidelity")
            lines.append(f"| {r['engine']} | {r['threads']} | {r['batch']} x {r['tokens']} | {_ms(r['p50_ms'])} | "
                         f"{_ms(r['min_process_ms'])} | {_ms(r['floor_ms'])} | {xf} | "
                         f"{'-' if r.get('x_torch_fp32') is None else format(r['x_torch_fp32'], '.2f') + 'x'} | "
                         f"{'reference' if r['engine'] == 'torch-fp32' else ('-' if not fid else format(fid['min_cos'], '.5f'))} |")
        best = [r for r in tower["rows"] if r["engine"] == "crossmodal-cpu-int8" and r["batch"] == 1]
        if best:
            b = min(best, key=lambda r: r["x_floor"])
            met = "met" if b["x_floor"] <= TARGET_X_FLOOR else "not met"
            lines += ["", f"Target (issue 15): int8 at batch 1, {b['tokens']} tokens <= {TARGET_X_FLOOR:g}x its floor: "
                      f"**{b['x_floor']:.2f}x** at {b['threads']} thread(s) ({_ms(b['p50_ms'])} ms, floor "
                      f"{_ms(b['floor_ms'])} ms): {met}."]
        prof = tower.get("op_profile") or {}
        if prof:
            lines += ["", "Where batch-1 time goes (one onnxruntime profile per graph, 1 thread, ENABLE_ALL): share of "
                      "node time by op type, node runs per call.", "",
                      "| graph | node runs per call | profiled ms per call | top op types (share, runs per call) |",
                      "|---|---:|---:|---|"]
            for v, pr in prof.items():
                top = "; ".join(f"{op} {d['share'] * 100:.0f}% ({d['runs_per_call']:.0f})"
                                for op, d in list(pr["by_op"].items())[:7])
                lines.append(f"| {v} | {pr['nodes_per_call']:.0f} | {pr['wall_ms_profiled']:.2f} | {top} |")
        lines.append("")
    for title, comp in (result.get("comparisons") or {}).items():
        lines += comparison_section(title, comp)
    return "\n".join(lines) + "\n"


def comparison_section(title: str, comp: dict[str, Any]) -> list[str]:
    """A ``crossmodal.bench.compare_graphs`` result: graphs of one tower side by side, in the same run."""
    from .report import cpu_line

    env = comp["environment"]
    tower = comp["tower"]
    lines = [f"## Side by side: {title}", "",
             f"Run {comp['started']}: `{comp['command']}`; {cpu_line(env)}; the inputs of the {tower} run above, "
             "fresh processes alternating (3 per graph and thread count), sessions opened as the runtime opens "
             "a cpu variant; fidelity = min cosine to the PyTorch fp32 module on the same inputs.", "",
             f"_{cpu_line(env)}._", "",
             "| graph | threads | batch | p50 ms (median) | min of process medians | fidelity min cos |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in sorted(comp["rows"], key=lambda r: (r["threads"], r["p50_ms"])):
        cos = "-" if r.get("min_cos") is None else f"{r['min_cos']:.5f}"
        lines.append(f"| {r['graph']} | {r['threads']} | {r['batch']} | {_ms(r['p50_ms'])} | {_ms(r['min_process_ms'])} "
                     f"| {cos} |")
    return lines + [""]


__all__ = ["run", "measure", "latency_rows", "op_profile", "summarize_profile", "merge", "write", "markdown",
           "write_inputs", "annotate_floors", "recount", "comparison_section", "TARGET_X_FLOOR"]
