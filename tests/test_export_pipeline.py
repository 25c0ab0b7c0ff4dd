"""The shared export pipeline's policies: rewrites and int8 recipes are kept only by measurement."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from crossmodal.errors import InputError, ParityError
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
    with pytest.raises(InputError, match="crossmodal export tensorrt build"):
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


def test_every_exportable_variant_has_one_recipe() -> None:
    from crossmodal.export.pipeline import RECIPES, Thresholds
    from crossmodal.variants import EXPORTABLE, TABLE

    assert set(RECIPES) == set(EXPORTABLE)
    assert all(TABLE[v].exportable for v in RECIPES)
    t = Thresholds()
    # Exact variants are also gated on element error (secondary outputs too); the others on cosine only.
    assert RECIPES["cpu-fp32"].limits(t) == {"min_cosine": t.fp32_min_cosine, "max_abs": t.fp32_max_abs}
    assert RECIPES["cpu-int8"].limits(t) == {"min_cosine": t.int8_min_cosine}
    assert RECIPES["gpu-fp16"].limits(t) == {"min_cosine": t.fp16_min_cosine}


def test_export_options_take_the_loose_forms_and_refuse_unknown_targets(tmp_path: Path) -> None:
    from crossmodal.export.options import ExportOptions

    opts = ExportOptions.create(str(tmp_path / "b"), "cpu-int8, cpu-fp32", calib_dir=str(tmp_path), optimize=False)
    assert opts.out == tmp_path / "b" and opts.targets == ("cpu-int8", "cpu-fp32")
    assert opts.calib_dir == tmp_path and opts.optimize is False and opts.bundle_name == "b"
    assert ExportOptions.create(tmp_path / "b", name="n").bundle_name == "n"
    with pytest.raises(ValueError, match="unknown export target"):
        ExportOptions(tmp_path, ("gpu-trt-fp16",))
    with pytest.raises(ValueError, match="unknown export target"):
        ExportOptions.create(tmp_path, "")


def test_parity_is_the_shared_similarity_rule() -> None:
    # Export and `crossmodal verify` judge zero rows alike: two zero rows agree, one zero row does not.
    z, e = np.zeros((2, 4), np.float32), np.eye(2, 4, dtype=np.float32)
    assert compare(z, z).min_cosine == 1.0
    assert compare(e, z).min_cosine == 0.0
    from crossmodal.similarity import parity

    assert compare(e, e * 2) == parity(e * 2, e)


_HELP_WITHOUT_TORCH = """
import sys
from crossmodal.export.cli import main
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
heavy = sorted(m for m in ("torch", "transformers", "onnx", "onnxruntime") if m in sys.modules)
print("HEAVY", heavy)
"""


def test_export_help_answers_without_importing_torch() -> None:
    import subprocess
    import sys

    from crossmodal.export.cli import COMMANDS

    argvs = [["--help"]] + [[c, "--help"] for c in COMMANDS] + [["tensorrt", a, "--help"] for a in ("build", "check")]
    proc = subprocess.run([sys.executable, "-c", _HELP_WITHOUT_TORCH.format(argvs=argvs)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    for command in COMMANDS:
        assert f"usage: crossmodal export {command}" in proc.stdout


def _all_actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_actions(sub)
        else:
            yield parser.prog, action


def test_every_export_option_has_help_text() -> None:
    from crossmodal.export.cli import build_parser

    missing = [(prog, a.dest) for prog, a in _all_actions(build_parser()) if not a.help]
    assert missing == []


def test_trt_is_an_alias_of_export_tensorrt(capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodal.export.cli import trt_alias as trt_cli

    with pytest.raises(SystemExit) as exc:
        trt_cli.main(["-v", "check", "--help"])
    assert exc.value.code == 0
    assert "usage: crossmodal export tensorrt check" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        trt_cli.main(["frobnicate"])
    assert exc.value.code == 2 and "invalid choice: 'frobnicate'" in capsys.readouterr().err
