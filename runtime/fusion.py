"""Rank fusion: combine several scorings of the same candidates into one ranking.

Two rules, both pure functions over keys and scores (no index, no model):

* :func:`weighted_fusion`: ``(1 - w) * a + w * b`` per candidate, for two similarities on
  one scale (query -> image cosine and query -> caption cosine). A candidate without a
  ``b`` (an image with no caption) keeps ``a`` alone: it is ranked as if its caption
  matched exactly as well as its image, neither rewarded nor penalised for having none.
* :func:`reciprocal_rank_fusion`: ``sum over rankings of 1 / (k0 + rank)`` (rank 1 = best),
  for rankings whose scores are not comparable (cosines vs BM25 relevance). A candidate
  absent from a ranking gets nothing from it. ``k0 = 60`` is the constant of Cormack,
  Clarke and Buettcher (SIGIR 2009), the usual default: it damps the difference between
  the first few ranks so one list cannot dominate.

Ties are broken by the order candidates were first seen, so the result is deterministic.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Mapping, Sequence, TypeVar

from .errors import InputError
from .inputs import positive_int

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")  # a float or a numpy array of them

FUSE_MODES = ("weighted", "rrf")
# Equal trust in the image and its best caption: no real checkpoint or dataset is available
# here to tune w on, and 0.5 is the value that assumes neither signal is better. Because of
# CLIP's modality gap (text -> text cosines run well above text -> image ones) the caption term
# dominates the spread at 0.5 already; a larger w mostly ranks by caption alone. Tune it
# with `crossmodal eval --fuse captions --fuse-weight W` on your own data (README, Caption fusion).
DEFAULT_FUSE_WEIGHT = 0.5
RRF_K0 = 60


def fuse_weight(value: float | None) -> float:
    """The caption weight ``w`` in [0, 1] (None: :data:`DEFAULT_FUSE_WEIGHT`); InputError otherwise."""
    if value is None:
        return DEFAULT_FUSE_WEIGHT
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
        raise InputError(f"fuse_weight must be a number in [0, 1] (the share of the caption similarity), "
                         f"got {value!r}")
    return float(value)


def fuse_mode(value: str) -> str:
    """``value`` if it is a fusion mode (:data:`FUSE_MODES`), else InputError naming them."""
    if value not in FUSE_MODES:
        raise InputError(f"fuse_mode must be one of {list(FUSE_MODES)}, got {value!r}")
    return value


def weighted(primary: T, secondary: T, weight: float) -> T:
    """``(1 - weight) * primary + weight * secondary``: one score or numpy arrays of them."""
    return (1.0 - weight) * primary + weight * secondary  # type: ignore[operator, return-value]


def rrf_term(rank: T, k0: int = RRF_K0) -> T:
    """What a 1-based ``rank`` (a number or a numpy array of them) contributes to a reciprocal-rank fusion."""
    return 1.0 / (k0 + rank)  # type: ignore[operator, return-value]


def weighted_fusion(primary: Mapping[K, float], secondary: Mapping[K, float], weight: float) -> list[tuple[K, float]]:
    """``(key, (1 - weight) * primary + weight * secondary)`` best first, over the keys of ``primary``.

    A key missing from ``secondary`` scores ``primary`` alone (see the module docstring).
    """
    fused = {key: weighted(a, secondary[key], weight) if key in secondary else a for key, a in primary.items()}
    return _best_first(fused)


def reciprocal_rank_fusion(rankings: Iterable[Sequence[K]], k0: int = RRF_K0) -> list[tuple[K, float]]:
    """``(key, sum of 1 / (k0 + rank))`` best first over every key of ``rankings`` (each best first)."""
    k0 = positive_int("k0", k0)
    fused: dict[K, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + rrf_term(rank, k0)
    return _best_first(fused)


def _best_first(scores: Mapping[K, float]) -> list[tuple[K, float]]:
    # sorted() is stable and dicts keep insertion order: ties stay in first-seen order.
    return sorted(scores.items(), key=lambda kv: -kv[1])


__all__ = ["weighted", "rrf_term", "weighted_fusion", "reciprocal_rank_fusion", "fuse_weight", "fuse_mode", "FUSE_MODES",
           "DEFAULT_FUSE_WEIGHT", "RRF_K0"]
