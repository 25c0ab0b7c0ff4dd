"""Run candidate graphs with onnxruntime on the CPU: outputs for parity, medians for speed.

Export-time decisions (keep a graph rewrite or not, which int8 recipe) are made
by measurement on this machine, with these two helpers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from crossmodal.session import make_session

from .memory import release
from .parity import Parity, compare, merge


def ort_outputs(model_path: Path, feeds: Sequence[Mapping[str, NDArray]], threads: int | None = None) -> list[list[NDArray]]:
    """All outputs of the graph for every feed (CPU provider)."""
    sess = make_session(model_path, "cpu-fp32", threads=threads, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return [sess.run(None, {k: v for k, v in feed.items() if k in names}) for feed in feeds]


def parity_against(
    reference: Sequence[Sequence[NDArray]], model_path: Path, feeds: Sequence[Mapping[str, NDArray]], output: int = 0
) -> Parity:
    """Worst-case parity of output ``output`` over all feeds."""
    got = ort_outputs(model_path, feeds)
    release()  # the session is gone; its memory goes back before the next candidate is loaded
    return merge([compare(np.asarray(r[output]), np.asarray(g[output])) for r, g in zip(reference, got)])


def median_latency_ms(model_path: Path, feed: Mapping[str, NDArray], *, repeats: int = 10, threads: int | None = None) -> float:
    """Median wall time of one run after one warm-up run."""
    sess = make_session(model_path, "cpu-fp32", threads=threads, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    feed = {k: v for k, v in feed.items() if k in names}
    sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))
