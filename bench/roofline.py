"""Roofline: this machine's own peaks, each graph's work, and every latency as a multiple of its floor.

A latency in milliseconds says little across machines (the same int8 image
tower ran 4.2x slower on an AVX2-only Zen 3 than on an AVX-512 VNNI Zen 5). A
multiple of the floor does: how far a run is from what this CPU could do at
best with these kernels.

* **Peaks** (:func:`measure_peaks`), measured with onnxruntime itself on the
  same thread count as the towers, in a fresh worker process: fp32 GEMM
  (MatMul 1024 x 1024 x 1024, weights an initializer as in the towers), int8
  GEMM (MatMulInteger u8 x s8 of the same size: the kernel family onnxruntime
  runs for our int8 graphs, VNNI/AMX where the CPU has them), and memory
  bandwidth (Add of a scalar to a 128 MiB array into a bound 128 MiB output;
  counted as bytes read + bytes written, STREAM's convention, which leaves
  out the write-allocate traffic, so the figure is a little low and the floor
  a little high, never flattering).
* **Work** (:func:`graph_cost`), counted from the ONNX graph that runs, with
  the actual input shapes (one run of the graph at the case's batch and token
  count, the shapes read from onnxruntime's profile): 2 x multiply-adds of every MatMul / Gemm / Conv and their
  integer and fused forms (onnxruntime's fused ``Attention``: its packed Q/K/V
  projection and the attention itself). A GEMM counts as int8 when it is an integer op or
  both its operands come from DequantizeLinear (onnxruntime fuses those into
  integer kernels); the rest is fp32. Elementwise work (LayerNorm, softmax,
  GELU) is not counted: it is small next to the GEMMs of these towers, and
  leaving it out keeps the floor a lower bound. Weight bytes: every
  initializer once, except tables read through Gather or onnxruntime's
  ``EmbedLayerNormalization`` (token, position, segment embeddings), which
  count only the rows looked up (12 of 49,408 at batch 1).
* **Floor** (:func:`floor_ms`) = int8 FLOPs / int8 peak + fp32 FLOPs / fp32
  peak + weight bytes / bandwidth: the time if every GEMM ran at peak and the
  weights streamed once from memory, without overlap. A multiple of 1.0 is
  the ideal; issue 15's targets are <= 1.5x for the image tower at its best
  batch and <= 3x for the text tower at batch 1 (12 tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .timing import Budget, measure

GEMM_SIZE = 1024
BANDWIDTH_MIB = 128

MATMUL_OPS = {"MatMul", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
              "FusedMatMul"}
GEMM_OPS = {"Gemm", "QGemm", "FusedGemm"}
CONV_OPS = {"Conv", "ConvInteger", "QLinearConv", "FusedConv"}
ATTENTION_OPS = {"MultiHeadAttention"}
INTEGER_OPS = {"MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm",
               "ConvInteger", "QLinearConv"}
# onnxruntime's fused BERT attention: the Q/K/V projection (input 1, the packed weights) and the attention itself.
PACKED_ATTENTION_OPS = {"Attention"}
COUNTED_OPS = MATMUL_OPS | GEMM_OPS | CONV_OPS | ATTENTION_OPS | PACKED_ATTENTION_OPS | {"MatMulNBits"}
# onnxruntime's fused BERT embedding: token / position / segment tables (inputs 2, 3, 4) read by the rows looked up.
EMBED_LN_TABLES = {2: "tokens", 3: "positions", 4: "tokens"}
# Where the B / weight operand sits (QLinear* put scales and zero points between the operands).
_B_INDEX = {"QLinearMatMul": 3, "QLinearConv": 3, "QGemm": 3}


class RooflineError(RuntimeError):
    """A graph's work could not be counted (inputs that do not match it, or a GEMM that did not run)."""


# ----------------------------------------------------------------------------- peaks


@dataclass(frozen=True)
class Peaks:
    """This machine's rates on ``threads`` onnxruntime threads."""

    fp32_gflops: float
    int8_gops: float
    bandwidth_gbs: float
    threads: int
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Peaks":
        return cls(float(d["fp32_gflops"]), float(d["int8_gops"]), float(d["bandwidth_gbs"]), int(d["threads"]),
                   dict(d.get("detail") or {}))


