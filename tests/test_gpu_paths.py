"""GPU code paths: engine naming, engine manifests, compatibility checks and loading rules.

Everything that needs no GPU runs here with fake device info and fake engine
bytes. The tests that need CUDA / TensorRT are marked ``gpu`` and skip, with
the reason, when no CUDA device is present; none of them has run in this
project's CI.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import crossmodal
from crossmodal.errors import ArtifactError, InputError, ProviderUnavailableError
from crossmodal.gpu import (
    CudaIOBindingSession,
    DeviceInfo,
    EngineInfo,
    check_engine,
    engine_file_name,
    parse_engine_file_name,
    read_engine_info,
    select_engine,
    with_io_binding,
)
from crossmodal.manifest import read_manifest
from crossmodal.session import import_onnxruntime

AMPERE = DeviceInfo("8.6", "10.3.0", "NVIDIA A10")
ADA = DeviceInfo("8.9", "10.3.0", "NVIDIA L4")


def _cuda_reason() -> str | None:
    if "CUDAExecutionProvider" not in import_onnxruntime().get_available_providers():
        return "no CUDA: onnxruntime-gpu with a visible NVIDIA GPU is needed (pip install 'crossmodal[gpu]')"
    return None


def _trt_reason() -> str | None:
    try:
        from crossmodal.gpu import current_device

        current_device()
    except ProviderUnavailableError as exc:
        return f"no TensorRT/CUDA device: {exc}"
    return None


CUDA_SKIP = _cuda_reason()
TRT_SKIP = _trt_reason()


@pytest.fixture(scope="module")
def shared_bundle(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers.gpu_bundle import tiny_gpu_bundle

    return tiny_gpu_bundle(tiny_clip_dir, tmp_path_factory)


@pytest.fixture()
def bundle(shared_bundle: Path, tmp_path: Path) -> Path:
    """A private copy: these tests install engines into it."""
    return Path(shutil.copytree(shared_bundle, tmp_path / "tiny clip"))


def _install(bundle: Path, tower: str, device: DeviceInfo, precision: str = "fp16", payload: bytes = b"fake engine") -> Path:
    from crossmodal.export.trt import build_command, input_profile, install_engine

    manifest = read_manifest(bundle / tower / "gpu-fp16")
    shapes = {"min": (1,), "opt": (8,), "max": (32,)} if tower == "image" else {"min": (1, 1), "opt": (8, 16), "max": (32, 77)}
    profile = input_profile(manifest, shapes)
    info = EngineInfo(device.compute_capability, device.tensorrt_version, precision, tower, profile,
                      f"{tower}/gpu-fp16/model.onnx", manifest.sha256,
                      build_command(bundle, tower, profile, fp16=True, int8=precision == "int8", calib=Path("calib")),
                      device.name)
    return install_engine(bundle, tower, payload, info, device)


# ----------------------------------------------------------------------------- names and compatibility


def test_engine_names_carry_compute_capability_and_tensorrt_version() -> None:
    assert engine_file_name(AMPERE) == "model.sm86.trt10.3.engine"
    assert engine_file_name(DeviceInfo("9.0", "10.12.0.36")) == "model.sm90.trt10.12.engine"
    assert engine_file_name(AMPERE, "int8") == "model.sm86.trt10.3.int8.engine"
    assert parse_engine_file_name("model.sm86.trt10.3.engine") == ("86", "10.3", "fp16")
    assert parse_engine_file_name("model.sm120.trt10.12.int8.engine") == ("120", "10.12", "int8")
    assert parse_engine_file_name("model.onnx") is None
    with pytest.raises(ValueError):
        engine_file_name(AMPERE, "fp8")


def test_mismatched_engine_is_refused_with_the_rebuild_command(bundle: Path) -> None:
    engine = _install(bundle, "image", AMPERE)
    info = read_engine_info(engine)
    check_engine(info, AMPERE, engine)  # same GPU class and release: accepted
    check_engine(info, DeviceInfo("8.6", "10.3.0.26", "NVIDIA RTX 3090"), engine)  # build number differs: fine
    with pytest.raises(ArtifactError) as exc:
        check_engine(info, ADA, engine)
    msg = str(exc.value)
    assert "compute capability 8.6" in msg and "this GPU is 8.9" in msg
    assert f"crossmodal export tensorrt build {bundle} --tower image --fp16 --min 1 --opt 8 --max 32" in msg
    with pytest.raises(ArtifactError, match=r"built with TensorRT 10\.3\.0, this machine has TensorRT 10\.4\.1"):
        check_engine(info, DeviceInfo("8.6", "10.4.1"), engine)


def test_select_engine_picks_this_gpus_engine_among_several(bundle: Path) -> None:
    a = _install(bundle, "text", AMPERE)
    b = _install(bundle, "text", ADA, payload=b"other engine")
    folder = bundle / "text" / "gpu-trt-fp16"
    assert select_engine(folder, AMPERE) == a and select_engine(folder, ADA) == b
    with pytest.raises(ArtifactError) as exc:
        select_engine(folder, DeviceInfo("7.5", "10.3.0", "Tesla T4"))
    msg = str(exc.value)
    assert "expected model.sm75.trt10.3.engine" in msg and "model.sm86.trt10.3.engine" in msg
    assert f"crossmodal export tensorrt build {bundle} --tower text --fp16 --min 1x1 --opt 8x16 --max 32x77" in msg


def test_install_engine_writes_a_complete_variant_and_keeps_other_engines(bundle: Path) -> None:
    first = _install(bundle, "text", AMPERE)
    _install(bundle, "text", ADA, payload=b"ada")
    _install(bundle, "text", AMPERE, precision="int8", payload=b"int8")
    folder = bundle / "text" / "gpu-trt-fp16"
    assert sorted(p.name for p in folder.glob("*.engine")) == [
        "model.sm86.trt10.3.engine", "model.sm86.trt10.3.int8.engine", "model.sm89.trt10.3.engine"]
    assert first.read_bytes() == b"fake engine"
    m = read_manifest(folder)
    assert m.variant == "gpu-trt-fp16" and m.precision == "fp16"
    assert m.model_file == "model.sm89.trt10.3.engine"  # the last fp16 build; int8 builds leave it alone
    import hashlib

    assert m.sha256 == hashlib.sha256(b"ada").hexdigest()
    assert m.inputs == read_manifest(bundle / "text" / "gpu-fp16").inputs
    assert (folder / "tokenizer.json").is_file() and (folder / "reference.npz").is_file()
    info = read_engine_info(folder / "model.sm86.trt10.3.int8.engine")
    assert info.precision == "int8" and "--int8 --calib calib" in info.build_command
    assert m.extra["engine"]["profile"]["max"]["input_ids"] == [32, 77]


# ----------------------------------------------------------------------------- profiles from --min/--opt/--max


def test_profiles_fill_batch_and_sequence_axes(shared_bundle: Path) -> None:
    from crossmodal.export.trt import input_profile, parse_shape_arg

    image = read_manifest(shared_bundle / "image" / "gpu-fp16")
    text = read_manifest(shared_bundle / "text" / "gpu-fp16")
    p = input_profile(image, {"min": parse_shape_arg("1"), "opt": parse_shape_arg("4"), "max": parse_shape_arg("16")})
    assert p == {"min": {"pixel_values": [1, 3, 32, 32]}, "opt": {"pixel_values": [4, 3, 32, 32]},
                 "max": {"pixel_values": [16, 3, 32, 32]}}
    t = input_profile(text, {"min": (1, 1), "opt": (8, 24), "max": (64, 77)})
    assert t["opt"] == {"input_ids": [8, 24], "attention_mask": [8, 24]}
    defaults = input_profile(text, {"max": (16,)})  # sequence defaults to max_length
    assert defaults["max"]["input_ids"] == [16, 77] and defaults["min"]["input_ids"] == [1, 1]
    with pytest.raises(InputError, match="min <= opt <= max"):
        input_profile(image, {"min": (8,), "opt": (4,), "max": (16,)})
    with pytest.raises(InputError, match="exceeds the text tower's max_length 77"):
        input_profile(text, {"max": (8, 100)})
    for bad in ("0", "8x", "axb", "1x2x3"):
        with pytest.raises(InputError):
            parse_shape_arg(bad)


# ----------------------------------------------------------------------------- loading without a GPU


@pytest.mark.skipif(TRT_SKIP is None, reason="TensorRT and a GPU are present: the missing-provider error cannot be provoked")
def test_loading_engines_without_tensorrt_names_what_to_install(bundle: Path) -> None:
    _install(bundle, "image", AMPERE)
    _install(bundle, "text", AMPERE)
    with pytest.raises(ProviderUnavailableError, match=r"tensorrt>=10 and cuda-python"):
        crossmodal.load(bundle, variant="gpu-trt-fp16")
    # Asked-for fallback: the sibling gpu-fp16 ONNX graph runs on the CPU provider.
    enc = crossmodal.load(bundle, variant="gpu-trt-fp16", allow_cpu_fallback=True)
    ref = crossmodal.load(bundle, variant="cpu-fp32")
    texts = ["two dogs in the snow", "a cat"]
    a, b = ref.encode_text(texts), enc.encode_text(texts)
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.999


@pytest.mark.skipif(TRT_SKIP is None, reason="TensorRT is installed: the CLI would really build")
def test_trt_cli_without_tensorrt_says_what_to_install(shared_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodal.cli import main

    assert main(["trt", "build", str(shared_bundle), "--tower", "image", "--max", "16"]) == 2
    assert "pip install 'crossmodal[gpu]'" in capsys.readouterr().err


def test_cpu_sessions_are_not_wrapped(shared_bundle: Path) -> None:
    from crossmodal.session import make_session, open_session

    sess = make_session(shared_bundle / "image" / "gpu-fp16" / "model.onnx", "gpu-fp16", providers=["CPUExecutionProvider"])
    assert with_io_binding(sess) is sess  # CPU fallback: plain session.run, as before
    folder = shared_bundle / "image" / "gpu-fp16"
    on_cpu = open_session(folder, read_manifest(folder), "gpu-fp16", providers=["CPUExecutionProvider"])
    assert not isinstance(on_cpu, CudaIOBindingSession)
    enc = crossmodal.load(shared_bundle, variant="cpu-fp32", modality="image")
    assert not isinstance(enc.image.session, CudaIOBindingSession)  # type: ignore[union-attr]


class _RecordingBinding:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def bind_ortvalue_input(self, name: str, value: Any) -> None:
        self.calls.append(("input", name, value))  # type: ignore[arg-type]

    def bind_output(self, name: str, device: str, device_id: int) -> None:
        self.calls.append(("output", name, device))  # type: ignore[arg-type]

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return [np.ones((2, 4), np.float32)]


class _FakeCudaSession:
    def __init__(self) -> None:
        self.binding = _RecordingBinding()
        self.ran = 0

    def io_binding(self) -> _RecordingBinding:
        return self.binding

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def get_outputs(self) -> list[Any]:
        return [type("Out", (), {"name": "embedding"})()]

    def run_with_iobinding(self, binding: Any, run_options: Any = None) -> None:
        self.ran += 1


def test_io_binding_places_inputs_once_and_outputs_on_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeCudaSession()
    wrapped = with_io_binding(fake)
    assert isinstance(wrapped, CudaIOBindingSession)
    placed: list[np.ndarray] = []

    class _OnDevice:  # what an OrtValue on CUDA looks like to the runner
        def device_name(self) -> str:
            return "cuda"

    monkeypatch.setattr(CudaIOBindingSession, "to_device", lambda self, arr: placed.append(arr) or _OnDevice())
    resident = _OnDevice()
    out = wrapped.run(None, {"input_ids": np.zeros((2, 3), np.int64), "attention_mask": resident})
    assert fake.ran == 1 and out[0].shape == (2, 4)
    assert len(placed) == 1 and placed[0].dtype == np.int64  # the host array was copied once
    assert ("input", "attention_mask", resident) in fake.binding.calls  # a device value is bound in place
    assert ("output", "embedding", "cuda") in fake.binding.calls


# ----------------------------------------------------------------------------- real GPU runs (skipped here)


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_SKIP is not None, reason=CUDA_SKIP or "")
def test_cuda_io_binding_matches_fp32(shared_bundle: Path) -> None:
    enc = crossmodal.load(shared_bundle, variant="gpu-fp16")
    assert isinstance(enc.text.session, CudaIOBindingSession)  # type: ignore[union-attr]
    ref = crossmodal.load(shared_bundle, variant="cpu-fp32")
    texts = ["two dogs in the snow", "a photo of a cat", "London at night"]
    a, b = ref.encode_text(texts), enc.encode_text(texts)
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.999


@pytest.mark.gpu
@pytest.mark.skipif(TRT_SKIP is not None, reason=TRT_SKIP or "")
def test_trt_build_and_run_on_this_gpu(shared_bundle: Path, tmp_path: Path) -> None:
    from crossmodal.export.trt import build_tower

    work = Path(shutil.copytree(shared_bundle, tmp_path / "b"))
    for tower, shapes in (("image", {"min": (1,), "opt": (4,), "max": (8,)}),
                          ("text", {"min": (1, 1), "opt": (4, 16), "max": (8, 77)})):
        engine = build_tower(work, tower, shapes=shapes)
        info = read_engine_info(engine)
        assert info.parity["measured"] and info.parity["min_cosine"] >= 0.999
        assert Path(info.timing_cache or "").is_file()
    enc = crossmodal.load(work, variant="gpu-trt-fp16")
    ref = crossmodal.load(work, variant="cpu-fp32")
    texts = ["two dogs in the snow", "a cat"]
    assert float(np.min(np.sum(ref.encode_text(texts) * enc.encode_text(texts), axis=1))) >= 0.999
    with pytest.raises(InputError, match="optimisation profile"):
        enc.encode_text(["word"] * 9, batch_size=9)  # above the profile's max batch of 8


# ----------------------------------------------------------------------------- TensorRT runner against fakes


class _FakeCudart:
    """CUDA runtime stand-in: 'device' memory is a dict of bytearrays keyed by fake pointers."""

    class cudaMemcpyKind:  # noqa: N801 - mirrors cuda-python's name
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        self.mem: dict[int, bytearray] = {}
        self.next = 4096
        self.mallocs = 0

    def cudaMalloc(self, n: int) -> tuple[int, int]:  # noqa: N802
        ptr, self.next = self.next, self.next + n + 256
        self.mem[ptr] = bytearray(n)
        self.mallocs += 1
        return 0, ptr

    def cudaFree(self, ptr: int) -> tuple[int]:  # noqa: N802
        self.mem.pop(ptr, None)
        return (0,)

    def cudaStreamCreate(self) -> tuple[int, int]:  # noqa: N802
        return 0, 7

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream: int) -> tuple[int]:  # noqa: N802
        import ctypes

        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.mem[dst][:n] = ctypes.string_at(src, n)
        else:
            ctypes.memmove(dst, bytes(self.mem[src][:n]), n)
        return (0,)


def _fake_tensorrt(cudart: _FakeCudart) -> Any:
    """Enough of tensorrt's runtime API for TensorRTSession: one int64 input, one (batch, 4) float output."""
    from types import SimpleNamespace

    class Context:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addr: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
            self.shapes[name] = tuple(shape)

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addr[name] = ptr

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.shapes["input_ids"][0], 4)

        def execute_async_v3(self, stream: int) -> bool:
            n, length = self.shapes["input_ids"]
            ids = np.frombuffer(bytes(cudart.mem[self.addr["input_ids"]][: n * length * 8]), np.int64).reshape(n, length)
            out = (ids.sum(axis=1, keepdims=True) * np.ones((1, 4))).astype(np.float32)
            cudart.mem[self.addr["embedding"]][: out.nbytes] = out.tobytes()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ["input_ids", "embedding"][i]

        def get_tensor_mode(self, name: str) -> str:
            return "in" if name == "input_ids" else "out"

        def get_tensor_dtype(self, name: str) -> Any:
            return np.int64 if name == "input_ids" else np.float32

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, -1) if name == "input_ids" else (-1, 4)

        def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
            return (1, 1), (4, 8), (8, 16)

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            return Engine() if data == b"fake engine" else None

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    return SimpleNamespace(
        __version__="10.3.0", Logger=Logger, Runtime=Runtime, nptype=lambda dt: dt,
        TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"),
    )


