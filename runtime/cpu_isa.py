"""This CPU's instruction set: what an int8 recipe depends on to stay right and fast.

onnxruntime's CPU kernels are chosen at run time from the CPU's feature bits,
and int8 arithmetic differs between them: x86 without VNNI multiplies u8 x s8
with 16-bit intermediate sums that can saturate (``reduce_range`` is
onnxruntime's remedy), VNNI/AMX accumulate in 32 bits, ARM prefers s8 x s8 and
is fast with the dot-product extension. An int8 manifest records the ISA its
recipe was validated on (``quantization["isa"]``, written by the exporter);
this module says what *this* CPU has, so the loader can warn when a bundle moves
to a CPU that lacks a capability its recipe needs, and ``crossmodal verify``
can report both.

Capabilities (the names used in manifests):

============  ============================================================
``avx2``      x86 AVX2 (u8 x s8 via 16-bit sums: can saturate)
``avx512f``   x86 AVX-512 foundation
``avx512_vnni`` x86 AVX-512 VNNI (u8 x s8 with 32-bit accumulation)
``avx_vnni``  x86 AVX-VNNI (the same on 256-bit registers)
``vnni``      either of the two: what a recipe needs to accumulate u8 x s8 in 32 bits
``amx``       x86 AMX tiles with int8 (``amx_tile`` and ``amx_int8``)
``neon``      ARM Advanced SIMD (every AArch64 CPU)
``dotprod``   ARM SDOT/UDOT (``asimddp``)
============  ============================================================

On Linux the flags come from ``/proc/cpuinfo``; elsewhere only ``platform``'s
answer is available (``known_flags`` is False and nothing is reported missing:
a CPU whose features cannot be read is never accused of lacking one).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import ArtifactError

CAPABILITIES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "vnni", "amx", "neon", "dotprod")
INT8_TARGETS = ("avx2", "avx512-vnni", "arm64", "portable")
CPUINFO = "/proc/cpuinfo"

# capability -> the /proc/cpuinfo flags that must all be present
_X86 = {"avx2": ("avx2",), "avx512f": ("avx512f",), "avx512_vnni": ("avx512_vnni",), "avx_vnni": ("avx_vnni",),
        "amx": ("amx_tile", "amx_int8")}
_ARM = {"neon": ("asimd",), "dotprod": ("asimddp",)}


def normalise_arch(machine: str) -> str:
    """``x86_64`` for x86-64 (``AMD64`` on Windows), ``arm64`` for AArch64, else the name lower-cased."""
    m = machine.lower()
    if m in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8l"):
        return "arm64"
    return m


@dataclass(frozen=True)
class CpuIsa:
    """One CPU: architecture, model name, raw feature flags and the derived capabilities."""

    arch: str
    model: str
    flags: frozenset[str]
    capabilities: tuple[str, ...]
    known_flags: bool = True

    def has(self, capability: str) -> bool:
        """True when this CPU has ``capability`` (a name of :data:`CAPABILITIES` or a raw cpuinfo flag).

        Always True when the flags could not be read: nothing is known to be missing.
        """
        return not self.known_flags or capability in self.capabilities or capability in self.flags

    def missing(self, required: Iterable[str]) -> list[str]:
        """The capabilities of ``required`` this CPU lacks, in their given order."""
        return [c for c in required if not self.has(c)]

    def describe(self) -> str:
        """One line for people: model, architecture and capabilities."""
        caps = ", ".join(self.capabilities) if self.known_flags else "unknown (feature flags not readable here)"
        return f"{self.model} ({self.arch}), capabilities: {caps or 'none of ' + '/'.join(CAPABILITIES)}"

    def to_dict(self) -> dict[str, Any]:
        """The ``measured_on`` shape of a manifest's ``isa`` record."""
        return {"arch": self.arch, "cpu": self.model, "capabilities": list(self.capabilities)}


