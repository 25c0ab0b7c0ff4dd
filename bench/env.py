"""The machine and software a benchmark ran on, recorded with every result file."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

PACKAGES = ("crossmodal", "onnxruntime", "torch", "transformers", "tokenizers", "usearch", "numpy", "pillow",
            "sentence-transformers", "onnx")
# Flags that decide which kernels the two engines can use.
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile",
                     "amx_int8", "amx_bf16", "avx_vnni", "asimd", "sve")


def cpu_info() -> dict[str, Any]:
    """CPU model, architecture, int8 capabilities, logical/physical cores and the SIMD flags that matter here."""
    from crossmodal.cpu_isa import detect

    isa = detect()
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    return {
        "model": isa.model,
        "arch": isa.arch,
        "capabilities": list(isa.capabilities) if isa.known_flags else None,
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "flags": sorted(f for f in INTERESTING_FLAGS if f in isa.flags),
        "machine": platform.machine(),
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def environment(threads: int) -> dict[str, Any]:
    """Everything a reader needs to judge or reproduce a figure."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu_info(),
        "memory_gb": memory_gb(),
        "threads": threads,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
    }


__all__ = ["environment", "cpu_info", "versions"]
