"""Ranking a text query's hits with everything the index knows: captions and keywords.

``Retriever.search_text(..., fuse="captions")`` ranks images by their own similarity to the
query fused with their captions' (:func:`caption_fused`); ``hybrid=True`` merges the vector
hits with the index's keyword hits (:func:`hybrid_merged`). The arithmetic is
:mod:`crossmodal.fusion`'s; this module picks the candidates and their scores.

Caption fusion, for one query vector ``q`` and ``k`` wanted hits:

1. candidates: the top ``N = max(4k, 50)`` images by ``cos(q, image)`` and the images of
   the top ``N`` captions by ``cos(q, caption)`` (a caption item of the text tower belongs
   to the image stored under the same path). ``N`` is wide enough that an image with a
   matching caption but a mediocre image score still competes, and small enough to cost
   two searches and one metadata lookup.
2. scores: each candidate's image cosine and its best caption cosine. The index does not
   hand out stored vectors, so a score is taken from the two searches: a candidate that is
   missing from one top-``N`` list is given that list's ``N``-th score, an upper bound of its
   true one (exact whenever the tower holds at most ``N`` items). An image with no caption
   has no caption score (see :mod:`crossmodal.fusion` for how each mode treats it).
3. fusion (weighted or RRF), best ``k`` returned; ``score`` is the fused score.

Filters (``where``) keep the image hits to matching images; caption hits are searched under
the same path prefix (a caption shares its image's path). With ``added_after`` an image that
only a caption brought in cannot be checked here and is left out; with ``has_caption=False``
no image has a caption to fuse, so the ranking is the image ranking.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

from .fusion import reciprocal_rank_fusion, weighted_fusion

if TYPE_CHECKING:  # pragma: no cover
    from .index import Filter, Index, SearchResult


def candidate_depth(k: int) -> int:
    """How many hits each of the fused lists contributes: ``max(4k, 50)``."""
    return max(4 * k, 50)


def _bound(hits: Sequence["SearchResult"], depth: int) -> float | None:
    """The score that bounds every item missing from ``hits`` (None: the list held every item)."""
    return hits[-1].score if len(hits) >= depth else None


def caption_fused(index: "Index", vector: Any, k: int, *, mode: str, weight: float, exact: bool | None,
                  where: "Filter | None") -> list["SearchResult"]:
    """The best ``k`` images for one query vector by image + caption fusion (module docstring)."""
    from .index import Filter

    depth = candidate_depth(k)
    image_hits: list[SearchResult] = index.search(vector, depth, exact=exact, where=where)  # type: ignore[assignment]
    use_captions = where is None or where.has_caption is not False
    caption_hits: list[SearchResult] = []
    if use_captions and index.count("text"):
        prefix = None if where is None else where.path_prefix
        caption_hits = index.search(vector, depth, tower="text", exact=exact,  # type: ignore[assignment]
                                    where=None if prefix is None else Filter(path_prefix=prefix))
    image_score = {h.key: h.score for h in image_hits}
    records = {h.key: h for h in image_hits}
    image_floor = _bound(image_hits, depth)
    # Images only captions brought in: unseen by the image search, so their image cosine is at most its floor.
    may_add = image_floor is not None and (where is None or where.added_after is None)
    for h in caption_hits:
        for key in index.find_path(h.path) if h.path is not None else ():
            if key not in image_score and may_add:
                rec = index.get(key)
                if rec is not None:
                    image_score[key] = float(image_floor)  # type: ignore[arg-type]
                    records[key] = _as_hit(rec)
    caption_score: dict[int, float] = {}
    if caption_hits:
        known = {h.key: h.score for h in caption_hits}
        caption_floor = _bound(caption_hits, depth)
        for key, caps in index.captions_of(list(image_score)).items():
            scores = [known[t] for t, _ in caps if t in known]
            if scores:
                caption_score[key] = max(scores)
            elif caps and caption_floor is not None:
                caption_score[key] = caption_floor
    if mode == "weighted":
        ranked = weighted_fusion(image_score, caption_score, weight)
    else:
        by_image = sorted(image_score, key=lambda key: -image_score[key])
        by_caption = sorted(caption_score, key=lambda key: -caption_score[key])
        ranked = reciprocal_rank_fusion([by_image, by_caption])
    return [replace(records[key], score=float(score)) for key, score in ranked[:k]]


def hybrid_merged(vector_hits: Sequence["SearchResult"], keyword_hits: Sequence["SearchResult"],
                  k: int) -> list["SearchResult"]:
    """The best ``k`` of two rankings of one tower merged by reciprocal-rank fusion; ``score`` is the RRF score."""
    records = {h.key: h for h in keyword_hits}
    records.update({h.key: h for h in vector_hits})  # same item either way; keep the vector hit's fields
    ranked = reciprocal_rank_fusion([[h.key for h in vector_hits], [h.key for h in keyword_hits]])
    return [replace(records[key], score=float(score)) for key, score in ranked[:k]]


def _as_hit(rec: Any) -> "SearchResult":
    from .index import SearchResult

    return SearchResult(key=rec.key, score=0.0, path=rec.path, caption=rec.caption, tower=rec.tower)


__all__ = ["caption_fused", "hybrid_merged", "candidate_depth"]
