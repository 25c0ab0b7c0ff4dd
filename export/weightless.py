"""Graph rewrites run on the graph without its weights, which are put back afterwards.

onnxruntime's transformer fusions and its symbolic shape inference copy the
whole ModelProto, weights included, every time they infer shapes (five or more
times per fusion run), and keep the copies alive until the run ends: fusing a
350 MB ViT-B/32 image graph held 2.5 GB, the peak of a full-size export. Both
only need the weights' shapes, never their values, so they run here on a
graph whose large initializers are stubs: same name, type and dims, data
"external" at a location that does not exist. A rewrite that does read a
stubbed weight fails loudly (file not found) instead of reading garbage; the
callers then redo the step on the full graph, so the output never depends on
this module, only the memory does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Smaller initializers stay in the graph: shape inference and the fusions read
# the values of shape-like constants (Reshape targets, axes, scalars), all far below this.
MIN_STUB_BYTES = 1 << 20
# Where a stub says its data is: no such file, so reading it raises.
STUB_LOCATION = "crossmodal-stubbed-weight-not-on-disk"


def load_without_weights(path: Path, min_bytes: int | None = None) -> tuple[Any, dict[str, bytes]]:
    """(``path``'s graph with every initializer of >= ``min_bytes`` stubbed, {name: the stubbed raw bytes}).

    ``min_bytes`` defaults to :data:`MIN_STUB_BYTES`, read at call time.
    """
    import onnx
    from onnx import TensorProto

    from . import onnx_files

    min_bytes = MIN_STUB_BYTES if min_bytes is None else min_bytes
    # Weights stored in a real data file are read in here too: once loaded, they are
    # inline (DEFAULT) like the others, so only this module's stubs ever name STUB_LOCATION.
    model = onnx_files.load(path)
    weights: dict[str, bytes] = {}
    for t in model.graph.initializer:
        if t.data_location == TensorProto.DEFAULT and t.HasField("raw_data") and len(t.raw_data) >= min_bytes:
            weights[t.name] = t.raw_data
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            entry = t.external_data.add()
            entry.key, entry.value = "location", STUB_LOCATION
    # A fresh message: protobuf keeps the cleared bytes in the loaded message's arena until it is freed.
    light = onnx.ModelProto.FromString(model.SerializeToString())
    del model
    return light, weights


def restore_weights(model: Any, weights: dict[str, bytes]) -> None:
    """Move the bytes of :func:`load_without_weights` back into ``model`` (in place; ``weights`` is emptied).

    Raises ValueError when a stub has no bytes to go back (a rewrite renamed or
    copied a weight): the caller redoes the step with the weights loaded.
    """
    from onnx import TensorProto

    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL or not any(e.value == STUB_LOCATION for e in t.external_data):
            continue
        if t.name not in weights:
            raise ValueError(f"initializer {t.name!r} is a weight stub with no stored bytes")
        t.raw_data = weights.pop(t.name)  # one copy of each weight at a time
        del t.external_data[:]
        t.ClearField("data_location")  # absent, as in the source (proto2 would serialize an explicit 0)


__all__ = ["MIN_STUB_BYTES", "STUB_LOCATION", "load_without_weights", "restore_weights"]
