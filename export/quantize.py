"""int8 recipes for the CPU, chosen per tower by measurement.

Recipes (all keep graph inputs/outputs in fp32/int64):

- ``nbits8``: onnxruntime MatMulNBits, 8-bit weights in blocks of 32 with
  accuracy_level 4 (int8 compute with per-block activation scales). Best
  fidelity of the int8 options on trained BERT weights and weight bytes halve
  twice over fp32, which is what batch-1 text latency is bound by.
- ``dynamic``: per-channel int8 weights, activations quantised per tensor at run
  time (MatMulInteger / DynamicQuantizeMatMul).
- ``nbits8-qkv-fp32``: ``nbits8`` with the attention Q/K/V projections kept in
  fp32 (found by their module names: query/key/value, q_proj/k_proj/v_proj).
  On the trained all-MiniLM-L6-v2 (1,010 captions): min cosine 0.9995 ->
  0.9998 and top-1 neighbour agreement 97.9 % -> 99.1 %, for about 2-9 % more
  batch-1 latency; the value projection alone is most of it.
- ``*-fused`` (``nbits8-fused``, ``dynamic-fused``, ``qdq-fused``): the same
  recipes applied to the fastest fp32 rewrite that kept parity (onnxruntime's
  transformer fusions and/or our MultiHeadAttention fusion). Where
  onnxruntime's fused Attention op holds the Q/K/V weights they stay fp32. On the trained
  all-MiniLM-L6-v2 this raises min cosine from 0.9995 to 0.9998 and top-1
  neighbour agreement from 97.9 % to 99.1 % (1,010 captions) at the same
  batch-1 latency.
- ``qdq``: static QDQ with u8 activations (onnxruntime's s8xs8 kernels have no
  VNNI path) and per-channel s8 weights, calibrated on sample inputs. Usually the
  fastest for the compute-bound image towers.
- ``dynamic-rr``, ``qdq-rr``: the same with ``reduce_range`` (7-bit weights),
  which cannot saturate on x86 CPUs without VNNI; ``nbits8-fp32``: MatMulNBits
  8-bit weights with fp32 arithmetic (``accuracy_level`` 1), exact on every CPU;
  ``qdq-s8s8``: static QDQ with s8 activations, what ARM kernels prefer.
  ``int8_targets.py`` says which recipes each ``--int8-target`` allows and why.

``auto`` builds every candidate for the tower, measures fidelity against the
PyTorch reference and latency on this machine, and keeps the fastest one that
meets the threshold. All trials go into the manifest.

Two rules keep that choice honest:

- Latency is measured in the regime the tower is used in: the image tower at
  batch 16 (throughput: indexing photo collections), text towers on one
  12-token query (batch-1 latency: search), by one thread's CPU time. A
  recipe that wins on a 77-token batch can lose on a 12-token query
  (MatMulNBits vs dynamic) and vice versa.
- Fidelity comes first: among the recipes that pass ``min_cosine``, those that
  also reach ``PREFERRED_MIN_COSINE`` are preferred, however much faster a
  less faithful one is. On the trained all-MiniLM-L6-v2, per-tensor dynamic
  int8 loses top-1 neighbour agreement (91-93 %) while MatMulNBits keeps 98 %;
  random-weight test models show about 10x less error than trained ones, so
  the margin matters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from numpy.typing import NDArray

from crossmodal.errors import InputError, ParityError

from . import int8_targets, onnx_files
from .int8_targets import base_recipe
from .measure import parity_against
from .memory import release
from .optimize import FUSED_FILE, compare_latency_ms
from .options import INT8_RECIPES
from .parity import Parity

log = logging.getLogger(__name__)

RECIPES = tuple(r for r in INT8_RECIPES if r != "auto")
# Recipes this close in latency are a tie, decided by fidelity.
LATENCY_TIE = 1.10
# The fidelity target of issue 7 (min cosine to fp32 on trained weights).
PREFERRED_MIN_COSINE = 0.995
# Batch the image tower's recipe is timed at (throughput regime).
IMAGE_TIMING_BATCH = 16
# Tokens of the one query a text tower's recipe is timed on (latency regime).
TEXT_TIMING_TOKENS = 12
# This machine's candidates per tower (int8_targets.AUTO_CANDIDATES has every target's).
AUTO_CANDIDATES = int8_targets.AUTO_CANDIDATES[int8_targets.machine_target()]
# Module-name fragments of attention input projections in HF BERT-style and CLIP-style graphs.
_QKV_NAMES = ("/query/", "/key/", "/value/", "q_proj", "k_proj", "v_proj", "/qkv/")


@dataclass
class QuantResult:
    path: Path
    recipe: str
    parity: Parity
    settings: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)


def _with_shapes(src: Path, dst: Path) -> Path:
    """``src`` with symbolic shape inference applied (falls back to ``src``).

    onnxruntime's quantisers need a dtype for every tensor they touch; on graphs
    with contrib ops (fused SkipLayerNormalization, QuickGelu, ...) ONNX's own
    inference returns none and quantize_dynamic stops ("Unable to find data type
    for weight_name"). The symbolic inference knows the contrib ops.

    It copies the graph it is given, so it is given the graph with its large
    weights stubbed (``weightless.py``; shapes need no weight values), and the
    weights go back before saving; should that fail, it runs on the full graph.
    A graph with external data is given with its weights left in their file
    (``onnx_files.weights_on_disk``), which the result then copies.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from .weightless import load_without_weights, restore_weights

    try:
        if onnx_files.is_external(src):
            with onnx_files.weights_on_disk(src) as light:
                model = SymbolicShapeInference.infer_shapes(light, auto_merge=True)
            onnx_files.save_from(model, dst, src.parent)
            return dst
        light, weights = load_without_weights(src)
        model = SymbolicShapeInference.infer_shapes(light, auto_merge=True)
        del light
        restore_weights(model, weights)
        onnx_files.save(model, dst)
        return dst
    except Exception as exc:
        log.info("shape inference on %s without its weights failed (%r); trying the full graph", src, exc)
    finally:
        release()
    try:
        # In memory, so not past 2 GB (the inference serializes the graph): the stubbed try above is the path there.
        model = SymbolicShapeInference.infer_shapes(onnx_files.load(src), auto_merge=True)
        onnx_files.save(model, dst)
        return dst
    except Exception as exc:  # inference is an aid; the quantiser reports a real failure itself
        log.info("symbolic shape inference failed on %s (%r); quantising without it", src, exc)
        return src
    finally:
        release()


def _drop_inferred_shapes(dst: Path, like: Path) -> None:
    """Remove what symbolic inference baked into a quantised graph.

    With ``auto_merge`` the inference may unify independent dynamic axes (the
    ALBEF re-ranker's text and image batch became one), and the quantiser copies
    those merged shapes into its output, which then fails at run time when the
    two batches differ. The quantised graph keeps no intermediate shapes and
    takes its input/output types from the unshaped source.
    """
    model = onnx_files.load(dst)
    source = onnx_files.load(like, weights=False)
    del model.graph.value_info[:]
    io = {v.name: v for v in list(source.graph.input) + list(source.graph.output)}
    for v in list(model.graph.input) + list(model.graph.output):
        if v.name in io:
            v.type.CopyFrom(io[v.name].type)
    onnx_files.save(model, dst)


def regime_feed(tower: str, feeds: Sequence[Mapping[str, NDArray]], timing_feed: Mapping[str, NDArray]) -> dict[str, NDArray]:
    """The input a tower's recipe is timed on: image -> batch 16; text -> one query of 12 tokens.

    The query is the first :data:`TEXT_TIMING_TOKENS` tokens of the shortest
    single parity text that has that many (the parity texts' short queries
    are 3 to 7 tokens; issue 15 sets 12 as a search query's length); the
    crop is only timed, never compared. Without one that long, the longest
    single text.
    """
    if tower == "image":
        import numpy as np

        return {k: v[np.arange(IMAGE_TIMING_BATCH) % len(v)] for k, v in timing_feed.items()}
    if tower == "text":
        singles = [f for f in feeds if all(v.shape[0] == 1 and v.ndim == 2 for v in f.values())]
        long = [f for f in singles if min(v.shape[1] for v in f.values()) >= TEXT_TIMING_TOKENS]
        if long:
            query = min(long, key=lambda f: max(v.size for v in f.values()))
            return {k: v[:, :TEXT_TIMING_TOKENS] for k, v in query.items()}
        if singles:
            return dict(max(singles, key=lambda f: max(v.size for v in f.values())))
    return dict(timing_feed)


def _nbits8(src: Path, dst: Path, feeds: Sequence[Mapping[str, NDArray]], exclude: Sequence[str] = (),
            accuracy_level: int = 4) -> dict[str, Any]:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    settings: dict[str, Any] = {"bits": 8, "block_size": 32, "accuracy_level": accuracy_level, "symmetric": True,
                                "ops": ["MatMul"]}
    if exclude:
        settings["kept_fp32"] = list(exclude)
    q = MatMulNBitsQuantizer(
        onnx_files.load(src), bits=8, block_size=32, is_symmetric=True, accuracy_level=accuracy_level,
        op_types_to_quantize=("MatMul",), nodes_to_exclude=list(exclude),
    )
    q.process()
    onnx_files.save_ort(q.model, dst)
    return settings


def qkv_matmuls(path: Path) -> list[str]:
    """Names of the MatMuls that compute attention queries, keys and values (by module name)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    consts = {i.name for i in graph.initializer}
    return [n.name for n in graph.node
            if n.op_type == "MatMul" and n.input[1] in consts and any(k in n.name for k in _QKV_NAMES)]


def _nbits8_qkv_fp32(src: Path, dst: Path, feeds: Sequence[Mapping[str, NDArray]]) -> dict[str, Any]:
    names = qkv_matmuls(src)
    if not names:
        raise ValueError("no attention Q/K/V projection found by name; the plain nbits8 candidate covers this graph")
    return _nbits8(src, dst, feeds, exclude=names)


def _nbits8_fp32(src: Path, dst: Path, feeds: Sequence[Mapping[str, NDArray]]) -> dict[str, Any]:
    # accuracy_level 1: int8 weights dequantised in the kernel, fp32 products: no
    # integer dot product, so nothing can saturate on any CPU.
    return _nbits8(src, dst, feeds, accuracy_level=1)


def _dynamic(src: Path, dst: Path, feeds: Sequence[Mapping[str, NDArray]],
             reduce_range: bool = False) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {"weights": "int7 per-channel (reduce_range)" if reduce_range else "int8 per-channel",
                "activations": "uint8 per-tensor, dynamic", "ops": ["MatMul"], "reduce_range": reduce_range}
    onnx_files.remove(dst)  # onnxruntime appends to a stale data file
    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
        op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True},
        use_external_data_format=onnx_files.is_external(src),  # writes dst + dst.data
    )
    return settings


def _dynamic_rr(src: Path, dst: Path, feeds: Sequence[Mapping[str, NDArray]]) -> dict[str, Any]:
    return _dynamic(src, dst, feeds, reduce_range=True)


class _Reader:
    """Calibration feeds for onnxruntime's static quantiser."""

    def __init__(self, feeds: Sequence[Mapping[str, NDArray]], names: set[str]):
        self._feeds = [{k: v for k, v in f.items() if k in names} for f in feeds]
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        """onnxruntime's strided calibration reads the feeds in windows (``CalibStridedMinMax``)."""
        self._it = iter(self._feeds[start_index:end_index])

    def get_next(self) -> dict[str, NDArray] | None:
        return next(self._it, None)


# Calibration folds each feed's activation ranges into the min/max before running the next, so
# memory holds one feed's activations, not every feed's. (Not onnxruntime's
# ``CalibMaxIntermediateOutputs``: 1.32 discards every window of that many batches without
# folding it into the ranges, so with 4 or more batches the ranges came from the last few only.)
CALIB_STRIDE = 1


def calibration_ranges(src: Path, feeds: Sequence[Mapping[str, NDArray]], workdir: Path) -> Any:
    """onnxruntime's MinMax ranges of every MatMul/Conv input and output of ``src`` over ``feeds``.

    The same calibrator ``quantize_static`` runs, fed one feed at a time, but
    on its own: inside ``quantize_static`` the calibration graph, its session
    and the graph being quantised were all alive at once, each with the
    weights. Here the calibrator's copy of the weights goes as soon as its
    session holds them, the session runs without onnxruntime's memory arena,
    and all of it is gone before the quantiser loads the graph. Measured on a
    ViT-L/14 image tower (1.2 GB graph, 12 one-image feeds), peak RSS of the
    whole static int8 step: 6.7 GB inside ``quantize_static``, 3.9 GB this
    way (the arena alone: 0.2 GB); what is left is loading and saving the graph.
    """
    import shutil
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    # A folder of its own: with external data the calibrator names its data file at random.
    scratch = Path(tempfile.mkdtemp(prefix="calibration-", dir=workdir))
    augmented = scratch / "calibration.onnx"
    try:
        cal = MinMaxCalibrater(src, ["MatMul", "Conv"], augmented_model_path=str(augmented),
                               use_external_data_format=onnx_files.is_external(src))
        cal.augment_graph()
        names = {i.name for i in cal.model.graph.input}
        # The session reads the weights from the saved graph. A fresh message, since protobuf
        # keeps cleared bytes in the loaded message's arena until the message itself is freed.
        del cal.model.graph.initializer[:]
        cal.model = type(cal.model).FromString(cal.model.SerializeToString())
        release()
        opts = ort.SessionOptions()
        # As onnxruntime's own calibration session: no fusion, so every calibrated tensor exists.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.enable_cpu_mem_arena = False
        cal.infer_session = ort.InferenceSession(str(augmented), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        for feed in feeds:  # collect_data folds the feed into the ranges and drops its outputs
            cal.collect_data(_Reader([feed], names))
        return cal.compute_data()
    finally:
        cal = None
        shutil.rmtree(scratch, ignore_errors=True)
        release()


def _qdq(src: Path, dst: Path, feeds: Sequence[Mapping[str, NDArray]], *, reduce_range: bool = False,
         signed_activations: bool = False) -> dict[str, Any]:
    import inspect

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    act = "int8" if signed_activations else "uint8"
    settings = {
        "format": "QDQ", "activations": f"{act} per-tensor, static (MinMax calibration)",
        "weights": "int7 per-channel (reduce_range)" if reduce_range else "int8 per-channel",
        "ops": ["MatMul", "Conv"], "calibration_batches": len(feeds), "reduce_range": reduce_range,
    }
    onnx_files.remove(dst)
    args: dict[str, Any] = {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType.QInt8 if signed_activations else QuantType.QUInt8,
        "weight_type": QuantType.QInt8, "per_channel": True, "reduce_range": reduce_range,
        "op_types_to_quantize": ["MatMul", "Conv"], "calibrate_method": CalibrationMethod.MinMax,
        "use_external_data_format": onnx_files.is_external(src),  # the calibration graph and dst (+ dst.data)
    }
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        # onnxruntime < 1.32 takes ranges only from its own calibration: run it there, feed by feed.
        names = {i.name for i in onnx_files.load(src, weights=False).graph.input}
        quantize_static(str(src), str(dst), _Reader(feeds, names),
                        extra_options={"MatMulConstBOnly": True, "CalibStridedMinMax": CALIB_STRIDE}, **args)
        return settings
    from onnxruntime.quantization.calibrate import save_tensors_data

    # The ranges reach quantize_static as its calibration cache (float32 values through JSON: exact).
    cache = dst.with_name(dst.stem + "-ranges.json")
    save_tensors_data(calibration_ranges(src, feeds, dst.parent), cache)
    try:
        quantize_static(str(src), str(dst), None, calibration_cache_path=str(cache),
                        extra_options={"MatMulConstBOnly": True}, **args)
    finally:
        cache.unlink(missing_ok=True)
    return settings


def _qdq_rr(src: Path, dst: Path, feeds: Sequence[Mapping[str, NDArray]]) -> dict[str, Any]:
    return _qdq(src, dst, feeds, reduce_range=True)


def _qdq_s8s8(src: Path, dst: Path, feeds: Sequence[Mapping[str, NDArray]]) -> dict[str, Any]:
    return _qdq(src, dst, feeds, signed_activations=True)


_BUILDERS = {"nbits8": _nbits8, "nbits8-qkv-fp32": _nbits8_qkv_fp32, "nbits8-fp32": _nbits8_fp32,
             "dynamic": _dynamic, "dynamic-rr": _dynamic_rr, "qdq": _qdq, "qdq-rr": _qdq_rr, "qdq-s8s8": _qdq_s8s8}
# Builders that need symbolic shape inference first (onnxruntime's operator quantisers).
_NEEDS_SHAPES = frozenset({"dynamic", "dynamic-rr", "qdq", "qdq-rr", "qdq-s8s8"})


# A smaller embedding table is kept when it costs at most this much min cosine
# (int8 rows are tried first, then fp16 rows).
EMBEDDING_MAX_COSINE_LOSS = 1e-4


def _with_small_embeddings(dst: Path, reference: Sequence[Sequence[NDArray]], feeds: Sequence[Mapping[str, NDArray]],
                           plain: Parity, settings: dict[str, Any], trial: dict[str, Any]) -> Parity:
    """Store ``dst``'s large embedding tables as int8 or fp16 rows when parity allows; returns the graph's parity."""
    from .embedding_tables import quantize_embeddings

    emb = dst.with_name(dst.stem + "-emb.onnx")
    tried = []
    for kind in ("int8", "fp16"):
        tables = quantize_embeddings(dst, emb, kind)
        if not tables:
            return plain
        p = parity_against(reference, emb, feeds)
        tried.append(f"{kind} {p.min_cosine:.6f}")
        if plain.min_cosine - p.min_cosine <= EMBEDDING_MAX_COSINE_LOSS:
            onnx_files.move(emb, dst)
            settings["embeddings"] = {"format": "int8 rows, fp32 scale per row" if kind == "int8" else "fp16 rows",
                                      "tables": tables}
            trial["embeddings"] = f"{kind} (min cosine {plain.min_cosine:.6f} -> {p.min_cosine:.6f})"
            trial.update(p.to_dict())
            return p
    onnx_files.remove(emb)
    trial["embeddings"] = f"fp32 (min cosine with smaller tables: {', '.join(tried)})"
    return plain


def quantize_int8(
    fp32: Path,
    workdir: Path,
    tower: str,
    recipe: str,
    reference: Sequence[Sequence[NDArray]],
    feeds: Sequence[Mapping[str, NDArray]],
    calibration: Sequence[Mapping[str, NDArray]],
    timing_feed: Mapping[str, NDArray],
    min_cosine: float,
    *,
    target: str | None = None,
    stage: Callable[[str], None] = lambda name: None,
) -> QuantResult:
    """Build the int8 graph for one tower; ``recipe`` is one of RECIPES or ``auto``.

    ``target`` (an ``--int8-target``; None: this machine's) limits the recipes to
    those that stay right on that kind of CPU: ``auto`` measures only those, and a
    named recipe that could saturate there is refused. ``stage`` is told the name
    of each step (for progress display). Candidate graphs that lose are deleted
    as soon as they are measured, and at most one onnxruntime session per
    candidate is open at a time (see ``compare_latency_ms``).
    """
    target = target or int8_targets.machine_target()
    if recipe == "auto":
        names = int8_targets.candidates(target, tower)
    else:
        names = (recipe,)
        if base_recipe(recipe) in _BUILDERS:
            int8_targets.check_recipe(recipe, target)
    fused = workdir / FUSED_FILE
    no_fused = not fused.is_file() or fused.resolve() == Path(fp32).resolve()
    if no_fused and recipe != "auto" and recipe.endswith("-fused"):
        # One --int8-recipe names the recipe of every tower; a tower whose fusions were not kept
        # (no parity, or nothing to fuse) gets the same recipe on its traced graph.
        log.warning("int8 recipe %s: no fused fp32 graph was kept for the %s tower; quantising its traced graph "
                    "with %s", recipe, tower, base_recipe(recipe))
        names = (base_recipe(recipe),)
    if no_fused:
        names = tuple(c for c in names if not c.endswith("-fused"))
    unknown = [c for c in names if base_recipe(c) not in _BUILDERS]
    if unknown:
        raise InputError(f"unknown int8 recipe {unknown[0]!r}; choose from auto, {', '.join(RECIPES)}")
    trials: list[dict[str, Any]] = []
    built: list[tuple[dict[str, Any], QuantResult]] = []
    shaped: dict[Path, Path] = {}  # source graph -> its shape-inferred copy, made once

    def source_for(name: str) -> Path:
        src = fused if name.endswith("-fused") else fp32
        if base_recipe(name) not in _NEEDS_SHAPES:
            return src
        if src not in shaped:
            shaped[src] = _with_shapes(src, workdir / f"{tower}-{'fused-' if src == fused else ''}shapes.onnx")
        return shaped[src]

    for name in names:
        stage(f"int8 {name}")
        dst = workdir / f"{tower}-int8-{name}.onnx"
        base = base_recipe(name)
        try:
            settings = _BUILDERS[base](source_for(name), dst, calibration or feeds)
            if name.endswith("-fused"):
                settings["graph"] = "after the fp32 graph rewrites that kept parity (optimize.py)"
            if base in _NEEDS_SHAPES:
                _drop_inferred_shapes(dst, fused if name.endswith("-fused") else fp32)
            if base in int8_targets.REDUCED_RANGE:
                # The static guarantee behind avx2/portable: no weight outside onnxruntime's 7-bit range.
                bound = int8_targets.int8_weight_bound(dst)
                if bound > int8_targets.REDUCED_WEIGHT_BOUND:
                    raise ValueError(f"reduce_range graph holds an int8 weight of {bound}")
                settings["max_abs_int8_weight"] = bound
        except Exception as exc:  # one recipe failing on an op set must not stop the others
            trials.append({"recipe": name, "rejected": f"quantiser failed: {exc!r}"})
            onnx_files.remove(dst)
            continue
        finally:
            release()  # the quantiser's copies of the graph go before the candidate is measured
        p = parity_against(reference, dst, feeds)
        trial: dict[str, Any] = {"recipe": name, **p.to_dict()}
        p = _with_small_embeddings(dst, reference, feeds, p, settings, trial)
        trials.append(trial)
        if p.min_cosine < min_cosine:
            trial["rejected"] = f"min cosine {p.min_cosine:.5f} < {min_cosine}"
            onnx_files.remove(dst)
        else:
            built.append((trial, QuantResult(dst, name, p, settings)))
        log.info("int8 %s %s: %s", tower, name, trial)
    for tmp in shaped.values():
        if tmp not in (fp32, fused):
            onnx_files.remove(tmp)
    if not built:
        detail = "; ".join(f"{t['recipe']}: {t.get('rejected')}" for t in trials)
        raise ParityError(f"no int8 recipe for the {tower} tower reaches min cosine {min_cosine} ({detail}). "
                          "Nothing was written for cpu-int8; use cpu-fp32 for this model.")
    if len(built) > 1:  # a single candidate (a named recipe) needs no timing
        stage("int8 timing")
        regime = regime_feed(tower, feeds, timing_feed)
        shape = {k: list(v.shape) for k, v in regime.items()}
        # A text query runs for milliseconds, where other load on the machine decided the wall-time
        # ranking: it is ranked by one thread's CPU time (compare_latency_ms); batches by wall time.
        cpu_time = tower == "text"
        for (trial, _), ms in zip(built, compare_latency_ms([q.path for _, q in built], regime, cpu_time=cpu_time)):
            trial["ms"] = round(ms, 3)
            trial["timed_on"] = shape
            trial["timed_by"] = "CPU time, 1 thread" if cpu_time else "wall time"
    passing = [(float(trial.get("ms", 0.0)), q) for trial, q in built]
    preferred = [x for x in passing if x[1].parity.min_cosine >= max(min_cosine, PREFERRED_MIN_COSINE)] or passing
    fastest = min(x[0] for x in preferred)
    # Within timing noise of the fastest, the more faithful recipe wins.
    best = max((x for x in preferred if x[0] <= fastest * LATENCY_TIE), key=lambda x: x[1].parity.min_cosine)[1]
    for trial, q in built:
        if q is not best:
            faster = trial["ms"] < next(t["ms"] for t, b in built if b is best)
            trial["not_chosen"] = (f"min cosine {q.parity.min_cosine:.5f} < preferred {PREFERRED_MIN_COSINE}"
                                   if faster and q.parity.min_cosine < PREFERRED_MIN_COSINE else
                                   "as fast within 10 %, less faithful" if faster or trial["ms"] <= fastest * LATENCY_TIE
                                   else "slower")
            onnx_files.remove(q.path)
    best.trials = trials
    best.settings["isa"] = int8_targets.isa_record(best.recipe, target)
    return best
