"""The golden reference data in tests/golden/ (torch-free: runtime-lane tests read it too).

The data lives in the repository, so a missing file is a broken checkout and
fails the test that asked for it; nothing here reads outside the repository.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

GOLDEN_ROOT = Path(__file__).resolve().parent.parent / "golden"
GOLDEN = GOLDEN_ROOT / "albef"
TINY_CKPT = GOLDEN / "tiny_checkpoint.pth"
TINY_CONFIG = GOLDEN / "tiny_config.json"

# "| `file` | bytes | `sha256` |" rows of the provenance tables in the golden READMEs.
_TABLE_ROW = re.compile(r"^\| `([^`]+)` \| ([\d,]+) \| `([0-9a-f]{64})` \|$", re.MULTILINE)


def golden_file(relative: str) -> Path:
    """``tests/golden/albef/<relative>``; fails the test, naming the file, when it is missing."""
    path = GOLDEN / relative
    if not path.is_file():
        pytest.fail(f"golden file {path} is missing: it is part of the repository (git checkout -- tests/golden)",
                    pytrace=False)
    return path


def require_golden() -> Path:
    """The ALBEF golden folder; fails the test when its checkpoint is missing."""
    golden_file(TINY_CKPT.name)
    return GOLDEN


def golden_arrays(name: str) -> dict[str, NDArray[Any]]:
    """All arrays of ``inputs.npz`` / ``expected.npz`` / ``itm/expected_itm.npz``."""
    with np.load(golden_file(name), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def documented_checksums(folder: Path = GOLDEN) -> dict[Path, tuple[int, str]]:
    """{file: (bytes, sha256)} as the provenance tables of the READMEs under ``folder`` record them."""
    table: dict[Path, tuple[int, str]] = {}
    for readme in sorted(folder.rglob("README.md")):
        for name, size, digest in _TABLE_ROW.findall(readme.read_text(encoding="utf-8")):
            table[readme.parent / name] = (int(size.replace(",", "")), digest)
    return table


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
