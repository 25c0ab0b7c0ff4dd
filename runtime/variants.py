"""The variant table: every fact about a variant lives here and nowhere else.

A *variant* is one build of a tower: the graph's precision and the engine that
runs it. The runtime (loader, verify, GPU sessions), the exporter (which targets
it writes), the Triton repository export and the CLI's ``--variant`` choices all
read this table, so adding a variant is one row.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ArtifactError


@dataclass(frozen=True)
class Variant:
    """One row of the variant table.

    ``providers``: onnxruntime execution providers in preference order. CPU is
    deliberately absent from the GPU rows: a silent fallback would hide a broken
    CUDA install behind a 20x slower service (callers opt in with
    ``allow_cpu_fallback``). ``engine``: what runs the file: ``onnxruntime``,
    ``onnxruntime-cuda`` (IO binding when CUDA really runs it) or ``tensorrt``
    (a serialized engine run by TensorRT's own runtime, see :mod:`crossmodal.gpu`).
    ``exportable``: written by ``crossmodal export --targets`` (engines are built on
    the target GPU by ``crossmodal export tensorrt`` instead). ``triton``: the Triton
    repository export can serve it. ``source``: the variant a derived one is built from.
    """

    name: str
    device: str
    precision: str
    providers: tuple[str, ...]
    engine: str
    exportable: bool
    triton: bool
    source: str | None = None
    help: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.device == "gpu"


TABLE: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("cpu-fp32", "cpu", "fp32", ("CPUExecutionProvider",), "onnxruntime", exportable=True, triton=True,
                help="float32 ONNX on onnxruntime's CPU provider (the reference)"),
        Variant("cpu-int8", "cpu", "int8", ("CPUExecutionProvider",), "onnxruntime", exportable=True, triton=True,
                help="int8-quantised ONNX for CPUs (recipe measured at export)"),
        Variant("gpu-fp16", "gpu", "fp16", ("CUDAExecutionProvider",), "onnxruntime-cuda", exportable=True,
                triton=True, help="float16 ONNX on onnxruntime's CUDA provider with IO binding"),
        Variant("gpu-trt-fp16", "gpu", "fp16", ("TensorrtExecutionProvider", "CUDAExecutionProvider"), "tensorrt",
                exportable=False, triton=True, source="gpu-fp16",
                help="TensorRT engine built on the target GPU from gpu-fp16"),
    )
}

VARIANTS: tuple[str, ...] = tuple(TABLE)
DEFAULT_VARIANT = "cpu-fp32"
EXPORTABLE: tuple[str, ...] = tuple(n for n, v in TABLE.items() if v.exportable)
TRITON: tuple[str, ...] = tuple(n for n, v in TABLE.items() if v.triton)


def get_variant(name: str) -> Variant:
    """The table row of ``name``, or :class:`~crossmodal.errors.ArtifactError` listing the choices."""
    try:
        return TABLE[name]
    except (KeyError, TypeError):
        raise ArtifactError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)}") from None


__all__ = ["Variant", "TABLE", "VARIANTS", "DEFAULT_VARIANT", "EXPORTABLE", "TRITON", "get_variant"]
