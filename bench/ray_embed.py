"""Ray Data embedding vs ``crossmodal index build`` on this machine: images/s with 1 and 2 actors.

    python -m crossmodal.bench.ray_embed                   # 2,000 640x480 JPEGs, ViT-B/32 (random weights)
    python -m crossmodal.bench.ray_embed --quick           # smoke: tiny model, 60 images (figures mean nothing)

Each configuration is one CLI run in a fresh process on the same folder, into a new index:
``index build`` (decode threads + one onnxruntime session using every core), then
``index build --ray`` with one actor holding every CPU and with one actor per CPU (each
starts its own local Ray cluster, as a user's first run does). Reported per run: the wall
time from process start to a saved index, the steady images/s (for Ray: rows between the
first and the last shard written, from the shard files' mtimes; for ``index build``: its
own report, which excludes the model load), the 1-minute load average when it started, and
Ray's fixed costs: starting the cluster,
the job (actors loading the bundle, then embedding), importing the shards, and the rest
(Python start, walking the folder, creating the index). Inputs are cached in ``--work``. Not a test: a
measurement, written to ``OUT/ray_embed.json`` and ``OUT/ray_embed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import fixtures
from .env import environment


def _cli(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run ``crossmodal ARGS --json`` in a fresh process: (its JSON report, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "crossmodal.cli", *args, "--no-progress", "--json"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"crossmodal {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def _steady_rate(shards_dir: Path) -> float | None:
    """Rows per second between the first and the last shard file written (mtimes)."""
    from crossmodal.distributed.shards import read_shard_meta

    files = sorted(shards_dir.glob("shard-*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    if len(files) < 3:
        return None
    span = (files[-1].stat().st_mtime_ns - files[0].stat().st_mtime_ns) / 1e9
    rows = sum(read_shard_meta(f).rows for f in files[1:])
    return rows / span if span > 0 else None


def _one(common: list[str], scratch: Path, actors: int, cpus: int, shard_size: int) -> dict[str, Any]:
    if actors == 0:
        report, wall = _cli(["index", "build", *common, "--out", str(scratch / "idx")])
        return {"config": "crossmodal index build (no Ray)", "actors": 0, "wall_s": wall,
                "steady_images_per_s": report["images_per_second"], "added": report["added"]}
    shards = scratch / "shards"
    report, wall = _cli(["index", "build", *common, "--out", str(scratch / "idx"), "--ray", "--shards-dir",
                         str(shards), "--shard-size", str(shard_size), "--actors", str(actors),
                         "--cpus-per-actor", str(cpus)])
    emb = report["embedding"]
    return {"config": f"index build --ray, {actors} actor(s) x {cpus} CPU", "actors": actors, "wall_s": wall,
            "steady_images_per_s": _steady_rate(shards), "added": report["added"],
            "ray_start_s": emb["ray_start_seconds"], "ray_job_s": emb["seconds"] - emb["ray_start_seconds"],
            "import_s": report["seconds"], "rest_s": wall - emb["seconds"] - report["seconds"]}


def run(out: Path, work: Path, *, quick: bool, n_images: int, variant: str, shard_size: int,
        bundle: Path | None, rounds: int = 1) -> dict[str, Any]:
    cores = os.cpu_count() or 2
    photos = work / f"ray-photos-640x480-{n_images}"
    fixtures.write_photos(photos, n_images, size=(640, 480))
    if bundle is None:
        bundle = fixtures.prepare_model(work, quick=quick, model=None, photos=work / "photos").bundle
    model = json.loads((bundle / "bundle.json").read_text())
    scratch = work / "ray-embed-runs"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    common = [str(bundle), "--images", str(photos), "--variant", variant, "--batch-size", "32"]
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()

    configs = [(0, 0), (1, cores), (cores, 1)]  # (actors, CPUs per actor); 0 actors: no Ray
    for round_no in range(rounds):
        # Alternate the order so that a change of load on a shared machine hits every configuration.
        for actors, cpus in (configs if round_no % 2 == 0 else configs[::-1]):
            load = round(os.getloadavg()[0], 1)
            rows.append({"round": round_no + 1, "load_average_at_start": load,
                         **_one(common, scratch / f"r{round_no}-{actors}", actors, cpus, shard_size)})
    for r in rows:
        r["end_to_end_images_per_s"] = n_images / r["wall_s"]
    return {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images": n_images, "image_size": "640x480 JPEG (synthetic photos, quality 90)",
        "model": f"{model['name']} ({'tiny, random weights' if quick else 'ViT-B/32 sizes, random weights'})",
        "variant": variant, "shard_size": shard_size, "batch_size": 32,
        "environment": environment(threads=cores), "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "rows": rows,
    }


def markdown(res: dict[str, Any]) -> str:
    cpu = res["environment"]["cpu"]
    lines = [f"Ray Data embedding vs `crossmodal index build`: {res['images']} {res['image_size']}, "
             f"{res['model']}, {res['variant']}, batch {res['batch_size']}, shards of {res['shard_size']}.",
             f"CPU: {cpu['model']}, {cpu['logical_cores']} logical cores, flags {' '.join(cpu['flags'])}; "
             f"load average before/after {res['load_average_before'][0]}/{res['load_average_after'][0]}.", "",
             "| round | load | configuration | wall (s) | images/s end to end | images/s steady | Ray start (s) | "
             "Ray job (s) | import (s) | rest (s) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v: Any, digits: int = 1) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    for r in res["rows"]:
        lines.append(f"| {r['round']} | {r['load_average_at_start']} | {r['config']} | {f(r['wall_s'])} | {f(r['end_to_end_images_per_s'])} | "
                     f"{f(r['steady_images_per_s'])} | {f(r.get('ray_start_s'))} | {f(r.get('ray_job_s'))} | "
                     f"{f(r.get('import_s'), 2)} | {f(r.get('rest_s'))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossmodal.bench.ray_embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random model and 60 images (a smoke run)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory (default bench/results)")
    p.add_argument("--work", type=Path, help="cache for the model, bundle and photos (default OUT/.work)")
    p.add_argument("--bundle", type=Path, help="bundle to embed with (default: the bench's ViT-B/32 or tiny model)")
    p.add_argument("--images", type=int, help="number of 640x480 JPEGs (default 2000; --quick 60)")
    p.add_argument("--variant", default="cpu-int8", help="bundle variant (default cpu-int8)")
    p.add_argument("--shard-size", type=int, help="images per shard (default 100; --quick 10)")
    p.add_argument("--rounds", type=int, default=1,
                   help="runs of every configuration, in alternating order (default 1)")
    args = p.parse_args(argv)
    out: Path = args.out
    work: Path = args.work or out / ".work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    res = run(out, work, quick=args.quick, n_images=args.images or (60 if args.quick else 2000),
              variant=args.variant, shard_size=args.shard_size or (10 if args.quick else 100), bundle=args.bundle,
              rounds=args.rounds)
    (out / "ray_embed.json").write_text(json.dumps(res, indent=2) + "\n")
    table = markdown(res)
    (out / "ray_embed.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
