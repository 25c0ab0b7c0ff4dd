"""fp16 graphs for GPUs (the ``gpu-fp16`` target), with their parity measured on the CPU.

The conversion keeps the graph's inputs and outputs in fp32 (callers and the
runtime never cast) and keeps precision-sensitive ops in fp32:

* normalisations and softmax (``LayerNormalization``, ``Softmax``, ...): their
  reductions over the hidden width lose digits in fp16 and feed every later layer;
* reductions and the arithmetic that finishes a normalisation (``ReduceL2`` ->
  ``Clip`` -> ``Div`` of the final L2 normalisation, ``ReduceSum`` / count of
  mean pooling, decomposed LayerNorms' ``Pow``/``Sqrt``): a sum of squares
  overflows fp16 (max 65504) long before an fp32 one does;
* the ops onnxruntime's converter blocks by default (``Range``, ``CumSum``, ...).

Matrix products, GELU and residual adds run in fp16, which is where a GPU
gains its speed.

Parity is measured with onnxruntime's CPU provider. That provider has no fp16
kernel for several ops (MatMul, Add, Conv, ... on x86 builds); onnxruntime then
inserts casts and runs those nodes in fp32 on fp16-rounded inputs, rounding the
results back to fp16. The measurement therefore includes every fp16 rounding
of weights and activations between nodes, but not fp16 arithmetic *inside* a
kernel (a GPU GEMM accumulating in fp16). Which ops were emulated is recorded in
the manifest (``extra.fp16.cpu_fp32_emulated_ops``) so nobody mistakes the number
for a GPU measurement. If the fp16 graph cannot run on the CPU at all, the
fallback measures the fp32 graph with fp16-rounded weights and says so.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from .parity import Parity, compare, merge

log = logging.getLogger(__name__)

# Precision-sensitive op types, always kept in fp32.
FP32_OP_TYPES: tuple[str, ...] = (
    "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization", "GroupNormalization", "InstanceNormalization",
    "BatchNormalization", "Softmax", "LogSoftmax",
    "ReduceL2", "ReduceSumSquare", "ReduceMean", "ReduceSum", "ReduceLogSumExp",
    "Pow", "Sqrt", "Reciprocal", "Exp", "Log",
)
# Ops a normalisation's result passes through before the division (max(norm, eps), broadcast).
_PASSTHROUGH = frozenset({"Clip", "Max", "Min", "Expand", "Unsqueeze", "Reshape", "Cast", "Add", "Squeeze"})
# Ops that finish a normalisation with the reduced value.
_FINISHERS = frozenset({"Div", "Mul", "Reciprocal"})
# Reductions whose consumers are kept in fp32 too.
_NORM_SOURCES = frozenset({"ReduceL2", "ReduceSumSquare", "ReduceSum", "ReduceMean", "Sqrt"})
# Data-movement ops: onnxruntime moves its inserted casts across them, so their
# appearance among "emulated" nodes says nothing about missing kernels.
_DATA_MOVEMENT = frozenset({
    "Gather", "GatherElements", "GatherND", "Where", "Reshape", "Transpose", "Shape", "Squeeze", "Unsqueeze",
    "Concat", "Slice", "Expand", "Flatten", "Identity", "Split", "Tile", "Pad",
})
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto data types


def normalisation_nodes(model: Any) -> list[str]:
    """Names of the nodes that finish a normalisation (``x / max(||x||, eps)``, ``sum / count``).

    Walks forward from every reduction through broadcast/clamp ops to the
    Div/Mul that consumes it, returning every node on the way (without the
    reductions themselves, which are blocked by type).
    """
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    picked: list[str] = []
    seen: set[int] = set()
    for node in model.graph.node:
        if node.op_type not in _NORM_SOURCES:
            continue
        frontier = [(out, 0) for out in node.output]
        while frontier:
            tensor, depth = frontier.pop()
            for nxt in consumers.get(tensor, []):
                if id(nxt) in seen or depth > 4:
                    continue
                if nxt.op_type in _FINISHERS or nxt.op_type in _PASSTHROUGH:
                    seen.add(id(nxt))
                    if nxt.name:
                        picked.append(nxt.name)
                    if nxt.op_type in _PASSTHROUGH:
                        frontier.extend((o, depth + 1) for o in nxt.output)
    return picked


def _ensure_node_names(model: Any) -> None:
    # node_block_list matches by name; unnamed nodes get stable names first.
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def topological_sort(model: Any) -> None:
    """Reorder ``model.graph.node`` so every node follows its producers.

    The converter appends its Cast nodes at the end of the node list;
    onnxruntime does not mind, but the ONNX checker and TensorRT's ONNX parser
    require topological order.
    """
    nodes = list(model.graph.node)
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    producers = {o for n in nodes for o in n.output}
    ordered: list[Any] = []
    pending = nodes
    while pending:
        rest = []
        for node in pending:
            # Inputs produced by no node (outer-scope names) do not block ordering.
            if all(i in available or i not in producers for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle through {[n.name for n in rest[:3]]}")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def to_fp16(src: Path, dst: Path) -> tuple[Path, dict[str, Any]]:
    """Convert ``src`` to an fp16 graph at ``dst`` with fp32 I/O; returns (dst, what was kept in fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from . import onnx_files

    infer = True
    if onnx_files.is_external(src):
        # The converter infers shapes in memory, which stops at 2 GB; the path-based inference
        # does not. Written beside ``src``, so the graph's data location still resolves.
        shaped = src.with_name(f"{src.name}.shapes")
        onnx.shape_inference.infer_shapes_path(str(src), str(shaped))
        model, infer = onnx_files.load(shaped), False
        shaped.unlink()
    else:
        model = onnx_files.load(src)
    _ensure_node_names(model)
    present = Counter(n.op_type for n in model.graph.node)
    op_block = sorted(set(FP32_OP_TYPES) | set(DEFAULT_OP_BLOCK_LIST))
    node_block = normalisation_nodes(model)
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=op_block, node_block_list=node_block, disable_shape_infer=not infer,
    )
    topological_sort(converted)
    onnx_files.save(converted, dst)
    onnx.checker.check_model(str(dst))  # by path: in memory the checker stops at 2 GB
    kept = {
        "fp32_op_types": sorted(t for t in op_block if t in present),
        "fp32_nodes": sorted(node_block),
        "io_types": "fp32 (keep_io_types)",
        "converter": "onnxruntime.transformers.float16.convert_float_to_float16",
    }
    return dst, kept


