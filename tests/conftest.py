"""Session fixtures: tiny random models of the real architectures and bundles exported from them.

Nothing here touches the network; everything is built once per test session
in pytest's temporary directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT.parent / "shared" / "golden"
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """../shared/golden (next to the repository checkout)."""
    if not GOLDEN.is_dir():
        pytest.skip(f"golden data not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers-format tiny CLIP with the real OpenAI BPE vocabulary."""
    from helpers.clip_models import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "hf")


@pytest.fixture(scope="session")
def tiny_st_clip_dir(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny CLIP saved as a sentence-transformers clip-ViT-* directory."""
    from helpers.clip_models import write_tiny_st_clip

    return write_tiny_st_clip(tiny_clip_dir, tmp_path_factory.mktemp("tiny-st-clip") / "st")


@pytest.fixture(scope="session")
def tiny_clip_bundle(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny CLIP exported to cpu-fp32 and cpu-int8 (the default int8 recipe search)."""
    from crossmodal.export.clip import export_clip

    out = tmp_path_factory.mktemp("bundles") / "tiny-clip"
    return export_clip(str(tiny_clip_dir), out, "cpu-fp32,cpu-int8", calib_dir=ROOT / "examples" / "images")
