"""Parity between an exported graph and its reference: the core check of every export.

Two numbers per comparison: the minimum per-row cosine similarity and the
maximum absolute element error. Thresholds are policy of the caller
(`crossmodal.export.pipeline.Thresholds`); a miss raises ParityError, it never
only warns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crossmodal.errors import ParityError


@dataclass(frozen=True)
class Parity:
    """Agreement of ``candidate`` with ``reference`` over all rows compared."""

    min_cosine: float
    mean_cosine: float
    max_abs: float
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def row_cosines(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (computed in float64)."""
    a64 = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b64 = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    num = np.sum(a64 * b64, axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    # Two all-zero rows agree perfectly; one zero row against a non-zero one does not.
    return np.where(den > 0, num / np.maximum(den, 1e-300), np.where(np.linalg.norm(a64 - b64, axis=1) == 0, 1.0, 0.0))


def compare(reference: NDArray[np.floating], candidate: NDArray[np.floating]) -> Parity:
    """Compare two arrays of the same shape (rows = first axis)."""
    if reference.shape != candidate.shape:
        raise ParityError(f"shape mismatch: reference {reference.shape} vs exported {candidate.shape}")
    if reference.ndim == 1:  # scores (e.g. ITM logits): cosine is meaningless, use one row
        reference, candidate = reference[None, :], candidate[None, :]
    if not np.all(np.isfinite(candidate)):
        raise ParityError("exported graph produced NaN or Inf")
    cos = row_cosines(reference, candidate)
    err = np.abs(np.asarray(reference, np.float64) - np.asarray(candidate, np.float64))
    return Parity(float(cos.min()), float(cos.mean()), float(err.max()), int(len(cos)))


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
