"""Result files of the service load benchmark: ``serve.json``, ``serve.md``, ``serve.png``.

The CPU (model name and the ISA flags that pick onnxruntime's and torch's kernels)
is printed above every table and in the plot's title: a figure without its
machine means little.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runner import dump_json

TITLES = {
    "text": "(a) Text embeddings: one short text per request, POST /v1/embeddings",
    "image": "(b) Image embeddings: one 1600x1200 JPEG per request (raw bytes), POST /v1/embeddings",
    "search": "(c) Text search: one short text per request, POST /v1/search top-10",
    "minilm": "(d) all-MiniLM-L6-v2 (trained), one text per request: crossmodal serve vs infinity",
}
SHORT_TITLES = {"text": "(a) text embeddings", "image": "(b) JPEG 1600x1200 embeddings",
                "search": "(c) text search, 100k vectors", "minilm": "(d) MiniLM: crossmodal vs infinity"}
ENGINE_NOTES = {
    "serve": "crossmodal serve, dynamic batching (defaults)",
    "serve-batch1": "crossmodal serve --max-batch 1 (batching off)",
    "direct": "the library in one process, one thread per client (no HTTP)",
    "serve-cpu-int8": "crossmodal serve, text-only export, cpu-int8",
    "serve-cpu-fp32": "crossmodal serve, text-only export, cpu-fp32",
    "infinity-torch": "infinity-emb, torch backend (fp32), batch size 32",
    "infinity-optimum": "infinity-emb, optimum/onnxruntime backend",
}


def cpu_line(result: dict[str, Any]) -> str:
    env = result["environment"]
    cpu = env["cpu"]
    return (f"CPU: {cpu['model']} ({cpu['logical_cores']} logical cores; ISA flags {', '.join(cpu['flags']) or '-'}); "
            f"{env['threads']} inference threads per engine")


def _row(rows: list[dict[str, Any]], group: str, engine: str, conc: int) -> dict[str, Any] | None:
    for r in rows:
        if r["group"] == group and r["engine"] == engine and r["concurrency"] == conc:
            return r
    return None


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue-12 targets, each with its figures and met / missed (None: not measured)."""
    from .serve_load import TARGET_BATCHING_X, TARGET_CLIENTS, TARGET_INFINITY_X, TARGET_OVERHEAD_MS

    out = []
    on, off = _row(rows, "text", "serve", TARGET_CLIENTS), _row(rows, "text", "serve-batch1", TARGET_CLIENTS)
    if on and off and on.get("throughput") and off.get("throughput"):
        x = on["throughput"] / off["throughput"]
        out.append({"target": f"text, {TARGET_CLIENTS} clients: dynamic batching >= {TARGET_BATCHING_X:g}x the "
                              "throughput of batching off, at a lower p99",
                    "figure": f"{x:.2f}x ({on['throughput']:.0f} vs {off['throughput']:.0f} req/s), p99 "
                              f"{on['p99_ms']:.1f} vs {off['p99_ms']:.1f} ms",
                    "met": bool(x >= TARGET_BATCHING_X and on["p99_ms"] < off["p99_ms"])})
    for group in ("text", "search", "image"):
        s, d = _row(rows, group, "serve", 1), _row(rows, group, "direct", 1)
        if s and d and s.get("p50_ms") is not None and d.get("p50_ms") is not None:
            added = s["p50_ms"] - d["p50_ms"]
            out.append({"target": f"{group}, 1 client: the server adds <= {TARGET_OVERHEAD_MS:g} ms p50 over the "
                                  "direct library call",
                        "figure": f"{added:+.2f} ms ({s['p50_ms']:.2f} vs {d['p50_ms']:.2f} ms)",
                        "met": bool(added <= TARGET_OVERHEAD_MS)})
    inf = _row(rows, "minilm", "infinity-torch", TARGET_CLIENTS)
    for engine in ("serve-cpu-int8", "serve-cpu-fp32"):
        s = _row(rows, "minilm", engine, TARGET_CLIENTS)
        if s and inf and s.get("throughput") and inf.get("throughput"):
            x = s["throughput"] / inf["throughput"]
            out.append({"target": f"MiniLM, {TARGET_CLIENTS} clients: crossmodal serve ({engine[6:]}) >= "
                                  f"{TARGET_INFINITY_X:g}x infinity's throughput at a lower p99",
                        "figure": f"{x:.2f}x ({s['throughput']:.0f} vs {inf['throughput']:.0f} req/s), p99 "
                                  f"{s['p99_ms']:.1f} vs {inf['p99_ms']:.1f} ms",
                        "met": bool(x >= TARGET_INFINITY_X and s["p99_ms"] < inf["p99_ms"])})
    return out


