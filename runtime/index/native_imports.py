"""Import order for the native extensions that cannot be loaded in any order.

With the usearch 2.26 and onnxruntime 1.32 wheels, importing onnxruntime *after*
usearch's compiled module kills the interpreter: on this project's Linux x86-64 venv
``python -c "import usearch.index; import onnxruntime"`` exits with status 139 (SIGSEGV),
while ``import onnxruntime; import usearch.index`` exits 0 (measured 2026-11-23; usearch
links its own libstdc++ statically and the second loader trips over it). So every import
of usearch in crossmodal goes through :func:`import_usearch`, which loads onnxruntime
first when it is installed; tests/test_native_imports.py guards both orders.
"""

from __future__ import annotations

import sys
from types import ModuleType


def import_usearch() -> ModuleType:
    """Return ``usearch.index``, having imported onnxruntime first when it is installed."""
    if "usearch.compiled" not in sys.modules and "onnxruntime" not in sys.modules:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass  # no onnxruntime, nothing to collide with
    import usearch.index

    return usearch.index
