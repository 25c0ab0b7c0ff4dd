"""The variant table and the one function that opens a tower folder for a variant.

Torch-free and GPU-free: onnxruntime, TensorRT and the GPU are replaced by
recording fakes, so every branch of :func:`crossmodal.session.open_session`
runs on any machine, and the choice is shown to follow the table's ``engine``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import crossmodal
import crossmodal.gpu as gpu
import crossmodal.session as session
from crossmodal import variants
from crossmodal.errors import ArtifactError, InputError, ParityError, ProviderUnavailableError
from crossmodal.gpu import CudaIOBindingSession, DeviceInfo, EngineInfo, engine_file_name, engine_manifest_json
from crossmodal.manifest import TowerManifest, read_manifest
from crossmodal.similarity import parity, rowwise_cosine
from crossmodal.variants import (
    DEFAULT_VARIANT, EXPORTABLE, ONNXRUNTIME_CUDA, TABLE, TENSORRT, TRITON, VARIANTS, Variant, get_variant,
)
from crossmodal.verify import verify_variant

AMPERE = DeviceInfo("8.6", "10.3.0", "NVIDIA A10")
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


# ----------------------------------------------------------------------------- the table


def test_rows_name_providers_engines_and_exports() -> None:
    assert VARIANTS == ("cpu-fp32", "cpu-int8", "gpu-fp16", "gpu-trt-fp16")
    assert {n: v.providers for n, v in TABLE.items()} == {
        "cpu-fp32": (CPU,), "cpu-int8": (CPU,), "gpu-fp16": (CUDA,), "gpu-trt-fp16": (),
    }
    assert {n: v.engine for n, v in TABLE.items()} == {
        "cpu-fp32": "onnxruntime", "cpu-int8": "onnxruntime", "gpu-fp16": "onnxruntime-cuda", "gpu-trt-fp16": "tensorrt",
    }
    for key, v in TABLE.items():
        assert key == v.name and v.help and v.install.startswith("pip install")
        assert (CPU in v.providers) == (not v.is_gpu)  # no silent CPU fallback inside a GPU row
    assert "onnxruntime-gpu" in get_variant("gpu-fp16").install and "tensorrt>=10" in get_variant("gpu-trt-fp16").install
    assert EXPORTABLE == ("cpu-fp32", "cpu-int8", "gpu-fp16")  # engines are built on the target GPU, not exported
    assert all(TABLE[n].engine != TENSORRT for n in EXPORTABLE)
    assert get_variant("gpu-trt-fp16").source in EXPORTABLE
    assert TRITON == VARIANTS and DEFAULT_VARIANT == "cpu-fp32" and DEFAULT_VARIANT in EXPORTABLE
    assert [n for n, v in TABLE.items() if not v.pad_exact] == ["cpu-int8"]  # the Triton client pads the others


def test_every_other_list_is_the_table() -> None:
    import crossmodal.manifest as manifest
    from crossmodal.export import triton, trt

    assert manifest.VARIANTS is VARIANTS
    assert triton.TRITON_VARIANTS == TRITON
    assert (trt.VARIANT, trt.SOURCE_VARIANT) == ("gpu-trt-fp16", "gpu-fp16")
    assert gpu.TRT_INSTALL_HINT == get_variant("gpu-trt-fp16").install


def test_malformed_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="engine must be one of"):
        Variant("x", "gpu", "fp16", (CUDA,), "tensorflow", "pip install x", exportable=True, triton=False)
    with pytest.raises(ValueError, match="TensorRT takes none"):
        Variant("x", "gpu", "fp16", (CUDA,), TENSORRT, "pip install x", exportable=False, triton=False, source="gpu-fp16")
    with pytest.raises(ValueError, match="name its source"):
        Variant("x", "gpu", "fp16", (), TENSORRT, "pip install x", exportable=False, triton=False)


def _manifest_dict(variant: str, model_file: str = "model.onnx") -> dict[str, Any]:
    spec = {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}
    return {
        "format_version": 1, "family": "clip", "tower": "text", "variant": variant, "dim": 4, "space": "tiny",
        "inputs": [spec], "outputs": [{"name": "embedding", "dtype": "float32", "shape": ["batch", 4]}],
        "opset": 17, "precision": get_variant(variant).precision if variant in TABLE else "fp32",
        "normalized": True, "sha256": "0" * 64, "model_file": model_file, "text": {"max_length": 8},
    }


def test_manifest_accepts_exactly_the_table() -> None:
    for name in VARIANTS:
        assert TowerManifest.from_dict(_manifest_dict(name)).variant == name
    for bad in ("cpu-fp16", "GPU-FP16", ""):
        with pytest.raises(ArtifactError, match="variant must be one of .*gpu-trt-fp16"):
            TowerManifest.from_dict(_manifest_dict(bad))


@pytest.mark.parametrize("bad", ["cpu-fp64", "../cpu-fp32", None, 3])
def test_unknown_variant_lists_the_choices(bad: Any) -> None:
    with pytest.raises(ArtifactError, match=r"unknown variant .*expected one of cpu-fp32, cpu-int8, gpu-fp16, gpu-trt-fp16"):
        get_variant(bad)


def test_load_refuses_an_unknown_variant_before_touching_the_disk(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    (bundle / "text" / "cpu-fp32").mkdir(parents=True)
    (bundle / "bundle.json").write_text(json.dumps(
        {"format_version": 1, "name": "b", "family": "clip", "dim": 4, "space": "tiny", "towers": {"text": "text"}}))
    (bundle / "text" / "cpu-fp32" / "manifest.json").write_text(json.dumps(_manifest_dict("cpu-fp32")))
    with pytest.raises(ArtifactError, match="unknown variant '../text/cpu-fp32'; expected one of"):
        crossmodal.load(bundle, variant="../text/cpu-fp32")
    with pytest.raises(ArtifactError, match=r"no 'gpu-trt-fp16' variant.*crossmodal export tensorrt build .* --tower text --fp16"):
        crossmodal.load(bundle, variant="gpu-trt-fp16")  # engines are built, not exported: the message says how


# ----------------------------------------------------------------------------- open_session, against fakes


class _FakeSession:
    def __init__(self, path: str, providers: list[str]):
        self.path, self.providers = Path(path), providers

    def get_providers(self) -> list[str]:
        return list(self.providers)


class _FakeOrt:
    """onnxruntime with a chosen set of available providers; records every session it opens."""

    __version__ = "0.0-fake"
    GraphOptimizationLevel = SimpleNamespace(ORT_ENABLE_ALL=99)
    ExecutionMode = SimpleNamespace(ORT_SEQUENTIAL=0)

    def __init__(self, available: tuple[str, ...]):
        self.available = available
        self.opened: list[_FakeSession] = []

    def get_available_providers(self) -> list[str]:
        return list(self.available)

    def SessionOptions(self) -> SimpleNamespace:  # onnxruntime's name
        return SimpleNamespace()

    def InferenceSession(self, path: str, sess_options: Any, providers: list[str]) -> _FakeSession:
        self.opened.append(_FakeSession(path, providers))
        return self.opened[-1]


@pytest.fixture()
def fake_ort(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(*available: str) -> _FakeOrt:
        ort = _FakeOrt(available)
        monkeypatch.setattr(session, "import_onnxruntime", lambda: ort)
        return ort

    return install


def _tower(root: Path, variant: str, model_file: str = "model.onnx") -> tuple[Path, TowerManifest]:
    folder = root / "text" / variant
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(_manifest_dict(variant, model_file)))
    return folder, read_manifest(folder)


def test_cpu_variants_get_the_cpu_provider_and_no_binding(tmp_path: Path, fake_ort: Any) -> None:
    ort = fake_ort(CUDA, CPU)
    for name in ("cpu-fp32", "cpu-int8"):
        folder, m = _tower(tmp_path, name)
        sess = session.open_session(folder, m, name, threads=2)
        assert isinstance(sess, _FakeSession) and sess.providers == [CPU] and sess.path == folder / "model.onnx"
    assert len(ort.opened) == 2


def test_gpu_fp16_runs_on_cuda_with_io_binding(tmp_path: Path, fake_ort: Any) -> None:
    fake_ort(CUDA, CPU)
    folder, m = _tower(tmp_path, "gpu-fp16")
    sess = session.open_session(folder, m, "gpu-fp16")
    assert isinstance(sess, CudaIOBindingSession)
    assert sess.get_providers() == [CUDA, CPU]  # CPU last, for the few ops CUDA lacks
    explicit = session.open_session(folder, m, "gpu-fp16", providers=[CPU])
    assert isinstance(explicit, _FakeSession)  # binding only where CUDA really runs the graph


def test_gpu_fp16_without_cuda_names_the_install_or_falls_back_to_cpu(tmp_path: Path, fake_ort: Any) -> None:
    fake_ort(CPU)
    folder, m = _tower(tmp_path, "gpu-fp16")
    with pytest.raises(ProviderUnavailableError, match=r"needs CUDAExecutionProvider.*onnxruntime-gpu.*allow_cpu_fallback"):
        session.open_session(folder, m, "gpu-fp16")
    sess = session.open_session(folder, m, "gpu-fp16", allow_cpu_fallback=True)
    assert isinstance(sess, _FakeSession) and sess.providers == [CPU] and sess.path == folder / "model.onnx"


def _engine(root: Path) -> Path:
    folder, m = _tower(root, "gpu-trt-fp16", engine_file_name(AMPERE))
    engine = folder / m.model_file
    engine.write_bytes(b"fake engine")
    profile = {k: {"input_ids": [1, 1]} for k in ("min", "opt", "max")}
    info = EngineInfo("8.6", "10.3.0", "fp16", "text", profile, "text/gpu-fp16/model.onnx", "0" * 64,
                      "crossmodal export tensorrt build b --tower text --fp16")
    engine.with_suffix(".json").write_text(engine_manifest_json(info))
    return engine


class _RecordingTRT:
    def __init__(self, path: Path, *, device: DeviceInfo | None = None, check: bool = True):
        self.path, self.device = path, device


def test_tensorrt_variant_runs_this_gpus_engine_not_onnxruntime(
    tmp_path: Path, fake_ort: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ort = fake_ort(CUDA, CPU)
    engine = _engine(tmp_path)
    monkeypatch.setattr(gpu, "current_device", lambda device_id=0: AMPERE)
    monkeypatch.setattr(gpu, "TensorRTSession", _RecordingTRT)
    sess = session.open_session(engine.parent, read_manifest(engine.parent), "gpu-trt-fp16")
    assert isinstance(sess, _RecordingTRT) and sess.path == engine and sess.device == AMPERE
    assert ort.opened == []
    with pytest.raises(InputError, match="runs a TensorRT engine"):
        session.open_session(engine.parent, read_manifest(engine.parent), "gpu-trt-fp16", providers=[CUDA])
    with pytest.raises(InputError, match="not an onnxruntime graph"):
        session.make_session(engine, "gpu-trt-fp16")


def test_tensorrt_without_tensorrt_falls_back_to_the_source_graph_only_when_asked(
    tmp_path: Path, fake_ort: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_ort(CPU)
    engine = _engine(tmp_path)

    def no_tensorrt(device_id: int = 0) -> DeviceInfo:
        raise ProviderUnavailableError("no TensorRT here")

    monkeypatch.setattr(gpu, "current_device", no_tensorrt)
    folder, m = engine.parent, read_manifest(engine.parent)
    with pytest.raises(ProviderUnavailableError, match="no TensorRT here"):
        session.open_session(folder, m, "gpu-trt-fp16")
    with pytest.raises(ArtifactError, match="needs the gpu-fp16 ONNX graph next to it"):
        session.open_session(folder, m, "gpu-trt-fp16", allow_cpu_fallback=True)
    source, _ = _tower(tmp_path, "gpu-fp16")
    sess = session.open_session(folder, m, "gpu-trt-fp16", allow_cpu_fallback=True)
    assert isinstance(sess, _FakeSession) and sess.path == source / "model.onnx" and sess.providers == [CPU]


def test_the_choice_follows_the_engine_column_not_the_name(
    tmp_path: Path, fake_ort: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new row is one line: a CUDA fp32 variant gets IO binding because of its engine, not its name."""
    row = Variant("cuda-fp32", "gpu", "fp32", (CUDA,), ONNXRUNTIME_CUDA, "pip install x", exportable=True, triton=True)
    monkeypatch.setitem(variants.TABLE, row.name, row)
    fake_ort(CUDA, CPU)
    folder = tmp_path / "text" / "cuda-fp32"
    folder.mkdir(parents=True)
    sess = session.open_session(folder, TowerManifest.from_dict(_manifest_dict("cpu-fp32")), row.name)
    assert isinstance(sess, CudaIOBindingSession)


