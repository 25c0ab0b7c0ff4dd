"""`crossmodal verify`: re-check every graph of a bundle against what the exporter recorded.

Two checks per tower variant: the model file's sha256 equals the manifest's,
and the graph, run here, reproduces the PyTorch reference output stored at
export time (``reference.npz``) within the manifest's parity thresholds. No
torch needed: the reference was computed by the exporter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .durable_files import file_digest
from .errors import ArtifactError, ProviderUnavailableError
from .manifest import REFERENCE_FILE, available_variants, read_bundle, read_manifest
from .session import make_session


@dataclass(frozen=True)
class VerifyResult:
    tower: str
    variant: str
    ok: bool
    detail: str


def verify_variant(tower_dir: Path) -> VerifyResult:
    """Check one ``<bundle>/<tower>/<variant>`` folder."""
    manifest = read_manifest(tower_dir)
    model = tower_dir / manifest.model_file
    tag = (manifest.tower, manifest.variant)
    if not model.is_file():
        return VerifyResult(*tag, False, f"{model} is missing")
    digest = file_digest(model)[0]
    if digest != manifest.sha256:
        return VerifyResult(*tag, False, f"sha256 mismatch: file {digest[:12]}..., manifest {manifest.sha256[:12]}...")
    ref_path = tower_dir / REFERENCE_FILE
    if not ref_path.is_file():
        return VerifyResult(*tag, True, "sha256 ok; no reference.npz, parity not re-checked")
    try:
        if manifest.variant == "gpu-trt-fp16":
            from .gpu import TensorRTSession

            sess = TensorRTSession(model)
        else:
            # gpu-fp16 graphs run on the CPU provider too: parity is re-checked either way.
            sess = make_session(model, manifest.variant, allow_cpu_fallback=manifest.variant == "gpu-fp16")
    except ProviderUnavailableError as exc:
        return VerifyResult(*tag, True, f"sha256 ok; parity not re-checked here ({exc})")
    with np.load(ref_path, allow_pickle=False) as ref:
        feeds = {k[len("input:"):]: ref[k] for k in ref.files if k.startswith("input:")}
        expected = ref["reference"]
    got = sess.run([manifest.outputs[0].name], feeds)[0].astype(np.float64)
    exp = expected.astype(np.float64)
    if got.shape != exp.shape:
        return VerifyResult(*tag, False, f"output shape {got.shape} != reference {exp.shape}")
    if exp.ndim == 1:
        got, exp = got[None], exp[None]
    cos = np.sum(got * exp, 1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(exp, axis=1), 1e-300)
    max_abs = float(np.abs(got - exp).max())
    thresholds = dict(manifest.parity.get("thresholds") or {})
    min_cos_req = float(thresholds.get("min_cosine", 0.99))
    max_abs_req = thresholds.get("max_abs")
    ok = float(cos.min()) >= min_cos_req and (max_abs_req is None or max_abs <= float(max_abs_req))
    detail = f"sha256 ok; min cosine {cos.min():.6f} (needs >= {min_cos_req}), max abs {max_abs:.2e}"
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
