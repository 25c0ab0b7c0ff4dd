"""Loading a bundle directory into an :class:`~crossmodal.encoder.Encoder`."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

from . import cpu_isa
from .encoder import Encoder
from .errors import ArtifactError, IncompatibleTowersError, InputError
from .inputs import boolean
from .manifest import BundleInfo, TowerManifest, available_variants, read_bundle, read_manifest
from .session import open_session
from .towers import ImageTower, TextTower
from .variants import DEFAULT_VARIANT, TENSORRT, get_variant


def _check_space(bundle_name: str, space: str, dim: int, manifest: TowerManifest, where: Path) -> None:
    if manifest.dim != dim or manifest.space != space:
        raise IncompatibleTowersError(
            f"{where}: tower embeds into space {manifest.space!r} (dim {manifest.dim}) but bundle "
            f"{bundle_name!r} declares {space!r} (dim {dim}); these towers cannot be compared. "
            "Re-export the bundle so both towers come from one model pairing."
        )


log = logging.getLogger("crossmodal.loader")
_isa_warned: set[str] = set()
_isa_lock = threading.Lock()


def warn_if_isa_missing(root: Path, name: str, variant: str, manifest: TowerManifest) -> bool:
    """Log one warning per process and bundle when this CPU lacks a capability the tower's int8 recipe needs.

    The recipe was chosen by timing and parity on the export machine (the
    manifest's ``quantization["isa"]``); on a CPU without, say, VNNI the same
    graph runs other kernels whose int8 sums can saturate. Loading goes on: the
    warning names ``crossmodal verify``, which re-checks parity here. Manifests
    without an ``isa`` record load silently. Returns True when it warned.
    """
    recorded = cpu_isa.recorded_isa(manifest.quantization, f"{root}/{name}/{variant}/manifest.json")
    if recorded is None or not recorded.requires:
        return False
    here = cpu_isa.detect()
    lacking = here.missing(recorded.requires)
    if not lacking:
        return False
    key = str(root.resolve())
    with _isa_lock:
        if key in _isa_warned:
            return False
        _isa_warned.add(key)
    log.warning(
        "bundle %s: the %s tower's %s recipe was validated on %s with %s; this CPU (%s) lacks %s, so its int8 "
        "results may differ from the ones checked at export. Run `crossmodal verify %s` to re-check parity here.",
        root, name, variant, recorded.measured_cpu, ", ".join(recorded.requires), here.model, ", ".join(lacking), root)
    return True


def load(
    path: str | os.PathLike[str],
    variant: str | None = None,
    modality: str | None = None,
    *,
    threads: int | None = None,
    allow_cpu_fallback: bool = False,
    providers: Sequence[str] | None = None,
    fast_decode: bool = False,
    spin: bool = True,
) -> Encoder:
    """Load a bundle written by ``crossmodal export``.

    Args:
        path: the bundle directory (holding ``bundle.json``).
        variant: one of :data:`crossmodal.variants.VARIANTS` (default ``cpu-fp32``).
        modality: ``None`` for every tower in the bundle, or ``"image"`` / ``"text"`` for one.
        threads: onnxruntime intra-op threads per tower (default: one per physical core).
        allow_cpu_fallback: run a GPU variant on the CPU when CUDA is missing instead of raising.
        providers: explicit onnxruntime providers, overriding the variant's choice.
        fast_decode: decode JPEGs at reduced size (libjpeg DCT scaling) before the exact resize.
            Opt-in: measured 1.43x more images/s end to end on 1600x1200 photos at min cosine
            0.99986 to the exact decode (docs/bench/results.md, scenario b).
        spin: let idle onnxruntime threads spin-wait for work (fastest when the process only
            runs the model); ``False`` lets them sleep, for processes whose other threads need
            the cores (``crossmodal serve`` loads with ``False``).
    """
    boolean("spin", spin)
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"bundle directory {root} does not exist; create one with `crossmodal export`")
    bundle = read_bundle(root)
    if modality not in (None, "image", "text"):
        raise InputError(f"modality must be None, 'image' or 'text', got {modality!r}")
    wanted = [m for m in ("image", "text") if m in bundle.towers and modality in (None, m)]
    if not wanted:
        raise ArtifactError(f"bundle {root} has no {modality} tower (it has: {sorted(bundle.towers)})")
    variant = variant or DEFAULT_VARIANT
    towers: dict[str, ImageTower | TextTower] = {}
    for name in wanted:
        tower_dir, manifest, session = open_tower(root, bundle, name, variant, threads=threads,
                                                  allow_cpu_fallback=allow_cpu_fallback, providers=providers,
                                                  spin=spin)
        if name == "image":
            towers[name] = ImageTower(tower_dir, manifest, session, fast_decode=fast_decode)
        else:
            towers[name] = TextTower(tower_dir, manifest, session)
    return Encoder(bundle, variant, towers.get("image"), towers.get("text"))  # type: ignore[arg-type]


def open_tower(
    root: Path,
    bundle: BundleInfo,
    name: str,
    variant: str,
    *,
    threads: int | None = None,
    allow_cpu_fallback: bool = False,
    providers: Sequence[str] | None = None,
    spin: bool = True,
) -> tuple[Path, TowerManifest, Any]:
    """Validate one tower of a bundle (folder, manifest, space) and open its session.

    Returns ``(tower_dir, manifest, session)``. Shared by :func:`load` and
    :class:`crossmodal.rerank.Reranker` (which opens the ``rerank`` tower too).
    """
    row = get_variant(variant)  # before the name becomes part of a path
    folder = bundle.towers[name]
    tower_dir = root / folder / variant
    if not tower_dir.is_dir():
        have = available_variants(root, folder)
        if row.engine == TENSORRT:
            from .gpu import rebuild_command

            make = f"build it on the target machine with `{rebuild_command(root, name)}`"
        else:
            make = f"export it with `crossmodal export ... --targets {variant}`"
        raise ArtifactError(
            f"bundle {root} has no {variant!r} variant of its {name} tower (it has: {have or 'none'}); "
            f"pass variant= one of those or {make}"
        )
    manifest = read_manifest(tower_dir)
    if manifest.tower != name:
        raise ArtifactError(f"{tower_dir}/manifest.json describes a {manifest.tower} tower, expected {name}")
    _check_space(bundle.name, bundle.space, bundle.dim, manifest, tower_dir)
    model = tower_dir / manifest.model_file
    if not model.is_file():
        raise ArtifactError(f"{model} is missing; the bundle is incomplete: re-export it")
    warn_if_isa_missing(root, name, variant, manifest)
    session = open_session(tower_dir, manifest, variant, threads=threads, allow_cpu_fallback=allow_cpu_fallback,
                           providers=providers, spin=spin)
    return tower_dir, manifest, session
