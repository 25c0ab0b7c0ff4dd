"""The options every family command shares (``--out --targets --name --space --calib --int8-recipe --int8-target --no-optimize``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossmodal.variants import EXPORTABLE

from ..options import DEFAULT_TARGETS, INT8_RECIPES, INT8_TARGETS, ExportOptions, parse_targets


def _targets(text: str) -> tuple[str, ...]:
    try:
        return tuple(parse_targets(text))
    except ValueError as exc:  # a usage error, reported by argparse with the command's usage line
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_bundle_arguments(p: argparse.ArgumentParser, *, space_help: str, calib_help: str) -> None:
    """Add the shared bundle options to a family command; its own options go before."""
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write (created if missing)")
    p.add_argument("--targets", type=_targets, default=",".join(DEFAULT_TARGETS),
                   help=f"comma list of variants to write, of {', '.join(EXPORTABLE)} (default: %(default)s)")
    p.add_argument("--name", help="bundle name (default: the --out folder name)")
    p.add_argument("--space", help=space_help)
    p.add_argument("--calib", type=Path, help=calib_help)
    p.add_argument("--int8-recipe", default="auto", choices=INT8_RECIPES,
                   help="int8 quantisation recipe; auto measures the candidates and keeps the fastest that "
                        "meets the fidelity bar; a named recipe skips the search; *-fused quantises the fused fp32 "
                        "graph (a tower without one gets the plain recipe) (default: %(default)s)")
    p.add_argument("--int8-target", choices=INT8_TARGETS,
                   help="CPUs the int8 graph must stay right on: avx2 (x86 without VNNI: 7-bit weights or fp32 "
                        "arithmetic, no 16-bit saturation), avx512-vnni, arm64, or portable (any of them); "
                        "recorded in the manifest (default: this machine's)")
    p.add_argument("--no-optimize", action="store_true",
                   help="skip onnxruntime's transformer fusions (they are kept only when parity holds)")


def bundle_options(args: argparse.Namespace, *, calib_default: Path | None = None) -> ExportOptions:
    """The :class:`ExportOptions` of parsed shared options; ``calib_default`` stands in for a missing ``--calib``."""
    return ExportOptions.create(args.out, args.targets, name=args.name, space=args.space,
                                calib_dir=args.calib or calib_default, int8_recipe=args.int8_recipe,
                                int8_target=args.int8_target, optimize=not args.no_optimize)