def _f(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if x < 1000 else f"{x:.0f}"


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    model = result.get("model", {})
    rows = result.get("rows", [])
    lines = ["# crossmodal serve: load benchmark", "",
             f"Command: `{result['command']}`  ",
             f"{cpu_line(result)}; Python {env['python']}, onnxruntime {env['packages'].get('onnxruntime')}.  ",
             f"Run: {result['started']} UTC, {result.get('elapsed_s', 0):.0f} s, load average at start "
             f"{env.get('load_average_at_start')}.  ",
             f"Model for (a)-(c): {model.get('description', '-')}.", ""]
    if model.get("random_weights"):
        lines += ["Random weights: latency does not depend on weight values (same shapes, same operations), so "
                  "these figures hold for the trained CLIP ViT-B/32.", ""]
    lines += ["Server and load generator are separate processes on the same machine (loopback): the client's CPU "
              "use competes with the server's, as it would for a sidecar. Closed loops: each client sends its next "
              "request when the previous one is answered; warm-up excluded; req/s counts successful requests. "
              "Peak RSS is the server process's (for `direct`, the process calling the library).", ""]
    for group in ("text", "image", "search", "minilm"):
        part = [r for r in rows if r["group"] == group]
        if not part:
            continue
        lines += [f"## {TITLES[group]}", "", cpu_line(result), "",
                  "| engine | clients | req/s | p50 ms | p95 ms | p99 ms | errors | peak RSS MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in part:
            lines.append(f"| {r['engine']} | {r['concurrency']} | {_f(r.get('throughput'))} | {_f(r.get('p50_ms'), 2)} | "
                         f"{_f(r.get('p95_ms'), 2)} | {_f(r.get('p99_ms'), 2)} | {r['errors']} | {_f(r['peak_rss_mb'], 0)} |")
        engines = dict.fromkeys(r["engine"] for r in part)
        lines += [""] + [f"- `{e}`: {ENGINE_NOTES.get(e, e)}" for e in engines] + [""]
    if result.get("infinity"):
        inf = result["infinity"]
        lines += [f"infinity-emb {inf.get('version')} with torch {inf.get('torch')} in its own venv ({inf.get('venv')}).", ""]
    if result.get("overload"):
        lines += ["## Overload: open loop at 4x the sustained rate", "", cpu_line(result), "",
                  "| workload | sustained req/s | offered req/s | seconds | max queue | 2xx | 429 | 429 p50 / p99 ms | "
                  "2xx p99 ms | other | unanswered | RSS idle -> peak MiB | alive | exit |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for o in result["overload"]:
            st = o["by_status"]
            s429 = st.get("429", {})
            ok_p99 = max((v["p99_ms"] for k, v in st.items() if k.startswith("2")), default=None)
            other = sum(v["n"] for k, v in st.items() if not k.startswith("2") and k not in ("429", "0"))
            lines.append(f"| {o['workload']} | {_f(o['sustained_rate'])} | {_f(o['offered_rate'])} | {_f(o['seconds'])} | "
                         f"{o['max_queue']} | {o['ok']} | {s429.get('n', 0)} | {_f(s429.get('p50_ms'), 2)} / "
                         f"{_f(s429.get('p99_ms'), 2)} | {_f(ok_p99)} | {other} | {o['unanswered']} | "
                         f"{_f(o['idle_rss_mb'], 0)} -> {_f(o['peak_rss_mb'], 0)} | {'yes' if o['alive_after'] else 'NO'} | "
                         f"{o['exit_code']} |")
        lines += ["", "`other`: answers besides 2xx and 429 (504 past the deadline, 5xx); `unanswered`: no HTTP answer "
                  "at all (connection error or client timeout). `exit`: the server's exit code on SIGTERM afterwards.",
                  ""]
    if result.get("targets"):
        lines += ["## Targets (issue 12)", "", cpu_line(result), "", "| target | measured | met |", "|---|---|---|"]
        for t in result["targets"]:
            lines.append(f"| {t['target']} | {t['figure']} | {'yes' if t['met'] else '**no**'} |")
        lines.append("")
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Throughput (top) and p99 latency (bottom) against concurrent clients, one column per workload."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = result.get("rows", [])
    groups = [g for g in ("text", "image", "search", "minilm") if any(r["group"] == g for r in rows)]
    if not groups:
        return None
    fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 7), squeeze=False)
    for col, group in enumerate(groups):
        part = [r for r in rows if r["group"] == group]
        for engine in dict.fromkeys(r["engine"] for r in part):
            pts = sorted((r["concurrency"], r.get("throughput"), r.get("p99_ms")) for r in part if r["engine"] == engine)
            xs = [p[0] for p in pts if p[1]]
            axes[0][col].plot(xs, [p[1] for p in pts if p[1]], marker="o", label=engine)
            axes[1][col].plot(xs, [p[2] for p in pts if p[1]], marker="o", label=engine)
        axes[0][col].set_title(SHORT_TITLES[group], fontsize=10)
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.grid(True, alpha=0.3)
        axes[1][col].set_yscale("log")
        axes[0][col].set_ylabel("requests / s")
        axes[1][col].set_ylabel("p99 latency, ms")
        axes[0][col].legend(fontsize=8)
    cpu = result["environment"]["cpu"]
    fig.suptitle(f"crossmodal serve under load: {cpu['model']} ({', '.join(cpu['flags'])}), "
                 f"{result['environment']['threads']} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: dict[str, Any], out: Path, *, make_plot: bool = True) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "serve.json", "markdown": out / "serve.md"}
    if make_plot:
        p = plot(result, out / "serve.png")
        if p is not None:
            paths["plot"] = p
    dump_json(paths["json"], result)
    paths["markdown"].write_text(markdown(result), encoding="utf-8")
    return paths


__all__ = ["write", "markdown", "plot", "targets", "cpu_line"]
