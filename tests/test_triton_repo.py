"""`crossmodal export triton`: the generated config.pbtxt parses with Triton's own protobuf and matches the graphs.

Triton's ``model_config.proto`` ships compiled in tritonclient
(``tritonclient/grpc/model_config_pb2.py``). Importing it through
``tritonclient.grpc`` demands grpcio, which the HTTP-only install lacks, so the
module is loaded from its file; it needs only protobuf.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from crossmodal.cli import main as cli_main
from crossmodal.errors import ArtifactError, InputError
from crossmodal.export.triton import TritonSettings, export_triton
from crossmodal.gpu import DeviceInfo, EngineInfo
from crossmodal.manifest import read_bundle, read_manifest
from crossmodal.triton_client import model_name

ROOT = Path(__file__).resolve().parent.parent
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64",
                  onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def _model_config_pb2() -> Any:
    tritonclient = pytest.importorskip("tritonclient", reason="pip install 'tritonclient[http]' (the triton extra)")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(path: Path) -> Any:
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    return pb2, text_format.Parse(path.read_text(encoding="utf-8"), pb2.ModelConfig())


@pytest.fixture(scope="module")
def bundle(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers.gpu_bundle import tiny_gpu_bundle

    return tiny_gpu_bundle(tiny_clip_dir, tmp_path_factory)  # named "tiny clip": model names get sanitised


def _graph_dims(value_info: Any) -> list[int]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else -1 for d in dims]


def _check_against_graph(cfg: Any, pb2: Any, graph: onnx.ModelProto) -> None:
    for declared, actual in ((cfg.input, graph.graph.input), (cfg.output, graph.graph.output)):
        assert [t.name for t in declared] == [v.name for v in actual]
        for t, v in zip(declared, actual):
            assert pb2.DataType.Name(t.data_type) == ONNX_TO_TRITON[v.type.tensor_type.elem_type]
            full = _graph_dims(v)
            assert full[0] == -1  # batch axis, dropped from dims because of max_batch_size
            # A graph dim of -1 is unknown to ONNX (some int8 rewrites drop static output sizes); Triton
            # accepts any config dim there, so the manifest's concrete size is the better declaration.
            assert len(t.dims) == len(full) - 1
            assert all(g in (-1, c) for c, g in zip(t.dims, full[1:])), (list(t.dims), full)


@pytest.mark.parametrize("variant,kind", [("gpu-fp16", "KIND_GPU"), ("cpu-int8", "KIND_CPU")])
def test_repository_configs_parse_and_match_onnx(bundle: Path, tmp_path: Path, variant: str, kind: str) -> None:
    repo = export_triton(bundle, tmp_path / "repo", variant)
    info = read_bundle(bundle)
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["tiny_clip_image", "tiny_clip_text"]
    for tower in ("image", "text"):
        model_dir = repo / model_name(info.name, tower)
        pb2, cfg = parse_config(model_dir / "config.pbtxt")
        assert cfg.name == model_dir.name and cfg.platform == "onnxruntime_onnx"
        expected = TritonSettings() if variant == "gpu-fp16" else TritonSettings(16, (4, 8), 1000, 2)
        assert cfg.max_batch_size == expected.max_batch_size
        assert list(cfg.dynamic_batching.preferred_batch_size) == list(expected.preferred_batch_sizes)
        assert cfg.dynamic_batching.max_queue_delay_microseconds == expected.max_queue_delay_us
        assert [(g.count, pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [(expected.instances, kind)]
        graph_file = model_dir / "1" / "model.onnx"
        assert graph_file.read_bytes() == (bundle / tower / variant / "model.onnx").read_bytes()
        _check_against_graph(cfg, pb2, onnx.load(str(graph_file)))
        assert read_manifest(bundle / tower / variant).sha256 == \
            __import__("json").loads((model_dir / "crossmodal_manifest.json").read_text())["sha256"]
    text_cfg = parse_config(repo / "tiny_clip_text" / "config.pbtxt")[1]
    assert [list(t.dims) for t in text_cfg.input] == [[-1], [-1]]  # the sequence axis stays dynamic
    assert "tritonserver --model-repository=/models" in (repo / "README.md").read_text()


def test_cli_writes_repository_with_custom_batching(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    rc = cli_main(["export", "triton", str(bundle), "--out", str(out), "--variant", "cpu-int8",
                   "--max-batch", "8", "--preferred", "2,8", "--queue-delay-us", "500", "--instances", "3"])
    assert rc == 0
    _, cfg = parse_config(out / "tiny_clip_image" / "config.pbtxt")
    assert cfg.max_batch_size == 8 and list(cfg.dynamic_batching.preferred_batch_size) == [2, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500 and cfg.instance_group[0].count == 3


def test_missing_variant_names_the_command(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"crossmodal export tensorrt build .* --tower image --fp16"):
        export_triton(bundle, tmp_path / "repo", "gpu-trt-fp16")
    with pytest.raises(ArtifactError, match="no 'cuda-fp32'|cannot be served"):
        export_triton(bundle, tmp_path / "repo", "cuda-fp32")


def test_settings_are_validated() -> None:
    with pytest.raises(InputError, match="preferred batch sizes"):
        TritonSettings(max_batch_size=8, preferred_batch_sizes=(16,))
    # The shared count rule (crossmodal.inputs): a bool or a float is not a count.
    for bad, match in (({"max_batch_size": True}, "max_batch_size"), ({"max_batch_size": 0}, "max_batch_size"),
                       ({"preferred_batch_sizes": (0,)}, "preferred batch size"), ({"instances": 2.0}, "instances"),
                       ({"max_queue_delay_us": -1}, "max_queue_delay_us")):
        with pytest.raises(InputError, match=match):
            TritonSettings(**{"max_batch_size": 8, "preferred_batch_sizes": (4,), **bad})
    assert TritonSettings(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_us=0).max_queue_delay_us == 0


@pytest.mark.parametrize("option,value", [("--max-batch", "0"), ("--instances", "0"), ("--preferred", "4,x"),
                                          ("--queue-delay-us", "-1")])
def test_cli_refuses_bad_counts_instead_of_using_the_default(tmp_path: Path, option: str, value: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # `--max-batch 0` once meant the default (64) without a word; argparse refuses it before the bundle is read.
    with pytest.raises(SystemExit) as exc:
        cli_main(["export", "triton", str(tmp_path / "bundle"), "--out", str(tmp_path / "repo"), option, value])
    assert exc.value.code == 2 and f"argument {option}" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_tensorrt_repository_maps_engines_by_compute_capability(bundle: Path, tmp_path: Path) -> None:
    """Engines are installed by the same code `crossmodal trt build` uses; the bytes are fake (no GPU here)."""
    from crossmodal.export.trt import build_command, input_profile, install_engine

    work = tmp_path / "b"
    shutil.copytree(bundle, work)
    for cc, trt_version in (("8.6", "10.3.0"), ("8.9", "10.3.0")):
        device = DeviceInfo(cc, trt_version, "fake GPU")
        for tower in ("image", "text"):
            manifest = read_manifest(work / tower / "gpu-fp16")
            profile = input_profile(manifest, {"min": (1,), "opt": (8,), "max": (32,)})
            info = EngineInfo(cc, trt_version, "fp16", tower, profile, f"{tower}/gpu-fp16/model.onnx", manifest.sha256,
                              build_command(work, tower, profile, fp16=True, int8=False, calib=None), "fake GPU")
            install_engine(work, tower, b"not a real engine " + cc.encode(), info, device)
    with pytest.raises(ArtifactError, match="--max-batch 32"):
        export_triton(work, tmp_path / "repo", "gpu-trt-fp16")  # default max_batch 64 > profile max 32
    repo = export_triton(work, tmp_path / "repo", "gpu-trt-fp16", TritonSettings(32, (8, 16), 2000, 1))
    pb2, cfg = parse_config(repo / "tiny_clip_text" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 32
    assert dict(cfg.cc_model_filenames) == {"8.6": "model.sm86.trt10.3.engine", "8.9": "model.sm89.trt10.3.engine"}
    assert (repo / "tiny_clip_text" / "1" / "model.sm89.trt10.3.engine").read_bytes() == b"not a real engine 8.9"
    assert pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_GPU"
    _check_against_graph(cfg, pb2, onnx.load(str(work / "text" / "gpu-fp16" / "model.onnx")))
    assert "TensorRT version they were built with" in (repo / "README.md").read_text()


class _FakeTriton:
    """Stands in for tritonclient's InferenceServerClient: runs the repository's graph with onnxruntime."""

    def __init__(self, repo: Path):
        from crossmodal.session import make_session

        self.sessions = {d.name: make_session(d / "1" / "model.onnx", "cpu-fp32", providers=["CPUExecutionProvider"])
                         for d in repo.iterdir() if (d / "config.pbtxt").is_file()}
        self.shapes: list[tuple[str, list[int]]] = []

    def infer(self, model_name: str, inputs: list[Any], outputs: list[Any]) -> Any:
        feeds = {}
        for item in inputs:
            self.shapes.append((item.name(), list(item.shape())))
            raw = item._get_binary_data()  # what tritonclient would send on the wire
            dtype = {"FP32": np.float32, "INT64": np.int64}[item.datatype()]
            feeds[item.name()] = np.frombuffer(raw, dtype=dtype).reshape(item.shape())
        out = self.sessions[model_name].run([o.name() for o in outputs], feeds)[0]

        class _Result:
            def as_numpy(self, name: str) -> np.ndarray:
                return out

        return _Result()


def test_client_prepares_requests_like_the_local_runtime(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.http", reason="pip install 'crossmodal[triton]'")
    import crossmodal
    from crossmodal.triton_client import TritonEncoder

    # gpu-fp16 graphs run on the CPU provider here; padding is exact for them (masked keys get weight 0).
    repo = export_triton(bundle, tmp_path / "repo", "gpu-fp16")
    fake = _FakeTriton(repo)
    client = TritonEncoder(bundle, client=fake, variant="gpu-fp16")
    local = crossmodal.load(bundle, variant="gpu-fp16", allow_cpu_fallback=True)
    texts = ["two dogs in the snow", "a photo of a cat"]
    np.testing.assert_allclose(client.encode_text(texts), local.encode_text(texts), atol=1e-5)
    assert fake.shapes[-1][1] == [2, 16]  # 7 tokens padded to the 16-token bucket
    images = sorted((ROOT / "examples" / "images").glob("*.png"))[:2]
    np.testing.assert_allclose(client.encode_image(images), local.encode_image(images), atol=1e-5)
    # The one item-or-batch rule: a 4-D uint8 array is a batch of images, as for the local encoder.
    pair = np.random.default_rng(0).integers(0, 256, (2, 24, 20, 3), dtype=np.uint8)
    got = client.encode_image(pair)
    assert got.shape == (2, 16) and fake.shapes[-1][1][0] == 2
    np.testing.assert_allclose(got, local.encode_image(pair), atol=1e-5)
    np.testing.assert_allclose(client.encode_image(pair[1]), got[1:], atol=1e-5)  # one image: one row


def test_client_does_not_pad_for_dynamic_int8(bundle: Path) -> None:
    """Dynamic int8 quantises activations per tensor: pad tokens would shift the ranges and the output."""
    from crossmodal.triton_client import TritonEncoder

    client = TritonEncoder(bundle, client=object(), variant="cpu-int8")
    assert client.pad_multiple == 1
    assert client.tokenize(["two dogs in the snow"])["input_ids"].shape == (1, 7)
    assert TritonEncoder(bundle, client=object(), variant="gpu-fp16").tokenize(["two dogs"])["input_ids"].shape == (1, 16)
    with pytest.raises(ArtifactError, match="unknown variant 'cpu-int4'"):
        TritonEncoder(bundle, client=object(), variant="cpu-int4")
    with pytest.raises(InputError, match="pad_multiple must be a positive integer"):
        TritonEncoder(bundle, client=object(), pad_multiple=0)
