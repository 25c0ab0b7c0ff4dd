"""``crossmodal bench``: crossmodal vs PyTorch, measured in one run, written as JSON, markdown and PNG.

Examples::

    crossmodal bench --quick --out /tmp/bench            # CI smoke: tiny model, seconds
    crossmodal bench                                    # full-size CLIP ViT-B/32 (random weights), all scenarios
    crossmodal bench --model /models/clip-vit-base-patch32 --scenarios a,b
    crossmodal bench --scenarios g                      # int8 fidelity on trained all-MiniLM-L6-v2
    crossmodal bench --scenarios h                      # index recall@10 at 100k vectors (HNSW, exact, default)
    crossmodal bench --scenarios serve --out docs/bench # `crossmodal serve` under load (crossmodal.bench.serve_load)
    crossmodal bench --scenarios text --text-towers mbert --out docs/bench   # text graphs (crossmodal.bench.text_graphs)

Every timing runs in fresh worker processes (``crossmodal.bench.worker``),
torch and onnxruntime never in the same process, engines alternating, with
``--processes`` rounds; see ``crossmodal.bench.runner``. Outputs go to
``--out`` (default ``bench/results``): ``results.json``, ``results.md``,
``latency_vs_batch.png``, ``speedup.png``; built inputs (model, bundle,
photos, vector indexes) are cached in ``--out/.work`` between runs.
"""

from __future__ import annotations

import argparse
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ..cli.options import positive
from .timing import Budget

ALL_SCENARIOS = "abcdefghr"
QUICK_SCENARIOS = "abcdefr"  # (g) exports a trained model: minutes, not CI


