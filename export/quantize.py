"""int8 recipes for the CPU, chosen per tower by measurement.

Recipes (all keep graph inputs/outputs in fp32/int64):

- ``nbits8``: onnxruntime MatMulNBits, 8-bit weights in blocks of 32 with
  accuracy_level 4 (int8 compute with per-block activation scales). Best
  fidelity of the int8 options on trained BERT weights and weight bytes halve
  twice over fp32, which is what batch-1 text latency is bound by.
- ``dynamic``: per-channel int8 weights, activations quantised per tensor at run
  time (MatMulInteger / DynamicQuantizeMatMul).
- ``qdq``: static QDQ with u8 activations (onnxruntime's s8xs8 kernels have no
  VNNI path) and per-channel s8 weights, calibrated on sample inputs. Usually the
  fastest for the compute-bound image towers.

``auto`` builds every candidate for the tower, measures fidelity against the
PyTorch reference and latency on this machine, and keeps the fastest one that
meets the threshold. All trials go into the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from numpy.typing import NDArray

from crossmodal.errors import ParityError

from .measure import median_latency_ms, parity_against
from .parity import Parity

log = logging.getLogger(__name__)

RECIPES = ("nbits8", "dynamic", "qdq")
AUTO_CANDIDATES = {
    "text": ("nbits8", "dynamic"),
    "image": ("qdq", "dynamic", "nbits8"),
    "rerank": ("nbits8", "dynamic"),
}


@dataclass
class QuantResult:
    path: Path
    recipe: str
    parity: Parity
    settings: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)


def _nbits8(src: Path, dst: Path, feeds: Sequence[Mapping[str, NDArray]]) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    settings = {"bits": 8, "block_size": 32, "accuracy_level": 4, "symmetric": True, "ops": ["MatMul"]}
    q = MatMulNBitsQuantizer(
        onnx.load(str(src)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4, op_types_to_quantize=("MatMul",)
    )
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)
    return settings


def _dynamic(src: Path, dst: Path, feeds: Sequence[Mapping[str, NDArray]]) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {"weights": "int8 per-channel", "activations": "uint8 per-tensor, dynamic", "ops": ["MatMul"]}
    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
        extra_options={"MatMulConstBOnly": True},
    )
    return settings


class _Reader:
    """Calibration feeds for onnxruntime's static quantiser."""

    def __init__(self, feeds: Sequence[Mapping[str, NDArray]], names: set[str]):
        self._it = iter([{k: v for k, v in f.items() if k in names} for f in feeds])

    def get_next(self) -> dict[str, NDArray] | None:
        return next(self._it, None)


def _qdq(src: Path, dst: Path, feeds: Sequence[Mapping[str, NDArray]]) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    names = {i.name for i in onnx.load(str(src), load_external_data=False).graph.input}
    settings = {
        "format": "QDQ", "activations": "uint8 per-tensor, static (MinMax calibration)",
        "weights": "int8 per-channel", "ops": ["MatMul", "Conv"], "calibration_batches": len(feeds),
    }
    quantize_static(
        str(src), str(dst), _Reader(feeds, names), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
        op_types_to_quantize=["MatMul", "Conv"], calibrate_method=CalibrationMethod.MinMax,
        extra_options={"MatMulConstBOnly": True},
    )
    return settings


_BUILDERS = {"nbits8": _nbits8, "dynamic": _dynamic, "qdq": _qdq}


def quantize_int8(
    fp32: Path,
    workdir: Path,
    tower: str,
    recipe: str,
    reference: Sequence[Sequence[NDArray]],
    feeds: Sequence[Mapping[str, NDArray]],
    calibration: Sequence[Mapping[str, NDArray]],
    timing_feed: Mapping[str, NDArray],
    min_cosine: float,
) -> QuantResult:
    """Build the int8 graph for one tower; ``recipe`` is one of RECIPES or ``auto``."""
    candidates = AUTO_CANDIDATES.get(tower, ("dynamic",)) if recipe == "auto" else (recipe,)
    unknown = [c for c in candidates if c not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown int8 recipe {unknown[0]!r}; choose from auto, {', '.join(RECIPES)}")
    trials: list[dict[str, Any]] = []
    passing: list[tuple[float, QuantResult]] = []
    for name in candidates:
        dst = workdir / f"{tower}-int8-{name}.onnx"
        try:
            settings = _BUILDERS[name](fp32, dst, calibration or feeds)
        except Exception as exc:  # one recipe failing on an op set must not stop the others
            trials.append({"recipe": name, "rejected": f"quantiser failed: {exc!r}"})
            continue
        p = parity_against(reference, dst, feeds)
        ms = median_latency_ms(dst, timing_feed)
        trial = {"recipe": name, "ms": round(ms, 3), **p.to_dict()}
        if p.min_cosine < min_cosine:
            trial["rejected"] = f"min cosine {p.min_cosine:.5f} < {min_cosine}"
        else:
            passing.append((ms, QuantResult(dst, name, p, settings)))
        trials.append(trial)
        log.info("int8 %s %s: %s", tower, name, trial)
    if not passing:
        detail = "; ".join(f"{t['recipe']}: {t.get('rejected')}" for t in trials)
        raise ParityError(f"no int8 recipe for the {tower} tower reaches min cosine {min_cosine} ({detail}). "
                          "Nothing was written for cpu-int8; use cpu-fp32 for this model.")
    best = min(passing, key=lambda x: x[0])[1]
    best.trials = trials
    return best
