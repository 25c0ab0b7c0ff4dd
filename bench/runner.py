"""Fresh worker processes, alternating engines, so machine noise hits every engine alike.

For ``processes`` rounds, every engine of a scenario runs its job once in a
new Python process; the engine order rotates each round (round 0: A B C,
round 1: B C A, ...) so that no engine always runs first or right after the
heaviest one. Results are collected per engine and summarised as the median
of the per-process medians.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from crossmodal.errors import CrossmodalError


class WorkerError(CrossmodalError):
    """A benchmark worker process failed; the message carries the tail of its stderr."""


@dataclass
class Runner:
    """Starts workers with a fixed thread count and logs what it does."""

    threads: int
    log: Callable[[str], None] = print
    timeout_s: float = 1800.0
    spawned: int = field(default=0)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Every engine gets the same thread budget; OMP/MKL read these at import.
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[k] = str(self.threads)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["TRANSFORMERS_VERBOSITY"] = "error"
        env["HF_HUB_OFFLINE"] = "1"
        return env

    def run_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one job in a fresh process and return its parsed result."""
        job = {**job, "threads": self.threads}
        if job.get("kind") == "cold":
            job["t_spawn"] = time.time()
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "crossmodal.bench.worker"], input=json.dumps(job), capture_output=True,
            text=True, env=self.env(), timeout=self.timeout_s,
        )
        self.spawned += 1
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise WorkerError(f"benchmark worker ({job.get('kind')}, {job.get('engine')}) exited with "
                              f"{proc.returncode}:\n{tail}")
        result = json.loads(lines[-1][len("RESULT "):])
        result["wall_s"] = time.perf_counter() - t0
        return result

    def alternate(self, jobs: dict[str, dict[str, Any]], processes: int, what: str) -> dict[str, list[dict[str, Any]]]:
        """Run every engine's job ``processes`` times in rotating order; results per engine."""
        engines = list(jobs)
        out: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
        for r in range(processes):
            order = engines[r % len(engines):] + engines[:r % len(engines)]
            for engine in order:
                job = dict(jobs[engine])
                if job.get("outputs"):
                    # Outputs are only needed once per engine (they are deterministic).
                    job["outputs"] = job["outputs"] if r == 0 else None
                res = self.run_job(job)
                self.log(f"  {what} round {r + 1}/{processes} {engine}: {res['wall_s']:.1f} s")
                out[engine].append(res)
        return out


def merge_cases(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per case: the metadata of the first process and the list of per-process latency lists."""
    merged: dict[str, dict[str, Any]] = {}
    for res in results:
        for name, case in res["cases"].items():
            m = merged.setdefault(name, {k: v for k, v in case.items() if k != "ms"} | {"per_process_ms": []})
            if "ms" in case:
                m["per_process_ms"].append(case["ms"])
    return merged


def dump_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


__all__ = ["Runner", "WorkerError", "merge_cases", "dump_json"]