# ----------------------------------------------------------------------------- the shared cosine


def test_rowwise_cosine_zero_rows_and_scale() -> None:
    got = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [3.0, 4.0], [1e-200, 0.0], [1e-200, 1e-200]])
    exp = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [6.0, 8.0], [0.0, 1e-200], [2e-200, 2e-200]])
    cos = rowwise_cosine(got, exp)
    assert cos.dtype == np.float64
    # both zero agree; one zero disagrees; tiny rows are not mistaken for zero ones
    np.testing.assert_allclose(cos, [1.0, 0.0, 0.0, 1.0, 0.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(rowwise_cosine(np.array([[1.0, 0.0]]), np.array([[-1.0, 0.0]])), [-1.0])
    assert rowwise_cosine(np.array([1.0, 2.0]), np.array([2.0, 4.0])).shape == (1,)  # 1-D: one row of scores
    tokens = np.ones((2, 3, 4))  # (items, tokens, dim): one row per item
    assert rowwise_cosine(tokens, tokens).shape == (2,)
    with pytest.raises(ParityError, match="shape mismatch"):
        rowwise_cosine(np.ones((2, 3)), np.ones((3, 2)))


def test_parity_numbers_and_refusals() -> None:
    a = np.eye(3, dtype=np.float32)
    b = a.copy()
    b[1] = [0.0, 0.6, 0.8]
    p = parity(b, a)
    assert p.rows == 3 and p.min_cosine == pytest.approx(0.6) and p.max_abs == pytest.approx(0.8)
    assert p.mean_cosine == pytest.approx((1 + 0.6 + 1) / 3) and p.to_dict()["rows"] == 3
    assert parity(np.zeros((2, 4)), np.zeros((2, 4))).min_cosine == 1.0
    with pytest.raises(ParityError, match="NaN or Inf"):
        parity(np.full_like(a, np.nan), a)
    with pytest.raises(ParityError, match="shape mismatch"):
        parity(a[:2], a)
    with pytest.raises(ParityError, match="nothing to compare"):
        parity(np.zeros((0, 4)), np.zeros((0, 4)))


@pytest.mark.parametrize("output, ok", [(np.zeros((2, 4), np.float32), True), (np.eye(2, 4, dtype=np.float32), False)])
def test_verify_judges_zero_rows_by_the_shared_rule(
    tmp_path: Path, fake_ort: Any, monkeypatch: pytest.MonkeyPatch, output: np.ndarray, ok: bool,
) -> None:
    """A reference of all-zero rows is reproduced by all-zero output (it used to fail verify) and not by anything else."""
    import hashlib

    fake_ort(CPU)
    monkeypatch.setattr(_FakeSession, "run", lambda self, names, feeds: [output], raising=False)
    folder = tmp_path / "text" / "cpu-fp32"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"graph")
    m = _manifest_dict("cpu-fp32")
    m["sha256"] = hashlib.sha256(b"graph").hexdigest()
    m["parity"] = {"thresholds": {"min_cosine": 0.99}}
    (folder / "manifest.json").write_text(json.dumps(m))
    np.savez(folder / "reference.npz", **{"input:input_ids": np.ones((2, 3), np.int64), "reference": np.zeros((2, 4))})
    result = verify_variant(folder)
    assert result.ok is ok
    assert f"min cosine {1.0 if ok else 0.0:.6f}" in result.detail
