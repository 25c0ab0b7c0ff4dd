"""Commands that run in other packages: ``export``, ``bench``, ``trt`` and ``serve``.

Each is imported only when its command runs, so the lean runtime never imports
torch (export, bench) or the HTTP stack (serve). The sub-package parses its own
arguments (``crossmodal export --help`` is answered by it); a missing optional
dependency becomes one line naming the extra to install.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Handover:
    module: str  # has main(argv) -> int
    extra: str  # pip extra that brings its dependencies
    help: str


HANDOVERS: dict[str, Handover] = {
    "export": Handover("crossmodal.export.cli", "export",
                       "export a checkpoint to a bundle (clip, mbert, albef, custom), or a bundle for Triton / TensorRT"),
    "bench": Handover("crossmodal.bench.cli", "export,bench", "benchmarks against PyTorch"),
    "trt": Handover("crossmodal.export.cli.trt_alias", "gpu",
                    "build TensorRT engines on a GPU machine (same as `crossmodal export tensorrt`)"),
    "serve": Handover("crossmodal.serve.cli", "serve", "run the HTTP search service over a bundle and an index"),
}


def run(command: str, argv: Sequence[str]) -> int:
    """Import ``command``'s module and call its ``main(argv)``."""
    h = HANDOVERS[command]
    try:
        mod = importlib.import_module(h.module)
    except ImportError as exc:
        missing = exc.name or str(exc)
        if h.module == missing or h.module.startswith(f"{missing}."):
            raise SystemExit(f"crossmodal {command}: this installation has no `{h.module}` module; "
                             "reinstall crossmodal from a release that includes it") from exc
        raise SystemExit(_needs_extra(command, h, missing)) from exc
    try:
        return int(mod.main(list(argv)) or 0)
    except ImportError as exc:
        # The sub-packages answer --help without their heavy dependencies and import them only
        # when a command runs: a missing third-party module then means a missing extra.
        if not exc.name or exc.name.split(".")[0] == "crossmodal":
            raise
        print(_needs_extra(command, h, exc.name), file=sys.stderr)
        return 2


def _needs_extra(command: str, h: Handover, missing: str) -> str:
    return (f"crossmodal {command}: this command needs crossmodal[{h.extra}] ({missing} is missing): "
            f"pip install 'crossmodal[{h.extra}]'")


def register(sub: Any) -> None:
    # Listed for `crossmodal --help`; main() hands these over before argparse sees their arguments.
    for name, h in HANDOVERS.items():
        sub.add_parser(name, help=f"{h.help} (needs crossmodal[{h.extra}])", add_help=False)
