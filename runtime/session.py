"""Opening sessions: :func:`open_session` is the one place that decides what runs a tower folder.

What runs a variant, and on which providers, is the variant table's
(:mod:`crossmodal.variants`); this module applies it. ``onnxruntime`` is
imported inside the functions so that ``import crossmodal`` stays cheap and a
missing install surfaces as a clear error at load time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .errors import ArtifactError, InputError, ProviderUnavailableError
from .inputs import positive_int
from .variants import ONNXRUNTIME_CUDA, TENSORRT, get_variant

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

    from .manifest import TowerManifest


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
    """The onnxruntime providers that run ``variant`` here, or ProviderUnavailableError saying what to install."""
    row = get_variant(variant)
    if not row.runs_onnx:
        raise InputError(f"variant {variant!r} is a {row.engine} engine, not an onnxruntime graph; open it with open_session")
    ort = import_onnxruntime()
    available = set(ort.get_available_providers())
    missing = [p for p in row.providers if p not in available]
    if missing:
        if allow_cpu_fallback:
            return ["CPUExecutionProvider"]
        raise ProviderUnavailableError(
            f"variant {variant!r} needs {', '.join(missing)}, which this onnxruntime "
            f"({ort.__version__}, providers: {', '.join(sorted(available))}) does not have. "
            f"Install: {row.install}; or load a CPU variant (variant='cpu-int8'), "
            "or pass allow_cpu_fallback=True to run the GPU graph on the CPU."
        )
    chosen = list(row.providers)
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
    spin: bool = True,
) -> "onnxruntime.InferenceSession":
    """An onnxruntime InferenceSession for one ONNX graph file, on ``variant``'s providers (or ``providers``).

    ``threads`` sets onnxruntime's intra-op pool (``None`` = its default, one
    thread per physical core). Inter-op parallelism stays off: these graphs are
    sequential chains where it only adds scheduling noise. ``spin=False`` makes idle
    intra-op threads sleep instead of spin-waiting for work: a little slower per call in
    a process that only runs the model, but the cores go to the process's other threads
    (the service's event loop and decoders: measured under 4x overload, 35 % more
    answers and a 10x lower p99). Tower folders are
    opened with :func:`open_session`, which also covers TensorRT engines and IO binding.
    """
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        opts.intra_op_num_threads = positive_int("threads", threads)
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # warnings about unused initialisers are noise for users
    chosen = list(providers) if providers else providers_for(variant, allow_cpu_fallback=allow_cpu_fallback)
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ArtifactError(
            f"onnxruntime cannot load {model_path} ({type(exc).__name__}: {exc}). "
            "The file may be corrupt or from a newer exporter: run `crossmodal verify` on the bundle or re-export it."
        ) from exc


def check_data_file(tower_dir: Path, manifest: "TowerManifest") -> None:
    """Raise ArtifactError when the graph's external data file (if it has one) is missing or not its recorded size.

    onnxruntime finds the file by itself (the graph is opened by path), but
    without it fails deep inside with a message about some tensor. The size is
    checked here, at every load, because it is free; the sha256 is checked by
    `crossmodal verify`, because hashing gigabytes at every load is not.
    """
    if manifest.data_file is None:
        return
    path = Path(tower_dir) / manifest.data_file
    what = (f"the weights of {manifest.model_file} ({manifest.data_bytes} bytes, named in manifest.json) belong "
            f"there. Copy the folder {tower_dir} again with both files, or re-export the bundle; "
            "`crossmodal verify` re-checks both files' sha256")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: {what}") from None
    if size != manifest.data_bytes:
        raise ArtifactError(f"{path} has {size} bytes, not {manifest.data_bytes}: it is truncated or from another "
                            f"export; {what}")


def open_session(
    tower_dir: Path,
    manifest: "TowerManifest",
    variant: str,
    *,
    threads: int | None = None,
    allow_cpu_fallback: bool = False,
    providers: Sequence[str] | None = None,
    spin: bool = True,
) -> Any:
    """The session that runs the tower folder ``<bundle>/<tower>/<variant>``, chosen by the table's ``engine``.

    * ``onnxruntime``: ``manifest.model_file`` on the variant's providers (its ``data_file``, when it has
      one, is checked first: :func:`check_data_file`).
    * ``onnxruntime-cuda``: the same, wrapped for IO binding when CUDA really runs it;
      without CUDA, ProviderUnavailableError naming what to install, or (``allow_cpu_fallback``)
      the same graph on the CPU provider.
    * ``tensorrt``: the engine in the folder built for this GPU, run by TensorRT's own
      runtime (:func:`crossmodal.gpu.open_trt_session`); without TensorRT / CUDA,
      ProviderUnavailableError, or (``allow_cpu_fallback``) the ONNX graph of the
      variant's ``source`` folder next to it (an engine cannot run on a CPU).

    ``providers`` replaces the variant's onnxruntime providers (not for TensorRT engines).
    Every returned session has onnxruntime's ``get_inputs`` / ``get_outputs`` / ``run``.
    """
    row = get_variant(variant)
    tower_dir = Path(tower_dir)
    if row.engine == TENSORRT:
        if providers:
            raise InputError(f"providers= selects onnxruntime providers; variant {variant!r} runs a TensorRT engine. "
                             "Leave providers unset.")
        from .gpu import open_trt_session

        try:
            return open_trt_session(tower_dir)
        except ProviderUnavailableError:
            if not allow_cpu_fallback or row.source is None:
                raise
        return _open_source(tower_dir, row.source, threads=threads, spin=spin)
    check_data_file(tower_dir, manifest)
    session = make_session(tower_dir / manifest.model_file, variant, threads=threads,
                           allow_cpu_fallback=allow_cpu_fallback, providers=providers, spin=spin)
    if row.engine == ONNXRUNTIME_CUDA:
        from .gpu import with_io_binding

        session = with_io_binding(session)
    return session


def _open_source(tower_dir: Path, source: str, *, threads: int | None, spin: bool = True) -> Any:
    """CPU fallback of a derived variant: the graph of its ``source`` variant, next to it in the bundle."""
    from .manifest import MANIFEST_FILE, read_manifest

    sibling = tower_dir.parent / source
    if not (sibling / MANIFEST_FILE).is_file():
        raise ArtifactError(
            f"allow_cpu_fallback for {tower_dir} needs the {source} ONNX graph next to it ({sibling}); "
            f"export it with --targets {source}"
        )
    return open_session(sibling, read_manifest(sibling), source, threads=threads, allow_cpu_fallback=True,
                        spin=spin)


__all__ = ["check_data_file", "import_onnxruntime", "providers_for", "make_session", "open_session"]
