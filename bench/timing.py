"""Timing loops and statistics, shared by every worker.

A measurement excludes warm-up (the first runs pay for page faults, thread
pool start and onnxruntime's kernel selection), then repeats until the median
is stable or the time budget is spent, whichever comes first, with a floor on
the number of runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Budget:
    """How long to measure one case in one process."""

    warmup_runs: int = 2
    warmup_seconds: float = 0.3
    min_runs: int = 5
    max_runs: int = 2000
    seconds: float = 2.0
    # Stop early once the median of all runs so far and the median of the
    # first half differ by less than this (relative).
    stable: float = 0.01

    def scaled(self, factor: float) -> "Budget":
        return Budget(self.warmup_runs, self.warmup_seconds * factor, self.min_runs, self.max_runs,
                      self.seconds * factor, self.stable)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Budget":
        return cls(**d)


def measure(fn: Callable[[], object], budget: Budget) -> list[float]:
    """Latencies in milliseconds of repeated ``fn()`` calls after warm-up."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    min_runs = budget.min_runs
    if first > 0.3:
        # Slow cases (a torch batch of 32 images takes seconds): one warm-up run
        # is enough to page in weights, and 3 runs per process bound the cost.
        min_runs = min(min_runs, 3)
    else:
        t_end = time.perf_counter() + budget.warmup_seconds
        for _ in range(max(0, budget.warmup_runs - 1)):
            fn()
        while time.perf_counter() < t_end:
            fn()
    times: list[float] = []
    t_stop = time.perf_counter() + budget.seconds
    while len(times) < budget.max_runs:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        n = len(times)
        if n >= min_runs and time.perf_counter() >= t_stop:
            break
        if n >= max(min_runs, 20) and n % 10 == 0 and time.perf_counter() >= t_stop - budget.seconds / 2:
            # After half the budget, stop as soon as the median has settled.
            first, whole = float(np.median(times[: n // 2])), float(np.median(times))
            if abs(first - whole) <= budget.stable * whole:
                break
    return times


def summarize(per_process: Sequence[Sequence[float]], items_per_call: int = 1) -> dict[str, Any]:
    """Median of the per-process medians (the headline) plus pooled percentiles.

    The headline is a median of process medians because one noisy process
    (another job stealing a core) must not drag the figure; the pooled
    p95/p99 keep the tail visible.
    """
    medians = [float(np.median(t)) for t in per_process if len(t)]
    pooled = np.concatenate([np.asarray(t, float) for t in per_process if len(t)]) if medians else np.zeros(0)
    if not medians:
        return {"p50_ms": None, "runs": 0, "processes": 0}
    p50 = float(np.median(medians))
    return {
        "p50_ms": p50,
        "p95_ms": float(np.percentile(pooled, 95)),
        "p99_ms": float(np.percentile(pooled, 99)),
        "min_ms": float(pooled.min()),
        "process_medians_ms": [round(m, 4) for m in medians],
        "spread": float((max(medians) - min(medians)) / p50) if p50 > 0 else 0.0,
        "runs": int(len(pooled)),
        "processes": len(medians),
        "items_per_s": items_per_call * 1e3 / p50 if p50 > 0 else None,
    }


__all__ = ["Budget", "measure", "summarize"]
