"""`crossmodal export FAMILY ...`: one subcommand per registered family."""

from __future__ import annotations

import argparse
import importlib
import logging
from typing import Sequence

# The one registry of model families: name -> module with add_arguments(parser) and run(args).
FAMILIES = {
    "clip": "crossmodal.export.clip",
    "mbert": "crossmodal.export.mbert",
    "albef": "crossmodal.export.albef",
}
# Other export-side commands that take a bundle rather than a checkpoint.
TOOLS = {
    "triton": "crossmodal.export.triton",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossmodal export", description="Export checkpoints to crossmodal bundles.")
    p.add_argument("-v", "--verbose", action="store_true", help="log every measurement")
    sub = p.add_subparsers(dest="family", required=True)
    for name, module in {**FAMILIES, **TOOLS}.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # family not built yet in this checkout
            raise
        sp = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
        mod.add_arguments(sp)
        sp.set_defaults(run=mod.run)
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    out = args.run(args)
    if out is not None:
        print(f"wrote {out}")
    return 0
