"""The ``crossmodal`` command line: one module per command group.

======================  ===========================================================
``embed``               :mod:`crossmodal.cli.embed`: embeddings as JSON
``verify``              :mod:`crossmodal.cli.verify`: sha256 + parity of a bundle
``index build|add``     :mod:`crossmodal.cli.index`: a folder of images -> an index
``search``              :mod:`crossmodal.cli.search`: query an index (the Retriever)
``eval``                :mod:`crossmodal.cli.eval`: Recall@K on Flickr30k / COCO
``export|bench|trt|serve``  :mod:`crossmodal.cli.handover`: run in their own packages
======================  ===========================================================

Errors derived from :class:`~crossmodal.errors.CrossmodalError` are printed as
``crossmodal <command>: error: <message>`` with exit code 2, like argparse's own.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .. import __version__
from ..errors import CrossmodalError
from . import embed, eval, handover, index, search, verify

COMMANDS = (embed, verify, index, search, eval, handover)


def build_parser() -> argparse.ArgumentParser:
    """The ``crossmodal`` parser with every command's sub-parser."""
    p = argparse.ArgumentParser(prog="crossmodal",
                                description="Image-text retrieval encoders: export, embed, index, search, serve, "
                                            "benchmark.")
    p.add_argument("--version", action="version", version=f"crossmodal {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``crossmodal`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in handover.HANDOVERS:
        try:
            return handover.run(argv[0], argv[1:])
        except CrossmodalError as exc:
            print(f"crossmodal {argv[0]}: error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CrossmodalError as exc:
        print(f"crossmodal {args.command}: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["main", "build_parser", "COMMANDS"]
