"""One tiny CLIP bundle with every exportable variant, shared by the GPU-artifact test files.

Exporting costs ~15 s on 2 cores, so the bundle is made once per pytest
process (cached here by source directory) and must be treated as read-only:
tests that install engines or edit files work on a copy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
_CACHE: dict[Path, Path] = {}


def tiny_gpu_bundle(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny CLIP exported to cpu-fp32, cpu-int8 and gpu-fp16 (bundle name with a space, on purpose)."""
    if tiny_clip_dir not in _CACHE:
        from crossmodal.export.clip import export_clip

        out = tmp_path_factory.mktemp("gpu-bundle") / "tiny clip"
        _CACHE[tiny_clip_dir] = export_clip(str(tiny_clip_dir), out, "cpu-fp32,cpu-int8,gpu-fp16",
                                            calib_dir=ROOT / "examples" / "images", optimize=False)
    return _CACHE[tiny_clip_dir]
