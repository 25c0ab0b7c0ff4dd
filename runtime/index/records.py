"""What the index hands back: search hits and item records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class SearchResult:
    """One hit. ``score`` is the cosine similarity (``metric='cos'``) or inner product (``'ip'``);
    for a hit of :meth:`~crossmodal.index.Index.keyword_search`, the BM25 relevance (higher is better).

    ``itm_score`` is set on hits re-scored by a re-ranker
    (:meth:`crossmodal.retriever.Retriever.search_text` with ``rerank=R``): the ITM match
    logit the hits are then ordered by; None otherwise.
    """

    key: int
    score: float
    path: str | None
    caption: str | None
    tower: str = "image"
    itm_score: float | None = None


@dataclass(frozen=True)
class ItemRecord:
    """Metadata of one indexed vector."""

    key: int
    tower: str
    path: str | None
    caption: str | None
    sha256: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)


__all__ = ["SearchResult", "ItemRecord"]
