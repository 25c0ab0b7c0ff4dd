"""Smaller embedding tables: the token-embedding Gather reads int8 rows (one scale per row) or fp16 rows.

In a text tower's int8 graph the fp32 token-embedding table is most of the file
and of the session's memory (CLIP ViT-B/32: 101 of 140 MB), because the int8
recipes only quantise matrix products. This rewrite stores every large table
that a Gather indexes as symmetric int8 with a per-row fp32 scale:
``Gather(table)`` becomes ``Gather(table_int8) -> Cast -> Mul(Gather(scales))``.
Per-row scales keep rare tokens (small rows) as exact as frequent ones, which a
single per-tensor scale (onnxruntime's own Gather quantiser) would not; the
error is at most half a step of each row's own range. ``fp16`` tables
(``Gather -> Cast``) halve the table instead of quartering it, with about 16x
less error. The pipeline tries int8, then fp16, and keeps the first whose parity
holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Tables smaller than this stay fp32: the position embeddings and token-type
# tables are a few hundred KB, where three extra nodes cost more than they save.
MIN_TABLE_ELEMENTS = 1 << 20


def quantize_row_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 rows, fp32 scale per row) with ``rows * scale`` within half a step of ``table``."""
    table = np.asarray(table, dtype=np.float32)
    peak = np.abs(table).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_embeddings(src: Path, dst: Path, kind: str = "int8", min_elements: int = MIN_TABLE_ELEMENTS
                        ) -> list[dict[str, Any]]:
    """Rewrite ``src`` into ``dst`` with ``kind`` ("int8" or "fp16") embedding tables.

    Returns one entry per table rewritten; [] when the graph has none (nothing is written).
    """
    from onnx import TensorProto, helper, numpy_helper

    from . import onnx_files

    model = onnx_files.load(src)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            users[name] = users.get(name, 0) + 1
    done: list[dict[str, Any]] = []
    nodes: list[Any] = []
    gather, cast = "Gather", TensorProto.FLOAT
    for n in graph.node:
        table = inits.get(n.input[0]) if n.op_type == "Gather" else None
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if (table is None or table.data_type != TensorProto.FLOAT or len(table.dims) != 2 or axis != 0
                or table.dims[0] * table.dims[1] < min_elements or users.get(table.name, 0) != 1):
            nodes.append(n)
            continue
        values = numpy_helper.to_array(table)
        base, out = table.name, n.output[0]
        graph.initializer.remove(table)
        if kind == "int8":
            q, scale = quantize_row_int8(values)
            graph.initializer.extend([numpy_helper.from_array(q, f"{base}_int8"),
                                      numpy_helper.from_array(scale, f"{base}_row_scale")])
            nodes += [
                helper.make_node(gather, [f"{base}_int8", n.input[1]], [f"{out}_int8"], name=f"{n.name}_int8", axis=0),
                helper.make_node("Cast", [f"{out}_int8"], [f"{out}_float"], name=f"{n.name}_cast", to=cast),
                helper.make_node(gather, [f"{base}_row_scale", n.input[1]], [f"{out}_scale"], name=f"{n.name}_scale",
                                 axis=0),
                helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out], name=f"{n.name}_dequant"),
            ]
            stored, nbytes = q.astype(np.float32) * scale, q.nbytes + scale.nbytes
        elif kind == "fp16":
            half = values.astype(np.float16)
            graph.initializer.append(numpy_helper.from_array(half, f"{base}_fp16"))
            nodes += [
                helper.make_node(gather, [f"{base}_fp16", n.input[1]], [f"{out}_fp16"], name=f"{n.name}_fp16", axis=0),
                helper.make_node("Cast", [f"{out}_fp16"], [out], name=f"{n.name}_cast", to=cast),
            ]
            stored, nbytes = half.astype(np.float32), half.nbytes
        else:
            raise ValueError(f"unknown embedding table kind {kind!r}; choose int8 or fp16")
        done.append({"table": base, "kind": kind, "rows": int(values.shape[0]), "dim": int(values.shape[1]),
                     "bytes_fp32": int(values.nbytes), "bytes": int(nbytes),
                     "max_abs_error": float(np.abs(stored - values).max())})
    if not done:
        return []
    del graph.node[:]
    graph.node.extend(nodes)
    onnx_files.save(model, dst)
    return done


__all__ = ["MIN_TABLE_ELEMENTS", "quantize_embeddings", "quantize_row_int8"]
