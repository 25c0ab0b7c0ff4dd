"""Flags of the ranking options that ``crossmodal search`` and ``crossmodal eval`` share:
caption fusion (``--fuse captions``, ``--fuse-mode``, ``--fuse-weight``) and, for search,
hybrid keyword ranking and metadata filters.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..fusion import DEFAULT_FUSE_WEIGHT, FUSE_MODES, RRF_K0


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def add_fusion(p: argparse.ArgumentParser, what: str) -> None:
    """``--fuse captions``, ``--fuse-mode``, ``--fuse-weight``; ``what`` says what is fused."""
    p.add_argument("--fuse", choices=("captions",), default=None,
                   help=f"{what} by a fusion of the query's similarity to each image and to its captions")
    p.add_argument("--fuse-mode", choices=FUSE_MODES, default="weighted",
                   help=f"weighted: (1-w)*image + w*best caption cosine (default); rrf: reciprocal-rank fusion "
                        f"of the two rankings (k0={RRF_K0})")
    p.add_argument("--fuse-weight", type=_weight, default=None, metavar="W",
                   help=f"caption weight w of --fuse-mode weighted, in [0, 1] (default {DEFAULT_FUSE_WEIGHT})")


def check_fusion(args: argparse.Namespace) -> None:
    """Refuse fusion settings given without ``--fuse captions`` (they would be silently ignored)."""
    from ..errors import InputError

    if args.fuse is None and (args.fuse_weight is not None or args.fuse_mode != "weighted"):
        raise InputError("--fuse-mode and --fuse-weight set how captions are fused: add --fuse captions")
    if args.fuse_weight is not None and args.fuse_mode == "rrf":
        raise InputError("--fuse-weight weights the cosines of --fuse-mode weighted; rrf has no weight")


def add_filters(p: argparse.ArgumentParser) -> None:
    """``--path-prefix``, ``--added-after``, ``--has-caption`` / ``--no-caption``."""
    p.add_argument("--path-prefix", metavar="P", help="only items whose path starts with P (a plain string prefix: absolute, or relative to "
                        "the indexed folder; end it with / for a folder)")
    p.add_argument("--added-after", metavar="WHEN",
                   help="only items added after WHEN: an ISO 8601 date/time (UTC unless it has an offset, "
                        "e.g. 2026-01-31 or 2026-01-31T08:00:00+02:00) or unix seconds")
    cap = p.add_mutually_exclusive_group()
    cap.add_argument("--has-caption", dest="has_caption", action="store_const", const=True, default=None,
                     help="only items with a caption")
    cap.add_argument("--no-caption", dest="has_caption", action="store_const", const=False,
                     help="only items without a caption")


def filter_from_args(args: argparse.Namespace) -> Any:
    """The :class:`crossmodal.index.Filter` the flags ask for (its rules, its errors), or None without filter flags."""
    when = args.added_after
    try:
        when = float(when) if when is not None else None
    except ValueError:
        pass  # an ISO date: Filter.from_mapping parses it
    fields = {"path_prefix": args.path_prefix, "added_after": when, "has_caption": args.has_caption}
    if all(v is None for v in fields.values()):
        return None
    from ..index import Filter

    return Filter.from_mapping(fields)


__all__ = ["add_fusion", "check_fusion", "add_filters", "filter_from_args"]