def _ints(s: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x.replace("_", "")) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {s!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossmodal bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI smoke: tiny random model, 1 process per engine, seconds")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory (default bench/results)")
    p.add_argument("--work", type=Path, help="cache for models, bundles, photos and indexes (default OUT/.work)")
    p.add_argument("--model", help="a real CLIP checkpoint (transformers dir, sentence-transformers clip-ViT dir or hub id "
                                   "in the local cache); default: ViT-B/32 architecture with random weights")
    p.add_argument("--scenarios", default=None,
                   help="letters of the scenarios to run: a towers, b images e2e, c text query, d cold start, "
                        "e peak RSS (with d), f installed size, g int8 fidelity on trained MiniLM, "
                        "h index recall at --recall-size vectors, r roofline: this machine's peaks and each tower's "
                        "floor, as multiples in (a)'s table (default: all; --quick: abcdefr); "
                        "'serve' (comma-separated from the letters): the HTTP service under load, "
                        "see python -m crossmodal.bench.serve_load --help; 'text': text towers of M-BERT / ALBEF / "
                        "CLIP, node counts and floor multiples (see the options below)")
    p.add_argument("--processes", type=positive, help="fresh processes per engine and scenario (default 3; --quick 1)")
    p.add_argument("--threads", type=positive, default=2, help="threads per engine (default 2)")
    p.add_argument("--image-batches", type=_ints, help="image tower batch sizes (default 1,8,16,32)")
    p.add_argument("--text-batches", type=_ints, help="text tower batch sizes (default 1,8,32)")
    p.add_argument("--index-sizes", type=_ints, help="vectors in the search index (default 10000,100000,1000000)")
    p.add_argument("--photos", type=positive, help="JPEG files for the end-to-end image scenario (default 32)")
    p.add_argument("--seconds", type=float, help="measuring time per case and process (default 2)")
    p.add_argument("--minilm", help="sentence-transformers text model for (g) (default: the installed all-MiniLM-L6-v2)")
    p.add_argument("--captions", type=positive, default=1010, help="captions for the (g) fidelity check (default 1010)")
    p.add_argument("--recall-size", type=lambda s: _ints(s)[0], default=100_000,
                   help="vectors in the (h) recall measurement (default 100000)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (matplotlib not needed)")
    text = p.add_argument_group("scenario 'text' (crossmodal.bench.text_graphs): text towers of other families, "
                                "node counts before / after the export, latency as floor multiples")
    text.add_argument("--text-towers", default="mbert,albef",
                      help="comma list of mbert, albef, clip, mclip (XLM-R base M-CLIP), each optionally NAME@INT8_RECIPE "
                           "(default mbert,albef; full-size random weights)")
    text.add_argument("--text-threads", type=_ints, default=(1, 2), help="thread counts to measure (default 1,2)")
    text.add_argument("--text-engines", default="fp32,int8,torch,graphs",
                      help="what to time: fp32 / int8 (the bundle's graphs), torch (the PyTorch module), graphs "
                           "(onnxruntime's fusion when the export did not keep it); default all")
    text.add_argument("--tokens", type=lambda s: _ints(s)[0], default=12, help="tokens per text (default 12)")
    text.add_argument("--prepare-only", action="store_true",
                      help="export the towers and count their nodes, no timing (exports take minutes: run niced)")
    text.add_argument("--recount-floors", action="store_true",
                      help="count the floors of OUT/text_graphs.json again from its recorded peaks, no timing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if "serve" in (args.scenarios or "").split(","):
        from .serve_load import run_from_bench

        run_from_bench(args, "crossmodal bench " + " ".join(shlex.quote(a) for a in argv))
        args.scenarios = ",".join(s for s in args.scenarios.split(",") if s != "serve")
        if not args.scenarios:
            return 0
    if "text" in (args.scenarios or "").split(","):
        from .text_graphs import run as run_text_graphs

        run_text_graphs(args, "crossmodal bench " + " ".join(shlex.quote(a) for a in argv))
        args.scenarios = ",".join(s for s in args.scenarios.split(",") if s != "text")
        if not args.scenarios:
            return 0
    args.scenarios = args.scenarios or (QUICK_SCENARIOS if args.quick else ALL_SCENARIOS)
    bad = set(args.scenarios) - set(ALL_SCENARIOS + ",")
    if bad:
        raise SystemExit(f"crossmodal bench: unknown scenario letter(s) {sorted(bad)}; choose from {ALL_SCENARIOS}")
    result = run(args, "crossmodal bench " + " ".join(shlex.quote(a) for a in argv))
    print(f"wrote {result['paths']['markdown']}")
    return 0


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Prepare inputs, run the chosen scenarios, write the outputs; returns the result dict."""
    from . import fixtures, report, scenarios
    from .env import environment
    from .runner import Runner
    from .targets import evaluate

    t_start = time.time()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    out: Path = args.out
    work: Path = args.work or out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    log = print
    env = environment(args.threads)
    letters = [c for c in args.scenarios if c in ALL_SCENARIOS]

    photo_size = (320, 240) if quick else (1600, 1200)
    photos = fixtures.write_photos(work / "photos", args.photos or (4 if quick else 32), photo_size)
    result: dict[str, Any] = {"command": command, "started": started, "environment": env, "rows": []}
    cfg = None
    if set(letters) & set("abcder"):
        log("preparing model and bundle (cached after the first run) ...")
        model = fixtures.prepare_model(work, quick=quick, model=args.model, photos=work / "photos")
        budget = Budget(seconds=args.seconds or (0.2 if quick else 2.0), warmup_seconds=0.05 if quick else 0.3,
                        min_runs=3 if quick else 5)
        engines = ((scenarios.TORCH_FP32, "crossmodal-cpu-int8") if quick else
                   (scenarios.TORCH_FP32, scenarios.TORCH_BF16, "crossmodal-cpu-fp32", "crossmodal-cpu-int8"))
        cfg = scenarios.Config(engines=engines,
            out=out, work=work, model=model, photos=photos, threads=args.threads,
            processes=args.processes or (1 if quick else 3),
            image_batches=args.image_batches or ((1, 4) if quick else (1, 8, 16, 32)),
            text_batches=args.text_batches or ((1, 4) if quick else (1, 8, 32)),
            index_sizes=args.index_sizes or ((1000,) if quick else (10_000, 100_000, 1_000_000)),
            e2e_batch=4 if quick else 16, budget=budget, log=log,
        )
        result["model"] = {"name": model.name, "description": model.description, "random_weights": model.random_weights,
                           "hf_dir": str(model.hf_dir), "bundle": str(model.bundle)}
        result["bundle_int8"] = _int8_recipes(model.bundle)
    else:
        result["model"] = {"name": "-", "description": "no CLIP scenario", "random_weights": False}
    result["settings"] = {"quick": quick, "scenarios": letters, "processes": cfg.processes if cfg else 1,
                          "threads": args.threads, "budget": cfg.budget.to_dict() if cfg else None}
    runner = Runner(threads=args.threads, log=log)
    steps = [("a", "towers", lambda: scenarios.scenario_towers(cfg, runner)),
             ("b", "images end to end", lambda: scenarios.scenario_image_e2e(cfg, runner)),
             ("c", "text query", lambda: scenarios.scenario_text_query(cfg, runner)),
             ("d", "cold start + peak RSS", lambda: scenarios.scenario_cold(cfg, runner)),
             ("f", "installed size", scenarios.scenario_size)]
    for letter, what, fn in steps:
        if letter in letters or (letter == "d" and "e" in letters):
            log(f"scenario ({letter}) {what} ...")
            rows = fn()
            if letter == "d" and "d" not in letters:
                rows = [r for r in rows if r["scenario"] == "e"]
            if letter == "d" and "e" not in letters:
                rows = [r for r in rows if r["scenario"] == "d"]
            result["rows"].extend(rows)
            _checkpoint(result, out, t_start, report)
    if "r" in letters and cfg is not None:
        from .roofline import scenario_roofline

        log("scenario (r) roofline: this machine's peaks and each tower's floor ...")
        result["roofline"] = scenario_roofline(cfg.model.bundle, runner, result["rows"], processes=cfg.processes,
                                               quick=quick, image_batches=cfg.image_batches, tokens=cfg.query_tokens,
                                               log=log)
        _checkpoint(result, out, t_start, report)
    if "g" in letters:
        from .fidelity import scenario_fidelity

        log("scenario (g) int8 fidelity on trained weights ...")
        result["rows"].extend(scenario_fidelity(work, runner, model=args.minilm, n_captions=args.captions,
                                                quick=quick, log=log))
    if "h" in letters:
        from .index_recall import scenario_index_recall

        log("scenario (h) index recall ...")
        result["rows"].extend(scenario_index_recall(work, n=args.recall_size, quick=quick, log=log))
        _checkpoint(result, out, t_start, report)
    result["targets"] = evaluate(result)
    result["elapsed_s"] = time.time() - t_start
    result["workers_spawned"] = runner.spawned
    paths = report.write(result, out, make_plots=not args.no_plots)
    result["paths"] = {k: str(v) for k, v in paths.items()}
    report.write(result, out, make_plots=False)  # the JSON records the plot paths too
    return result


def _checkpoint(result: dict[str, Any], out: Path, t_start: float, report: Any) -> None:
    # A long run that dies late keeps what it measured.
    result["elapsed_s"] = time.time() - t_start
    report.write(result, out, make_plots=False)


def _int8_recipes(bundle: Path) -> dict[str, Any]:
    import json

    out = {}
    for tower in ("image", "text"):
        m = bundle / tower / "cpu-int8" / "manifest.json"
        if m.is_file():
            d = json.loads(m.read_text())
            out[tower] = {**(d.get("quantization") or {}), "parity": d.get("parity")}
    return out


__all__ = ["main", "build_parser", "run"]
