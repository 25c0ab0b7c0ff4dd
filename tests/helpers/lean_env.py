"""Exit non-zero when the export side is importable: the runtime lane must run without it.

Run by `make test-runtime` on .venv-runtime, before the tests, so a dependency
that starts pulling torch (or transformers, onnx...) into the runtime install
fails the lane instead of quietly making it a copy of the full suite.
"""

from __future__ import annotations

import importlib.util
import sys

# The packages of the `export` extra plus the test references that import torch.
EXPORT_SIDE = ("torch", "transformers", "sentence_transformers", "onnx", "onnxscript", "open_clip", "multilingual_clip")


def main() -> int:
    present = [name for name in EXPORT_SIDE if importlib.util.find_spec(name) is not None]
    if present:
        print(f"{sys.prefix} is not a lean runtime environment: {', '.join(present)} installed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
