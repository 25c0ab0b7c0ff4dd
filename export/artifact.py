"""The one shared artifact writer: tower folders, manifests and bundle.json.

Every family exporter hands its graphs to these functions, so the on-disk
contract (``crossmodal.manifest``) is written in exactly one place. Writes are
atomic: a tower variant is assembled in a hidden sibling folder and renamed into
place, and JSON files go through a temporary file + fsync + rename, so an
interrupted export never leaves a half-written variant that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from crossmodal.durable_files import atomic_write_bytes, file_digest, fsync_dir, fsync_file
from crossmodal.errors import ArtifactError
from crossmodal.manifest import (
    BUNDLE_FILE,
    DATA_FIELDS,
    MANIFEST_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    TOKENIZER_FILE,
    BundleInfo,
    TowerManifest,
    read_manifest,
)

from . import onnx_files


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    return file_digest(path)[0]


def exporter_versions() -> dict[str, str]:
    """Versions of the packages that shaped an artifact, recorded in every manifest."""
    out: dict[str, str] = {}
    for pkg in ("crossmodal", "torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON so that readers see either the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def write_tower(
    bundle_dir: Path,
    tower_folder: str,
    variant: str,
    model_path: Path,
    manifest_fields: Mapping[str, Any],
    tokenizer_json: str | None = None,
    reference_case: Mapping[str, Any] | None = None,
) -> TowerManifest:
    """Install one tower variant: ``<bundle>/<tower_folder>/<variant>/{model.onnx, manifest.json[, tokenizer.json]}``.

    ``manifest_fields`` holds every manifest field except ``sha256`` and
    ``model_file``, which are computed here. A graph with external data
    (``onnx_files``: graphs past 2 GB) is installed as ``model.onnx`` +
    ``model.onnx.data``, and the data file's name, sha256 and size go into the
    manifest too; both files are staged and renamed into place together.
    The manifest is validated by the same dataclass the runtime reads it with
    before anything is installed.
    ``reference_case`` (input arrays + the PyTorch reference output, as numpy
    arrays) is stored as ``reference.npz`` so `crossmodal verify` can re-check
    parity later without torch.
    """
    final = Path(bundle_dir) / tower_folder / variant
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{variant}.", dir=final.parent))
    try:
        data = onnx_files.copy(model_path, staging / MODEL_FILE)
        fields = {k: v for k, v in manifest_fields.items() if k not in DATA_FIELDS}
        fields["model_file"] = MODEL_FILE
        fields["sha256"] = sha256_file(staging / MODEL_FILE)
        if data is not None:
            fields["data_file"] = data.name
            fields["data_sha256"], fields["data_bytes"] = file_digest(data)
        fields.setdefault("exporter", exporter_versions())
        manifest = TowerManifest.from_dict(fields, where=f"{tower_folder}/{variant} (being written)")
        if tokenizer_json is not None:
            (staging / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
        if reference_case is not None:
            import numpy as np

            np.savez_compressed(staging / REFERENCE_FILE, **reference_case)
        write_json_atomic(staging / MANIFEST_FILE, manifest.to_dict())
        for p in staging.iterdir():
            fsync_file(p)
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{variant}.old.", dir=final.parent))
            os.replace(final, trash / variant)
            os.replace(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
        fsync_dir(final.parent)
        return manifest
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def copy_tower(src_bundle: Path, src_folder: str, dst_bundle: Path, dst_folder: str, variant: str) -> None:
    """Copy an already exported tower variant (e.g. a CLIP image tower into a multilingual bundle).

    Every file of the folder is copied, the graph's external data file with
    it; the files the manifest names must all be there.
    """
    src = Path(src_bundle) / src_folder / variant
    dst = Path(dst_bundle) / dst_folder / variant
    manifest = read_manifest(src)
    for name in (manifest.model_file, manifest.data_file):
        if name is not None and not (src / name).is_file():
            raise ArtifactError(f"{src / name} is missing, so {src} cannot be copied into {dst_bundle}: "
                                "export that bundle again")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{variant}.", dir=dst.parent))
    try:
        for p in src.iterdir():
            shutil.copyfile(p, staging / p.name)
            fsync_file(staging / p.name)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(staging, dst)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_bundle(bundle_dir: Path, info: BundleInfo) -> None:
    """Write ``bundle.json`` (validated) atomically."""
    write_json_atomic(Path(bundle_dir) / BUNDLE_FILE, info.to_dict())
