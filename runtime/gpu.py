"""GPU execution of tower graphs: onnxruntime-gpu with IO binding, and TensorRT engines.

``gpu-fp16`` runs the fp16 ONNX graph on onnxruntime's CUDAExecutionProvider
through :class:`CudaIOBindingSession`: inputs are copied to the device once
(or bound in place when the caller already holds a CUDA ``OrtValue``), outputs
are allocated on the device and copied to the host once, after the run.

``gpu-trt-fp16`` runs a serialized TensorRT engine with TensorRT's own
runtime (:class:`TensorRTSession`), not onnxruntime's TensorRT provider:

* the engine is built ahead of time by ``crossmodal export tensorrt build`` on the target
  machine; the TensorRT provider would build (or look up in a cache keyed by
  its own hashing rules) at session creation, the "convert at load time"
  pattern we avoid, and it silently hands unsupported subgraphs to CUDA;
* the engine's compute capability and TensorRT version are checked here,
  against the engine manifest, before deserialising it, so a mismatch gives a
  message with the exact rebuild command instead of a deserialisation failure;
* loading needs no ONNX file and no onnxruntime graph optimisation at start-up.

Device memory for TensorRT comes from ``cuda-python`` (NVIDIA's CUDA runtime
bindings, the ones TensorRT's samples use). Nothing in this module has run on a
GPU in this project's CI; the parts that need no GPU (engine naming, engine
manifests, compatibility checks) are unit-tested with fake device info.

Which of these runs a tower folder is decided in one place,
:func:`crossmodal.session.open_session`, from the variant table's ``engine``.
Heavy imports (onnxruntime, tensorrt, cuda) happen inside functions.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from numpy.typing import NDArray

from .errors import ArtifactError, InputError, ProviderUnavailableError
from .variants import TENSORRT, engine_variant

ENGINE_SUFFIX = ".engine"
_ENGINE_RE = re.compile(r"^model\.sm(?P<sm>\d+)\.trt(?P<major>\d+)\.(?P<minor>\d+)(?:\.(?P<precision>int8))?\.engine$")
TRT_VARIANT = engine_variant(TENSORRT)
TRT_INSTALL_HINT = TRT_VARIANT.install
# The command that builds engines (`crossmodal trt build` is its alias, kept for now).
BUILD_COMMAND = "crossmodal export tensorrt build"


# ----------------------------------------------------------------------------- device and engine identity


@dataclass(frozen=True)
class DeviceInfo:
    """What makes a TensorRT engine portable or not: GPU compute capability and TensorRT version."""

    compute_capability: str  # "8.6"
    tensorrt_version: str  # "10.3.0"
    name: str = ""

    @property
    def sm(self) -> str:
        """"8.6" -> "86" (the tag in engine file names)."""
        return self.compute_capability.replace(".", "")

    @property
    def trt_major_minor(self) -> str:
        return ".".join(self.tensorrt_version.split(".")[:2])


def engine_file_name(device: DeviceInfo, precision: str = "fp16") -> str:
    """``model.sm86.trt10.3.engine`` (``.int8`` before the suffix for int8 engines)."""
    if precision not in ("fp16", "int8"):
        raise InputError(f"precision must be fp16 or int8, got {precision!r}")
    tag = ".int8" if precision == "int8" else ""
    return f"model.sm{device.sm}.trt{device.trt_major_minor}{tag}{ENGINE_SUFFIX}"


def parse_engine_file_name(name: str) -> tuple[str, str, str] | None:
    """``model.sm86.trt10.3.engine`` -> ("86", "10.3", "fp16"); None for other names."""
    m = _ENGINE_RE.match(name)
    if m is None:
        return None
    return m["sm"], f"{m['major']}.{m['minor']}", m["precision"] or "fp16"


@dataclass(frozen=True)
class EngineInfo:
    """The engine manifest written next to every engine (``<engine stem>.json``)."""

    compute_capability: str
    tensorrt_version: str
    precision: str  # fp16 | int8 (int8 engines also allow fp16 where uncalibrated)
    tower: str
    profile: Mapping[str, Mapping[str, Sequence[int]]]  # {"min"|"opt"|"max": {input: shape}}
    source_onnx: str  # which variant's graph it was built from
    source_sha256: str
    build_command: str
    device_name: str = ""
    timing_cache: str | None = None
    parity: Mapping[str, Any] = field(default_factory=dict)
    built_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> "EngineInfo":
        try:
            return cls(
                compute_capability=str(d["compute_capability"]), tensorrt_version=str(d["tensorrt_version"]),
                precision=str(d["precision"]), tower=str(d["tower"]),
                profile={k: {n: [int(x) for x in s] for n, s in v.items()} for k, v in d["profile"].items()},
                source_onnx=str(d["source_onnx"]), source_sha256=str(d["source_sha256"]),
                build_command=str(d["build_command"]), device_name=str(d.get("device_name", "")),
                timing_cache=d.get("timing_cache"), parity=dict(d.get("parity") or {}), built_at=str(d.get("built_at", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{where}: malformed engine manifest ({exc!r}); rebuild the engine with `{BUILD_COMMAND}`") from exc


def engine_info_path(engine: Path) -> Path:
    return Path(engine).with_suffix(".json")


def read_engine_info(engine: Path) -> EngineInfo:
    """Read the manifest of ``engine`` (errors name the file)."""
    from .manifest import read_json

    path = engine_info_path(engine)
    return EngineInfo.from_dict(read_json(path), where=str(path))


def check_engine(info: EngineInfo, device: DeviceInfo, engine: Path) -> None:
    """Refuse an engine built for another GPU architecture or TensorRT version.

    TensorRT engines are tied to the SM version they were tuned for and to the
    exact TensorRT release that serialised them; loading a mismatched one fails
    deep inside TensorRT or, worse, runs tactics tuned for another chip.
    """
    problems = []
    if info.compute_capability != device.compute_capability:
        problems.append(f"it was built for compute capability {info.compute_capability} ({info.device_name or 'unknown GPU'}), "
                        f"this GPU is {device.compute_capability} ({device.name or 'unknown'})")
    if _trt_release(info.tensorrt_version) != _trt_release(device.tensorrt_version):
        problems.append(f"it was built with TensorRT {info.tensorrt_version}, this machine has TensorRT {device.tensorrt_version}")
    if problems:
        raise ArtifactError(
            f"TensorRT engine {engine} cannot run here: {'; '.join(problems)}. Engines are not portable; rebuild it "
            f"on this machine with:\n  {info.build_command}"
        )


def _trt_release(version: str) -> tuple[str, ...]:
    # Engines are compatible within one release (major.minor.patch); the build number does not matter.
    return tuple(version.split(".")[:3])


def rebuild_command(bundle: Path, tower: str, profile: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
                    precision: str = "fp16", *, fp16: bool = True, calib: Path | str | None = None) -> str:
    """The :data:`BUILD_COMMAND` line that makes an engine for this tower (recorded in engine manifests, shown in errors).

    ``profile`` adds ``--min/--opt/--max`` over its dynamic axes; ``fp16`` asks for
    fp16 kernels (always with fp16 precision); ``calib`` is the int8 calibration
    data (a placeholder when unknown).
    """
    cmd = f"{BUILD_COMMAND} {bundle} --tower {tower}"
    if fp16 or precision != "int8":
        cmd += " --fp16"
    if precision == "int8":
        cmd += f" --int8 --calib {calib or 'IMAGE_FOLDER'}"
    if profile:
        first = next(iter(profile.get("min", {})), None)
        if first is not None:
            dyn = _dynamic_axes_of(profile, first)
            for key in ("min", "opt", "max"):
                cmd += f" --{key} " + "x".join(str(profile[key][first][i]) for i in dyn)
    return cmd


def _dynamic_axes_of(profile: Mapping[str, Mapping[str, Sequence[int]]], name: str) -> list[int]:
    lo, hi = profile["min"][name], profile["max"][name]
    axes = [i for i, (a, b) in enumerate(zip(lo, hi)) if a != b]
    return axes or [0]


def select_engine(tower_dir: Path, device: DeviceInfo, precision: str = "fp16") -> Path:
    """The engine in ``tower_dir`` built for ``device``; ArtifactError with the build command otherwise."""
    tower_dir = Path(tower_dir)
    wanted = tower_dir / engine_file_name(device, precision)
    bundle, tower = tower_dir.parent.parent, tower_dir.parent.name
    if wanted.is_file():
        info = read_engine_info(wanted)
        check_engine(info, device, wanted)
        return wanted
    others = sorted(p.name for p in tower_dir.glob(f"*{ENGINE_SUFFIX}"))
    profile = None
    for name in others:
        try:
            profile = read_engine_info(tower_dir / name).profile
            break
        except ArtifactError:
            continue
    raise ArtifactError(
        f"{tower_dir} has no {precision} TensorRT engine for this GPU (compute capability {device.compute_capability}, "
        f"TensorRT {device.tensorrt_version}; expected {wanted.name}, found: {others or 'none'}). Engines are not "
        f"portable; build one here with:\n  {rebuild_command(bundle, tower, profile, precision)}"
    )


# ----------------------------------------------------------------------------- CUDA runtime (cuda-python)


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError as exc:
            raise ProviderUnavailableError(f"TensorRT engines need the CUDA runtime bindings: {TRT_INSTALL_HINT}") from exc
    return cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (err, *values); raise on an error code, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise ProviderUnavailableError(f"CUDA call {what} failed with {err}; is an NVIDIA GPU visible (nvidia-smi)?")
    return values[0] if len(values) == 1 else values


def _tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise ProviderUnavailableError(f"variant {TRT_VARIANT.name!r} needs TensorRT: {TRT_INSTALL_HINT}") from exc
    return tensorrt


def current_device(device_id: int = 0) -> DeviceInfo:
    """Compute capability and name of GPU ``device_id`` and the installed TensorRT version."""
    trt = _tensorrt()
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(compute_capability=f"{props.major}.{props.minor}", tensorrt_version=str(trt.__version__), name=name)


class DeviceBuffer:
    """A growable block of device memory (reallocated only when a larger batch arrives)."""

    def __init__(self) -> None:
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = int(_check(_cudart().cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            _cudart().cudaFree(self.ptr)
            self.ptr, self.nbytes = 0, 0

    def __del__(self) -> None:  # pragma: no cover - GPU only
        try:
            self.free()
        except Exception:
            pass


class IOInfo(NamedTuple):
    """Mimics the parts of onnxruntime's NodeArg that the towers read."""

    name: str
    shape: list[int | str]
    type: str


