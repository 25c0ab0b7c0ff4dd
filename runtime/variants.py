"""The variant table: every fact about a variant lives here and nowhere else.

A *variant* is one build of a tower: the graph's precision and the engine that
runs it. The runtime (manifest validation, :func:`crossmodal.session.open_session`
for the loader, verify and GPU sessions), the exporter (which targets it writes,
which variant TensorRT engines are built from), the Triton repository export and
the CLI's ``--variant`` choices all read this table, so adding a variant is one row.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ArtifactError

# What runs a variant's file; open_session dispatches on these and nothing else.
ONNXRUNTIME = "onnxruntime"  # an ONNX graph on onnxruntime, plain session.run
ONNXRUNTIME_CUDA = "onnxruntime-cuda"  # an ONNX graph on onnxruntime's CUDA provider, with IO binding
TENSORRT = "tensorrt"  # a serialized engine run by TensorRT's own runtime (crossmodal.gpu)
ENGINES = (ONNXRUNTIME, ONNXRUNTIME_CUDA, TENSORRT)


@dataclass(frozen=True)
class Variant:
    """One row of the variant table.

    ``providers``: onnxruntime execution providers in preference order; empty for
    a TensorRT engine, which onnxruntime does not run. CPU is deliberately absent
    from the GPU rows: a silent fallback would hide a broken CUDA install behind a
    20x slower service (callers opt in with ``allow_cpu_fallback``). ``engine``:
    what runs the file, one of :data:`ENGINES`. ``install``: what to install when
    that engine is missing. ``exportable``: written by ``crossmodal export
    --targets`` (engines are built on the target GPU by ``crossmodal export
    tensorrt`` instead). ``triton``: the Triton repository export can serve it. ``source``:
    the variant a derived one is built from (and whose graph a CPU fallback runs).
    """

    name: str
    device: str
    precision: str
    providers: tuple[str, ...]
    engine: str
    install: str
    exportable: bool
    triton: bool
    source: str | None = None
    pad_exact: bool = True
    help: str = ""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"variant {self.name!r}: engine must be one of {ENGINES}, got {self.engine!r}")
        if (self.engine == TENSORRT) == bool(self.providers):
            raise ValueError(f"variant {self.name!r}: onnxruntime engines need providers, TensorRT takes none")
        if self.engine == TENSORRT and self.source is None:
            raise ValueError(f"variant {self.name!r}: a TensorRT engine is built from an ONNX variant; name its source")

    @property
    def is_gpu(self) -> bool:
        return self.device == "gpu"

    @property
    def runs_onnx(self) -> bool:
        """The file is an ONNX graph, which onnxruntime's CPU provider can also run (fp16 ops emulated)."""
        return self.engine != TENSORRT


_CPU_INSTALL = "pip install 'crossmodal[cpu]' (onnxruntime)"
_GPU = "'crossmodal[gpu]'"

TABLE: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("cpu-fp32", "cpu", "fp32", ("CPUExecutionProvider",), ONNXRUNTIME, _CPU_INSTALL,
                exportable=True, triton=True,
                help="float32 ONNX on onnxruntime's CPU provider (the reference)"),
        Variant("cpu-int8", "cpu", "int8", ("CPUExecutionProvider",), ONNXRUNTIME, _CPU_INSTALL,
                exportable=True, triton=True, pad_exact=False,
                help="int8-quantised ONNX for CPUs (recipe measured at export)"),
        Variant("gpu-fp16", "gpu", "fp16", ("CUDAExecutionProvider",), ONNXRUNTIME_CUDA,
                f"pip install {_GPU} (onnxruntime-gpu, with a CUDA 12 runtime and a visible GPU)",
                exportable=True, triton=True,
                help="float16 ONNX on onnxruntime's CUDA provider with IO binding"),
        Variant("gpu-trt-fp16", "gpu", "fp16", (), TENSORRT,
                f"pip install {_GPU} (tensorrt>=10 and cuda-python, with an NVIDIA driver and a visible GPU)",
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


def engine_variant(engine: str) -> Variant:
    """The row run by ``engine`` (e.g. the one TensorRT variant engine builds write)."""
    rows = [v for v in TABLE.values() if v.engine == engine]
    if len(rows) != 1:
        raise LookupError(f"the variant table has {len(rows)} rows run by {engine!r}, expected one")
    return rows[0]


__all__ = [
    "Variant", "TABLE", "VARIANTS", "DEFAULT_VARIANT", "EXPORTABLE", "TRITON", "ENGINES",
    "ONNXRUNTIME", "ONNXRUNTIME_CUDA", "TENSORRT", "get_variant", "engine_variant",
]
