"""Cost and exactness of caption fusion and hybrid ranking per query (issue 13).

    python -m crossmodal.bench.fusion_cost [--n 20000] [--dim 512] [--queries 50] [--out DIR]

Two collections of ``n`` images with one caption each, random unit vectors (seeded), 6
words per caption from a 1,000-word vocabulary:

* ``independent``: caption vectors unrelated to their images, so the image and caption
  rankings disagree (the worst case: the caption walk and a deeper round run);
* ``correlated``: caption = image + noise, as a trained dual encoder's captions relate to
  their images.

Queries are given as vectors (no encoder: the figures are the index's and the fusion's
cost) near ``--queries`` probe images, with 3 of the probe caption's words as the keyword
text for hybrid. Each query is timed plain, ``fuse="captions"`` (weighted, w = 0.5),
``fuse_mode="rrf"`` and ``hybrid=True``, k = 10, exact search, after one untimed warm-up
query. ``agree`` counts the queries whose weighted fused top 10 equals the rule computed
over every image in numpy (0.5 * image cosine + 0.5 * caption cosine). HNSW graphs are
built with cheap settings (connectivity 8, expansion_add 16): the searches here are exact
scans and do not read the graph. Not a unit test: run it by hand (under ``nice`` on a
shared machine); it prints a Markdown table and writes ``fusion_cost.json`` (with the CPU,
its flags and the load average) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from ..cli.options import positive
from .env import cpu_info, versions

KINDS = ("independent", "correlated")
K = 10
WEIGHT = 0.5


def _unit(x: NDArray[Any]) -> NDArray[np.float32]:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def collection(kind: str, n: int, dim: int, queries: int) -> dict[str, Any]:
    """Images, captions (vectors and texts), query vectors and keyword texts of one collection."""
    rng = np.random.default_rng(0)
    images = _unit(rng.standard_normal((n, dim)))
    noise = _unit(rng.standard_normal((n, dim)))
    captions = noise if kind == "independent" else _unit(images + 0.8 * noise)
    words = rng.integers(0, 1000, (n, 6))
    texts = [" ".join(f"w{j}" for j in row) for row in words]
    probes = rng.choice(n, queries, replace=False)
    qvecs = _unit(images[probes] + 1.2 * _unit(rng.standard_normal((queries, dim))))
    qtexts = [" ".join(f"w{j}" for j in words[p][:3]) for p in probes]
    return {"images": images, "captions": captions, "texts": texts, "queries": qvecs, "qtexts": qtexts}


def build(path: Path, data: dict[str, Any]) -> None:
    """An index holding the collection's images (keys 0..n-1) and captions (keys n..2n-1)."""
    from crossmodal.index import Index

    n, dim = data["images"].shape
    with Index.create(path, bundle="random", space="random", dim=dim, connectivity=8, expansion_add=16) as idx:
        idx.add(data["images"], [{"path": f"img/{i}.jpg"} for i in range(n)], keys=range(n))
        idx.add(data["captions"], [{"path": f"img/{i}.jpg", "caption": t} for i, t in enumerate(data["texts"])],
                keys=range(n, 2 * n), tower="text")


def _ms_per_query(fn: Callable[[Any, str], Any], qvecs: NDArray[np.float32], qtexts: list[str]) -> float:
    fn(qvecs[0], qtexts[0])  # warm-up: scan tables, FTS pages
    t0 = time.perf_counter()
    for q, s in zip(qvecs, qtexts):
        fn(q, s)
    return (time.perf_counter() - t0) / len(qvecs) * 1e3


def measure(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds per query of each ranking, and how often the fused top k is the rule's."""
    from crossmodal.index import Index
    from crossmodal.retriever import Retriever

    n, dim = data["images"].shape
    # Queries come as vectors: the retriever only checks the stand-in's space and dim.
    encoder = SimpleNamespace(bundle=SimpleNamespace(space="random", name="random"), dim=dim)
    qvecs, qtexts = data["queries"], data["qtexts"]
    with Index.open(path, read_only=True) as idx:
        idx.warm_up()
        r = Retriever(encoder, idx)  # type: ignore[arg-type]
        cases: dict[str, Callable[[Any, str], Any]] = {
            "plain": lambda q, s: r.search_text(s, k=K, vectors=q),
            "fuse weighted": lambda q, s: r.search_text(s, k=K, vectors=q, fuse="captions", fuse_weight=WEIGHT),
            "fuse rrf": lambda q, s: r.search_text(s, k=K, vectors=q, fuse="captions", fuse_mode="rrf"),
            "hybrid": lambda q, s: r.search_text(s, k=K, vectors=q, hybrid=True),
        }
        ms = {name: round(_ms_per_query(fn, qvecs, qtexts), 2) for name, fn in cases.items()}
        got = [[h.key for h in r.search_text(s, k=K, vectors=q, fuse="captions", fuse_weight=WEIGHT)]
               for q, s in zip(qvecs, qtexts)]
    fused = (1 - WEIGHT) * (qvecs @ data["images"].T) + WEIGHT * (qvecs @ data["captions"].T)
    want = [[int(i) for i in np.argsort(-row, kind="stable")[:K]] for row in fused]
    return {"ms_per_query": ms, "agree": sum(g == w for g, w in zip(got, want)), "queries": len(qvecs),
            "shared_hits": sum(len(set(g) & set(w)) for g, w in zip(got, want)) / (K * len(want))}


def run(n: int, dim: int, queries: int, work: Path) -> dict[str, Any]:
    """Build and measure both collections in ``work``; the result with the machine's description."""
    load_before = os.getloadavg()
    rows = {}
    for kind in KINDS:
        data = collection(kind, n, dim, queries)
        path = work / f"{kind}.idx"
        build(path, data)
        rows[kind] = measure(path, data)
    return {"n": n, "dim": dim, "k": K, "weight": WEIGHT, "rows": rows, "cpu": cpu_info(), "versions": versions(),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def table(result: dict[str, Any]) -> str:
    """The result as a Markdown table (ms per query, agreement with the rule)."""
    names = list(next(iter(result["rows"].values()))["ms_per_query"])
    lines = ["| captions | " + " | ".join(f"{c} (ms)" for c in names) + " | weighted top 10 = rule |",
             "|---|" + "---:|" * (len(names) + 1)]
    for kind, row in result["rows"].items():
        cells = " | ".join(f"{row['ms_per_query'][c]:.1f}" for c in names)
        lines.append(f"| {kind} | {cells} | {row['agree']} of {row['queries']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossmodal.bench.fusion_cost", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=positive, default=20_000, help="images (and captions) per collection (default 20000)")
    p.add_argument("--dim", type=positive, default=512, help="vector dimension (default 512)")
    p.add_argument("--queries", type=positive, default=50, help="queries per collection (default 50)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for fusion_cost.json")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="crossmodal-fusion-cost-"))
    try:
        result = run(args.n, args.dim, args.queries, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_cost.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\n{result['cpu'].get('model', '?')}; load average {result['loadavg_before'][0]:.1f} before, "
          f"{result['loadavg_after'][0]:.1f} after.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
