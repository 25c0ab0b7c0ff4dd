"""The family-independent export pipeline.

A family exporter (``clip.py``, ``mbert.py``, ``albef.py``) only builds
:class:`TowerSpec` objects: a torch module per tower plus its I/O names,
sample inputs and pre/post-processing settings. This module turns them into a
bundle: trace to ONNX, check fp32 parity against the module, try graph
fusions (kept only if parity holds), quantise to int8 (recipe measured),
convert to fp16 for GPUs, and write everything through ``artifact.py``.

Thresholds are policy: a graph that misses one is never written.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from crossmodal.manifest import FORMAT_VERSION, VARIANTS, BundleInfo, ImagePreprocess, TextSettings, read_bundle
from crossmodal.errors import ArtifactError

from . import artifact
from .onnx_export import DEFAULT_OPSET, export_onnx, run_torch
from .measure import parity_against
from .optimize import optimize_with_parity
from .parity import Parity, require
from .quantize import quantize_int8

log = logging.getLogger(__name__)

EXPORTABLE_TARGETS = ("cpu-fp32", "cpu-int8", "gpu-fp16")


@dataclass(frozen=True)
class Thresholds:
    """Parity every written graph must meet against the PyTorch reference."""

    fp32_min_cosine: float = 0.99999
    fp32_max_abs: float = 1e-4
    int8_min_cosine: float = 0.99
    fp16_min_cosine: float = 0.999
    fp16_max_abs: float = 5e-3


@dataclass
class TowerSpec:
    """One tower to export: the torch module and everything the manifest needs."""

    tower: str
    module: torch.nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    parity_inputs: list[dict[str, NDArray]]
    dim: int
    preprocess: ImagePreprocess | None = None
    text: TextSettings | None = None
    tokenizer: Any = None  # tokenizers.Tokenizer, written as tokenizer.json
    calibration_inputs: list[dict[str, NDArray]] = field(default_factory=list)
    ort_optimizer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None  # defaults to the tower name
    # Output compared for parity; towers compare their embedding (output 0).
    parity_output: int = 0
    # Further outputs that consumers read (e.g. ALBEF token states for the
    # re-ranker): name -> max abs error allowed for fp32. Every variant must also
    # reach its own cosine threshold on them before it is written.
    secondary_outputs: dict[str, float] = field(default_factory=dict)


def parse_targets(targets: str | Sequence[str]) -> list[str]:
    """'cpu-fp32,cpu-int8' -> validated list."""
    items = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    bad = [t for t in items if t not in EXPORTABLE_TARGETS]
    if bad or not items:
        hint = " (TensorRT engines are built on the GPU machine with `crossmodal trt build`)" if "gpu-trt-fp16" in bad else ""
        raise ValueError(f"unknown export target(s) {bad or items}; choose from {', '.join(EXPORTABLE_TARGETS)}{hint}")
    return items


def _tensor_specs(names: Sequence[str], arrays: Sequence[NDArray], dynamic_axes: Mapping[str, Mapping[int, str]]) -> list[dict[str, Any]]:
    specs = []
    for name, arr in zip(names, arrays):
        axes = dynamic_axes.get(name, {})
        shape = [axes.get(i, int(d)) for i, d in enumerate(arr.shape)]
        specs.append({"name": name, "dtype": str(arr.dtype), "shape": shape})
    return specs


def _timing_feed(spec: TowerSpec) -> dict[str, NDArray]:
    # The largest sample is the closest to real work among the parity inputs.
    return max(spec.parity_inputs, key=lambda f: sum(v.size for v in f.values()))


def _check_secondary(spec: TowerSpec, path: Path, reference: Sequence[Sequence[NDArray]], variant: str,
                     min_cosine: float, exact: bool) -> dict[str, Any]:
    """Gate the extra outputs of a graph before it is written; returns their parity for the manifest."""
    out: dict[str, Any] = {}
    for name, max_abs in spec.secondary_outputs.items():
        p = parity_against(reference, path, spec.parity_inputs, output=spec.output_names.index(name))
        require(p, min_cosine=min_cosine, max_abs=max_abs if exact else None,
                what=f"{spec.folder or spec.tower} tower {variant} output {name!r}")
        out[name] = p.to_dict()
    return out


def _manifest_fields(
    spec: TowerSpec, *, family: str, space: str, variant: str, precision: str, parity: Parity,
    reference_outputs: Sequence[NDArray], source: Mapping[str, Any], opset: int,
    rewrites: Sequence[str], quantization: Mapping[str, Any] | None, thresholds: Mapping[str, float],
) -> dict[str, Any]:
    example = spec.parity_inputs[0]
    return {
        "format_version": FORMAT_VERSION,
        "family": family,
        "tower": spec.tower,
        "variant": variant,
        "dim": spec.dim,
        "space": space,
        "inputs": _tensor_specs(spec.input_names, [example[n] for n in spec.input_names], spec.dynamic_axes),
        "outputs": _tensor_specs(spec.output_names, reference_outputs, spec.dynamic_axes),
        "opset": opset,
        "precision": precision,
        "normalized": spec.tower in ("image", "text"),
        "sha256": "",  # computed by artifact.write_tower
        "preprocess": None if spec.preprocess is None else spec.preprocess.__dict__,
        "text": None if spec.text is None else spec.text.__dict__,
        "parity": {"reference": "pytorch-fp32", **parity.to_dict(), "thresholds": dict(thresholds)},
        "quantization": quantization,
        "graph_rewrites": list(rewrites),
        "source": dict(source),
        "extra": dict(spec.extra),
    }


def export_tower(
    spec: TowerSpec,
    bundle_dir: Path,
    workdir: Path,
    *,
    family: str,
    space: str,
    source: Mapping[str, Any],
    targets: Sequence[str],
    thresholds: Thresholds = Thresholds(),
    int8_recipe: str = "auto",
    optimize: bool = True,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Export one tower to every target; returns a summary {variant: parity dict}."""
    spec.module.eval()
    folder = spec.folder or spec.tower
    reference = [run_torch(spec.module, feed, spec.input_names) for feed in spec.parity_inputs]
    raw = export_onnx(spec.module, spec.parity_inputs[0], spec.input_names, spec.output_names,
                      spec.dynamic_axes, workdir / f"{folder}-raw.onnx", opset=opset)
    tokenizer_json = spec.tokenizer.to_str() if spec.tokenizer is not None else None
    ref_out0 = reference[0]
    # The smallest parity case is kept next to each graph for `crossmodal verify`.
    small = min(range(len(spec.parity_inputs)), key=lambda i: sum(v.size for v in spec.parity_inputs[i].values()))
    case = {**{f"input:{k}": v for k, v in spec.parity_inputs[small].items()},
            "reference": reference[small][spec.parity_output]}
    summary: dict[str, Any] = {}
    what = f"{folder} tower"

    opt = optimize_with_parity(
        raw, workdir, reference, spec.parity_inputs, _timing_feed(spec),
        spec.ort_optimizer if optimize else None, thresholds.fp32_min_cosine, thresholds.fp32_max_abs,
    )
    require(opt.parity, min_cosine=thresholds.fp32_min_cosine, max_abs=thresholds.fp32_max_abs, what=f"{what} cpu-fp32")
    common = dict(family=family, space=space, source=source, opset=opset, reference_outputs=ref_out0)
    if "cpu-fp32" in targets:
        fields = _manifest_fields(spec, variant="cpu-fp32", precision="fp32", parity=opt.parity,
                                  rewrites=opt.rewrites, quantization=None,
                                  thresholds={"min_cosine": thresholds.fp32_min_cosine, "max_abs": thresholds.fp32_max_abs},
                                  **common)
        fields["extra"] = {**fields["extra"], "rewrite_trials": opt.trials,
                           "secondary_parity": _check_secondary(spec, opt.path, reference, "cpu-fp32",
                                                                thresholds.fp32_min_cosine, exact=True)}
        artifact.write_tower(bundle_dir, folder, "cpu-fp32", opt.path, fields, tokenizer_json, case)
        summary["cpu-fp32"] = opt.parity.to_dict()

    if "cpu-int8" in targets:
        # Quantise the unfused graph: the quantisers see every MatMul there (fused
        # Attention ops hide the QKV weights and break their shape inference), and
        # onnxruntime still fuses the int8 graph when it loads it.
        q = quantize_int8(raw, workdir, spec.tower, int8_recipe, reference, spec.parity_inputs,
                          spec.calibration_inputs, _timing_feed(spec), thresholds.int8_min_cosine)
        fields = _manifest_fields(spec, variant="cpu-int8", precision="int8", parity=q.parity,
                                  rewrites=[],
                                  quantization={"recipe": q.recipe, **q.settings, "trials": q.trials},
                                  thresholds={"min_cosine": thresholds.int8_min_cosine}, **common)
        fields["extra"] = {**fields["extra"], "secondary_parity": _check_secondary(
            spec, q.path, reference, "cpu-int8", thresholds.int8_min_cosine, exact=False)}
        artifact.write_tower(bundle_dir, folder, "cpu-int8", q.path, fields, tokenizer_json, case)
        summary["cpu-int8"] = {"recipe": q.recipe, **q.parity.to_dict()}

    if "gpu-fp16" in targets:
        from .fp16 import convert_fp16

        fp16_path, fp16_parity, fp16_info = convert_fp16(
            raw, workdir / f"{folder}-fp16.onnx", reference, spec.parity_inputs, output=spec.parity_output)
        require(fp16_parity, min_cosine=thresholds.fp16_min_cosine, max_abs=None, what=f"{what} gpu-fp16")
        fields = _manifest_fields(spec, variant="gpu-fp16", precision="fp16", parity=fp16_parity, rewrites=[],
                                  quantization=None,
                                  thresholds={"min_cosine": thresholds.fp16_min_cosine}, **common)
        fields["extra"] = {**fields["extra"], **fp16_info, "secondary_parity": _check_secondary(
            spec, fp16_path, reference, "gpu-fp16", thresholds.fp16_min_cosine, exact=False)}
        artifact.write_tower(bundle_dir, folder, "gpu-fp16", fp16_path, fields, tokenizer_json, case)
        summary["gpu-fp16"] = fp16_parity.to_dict()
    return summary


