"""Ranking a text query's hits with everything the index knows: captions and keywords.

``Retriever.search_text(..., fuse="captions")`` ranks images by their own similarity to the
query fused with their captions' (:func:`caption_fused`); ``hybrid=True`` merges the vector
hits with the index's keyword hits (:func:`hybrid_merged`). The arithmetic is
:mod:`crossmodal.fusion`'s; this module picks the candidates and their scores.

Caption fusion scores every image ``i`` the index holds (and the filter keeps) for a query ``q``:
``a(i) = sim(q, image i)`` and, when ``i`` has captions, ``b(i) = max sim(q, caption of i)``
(``sim`` = the index metric: cosine or inner product; a caption item of the text tower
belongs to the image stored under the same path). ``weighted``: ``(1 - w) a + w b``, or ``a``
alone without a caption; ``rrf``: ``1/(60 + rank of a) + 1/(60 + rank of b)`` with ranks over
all those images (equal scores share the better rank), the second term only with a caption.
These are the rules ``crossmodal eval --fuse captions`` computes over a whole split.

The best ``k`` by that rule are found without scoring every image, as a threshold algorithm:

1. candidates: the top ``N = max(4k, 50)`` images by ``a`` and the images of the top ``N``
   captions by caption similarity.
2. every candidate's ``a`` and ``b`` are computed from its stored vectors
   (:meth:`crossmodal.index.Index.get_vectors`), so a candidate found by one list only gets
   its true fused score.
3. an image in neither list has ``a`` at most the image list's last score and ``b`` at
   most the caption list's: that bounds its fused score (for ``rrf``, its ranks are past
   both lists; a candidate missing from a list has its rank bounded the same way). When
   the ``k``-th best candidate is known exactly and is not below any bound, the top ``k``
   is the top ``k`` of all images; otherwise ``N`` grows 4x and the searches run again
   (at most until a list holds its whole tower). So on exact searches (the default up to
   :attr:`~crossmodal.index.Index.exact_threshold` vectors) the ranking is exactly the
   rule applied to every image; ``weighted`` rarely needs a second round, ``rrf`` does when
   an image high in one ranking is low in the other.
4. on a graph (HNSW) search the lists are approximate and deepening them would walk most of
   the graph, so one round is taken: the candidates' weighted scores are still exact; an
   ``rrf`` rank beyond a list counts as just past it (an upper bound).

Filters (``where``) keep the image hits to matching images, and an image that only a caption
brought in is kept only if the filter keeps it; captions are searched under the same path
prefix (a caption shares its image's path). With ``has_caption=False`` no image has a
caption to fuse, so the ranking is the image ranking.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from numpy.typing import NDArray

from .fusion import reciprocal_rank_fusion, rrf_term

if TYPE_CHECKING:  # pragma: no cover
    from .index import Filter, Index, SearchResult

# Scores computed from stored vectors and by the searches differ in the last bits (float32
# sums in another order); a bound is only trusted to this margin.
_EPS = 1e-6
# How much deeper each round searches when the top k is not settled yet.
_GROWTH = 4


def candidate_depth(k: int) -> int:
    """How many hits each of the fused lists contributes: ``max(4k, 50)``."""
    return max(4 * k, 50)


def similarities(index: Any, query: NDArray[np.float32], keys: Sequence[int], *, tower: str,
                 where: "Filter | None" = None) -> dict[int, float]:
    """``sim(query, stored vector)`` of each key ``tower`` holds (and ``where`` keeps), by the index metric."""
    if not keys:
        return {}
    vecs, missing = _stored_vectors(index, list(keys), tower, where)
    scores = vecs @ query
    if index.metric == "cos":
        # A zero vector has no direction: scored 0, as usearch and the scan table do.
        norms = np.linalg.norm(vecs, axis=1) * float(np.linalg.norm(query))
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    gone = set(missing)
    return {int(k): float(s) for k, s in zip(keys, scores) if int(k) not in gone}


def _stored_vectors(index: Any, keys: list[int], tower: str, where: "Filter | None"
                    ) -> tuple[NDArray[np.float32], list[int]]:
    get = getattr(index, "get_vectors", None)
    if get is not None:
        return get(keys, tower=tower, where=where)  # type: ignore[no-any-return]
    # A ShardedIndex without get_vectors of its own: each key from the shard that holds it.
    vecs = np.full((len(keys), index.dim), np.nan, dtype=np.float32)
    found = np.zeros(len(keys), dtype=bool)
    for shard in index.shards:
        part, missing = shard.get_vectors(keys, tower=tower, where=where)
        here = ~np.isin(np.asarray(keys, dtype=np.uint64), np.asarray(missing, dtype=np.uint64)) & ~found
        vecs[here], found[here] = part[here], True
    return vecs, [k for k, f in zip(keys, found) if not f]


def _searches_exactly(index: Any, tower: str, exact: bool | None) -> bool:
    return exact is True or (exact is None and index.uses_exact(tower))


def _strictly_above(scores: NDArray[np.float64], value: float) -> int:
    """How many of ``scores`` (sorted descending) are above ``value`` by more than the margin."""
    return int(np.searchsorted(-scores, -(value + _EPS), side="left"))


@dataclass
class _Round:
    """One round's candidates: exact scores, and what the two lists say about everything else."""

    image: dict[int, float] = field(default_factory=dict)       # a of every candidate
    caption: dict[int, float] = field(default_factory=dict)     # b of candidates with a caption
    records: dict[int, "SearchResult"] = field(default_factory=dict)
    image_list: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))   # scores, best first
    caption_list: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))  # best per image, best first
    in_image_list: set[int] = field(default_factory=set)
    in_caption_list: set[int] = field(default_factory=set)
    caption_last: float | None = None  # the caption list's last score: a bound for every caption not in it
    images_done: bool = True   # the image list holds every matching image
    captions_done: bool = True  # the caption list holds every caption searched


