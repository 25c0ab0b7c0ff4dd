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


def _ranges(ranges) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {k: tuple(np.asarray(x) for x in v.range_value) for k, v in ranges.data.items()}


def test_one_image_at_a_time_gives_the_batch_ranges(tiny_clip_dir: Path, tmp_path: Path) -> None:
    """MinMax over one-image feeds equals MinMax over the same images in batches (what image_feeds relies on)."""
    from crossmodal.export.clip import build_specs
    from crossmodal.export.onnx_export import export_onnx
    from crossmodal.export.quantize import calibration_ranges
    from crossmodal.export.sources import resolve

    spec = build_specs(resolve(str(tiny_clip_dir)), towers=("image",))[0][0]
    graph = export_onnx(spec.module, spec.parity_inputs[0], spec.input_names, spec.output_names, spec.dynamic_axes,
                        tmp_path / "image.onnx")
    side = spec.parity_inputs[0]["pixel_values"].shape[-1]
    rng = np.random.default_rng(3)
    # Images of different brightness, so that each tensor's min and max come from different images.
    images = (rng.standard_normal((6, 3, side, side)) * np.arange(1, 7)[:, None, None, None]).astype(np.float32)
    batched = _ranges(calibration_ranges(graph, [{"pixel_values": images[:4]}, {"pixel_values": images[4:]}], tmp_path))
    single = _ranges(calibration_ranges(graph, [{"pixel_values": images[i:i + 1]} for i in range(6)], tmp_path))
    assert batched.keys() == single.keys() and len(batched) >= 20
    for name, (lo, hi) in batched.items():
        np.testing.assert_array_equal(single[name][0], lo, err_msg=name)
        np.testing.assert_array_equal(single[name][1], hi, err_msg=name)
    # The ranges are not all set by one image: the fold over images is what is being compared.
    first = _ranges(calibration_ranges(graph, [{"pixel_values": images[:1]}], tmp_path))
    assert any(not np.array_equal(first[k][1], hi) for k, (lo, hi) in batched.items())
    assert not list(tmp_path.glob("calibration*")), "the calibration graph is removed"


def test_image_calibration_feeds_hold_one_image_each(tiny_clip_dir: Path) -> None:
    from crossmodal.export.clip import image_feeds, image_preprocess_from

    pre = image_preprocess_from(tiny_clip_dir, 32)
    examples = Path(__file__).resolve().parents[1] / "examples" / "images"
    parity, calib = image_feeds(pre, examples)
    images = [p for p in examples.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    assert len(calib) == len(images) >= 8
    assert all(f["pixel_values"].shape == (1, 3, pre.output_size, pre.output_size) for f in calib)
    assert parity[-1]["pixel_values"].shape[0] == 8  # parity still runs a batch of real images
    np.testing.assert_array_equal(np.concatenate([f["pixel_values"] for f in calib])[:8], parity[-1]["pixel_values"])
    # Without images, calibration falls back to the parity noise, one image per feed.
    parity, calib = image_feeds(pre, None)
    assert [f["pixel_values"].shape[0] for f in calib] == [1] * sum(f["pixel_values"].shape[0] for f in parity)


def test_text_recipes_are_timed_on_one_twelve_token_query() -> None:
    from crossmodal.export.quantize import TEXT_TIMING_TOKENS, regime_feed

    def feed(batch: int, tokens: int) -> dict[str, np.ndarray]:
        ids = np.arange(batch * tokens, dtype=np.int64).reshape(batch, tokens)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    feeds = [feed(1, 5), feed(4, 20), feed(1, 77), feed(1, 16)]
    got = regime_feed("text", feeds, feeds[1])
    assert TEXT_TIMING_TOKENS == 12
    # the shortest single query that is long enough (16 tokens), cut to 12
    np.testing.assert_array_equal(got["input_ids"], feeds[3]["input_ids"][:, :12])
    assert got["attention_mask"].shape == (1, 12)
    # no single query that long: the longest single one
    assert regime_feed("text", feeds[:2], feeds[1])["input_ids"].shape == (1, 5)


def test_a_named_fused_recipe_without_a_kept_fusion_quantises_the_traced_graph(tiny_clip_dir, tmp_path, caplog):
    """`--int8-recipe dynamic-fused` names every tower's recipe; a tower with no fused graph gets `dynamic`."""
    import json
    import logging

    from crossmodal.export import pipeline
    from crossmodal.export.clip import build_specs
    from crossmodal.export.cli.bundle_options import add_bundle_arguments
    from crossmodal.export.options import ExportOptions
    from crossmodal.export.sources import resolve

    import argparse

    parser = argparse.ArgumentParser()
    add_bundle_arguments(parser, space_help="", calib_help="")
    assert parser.parse_args(["--out", "x", "--int8-recipe", "dynamic-fused"]).int8_recipe == "dynamic-fused"

    specs, _ = build_specs(resolve(str(tiny_clip_dir)), towers=("text",))
    options = ExportOptions.create(tmp_path / "bundle", "cpu-int8", int8_recipe="dynamic-fused", optimize=False)
    with caplog.at_level(logging.WARNING, logger="crossmodal.export.quantize"):
        summary = pipeline.export_tower(specs[0], tmp_path, options, family="clip", space="test", source={})
    assert summary["cpu-int8"]["recipe"] == "dynamic"
    manifest = json.loads((tmp_path / "bundle" / "text" / "cpu-int8" / "manifest.json").read_text())
    assert [t["recipe"] for t in manifest["quantization"]["trials"]] == ["dynamic"]
    assert "no fused fp32 graph was kept for the text tower" in caplog.text