def test_tensorrt_session_runs_through_the_api_it_targets(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exercises TensorRTSession's Python logic (buffers, shapes, copies) against fakes of tensorrt and cuda-python."""
    import crossmodal.gpu as gpu

    cudart = _FakeCudart()
    monkeypatch.setattr(gpu, "_cudart", lambda: cudart)
    monkeypatch.setattr(gpu, "_tensorrt", lambda: _fake_tensorrt(cudart))
    engine = _install(bundle, "text", AMPERE)
    sess = gpu.TensorRTSession(engine, device=AMPERE)
    assert [i.name for i in sess.get_inputs()] == ["input_ids"] and sess.get_outputs()[0].name == "embedding"
    out = sess.run(None, {"input_ids": np.array([[1, 2, 3], [4, 5, 6]])})[0]
    np.testing.assert_array_equal(out, [[6.0] * 4, [15.0] * 4])
    sess.run(["embedding"], {"input_ids": np.ones((2, 2), np.int64)})
    mallocs = cudart.mallocs
    sess.run(["embedding"], {"input_ids": np.ones((1, 3), np.int64)})
    assert cudart.mallocs == mallocs  # smaller batches reuse the device buffers
    big = sess.run(["embedding"], {"input_ids": np.ones((8, 16), np.int64)})[0]
    assert big.shape == (8, 4) and float(big[0, 0]) == 16.0 and cudart.mallocs > mallocs
    with pytest.raises(InputError, match=r"outside the engine's optimisation profile \(1, 1\)\.\.\(8, 16\)"):
        sess.run(None, {"input_ids": np.ones((9, 4), np.int64)})
    with pytest.raises(InputError, match="needs input 'input_ids'"):
        sess.run(None, {"ids": np.ones((1, 4), np.int64)})
    with pytest.raises(ArtifactError, match="crossmodal export tensorrt build"):
        gpu.TensorRTSession(engine, device=ADA)  # refused before deserialising


def _fake_builder_trt(record: dict[str, Any], parse_ok: bool = True) -> Any:
    """Enough of tensorrt's builder API for build_engine; records what the builder was asked for."""
    from types import SimpleNamespace

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+tuned"

    class Config:
        def __init__(self) -> None:
            self.flags: list[str] = []
            self.cache: Cache | None = None
            record["config"] = self

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            record["workspace"] = size

        def set_flag(self, flag: str) -> None:
            self.flags.append(flag)

        def add_optimization_profile(self, profile: Any) -> None:
            record["profile"] = profile.shapes

        def create_timing_cache(self, data: bytes) -> Cache:
            record["cache_in"] = data
            return Cache(data)

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
            self.cache = cache

        def get_timing_cache(self) -> Cache:
            assert self.cache is not None
            return self.cache

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, ...]] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class Builder:
        def __init__(self, logger: Any) -> None:
            pass

        def create_network(self, flags: int) -> str:
            record["network_flags"] = flags
            return "network"

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: str, config: Config) -> bytes:
            return b"ENGINE"

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network: str, logger: Any) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            record["parsed"] = path
            return parse_ok

        def get_error(self, i: int) -> str:
            return "Unsupported op Foo"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    return SimpleNamespace(
        __version__="10.3.0", Logger=Logger, Builder=Builder, OnnxParser=Parser,
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0),
        MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"), BuilderFlag=SimpleNamespace(FP16="fp16", INT8="int8"),
    )


