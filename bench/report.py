"""Result files of one run: ``results.json``, ``results.md`` and PNG plots.

Every latency in the markdown table sits next to its fidelity figure (min
cosine to PyTorch fp32 on the very inputs that were timed): a fast but wrong
variant cannot hide.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .scenarios import TORCH_BF16, TORCH_FP32

SCENARIO_TITLES = {
    "a": "(a) Towers alone (prepared inputs)",
    "b": "(b) Images end to end from JPEG files (decode + preprocess + encode)",
    "c": "(c) Text query end to end (tokenise + encode + top-10 HNSW search)",
    "d": "(d) Cold start: fresh process, import + load both towers + first text and image embedding",
    "e": "(e) Peak RSS per process (both towers loaded, after a batch of 16 images + 16 texts)",
    "f": "(f) Installed size",
    "g": "(g) int8 fidelity on trained weights",
    "h": "(h) Index search: recall@10 against a float64 exact scan, and latency (2 cores shared)",
}


def _f(x: Any, fmt: str = "{:.3g}") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return fmt.format(x)
    return str(x)


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _fid(row: dict[str, Any]) -> str:
    fid = row.get("fidelity")
    if row["engine"] == TORCH_FP32:
        return "reference"
    if not fid:
        return "-"
    return f"{fid['min_cos']:.5f} / {fid['mean_cos']:.5f}"


def _x(row: dict[str, Any], base: str) -> str:
    v = row.get(f"x_{base.replace('-', '_')}")
    return "-" if v is None else f"{v:.2f}x"


def markdown(result: dict[str, Any]) -> str:
    """The run as markdown tables, one per scenario."""
    env = result["environment"]
    cpu = env["cpu"]
    lines = [
        f"# crossmodal benchmark: {result['model']['description']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {cpu_line(env)}; {cpu['logical_cores']} logical cores, flags {', '.join(cpu['flags'])}; "
        f"{env['threads']} threads per engine; {result['settings']['processes']} fresh processes per engine, alternating; "
        f"onnxruntime {env['packages'].get('onnxruntime')}, torch {env['packages'].get('torch')}, "
        f"transformers {env['packages'].get('transformers')}.  ",
        f"Run: {result['started']} UTC, {result['elapsed_s']:.0f} s, load average at start {env.get('load_average_at_start')}.",
        "",
    ]
    if result["model"]["random_weights"]:
        lines += ["Random weights: latencies are those of the full-size architecture; fidelity on random weights is "
                  "optimistic (about 10x less int8 error than trained weights), see (g) for trained weights.", ""]
    lines += ["Fidelity = min / mean cosine of each embedding to the PyTorch fp32 embedding of the same input "
              "(the inputs that were timed). Latency = median over processes of the per-process median.", ""]
    rows = result["rows"]
    # Every table names the CPU: a figure read alone must still say what machine it is from.
    caption = [f"_{cpu_line(env)}, {env['threads']} threads._", ""]
    if result.get("roofline"):
        lines += roofline_section(result["roofline"], caption)
    for sc in "abcdefgh":
        part = [r for r in rows if r["scenario"] == sc]
        if not part:
            continue
        lines += [f"## {SCENARIO_TITLES[sc]}", "", *caption]
        if sc in "ac":
            floors = sc == "a" and any(r.get("floor_ms") for r in part)
            lines += ["| case | engine | p50 ms | p95 ms | p99 ms | items/s | vs torch fp32 | vs torch bf16 | fidelity min / mean cos |"
                      + (" top-10 same as torch | HNSW recall@10 |" if sc == "c" else "")
                      + (" floor ms | x floor |" if floors else ""),
                      "|---|---|---:|---:|---:|---:|---:|---:|---|" + ("---:|---:|" if sc == "c" or floors else "")]
            for r in part:
                label = _case_label(r)
                extra = (f" {_f(r.get('top10_overlap_vs_torch_fp32'), '{:.3f}')} | {_f(r.get('hnsw_recall_at_10'), '{:.3f}')} |"
                         if sc == "c" else "")
                if floors:
                    extra += (f" {fmt_ms(r.get('floor_ms'))} | "
                              f"{'-' if r.get('x_floor') is None else format(r['x_floor'], '.2f') + 'x'} |")
                lines.append(f"| {label} | {r['engine']} | {fmt_ms(r.get('p50_ms'))} | {fmt_ms(r.get('p95_ms'))} | "
                             f"{fmt_ms(r.get('p99_ms'))} | {_f(r.get('items_per_s'), '{:.1f}')} | {_x(r, TORCH_FP32)} | "
                             f"{_x(r, TORCH_BF16)} | {_fid(r)} |{extra}")
        elif sc == "b":
            lines += ["| case | engine | images/s | p50 ms per pass | vs PyTorch pipeline | fidelity min / mean cos | vs exact decode min / mean cos |",
                      "|---|---|---:|---:|---:|---|---|"]
            for r in part:
                fx = r.get("fidelity_vs_exact_decode")
                lines.append(f"| {r['images']} x {r.get('photo_size', '')}, batch {r['batch']} | {r['engine']} | "
                             f"{_f(r.get('items_per_s'), '{:.2f}')} | {fmt_ms(r.get('p50_ms'))} | {_x(r, TORCH_FP32)} | {_fid(r)} | "
                             + (f"{fx['min_cos']:.5f} / {fx['mean_cos']:.5f} |" if fx else "- |"))
        elif sc == "d":
            lines += ["| engine | first embedding (s) | per process (s) | speedup | fidelity min / mean cos |", "|---|---:|---|---:|---|"]
            for r in part:
                lines.append(f"| {r['engine']} | {r['first_embedding_s']:.2f} | {r['per_process_s']} | {_x(r, TORCH_FP32)} | {_fid(r)} |")
        elif sc == "e":
            lines += ["| engine | peak RSS MB | at first embedding MB | torch / this |", "|---|---:|---:|---:|"]
            for r in part:
                lines.append(f"| {r['engine']} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb_first_embedding']:.0f} | {_x(r, TORCH_FP32)} |")
        elif sc == "f":
            lines += ["| stack | installed MB | largest distributions |", "|---|---:|---|"]
            for r in part:
                top = ", ".join(f"{k} {v:.0f}" for k, v in list(r["detail"]["distributions"].items())[:5])
                lines.append(f"| {r['engine']} | {r['size_mb']:.0f} | {top} |")
        elif sc == "g":
            lines += ["| model | variant | recipe | min cos | mean cos | top-1 neighbour agreement | captions | batch-1 p50 ms |",
                      "|---|---|---|---:|---:|---:|---:|---:|"]
            for r in part:
                lines.append(f"| {r['model']} | {r['engine']} | {r.get('recipe', '-')} | {_f(r.get('min_cos'), '{:.5f}')} | "
                             f"{_f(r.get('mean_cos'), '{:.5f}')} | {_f(r.get('top1_agreement'), '{:.3f}')} | {r.get('captions')} | "
                             f"{fmt_ms(r.get('p50_ms'))} |")
        elif sc == "h":
            from .index_recall import markdown_rows

            lines += markdown_rows(part)
        lines.append("")
    if result.get("targets"):
        lines += ["## Targets (issues 7, 5 and 15)", "", *caption, "| target | measured | met |", "|---|---|---|"]
        for t in result["targets"]:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no' if t['met'] is False else '-'} |")
        lines.append("")
    if result.get("bundle_int8"):
        lines += ["## int8 recipes chosen at export (from the manifests)", ""]
        for tower, q in result["bundle_int8"].items():
            lines.append(f"- {tower}: `{q.get('recipe')}`, export-time trials: " +
                         "; ".join(f"{t.get('recipe')} {t.get('ms', '-')} ms min cos {_f(t.get('min_cosine'), '{:.5f}')}"
                                   + (f" (rejected: {t['rejected']})" if t.get("rejected") else "") for t in q.get("trials", [])))
        lines.append("")
    return "\n".join(lines)


def cpu_line(env: dict[str, Any]) -> str:
    """``CPU <model> (<arch>; <int8 capabilities>)``: the line every table carries."""
    cpu = env["cpu"]
    caps = cpu.get("capabilities")
    caps_text = "capabilities unknown" if caps is None else ", ".join(caps) or "no AVX2/AVX-512/VNNI/AMX/NEON"
    return f"CPU {cpu['model']} ({cpu.get('arch') or cpu.get('machine')}; {caps_text})"


def roofline_section(roof: dict[str, Any], caption: list[str]) -> list[str]:
    """Markdown of the roofline: this machine's peaks and each tower's floor."""
    p = roof["peaks"]
    lines = ["## (r) Roofline: this machine's peaks and each tower's floor", "", *caption,
             "Peaks measured with onnxruntime in fresh processes (median over processes): fp32 GEMM "
             f"({p['detail'].get('gemm')} MatMul), int8 GEMM (MatMulInteger u8 x s8, same size), memory bandwidth "
             f"(Add over {p['detail'].get('bandwidth_array_mib')} MiB, bytes read + written). Floor = int8 FLOPs / int8 "
             "peak + fp32 FLOPs / fp32 peak + weight bytes / bandwidth; FLOPs and weight bytes counted from the graph "
             "that runs, at the case's shapes (crossmodal.bench.roofline). The (a) table gives every latency as a "
             "multiple of its floor (torch fp32 against the fp32 graph's floor: the same arithmetic; none for bf16 "
             "autocast).", "",
             "| fp32 GEMM GFLOP/s | int8 GEMM GOP/s | bandwidth GB/s | threads |", "|---:|---:|---:|---:|",
             f"| {p['fp32_gflops']:.0f} | {p['int8_gops']:.0f} | {p['bandwidth_gbs']:.1f} | {p['threads']} |", "",
             "| tower | variant | batch | tokens | int8 GFLOP | fp32 GFLOP | weight MB read | floor ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for f in roof.get("floors", []):
        lines.append(f"| {f['tower']} | {f['variant']} | {f['batch']} | {f.get('tokens') or '-'} | "
                     f"{f['int8_flops'] / 1e9:.3g} | {f['fp32_flops'] / 1e9:.3g} | {f['weight_bytes'] / 1e6:.3g} | "
                     f"{fmt_ms(f['floor_ms'])} |")
    return lines + [""]


def _case_label(r: dict[str, Any]) -> str:
    if r["scenario"] == "c":
        return f"N = {r['n']:,}"
    if r.get("tower") == "text":
        return f"text, batch {r['batch']}, {r.get('tokens')} tokens"
    return f"{r.get('tower', '')}, batch {r.get('batch')}"


def plots(result: dict[str, Any], out: Path) -> list[Path]:
    """latency_vs_batch.png (per tower, per engine) and speedup.png (bars vs both PyTorch baselines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = [r for r in result["rows"] if r["scenario"] == "a" and r.get("p50_ms")]
    if rows:
        towers = [t for t in ("image", "text") if any(r["tower"] == t for r in rows)]
        fig, axes = plt.subplots(1, len(towers), figsize=(5.5 * len(towers), 4), squeeze=False)
        for ax, tower in zip(axes[0], towers):
            for engine in dict.fromkeys(r["engine"] for r in rows):
                pts = sorted((r["batch"], r["p50_ms"] / r["batch"]) for r in rows if r["tower"] == tower and r["engine"] == engine)
                fids = [r["fidelity"]["min_cos"] for r in rows
                        if r["tower"] == tower and r["engine"] == engine and r.get("fidelity")]
                label = engine + (f" (min cos {min(fids):.4f})" if fids and engine != TORCH_FP32 else "")
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel("ms per item (p50)")
            ax.set_title(f"CLIP {tower} tower, {result['environment']['threads']} threads")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "latency_vs_batch.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    bars = speedup_rows(result)
    if bars:
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(bars) + 2), 4.2))
        width = 0.38
        xs = list(range(len(bars)))
        for k, (base, color) in enumerate(((TORCH_FP32, "#888888"), (TORCH_BF16, "#4477aa"))):
            vals = [b.get(base) or 0 for b in bars]
            rects = ax.bar([x + (k - 0.5) * width for x in xs], vals, width, label=f"vs PyTorch {base.split('-')[1]}", color=color)
            ax.bar_label(rects, labels=[f"{v:.1f}x" if v else "" for v in vals], fontsize=7)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(xs, [b["label"] for b in bars], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("speedup (PyTorch p50 / crossmodal p50)")
        ax.set_title("crossmodal cpu-int8 vs PyTorch, same run")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "speedup.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written


def speedup_rows(result: dict[str, Any], engine: str = "crossmodal-cpu-int8") -> list[dict[str, Any]]:
    out = []
    for r in result["rows"]:
        if r["engine"] not in (engine, engine + "+fast-decode") or r["scenario"] not in "abcd":
            continue
        label = {"a": _case_label(r), "b": "images e2e (JPEG" + (", fast decode)" if "fast-decode" in r["engine"] else ")"), "c": f"text query, N={r.get('n', 0):,}",
                 "d": "cold start"}[r["scenario"]]
        fid = r.get("fidelity")
        if fid:  # the speed figure carries its fidelity figure, in the plot too
            label += f"\nmin cos {fid['min_cos']:.4f}"
        out.append({"label": label, TORCH_FP32: r.get("x_torch_fp32"), TORCH_BF16: r.get("x_torch_bf16")})
    return out


def write(result: dict[str, Any], out: Path, *, make_plots: bool = True) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(paths["json"])
    paths["markdown"].write_text(markdown(result))
    if make_plots:
        for p in plots(result, out):
            paths[p.stem] = p
    return paths


__all__ = ["markdown", "plots", "write", "speedup_rows", "cpu_line", "fmt_ms"]
