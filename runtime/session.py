"""onnxruntime sessions: the one place that maps a variant to execution providers.

``onnxruntime`` is imported inside the functions so that ``import crossmodal``
stays cheap and a missing install surfaces as a clear error at load time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .errors import ArtifactError, ProviderUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

# Variant -> providers in preference order. CPU is deliberately absent from the
# GPU lists: a silent fallback would hide a broken CUDA install behind a 20x
# slower service. Callers opt into fallback with ``allow_cpu_fallback``.
VARIANT_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu-fp32": ("CPUExecutionProvider",),
    "cpu-int8": ("CPUExecutionProvider",),
    "gpu-fp16": ("CUDAExecutionProvider",),
    "gpu-trt-fp16": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
}

_INSTALL_HINT = {
    "CPUExecutionProvider": "pip install 'crossmodal[cpu]' (onnxruntime)",
    "CUDAExecutionProvider": "pip install 'crossmodal[gpu]' (onnxruntime-gpu, with a CUDA 12 runtime and a visible GPU)",
    "TensorrtExecutionProvider": "pip install 'crossmodal[gpu]' and TensorRT 10 libraries on the library path",
}


def import_onnxruntime() -> "onnxruntime":
    """Import onnxruntime or explain how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ProviderUnavailableError(
            "onnxruntime is not installed: pip install 'crossmodal[cpu]' (or 'crossmodal[gpu]' on CUDA machines)"
        ) from exc
    return onnxruntime


def providers_for(variant: str, *, allow_cpu_fallback: bool = False) -> list[str]:
    """Execution providers for ``variant`` that are present here, or ProviderUnavailableError."""
    ort = import_onnxruntime()
    wanted = VARIANT_PROVIDERS.get(variant)
    if wanted is None:
        raise ArtifactError(f"unknown variant {variant!r}; expected one of {sorted(VARIANT_PROVIDERS)}")
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    if not chosen or (variant == "gpu-trt-fp16" and "TensorrtExecutionProvider" not in chosen):
        if allow_cpu_fallback:
            return ["CPUExecutionProvider"]
        missing = [p for p in wanted if p not in available]
        raise ProviderUnavailableError(
            f"variant {variant!r} needs {', '.join(missing)}, which this onnxruntime "
            f"({ort.__version__}, providers: {', '.join(sorted(available))}) does not have. "
            f"Install: {_INSTALL_HINT[missing[0]]}; or load a CPU variant (variant='cpu-int8'), "
            "or pass allow_cpu_fallback=True to run the GPU graph on the CPU."
        )
    if "CPUExecutionProvider" not in chosen and "CPUExecutionProvider" in available:
        # CPU stays last so that the few ops a GPU provider lacks (shape math) still run.
        chosen.append("CPUExecutionProvider")
    return chosen


def make_session(
    model_path: Path,
    variant: str,
    *,
    threads: int | None = None,
    allow_cpu_fallback: bool = False,
    providers: Sequence[str] | None = None,
) -> "onnxruntime.InferenceSession":
    """Create an InferenceSession for one tower graph.

    ``threads`` sets onnxruntime's intra-op pool (``None`` = its default, one
    thread per physical core). Inter-op parallelism stays off: these graphs are
    sequential chains where it only adds scheduling noise.
    """
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # warnings about unused initialisers are noise for users
    chosen = list(providers) if providers else providers_for(variant, allow_cpu_fallback=allow_cpu_fallback)
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ArtifactError(
            f"onnxruntime cannot load {model_path} ({type(exc).__name__}: {exc}). "
            "The file may be corrupt or from a newer exporter: run `crossmodal verify` on the bundle or re-export it."
        ) from exc
