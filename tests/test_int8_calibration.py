"""Static int8 calibration sees every calibration batch, however many there are.

onnxruntime 1.32's ``CalibMaxIntermediateOutputs`` drops each window of that many batches
without folding it into the ranges; the exporter calibrates batch by batch instead. The
reference here is onnxruntime's own calibration over all batches at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest


def _graph(path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], [w1, w2])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _scales(path: Path) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if "scale" in t.name or "zero_point" in t.name}


@pytest.mark.parametrize("batches", [3, 4, 5, 8])
def test_every_calibration_batch_counts(tmp_path: Path, batches: int) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from crossmodal.export.quantize import _qdq, _Reader

    src = tmp_path / "fp32.onnx"
    _graph(src)
    rng = np.random.default_rng(1)
    # Each batch has its own scale, so the ranges depend on every one of them; the last is the smallest.
    feeds = [{"x": (rng.standard_normal((4, 16)) * (batches - i)).astype(np.float32)} for i in range(batches)]
    ours = tmp_path / "ours.onnx"
    _qdq(src, ours, feeds)
    ref = tmp_path / "ref.onnx"
    quantize_static(str(src), str(ref), _Reader(feeds, {"x"}), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["MatMul", "Conv"], calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"MatMulConstBOnly": True})  # all batches held at once: the true ranges
    got, want = _scales(ours), _scales(ref)
    assert got.keys() == want.keys() and len(got) >= 4
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # uint8 asymmetric: the input's scale spans the min and max over all batches (the first is the widest)
    every = np.concatenate([f["x"] for f in feeds])
    span = (max(float(every.max()), 0.0) - min(float(every.min()), 0.0)) / 255
    x_scale = next(v for k, v in got.items() if k.startswith("x") and "scale" in k)
    assert float(x_scale) == pytest.approx(span, rel=1e-5)
