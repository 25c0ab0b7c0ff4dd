"""``crossmodal trt ...``: the former name of ``crossmodal export tensorrt ...``, kept as an alias for now."""

from __future__ import annotations

from typing import Sequence

_VERBOSE = ("-v", "--verbose")


def main(argv: Sequence[str]) -> int:
    """Run ``crossmodal export [-v] tensorrt ARGS``; ``crossmodal trt`` took ``-v`` before its action."""
    from . import main as export_main

    args = list(argv)
    flags = []
    while args and args[0] in _VERBOSE:
        flags.append(args.pop(0))
    return export_main([*flags, "tensorrt", *args])
