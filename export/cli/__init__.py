"""``crossmodal export COMMAND ...``: one module per command, imported only to parse and run it.

Family commands (``clip``, ``mbert``, ``albef``, ``custom``) turn a checkpoint
into a bundle; deployment commands (``triton``, ``tensorrt``) turn a bundle into what
a server or a GPU runs. Parsing, every ``--help`` included, stays torch-free:
a command module defines its options and imports its exporter only in ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path
from typing import Sequence

# The one registry of export commands: name -> module with add_arguments(parser) and run(args).
COMMANDS: dict[str, str] = {
    "clip": "crossmodal.export.cli.clip",
    "mbert": "crossmodal.export.cli.mbert",
    "albef": "crossmodal.export.cli.albef",
    "custom": "crossmodal.export.cli.custom",
    "triton": "crossmodal.export.cli.triton",
    "tensorrt": "crossmodal.export.cli.tensorrt",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crossmodal export",
        description="Export checkpoints to crossmodal bundles, and bundles to Triton repositories and TensorRT engines.")
    p.add_argument("-v", "--verbose", action="store_true", help="log every measurement the export makes")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        doc = (mod.__doc__ or "").strip()
        sp = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
        sp.set_defaults(run=mod.run)
    return p


def main(argv: Sequence[str]) -> int:
    """Entry point of ``crossmodal export``; CrossmodalError is reported by the caller."""
    args = build_parser().parse_args(list(argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    result = args.run(args)
    if isinstance(result, Path):
        print(f"wrote {result}")
        return 0
    return int(result or 0)


__all__ = ["COMMANDS", "build_parser", "main"]
