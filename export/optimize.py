"""onnxruntime transformer graph fusions, kept only when parity survives them.

The fusions (Attention, SkipLayerNorm, BiasGelu, ...) are pattern rewrites, and
a rewrite that matches a pattern it does not fully understand changes the
maths silently: with ``model_type='bert'`` the CLIP text tower loses its causal
mask (cosine 0.96). So each candidate rewrite is re-checked against the
PyTorch reference and dropped, with the reason recorded, when it misses the
fp32 threshold or does not make the graph faster.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from numpy.typing import NDArray

from .measure import parity_against
from .memory import release
from .parity import Parity

log = logging.getLogger(__name__)


# Candidates whose graphs add up to more than this are timed one session at a
# time: keeping every session (weights plus a batch-16 activation arena each)
# alive at once is what made full-size exports peak at several times the model's size.
ALTERNATE_MAX_BYTES = 1 << 30


def compare_latency_ms(
    paths: Sequence[Path], feed: Mapping[str, NDArray], *, rounds: int = 5, round_seconds: float = 0.25,
    threads: int | None = None, alternate_max_bytes: int = ALTERNATE_MAX_BYTES, cpu_time: bool = False,
) -> list[float]:
    """Latency of each graph on ``feed``, robust to other load on the machine.

    Export runs on busy machines (CI runners, a laptop in use), where one
    median per graph taken at different moments compares noise as much as
    graphs. So every candidate gets a session up front, then the candidates
    run in alternating rounds (rotating order) and each keeps the *lowest* of
    its per-round medians: the round least disturbed by other load. When the
    graphs together exceed ``alternate_max_bytes``, memory wins over that
    robustness: each candidate is loaded, timed for all its rounds and released
    before the next one is loaded.

    ``cpu_time`` times the CPU time of one intra-op thread (onnxruntime then
    runs the graph on the calling thread) instead of wall time: other load on
    the machine stretches wall time but hardly the thread's own CPU time. For
    runs of a few milliseconds (a text query) wall time on a shared machine
    ranked the int8 recipes by noise: the M-BERT text export chose
    ``nbits8-fused`` at 21.8 ms over ``dynamic`` at 26.1 ms, which on the
    paused machine run 18.8 ms and 4.3 ms with one thread, 10.7 and 5.0 with
    two (docs/bench/text_graphs.md, "Side by side"): the same order.
    """
    from . import onnx_files

    total = sum(onnx_files.stored_bytes(p) for p in paths)
    if len(paths) > 1 and total > alternate_max_bytes:
        out = []
        for p in paths:
            out.extend(compare_latency_ms([p], feed, rounds=rounds, round_seconds=round_seconds, threads=threads,
                                          cpu_time=cpu_time))
        return out
    times = _alternating_rounds(paths, feed, rounds=rounds, round_seconds=round_seconds,
                                threads=1 if cpu_time else threads,
                                clock=time.thread_time if cpu_time else time.perf_counter)
    release()  # the sessions are closed; give their memory back before the next step
    return times


def _alternating_rounds(paths: Sequence[Path], feed: Mapping[str, NDArray], *, rounds: int, round_seconds: float,
                        threads: int | None, clock: Callable[[], float]) -> list[float]:
    import numpy as np

    from crossmodal.session import make_session

    sessions = []
    for p in paths:
        sess = make_session(p, "cpu-fp32", threads=threads, providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        f = {k: v for k, v in feed.items() if k in names}
        sess.run(None, f)  # warm-up: kernel selection, arena growth, page-in
        sessions.append((sess, f))
    # Size a round by the slowest candidate: about round_seconds, at least 3 runs, except that a
    # run longer than a round is timed once per round. Such runs are long against timer and
    # scheduling noise, the lowest of the rounds still drops the disturbed ones, and three per
    # round meant 17 runs per candidate: a ViT-L/14 image graph at batch 8 runs for seconds.
    t0 = time.perf_counter()
    for sess, f in sessions:
        sess.run(None, f)
    per_run = (time.perf_counter() - t0) / max(len(sessions), 1)
    reps = 1 if per_run >= round_seconds else max(3, min(200, int(round_seconds / max(per_run, 1e-6))))
    best = [float("inf")] * len(sessions)
    for r in range(rounds):
        order = list(range(len(sessions)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            sess, f = sessions[i]
            times = []
            for _ in range(reps):
                t = clock()
                sess.run(None, f)
                times.append((clock() - t) * 1e3)
            best[i] = min(best[i], float(np.median(times)))
    sessions.clear()
    return best


# The fused graph stays in the tower's workdir under this name when it keeps
# fp32 parity (even if it was not faster): the int8 step also tries it.
FUSED_FILE = "fused.onnx"


@dataclass
class OptimizeResult:
    path: Path
    rewrites: list[str]
    parity: Parity
    trials: list[dict[str, Any]] = field(default_factory=list)


def fuse_transformer(src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int) -> Path:
    """Apply onnxruntime's offline transformer fusions for ``model_type``.

    The fusions run on the graph with its large weights stubbed (``weightless.py``):
    they copy the graph at every shape inference, which with the weights in
    held about seven times the graph's size. Should a fusion need a weight's
    values, they run again on the full graph; the result is the same graph.
    A graph with external data (``onnx_files``) keeps its weights in its data
    file instead, from where a fusion reads the few it needs (onnxruntime's
    BERT attention fusion reads the Q/K/V weights, which made stubbed M-CLIP
    XLM-R Large fall back to the full graph: 16 GB).
    """
    from . import onnx_files
    from .weightless import load_without_weights

    try:
        if onnx_files.is_external(src):
            with onnx_files.weights_on_disk(src) as light:
                _optimize_model(light, dst, model_type, num_heads, hidden_size, None, base_dir=src.parent)
        else:
            light, weights = load_without_weights(src)
            _optimize_model(light, dst, model_type, num_heads, hidden_size, weights)
        return dst
    except Exception as exc:  # a fusion that reads weight values: pay the memory
        log.info("fusing %s without its weights failed (%r); fusing the full graph", src.name, exc)
    finally:
        release()
    _optimize_model(str(src), dst, model_type, num_heads, hidden_size, None)
    release()
    return dst


def _optimize_model(model: Any, dst: Path, model_type: str, num_heads: int, hidden_size: int,
                    weights: dict[str, bytes] | None, base_dir: Path | None = None) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    from . import onnx_files
    from .weightless import restore_weights

    fused = optimize_model(
        model, model_type=model_type, num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=False
    )
    if weights is not None:
        restore_weights(fused.model, weights)
    onnx_files.save_ort(fused, dst, base_dir=base_dir)


def _candidates(raw: Path, workdir: Path, options: Mapping[str, Any]) -> list[tuple[str, Path | str]]:
    """(name, graph path or failure message) for every rewrite worth trying on ``raw``."""
    out: list[tuple[str, Path | str]] = []
    ort_name = f"ort-fusion:{options['model_type']}"
    try:
        out.append((ort_name, fuse_transformer(raw, workdir / "fused-ort.onnx", options["model_type"],
                                               options["num_heads"], options["hidden_size"])))
    except Exception as exc:  # a failed optional rewrite is recorded, not fatal
        out.append((ort_name, f"fusion failed: {exc!r}"))
    # onnxruntime's fusions miss the eager attention that transformers 5 traces for
    # CLIP/ViT (they still match BERT): fuse it ourselves, then let onnxruntime fuse the rest.
    if options.get("attention_fusion", options["model_type"] in ("clip", "vit")):
        from .attention_fusion import fuse_attention

        mha = workdir / "fused-mha.onnx"
        try:
            n = fuse_attention(raw, mha, int(options["num_heads"]))
        except Exception as exc:
            out.append(("mha-fusion", f"fusion failed: {exc!r}"))
            n = 0
        if n:
            out.append(("mha-fusion", mha))
            try:
                out.append((f"mha-fusion+{ort_name}", fuse_transformer(mha, workdir / "fused-mha-ort.onnx",
                                                                      options["model_type"], options["num_heads"],
                                                                      options["hidden_size"])))
            except Exception as exc:
                out.append((f"mha-fusion+{ort_name}", f"fusion failed: {exc!r}"))
    return out


def optimize_with_parity(
    raw: Path,
    workdir: Path,
    reference: Sequence[Sequence[NDArray]],
    feeds: Sequence[Mapping[str, NDArray]],
    timing_feed: Mapping[str, NDArray],
    options: Mapping[str, Any] | None,
    min_cosine: float,
    max_abs: float,
) -> OptimizeResult:
    """Return the fastest graph among ``raw`` and its fused rewrites that keeps parity.

    The fastest rewrite that keeps parity is also left in ``workdir`` as
    ``FUSED_FILE`` (even when it is not faster than ``raw`` in fp32), so the
    int8 step can try its recipes on it.
    """
    from . import onnx_files

    base_parity = parity_against(reference, raw, feeds)
    best = OptimizeResult(raw, [], base_parity)
    if not options:
        return best
    trials: list[dict[str, Any]] = []
    kept: list[tuple[str, Path, Parity, dict[str, Any]]] = []
    for name, graph in _candidates(raw, workdir, options):
        if isinstance(graph, str):
            trials.append({"rewrite": name, "rejected": graph})
            continue
        p = parity_against(reference, graph, feeds)
        trial: dict[str, Any] = {"rewrite": name, **p.to_dict()}
        trials.append(trial)
        if p.min_cosine < min_cosine or p.max_abs > max_abs:
            trial["rejected"] = f"parity lost (min cosine {p.min_cosine:.6f}, max abs {p.max_abs:.2e})"
        else:
            kept.append((name, graph, p, trial))
    base_trial: dict[str, Any] = {"rewrite": "none", **base_parity.to_dict()}
    if kept:
        times = compare_latency_ms([raw] + [k[1] for k in kept], timing_feed)
        base_trial["ms"] = round(times[0], 3)
        for (name, graph, p, trial), ms in zip(kept, times[1:]):
            trial["ms"] = round(ms, 3)
        fastest = min(kept, key=lambda k: k[3]["ms"])
        # Moved, not copied: one file serves both uses (a copy was 2.2 GB more disk for XLM-R Large).
        fused = onnx_files.move(fastest[1], workdir / FUSED_FILE)
        for name, graph, p, trial in kept:
            if trial["ms"] > times[0] * 0.98:
                trial["rejected"] = f"not faster ({trial['ms']:.2f} ms vs {times[0]:.2f} ms unfused)"
            elif name != fastest[0]:
                trial["rejected"] = f"slower than {fastest[0]}"
        if "rejected" not in fastest[3]:
            best = OptimizeResult(fused, [fastest[0]], fastest[2])
    best.trials = [base_trial] + trials
    for t in trials:
        log.info("graph rewrite %s: %s", t["rewrite"], t)
    return best
