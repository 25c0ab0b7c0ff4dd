"""crossmodal.index and onnxruntime load in either order (the raw usearch-then-onnxruntime order exits 139)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# usearch is imported lazily: building a tiny index makes crossmodal really load its compiled module.
USE_INDEX = ("import tempfile, numpy as np; from crossmodal.index import Index; "
             "d = tempfile.mkdtemp(); idx = Index.create(d + '/i', bundle='b', dim=4); "
             "idx.add(np.eye(4, dtype=np.float32)); idx.save(); print(len(idx)); idx.close()")
ORDERS = {
    "index-then-onnxruntime": f"{USE_INDEX}; import onnxruntime; onnxruntime.get_available_providers()",
    "onnxruntime-then-index": f"import onnxruntime; onnxruntime.get_available_providers(); {USE_INDEX}",
    "import_usearch-then-onnxruntime": ("from crossmodal.index.native_imports import import_usearch; m = import_usearch(); "
                                        "import onnxruntime; print(4 if m.__name__ == 'usearch.index' else -1)"),
}


@pytest.mark.parametrize("code", list(ORDERS.values()), ids=list(ORDERS))
def test_import_order_does_not_crash(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode} (139 = segfault): {proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "4"
