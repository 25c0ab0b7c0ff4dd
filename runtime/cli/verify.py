"""``crossmodal verify BUNDLE``: re-check every graph's sha256 and its parity with the stored reference.

Prints this CPU's model and capabilities first and, under each int8 variant,
the ISA its recipe was validated on: int8 parity is a property of the CPU too.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import add_variant


def run(args: argparse.Namespace) -> int:
    from ..cpu_isa import detect
    from ..verify import verify_bundle

    results = verify_bundle(args.bundle, [args.variant] if args.variant else None)
    # int8 parity depends on the CPU's kernels: say which CPU answered.
    print(f"CPU here: {detect().describe()}")
    for r in results:
        print(f"{'OK  ' if r.ok else 'FAIL'} {r.tower}/{r.variant}: {r.detail}")
        if r.isa:
            print(f"     isa: {r.isa}")
    bad = [r for r in results if not r.ok]
    print(f"{len(results) - len(bad)} ok, {len(bad)} failed")
    return 1 if bad else 0


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="re-check sha256 and parity of every graph in a bundle",
                       description="Re-check each graph's sha256 and its outputs against the reference stored at "
                                   "export, on this CPU (its model and capabilities are printed, and for int8 "
                                   "variants the ISA the recipe was validated on). Exit code 1 when any check fails.")
    p.add_argument("bundle", type=Path, help="bundle directory written by `crossmodal export`")
    add_variant(p, default=None, help="check only this variant (default: every variant in the bundle)")
    p.set_defaults(func=run)
