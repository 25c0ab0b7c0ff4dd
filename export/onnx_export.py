"""Tracing a torch tower into an ONNX graph.

We use the TorchScript-based exporter (``dynamo=False``): on these
encoder-only transformers it yields the plain MatMul/Softmax/LayerNorm patterns
that onnxruntime's transformer fusions recognise, with named dynamic axes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

DEFAULT_OPSET = 17


def to_torch(feed: Mapping[str, NDArray], names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """Feed dict (numpy) -> positional torch tensors in graph-input order."""
    return tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names)


@torch.inference_mode()
def run_torch(module: torch.nn.Module, feed: Mapping[str, NDArray], names: Sequence[str]) -> list[NDArray[np.float32]]:
    """Run the reference module on one feed; always returns a list of float32 arrays."""
    out = module(*to_torch(feed, names))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float().numpy() for o in outs]


def export_onnx(
    module: torch.nn.Module,
    example: Mapping[str, NDArray],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    path: Path,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``module`` to ``path`` and check the graph.

    Weights stay inline unless the graph is large (``onnx_files``): then they
    are in ``path.data``. For graphs past protobuf's 2 GB the TorchScript
    exporter itself writes every weight to its own file beside the graph, so it
    traces into a scratch folder, and the graph is copied out of it into the
    one-data-file layout the rest of the export reads.
    """
    import shutil

    import onnx

    from . import onnx_files

    path = Path(path)
    scratch = path.with_name(f".{path.name}.trace")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    traced = scratch / path.name
    try:
        module.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python-side shape math are expected
            torch.onnx.export(
                module,
                to_torch(example, input_names),
                str(traced),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        onnx.checker.check_model(str(traced))  # by path: the checker reads graphs past 2 GB only that way
        if len(list(scratch.iterdir())) > 1:  # weights written beside the graph
            onnx_files.gather(traced, path)
        elif traced.stat().st_size > onnx_files.EXTERNAL_MIN_BYTES:
            onnx_files.save(onnx_files.load(traced), path)
        else:
            onnx_files.move(traced, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path
