"""Fuse eager self-attention subgraphs into onnxruntime's ``MultiHeadAttention`` op.

onnxruntime's own transformer fusions match the attention patterns of older
transformers releases; the graphs that transformers 5 traces (eager attention:
``softmax(q @ k^T * scale + mask) @ v`` with the mask built once per forward)
keep every layer's attention as ~25 small ops (Reshape, Transpose, Shape,
Gather, Concat, ...). At batch 1 and a dozen tokens those ops cost more than
the matrix products, so this rewrite replaces each layer's chain from the
Q/K/V projections to the merged heads with one ``com.microsoft.MultiHeadAttention``
node. The additive mask (causal and/or padding) is passed as ``attention_bias``
unchanged, so the maths is the same; the export pipeline re-checks parity and
timing like any other rewrite (``optimize.py``).

The matcher walks back from each Softmax and only rewrites a layer when the
whole pattern is there; anything unexpected leaves the layer as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _const_value(name: str, producers: dict[str, Any], inits: dict[str, Any]) -> np.ndarray | None:
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
    return None


def fuse_attention(src: Path, dst: Path, num_heads: int) -> int:
    """Rewrite ``src`` into ``dst``; returns the number of attention layers fused (0: nothing written)."""
    from onnx import helper

    from . import onnx_files

    model = onnx_files.load(src)
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name: i for i in g.initializer}

    def prod(name: str, op: str) -> Any:
        n = producers.get(name)
        return n if n is not None and n.op_type == op else None

    def only_consumer(name: str, op: str) -> Any:
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 and c[0].op_type == op else None

    def head_input(t: Any) -> str | None:
        # Transpose(Reshape(projection)) -> the projection output (batch, seq, hidden)
        r = prod(t.input[0], "Reshape") if t is not None else None
        return r.input[0] if r is not None else None

    new_nodes: list[tuple[Any, Any]] = []  # (node to replace, MHA node)
    fused = 0
    for sm in [n for n in g.node if n.op_type == "Softmax"]:
        mask = None
        pre = producers.get(sm.input[0])
        if pre is not None and pre.op_type == "Add":
            mul = next((producers[i] for i in pre.input if i in producers and producers[i].op_type == "Mul"), None)
            if mul is None:
                continue
            mask = next(i for i in pre.input if i != mul.output[0])
        elif pre is not None and pre.op_type == "Mul":
            mul = pre
        else:
            continue
        qk = next((producers[i] for i in mul.input if i in producers and producers[i].op_type == "MatMul"), None)
        if qk is None:
            continue
        scale_name = next(i for i in mul.input if i != qk.output[0])
        scale = _const_value(scale_name, producers, inits)
        if scale is None or scale.size != 1:
            continue
        q_in = head_input(prod(qk.input[0], "Transpose"))
        k_in = head_input(prod(qk.input[1], "Transpose"))
        # Softmax -> (Cast)* -> MatMul(probs, Transpose(Reshape(v))) -> Transpose -> Reshape
        cur = sm.output[0]
        while only_consumer(cur, "Cast") is not None:
            cur = only_consumer(cur, "Cast").output[0]
        av = only_consumer(cur, "MatMul")
        if av is None or av.input[0] != cur:
            continue
        v_in = head_input(prod(av.input[1], "Transpose"))
        tr = only_consumer(av.output[0], "Transpose")
        merge = only_consumer(tr.output[0], "Reshape") if tr is not None else None
        if None in (q_in, k_in, v_in, merge):
            continue
        inputs = [q_in, k_in, v_in, "", "", mask or ""]
        while inputs and inputs[-1] == "":
            inputs.pop()
        mha = helper.make_node("MultiHeadAttention", inputs, [merge.output[0]], name=f"MultiHeadAttention_{fused}",
                               domain="com.microsoft", num_heads=int(num_heads), scale=float(scale.reshape(-1)[0]))
        new_nodes.append((merge, mha))
        fused += 1
    if not fused:
        return 0
    replace = {id(old): new for old, new in new_nodes}
    nodes = [replace.get(id(n), n) for n in g.node]
    # Drop what no longer feeds a graph output (the old per-layer attention ops).
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx_files.save(model, dst)
    return fused


__all__ = ["fuse_attention"]