def _round(index: "Index", q: NDArray[np.float32], depth: int, exact: bool | None, where: "Filter | None",
           use_captions: bool) -> _Round:
    from .index import Filter

    r = _Round()
    image_hits: list[SearchResult] = index.search(q, depth, exact=exact, where=where)  # type: ignore[assignment]
    r.images_done = len(image_hits) < depth or depth >= index.count("image")
    r.records = {h.key: h for h in image_hits}
    r.in_image_list = set(r.records)
    r.image_list = np.asarray([h.score for h in image_hits], dtype=np.float64)
    caption_where = None
    caption_hits: list[SearchResult] = []
    if use_captions:
        prefix = None if where is None else where.path_prefix
        caption_where = None if prefix is None else Filter(path_prefix=prefix)
        caption_hits = index.search(q, depth, tower="text", exact=exact,  # type: ignore[assignment]
                                    where=caption_where)
        r.captions_done = len(caption_hits) < depth or depth >= index.count("text")
        r.caption_last = caption_hits[-1].score if caption_hits else None
    # The images of the caption hits, each at its best caption (its first hit), best first.
    image_keys_of: dict[str, list[int]] = {}
    best_first: list[tuple[list[int], float]] = []
    for h in caption_hits:
        if h.path is not None and h.path not in image_keys_of:
            image_keys_of[h.path] = index.find_path(h.path)
            best_first.append((image_keys_of[h.path], h.score))
    brought = [key for keys in image_keys_of.values() for key in keys if key not in r.records]
    # Images only a caption brought: kept when the index holds them and the filter keeps them.
    kept = set(similarities(index, q, brought, tower="image", where=where)) if brought else set()
    for key in brought:
        rec = index.get(key) if key in kept else None
        if rec is not None:
            r.records[key] = _as_hit(rec)
    candidates = list(r.records)
    r.image = similarities(index, q, candidates, tower="image")
    listed = [(keys, s) for keys, s in best_first if any(k in r.records for k in keys)]
    r.caption_list = np.asarray([s for keys, s in listed for k in keys if k in r.records], dtype=np.float64)
    r.in_caption_list = {k for keys, _ in listed for k in keys if k in r.records}
    if use_captions:
        caps = index.captions_of(candidates)
        text_keys = sorted({t for c in caps.values() for t, _ in c})
        cap_sim = similarities(index, q, text_keys, tower="text", where=caption_where)
        for key, c in caps.items():
            scores = [cap_sim[t] for t, _ in c if t in cap_sim]
            if scores:
                r.caption[key] = max(scores)
    return r