def cpu_emulated_ops(fp16_model: Path) -> dict[str, list[str]]:
    """Which fp16 nodes onnxruntime's CPU provider runs in fp32 (it has no fp16 kernel for them).

    Read from the graph onnxruntime actually executes: the CPU provider
    inserts ``Cast`` nodes to fp32 in front of nodes it cannot run in fp16.
    Returns ``{"compute": [...], "data_movement": [...]}`` op types.
    """
    import tempfile

    import onnx

    from crossmodal.session import import_onnxruntime

    ort = import_onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cpu-final.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        ort.InferenceSession(str(fp16_model), sess_options=opts, providers=["CPUExecutionProvider"])
        final = onnx.load(str(out), load_external_data=False)  # only its nodes are read
    upcasts = {
        o for n in final.graph.node
        if n.op_type == "Cast" and n.name.startswith("InsertedPrecisionFreeCast")
        and any(a.name == "to" and a.i == _FLOAT for a in n.attribute)
        for o in n.output
    }
    emulated = {n.op_type for n in final.graph.node if n.op_type != "Cast" and any(i in upcasts for i in n.input)}
    return {"compute": sorted(emulated - _DATA_MOVEMENT), "data_movement": sorted(emulated & _DATA_MOVEMENT)}


def _run_cpu(model: Path, feeds: Sequence[Mapping[str, NDArray]]) -> list[list[NDArray]]:
    from .measure import ort_outputs

    return ort_outputs(model, feeds)


