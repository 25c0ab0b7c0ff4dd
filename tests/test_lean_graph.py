"""A lean text graph: fewer nodes stored and run, smaller embedding tables, dynamic axes intact, parity kept.

On the tiny CLIP text tower (random weights, the real 49,408-token vocabulary),
checked at several batch sizes and sequence lengths against PyTorch. Export-side
modules are imported inside the tests (they run in the export lane through the
``tiny_clip_dir`` fixture); the progress tests need neither.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

# (batch, length) pairs beyond the export's own parity inputs.
SHAPES = ((1, 5), (3, 20), (2, 77))


@pytest.fixture(scope="module")
def tower(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from crossmodal.export.clip import build_specs
    from crossmodal.export.onnx_export import export_onnx, run_torch
    from crossmodal.export.sources import resolve

    specs, _ = build_specs(resolve(str(tiny_clip_dir)), towers=("text",))
    spec = specs[0]
    work = tmp_path_factory.mktemp("lean")
    raw = export_onnx(spec.module, spec.parity_inputs[0], spec.input_names, spec.output_names, spec.dynamic_axes,
                      work / "raw.onnx")
    rng = np.random.default_rng(0)
    feeds = []
    for batch, length in SHAPES:
        ids = rng.integers(1, 49406, size=(batch, length), dtype=np.int64)
        ids[:, -1] = 49407  # end of text, where CLIP pools
        mask = np.ones_like(ids)
        mask[0, length // 2:] = 0 if batch > 1 else 1  # a padded row in the batches
        feeds.append({"input_ids": ids, "attention_mask": mask})
    feeds += spec.parity_inputs
    reference = [run_torch(spec.module, f, spec.input_names) for f in feeds]
    return spec, raw, feeds, reference, work


def test_folding_cuts_stored_nodes_keeps_runtime_ones_and_every_shape(tower) -> None:
    from crossmodal.export.graph_cleanup import fold_constants, node_counts
    from crossmodal.export.measure import parity_against

    spec, raw, feeds, reference, work = tower
    folded = fold_constants(raw, work / "folded.onnx")
    before, after = node_counts(raw), node_counts(folded)
    assert sum(after["stored"].values()) < 0.7 * sum(before["stored"].values())
    assert after["stored"]["Constant"] == 0 < before["stored"]["Constant"]
    # what a session runs was already folded at load: the offline pass does not change it
    assert sum(after["runtime"].values()) == sum(before["runtime"].values())
    p = parity_against(reference, folded, feeds)
    assert p.min_cosine > 0.99999 and p.max_abs < 1e-4 and p.rows == sum(b for b, _ in SHAPES) + 6


def test_fused_int8_graph_runs_far_fewer_nodes_at_every_shape(tower) -> None:
    from crossmodal.export.attention_fusion import fuse_attention
    from crossmodal.export.graph_cleanup import node_counts
    from crossmodal.export.measure import parity_against
    from crossmodal.export.optimize import FUSED_FILE, fuse_transformer
    from crossmodal.export.quantize import quantize_int8

    spec, raw, feeds, reference, work = tower
    work = work / "fused"
    work.mkdir()
    ref = reference[-len(spec.parity_inputs):]
    # The rewrite the export keeps when it is fastest (which one wins is timing, so it is built here directly).
    opts = spec.ort_optimizer
    assert fuse_attention(raw, work / "mha.onnx", opts["num_heads"]) == 2
    fuse_transformer(work / "mha.onnx", work / FUSED_FILE, opts["model_type"], opts["num_heads"], opts["hidden_size"])
    assert parity_against(reference, work / FUSED_FILE, feeds).min_cosine > 0.99999
    runtime = {}
    for recipe in ("dynamic", "dynamic-fused"):
        q = quantize_int8(raw, work, "text", recipe, ref, spec.parity_inputs, [], spec.parity_inputs[1], 0.99,
                          target="avx512-vnni")
        runtime[recipe] = node_counts(q.path)["runtime"]
        assert parity_against(reference, q.path, feeds).min_cosine > 0.99  # dynamic batch and length intact
    assert sum(runtime["dynamic-fused"].values()) < 0.75 * sum(runtime["dynamic"].values())
    assert runtime["dynamic-fused"]["MultiHeadAttention"] == 2 and runtime["dynamic-fused"]["Transpose"] == 0


def test_row_int8_tables_are_within_half_a_step_of_each_row() -> None:
    from crossmodal.export.embedding_tables import quantize_row_int8

    rng = np.random.default_rng(1)
    table = rng.standard_normal((50, 16)).astype(np.float32) * rng.uniform(0.001, 3.0, (50, 1)).astype(np.float32)
    table[7] = 0.0
    q, scale = quantize_row_int8(table)
    assert q.dtype == np.int8 and scale.shape == (50, 1) and np.abs(q).max() <= 127
    err = np.abs(q * scale - table)
    assert np.all(err <= scale / 2 + 1e-7)  # small rows keep their own resolution
    assert np.all(q[7] == 0)


@pytest.mark.parametrize("kind, min_cosine, ratio", [("int8", 0.999, 0.29), ("fp16", 0.99999, 0.51)])
def test_embedding_tables_shrink_the_graph_and_keep_parity(tower, kind: str, min_cosine: float, ratio: float) -> None:
    import onnx

    from crossmodal.export.embedding_tables import quantize_embeddings
    from crossmodal.export.measure import parity_against

    spec, raw, feeds, reference, work = tower
    dst = work / f"emb-{kind}.onnx"
    tables = quantize_embeddings(raw, dst, kind)
    assert [t["table"] for t in tables] == ["text.embeddings.token_embedding.weight"]  # the position table stays fp32
    assert tables[0]["bytes"] <= ratio * tables[0]["bytes_fp32"]  # int8: 1 byte a value + a 4-byte scale a row
    assert dst.stat().st_size < raw.stat().st_size - 0.9 * (tables[0]["bytes_fp32"] - tables[0]["bytes"])
    graph = onnx.load(str(dst)).graph
    assert "text.embeddings.token_embedding.weight" not in {i.name for i in graph.initializer}
    assert parity_against(reference, dst, feeds).min_cosine > min_cosine
    assert quantize_embeddings(dst, work / "again.onnx", kind) == []  # nothing large is left to shrink
    with pytest.raises(ValueError, match="unknown embedding table kind"):
        quantize_embeddings(raw, work / "x.onnx", "int4")


def test_int8_text_graph_stores_its_token_table_small(tower) -> None:
    from crossmodal.export.quantize import quantize_int8

    spec, raw, feeds, reference, work = tower
    ref = reference[-len(spec.parity_inputs):]
    (work / "q").mkdir()
    q = quantize_int8(raw, work / "q", "text", "nbits8", ref, spec.parity_inputs, [], spec.parity_inputs[1], 0.99,
                      target="avx512-vnni")
    emb = q.settings["embeddings"]
    assert emb["tables"][0]["table"] == "text.embeddings.token_embedding.weight"
    assert q.trials[0]["embeddings"].startswith(emb["tables"][0]["kind"])
    assert q.path.stat().st_size < 0.6 * raw.stat().st_size  # the fp32 table was most of this graph


def test_progress_names_stages_and_estimates_what_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossmodal.export import progress

    clock = iter([0.0, 0.0, 15.0, 15.0, 25.0, 25.0, 25.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(progress, "peak_rss_gb", lambda: 1.25)
    out = io.StringIO()
    stages = progress.Stages("export text", ["trace", "int8 dynamic", "write cpu-int8", "int8 timing"], stream=out)
    stages("trace")
    stages("int8 dynamic")
    stages("write cpu-int8")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[export text] trace (1/4, 0:00 elapsed, peak RSS 1.2 GB)"
    # trace (weight 1.5) took 15 s: 10 s a unit, and int8 (1) + write (0.5) + int8 (1) are left
    assert lines[1] == "[export text] int8 dynamic (2/4, 0:15 elapsed, ~0:25 left, peak RSS 1.2 GB)"
    # 25 s for 2.5 units; write (0.5) + timing (1) left
    assert lines[2] == "[export text] write cpu-int8 (3/4, 0:25 elapsed, ~0:15 left, peak RSS 1.2 GB)"


def test_planned_stages_follow_target_and_recipe(tmp_path: Path) -> None:
    from crossmodal.export.options import ExportOptions
    from crossmodal.export.pipeline import planned_stages

    avx2 = planned_stages("image", ExportOptions.create(tmp_path, "cpu-fp32,cpu-int8", int8_target="avx2"))
    assert avx2 == ["trace", "fp32 parity and fusions", "write cpu-fp32", "int8 qdq-rr", "int8 qdq-rr-fused",
                    "int8 dynamic-rr", "int8 dynamic-rr-fused", "int8 timing", "write cpu-int8"]  # the order they run in
    gpu = planned_stages("text", ExportOptions.create(tmp_path, "cpu-fp32,gpu-fp16"))
    assert gpu == ["trace", "fp32 parity and fusions", "write cpu-fp32", "fp16", "write gpu-fp16"]
    named = planned_stages("text", ExportOptions.create(tmp_path, "cpu-int8", int8_recipe="dynamic", optimize=False))
    assert named == ["trace", "fp32 parity and fusions", "int8 dynamic", "write cpu-int8"]
