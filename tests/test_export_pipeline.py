"""The shared export pipeline's policies: rewrites and int8 recipes are kept only by measurement."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from crossmodal.errors import ParityError
from crossmodal.export import optimize as optimize_mod
from crossmodal.export.onnx_export import export_onnx, run_torch
from crossmodal.export.parity import compare, merge, require
from crossmodal.export.pipeline import parse_targets
from crossmodal.export.quantize import quantize_int8


@pytest.fixture(scope="module")
def text_spec(tiny_clip_dir: Path):
    from crossmodal.export.clip import build_specs
    from crossmodal.export.sources import resolve

    specs, _ = build_specs(resolve(str(tiny_clip_dir)), towers=("text",))
    spec = specs[0]
    reference = [run_torch(spec.module, f, spec.input_names) for f in spec.parity_inputs]
    return spec, reference


def _export(spec, path: Path, module=None) -> Path:
    return export_onnx(module or spec.module, spec.parity_inputs[0], spec.input_names, spec.output_names, spec.dynamic_axes, path)


def test_a_rewrite_that_changes_the_maths_is_rejected(text_spec, tmp_path: Path, monkeypatch) -> None:
    spec, reference = text_spec
    raw = _export(spec, tmp_path / "raw.onnx")
    # Stand-in for a fusion that mis-reads a pattern (like model_type='bert' dropping
    # CLIP's causal mask): the "rewritten" graph computes something slightly different.
    broken = copy.deepcopy(spec.module)
    with torch.no_grad():
        broken.projection.weight.mul_(1.05).add_(0.01)
    broken_path = _export(spec, tmp_path / "broken.onnx", broken)

    def fake_fuse(src: Path, dst: Path, *args, **kwargs) -> Path:
        dst.write_bytes(broken_path.read_bytes())
        return dst

    monkeypatch.setattr(optimize_mod, "fuse_transformer", fake_fuse)
    result = optimize_mod.optimize_with_parity(
        raw, tmp_path, reference, spec.parity_inputs, spec.parity_inputs[1],
        {"model_type": "bert", "num_heads": 4, "hidden_size": 32}, 0.99999, 1e-4,
    )
    assert result.path == raw and result.rewrites == []
    assert "parity lost" in result.trials[-1]["rejected"]


def test_int8_refuses_when_no_recipe_meets_the_threshold(text_spec, tmp_path: Path) -> None:
    spec, reference = text_spec
    raw = _export(spec, tmp_path / "raw.onnx")
    with pytest.raises(ParityError, match="no int8 recipe"):
        quantize_int8(raw, tmp_path, "text", "auto", reference, spec.parity_inputs, [], spec.parity_inputs[0], min_cosine=0.9999999)


def test_int8_auto_records_every_trial(text_spec, tmp_path: Path) -> None:
    spec, reference = text_spec
    raw = _export(spec, tmp_path / "raw.onnx")
    q = quantize_int8(raw, tmp_path, "text", "auto", reference, spec.parity_inputs, [], spec.parity_inputs[0], min_cosine=0.99)
    from crossmodal.export.quantize import AUTO_CANDIDATES

    tried = {t["recipe"] for t in q.trials}
    assert {"nbits8", "dynamic"} <= tried <= set(AUTO_CANDIDATES["text"])
    assert q.parity.min_cosine >= 0.99
    passing = [t for t in q.trials if "rejected" not in t]
    assert q.recipe in {t["recipe"] for t in passing}
    # every passing recipe that was not kept says why
    assert all("not_chosen" in t for t in passing if t["recipe"] != q.recipe)


def test_parse_targets() -> None:
    assert parse_targets("cpu-fp32, cpu-int8") == ["cpu-fp32", "cpu-int8"]
    with pytest.raises(ValueError, match="crossmodal trt build"):
        parse_targets("gpu-trt-fp16")
    with pytest.raises(ValueError, match="unknown export target"):
        parse_targets("cpu-int4")


def test_parity_numbers() -> None:
    a = np.eye(3, dtype=np.float32)
    p = compare(a, a)
    assert p.min_cosine == pytest.approx(1.0) and p.max_abs == 0.0 and p.rows == 3
    b = a.copy()
    b[1] = [0.0, 0.6, 0.8]
    q = compare(a, b)
    assert q.min_cosine == pytest.approx(0.6) and q.max_abs == pytest.approx(0.8)
    assert merge([p, q]).min_cosine == pytest.approx(0.6)
    with pytest.raises(ParityError, match="min cosine 0.600000 < 0.99"):
        require(q, min_cosine=0.99, max_abs=None, what="x")
    with pytest.raises(ParityError, match="NaN"):
        compare(a, np.full_like(a, np.nan))
