"""Scenario (f): installed size of the lean runtime vs torch + transformers.

Sizes are the sum of the files each installed distribution lists in its
RECORD (what ``pip install`` put on disk), over the transitive closure of its
requirements (extras ignored, environment markers evaluated). Distributions
shared by both stacks (numpy, for instance) count in both.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

# What a user installs for each path.
LEAN_ROOTS = ("crossmodal", "onnxruntime")  # pip install 'crossmodal[cpu]' (the runtime extra)
TORCH_ROOTS = ("torch", "transformers")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: metadata.Distribution) -> list[str]:
    out = []
    for req in dist.requires or []:
        try:
            from packaging.requirements import Requirement

            r = Requirement(req)
            if r.marker is not None and not r.marker.evaluate({"extra": ""}):
                continue
            out.append(r.name)
        except Exception:  # unparseable metadata: take the leading name, skip extras
            if "extra ==" in req:
                continue
            out.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    return out


def closure(roots: Iterable[str]) -> dict[str, metadata.Distribution]:
    """Installed distributions reachable from ``roots`` (missing ones are skipped)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist
        todo.extend(_requirements(dist))
    return seen


def dist_bytes(dist: metadata.Distribution) -> int:
    """Bytes of the files a distribution installed (editable installs: its source tree's Python files)."""
    total = 0
    for f in dist.files or []:
        try:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def _editable_source_bytes(name: str) -> int:
    # An editable install lists only a .pth/finder; count the package's own files.
    try:
        import crossmodal

        root = Path(crossmodal.__file__).resolve().parent.parent
    except Exception:
        return 0
    return sum(p.stat().st_size for d in ("runtime",) for p in (root / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def stack_size(roots: Iterable[str]) -> dict[str, Any]:
    dists = closure(roots)
    per = {}
    for name, d in dists.items():
        b = dist_bytes(d)
        if name == "crossmodal" and b < 100_000:
            b = _editable_source_bytes(name)
        per[name] = b
    return {"roots": list(roots), "total_mb": round(sum(per.values()) / 2**20, 1),
            "distributions": {k: round(v / 2**20, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1])}}


def installed_sizes() -> dict[str, Any]:
    """Lean runtime vs torch + transformers, in MB, with the ratio."""
    lean = stack_size(LEAN_ROOTS)
    torch = stack_size(TORCH_ROOTS)
    ratio = torch["total_mb"] / lean["total_mb"] if lean["total_mb"] else None
    return {"lean": lean, "torch_transformers": torch, "ratio": ratio}


__all__ = ["installed_sizes", "stack_size", "closure"]