def export_bundle(
    out_dir: Path,
    *,
    name: str,
    family: str,
    space: str,
    dim: int,
    logit_scale: float,
    source: Mapping[str, Any],
    specs: Sequence[TowerSpec],
    targets: str | Sequence[str],
    thresholds: Thresholds = Thresholds(),
    int8_recipe: str = "auto",
    optimize: bool = True,
    extra_towers: Mapping[str, str] | None = None,
    pairing: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] = lambda msg: log.info(msg),
) -> Path:
    """Export every tower in ``specs`` into ``out_dir`` and (re)write ``bundle.json``.

    ``extra_towers`` names tower folders that were installed by other means (e.g.
    a CLIP image tower copied from another bundle) and belong to this bundle.
    Towers are installed one variant at a time, atomically; ``bundle.json`` is
    written last, so a bundle without it is an interrupted export.
    """
    target_list = parse_targets(targets)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"--out {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    towers: dict[str, str] = {}
    if (out_dir / "bundle.json").exists():
        try:
            prev = read_bundle(out_dir)
            if prev.dim == dim and prev.space == space:
                towers.update(prev.towers)
        except ArtifactError:
            pass  # an unreadable old bundle.json is replaced below
    towers.update(extra_towers or {})
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        for spec in specs:
            if spec.dim != dim:
                raise ArtifactError(f"{spec.tower} tower has dim {spec.dim} but the bundle has dim {dim}")
            progress(f"exporting {spec.tower} tower -> {', '.join(target_list)}")
            workdir = Path(tmp) / (spec.folder or spec.tower)
            workdir.mkdir()
            summary[spec.folder or spec.tower] = export_tower(
                spec, out_dir, workdir, family=family, space=space, source=source, targets=target_list,
                thresholds=thresholds, int8_recipe=int8_recipe, optimize=optimize,
            )
            towers[spec.tower] = spec.folder or spec.tower
            shutil.rmtree(workdir, ignore_errors=True)
    info = BundleInfo(name=name, family=family, dim=dim, space=space, logit_scale=float(logit_scale),
                      towers=towers, source=dict(source), pairing=dict(pairing or {}))
    artifact.write_bundle(out_dir, info)
    for tower, variants in summary.items():
        for variant, p in variants.items():
            progress(f"{tower}/{variant}: " + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()))
    return out_dir


def random_pixels(batch: int, size: int, seed: int) -> NDArray[np.float32]:
    """Normalised-looking pixel tensors for parity checks (N(0,1), like CLIP-normalised images)."""
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


__all__ = ["TowerSpec", "Thresholds", "export_bundle", "export_tower", "parse_targets", "random_pixels", "VARIANTS"]
