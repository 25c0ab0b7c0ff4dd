"""This CPU's ISA (crossmodal.cpu_isa), the one warning at load when an int8 recipe needs a capability
the CPU lacks, and `crossmodal verify` reporting both ISAs next to its parity re-check."""

from __future__ import annotations

import json
import logging
import platform
import shutil
from pathlib import Path

import pytest

import crossmodal
from crossmodal import cpu_isa, loader
from crossmodal.cli import main as cli_main
from crossmodal.errors import ArtifactError

# /proc/cpuinfo excerpts (first processor) of the machines issue 15 names, flags trimmed to a realistic subset.
ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 68
model name\t: AMD Ryzen 9 9950X 16-Core Processor
flags\t\t: fpu vme de pse sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 avx512f avx512dq avx512ifma \
avx512cd avx512bw avx512vl avx_vnni avx512_bf16 avx512vbmi avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg

processor\t: 1
model name\t: AMD Ryzen 9 9950X 16-Core Processor
flags\t\t: fpu
"""
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu vme de pse sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2 sha_ni vaes vpclmulqdq
"""
NEOVERSE_N1 = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
"""
ZEN5_ISA = cpu_isa.parse_cpuinfo(ZEN5, "x86_64")
ZEN3_ISA = cpu_isa.parse_cpuinfo(ZEN3, "x86_64")
VNNI_RECORD = {"measured_on": {"arch": "x86_64", "cpu": "AMD Ryzen 9 9950X 16-Core Processor",
                               "capabilities": ["avx2", "avx512f", "avx512_vnni", "avx_vnni"]},
               "target": "avx512-vnni", "requires": ["avx512_vnni"], "reduce_range": False}


# ---------------------------------------------------------------- this CPU from /proc/cpuinfo


def test_zen5_has_avx512_vnni_and_avx_vnni() -> None:
    assert ZEN5_ISA.arch == "x86_64"
    assert ZEN5_ISA.model == "AMD Ryzen 9 9950X 16-Core Processor"
    assert ZEN5_ISA.capabilities == ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "vnni")
    assert ZEN5_ISA.missing(["avx512_vnni"]) == []
    assert "avx512bw" in ZEN5_ISA.flags and ZEN5_ISA.has("avx512bw")  # raw flags answer too


def test_zen3_is_avx2_only() -> None:
    assert ZEN3_ISA.model == "AMD EPYC 7763 64-Core Processor"
    assert ZEN3_ISA.capabilities == ("avx2",)
    assert ZEN3_ISA.missing(["avx512_vnni", "avx2", "amx"]) == ["avx512_vnni", "amx"]


def test_arm_with_asimddp_has_neon_and_dotprod() -> None:
    isa = cpu_isa.parse_cpuinfo(NEOVERSE_N1, "aarch64")
    assert isa.arch == "arm64"
    assert isa.capabilities == ("neon", "dotprod")
    assert isa.model == "ARM implementer 0x41 part 0xd0c"
    assert isa.missing(["avx512_vnni", "dotprod"]) == ["avx512_vnni"]


def test_amx_needs_both_tile_and_int8() -> None:
    assert cpu_isa.derive_capabilities("x86_64", ["avx2", "amx_tile", "amx_int8"]) == ("avx2", "amx")
    assert cpu_isa.derive_capabilities("x86_64", ["amx_tile", "amx_bf16"]) == ()
    assert cpu_isa.derive_capabilities("arm64", []) == ("neon",)  # mandatory in AArch64
    # AVX-VNNI alone (Alder Lake) accumulates in 32 bits too: "vnni" covers both forms.
    assert cpu_isa.derive_capabilities("x86_64", ["avx2", "avx_vnni"]) == ("avx2", "avx_vnni", "vnni")


def test_requirements_may_name_raw_cpuinfo_flags() -> None:
    # The exporter's `requires` lists flags as /proc/cpuinfo spells them ("asimd" for NEON).
    assert cpu_isa.parse_cpuinfo(NEOVERSE_N1, "aarch64").missing(["asimd", "asimddp", "i8mm"]) == ["i8mm"]
    assert ZEN3_ISA.missing(["avx2", "avx512_vnni"]) == ["avx512_vnni"]


def test_unreadable_flags_report_nothing_missing() -> None:
    isa = cpu_isa.parse_cpuinfo("processor\t: 0\n", "AMD64")
    assert isa.arch == "x86_64" and not isa.known_flags
    assert isa.missing(["avx512_vnni"]) == []
    assert "unknown" in isa.describe()


def test_detect_reads_this_cpu_once() -> None:
    cpu_isa.detect.cache_clear()
    first = cpu_isa.detect()
    assert first is cpu_isa.detect()  # cached: one read per process
    assert first.arch == cpu_isa.normalise_arch(platform.machine())
    if Path(cpu_isa.CPUINFO).is_file():
        expected = cpu_isa.parse_cpuinfo(Path(cpu_isa.CPUINFO).read_text(errors="replace"), platform.machine())
        assert first == expected


# ---------------------------------------------------------------- the manifest record


def test_recorded_isa_reads_the_record_and_ignores_old_manifests() -> None:
    assert cpu_isa.recorded_isa(None) is None
    assert cpu_isa.recorded_isa({"recipe": "qdq"}) is None
    rec = cpu_isa.recorded_isa({"recipe": "qdq", "isa": VNNI_RECORD})
    assert rec is not None
    assert (rec.target, rec.requires, rec.measured_cpu, rec.reduce_range) == (
        "avx512-vnni", ("avx512_vnni",), "AMD Ryzen 9 9950X 16-Core Processor", False)
    assert "validated on AMD Ryzen 9 9950X" in rec.describe() and "requires avx512_vnni" in rec.describe()
    with pytest.raises(ArtifactError, match="quantization.isa"):
        cpu_isa.recorded_isa({"isa": {"requires": "avx512_vnni"}}, "x/manifest.json")


# ---------------------------------------------------------------- the warning at load


def _bundle_with_isa(src: Path, dst: Path, record: dict | None) -> Path:
    """A copy of ``src`` whose int8 manifests record ``record`` (None: no record, as before exporters wrote one)."""
    shutil.copytree(src, dst)
    for tower in ("image", "text"):
        m = dst / tower / "cpu-int8" / "manifest.json"
        d = json.loads(m.read_text())
        d["quantization"] = {k: v for k, v in d["quantization"].items() if k != "isa"}
        if record is not None:
            d["quantization"]["isa"] = record
        m.write_text(json.dumps(d))
    return dst


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    monkeypatch.setattr(loader, "_isa_warned", set())
    caplog.set_level(logging.WARNING, logger="crossmodal.loader")
    return caplog


def _isa_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "crossmodal.loader" and r.levelno == logging.WARNING]


def test_one_warning_per_bundle_when_a_required_capability_is_missing(
        tiny_clip_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        fresh_warnings: pytest.LogCaptureFixture) -> None:
    bundle = _bundle_with_isa(tiny_clip_bundle, tmp_path / "b", VNNI_RECORD)
    monkeypatch.setattr(cpu_isa, "detect", lambda: ZEN3_ISA)
    enc = crossmodal.load(bundle, variant="cpu-int8")  # both towers lack it: still one warning
    crossmodal.load(bundle, variant="cpu-int8", modality="text")
    (rec,) = _isa_warnings(fresh_warnings)
    msg = rec.getMessage()
    assert "lacks avx512_vnni" in msg
    assert "AMD Ryzen 9 9950X 16-Core Processor" in msg and "AMD EPYC 7763" in msg
    assert f"crossmodal verify {bundle}" in msg
    assert enc.encode_text(["a cat"]).shape == (1, 16)  # a warning, not a refusal
    # A second bundle warns for itself.
    other = _bundle_with_isa(tiny_clip_bundle, tmp_path / "c", VNNI_RECORD)
    crossmodal.load(other, variant="cpu-int8", modality="image")
    assert len(_isa_warnings(fresh_warnings)) == 2


def test_no_warning_when_the_capability_is_present(tiny_clip_bundle: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   fresh_warnings: pytest.LogCaptureFixture) -> None:
    bundle = _bundle_with_isa(tiny_clip_bundle, tmp_path / "b", VNNI_RECORD)
    monkeypatch.setattr(cpu_isa, "detect", lambda: ZEN5_ISA)
    crossmodal.load(bundle, variant="cpu-int8")
    assert _isa_warnings(fresh_warnings) == []


def test_no_warning_for_portable_recipes_old_manifests_or_fp32(tiny_clip_bundle: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               fresh_warnings: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(cpu_isa, "detect", lambda: ZEN3_ISA)
    portable = _bundle_with_isa(tiny_clip_bundle, tmp_path / "p", {**VNNI_RECORD, "target": "portable", "requires": []})
    crossmodal.load(portable, variant="cpu-int8")
    crossmodal.load(_bundle_with_isa(tiny_clip_bundle, tmp_path / "o", None), variant="cpu-int8")  # before the record
    vnni = _bundle_with_isa(tiny_clip_bundle, tmp_path / "v", VNNI_RECORD)
    crossmodal.load(vnni, variant="cpu-fp32")  # the fp32 graph has no int8 recipe
    assert _isa_warnings(fresh_warnings) == []


# ---------------------------------------------------------------- crossmodal verify


def test_verify_reports_this_cpu_and_the_recorded_isa(tiny_clip_bundle: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _bundle_with_isa(tiny_clip_bundle, tmp_path / "b", VNNI_RECORD)
    monkeypatch.setattr(cpu_isa, "detect", lambda: ZEN3_ISA)
    assert cli_main(["verify", str(bundle)]) == 0  # parity still holds on the CPU that really runs it
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "CPU here: AMD EPYC 7763 64-Core Processor (x86_64), capabilities: avx2"
    isa_lines = [ln for ln in out if ln.startswith("     isa: ")]
    assert len(isa_lines) == 2  # the two int8 variants, none for fp32
    assert all("int8 target avx512-vnni, validated on AMD Ryzen 9 9950X" in ln and ln.endswith("this CPU lacks avx512_vnni")
               for ln in isa_lines)
    assert out[-1] == "4 ok, 0 failed"


def test_verify_says_when_no_isa_was_recorded(tiny_clip_bundle: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    old = _bundle_with_isa(tiny_clip_bundle, tmp_path / "o", None)
    assert cli_main(["verify", str(old), "--variant", "cpu-int8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"CPU here: {cpu_isa.detect().describe()}\n")
    assert out.count("isa: no ISA recorded") == 2