def derive_capabilities(arch: str, flags: Iterable[str]) -> tuple[str, ...]:
    """The capabilities (in :data:`CAPABILITIES` order) that ``flags`` of an ``arch`` CPU give."""
    have = set(flags)
    table = _X86 if arch == "x86_64" else _ARM if arch == "arm64" else {}
    caps = {cap for cap, need in table.items() if all(f in have for f in need)}
    if caps & {"avx512_vnni", "avx_vnni"}:
        caps.add("vnni")
    if arch == "arm64":
        caps.add("neon")  # Advanced SIMD is mandatory in AArch64, whatever the kernel lists
    return tuple(c for c in CAPABILITIES if c in caps)


def parse_cpuinfo(text: str, machine: str) -> CpuIsa:
    """A :class:`CpuIsa` from the text of ``/proc/cpuinfo`` (first processor's entry) on ``machine``.

    x86 lists ``model name`` and ``flags``; AArch64 lists ``Features`` and the
    implementer/part codes (a model name only on some kernels).
    """
    arch = normalise_arch(machine)
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    flags = frozenset((fields.get("flags") or fields.get("Features") or "").split())
    model = fields.get("model name") or fields.get("Model") or fields.get("Hardware") or ""
    if not model and "CPU implementer" in fields:
        model = f"ARM implementer {fields['CPU implementer']} part {fields.get('CPU part', '?')}"
    return CpuIsa(arch=arch, model=model or machine, flags=flags, capabilities=derive_capabilities(arch, flags),
                  known_flags=bool(flags))


@functools.lru_cache(maxsize=1)
def detect() -> CpuIsa:
    """This CPU, read once per process and cached: feature bits do not change while a process runs.

    Tests replace it with ``monkeypatch.setattr(crossmodal.cpu_isa, "detect", ...)``;
    ``detect.cache_clear()`` forces a new read.
    """
    machine = platform.machine()
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read(), machine)
    except OSError:
        pass
    arch = normalise_arch(machine)
    # Without /proc/cpuinfo only the architecture is certain; AArch64 always has NEON.
    caps = ("neon",) if arch == "arm64" else ()
    return CpuIsa(arch=arch, model=platform.processor() or machine, flags=frozenset(), capabilities=caps,
                  known_flags=False)


@dataclass(frozen=True)
class RecordedIsa:
    """A manifest's ``quantization["isa"]``: where the int8 recipe was validated and what it needs."""

    target: str
    requires: tuple[str, ...]
    measured_on: Mapping[str, Any]
    reduce_range: bool | None = None

    @property
    def measured_cpu(self) -> str:
        return str(self.measured_on.get("cpu") or "an unrecorded CPU")

    def describe(self) -> str:
        caps = ", ".join(self.measured_on.get("capabilities") or []) or "none recorded"
        rr = "" if self.reduce_range is None else f", reduce_range {str(self.reduce_range).lower()}"
        return (f"int8 target {self.target}, validated on {self.measured_cpu} "
                f"({self.measured_on.get('arch', '?')}: {caps}), requires {', '.join(self.requires) or 'nothing'}{rr}")


def recorded_isa(quantization: Mapping[str, Any] | None, where: str = "manifest") -> RecordedIsa | None:
    """The ``isa`` record of a manifest's ``quantization`` section; None for manifests written before it existed."""
    raw = (quantization or {}).get("isa") if isinstance(quantization, Mapping) else None
    if raw is None:
        return None
    requires = raw.get("requires", []) if isinstance(raw, Mapping) else None
    measured = raw.get("measured_on", {}) if isinstance(raw, Mapping) else None
    if (not isinstance(requires, (list, tuple)) or not all(isinstance(c, str) for c in requires)
            or not isinstance(measured, Mapping)):
        raise ArtifactError(f"{where}: quantization.isa must map 'requires' to a list of capability names and "
                            f"'measured_on' to an object, got {raw!r}. Re-export the bundle with `crossmodal export`.")
    rr = raw.get("reduce_range")
    return RecordedIsa(target=str(raw.get("target", "unrecorded")), requires=tuple(requires), measured_on=measured,
                       reduce_range=None if rr is None else bool(rr))


__all__ = ["CAPABILITIES", "INT8_TARGETS", "CpuIsa", "RecordedIsa", "derive_capabilities", "detect",
           "normalise_arch", "parse_cpuinfo", "recorded_isa"]
