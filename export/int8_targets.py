"""Which int8 recipes stay right on which CPUs, and the ISA record every cpu-int8 manifest carries.

An int8 graph is chosen on the export machine but runs wherever the bundle is
copied. The arithmetic that differs between CPUs is the u8 x s8 dot product:

- x86-64 with AVX2 or AVX-512 but no VNNI multiplies with VPMADDUBSW, which adds
  two u8 x s8 products into a *16-bit* sum that saturates (clamps) when it
  overflows. onnxruntime's quantization guide ("When and why do I need to try
  U8U8?") names this and its two remedies, ``reduce_range`` or U8U8; its
  ``quantize_static`` docstring (onnxruntime 1.32) advises ``reduce_range=True``
  for x86 without VNNI. With 7-bit weights (onnxruntime's reduced INT8 range is
  [-64, 64]) a pair sums to at most 2 * 255 * 64 = 32,640 < 32,767: no
  saturation whatever the activations.
- x86-64 with VNNI (VPDPBUSD) and ARM (SDOT/UDOT) accumulate in 32 bits: "There
  is no such issue on other CPU architectures (x64 with VNNI and ARM)" (same
  guide). ARM kernels prefer symmetric s8 x s8 (same docstring).
- Static QDQ with s8 activations is turned into u8 x s8 on x86 (the activation
  is shifted by 128), so it saturates there like any u8 x s8 recipe.
- MatMulNBits with ``accuracy_level`` 4 quantises activations to s8 per block and
  keeps the 8-bit weights as u8; its AVX2 path for 64-wide blocks splits the
  bytes before VPMADDUBSW to avoid the overflow, but the 32-wide block path we
  use was not confirmed, so it is not counted as safe without VNNI.
  ``nbits8-fp32`` (``accuracy_level`` 1: int8 weights, fp32 arithmetic) is exact
  everywhere.

What this CPU has comes from ``crossmodal.cpu_isa`` (the runtime reads the
same names back at load and in ``crossmodal verify``). Torch-free and cheap: the
command line validates ``--int8-target`` with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossmodal.cpu_isa import CAPABILITIES, CpuIsa, detect
from crossmodal.errors import InputError

from .options import INT8_TARGETS
# Base recipes (before any "-fused" suffix) whose integer products cannot
# saturate on x86 without VNNI: 7-bit weights, or no integer arithmetic at all.
SATURATION_SAFE: frozenset[str] = frozenset({"dynamic-rr", "qdq-rr", "nbits8-fp32"})
REDUCED_RANGE: frozenset[str] = frozenset({"dynamic-rr", "qdq-rr"})
# The largest |int8 weight| a reduce_range recipe may hold (onnxruntime's reduced INT8 range).
REDUCED_WEIGHT_BOUND = 64

# The candidates ``auto`` measures, per target and tower, best-first in fidelity.
# avx2 and portable share the saturation-safe set (an x86 AVX2 machine is the
# strictest CPU any int8 graph meets); "portable" only drops the AVX2 requirement.
_SAFE_CANDIDATES = {
    "text": ("nbits8-fp32", "nbits8-fp32-fused", "dynamic-rr", "dynamic-rr-fused"),
    "image": ("qdq-rr", "qdq-rr-fused", "dynamic-rr", "dynamic-rr-fused"),
    "rerank": ("nbits8-fp32", "dynamic-rr"),
}
AUTO_CANDIDATES: dict[str, dict[str, tuple[str, ...]]] = {
    "avx512-vnni": {
        "text": ("nbits8", "nbits8-qkv-fp32", "nbits8-fused", "dynamic", "dynamic-fused"),
        # No MatMulNBits for images: at batch 16 the tower is compute-bound and
        # MatMulNBits measured 1.9x slower than dynamic int8 (1,645 vs 871 ms under load).
        "image": ("qdq", "qdq-fused", "dynamic", "dynamic-fused"),
        "rerank": ("nbits8", "nbits8-qkv-fp32", "nbits8-fused", "dynamic"),
    },
    "arm64": {
        "text": ("nbits8", "nbits8-qkv-fp32", "nbits8-fused", "dynamic", "dynamic-fused"),
        "image": ("qdq-s8s8", "qdq-s8s8-fused", "dynamic", "dynamic-fused"),
        "rerank": ("nbits8", "nbits8-qkv-fp32", "nbits8-fused", "dynamic"),
    },
    "avx2": _SAFE_CANDIDATES,
    "portable": _SAFE_CANDIDATES,
}
def base_recipe(name: str) -> str:
    """'dynamic-rr-fused' -> 'dynamic-rr': the recipe without the graph it starts from."""
    return name.removesuffix("-fused")


def machine_target(cpu: CpuIsa | None = None) -> str:
    """The --int8-target a machine with ``cpu`` (default: this one) stands for."""
    cpu = detect() if cpu is None else cpu
    if cpu.arch == "arm64":
        return "arm64"
    if "avx512_vnni" in cpu.capabilities or "avx_vnni" in cpu.capabilities:  # 32-bit accumulation
        return "avx512-vnni"
    if "avx2" in cpu.capabilities:
        return "avx2"
    return "portable"


def candidates(target: str, tower: str) -> tuple[str, ...]:
    """The recipes ``auto`` measures for ``tower`` when the graph must stay right on ``target``."""
    if target not in AUTO_CANDIDATES:
        raise InputError(f"unknown int8 target {target!r}; choose from {', '.join(INT8_TARGETS)}")
    by_tower = AUTO_CANDIDATES[target]
    return by_tower.get(tower, by_tower["rerank"])


def safe_on(recipe: str, target: str) -> bool:
    """True when ``recipe`` computes the same int8 result on every CPU of ``target``."""
    base = base_recipe(recipe)
    if target in ("avx2", "portable"):
        return base in SATURATION_SAFE
    if target == "arm64":
        return True  # 32-bit accumulation (SDOT/UDOT or widening), whatever the signs
    return True  # avx512-vnni: VPDPBUSD accumulates in 32 bits


def requires(recipe: str, target: str, cpu: CpuIsa | None = None) -> list[str]:
    """The capabilities (``crossmodal.cpu_isa`` names) a ``recipe`` graph for ``target`` needs to stay right and fast.

    A full-range u8 x s8 recipe needs 32-bit accumulation: ``vnni`` (AVX-512 VNNI
    or AVX-VNNI) where ``crossmodal.cpu_isa`` names it, else the VNNI flavour the
    export machine ``cpu`` has.
    """
    if target == "portable":
        return []
    if target == "arm64":
        return ["neon"]
    if target == "avx2" or base_recipe(recipe) in SATURATION_SAFE:
        return ["avx2"]
    if "vnni" in CAPABILITIES:
        return ["avx2", "vnni"]
    cpu = detect() if cpu is None else cpu
    vnni = "avx_vnni" if "avx_vnni" in cpu.capabilities and "avx512_vnni" not in cpu.capabilities else "avx512_vnni"
    return ["avx2", vnni]


def isa_record(recipe: str, target: str, cpu: CpuIsa | None = None) -> dict[str, Any]:
    """The manifest's ``quantization["isa"]``: where the recipe was measured and where it stays right.

    ``cpu`` is the export machine (default: this one).
    """
    cpu = detect() if cpu is None else cpu
    return {
        "measured_on": cpu.to_dict(),
        "target": target,
        "requires": requires(recipe, target, cpu),
        "reduce_range": base_recipe(recipe) in REDUCED_RANGE,
    }


def check_recipe(recipe: str, target: str) -> None:
    """Refuse a named recipe that would not stay right on ``target``, naming those that would."""
    if not safe_on(recipe, target):
        safe = sorted({base_recipe(c) for tower in AUTO_CANDIDATES[target].values() for c in tower})
        raise InputError(f"int8 recipe {recipe!r} can saturate on {target} CPUs (16-bit sums without VNNI); "
                         f"choose one of {', '.join(safe)} or --int8-target avx512-vnni")


def int8_weight_bound(path: Path) -> int:
    """The largest |int8 weight| feeding an integer matrix product in the graph at ``path`` (0: none).

    The static check behind the avx2/portable targets: a reduce_range graph must
    hold no weight outside [-64, 64], or VPMADDUBSW can saturate on its pairs.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from . import onnx_files

    graph = onnx_files.load(path).graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    weights: set[str] = set()
    for n in graph.node:
        if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul"):
            weights.add(n.input[3] if n.op_type == "QLinearMatMul" else n.input[1])
        elif n.op_type in ("MatMul", "Conv", "Gemm"):
            dq = producers.get(n.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear":
                weights.add(dq.input[0])
    bound = 0
    for name in weights:
        if name in inits and inits[name].data_type == onnx.TensorProto.INT8:
            arr = numpy_helper.to_array(inits[name]).astype(np.int16)
            # onnxruntime stores reduce_range weights symmetric around 0 (zero point 0)
            bound = max(bound, int(np.abs(arr).max(initial=0)))
    return bound


__all__ = ["AUTO_CANDIDATES", "REDUCED_RANGE", "REDUCED_WEIGHT_BOUND", "SATURATION_SAFE", "base_recipe", "candidates",
           "check_recipe", "int8_weight_bound", "isa_record", "machine_target", "requires", "safe_on"]