def _weighted(r: _Round, k: int, weight: float) -> tuple[list[tuple[int, float]], bool]:
    """The candidates' weighted scores best first, and whether their top ``k`` is the top ``k`` of all."""
    fused = {key: (1.0 - weight) * a + weight * r.caption[key] if key in r.caption else a
             for key, a in r.image.items()}
    ranked = sorted(fused.items(), key=lambda kv: -kv[1])
    if r.images_done:
        return ranked, True  # every matching image is a candidate
    a_last = float(r.image_list[-1])
    bound = a_last  # an image in neither list and without a caption
    if r.caption_last is not None and not r.captions_done:
        bound = max(bound, (1.0 - weight) * a_last + weight * r.caption_last)
    return ranked, len(ranked) >= k and ranked[k - 1][1] >= bound - _EPS


def _rank_terms(score: float, listed: bool, ranking: NDArray[np.float64]) -> tuple[float, float]:
    """Lower and upper bound of one RRF term: exact for a listed item (the list is the top of
    its ranking), else its rank is only known to be past every listed score above it."""
    term = rrf_term(1 + _strictly_above(ranking, score))
    return (term, term) if listed else (0.0, term)


def _rrf(r: _Round, k: int) -> tuple[list[tuple[int, float]], bool]:
    """The candidates' RRF scores best first (one not settled at its upper bound), and whether
    the top ``k`` is settled: each known exactly and none below an image outside both lists."""
    low: dict[int, float] = {}
    high: dict[int, float] = {}
    for key, a in r.image.items():
        lo, hi = _rank_terms(a, key in r.in_image_list, r.image_list)
        if key in r.caption:
            lo_b, hi_b = _rank_terms(r.caption[key], key in r.in_caption_list, r.caption_list)
            lo, hi = lo + lo_b, hi + hi_b
        low[key], high[key] = lo, hi
    ranked = sorted(high.items(), key=lambda kv: -kv[1])
    top = ranked[:k]
    if not all(low[key] == s for key, s in top):
        return ranked, False
    if r.images_done:
        return ranked, True  # every matching image is a candidate
    # An image in neither list: its ranks are past every listed score above the lists' last ones.
    unseen = rrf_term(1 + _strictly_above(r.image_list, float(r.image_list[-1])))
    if r.caption_last is not None and not r.captions_done:
        unseen += rrf_term(1 + _strictly_above(r.caption_list, r.caption_last))
    return ranked, len(top) == k and top[-1][1] >= unseen - _EPS


def caption_fused(index: "Index", vector: Any, k: int, *, mode: str, weight: float, exact: bool | None,
                  where: "Filter | None") -> list["SearchResult"]:
    """The best ``k`` images for one query vector by image + caption fusion (module docstring)."""
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    use_captions = (where is None or where.has_caption is not False) and index.count("text") > 0
    deepen = _searches_exactly(index, "image", exact) and (not use_captions or _searches_exactly(index, "text", exact))
    depth = candidate_depth(k)
    while True:
        r = _round(index, q, depth, exact, where, use_captions)
        ranked, settled = _weighted(r, k, weight) if mode == "weighted" else _rrf(r, k)
        if settled or not deepen or (r.images_done and r.captions_done):
            break
        depth *= _GROWTH
    return [replace(r.records[key], score=float(score)) for key, score in ranked[:k]]


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


__all__ = ["caption_fused", "hybrid_merged", "candidate_depth", "similarities"]
