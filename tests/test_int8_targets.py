"""--int8-target: each target's recipes stay right on its CPUs, the choice is recorded, parity still gates.

The CPU facts are read from cpuinfo text, so every target is tested on any
machine; the export tests quantise the tiny CLIP text tower for real.
Export-side modules are imported inside the tests: the pure table tests run in
the torch-free lane too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ZEN3_FLAGS = "fpu sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni"  # AVX2 only: no VNNI, no AVX-512
ZEN5_FLAGS = ZEN3_FLAGS + " avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx_vnni"


def _cpu(arch: str, flags: str, model: str = "test CPU"):
    from crossmodal.cpu_isa import parse_cpuinfo

    key = "Features" if arch == "aarch64" else "flags"
    return parse_cpuinfo(f"processor\t: 0\nmodel name\t: {model}\n{key}\t\t: {flags}\n", arch)


@pytest.mark.parametrize("arch, flags, target", [
    ("x86_64", ZEN3_FLAGS, "avx2"),
    ("x86_64", ZEN5_FLAGS, "avx512-vnni"),
    ("x86_64", "sse4_1 avx avx2 avx_vnni", "avx512-vnni"),  # AVX-VNNI (no AVX-512) accumulates in 32 bits too
    ("x86_64", "sse4_1 avx", "portable"),
    ("aarch64", "fp asimd asimddp", "arm64"),
])
def test_machine_target(arch: str, flags: str, target: str) -> None:
    from crossmodal.export.int8_targets import machine_target

    assert machine_target(_cpu(arch, flags)) == target


def test_every_recipe_without_vnni_is_saturation_safe() -> None:
    from crossmodal.export.int8_targets import AUTO_CANDIDATES, SATURATION_SAFE, base_recipe, safe_on
    from crossmodal.export.options import INT8_TARGETS

    assert set(AUTO_CANDIDATES) == set(INT8_TARGETS)
    for target in ("avx2", "portable"):
        bases = {base_recipe(r) for recipes in AUTO_CANDIDATES[target].values() for r in recipes}
        assert bases == SATURATION_SAFE  # each safe recipe is tried, and nothing else
    # u8 x s8 at full 8-bit range (dynamic, qdq, MatMulNBits int8) only where products accumulate in 32 bits
    assert not safe_on("dynamic", "avx2") and not safe_on("qdq-fused", "portable") and not safe_on("nbits8", "avx2")
    assert safe_on("dynamic", "avx512-vnni") and safe_on("nbits8", "arm64") and safe_on("dynamic-rr-fused", "avx2")
    # ARM prefers s8 x s8: its image recipes are the s8-activation QDQ, not the u8 one
    assert "qdq-s8s8" in AUTO_CANDIDATES["arm64"]["image"] and "qdq" not in AUTO_CANDIDATES["arm64"]["image"]
    assert AUTO_CANDIDATES["avx512-vnni"]["text"][0] == "nbits8"  # VNNI machines keep the most faithful recipe first


def test_named_recipe_unsafe_for_the_target_is_refused() -> None:
    from crossmodal.export.int8_targets import check_recipe

    check_recipe("dynamic-rr", "avx2")
    check_recipe("dynamic", "avx512-vnni")
    with pytest.raises(ValueError, match=r"'dynamic' can saturate on avx2 CPUs.*dynamic-rr, nbits8-fp32, qdq-rr"):
        check_recipe("dynamic", "avx2")


def test_isa_record_follows_the_contract() -> None:
    from crossmodal.cpu_isa import CAPABILITIES, recorded_isa
    from crossmodal.export.int8_targets import isa_record

    zen5 = _cpu("x86_64", ZEN5_FLAGS, "AMD EPYC 9B45")
    rec = isa_record("dynamic-fused", "avx512-vnni", zen5)
    vnni = "vnni" if "vnni" in CAPABILITIES else "avx512_vnni"
    assert rec == {"measured_on": zen5.to_dict(), "target": "avx512-vnni", "requires": ["avx2", vnni],
                   "reduce_range": False}
    assert rec["measured_on"]["cpu"] == "AMD EPYC 9B45" and "avx512_vnni" in rec["measured_on"]["capabilities"]
    assert isa_record("dynamic-rr-fused", "avx2", zen5)["requires"] == ["avx2"]
    assert isa_record("dynamic-rr-fused", "avx2", zen5)["reduce_range"] is True
    assert isa_record("nbits8-fp32", "avx512-vnni", zen5)["requires"] == ["avx2"]  # exact anywhere: no VNNI needed
    assert isa_record("qdq-rr", "portable", zen5)["requires"] == []
    assert isa_record("nbits8", "arm64", zen5)["requires"] == ["neon"]
    # an AVX-VNNI-only CPU accumulates in 32 bits too: it meets the requirement where cpu_isa names "vnni"
    full_range = isa_record("dynamic", "avx512-vnni", zen5)["requires"]
    assert vnni == "avx512_vnni" or _cpu("x86_64", "avx2 avx_vnni").missing(full_range) == []
    json.dumps(rec)  # goes into manifest.json as is
    # the runtime reads it back and finds what a Zen 3 lacks
    back = recorded_isa({"isa": rec})
    assert back is not None and _cpu("x86_64", ZEN3_FLAGS).missing(back.requires) == [vnni]
    assert _cpu("x86_64", ZEN3_FLAGS).missing(isa_record("dynamic-rr", "avx2", zen5)["requires"]) == []


def test_options_and_command_line_take_the_target(tmp_path: Path) -> None:
    from crossmodal.export.cli import build_parser
    from crossmodal.export.options import ExportOptions

    assert ExportOptions.create(tmp_path, int8_target="avx2").int8_target == "avx2"
    assert ExportOptions.create(tmp_path).int8_target is None
    with pytest.raises(ValueError, match="unknown int8 target 'sse2'"):
        ExportOptions.create(tmp_path, int8_target="sse2")
    args = build_parser().parse_args(["clip", "--model", "m", "--out", str(tmp_path), "--int8-target", "portable",
                                      "--int8-recipe", "qdq-rr"])
    from crossmodal.export.cli.bundle_options import bundle_options

    opts = bundle_options(args)
    assert opts.int8_target == "portable" and opts.int8_recipe == "qdq-rr"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["clip", "--model", "m", "--out", str(tmp_path), "--int8-target", "sse2"])


# -- real quantisation of the tiny CLIP text tower -------------------------------------------------------------


@pytest.fixture(scope="module")
def text_graph(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from crossmodal.export.clip import build_specs
    from crossmodal.export.onnx_export import export_onnx, run_torch
    from crossmodal.export.sources import resolve

    specs, _ = build_specs(resolve(str(tiny_clip_dir)), towers=("text",))
    spec = specs[0]
    reference = [run_torch(spec.module, f, spec.input_names) for f in spec.parity_inputs]
    raw = export_onnx(spec.module, spec.parity_inputs[0], spec.input_names, spec.output_names, spec.dynamic_axes,
                      tmp_path_factory.mktemp("int8-targets") / "raw.onnx")
    return spec, reference, raw


def _quantize(text_graph, workdir: Path, recipe: str, target: str, min_cosine: float = 0.99):
    from crossmodal.export.quantize import quantize_int8

    spec, reference, raw = text_graph
    workdir.mkdir(parents=True, exist_ok=True)
    return quantize_int8(raw, workdir, "text", recipe, reference, spec.parity_inputs, [], spec.parity_inputs[0],
                         min_cosine=min_cosine, target=target)


def test_avx2_target_chooses_a_saturation_safe_recipe_and_records_it(text_graph, tmp_path: Path) -> None:
    from crossmodal.export.int8_targets import SATURATION_SAFE, base_recipe, int8_weight_bound

    from crossmodal.export.quantize import quantize_int8

    stages: list[str] = []
    spec, reference, raw = text_graph
    q = quantize_int8(raw, tmp_path, "text", "auto", reference, spec.parity_inputs, [], spec.parity_inputs[0],
                      min_cosine=0.99, target="avx2", stage=stages.append)
    assert base_recipe(q.recipe) in SATURATION_SAFE
    assert {t["recipe"] for t in q.trials} == {"nbits8-fp32", "dynamic-rr"}  # no fused graph in this workdir
    assert stages == ["int8 nbits8-fp32", "int8 dynamic-rr", "int8 timing"]
    assert q.parity.min_cosine >= 0.99
    isa = q.settings["isa"]
    assert isa["target"] == "avx2" and isa["requires"] == ["avx2"]
    assert isa["reduce_range"] is (q.recipe == "dynamic-rr")
    from crossmodal.cpu_isa import detect

    assert isa["measured_on"] == detect().to_dict()
    # the losing candidate's graph is gone; the winner's is there
    assert [p.name for p in tmp_path.glob("text-int8-*.onnx")] == [q.path.name]
    assert int8_weight_bound(q.path) <= 64


def test_reduce_range_weights_stay_in_7_bits_and_full_range_ones_do_not(text_graph, tmp_path: Path) -> None:
    from crossmodal.export.int8_targets import int8_weight_bound

    rr = _quantize(text_graph, tmp_path / "rr", "dynamic-rr", "avx2")
    full = _quantize(text_graph, tmp_path / "full", "dynamic", "avx512-vnni")
    assert rr.settings["max_abs_int8_weight"] <= 64 < int8_weight_bound(full.path)  # the check has teeth
    # Where the CPU accumulates exactly (this one, or any VNNI/ARM CPU) both stay near the reference:
    # the safe recipe pays for its 7-bit weights with a little fidelity at most.
    assert rr.parity.min_cosine >= 0.99 and full.parity.min_cosine >= 0.99
    assert rr.settings["isa"]["reduce_range"] is True and full.settings["isa"]["reduce_range"] is False
    # a named recipe skips the search: one trial, nothing timed
    assert [t["recipe"] for t in rr.trials] == ["dynamic-rr"] and "ms" not in rr.trials[0]


def test_a_named_unsafe_recipe_is_refused_before_any_work(text_graph, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="can saturate on portable CPUs"):
        _quantize(text_graph, tmp_path, "qdq", "portable")
    assert list(tmp_path.iterdir()) == []


def test_parity_still_gates_the_safe_recipes(text_graph, tmp_path: Path) -> None:
    from crossmodal.errors import ParityError

    with pytest.raises(ParityError, match="no int8 recipe for the text tower reaches min cosine 0.9999999"):
        _quantize(text_graph, tmp_path, "auto", "portable", min_cosine=0.9999999)


def test_the_isa_lands_in_the_manifest_and_old_manifests_still_load(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from crossmodal.export.clip import export_clip
    from crossmodal.manifest import read_manifest

    out = export_clip(str(tiny_clip_dir), tmp_path / "b", "cpu-int8", towers=("text",), int8_target="portable",
                      int8_recipe="nbits8-fp32")
    manifest = read_manifest(out / "text" / "cpu-int8")
    isa = manifest.quantization["isa"]
    assert manifest.quantization["recipe"] == "nbits8-fp32"
    assert isa["target"] == "portable" and isa["requires"] == [] and isa["reduce_range"] is False
    # a manifest written before the field existed still reads
    path = out / "text" / "cpu-int8" / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["quantization"]["isa"]
    path.write_text(json.dumps(data), encoding="utf-8")
    assert "isa" not in read_manifest(out / "text" / "cpu-int8").quantization