def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def _gemm_model(n: int, integer: bool) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        b = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("Y", y_type, [n, n])], [b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _add_model(n: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    c = numpy_helper.from_array(np.array(1.0, np.float32), "C")
    graph = helper.make_graph([helper.make_node("Add", ["X", "C"], ["Y"])], "stream",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n])], [c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def measure_peaks(threads: int, budget: Budget, *, gemm_size: int = GEMM_SIZE,
                  bandwidth_mib: int = BANDWIDTH_MIB) -> Peaks:
    """fp32 GEMM, int8 u8 x s8 GEMM and memory bandwidth of this machine, with onnxruntime.

    Each rate comes from the median latency of its microbenchmark (``budget``
    per benchmark, warm-up excluded), the same statistic the towers report, so
    that a shared machine's load weighs on both sides of the ratio alike.
    """
    import onnxruntime as ort

    n = gemm_size
    rng = np.random.default_rng(1)
    ops = 2.0 * n * n * n
    detail: dict[str, Any] = {"gemm": f"{n}x{n}x{n}", "bandwidth_array_mib": bandwidth_mib,
                              "onnxruntime": ort.__version__}
    rates = {}
    for name, integer, a in (("fp32", False, rng.standard_normal((n, n), dtype=np.float32)),
                             ("int8", True, rng.integers(0, 256, (n, n), dtype=np.uint8))):
        sess = _session(_gemm_model(n, integer), threads)
        ms = float(np.median(measure(lambda s=sess, a=a: s.run(None, {"A": a}), budget)))
        detail[f"{name}_gemm_ms"] = round(ms, 4)
        rates[name] = ops / (ms * 1e-3) / 1e9
    count = bandwidth_mib * 2**20 // 4
    sess = _session(_add_model(count), threads)
    x = ort.OrtValue.ortvalue_from_numpy(np.ones(count, np.float32))
    y = ort.OrtValue.ortvalue_from_numpy(np.empty(count, np.float32))
    binding = sess.io_binding()
    binding.bind_ortvalue_input("X", x)
    binding.bind_ortvalue_output("Y", y)  # a fresh output per run would time page faults, not memory
    ms = float(np.median(measure(lambda: sess.run_with_iobinding(binding), budget)))
    detail["bandwidth_add_ms"] = round(ms, 4)
    bandwidth = 2 * count * 4 / (ms * 1e-3) / 1e9
    return Peaks(fp32_gflops=rates["fp32"], int8_gops=rates["int8"], bandwidth_gbs=bandwidth, threads=threads,
                 detail=detail)


def median_peaks(runs: Iterable[Peaks]) -> Peaks:
    """The per-rate median over worker processes (a process that met a busy moment does not set the floor)."""
    runs = list(runs)
    pick = {k: float(np.median([getattr(r, k) for r in runs])) for k in ("fp32_gflops", "int8_gops", "bandwidth_gbs")}
    return Peaks(**pick, threads=runs[0].threads,
                 detail={**runs[0].detail, "processes": len(runs),
                         "per_process": [{k: round(getattr(r, k), 2) for k in pick} for r in runs]})


# ----------------------------------------------------------------------------- work of a graph


@dataclass(frozen=True)
class GraphCost:
    """The work of one call of a graph at given input shapes."""

    int8_flops: float
    fp32_flops: float
    weight_bytes: int  # every weight read once, embedding tables by the rows looked up
    gemms: int
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def flops(self) -> float:
        return self.int8_flops + self.fp32_flops

    @staticmethod
    def at_batch(one: "GraphCost", two: "GraphCost", batch: int) -> "GraphCost":
        """The cost at ``batch`` from the costs at batch 1 and 2.

        Exact for these towers: each item is computed independently (work grows
        linearly with the batch) and the weights are read once per call, except
        token-embedding rows, one per item and token, and position rows, shared.
        """
        def lin(x1: float, x2: float) -> float:
            return x1 + (x2 - x1) * (batch - 1)

        return GraphCost(lin(one.int8_flops, two.int8_flops), lin(one.fp32_flops, two.fp32_flops),
                         int(lin(one.weight_bytes, two.weight_bytes)), one.gemms,
                         {k: (batch, *v[1:]) for k, v in one.shapes.items()})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shapes": {k: list(v) for k, v in self.shapes.items()}}


def _tensor_bytes(dims: Iterable[int], data_type: int) -> int:
    from onnx import helper

    return int(np.prod(list(dims), dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def _feeds(sess: Any, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Inputs of the given shapes: token ids 1 (valid in every vocabulary), masks 1, pixels random."""
    dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(float16)": np.float16}
    names = {i.name: i for i in sess.get_inputs()}
    if set(shapes) != set(names):
        raise RooflineError(f"shapes given for {sorted(shapes)}, but the graph's inputs are {sorted(names)}")
    rng = np.random.default_rng(0)
    feeds = {}
    for name, i in names.items():
        dtype = dtypes.get(i.type, np.float32)
        feeds[name] = (rng.standard_normal(shapes[name]).astype(dtype) if np.issubdtype(dtype, np.floating)
                       else np.ones(shapes[name], dtype))
    return feeds


Profile = dict[str, tuple[list, list]]  # node name -> (listed input shapes, output shapes) of one run


def _profile_runs(model_path: Path, shape_sets: list[Mapping[str, tuple[int, ...]]]) -> list[Profile]:
    """Per run, per node name: the input and output shapes onnxruntime's profiler recorded.

    One session, one run per shape set, graph optimisations off so that every
    node of the file runs under its own name. From real runs rather than ONNX
    shape inference: the exported text graphs compute their position ids from
    the input's shape (Shape -> Slice -> Range), which static inference leaves unknown.
    """
    import json
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="roofline-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "run")
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        for shapes in shape_sets:
            sess.run(None, _feeds(sess, shapes))
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    out: list[Profile] = [{} for _ in runs]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            k = next(i for i, (t0, t1) in enumerate(runs) if t0 <= e["ts"] <= t1)
            args = e["args"]
            out[k][e["name"][: -len("_kernel_time")]] = (
                [next(iter(d.values())) for d in args.get("input_type_shape", [])],
                [next(iter(d.values())) for d in args.get("output_type_shape", [])])
    return out


def graph_cost(model_path: str | Path, shapes: Mapping[str, tuple[int, ...]]) -> GraphCost:
    """FLOPs (int8 and fp32) and weight bytes of one call of the graph at ``shapes`` (input name -> shape)."""
    return graph_costs(model_path, [shapes])[0]


def graph_costs(model_path: str | Path, shape_sets: list[Mapping[str, tuple[int, ...]]]) -> list[GraphCost]:
    """:func:`graph_cost` at each of ``shape_sets``, from one session."""
    import tempfile

    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph = _Graph(model, str(model_path))
    names = [n.name for n in model.graph.node]
    if len(set(names)) == len(names) and "" not in names:
        return _costs(graph, Path(model_path), shape_sets)
    # The profile is matched by node name: onnxruntime's transformer optimizer leaves some nodes
    # unnamed (the M-BERT fp32 graph), so profile a copy whose every node has a name of its own
    # (``graph`` shares the node objects, so it matches the new names).
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise RooflineError(f"{model_path}: node names are missing or repeated and the weights are external; "
                            "the profile cannot be matched")
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}__roofline_{i}"
        seen.add(node.name)
    with tempfile.TemporaryDirectory(prefix="roofline-named-") as tmp:
        named = Path(tmp) / "named.onnx"
        onnx.save(model, str(named))
        return _costs(graph, named, shape_sets)


def _costs(graph: "_Graph", profiled: Path, shape_sets: list[Mapping[str, tuple[int, ...]]]) -> list[GraphCost]:
    return [graph.cost(ran, shapes) for ran, shapes in zip(_profile_runs(profiled, shape_sets), shape_sets)]


class _Graph:
    """What counting needs from a graph: its weights' dims, producers and consumers."""

    def __init__(self, model: Any, where: str):
        self.where = where
        self.nodes = list(model.graph.node)
        # Weights: initializers and Constant nodes (some exporters store weights as Constant).
        self.weights: dict[str, tuple[tuple[int, ...], int]] = {
            t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        self.weights[node.output[0]] = (tuple(a.t.dims), a.t.data_type)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for i, name in enumerate(n.input):
                self.consumers.setdefault(name, []).append((n, i))

    def io(self, node: Any, ran: Profile) -> tuple[dict[int, list[int]], list]:
        """The node's input shapes by input index, and its output shapes, in one run."""
        if node.name not in ran:
            raise RooflineError(f"{self.where}: {node.op_type} {node.name!r} did not run")
        listed, outs = ran[node.name]
        # Weights packed at session start are left out of the profile: align the listed shapes with
        # the inputs, skipping a weight whose known dims do not match the next listed shape.
        by_index: dict[int, list[int]] = {}
        j = 0
        for i, name in enumerate(node.input):
            if not name:
                continue
            known = list(self.weights[name][0]) if name in self.weights else None
            if j < len(listed) and (known is None or list(listed[j]) == known):
                by_index[i] = list(listed[j])
                j += 1
            elif known is not None:
                by_index[i] = known
            else:
                break
        if j != len(listed) or len(by_index) != sum(1 for x in node.input if x):
            raise RooflineError(f"{self.where}: cannot match the profiled inputs of {node.op_type} {node.name!r}")
        return by_index, outs

    def _dequantized(self, name: str) -> bool:
        p = self.producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    def cost(self, ran: Profile, shapes: Mapping[str, tuple[int, ...]]) -> GraphCost:
        int8 = fp32 = 0.0
        gemms = 0
        for node in self.nodes:
            if node.op_type not in COUNTED_OPS:
                continue
            ins, outs = self.io(node, ran)
            flops, integer = _node_flops(node, ins, outs[0])
            if integer or all(self._dequantized(node.input[i]) for i in (0, _B_INDEX.get(node.op_type, 1))):
                int8 += flops
            else:
                fp32 += flops
            gemms += 1
        weight_bytes = 0
        for name, (ds, dtype) in self.weights.items():
            uses = self.consumers.get(name, [])
            if uses and all(_is_lookup(n, i) for n, i in uses):
                # An embedding table: only the rows looked up are read.
                rows = sum(self._rows_looked_up(n, i, ran) for n, i in uses)
                weight_bytes += min(rows, ds[0]) * _tensor_bytes(ds[1:], dtype)
            else:
                weight_bytes += _tensor_bytes(ds, dtype)
        return GraphCost(int8_flops=int8, fp32_flops=fp32, weight_bytes=int(weight_bytes), gemms=gemms,
                         shapes={k: tuple(v) for k, v in shapes.items()})


    def _rows_looked_up(self, node: Any, index: int, ran: Profile) -> int:
        ins = self.io(node, ran)[0]
        if node.op_type == "Gather":
            return int(np.prod(ins[1], dtype=np.int64))
        ids = ins[0]  # EmbedLayerNormalization: input_ids [B, S]; positions are shared by the batch
        return int(ids[1]) if EMBED_LN_TABLES[index] == "positions" else int(np.prod(ids, dtype=np.int64))


def _is_lookup(node: Any, index: int) -> bool:
    if node.op_type == "Gather":
        return index == 0 and int(_attr(node, "axis", 0)) == 0
    return node.op_type == "EmbedLayerNormalization" and index in EMBED_LN_TABLES


def _node_flops(node: Any, ins: Mapping[int, list[int]], out: list[int]) -> tuple[float, bool]:
    """2 x multiply-adds of one GEMM-like node, and whether it runs on integer kernels by itself."""
    op = node.op_type
    if op in PACKED_ATTENTION_OPS:
        # x [B, S, K] @ W [K, Hq + Hk + Hv], then softmax(Q K^T) V over the same sequence (no past state).
        x, w = ins[0], ins[1]
        sizes = _attr(node, "qkv_hidden_sizes", None)
        _, hk, hv = (list(sizes) if sizes else [w[1] // 3] * 3)
        b, sq = x[0], x[1]
        return 2.0 * b * sq * x[2] * w[1] + 2.0 * b * sq * sq * (hk + hv), False
    if op in ATTENTION_OPS:
        # softmax(Q K^T) V: Sq x Skv dot products of the key width, then of the value width.
        q, k, v = ins[0], ins.get(1), ins.get(2)
        if len(q) == 3 and k is not None and v is not None and len(k) == 3 and len(v) == 3:
            b, sq, skv, dk, dv = q[0], q[1], k[1], k[2], v[2]
        elif len(q) == 3 and k is not None and v is not None and len(k) == 4 and len(v) == 4:  # B, N, L, H
            b, sq, skv, dk, dv = q[0], q[1], k[2], k[1] * k[3], v[1] * v[3]
        elif len(q) == 5:  # packed B, S, N, 3, H
            b, sq, skv, dk = q[0], q[1], q[1], q[2] * q[4]
            dv = dk
        else:
            raise RooflineError(f"{op} {node.name!r}: unsupported input shapes {dict(ins)}")
        return 2.0 * b * sq * skv * (dk + dv), False
    a, w = ins[0], ins[_B_INDEX.get(op, 1)]
    if op in CONV_OPS:
        k = int(np.prod(w[1:]))  # Cin / groups x kernel area per output value
    elif op == "MatMulNBits":
        k = int(_attr(node, "K", a[-1]))
    elif op in GEMM_OPS:
        k = a[0] if _attr(node, "transA", 0) else a[1]
    else:
        k = a[-2] if _attr(node, "transA", 0) else a[-1]
    # MatMulNBits computes in int8 at accuracy_level 4 (activations quantised per block), else in fp32.
    integer = op in INTEGER_OPS or (op == "MatMulNBits" and int(_attr(node, "accuracy_level", 0)) == 4)
    return 2.0 * float(np.prod(out, dtype=np.float64)) * k, integer


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def floor_ms(cost: GraphCost, peaks: Peaks) -> float:
    """int8 FLOPs / int8 peak + fp32 FLOPs / fp32 peak + weight bytes / bandwidth, in milliseconds."""
    seconds = (cost.int8_flops / (peaks.int8_gops * 1e9) + cost.fp32_flops / (peaks.fp32_gflops * 1e9)
               + cost.weight_bytes / (peaks.bandwidth_gbs * 1e9))
    return seconds * 1e3


# ----------------------------------------------------------------------------- the benchmark's rows


def tower_shapes(bundle: Path, tower: str, variant: str, batch: int, tokens: int) -> dict[str, tuple[int, ...]]:
    """Input shapes of a tower's graph for one case (image: ``batch`` x 3 x S x S; text: ``batch`` x ``tokens``)."""
    from crossmodal.manifest import read_manifest

    m = read_manifest(bundle / tower / variant)
    if tower == "image":
        assert m.preprocess is not None
        s = m.preprocess.output_size
        return {t.name: (batch, 3, s, s) for t in m.inputs}
    return {t.name: (batch, tokens) for t in m.inputs}


class CostCache:
    """A bundle's tower costs: each graph counted at batch 1 and 2 once per token count, other batches
    from those two (:meth:`GraphCost.at_batch`); counting runs the graph, seconds at full size."""

    def __init__(self, bundle: Path):
        self.bundle = bundle
        self._done: dict[tuple[str, str, int], tuple[GraphCost, GraphCost]] = {}

    def get(self, tower: str, variant: str, batch: int, tokens: int = 0) -> GraphCost:
        key = (tower, variant, tokens)
        if key not in self._done:
            from crossmodal.manifest import read_manifest

            folder = self.bundle / tower / variant
            one, two = graph_costs(folder / read_manifest(folder).model_file,
                                   [tower_shapes(self.bundle, tower, variant, b, tokens) for b in (1, 2)])
            self._done[key] = (one, two)
        return GraphCost.at_batch(*self._done[key], batch)


# Engines whose latency has a floor: the graph that does their arithmetic.
ENGINE_GRAPH = {"crossmodal-cpu-int8": "cpu-int8", "crossmodal-cpu-fp32": "cpu-fp32", "torch-fp32": "cpu-fp32"}


def annotate(rows: list[dict[str, Any]], peaks: Peaks, costs: CostCache) -> None:
    """Add ``floor_ms`` and ``x_floor`` (p50 / floor) to every scenario (a) row whose engine has a floor."""
    for r in rows:
        variant = ENGINE_GRAPH.get(r["engine"])
        if r["scenario"] != "a" or variant is None or not r.get("p50_ms"):
            continue
        cost = costs.get(r["tower"], variant, int(r["batch"]), int(r.get("tokens") or 0))
        r["floor_ms"] = floor_ms(cost, peaks)
        r["x_floor"] = r["p50_ms"] / r["floor_ms"]
        r["cost"] = cost.to_dict()


def floor_table(peaks: Peaks, costs: CostCache, *, image_batches: Iterable[int], text_batches: Iterable[int],
                tokens: int, variants: Iterable[str] = ("cpu-fp32", "cpu-int8")) -> list[dict[str, Any]]:
    """Floors of every tower and variant at each batch (text at ``tokens`` tokens), for the roofline section."""
    out = []
    for tower, batches in (("image", image_batches), ("text", text_batches)):
        for variant in variants:
            if not (costs.bundle / tower / variant).is_dir():
                continue
            for b in batches:
                cost = costs.get(tower, variant, b, tokens if tower == "text" else 0)
                out.append({"tower": tower, "variant": variant, "batch": b, "tokens": tokens if tower == "text" else None,
                            **cost.to_dict(), "floor_ms": floor_ms(cost, peaks)})
    return out


__all__ = ["Peaks", "GraphCost", "RooflineError", "measure_peaks", "median_peaks", "graph_cost", "floor_ms",
           "tower_shapes", "CostCache", "annotate", "floor_table", "ENGINE_GRAPH"]


def worker_peaks(runner: Any, *, processes: int, quick: bool, log: Any = print, seconds: float = 1.5) -> Peaks:
    """This machine's peaks on the runner's thread count: the median over ``processes`` fresh workers,
    each microbenchmark measured for ``seconds``."""
    budget = Budget(seconds=0.2, warmup_seconds=0.05, min_runs=3) if quick else Budget(seconds=seconds, min_runs=5)
    job = {"kind": "peaks", "budget": budget.to_dict(), "gemm_size": 256 if quick else GEMM_SIZE,
           "bandwidth_mib": 16 if quick else BANDWIDTH_MIB}
    runs = []
    for k in range(processes):
        res = runner.run_job(job)
        runs.append(Peaks.from_dict(res["peaks"]))
        log(f"  peaks {k + 1}/{processes} ({runner.threads} threads): fp32 {runs[-1].fp32_gflops:.0f} GFLOP/s, "
            f"int8 {runs[-1].int8_gops:.0f} GOP/s, {runs[-1].bandwidth_gbs:.1f} GB/s")
    return median_peaks(runs)


def scenario_roofline(bundle: Path, runner: Any, rows: list[dict[str, Any]], *, processes: int, quick: bool,
                      image_batches: Iterable[int], tokens: int, log: Any = print) -> dict[str, Any]:
    """Measure the peaks in ``processes`` fresh workers, count the towers' work, and annotate the (a) rows.

    Returns the ``roofline`` section of the result: peaks (median over processes),
    floors of each tower at batch 1 (text at ``tokens`` tokens) and at each image batch.
    """
    peaks = worker_peaks(runner, processes=processes, quick=quick, log=log)
    costs = CostCache(bundle)
    log("  counting each tower's work (one run per graph and token count) ...")
    annotate(rows, peaks, costs)
    floors = floor_table(peaks, costs, image_batches=image_batches, text_batches=(1,), tokens=tokens)
    return {"peaks": peaks.to_dict(), "floors": floors}


__all__ += ["scenario_roofline", "worker_peaks"]
