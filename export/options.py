"""What every export run is asked to do, whatever the family: one frozen options object.

Torch-free on purpose: the command line builds an :class:`ExportOptions` from its
arguments (and answers ``--help``) before any exporter module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from crossmodal.cpu_isa import INT8_TARGETS
from crossmodal.errors import InputError
from crossmodal.variants import EXPORTABLE, TABLE

DEFAULT_TARGETS: tuple[str, ...] = ("cpu-fp32", "cpu-int8")
# The choices of --int8-recipe. "auto" measures the candidates of
# crossmodal.export.quantize and keeps the best one; the others name one recipe
# (crossmodal.export.int8_targets says which CPUs each one stays right on).
INT8_RECIPES: tuple[str, ...] = ("auto", "nbits8", "nbits8-fp32", "dynamic", "dynamic-rr", "qdq", "qdq-rr", "qdq-s8s8",
                                 "nbits8-fused", "dynamic-fused", "qdq-fused")
# INT8_TARGETS (from crossmodal.cpu_isa, which reads them back): the choices of
# --int8-target, the CPUs an int8 graph must stay right on.


@dataclass(frozen=True)
class Thresholds:
    """Parity every written graph must meet against the PyTorch reference."""

    fp32_min_cosine: float = 0.99999
    fp32_max_abs: float = 1e-4
    int8_min_cosine: float = 0.99
    fp16_min_cosine: float = 0.999
    # Recorded for reference only: fp16 graphs are gated on cosine (their
    # element errors scale with the activations' magnitude, not with quality).
    fp16_max_abs: float = 5e-3


def parse_targets(targets: str | Sequence[str]) -> list[str]:
    """'cpu-fp32,cpu-int8' -> validated list of exportable variant names."""
    items = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    bad = [t for t in items if t not in EXPORTABLE]
    if bad or not items:
        built_elsewhere = [t for t in bad if t in TABLE]
        hint = (f" ({', '.join(built_elsewhere)}: engines are built on the GPU machine with "
                "`crossmodal export tensorrt build`)") if built_elsewhere else ""
        raise InputError(f"unknown export target(s) {bad or items}; choose from {', '.join(EXPORTABLE)}{hint}")
    return items


@dataclass(frozen=True)
class ExportOptions:
    """The bundle-level choices of one export, shared by every family exporter.

    ``out``: bundle directory (created; towers already in it are kept when dim
    and space agree). ``targets``: exportable variants to write. ``name``:
    bundle name (default: the folder name). ``space``: embedding-space id
    (default: the family's rule). ``calib_dir``: images for static int8
    calibration (None: the family's default). ``int8_recipe``: one of
    :data:`INT8_RECIPES` (checked by :func:`crossmodal.export.quantize.quantize_int8`,
    which also takes its internal candidates by name). ``int8_target``: one of
    :data:`INT8_TARGETS`, the CPUs the int8 graph must stay right on (None: this
    machine's); it limits the recipes to those safe there. ``optimize``: try
    onnxruntime's transformer fusions (kept only when parity holds).
    ``thresholds``: the parity gates.
    """

    out: Path
    targets: tuple[str, ...] = DEFAULT_TARGETS
    name: str | None = None
    space: str | None = None
    calib_dir: Path | None = None
    int8_recipe: str = "auto"
    int8_target: str | None = None
    optimize: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        parse_targets(self.targets)  # unknown or empty targets stop here, before any work
        if self.int8_target is not None and self.int8_target not in INT8_TARGETS:
            raise InputError(f"unknown int8 target {self.int8_target!r}; choose from {', '.join(INT8_TARGETS)}")

    @classmethod
    def create(cls, out: str | Path, targets: str | Sequence[str] = DEFAULT_TARGETS, **settings: Any) -> ExportOptions:
        """Options from the loose forms callers have: a str path, "cpu-fp32,cpu-int8"; ``settings`` are the other fields."""
        calib = settings.pop("calib_dir", None)
        return cls(Path(out), tuple(parse_targets(targets)), calib_dir=None if calib is None else Path(calib), **settings)

    @property
    def bundle_name(self) -> str:
        return self.name or self.out.name


__all__ = ["DEFAULT_TARGETS", "INT8_RECIPES", "INT8_TARGETS", "ExportOptions", "Thresholds", "parse_targets"]
