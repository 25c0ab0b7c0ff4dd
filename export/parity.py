"""Parity gates of the exporter: an exported graph against its PyTorch reference.

The numbers (minimum and mean row-wise cosine, maximum absolute element error,
the all-zero-row rule, the NaN refusal) come from :mod:`crossmodal.similarity`,
the code ``crossmodal verify`` judges a bundle with, so export and verify never
disagree. This module adds the worst case over several comparisons and the
threshold check; thresholds are policy of the caller
(:class:`crossmodal.export.options.Thresholds`); a miss raises ParityError, it
never only warns.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from crossmodal.errors import ParityError
from crossmodal.similarity import Parity, parity


def compare(reference: NDArray[np.floating], candidate: NDArray[np.floating]) -> Parity:
    """Parity of ``candidate`` (the exported graph's output) against ``reference`` (rows = first axis)."""
    return parity(candidate, reference)


def merge(results: list[Parity]) -> Parity:
    """Worst case over several comparisons (e.g. several batch sizes)."""
    rows = sum(r.rows for r in results)
    mean = sum(r.mean_cosine * r.rows for r in results) / max(rows, 1)
    return Parity(min(r.min_cosine for r in results), mean, max(r.max_abs for r in results), rows)


def require(p: Parity, *, min_cosine: float, max_abs: float | None, what: str) -> None:
    """Raise ParityError when ``p`` misses a threshold; the message says what and by how much."""
    problems = []
    if p.min_cosine < min_cosine:
        problems.append(f"min cosine {p.min_cosine:.6f} < {min_cosine}")
    if max_abs is not None and p.max_abs > max_abs:
        problems.append(f"max abs error {p.max_abs:.3g} > {max_abs}")
    if problems:
        raise ParityError(
            f"{what} fails its parity threshold ({'; '.join(problems)}; {p.rows} rows compared). "
            "Nothing was written for it. This is a bug in the exporter or an unsupported "
            "checkpoint: report it with the model id."
        )


__all__ = ["Parity", "compare", "merge", "require"]
