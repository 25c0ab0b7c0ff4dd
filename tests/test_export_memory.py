"""Exports that fit in memory: the torch module goes after tracing, and weight-free graph rewrites change nothing.

A full-size export's peak came from keeping the torch weights through every
graph trial and from onnxruntime's fusions copying the whole graph at each
shape inference. These tests pin the mechanisms (no wall-clock or RSS figures:
those are measured on full-size models, see the README) on the tiny CLIP.
"""

from __future__ import annotations

import filecmp
import gc
import json
import weakref
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from crossmodal.export import optimize, pipeline, quantize, weightless
from crossmodal.export.options import ExportOptions


@pytest.fixture(scope="module")
def text_raw(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crossmodal.export.clip import build_specs
    from crossmodal.export.onnx_export import export_onnx
    from crossmodal.export.sources import resolve

    specs, _ = build_specs(resolve(str(tiny_clip_dir)), towers=("text",))
    s = specs[0]
    return export_onnx(s.module, s.parity_inputs[0], s.input_names, s.output_names, s.dynamic_axes,
                       tmp_path_factory.mktemp("memory") / "raw.onnx")


def test_the_torch_module_is_released_before_the_graph_trials(tiny_clip_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from crossmodal.export.clip import build_specs
    from crossmodal.export.sources import resolve

    specs, _ = build_specs(resolve(str(tiny_clip_dir)), towers=("text",))
    spec = specs[0]
    module = weakref.ref(spec.module)
    weights = weakref.ref(spec.module.text.embeddings.token_embedding.weight)
    alive_at: dict[str, bool] = {}

    def watch(name: str, real):
        def call(*args, **kwargs):
            gc.collect()
            alive_at[name] = module() is not None or weights() is not None
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(pipeline, "optimize_with_parity", watch("fusions", pipeline.optimize_with_parity))
    monkeypatch.setattr(pipeline, "quantize_int8", watch("int8", pipeline.quantize_int8))
    options = ExportOptions.create(tmp_path / "bundle", "cpu-fp32,cpu-int8", int8_recipe="dynamic")
    summary = pipeline.export_tower(spec, tmp_path, options, family="clip", space="test", source={})
    assert alive_at == {"fusions": False, "int8": False}
    assert spec.module is None
    assert summary["cpu-int8"]["recipe"] == "dynamic"
    # A named --int8-recipe skips the search: one candidate built, none timed.
    trials = json.loads((tmp_path / "bundle" / "text" / "cpu-int8" / "manifest.json").read_text())["quantization"]["trials"]
    assert [t["recipe"] for t in trials] == ["dynamic"] and "ms" not in trials[0]
    assert summary["cpu-fp32"]["min_cosine"] > 0.99999
    with pytest.raises(Exception, match="exported already"):
        pipeline.export_tower(spec, tmp_path, options, family="clip", space="test", source={})


def test_stubbed_weights_cannot_be_read_and_come_back_exactly(text_raw: Path) -> None:
    full = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(text_raw)).graph.initializer}
    light, weights = weightless.load_without_weights(text_raw, min_bytes=1024)
    # The stubbed graph holds none of the stubbed bytes (a stub costs its name, dims and location).
    stubs_bytes = sum(len(t.SerializeToString()) for t in light.graph.initializer if t.name in weights)
    assert weights and len(light.SerializeToString()) <= (text_raw.stat().st_size - sum(map(len, weights.values()))
                                                          + stubs_bytes)
    stub = next(t for t in light.graph.initializer if t.name in weights)
    assert list(stub.dims) == list(full[stub.name].shape)
    with pytest.raises(Exception):  # a rewrite that reads a stub fails; it never sees made-up values
        numpy_helper.to_array(stub)
    weightless.restore_weights(light, weights)
    assert not weights
    restored = {t.name: numpy_helper.to_array(t) for t in light.graph.initializer}
    assert restored.keys() == full.keys()
    assert all(np.array_equal(restored[k], full[k]) for k in full)


