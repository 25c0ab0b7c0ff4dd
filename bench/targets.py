"""The targets of issues 7, 5 and 15, checked against one run's rows (ratios within the same run).

Issue 15's targets are multiples of this machine's own floor (``crossmodal.bench.roofline``),
so they mean the same on any CPU; issue 7's are ratios to PyTorch in the same run.
"""

from __future__ import annotations

from typing import Any

from .report import fmt_ms

INT8 = "crossmodal-cpu-int8"


def _rows(result: dict[str, Any], scenario: str, engine: str | None = None) -> list[dict[str, Any]]:
    return [r for r in result["rows"] if r["scenario"] == scenario and (engine is None or r["engine"] == engine)]


def _fid(r: dict[str, Any]) -> str:
    f = r.get("fidelity")
    return f", min cos {f['min_cos']:.4f}" if f else ""


def _floor_target(target: str, r: dict[str, Any], limit: float, case: str) -> dict[str, Any]:
    return {"target": target, "met": r["x_floor"] <= limit,
            "measured": f"{r['x_floor']:.2f}x floor ({case}: {fmt_ms(r['p50_ms'])} ms, floor {fmt_ms(r['floor_ms'])} ms)"
                        f"{_fid(r)}"}


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target that this run measured: what it asks, what was measured, met or not."""
    out: list[dict[str, Any]] = []
    quick = result.get("settings", {}).get("quick")

    img = [r for r in _rows(result, "a", INT8) if r.get("tower") == "image" and r.get("p50_ms")]
    if img:
        best = min(img, key=lambda r: r["p50_ms"] / r["batch"])
        per16 = best["p50_ms"] / best["batch"] * 16
        xf, xb = best.get("x_torch_fp32") or 0, best.get("x_torch_bf16") or 0
        if best.get("x_floor"):
            out.append(_floor_target("CLIP image int8 at its best batch: <= 1.5x its int8 floor (issue 15)", best, 1.5,
                                     f"batch {best['batch']}"))
        if "x_torch_fp32" in best:  # runs without the PyTorch engines measure no ratio to them
            out.append({"target": "CLIP image int8, best batch: >= 8x torch fp32, >= 2.5x torch bf16 (issue 7)",
                        "measured": f"{per16:.0f} ms per 16 images at batch {best['batch']}; {xf:.2f}x torch fp32, "
                                    f"{xb:.2f}x torch bf16{_fid(best)}",
                        "met": xf >= 8 and xb >= 2.5})
    txt = [r for r in _rows(result, "a", INT8) if r.get("tower") == "text" and r.get("batch") == 1]
    for r in txt:
        xb = r.get("x_torch_bf16") or 0
        if r.get("x_floor"):
            out.append(_floor_target("CLIP text int8, batch 1, ~12 tokens: <= 3x its floor (issue 15)", r, 3.0,
                                     f"{r.get('tokens')} tokens"))
        if "x_torch_bf16" in r:
            out.append({"target": "CLIP text int8, batch 1, ~12 tokens: p50 <= 1.5 ms and >= 7x torch bf16 (issue 7)",
                        "measured": f"{r['p50_ms']:.2f} ms at {r.get('tokens')} tokens; {xb:.2f}x torch bf16, "
                                    f"{(r.get('x_torch_fp32') or 0):.2f}x torch fp32{_fid(r)}",
                        "met": r["p50_ms"] <= 1.5 and xb >= 7})
    for r in [r for r in result["rows"] if r["scenario"] == "b" and r["engine"].startswith(INT8)]:
        x = r.get("x_torch_fp32") or 0
        fx = r.get("fidelity_vs_exact_decode")
        note = f", {fx['min_cos']:.4f} min cos to the exact decode" if fx else ""
        out.append({"target": f"images end to end from JPEG: >= 6x the PyTorch pipeline (images/s) [{r['engine']}]",
                    "measured": f"{r['items_per_s']:.1f} images/s, {x:.2f}x{_fid(r)}{note}",
                    "met": x >= 6 and (fx is None or fx["min_cos"] >= 0.999)})
    q = [r for r in _rows(result, "c", INT8) if r.get("p50_ms")]
    if q:
        r = max(q, key=lambda r: r["n"])
        out.append({"target": "text query end to end (tokenise + encode + top-10 over 1M): p50 <= 3 ms",
                    "measured": f"{r['p50_ms']:.2f} ms over {r['n']:,} vectors (recall@10 {r.get('hnsw_recall_at_10') or 0:.3f}), "
                                f"{(r.get('x_torch_fp32') or 0):.2f}x torch fp32{_fid(r)}",
                    "met": r["p50_ms"] <= 3.0 and r["n"] >= 1_000_000})
    for r in _rows(result, "d", INT8):
        x = r.get("x_torch_fp32") or 0
        out.append({"target": "cold start to first embedding <= 1/4 of transformers",
                    "measured": f"{r['first_embedding_s']:.2f} s, 1/{x:.1f} of transformers{_fid(r)}", "met": x >= 4})
    for r in _rows(result, "e", INT8):
        x = r.get("x_torch_fp32") or 0
        out.append({"target": "peak RSS of int8 runtime with both towers <= 1/3 of PyTorch",
                    "measured": f"{r['peak_rss_mb']:.0f} MB, 1/{x:.1f} of PyTorch", "met": x >= 3})
    for r in _rows(result, "g"):
        if r["engine"] != "cpu-int8":
            continue
        out.append({"target": "int8 fidelity on trained all-MiniLM-L6-v2: min cos >= 0.995, top-1 agreement >= 98%",
                    "measured": f"min cos {r['min_cos']:.5f}, mean {r['mean_cos']:.5f}, top-1 {100 * r['top1_agreement']:.1f}% "
                                f"over {r['captions']} captions (recipe {r.get('recipe')}), batch-1 p50 {r.get('p50_ms') or 0:.2f} ms",
                    "met": r["min_cos"] >= 0.995 and r["top1_agreement"] >= 0.98})
    for r in _rows(result, "h"):
        if r["case"] != "random-512 f32":
            continue
        out.append({"target": "index: recall@10 >= 0.99 at the default settings on 100k random unit vectors (issue 5)",
                    "measured": f"default search ({r['default_search']}) {r['default_recall']:.4f} over {r['n']:,} x "
                                f"{r['dim']}, {r['exact_single_ms']:.1f} ms per single query; the HNSW graph alone "
                                f"{r['recall']:.4f} at ef {r['settings']['expansion_search']}",
                    "met": r["default_recall"] >= 0.99 and r["n"] >= 100_000})
    if quick:
        for t in out:
            t["met"] = None  # tiny models: the targets do not apply
    return out


__all__ = ["evaluate"]
