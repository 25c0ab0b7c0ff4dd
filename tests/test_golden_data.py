"""The ALBEF golden data in tests/golden/albef is complete and byte-identical to what its READMEs document."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.golden import GOLDEN, documented_checksums, sha256

TABLE = documented_checksums()


def test_every_data_file_is_documented() -> None:
    data = {p for p in GOLDEN.rglob("*") if p.is_file() and p.name != "README.md"}
    assert {p.relative_to(GOLDEN) for p in TABLE} >= {
        Path("tiny_checkpoint.pth"), Path("tiny_config.json"), Path("inputs.npz"), Path("expected.npz"),
        Path("full_size_keys.json"), Path("itm/expected_itm.npz"),
    }
    assert data == set(TABLE), "files in tests/golden/albef without a row in its README's table, or rows without a file"


@pytest.mark.parametrize("path", sorted(TABLE), ids=lambda p: str(p.relative_to(GOLDEN)))
def test_file_matches_its_documented_checksum(path: Path) -> None:
    size, digest = TABLE[path]
    assert path.is_file(), f"{path} is missing from the checkout"
    assert path.stat().st_size == size
    assert sha256(path) == digest
