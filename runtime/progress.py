"""The progress bar of long runs (``crossmodal index build/add``, ``crossmodal eval``): tqdm on stderr."""

from __future__ import annotations

import sys
from typing import IO, Any


def progress_bar(total: int, *, desc: str, enabled: bool = True, stream: IO[str] | None = None) -> Any:
    """A ``tqdm`` bar counting images to ``stream`` (stderr by default); prints nothing when not ``enabled``.

    On a terminal it redraws five times a second; into a file or a pipe (a CI log) at
    most every 5 s, so a long run does not write a line per image. Closing it prints
    the final count.
    """
    from tqdm import tqdm

    out = stream if stream is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    return tqdm(total=total, desc=desc, unit="img", file=out, disable=not enabled, dynamic_ncols=tty,
                mininterval=0.2 if tty else 5.0, leave=True)


__all__ = ["progress_bar"]
