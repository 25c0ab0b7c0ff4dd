"""TensorRT engines built on the target GPU from a bundle's GPU ONNX graph.

``build_tower`` parses the ``gpu-fp16`` graph with TensorRT's ONNX parser,
sets fp16 (and optionally int8 with an entropy calibrator fed from a folder of
images, or a text file of captions for the text tower), adds one optimisation
profile from ``--min/--opt/--max`` (batch, and sequence length for text),
reuses a timing cache file across builds, and installs the engine as
``<bundle>/<tower>/gpu-trt-fp16/model.sm86.trt10.3.engine`` with an engine
manifest next to it. Engines for several GPUs can live side by side; the
runtime picks the one matching its GPU and refuses the others.

The file handling (:func:`install_engine`, profiles, names) needs no GPU and
is unit-tested; :func:`build_engine` needs TensorRT and a GPU and has not been
run in this project's CI.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from crossmodal.errors import ArtifactError, InputError
from crossmodal.gpu import (DeviceInfo, EngineInfo, TensorRTSession, current_device, engine_file_name, engine_info_path,
                            engine_manifest_json, rebuild_command)
from crossmodal.manifest import (DATA_FIELDS, MANIFEST_FILE, REFERENCE_FILE, TOKENIZER_FILE, TowerManifest, read_bundle,
                                 read_manifest)
from crossmodal.variants import TENSORRT, engine_variant

from .artifact import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

_TRT = engine_variant(TENSORRT)  # the variant table's TensorRT row
VARIANT = _TRT.name
SOURCE_VARIANT = str(_TRT.source)  # rows run by TensorRT always name the ONNX variant they are built from
Profile = dict[str, dict[str, list[int]]]  # {"min"|"opt"|"max": {input name: shape}}


def parse_shape_arg(text: str) -> tuple[int, ...]:
    """``"8"`` -> (8,), ``"8x32"`` -> (8, 32): batch, then sequence length."""
    try:
        dims = tuple(int(x) for x in str(text).lower().split("x"))
    except ValueError:
        raise InputError(f"shape {text!r} must look like BATCH or BATCHxSEQUENCE, e.g. 8 or 8x32") from None
    if not dims or any(d < 1 for d in dims) or len(dims) > 2:
        raise InputError(f"shape {text!r} must be BATCH or BATCHxSEQUENCE with positive numbers")
    return dims


def default_shapes(manifest: TowerManifest) -> dict[str, tuple[int, ...]]:
    """min/opt/max when none are given: batch 1/8/64, sequence 1/32/max_length."""
    if manifest.text is not None:
        top = manifest.text.max_length
        return {"min": (1, 1), "opt": (8, min(32, top)), "max": (64, top)}
    return {"min": (1,), "opt": (8,), "max": (64,)}


def input_profile(manifest: TowerManifest, shapes: Mapping[str, Sequence[int] | None]) -> Profile:
    """Concrete min/opt/max shapes of every graph input.

    The k-th dynamic axis of each input (batch first, then sequence) takes the
    k-th number of the ``--min/--opt/--max`` argument; static axes keep their
    size from the manifest. Missing sequence numbers default as in
    :func:`default_shapes`.
    """
    defaults = default_shapes(manifest)
    given = {k: tuple(shapes.get(k) or defaults[k]) for k in ("min", "opt", "max")}
    profile: Profile = {k: {} for k in given}
    for spec in manifest.inputs:
        dyn = [i for i, d in enumerate(spec.shape) if isinstance(d, str)]
        for key, values in given.items():
            values = values + defaults[key][len(values):]
            if len(dyn) > len(values):
                raise InputError(f"input {spec.name!r} has {len(dyn)} dynamic axes; give --{key} as " + "x".join(["N"] * len(dyn)))
            shape = [int(d) if not isinstance(d, str) else 0 for d in spec.shape]
            for k, axis in enumerate(dyn):
                shape[axis] = int(values[k])
            profile[key][spec.name] = shape
    for name in profile["min"]:
        lo, opt, hi = profile["min"][name], profile["opt"][name], profile["max"][name]
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise InputError(f"profile for {name!r} must satisfy min <= opt <= max on every axis, got {lo}, {opt}, {hi}")
    if manifest.text is not None:
        longest = max(s[1] for s in profile["max"].values() if len(s) > 1)
        if longest > manifest.text.max_length:
            raise InputError(f"--max sequence length {longest} exceeds the text tower's max_length {manifest.text.max_length}")
    return profile


def build_command(bundle: Path, tower: str, profile: Profile, *, fp16: bool, int8: bool, calib: Path | None) -> str:
    """The command line that (re)builds this engine; recorded in the engine manifest."""
    return rebuild_command(bundle, tower, profile, "int8" if int8 else "fp16", fp16=fp16 or not int8, calib=calib)


# ----------------------------------------------------------------------------- calibration (int8)


def calibration_batches(manifest: TowerManifest, tower_dir: Path, calib: Path, batch: int) -> list[dict[str, NDArray]]:
    """Preprocessed calibration inputs: images from a folder (image tower) or lines of a text file (text tower)."""
    if manifest.preprocess is not None:
        from crossmodal.image import preprocess

        files = sorted(p for p in Path(calib).iterdir() if p.is_file()) if Path(calib).is_dir() else []
        arrays = []
        for f in files:
            try:
                arrays.append(preprocess([f], manifest.preprocess))
            except Exception:  # non-image files in the folder are skipped
                continue
        if not arrays:
            raise InputError(f"--calib {calib} holds no readable images; point it at a folder of representative photos")
        pixels = np.concatenate(arrays)
        name = manifest.inputs[0].name
        return [{name: pixels[i:i + batch]} for i in range(0, len(pixels), batch)]
    from crossmodal.text import TextTokenizer

    path = Path(calib)
    if not path.is_file():
        raise InputError(f"--calib {calib}: for the text tower give a text file with one caption per line")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    assert manifest.text is not None
    tok = TextTokenizer.from_file(tower_dir / manifest.text.tokenizer_file, manifest.text)
    return [tok.encode(lines[i:i + batch]) for i in range(0, len(lines), batch)]


def make_calibrator(batches: list[dict[str, NDArray]], cache_file: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` that feeds ``batches`` from device buffers (TensorRT + GPU needed)."""
    import tensorrt as trt

    from crossmodal.gpu import DeviceBuffer, _check, _cudart

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self._batches = iter(batches)
            self._buffers: dict[str, DeviceBuffer] = {}
            self._size = len(next(iter(batches[0].values())))

        def get_batch_size(self) -> int:
            return self._size

        def get_batch(self, names: list[str]) -> list[int] | None:
            feed = next(self._batches, None)
            if feed is None:
                return None
            cudart = _cudart()
            ptrs = []
            for name in names:
                arr = np.ascontiguousarray(feed[name])
                buf = self._buffers.setdefault(name, DeviceBuffer())
                ptr = buf.ensure(arr.nbytes)
                _check(cudart.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice),
                       "cudaMemcpy")
                ptrs.append(ptr)
            return ptrs

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_file.write_bytes(bytes(cache))

    return _Calibrator()


