"""Agreement of a graph's output with its reference: the one row-wise cosine and parity record.

Shared by the exporter (parity gates before anything is written) and
``crossmodal verify`` (re-checking a bundle on the machine that runs it), so
both judge a graph by the same numbers. Written here rather than taken from a
library because the all-zero-row rule below must be exact and identical on
both sides; numpy only, no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import ParityError


@dataclass(frozen=True)
class Parity:
    """Agreement of one output with its reference over all rows compared."""

    min_cosine: float
    mean_cosine: float
    max_abs: float
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rows(x: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    # A 1-D output (e.g. one ITM score per pair) is one row: a cosine per scalar would only be its sign.
    return arr.reshape(1, -1) if arr.ndim <= 1 else arr.reshape(len(arr), -1)


def rowwise_cosine(got: ArrayLike, expected: ArrayLike) -> NDArray[np.float64]:
    """Cosine of each row of ``got`` with the same row of ``expected``, in float64.

    Rows are the first axis (further axes are flattened into the row); a 1-D
    array is one row. Zero rows follow one rule: two all-zero rows agree
    (1.0), an all-zero row against a non-zero one does not (0.0).
    """
    a, b = _rows(got), _rows(expected)
    if a.shape != b.shape:
        raise ParityError(f"shape mismatch: output {np.shape(got)} vs reference {np.shape(expected)}")
    ua, nza = _unit_rows(a)
    ub, nzb = _unit_rows(b)
    return np.where(nza & nzb, np.sum(ua * ub, axis=1), np.where(nza | nzb, 0.0, 1.0))


def _unit_rows(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Rows scaled to unit length (zero rows stay zero) and which rows are non-zero.

    Each row is divided by its largest magnitude first: squaring elements below
    ~1e-162 underflows, which would make a tiny non-zero row look all-zero.
    """
    peak = np.max(np.abs(x), axis=1, initial=0.0)
    nonzero = peak > 0
    scaled = np.divide(x, peak[:, None], out=np.zeros_like(x), where=nonzero[:, None])
    norm = np.linalg.norm(scaled, axis=1)
    return np.divide(scaled, norm[:, None], out=np.zeros_like(x), where=nonzero[:, None]), nonzero


def parity(got: ArrayLike, expected: ArrayLike) -> Parity:
    """Minimum and mean row-wise cosine and maximum absolute element error of ``got`` against ``expected``.

    Raises ParityError when the shapes differ, nothing is compared, or ``got``
    holds NaN or Inf (which no cosine threshold would otherwise catch reliably).
    """
    g, e = np.asarray(got), np.asarray(expected)
    if g.shape != e.shape:
        raise ParityError(f"shape mismatch: output {g.shape} vs reference {e.shape}")
    if g.size == 0:
        raise ParityError(f"nothing to compare: output of shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ParityError("the graph produced NaN or Inf")
    cos = rowwise_cosine(g, e)
    err = np.abs(g.astype(np.float64) - e.astype(np.float64))
    return Parity(float(cos.min()), float(cos.mean()), float(err.max()), len(cos))


__all__ = ["Parity", "rowwise_cosine", "parity"]
