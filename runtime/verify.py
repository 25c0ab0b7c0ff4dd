"""`crossmodal verify`: re-check every graph of a bundle against what the exporter recorded.

Two checks per tower variant: the model file's sha256 equals the manifest's
(and so does its external data file's, for graphs that have one),
and the graph, run here, reproduces the PyTorch reference output stored at
export time (``reference.npz``) within the manifest's parity thresholds. No
torch needed: the reference was computed by the exporter.

For int8 variants the result also says which ISA the recipe was validated on
(the manifest's ``quantization["isa"]``) against this CPU's
(:mod:`crossmodal.cpu_isa`): the parity re-check is what decides whether a
bundle moved to a CPU without, say, VNNI still computes what was checked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import cpu_isa
from .durable_files import file_digest
from .errors import ArtifactError, ParityError, ProviderUnavailableError
from .manifest import REFERENCE_FILE, TowerManifest, available_variants, read_bundle, read_manifest
from .session import open_session
from .similarity import parity
from .variants import get_variant


@dataclass(frozen=True)
class VerifyResult:
    tower: str
    variant: str
    ok: bool
    detail: str
    # int8 variants: the recorded ISA of the recipe against this CPU ("" for other precisions)
    isa: str = ""


def isa_note(tower_dir: Path, manifest: TowerManifest, here: cpu_isa.CpuIsa | None = None) -> tuple[str, list[str]]:
    """How an int8 variant's recorded ISA compares with this CPU: (one line, capabilities lacking here).

    ``("", [])`` for variants that are not int8.
    """
    if get_variant(manifest.variant).precision != "int8":
        return "", []
    recorded = cpu_isa.recorded_isa(manifest.quantization, f"{tower_dir}/manifest.json")
    if recorded is None:
        return "no ISA recorded (exported before crossmodal recorded it); parity below is this CPU's answer", []
    lacking = (here or cpu_isa.detect()).missing(recorded.requires)
    verdict = (f"this CPU lacks {', '.join(lacking)}" if lacking else
               "this CPU has every required capability" if recorded.requires else "portable recipe")
    return f"{recorded.describe()}; {verdict}", lacking


def verify_variant(tower_dir: Path) -> VerifyResult:
    """Check one ``<bundle>/<tower>/<variant>`` folder."""
    manifest = read_manifest(tower_dir)
    isa, lacking = isa_note(tower_dir, manifest)
    result = _check(tower_dir, manifest)
    if not isa:
        return result
    detail = result.detail
    if lacking and not result.ok:
        detail += (f"; the recipe needs {', '.join(lacking)}, which this CPU lacks: re-export with "
                   "`--int8-target portable` (or the target of this CPU) for machines like this one")
    return replace(result, detail=detail, isa=isa)


def _check(tower_dir: Path, manifest: TowerManifest) -> VerifyResult:
    model = tower_dir / manifest.model_file
    tag = (manifest.tower, manifest.variant)
    if not model.is_file():
        return VerifyResult(*tag, False, f"{model} is missing")
    digest = file_digest(model)[0]
    if digest != manifest.sha256:
        return VerifyResult(*tag, False, f"sha256 mismatch: file {digest[:12]}..., manifest {manifest.sha256[:12]}...")
    if manifest.data_file is not None:
        data = tower_dir / manifest.data_file
        if not data.is_file():
            return VerifyResult(*tag, False, f"{data} is missing (the weights of {manifest.model_file}): copy it "
                                "again with the graph or re-export the bundle")
        digest, size = file_digest(data)
        if digest != manifest.data_sha256:
            return VerifyResult(*tag, False, f"sha256 mismatch of {data} ({size} bytes, manifest "
                                f"{manifest.data_bytes}): file {digest[:12]}..., manifest {manifest.data_sha256[:12]}...; "
                                "copy it again with the graph or re-export the bundle")
    ref_path = tower_dir / REFERENCE_FILE
    if not ref_path.is_file():
        return VerifyResult(*tag, True, "sha256 ok; no reference.npz, parity not re-checked")
    row = get_variant(manifest.variant)
    try:
        # An ONNX graph is re-checked on the CPU provider when its GPU provider is missing; a TensorRT
        # engine only on TensorRT (its CPU fallback would re-check the source graph, not the engine).
        sess = open_session(tower_dir, manifest, row.name, allow_cpu_fallback=row.runs_onnx)
    except ProviderUnavailableError as exc:
        return VerifyResult(*tag, True, f"sha256 ok; parity not re-checked here ({exc})")
    except ArtifactError as exc:
        return VerifyResult(*tag, False, f"sha256 ok; cannot open it here: {exc}")
    with np.load(ref_path, allow_pickle=False) as ref:
        feeds = {k[len("input:"):]: ref[k] for k in ref.files if k.startswith("input:")}
        expected = ref["reference"]
    try:
        p = parity(sess.run([manifest.outputs[0].name], feeds)[0], expected)
    except ParityError as exc:
        return VerifyResult(*tag, False, f"sha256 ok; {exc}")
    thresholds = dict(manifest.parity.get("thresholds") or {})
    min_cos_req = float(thresholds.get("min_cosine", 0.99))
    max_abs_req = thresholds.get("max_abs")
    ok = p.min_cosine >= min_cos_req and (max_abs_req is None or p.max_abs <= float(max_abs_req))
    detail = f"sha256 ok; min cosine {p.min_cosine:.6f} (needs >= {min_cos_req}), max abs {p.max_abs:.2e}"
    if max_abs_req is not None:
        detail += f" (needs <= {max_abs_req})"
    return VerifyResult(*tag, ok, detail)


def verify_bundle(bundle_dir: Path, variants: list[str] | None = None) -> list[VerifyResult]:
    """Verify every (or the listed) variant of every tower of a bundle."""
    bundle_dir = Path(bundle_dir)
    bundle = read_bundle(bundle_dir)
    results = []
    for folder in bundle.towers.values():
        found = available_variants(bundle_dir, folder)
        for variant in variants or found:
            if variant not in found:
                raise ArtifactError(f"{bundle_dir}/{folder} has no variant {variant!r} (has: {found})")
            results.append(verify_variant(bundle_dir / folder / variant))
    return results
