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

from crossmodal.errors import ArtifactError
from crossmodal.manifest import FORMAT_VERSION, BundleInfo, ImagePreprocess, TextSettings, read_bundle
from crossmodal.variants import EXPORTABLE, get_variant

from . import artifact, int8_targets
from .measure import parity_against
from .memory import release
from .onnx_export import DEFAULT_OPSET, export_onnx, run_torch
from .optimize import OptimizeResult, optimize_with_parity
from .options import ExportOptions, Thresholds, parse_targets
from .parity import Parity, require
from .progress import Stages, quiet
from .quantize import quantize_int8

log = logging.getLogger(__name__)


@dataclass
class TowerSpec:
    """One tower to export: the torch module and everything the manifest needs.

    The export takes the module out (``module`` becomes None) once it has traced
    it and computed the reference outputs, so that the torch weights are freed
    before the graph trials; a spec is exported once.
    """

    tower: str
    module: torch.nn.Module | None
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
                     limits: Mapping[str, float]) -> dict[str, Any]:
    """Gate the extra outputs of a graph before it is written; returns their parity for the manifest.

    A variant gated on ``max_abs`` is held to each output's own bound (token
    states are not unit vectors); the others to the variant's cosine only.
    """
    out: dict[str, Any] = {}
    exact = "max_abs" in limits
    for name, max_abs in spec.secondary_outputs.items():
        p = parity_against(reference, path, spec.parity_inputs, output=spec.output_names.index(name))
        require(p, min_cosine=limits["min_cosine"], max_abs=max_abs if exact else None,
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


@dataclass
class TowerRun:
    """One tower on its way into a bundle: what every variant's recipe starts from."""

    spec: TowerSpec
    options: ExportOptions
    workdir: Path
    raw: Path  # the traced fp32 graph, unfused
    reference: list[list[NDArray]]  # PyTorch outputs per parity input
    optimized: OptimizeResult  # the fastest fp32 graph that keeps parity (``raw`` when no rewrite does)
    stage: Callable[[str], None] = quiet  # told each step's name as it starts (progress display)

    @property
    def folder(self) -> str:
        return self.spec.folder or self.spec.tower


@dataclass(frozen=True)
class Built:
    """A variant's graph, measured against the reference, before it is gated and written."""

    path: Path
    parity: Parity
    rewrites: Sequence[str] = ()
    quantization: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # merged into the manifest's ``extra``
    summary: Mapping[str, Any] = field(default_factory=dict)  # shown in the export's closing lines


def _build_fp32(run: TowerRun) -> Built:
    opt = run.optimized
    return Built(opt.path, opt.parity, rewrites=opt.rewrites, extra={"rewrite_trials": opt.trials})


def _build_int8(run: TowerRun) -> Built:
    # Quantise the unfused graph: the quantisers see every MatMul there (fused
    # Attention ops hide the QKV weights and break their shape inference), and
    # onnxruntime still fuses the int8 graph when it loads it.
    spec = run.spec
    q = quantize_int8(run.raw, run.workdir, spec.tower, run.options.int8_recipe, run.reference, spec.parity_inputs,
                      spec.calibration_inputs, _timing_feed(spec), run.options.thresholds.int8_min_cosine,
                      target=run.options.int8_target, stage=run.stage)
    return Built(q.path, q.parity, quantization={"recipe": q.recipe, **q.settings, "trials": q.trials},
                 summary={"recipe": q.recipe})


def _build_fp16(run: TowerRun) -> Built:
    from .fp16 import convert_fp16

    run.stage("fp16")
    # From the traced graph, not the CPU-fused one: CUDA fuses differently, online.
    path, parity, info = convert_fp16(run.raw, run.workdir / f"{run.folder}-fp16.onnx", run.reference,
                                      run.spec.parity_inputs, output=run.spec.parity_output)
    return Built(path, parity, extra=info)


def _no_stages(tower: str, options: ExportOptions) -> list[str]:
    return []


def _int8_stages(tower: str, options: ExportOptions) -> list[str]:
    target = options.int8_target or int8_targets.machine_target()
    recipes = int8_targets.candidates(target, tower) if options.int8_recipe == "auto" else (options.int8_recipe,)
    names = [f"int8 {r}" for r in recipes if options.optimize or not r.endswith("-fused")]
    return names + (["int8 timing"] if len(recipes) > 1 else [])


@dataclass(frozen=True)
class Recipe:
    """How one exportable variant is made (``build``) and which parity limits gate it (``limits``).

    ``limits`` returns ``min_cosine`` and, for variants that must match the
    reference element by element, ``max_abs``; the same dict is recorded in the
    manifest and gates the tower's secondary outputs. ``stages`` names the
    progress stages ``build`` announces through ``TowerRun.stage`` (for the ETA).
    """

    build: Callable[[TowerRun], Built]
    limits: Callable[[Thresholds], dict[str, float]]
    stages: Callable[[str, ExportOptions], list[str]] = _no_stages


# One row per exportable variant of crossmodal.variants (tests check the keys agree).
RECIPES: dict[str, Recipe] = {
    "cpu-fp32": Recipe(_build_fp32, lambda t: {"min_cosine": t.fp32_min_cosine, "max_abs": t.fp32_max_abs}),
    "cpu-int8": Recipe(_build_int8, lambda t: {"min_cosine": t.int8_min_cosine}, _int8_stages),
    "gpu-fp16": Recipe(_build_fp16, lambda t: {"min_cosine": t.fp16_min_cosine}, lambda tower, options: ["fp16"]),
}


def export_tower(
    spec: TowerSpec,
    workdir: Path,
    options: ExportOptions,
    *,
    family: str,
    space: str,
    source: Mapping[str, Any],
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Export one tower to every target of ``options`` into ``options.out``; returns {variant: parity summary}.

    Prints each stage's name and a rough ETA to stderr (``progress.Stages``).
    Releases ``spec.module`` after tracing it (see :class:`TowerSpec`).
    """
    if spec.module is None:
        raise ArtifactError(f"the {spec.folder or spec.tower} tower was exported already (its torch module was "
                            "released after tracing); build its TowerSpec again to export it again")
    spec.module.eval()
    stages = Stages(f"export {spec.folder or spec.tower}", planned_stages(spec.tower, options))
    try:
        return _export_tower(spec, workdir, options, stages, family=family, space=space, source=source, opset=opset)
    finally:
        stages.close()


def planned_stages(tower: str, options: ExportOptions) -> list[str]:
    """The stage names an export of ``tower`` with ``options`` goes through, in order (for the ETA)."""
    names = ["trace", "fp32 parity and fusions"]
    for variant in (v for v in EXPORTABLE if v in options.targets):
        names += [*RECIPES[variant].stages(tower, options), f"write {variant}"]
    return names


def _trace(spec: TowerSpec, path: Path, opset: int) -> tuple[Path, list[list[NDArray]]]:
    """Trace ``spec.module`` to ``path`` and compute its reference outputs, then release the module.

    From here on the export needs only the graph and the reference: keeping the
    torch weights alive through the fusion trials and the int8 search held a
    second copy of the model for no use. Submodules another tower still holds
    (a shared encoder) stay alive, and so does anything the caller keeps.
    """
    module = spec.module
    assert module is not None  # checked by export_tower
    reference = [run_torch(module, feed, spec.input_names) for feed in spec.parity_inputs]
    raw = export_onnx(module, spec.parity_inputs[0], spec.input_names, spec.output_names, spec.dynamic_axes, path,
                      opset=opset)
    spec.module = None
    del module
    release()
    return raw, reference


def _export_tower(spec: TowerSpec, workdir: Path, options: ExportOptions, stages: Stages, *, family: str, space: str,
                  source: Mapping[str, Any], opset: int) -> dict[str, Any]:
    thresholds = options.thresholds
    folder = spec.folder or spec.tower
    stages("trace")
    raw, reference = _trace(spec, workdir / f"{folder}-raw.onnx", opset)
    # The fp32 gate comes first whatever the targets: a graph that does not
    # reproduce the module in fp32 has no faithful int8 or fp16 form either.
    stages("fp32 parity and fusions")
    optimized = optimize_with_parity(
        raw, workdir, reference, spec.parity_inputs, _timing_feed(spec),
        spec.ort_optimizer if options.optimize else None, thresholds.fp32_min_cosine, thresholds.fp32_max_abs,
    )
    require(optimized.parity, min_cosine=thresholds.fp32_min_cosine, max_abs=thresholds.fp32_max_abs,
            what=f"{folder} tower cpu-fp32")
    run = TowerRun(spec, options, workdir, raw, reference, optimized, stage=stages)

    tokenizer_json = spec.tokenizer.to_str() if spec.tokenizer is not None else None
    # The smallest parity case is kept next to each graph for `crossmodal verify`.
    small = min(range(len(spec.parity_inputs)), key=lambda i: sum(v.size for v in spec.parity_inputs[i].values()))
    case = {**{f"input:{k}": v for k, v in spec.parity_inputs[small].items()},
            "reference": reference[small][spec.parity_output]}
    summary: dict[str, Any] = {}
    for variant in (v for v in EXPORTABLE if v in options.targets):
        recipe = RECIPES[variant]
        built = recipe.build(run)
        limits = recipe.limits(thresholds)
        require(built.parity, min_cosine=limits["min_cosine"], max_abs=limits.get("max_abs"),
                what=f"{folder} tower {variant}")
        fields = _manifest_fields(spec, family=family, space=space, variant=variant,
                                  precision=get_variant(variant).precision, parity=built.parity,
                                  reference_outputs=reference[0], source=source, opset=opset, rewrites=built.rewrites,
                                  quantization=built.quantization, thresholds=limits)
        fields["extra"] = {**fields["extra"], **built.extra,
                           "secondary_parity": _check_secondary(spec, built.path, reference, variant, limits)}
        stages(f"write {variant}")
        artifact.write_tower(options.out, folder, variant, built.path, fields, tokenizer_json, case)
        summary[variant] = {**built.summary, **built.parity.to_dict()}
        del built
        release()  # the variant's sessions and graph protos go before the next variant is built
    return summary


def export_bundle(
    options: ExportOptions,
    *,
    family: str,
    space: str,
    dim: int,
    logit_scale: float,
    source: Mapping[str, Any],
    specs: Sequence[TowerSpec],
    extra_towers: Mapping[str, str] | None = None,
    pairing: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] = print,
) -> Path:
    """Export every tower in ``specs`` into ``options.out`` and (re)write ``bundle.json``.

    ``space`` is the family's resolved space id (``options.space`` or its
    default). ``extra_towers`` names tower folders that were installed by other
    means (e.g. a CLIP image tower copied from another bundle) and belong to this
    bundle. Towers are installed one variant at a time, atomically;
    ``bundle.json`` is written last, so a bundle without it is an interrupted export.
    """
    out_dir = options.out
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"--out {out_dir} exists and is not a directory")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _export_into(out_dir, specs, options, family=family, dim=dim, space=space, logit_scale=logit_scale,
                            source=source, extra_towers=extra_towers, pairing=pairing, progress=progress)
    except BaseException:
        # A refused export ("Nothing was written") leaves no empty --out behind; a folder that
        # existed before, or holds towers installed before the failure, stays.
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _export_into(out_dir: Path, specs: Sequence[TowerSpec], options: ExportOptions, *, family: str, dim: int,
                 space: str, logit_scale: float, source: Mapping[str, Any],
                 extra_towers: Mapping[str, str] | None, pairing: Mapping[str, Any] | None,
                 progress: Callable[[str], None]) -> Path:
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
            progress(f"exporting {spec.tower} tower -> {', '.join(options.targets)}")
            workdir = Path(tmp) / (spec.folder or spec.tower)
            workdir.mkdir()
            summary[spec.folder or spec.tower] = export_tower(spec, workdir, options, family=family, space=space,
                                                              source=source)
            towers[spec.tower] = spec.folder or spec.tower
            shutil.rmtree(workdir, ignore_errors=True)
    info = BundleInfo(name=options.bundle_name, family=family, dim=dim, space=space, logit_scale=float(logit_scale),
                      towers=towers, source=dict(source), pairing=dict(pairing or {}))
    artifact.write_bundle(out_dir, info)
    for tower, variants in summary.items():
        for variant, p in variants.items():
            progress(f"{tower}/{variant}: " + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()))
    return out_dir


def random_pixels(batch: int, size: int, seed: int) -> NDArray[np.float32]:
    """Normalised-looking pixel tensors for parity checks (N(0,1), like CLIP-normalised images)."""
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


__all__ = ["RECIPES", "Built", "ExportOptions", "Recipe", "TowerRun", "TowerSpec", "Thresholds", "export_bundle",
           "export_tower", "parse_targets", "planned_stages", "random_pixels"]
