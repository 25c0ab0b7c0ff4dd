"""Options and helpers every command shares, so a flag means the same thing everywhere.

``--variant`` offers the rows of :mod:`crossmodal.variants`; ``-k/--top-k``,
``--threads``, ``--json`` and ``--no-progress`` have one spelling and one help
text. Counts are checked by :func:`crossmodal.inputs.positive_int`, the rule the
library applies too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs import non_negative_int, positive_int
from ..variants import DEFAULT_VARIANT, VARIANTS


def positive(text: str) -> int:
    """argparse ``type=``: an integer >= 1 (argparse prints the message and exits 2)."""
    try:
        return positive_int("the value", int(text))
    except (ValueError, InputError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


def non_negative(text: str) -> int:
    """argparse ``type=``: an integer >= 0."""
    try:
        return non_negative_int("the value", int(text))
    except (ValueError, InputError):
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None


def add_variant(p: argparse.ArgumentParser, *, default: str | None = DEFAULT_VARIANT, help: str | None = None) -> None:
    p.add_argument("--variant", choices=VARIANTS, default=default, metavar="VARIANT",
                   help=(help or f"bundle variant to run (default {default})") + f"; one of: {', '.join(VARIANTS)}")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive, metavar="N",
                   help="onnxruntime intra-op threads per tower (default: one per physical core)")


def add_top_k(p: argparse.ArgumentParser, *, default: int, what: str) -> None:
    """``-k/--top-k`` (dest ``top_k``); checked by the command so a bad value is a one-line error."""
    p.add_argument("-k", "--top-k", dest="top_k", type=int, default=default, metavar="K",
                   help=f"number of {what} (default {default})")
    # The spelling of the first release, kept working; not shown in --help.
    p.add_argument("--k", dest="top_k", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as one JSON object on stdout")


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def load_encoder(bundle: Path, variant: str | None, modality: str | None, threads: int | None) -> Any:
    """:func:`crossmodal.loader.load`, looked up at call time so tests can substitute an encoder."""
    from .. import loader

    return loader.load(bundle, variant=variant, modality=modality, threads=threads)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout)
    sys.stdout.write("\n")


__all__ = ["positive", "non_negative", "add_variant", "add_threads", "add_top_k", "add_json", "add_no_progress", "load_encoder",
           "print_json"]
