"""The benchmark's roofline (crossmodal.bench.roofline): work counted from graphs, the floor formula,
floors in the tables with the CPU named, and honest labels for `--model DIR`. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossmodal.bench import report
from crossmodal.bench.fixtures import RANDOM_MARK, describe_checkpoint
from crossmodal.bench.roofline import (CostCache, GraphCost, Peaks, annotate, floor_ms, graph_cost, measure_peaks,
                                       tower_shapes)
from crossmodal.bench.targets import evaluate
from crossmodal.bench.timing import Budget

PEAKS = Peaks(fp32_gflops=100.0, int8_gops=400.0, bandwidth_gbs=10.0, threads=2,
              detail={"gemm": "1024x1024x1024", "bandwidth_array_mib": 128})


# ---------------------------------------------------------------- counting work


def _known_graph(path: Path) -> Path:
    """ids [B, S] -> Gather(E 100x8) -> MatMul(W1 8x16, fp32) -> Q/DQ -> MatMul(DQ(W2 16x4 int8)) -> MultiHeadAttention."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((100, 8)).astype(np.float32), "E"),
             numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.integers(-127, 128, (16, 4)).astype(np.int8), "W2"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "zu"),
             numpy_helper.from_array(np.array(0, np.int8), "zs")]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["x"], name="embed"),
             helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("QuantizeLinear", ["h", "s", "zu"], ["hq"], name="q"),
             helper.make_node("DequantizeLinear", ["hq", "s", "zu"], ["hd"], name="dq_h"),
             helper.make_node("DequantizeLinear", ["W2", "s", "zs"], ["w2d"], name="dq_w"),
             helper.make_node("MatMul", ["hd", "w2d"], ["y"], name="fc2"),
             helper.make_node("MultiHeadAttention", ["h", "h", "h"], ["att"], name="mha", domain="com.microsoft",
                              num_heads=2)]
    graph = helper.make_graph(nodes, "known", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 4]),
                               helper.make_tensor_value_info("att", TensorProto.FLOAT, ["b", "s", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    save(model, str(path))
    return path


def test_flop_counter_on_a_known_graph(tmp_path: Path) -> None:
    cost = graph_cost(_known_graph(tmp_path / "g.onnx"), {"ids": (2, 3)})
    # fc1: 2 x (2*3 rows x 16 outputs) x K 8; attention: 2 x B 2 x S 3 x S 3 x (16 + 16)
    assert cost.fp32_flops == 2 * 6 * 16 * 8 + 2 * 2 * 3 * 3 * (16 + 16)
    # fc2: both operands dequantized -> an int8 GEMM: 2 x (6 x 4) x K 16
    assert cost.int8_flops == 2 * 6 * 4 * 16
    assert cost.gemms == 3
    # 6 gathered rows of E (fp32 x 8), W1 fp32, W2 int8, scale, two zero points
    assert cost.weight_bytes == 6 * 8 * 4 + 8 * 16 * 4 + 16 * 4 + 4 + 1 + 1


def test_floor_formula() -> None:
    cost = GraphCost(int8_flops=4e9, fp32_flops=1e9, weight_bytes=50_000_000, gemms=1)
    # 4e9 / 400e9 + 1e9 / 100e9 + 50e6 / 10e9 seconds = 10 + 10 + 5 ms
    assert floor_ms(cost, PEAKS) == pytest.approx(25.0, rel=1e-12)


def test_cost_at_any_batch_from_batches_one_and_two() -> None:
    one = GraphCost(10.0, 2.0, 1000, 3, {"input_ids": (1, 12)})
    two = GraphCost(20.0, 4.0, 1048, 3, {"input_ids": (2, 12)})  # 48 more bytes: one more item's embedding rows
    at8 = GraphCost.at_batch(one, two, 8)
    assert (at8.int8_flops, at8.fp32_flops, at8.weight_bytes, at8.shapes) == (80.0, 16.0, 1336, {"input_ids": (8, 12)})


def test_tiny_clip_towers_count_the_vit_and_text_transformer_formulas(tiny_clip_bundle: Path) -> None:
    # tests/helpers/clip_models.py: width 32, MLP 64, 2 layers, 32x32 images in 8x8 patches, projection 16.
    d, inter, layers, proj = 32, 64, 2, 16

    def encoder(tokens: int) -> int:  # q, k, v, out (4 d^2) + MLP (2 d inter) per token; Q K^T and A V
        return layers * (2 * tokens * (4 * d * d + 2 * d * inter) + 4 * tokens * tokens * d)

    image = encoder(17) + 2 * 16 * (3 * 8 * 8) * d + 2 * d * proj  # 16 patches + class token; patch Conv
    text = encoder(12) + 2 * d * proj  # projection of the pooled token only
    costs = CostCache(tiny_clip_bundle)
    for variant in ("cpu-fp32", "cpu-int8"):
        assert costs.get("image", variant, 1).flops == image, variant
        assert costs.get("text", variant, 1, 12).flops == text, variant
    assert costs.get("image", "cpu-fp32", 1).int8_flops == 0
    assert costs.get("image", "cpu-int8", 1).int8_flops > 0.5 * image  # int8 graphs run their GEMMs in int8
    # Larger batches from batches 1 and 2 equal a direct count (work per item; position rows shared).
    for tower, variant, batch, tokens in (("image", "cpu-int8", 5, 0), ("text", "cpu-int8", 5, 9),
                                          ("text", "cpu-fp32", 3, 12)):
        direct = graph_cost(tiny_clip_bundle / tower / variant / "model.onnx",
                            tower_shapes(tiny_clip_bundle, tower, variant, batch, tokens))
        assert costs.get(tower, variant, batch, tokens) == direct


def test_measure_peaks_reports_positive_rates() -> None:
    p = measure_peaks(1, Budget(warmup_runs=1, warmup_seconds=0.0, min_runs=2, seconds=0.0), gemm_size=64,
                      bandwidth_mib=1)
    assert p.fp32_gflops > 0 and p.int8_gops > 0 and p.bandwidth_gbs > 0 and p.threads == 1
    assert p.detail["gemm"] == "64x64x64" and p.detail["bandwidth_array_mib"] == 1
    assert Peaks.from_dict(json.loads(json.dumps(p.to_dict()))) == p


# ---------------------------------------------------------------- rows, tables and targets


class _FixedCosts:
    def __init__(self, cost: GraphCost):
        self.cost = cost
        self.asked: list[tuple[Any, ...]] = []

    def get(self, tower: str, variant: str, batch: int, tokens: int = 0) -> GraphCost:
        self.asked.append((tower, variant, batch, tokens))
        return self.cost


ENV = {"cpu": {"model": "AMD EPYC 7763 64-Core Processor", "arch": "x86_64", "capabilities": ["avx2"],
               "logical_cores": 2, "flags": ["avx2", "fma"], "machine": "x86_64"},
       "threads": 2, "packages": {"onnxruntime": "1.32.0"}, "load_average_at_start": [1.0, 1.0, 1.0]}


def _result(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"environment": ENV, "model": {"description": "x", "random_weights": True}, "command": "crossmodal bench",
            "settings": {"processes": 1, "quick": False}, "started": "2026-01-01 00:00", "elapsed_s": 1.0,
            "rows": rows, "roofline": {"peaks": PEAKS.to_dict(), "floors": [
                {"tower": "image", "variant": "cpu-int8", "batch": 1, "tokens": None, "int8_flops": 8.7e9,
                 "fp32_flops": 0.0, "weight_bytes": 88_760_000, "floor_ms": 30.6}]}}


def test_rows_get_floors_and_the_tables_name_the_cpu() -> None:
    rows = [{"scenario": "a", "engine": "crossmodal-cpu-int8", "tower": "image", "batch": 16, "p50_ms": 50.0,
             "fidelity": None},
            {"scenario": "a", "engine": "crossmodal-cpu-int8", "tower": "text", "batch": 1, "tokens": 12, "p50_ms": 75.0,
             "fidelity": None},
            {"scenario": "a", "engine": "torch-bf16", "tower": "text", "batch": 1, "tokens": 12, "p50_ms": 9.0,
             "fidelity": None}]
    costs = _FixedCosts(GraphCost(int8_flops=4e9, fp32_flops=1e9, weight_bytes=50_000_000, gemms=1))
    annotate(rows, PEAKS, costs)  # type: ignore[arg-type]
    assert costs.asked == [("image", "cpu-int8", 16, 0), ("text", "cpu-int8", 1, 12)]
    assert rows[0]["floor_ms"] == pytest.approx(25.0) and rows[0]["x_floor"] == pytest.approx(2.0)
    assert rows[1]["x_floor"] == pytest.approx(3.0)
    assert "floor_ms" not in rows[2]  # bf16 autocast has no floor in these terms
    result = _result(rows)
    result["targets"] = evaluate(result)
    md = report.markdown(result)
    cpu = "CPU AMD EPYC 7763 64-Core Processor (x86_64; avx2)"
    assert f"Machine: {cpu}; 2 logical cores" in md
    for heading in ("## (r) Roofline", "## (a) Towers alone", "## Targets"):
        section = md.split(heading, 1)[1]
        assert section.split("\n")[2] == f"_{cpu}, 2 threads._", heading  # the line under the heading
    assert "| 100 | 400 | 10.0 | 2 |" in md  # the peaks
    assert "| image | cpu-int8 | 1 | - | 8.7 | 0 | 88.8 | 30.6 |" in md
    assert "| image, batch 16 | crossmodal-cpu-int8 | 50.0 |" in md and "| 25.0 | 2.00x |" in md
    targets = {t["target"]: t for t in result["targets"]}
    img = targets["CLIP image int8 at its best batch: <= 1.5x its int8 floor (issue 15)"]
    txt = targets["CLIP text int8, batch 1, ~12 tokens: <= 3x its floor (issue 15)"]
    assert img["met"] is False and img["measured"] == "2.00x floor (batch 16: 50.0 ms, floor 25.0 ms)"
    assert txt["met"] is True and txt["measured"] == "3.00x floor (12 tokens: 75.0 ms, floor 25.0 ms)"


# ---------------------------------------------------------------- honest labels


def test_model_dir_is_labelled_by_what_is_known(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    random_weights, desc = describe_checkpoint(str(theirs), theirs)
    assert random_weights is None and desc == f"{theirs} (weights as found in that directory)"
    assert "trained" not in desc
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / RANDOM_MARK).write_text(json.dumps({"weights": "random", "seed": 0, "sizes": "tiny"}))
    random_weights, desc = describe_checkpoint(str(ours), ours)
    assert random_weights is True and desc == f"{ours}: random weights made by crossmodal bench (seed 0, tiny)"
    md = report.markdown({**_result([]), "model": {"description": desc, "random_weights": random_weights}})
    assert md.startswith(f"# crossmodal benchmark: {ours}: random weights made by crossmodal bench")


def _fused_bert_graph(path: Path, *, named: bool = True) -> Path:
    """ids [B, S] int32 -> EmbedLayerNormalization(E 100x8, P 16x8) -> Attention(W 8x24, bias 24, 2 heads)."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("E", (100, 8)), ("P", (16, 8)), ("gamma", (8,)), ("beta", (8,)), ("W", (8, 24)),
                                 ("bias", (24,)))]
    nodes = [helper.make_node("EmbedLayerNormalization", ["ids", "", "E", "P", "", "gamma", "beta"], ["x", "mask_index"],
                              name="embed" if named else "", domain="com.microsoft", epsilon=1e-12),
             helper.make_node("Attention", ["x", "W", "bias"], ["y"], name="attention" if named else "",
                              domain="com.microsoft", num_heads=2)]
    graph = helper.make_graph(nodes, "fused-bert", [helper.make_tensor_value_info("ids", TensorProto.INT32, ["b", "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    save(model, str(path))
    return path


@pytest.mark.parametrize("named", [True, False])
def test_fused_bert_ops_count_their_projection_and_read_only_the_looked_up_rows(tmp_path: Path, named: bool) -> None:
    # onnxruntime's BERT fusion leaves some nodes unnamed (the M-BERT fp32 graph): counted on a renamed copy.
    cost = graph_cost(_fused_bert_graph(tmp_path / "g.onnx", named=named), {"ids": (2, 3)})
    # packed QKV projection 2 x (2*3 rows) x K 8 x 24 outputs, then Q K^T and A V over 3 tokens of width 8
    assert cost.fp32_flops == 2 * 6 * 8 * 24 + 2 * 2 * 3 * 3 * (8 + 8)
    assert cost.int8_flops == 0 and cost.gemms == 1
    # 6 token rows + 3 position rows (shared by the batch) of 8 floats, gamma, beta, W, bias; not the 100-row table
    assert cost.weight_bytes == (6 + 3) * 8 * 4 + 8 * 4 * 2 + 8 * 24 * 4 + 24 * 4