# ----------------------------------------------------------------------------- TensorRT runner


class TensorRTSession:
    """Runs a serialized TensorRT engine with the interface of an onnxruntime session (``get_inputs``, ``run``).

    One execution context and one CUDA stream per session; ``run`` holds a lock,
    so concurrent callers are serialised (create one session per thread for
    parallel streams).
    """

    def __init__(self, engine_path: Path, *, device: DeviceInfo | None = None, check: bool = True):
        import threading

        trt = _tensorrt()
        self.path = Path(engine_path)
        self.device = device or current_device()
        if check:
            check_engine(read_engine_info(self.path), self.device, self.path)
        cudart = _cudart()
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"TensorRT could not deserialise {self.path}; rebuild it with `{BUILD_COMMAND}`")
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._lock = threading.Lock()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [n for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._buffers = {n: DeviceBuffer() for n in names}

    def get_inputs(self) -> list[IOInfo]:
        return [IOInfo(n, list(self._engine.get_tensor_shape(n)), str(self._dtypes[n])) for n in self._inputs]

    def get_outputs(self) -> list[IOInfo]:
        return [IOInfo(n, list(self._engine.get_tensor_shape(n)), str(self._dtypes[n])) for n in self._outputs]

    def get_providers(self) -> list[str]:
        return ["TensorRT"]

    def profile_shapes(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) of input ``name`` in optimisation profile 0."""
        lo, opt, hi = self._engine.get_tensor_profile_shape(name, 0)
        return tuple(lo), tuple(opt), tuple(hi)

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile_shapes(name)
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise InputError(
                f"input {name!r} has shape {shape}, outside the engine's optimisation profile {lo}..{hi} "
                f"({self.path.name}); use smaller batches or rebuild with a larger --max"
            )

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, NDArray]) -> list[NDArray]:
        cudart = _cudart()
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        wanted = list(output_names) if output_names else list(self._outputs)
        with self._lock:
            host_inputs = {}
            for name in self._inputs:
                if name not in feeds:
                    raise InputError(f"engine {self.path.name} needs input {name!r}; got {sorted(feeds)}")
                arr = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
                self._check_shape(name, arr.shape)
                host_inputs[name] = arr  # kept alive until the stream is synchronised
                ptr = self._buffers[name].ensure(arr.nbytes)
                self._context.set_input_shape(name, arr.shape)
                self._context.set_tensor_address(name, ptr)
                _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self._stream), "cudaMemcpyAsync")
            results: dict[str, NDArray] = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                out = np.empty(shape, dtype=self._dtypes[name])
                self._context.set_tensor_address(name, self._buffers[name].ensure(out.nbytes))
                results[name] = out
            if not self._context.execute_async_v3(int(self._stream)):  # TensorRT takes the raw handle
                raise ArtifactError(f"TensorRT failed to run {self.path}")
            for name in wanted:
                out = results[name]
                _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name].ptr, out.nbytes, d2h, self._stream),
                       "cudaMemcpyAsync")
            _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return [results[n] for n in wanted]


# ----------------------------------------------------------------------------- onnxruntime CUDA with IO binding


class CudaIOBindingSession:
    """Wraps a CUDA onnxruntime session so that ``run`` uses IO binding.

    Inputs: numpy arrays are copied to the device once; CUDA ``OrtValue``s
    (e.g. from :meth:`to_device`, or from GPU-side preprocessing) are bound in
    place with no host round trip. Outputs: allocated on the device and copied
    to the host once, after the run, in one call.
    """

    def __init__(self, session: Any, device_id: int = 0):
        self._session = session
        self.device_id = device_id

    def __getattr__(self, name: str) -> Any:
        # get_inputs, get_outputs, get_providers... are the wrapped session's.
        return getattr(self._session, name)

    def to_device(self, array: NDArray) -> Any:
        """Copy ``array`` to the GPU once and return an ``OrtValue`` reusable across runs."""
        from .session import import_onnxruntime

        ort = import_onnxruntime()
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", self.device_id)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any], run_options: Any = None) -> list[NDArray]:
        binding = self._session.io_binding()
        for name, value in feeds.items():
            if hasattr(value, "device_name"):  # an OrtValue: already placed by the caller
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_ortvalue_input(name, self.to_device(np.asarray(value)))
        names = list(output_names) if output_names else [o.name for o in self._session.get_outputs()]
        for name in names:
            binding.bind_output(name, "cuda", self.device_id)
        self._session.run_with_iobinding(binding, run_options)
        return list(binding.copy_outputs_to_cpu())


def with_io_binding(session: Any) -> Any:
    """Give an onnxruntime session IO binding when CUDA really runs it; return others (CPU fallback) unchanged."""
    if "CUDAExecutionProvider" in session.get_providers():
        return CudaIOBindingSession(session)
    return session


def open_trt_session(tower_dir: Path, *, device: DeviceInfo | None = None) -> TensorRTSession:
    """The engine in a TensorRT tower folder built for this GPU (``device``: this machine's by default).

    Without TensorRT / CUDA this raises ProviderUnavailableError naming what to
    install; the CPU fallback is :func:`crossmodal.session.open_session`'s choice.
    """
    dev = device or current_device()
    return TensorRTSession(select_engine(Path(tower_dir), dev), device=dev)


def engine_manifest_json(info: EngineInfo) -> str:
    """Serialised engine manifest (stable key order, for diffs)."""
    return json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n"


__all__ = [
    "BUILD_COMMAND", "DeviceInfo", "EngineInfo", "TensorRTSession", "CudaIOBindingSession", "check_engine", "current_device",
    "engine_file_name", "parse_engine_file_name", "read_engine_info", "rebuild_command", "select_engine",
    "open_trt_session", "with_io_binding", "engine_manifest_json",
]
