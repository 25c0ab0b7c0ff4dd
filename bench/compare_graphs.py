"""Several ONNX graphs of one text tower timed side by side: fresh processes, alternating, same inputs.

For what the export decides by timing (which int8 recipe, which rewrite), a check made on a quiet machine::

    python -m crossmodal.bench.compare_graphs --tower albef --out docs/bench \\
        "dynamic (export's choice)=WORK/text-towers/albef/bundle/text/cpu-int8/model.onnx" \\
        "nbits8-fused (forced)=WORK/text-towers/albef@nbits8-fused/bundle/text/cpu-int8/model.onnx"

Each graph runs in the bench worker's ``onnxruntime-graph`` engine (a session opened as the runtime opens a
cpu variant) on the inputs of an earlier ``crossmodal bench --scenarios text`` run of ``--tower`` (captions of
exactly its token count), ``--processes`` rounds per thread count; fidelity against that run's PyTorch outputs.
The result is added to ``OUT/text_graphs.json`` under ``comparisons`` and shown in ``text_graphs.md``.
"""

from __future__ import annotations

import argparse
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .timing import Budget


def compare(graphs: dict[str, Path], *, inputs: Path, reference: Path | None, work: Path, threads: Sequence[int],
            batch: int, processes: int, budget: Budget, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per graph and thread count: median and min of the per-process medians, min cosine to PyTorch."""
    from .runner import Runner, merge_cases
    from .scenarios import fidelity
    from .timing import summarize

    keys = {f"g{i}": str(p) for i, p in enumerate(graphs.values())}
    labels = dict(zip(keys, graphs))
    ref = dict(np.load(reference)).get(f"text_b{batch}") if reference and reference.is_file() else None
    rows = []
    for t in threads:
        runner = Runner(threads=t, log=log)
        jobs = {f"onnxruntime-graph:{k}": {"kind": "towers", "engine": f"onnxruntime-graph:{k}", "graphs": keys,
                                           "inputs": str(inputs), "image_batches": [], "text_batches": [batch],
                                           "budget": budget.to_dict(), "outputs": str(work / f"compare-{k}-{t}.npz")}
                for k in keys}
        for engine, results in runner.alternate(jobs, processes, f"compare {t} thread(s)").items():
            k = engine.split(":", 1)[1]
            s = summarize(merge_cases(results)[f"text_b{batch}"]["per_process_ms"])
            fid = fidelity(ref, dict(np.load(jobs[engine]["outputs"]))[f"text_b{batch}"])
            rows.append({"graph": labels[k], "path": keys[k], "threads": t, "batch": batch, "p50_ms": s["p50_ms"],
                         "min_process_ms": min(s["process_medians_ms"]), "processes": s["processes"],
                         "min_cos": None if fid is None else fid["min_cos"]})
    return rows


def add_to_result(out: Path, title: str, entry: dict[str, Any]) -> None:
    """Record a comparison in ``OUT/text_graphs.json`` and render ``text_graphs.md`` again."""
    import json

    from .text_graphs import RESULT_NAME, write

    path = out / f"{RESULT_NAME}.json"
    result = json.loads(path.read_text()) if path.is_file() else {"towers": {}}
    result.setdefault("comparisons", {})[title] = entry
    write(result, out)


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    from .env import environment

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m crossmodal.bench.compare_graphs", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("graphs", nargs="+", help="LABEL=PATH of each ONNX graph")
    p.add_argument("--tower", required=True, help="the text tower whose inputs and PyTorch outputs to use (mbert, albef, ...)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--work", type=Path, help="the bench work dir (default OUT/.work)")
    p.add_argument("--title", help="heading of the comparison (default: int8 graphs of TOWER)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--seconds", type=float, default=0.7)
    args = p.parse_args(argv)
    work = args.work or args.out / ".work"
    graphs = {}
    for item in args.graphs:
        label, sep, path = item.rpartition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"compare_graphs: expected LABEL=PATH of an existing file, got {item!r}")
        graphs[label] = Path(path)
    threads = [int(t) for t in args.threads.split(",")]
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = compare(graphs, inputs=work / f"inputs-text-{args.tower}.npz",
                   reference=work / f"text-{args.tower}-torch-fp32.npz", work=work, threads=threads, batch=args.batch,
                   processes=args.processes, budget=Budget(seconds=args.seconds, warmup_seconds=0.2, min_runs=5))
    entry = {"tower": args.tower, "started": started, "environment": environment(max(threads)), "rows": rows,
             "command": "python -m crossmodal.bench.compare_graphs " + " ".join(shlex.quote(a) for a in argv)}
    add_to_result(args.out, args.title or f"int8 graphs of {args.tower}", entry)
    for r in rows:
        print(f"{r['threads']} thread(s) {r['graph']}: {r['p50_ms']:.2f} ms (min {r['min_process_ms']:.2f}), "
              f"min cos {r['min_cos']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
