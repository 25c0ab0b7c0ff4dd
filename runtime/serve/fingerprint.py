"""A stable identity of the model a service runs: bundle.json plus the chosen variant's manifests.

Each tower manifest records its graph file's sha256, so the fingerprint changes when any
graph, tokenizer setting, preprocessing or the pairing changes, and stays the same
across restarts and machines for the same files. Clients and caches compare it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

BUNDLE_FILE = "bundle.json"
MANIFEST_FILE = "manifest.json"


def bundle_fingerprint(tower_dirs: Iterable[Path]) -> str:
    """``sha256:<hex>`` over ``bundle.json`` and each tower's ``manifest.json`` (sorted by tower folder).

    ``tower_dirs``: the ``<bundle>/<tower>/<variant>`` folders the service loaded.
    """
    dirs = sorted({Path(d) for d in tower_dirs}, key=lambda d: d.parent.name)
    if not dirs:
        raise ValueError("a fingerprint needs at least one tower folder")
    h = hashlib.sha256()
    h.update((dirs[0].parent.parent / BUNDLE_FILE).read_bytes())
    for d in dirs:
        h.update(b"\0" + d.parent.name.encode() + b"/" + d.name.encode() + b"\0")
        h.update(hashlib.sha256((d / MANIFEST_FILE).read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def encoder_fingerprint(encoder: Any) -> str:
    """:func:`bundle_fingerprint` of an :class:`~crossmodal.encoder.Encoder`'s loaded towers."""
    return bundle_fingerprint(t.path for t in (encoder.image, encoder.text) if t is not None)


__all__ = ["bundle_fingerprint", "encoder_fingerprint"]