def test_build_engine_drives_the_builder_api(shared_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import crossmodal.gpu as gpu
    from crossmodal.export.trt import build_engine, input_profile

    record: dict[str, Any] = {}
    monkeypatch.setattr(gpu, "_tensorrt", lambda: _fake_builder_trt(record))
    manifest = read_manifest(shared_bundle / "text" / "gpu-fp16")
    profile = input_profile(manifest, {"min": (1, 1), "opt": (4, 16), "max": (8, 77)})
    cache = tmp_path / "timing.cache"
    onnx_path = shared_bundle / "text" / "gpu-fp16" / "model.onnx"
    assert build_engine(onnx_path, profile, timing_cache=cache, workspace_gb=1) == b"ENGINE"
    assert record["parsed"] == str(onnx_path) and record["workspace"] == 1 << 30
    assert record["network_flags"] == 1  # strongly typed: the graph's fp32 islands stay fp32
    assert record["config"].flags == []  # ... so no FP16 builder flag (TensorRT forbids it there)
    assert record["profile"]["input_ids"] == ([1, 1], [4, 16], [8, 77])
    assert record["cache_in"] == b"" and cache.read_bytes() == b"+tuned"
    build_engine(onnx_path, profile, timing_cache=cache)
    assert record["cache_in"] == b"+tuned"  # the second build starts from the saved timings
    monkeypatch.setattr(gpu, "_tensorrt", lambda: _fake_builder_trt(record, parse_ok=False))
    with pytest.raises(ArtifactError, match="Unsupported op Foo"):
        build_engine(onnx_path, profile)
    with pytest.raises(ArtifactError, match="no implicit int8 calibration"):
        build_engine(onnx_path, profile, int8=True)