def test_fusion_and_shape_inference_without_weights_give_the_same_bytes(text_raw: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    monkeypatch.setattr(weightless, "MIN_STUB_BYTES", 1024)  # the tiny graph's weights are all small
    stubbed = []
    real = weightless.restore_weights
    monkeypatch.setattr(weightless, "restore_weights", lambda m, w: (stubbed.append(len(w)), real(m, w))[1])
    args = ("clip", 4, 32)
    optimize._optimize_model(str(text_raw), tmp_path / "full.onnx", *args, None)
    optimize.fuse_transformer(text_raw, tmp_path / "light.onnx", *args)
    assert filecmp.cmp(tmp_path / "full.onnx", tmp_path / "light.onnx", shallow=False)
    onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(text_raw)), auto_merge=True),
              str(tmp_path / "full-shapes.onnx"))
    assert quantize._with_shapes(text_raw, tmp_path / "light-shapes.onnx") == tmp_path / "light-shapes.onnx"
    assert filecmp.cmp(tmp_path / "full-shapes.onnx", tmp_path / "light-shapes.onnx", shallow=False)
    assert len(stubbed) == 2 and all(n > 0 for n in stubbed)  # both ran on stubs


def test_a_rewrite_that_needs_the_weights_falls_back_to_the_full_graph(text_raw: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weightless, "MIN_STUB_BYTES", 1024)
    optimize._optimize_model(str(text_raw), tmp_path / "full.onnx", "clip", 4, 32, None)

    def reads_a_weight(model, dst, *args):
        if not isinstance(model, str):  # the stubbed graph: read its first stub like a fusion would
            numpy_helper.to_array(next(t for t in model.graph.initializer if t.external_data))
        return real(model, dst, *args)

    real = optimize._optimize_model
    monkeypatch.setattr(optimize, "_optimize_model", reads_a_weight)
    optimize.fuse_transformer(text_raw, tmp_path / "fallback.onnx", "clip", 4, 32)
    assert filecmp.cmp(tmp_path / "full.onnx", tmp_path / "fallback.onnx", shallow=False)


@pytest.mark.parametrize("round_seconds, runs_per_round", [(0.0, 1), (1e9, 200)])
def test_a_run_longer_than_a_round_is_timed_once_per_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           round_seconds: float, runs_per_round: int) -> None:
    """Latency rounds of slow graphs (a ViT-L/14 at batch 8 runs for seconds) hold one run; fast ones many."""
    import crossmodal.session

    runs: dict[str, int] = {}

    class FakeSession:
        def __init__(self, path: Path) -> None:
            self.path = str(path)

        def get_inputs(self) -> list:
            return [type("Input", (), {"name": "x"})()]

        def run(self, outputs: None, feed: dict) -> list:
            runs[self.path] = runs.get(self.path, 0) + 1
            return []

    monkeypatch.setattr(crossmodal.session, "make_session", lambda path, *a, **k: FakeSession(path))
    paths = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for p in paths:
        p.write_bytes(b"")  # sized on disk only
    optimize.compare_latency_ms(paths, {"x": np.zeros(1, np.float32)}, rounds=5, round_seconds=round_seconds)
    # One warm-up run and one that sizes the rounds, then five rounds.
    assert runs == {str(p): 2 + 5 * runs_per_round for p in paths}


def test_cpu_time_ranks_on_one_thread_by_the_thread_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Text recipes are ranked by one intra-op thread's CPU time, which other load on the machine hardly stretches."""
    import time

    import crossmodal.session

    seen: list[int | None] = []  # the threads each session was opened with
    thread_clock = iter(range(10_000))  # each reading 1 s later: every timed run takes 1000 ms of "CPU"

    class FakeSession:
        def get_inputs(self) -> list:
            return [type("Input", (), {"name": "x"})()]

        def run(self, outputs: None, feed: dict) -> list:
            return []

    def make_session(path: Path, variant: str, threads: int | None = None, **kw: object) -> FakeSession:
        seen.append(threads)
        return FakeSession()

    monkeypatch.setattr(crossmodal.session, "make_session", make_session)
    monkeypatch.setattr(time, "thread_time", lambda: float(next(thread_clock)))
    path = tmp_path / "a.onnx"
    path.write_bytes(b"")
    assert optimize.compare_latency_ms([path], {"x": np.zeros(1, np.float32)}, cpu_time=True) == [1000.0]
    assert seen == [1]
    wall = optimize.compare_latency_ms([path], {"x": np.zeros(1, np.float32)})
    assert seen == [1, None] and wall[0] < 1000.0  # wall time, the default threads