# ----------------------------------------------------------------------------- building (TensorRT + GPU)


def build_engine(
    onnx_path: Path,
    profile: Profile,
    *,
    fp16: bool = True,
    int8: bool = False,
    calibrator: Any = None,
    timing_cache: Path | None = None,
    workspace_gb: float = 4.0,
) -> bytes:
    """Build a serialized engine from ``onnx_path`` with one optimisation profile; returns its bytes.

    fp16 engines are built from the gpu-fp16 graph as a *strongly typed*
    network: TensorRT then keeps every tensor in the type the graph gives it,
    so the fp32 islands of our precision policy (LayerNorm, softmax, the L2
    tail) stay fp32, where the weakly typed ``BuilderFlag.FP16`` mode would be
    free to run them in fp16. int8 needs the weakly typed mode (implicit
    quantisation with a calibrator), which TensorRT 10 deprecates and 11 drops.
    """
    from crossmodal.gpu import _tensorrt

    trt = _tensorrt()
    if int8 and not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise ArtifactError(
            f"TensorRT {trt.__version__} has no implicit int8 calibration; build fp16 engines (--fp16) instead"
        )
    strongly_typed = not int8
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)  # int8 engines: fp16 where a layer is not calibrated
    opt_profile = builder.create_optimization_profile()
    for name in profile["min"]:
        opt_profile.set_shape(name, profile["min"][name], profile["opt"][name], profile["max"][name])
    config.add_optimization_profile(opt_profile)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(opt_profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = timing_cache.with_name(timing_cache.name + ".tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        os.replace(tmp, timing_cache)
    return bytes(serialized)


def engine_parity(engine: Path, source_dir: Path, manifest: TowerManifest, device: DeviceInfo) -> dict[str, Any]:
    """Run the fresh engine on the export-time reference case and compare with the PyTorch output."""
    from .parity import compare

    ref = source_dir / REFERENCE_FILE
    if not ref.is_file():
        return {"measured": False, "reason": f"no {REFERENCE_FILE} in {source_dir}"}
    with np.load(ref, allow_pickle=False) as data:
        feeds = {k[len("input:"):]: data[k] for k in data.files if k.startswith("input:")}
        expected = data["reference"]
    sess = TensorRTSession(engine, device=device, check=False)
    got = sess.run([manifest.outputs[0].name], feeds)[0]
    return {"measured": True, "reference": "pytorch-fp32", "device": device.name, **compare(expected, got.astype(np.float32)).to_dict()}


# ----------------------------------------------------------------------------- installing (no GPU needed)


def install_engine(
    bundle: Path, folder: str, engine_bytes: bytes, info: EngineInfo, device: DeviceInfo,
) -> Path:
    """Write an engine and its manifest into ``<bundle>/<folder>/gpu-trt-fp16/``; returns the engine path.

    Other engines in the folder (other GPUs, other TensorRT versions) are kept.
    For fp16 engines, ``manifest.json`` is (re)written from the gpu-fp16
    manifest with ``model_file`` = this engine, so the runtime and Triton see
    a complete tower variant; int8 engines only add their files.
    """
    src = Path(bundle) / folder / SOURCE_VARIANT
    dst = Path(bundle) / folder / VARIANT
    dst.mkdir(parents=True, exist_ok=True)
    engine = dst / engine_file_name(device, info.precision)
    fd, tmp = tempfile.mkstemp(prefix=f".{engine.name}.", dir=dst)
    with os.fdopen(fd, "wb") as f:
        f.write(engine_bytes)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, engine)
    engine_info_path(engine).write_text(engine_manifest_json(info), encoding="utf-8")
    for name in (TOKENIZER_FILE, REFERENCE_FILE):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    if info.precision == "fp16":
        fields = read_manifest(src).to_dict()
        for key in DATA_FIELDS:  # the engine is one file; TensorRT's parser read the ONNX graph's data file
            fields.pop(key, None)
        fields.update(
            variant=VARIANT, model_file=engine.name, sha256=sha256_file(engine), precision="fp16",
            graph_rewrites=[], quantization=None,
        )
        parity = dict(info.parity) if info.parity.get("measured") else {}
        fields["parity"] = {**parity, "thresholds": {"min_cosine": 0.999}} if parity else {
            "measured": False, "note": "engine parity not measured; see the gpu-fp16 manifest for the ONNX graph's"}
        fields["extra"] = {**dict(fields.get("extra") or {}), "engine": info.to_dict()}
        TowerManifest.from_dict(fields, where=f"{dst / MANIFEST_FILE} (being written)")
        write_json_atomic(dst / MANIFEST_FILE, fields)
    return engine


def build_tower(
    bundle: Path,
    tower: str,
    *,
    fp16: bool = True,
    int8: bool = False,
    calib: Path | None = None,
    shapes: Mapping[str, Sequence[int] | None] | None = None,
    timing_cache: Path | None = None,
    workspace_gb: float = 4.0,
    device: DeviceInfo | None = None,
) -> Path:
    """Build and install the engine of one tower of ``bundle`` on this machine's GPU; returns the engine path."""
    bundle = Path(bundle)
    info = read_bundle(bundle)
    if tower not in info.towers:
        raise ArtifactError(f"bundle {bundle} has no {tower} tower (it has: {sorted(info.towers)})")
    folder = info.towers[tower]
    src_dir = bundle / folder / SOURCE_VARIANT
    if not (src_dir / MANIFEST_FILE).is_file():
        raise ArtifactError(
            f"{src_dir} is missing: engines are built from the GPU ONNX graph; export it first with "
            f"`crossmodal export {info.family} ... --targets gpu-fp16`"
        )
    if int8 and calib is None:
        raise InputError("--int8 needs --calib (a folder of images for the image tower, a caption file for the text tower)")
    manifest = read_manifest(src_dir)
    profile = input_profile(manifest, shapes or {})
    device = device or current_device()
    precision = "int8" if int8 else "fp16"
    timing_cache = timing_cache or (bundle / folder / VARIANT / f"timing.sm{device.sm}.trt{device.trt_major_minor}.cache")
    calibrator = None
    if int8:
        assert calib is not None
        batches = calibration_batches(manifest, src_dir, calib, batch=max(v[0] for v in profile["opt"].values()))
        calibrator = make_calibrator(batches, timing_cache.with_name(f"calib.{tower}.sm{device.sm}.cache"))
    log.info("building %s engine for %s on %s (compute capability %s)", precision, tower, device.name, device.compute_capability)
    data = build_engine(src_dir / manifest.model_file, profile, fp16=fp16 or not int8, int8=int8, calibrator=calibrator,
                        timing_cache=timing_cache, workspace_gb=workspace_gb)
    engine_info = EngineInfo(
        compute_capability=device.compute_capability, tensorrt_version=device.tensorrt_version, precision=precision,
        tower=tower, profile=profile, source_onnx=f"{folder}/{SOURCE_VARIANT}/{manifest.model_file}",
        source_sha256=manifest.sha256, build_command=build_command(bundle, tower, profile, fp16=fp16, int8=int8, calib=calib),
        device_name=device.name, timing_cache=str(timing_cache),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    engine = install_engine(bundle, folder, data, engine_info, device)
    parity = engine_parity(engine, src_dir, manifest, device)
    final = EngineInfo(**{**engine_info.to_dict(), "parity": parity})
    return install_engine(bundle, folder, data, final, device)


__all__ = [
    "build_engine", "build_tower", "install_engine", "input_profile", "parse_shape_arg", "default_shapes",
    "build_command", "calibration_batches", "make_calibrator", "engine_parity",
]
