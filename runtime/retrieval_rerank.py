"""Re-scoring an index's text -> image hits with a :class:`~crossmodal.rerank.Reranker`.

``Retriever(encoder, index, reranker=rr).search_text(..., rerank=R)`` takes the top ``R`` hits of
the embedding search, reads their images again from the stored paths, scores
each (query, image) pair with the re-ranker and returns the best ``k`` by that
score; each hit keeps its embedding ``score`` and gains ``itm_score``.

Unreadable candidates (file moved, deleted or corrupt since indexing) do not
fail the query: they are not re-scored (``itm_score=None``) and keep the
position they had in the embedding ranking, while the re-scored hits fill the
other positions in ITM order. A warning names each such file; ``crossmodal
index add --repair`` or a rebuild brings the index back in line.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .index.records import SearchResult
    from .rerank import Reranker

log = logging.getLogger(__name__)

# Candidates read and scored per step: bounds the pixels and token states held at once
# (16 images at 384 px are ~28 MB of pixels and ~28 MB of ViT-B token states).
CHUNK = 16


def rerank_hits(hits: Sequence["SearchResult"], query: str, reranker: "Reranker", k: int) -> list["SearchResult"]:
    """Re-score ``hits`` (best embedding match first) for ``query``; returns the best ``k`` (see module docstring)."""
    if not hits:
        return []
    text = reranker.text_states([query])
    itm: dict[int, float] = {}
    for start in range(0, len(hits), CHUNK):
        chunk = hits[start:start + CHUNK]
        with_path = [i for i, h in enumerate(chunk) if h.path is not None]
        pixels, ok, failed = reranker.preprocess_readable([chunk[i].path for i in with_path])  # type: ignore[misc]
        for i in range(len(chunk)):
            if i not in with_path:
                log.warning("not re-ranked: index item %d has no stored image path", chunk[i].key)
        for j, msg in failed.items():
            log.warning("not re-ranked (keeps its embedding rank): %s", msg)
        if ok:
            scores = reranker.score_states(reranker.pixel_states(pixels), text)[:, 0]
            for j, s in zip(ok, scores):
                itm[start + with_path[j]] = float(s)
    # Re-scored hits in ITM order (stable: ties keep the embedding order) fill the positions
    # not held by an unreadable hit.
    scored = sorted(itm, key=lambda i: -itm[i])
    fill = iter(scored)
    out = []
    for pos in range(len(hits)):
        i = pos if pos not in itm else next(fill)
        out.append(replace(hits[i], itm_score=itm.get(i)))
        if len(out) == k:
            break
    return out


__all__ = ["rerank_hits", "CHUNK"]
