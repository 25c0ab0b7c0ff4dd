"""Export the tiny test bundles into a folder, for the torch-free lane: build_test_bundles.py OUT.

Run by `make test-runtime` with the full environment (.venv); the lean one then
loads the bundles through CROSSMODAL_TEST_BUNDLES=OUT. They are exactly what
the session fixtures export in the full lane (same helpers, same seeds).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.bundles import TINY_ALBEF, TINY_CLIP, export_tiny_albef, export_tiny_clip  # noqa: E402
from helpers.clip_models import write_tiny_clip  # noqa: E402


def main(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        export_tiny_clip(write_tiny_clip(Path(tmp) / "hf"), out / TINY_CLIP)
    export_tiny_albef(out / TINY_ALBEF)
    print(f"wrote {out / TINY_CLIP} and {out / TINY_ALBEF}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build_test_bundles.py OUT")
    main(Path(sys.argv[1]))