def _parity(reference: Sequence[Sequence[NDArray]], got: Sequence[Sequence[NDArray]], output: int) -> Parity:
    return merge([compare(np.asarray(r[output]), np.asarray(g[output], dtype=np.float32)) for r, g in zip(reference, got)])


def _other_outputs(reference: Sequence[Sequence[NDArray]], got: Sequence[Sequence[NDArray]], output: int,
                   names: Sequence[str]) -> dict[str, Any]:
    # Token-state outputs (ALBEF) are recorded, not thresholded: the embedding is the contract.
    extra: dict[str, Any] = {}
    for k in range(len(reference[0])):
        if k != output and np.issubdtype(np.asarray(reference[0][k]).dtype, np.floating):
            extra[names[k] if k < len(names) else str(k)] = _parity(reference, got, k).to_dict()
    return extra


def rounded_weights_copy(src: Path, dst: Path) -> Path:
    """The fp32 graph with every float initializer rounded through fp16 (the fallback measurement)."""
    from onnx import numpy_helper

    from . import onnx_files

    model = onnx_files.load(src)
    for init in model.graph.initializer:
        if init.data_type == _FLOAT:
            arr = numpy_helper.to_array(init)
            rounded = np.clip(arr, -65504.0, 65504.0).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    onnx_files.save(model, dst)
    return dst


def convert_fp16(
    raw_onnx: Path,
    dst: Path,
    reference: list[list[np.ndarray]],
    feeds: list[dict[str, np.ndarray]],
    *,
    output: int = 0,
    cpu_runnable: bool | None = None,
) -> tuple[Path, Parity, dict[str, Any]]:
    """Write the fp16 graph of ``raw_onnx`` to ``dst`` and measure its parity on the CPU provider.

    Args:
        raw_onnx: the fp32 graph as traced (not the CPU-fused one: CUDA fusions
            differ and onnxruntime applies them online).
        dst: where to write the fp16 graph.
        reference: PyTorch outputs per feed (``reference[i][k]`` = output k of feed i).
        feeds: the inputs of those reference runs.
        output: index of the output whose parity is returned (the embedding).
        cpu_runnable: ``None`` = try the CPU provider; ``False`` forces the
            rounded-weights fallback (used by tests).

    Returns:
        ``(dst, parity, info)``; ``info`` goes into ``manifest.extra["fp16"]``:
        what was kept in fp32, how parity was measured, which ops the CPU
        provider ran in fp32, and the parity of other float outputs.
    """
    dst = Path(dst)
    path, kept = to_fp16(Path(raw_onnx), dst)
    info: dict[str, Any] = {**kept}
    got: list[list[NDArray]] | None = None
    if cpu_runnable is not False:
        try:
            got = _run_cpu(path, feeds)
            info["cpu_fp32_emulated_ops"] = cpu_emulated_ops(path)
            info["parity_method"] = (
                "fp16 graph on onnxruntime CPUExecutionProvider (ops listed in cpu_fp32_emulated_ops ran in fp32 "
                "on fp16-rounded inputs); not measured on a GPU"
            )
        except Exception as exc:  # onnxruntime raises untyped errors for missing kernels
            info["cpu_error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            log.warning("fp16 graph does not run on the CPU provider (%s); measuring fp16-rounded weights", exc)
    if got is None:
        approx = rounded_weights_copy(Path(raw_onnx), dst.with_name(dst.stem + "-rounded.onnx"))
        got = _run_cpu(approx, feeds)
        info["parity_method"] = (
            "fp32 graph with fp16-rounded weights on the CPU provider (the fp16 graph itself could not run on "
            "the CPU; activations were not rounded): a lower bound on the error, not measured on a GPU"
        )
    parity = _parity(reference, got, output)
    import onnx

    names = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    others = _other_outputs(reference, got, output, names)
    if others:
        info["other_outputs_parity"] = others
    return path, parity, {"fp16": info}


__all__ = ["convert_fp16", "to_fp16", "cpu_emulated_ops", "normalisation_nodes", "rounded_weights_copy", "FP32_OP_TYPES"]
