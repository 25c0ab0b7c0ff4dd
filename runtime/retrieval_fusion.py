"""Ranking a text query's hits with everything the index knows: captions and keywords.

``Retriever.search_text(..., fuse="captions")`` ranks images by their own similarity to the
query fused with their captions' (:func:`caption_fused`); ``hybrid=True`` merges the vector
hits with the index's keyword hits (:func:`hybrid_merged`). The arithmetic is
:mod:`crossmodal.fusion`'s; this module picks the candidates and their scores.

Caption fusion, for a query ``q`` and ``k`` wanted hits, over the images the index holds (and
the filter keeps): ``a(i) = sim(q, image i)`` and, when ``i`` has captions, ``b(i) = max
sim(q, caption of i)`` (``sim`` = the index metric: cosine or inner product; a caption item
of the text tower belongs to the image stored under the same path).

* ``weighted``: ``(1 - w) a + w b``, or ``a`` alone without a caption, over *all* images.
  The best ``k`` are found without scoring every image (a threshold algorithm): the
  candidates are the top ``N = max(4k, 50)`` images by ``a`` and the images of the top ``N``
  captions; each candidate's ``a`` and ``b`` are computed from its stored vectors
  (:meth:`crossmodal.index.Index.get_vectors`), so a candidate found by one list only gets
  its true score. The caption hits are walked best first and stop once an image they bring
  (``a <= a_N``, the image list's last score) cannot beat the ``k``-th candidate. An image
  in neither list scores at most ``max(a_N, (1 - w) a_N + w b_N)`` (``b_N``: the last caption
  walked); while the ``k``-th candidate is below that bound, ``N`` grows 4x and the
  searches run again (at most until a list holds its whole tower). On exact searches (the
  default up to :attr:`~crossmodal.index.Index.exact_threshold` vectors) the result is the
  top ``k`` of the rule applied to every image. Measured at 20,000 images + captions, k = 10:
  one round when captions relate to their images, two or three when they do not.
* ``rrf``: ``1/(60 + rank by a) + 1/(60 + rank by b)``, each term counted when the image is
  within the top ``W = max(4k, 50)`` of that ranking (the ranking's window, as search
  engines' RRF has it), ranks among the matching images, equal scores sharing the better
  rank; the ``b`` ranking is of images by their best caption. Both windows are exact (the
  caption search deepens until it covers ``W`` images), so the score is exact. Without the
  window an image first by one ranking and deep in the other needs its deep rank, which
  costs a search of most of the tower (seconds at 20,000 images); beyond the window a
  term is below ``1/(61 + W)`` anyway. ``crossmodal eval --fuse-mode rrf`` applies the same
  window (``W = 50``, for its R@10).

On a graph (HNSW) search the lists are approximate and deepening them would walk most of the
graph, so ``weighted`` takes one round (its candidates' scores are still exact) and ``rrf``'s
windows are the graph's.

Filters (``where``) keep the image hits to matching images, and an image that only a caption
brought in is kept only if the filter keeps it; captions are searched under the same path
prefix (a caption shares its image's path). With ``has_caption=False`` no image has a
caption to fuse, so the ranking is the image ranking.
"""

from __future__ import annotations

from dataclasses import replace
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
# Caption hits mapped to their images per step of the weighted walk.
_WALK = 32
# (key, fused score) best first, and the search hits found for those keys.
_Ranked = tuple[list[tuple[int, float]], dict[int, "SearchResult"]]


def candidate_depth(k: int) -> int:
    """How many hits each of the fused lists contributes: ``max(4k, 50)``."""
    return max(4 * k, 50)


def similarities(index: Any, query: NDArray[np.float32], keys: Sequence[int], *, tower: str,
                 where: "Filter | None" = None) -> dict[int, float]:
    """``sim(query, stored vector)`` of each key ``tower`` holds (and ``where`` keeps), by the index metric."""
    if not keys:
        return {}
    vecs, missing = index.get_vectors(list(keys), tower=tower, where=where)
    scores = vecs @ query
    if index.metric == "cos":
        # A zero vector has no direction: scored 0, as usearch and the scan table do.
        norms = np.linalg.norm(vecs, axis=1) * float(np.linalg.norm(query))
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    gone = set(missing)
    return {int(k): float(s) for k, s in zip(keys, scores) if int(k) not in gone}


def _searches_exactly(index: Any, tower: str, exact: bool | None) -> bool:
    return exact is True or (exact is None and index.uses_exact(tower))


def _strictly_above(scores: NDArray[np.float64], value: float) -> int:
    """How many of ``scores`` (sorted descending) are above ``value`` by more than the margin."""
    return int(np.searchsorted(-scores, -(value + _EPS), side="left"))


def _min_ranks(scores: NDArray[np.float64]) -> list[int]:
    """1-based rank of each of ``scores`` (best first), equal scores sharing the better rank."""
    return [1 + _strictly_above(scores, float(s)) for s in scores]


class _Searches:
    """The searches of one fused query and the lookups behind them, kept across deeper rounds."""

    def __init__(self, index: Any, q: NDArray[np.float32], exact: bool | None, where: "Filter | None",
                 use_captions: bool) -> None:
        from .index import Filter

        self.index, self.q, self.exact, self.where, self.use_captions = index, q, exact, where, use_captions
        prefix = None if where is None else where.path_prefix
        # A caption shares its image's path: the path prefix applies to captions; the other fields are the image's.
        self.caption_where = None if prefix is None else Filter(path_prefix=prefix)
        self._keys_at: dict[str, list[int]] = {}
        self._kept: dict[int, bool] = {}

    def images(self, depth: int) -> tuple[list["SearchResult"], bool]:
        """The top ``depth`` matching images, and whether they are all of them."""
        hits = self.index.search(self.q, depth, exact=self.exact, where=self.where)
        return hits, len(hits) < depth or depth >= self.index.count("image")

    def captions(self, depth: int) -> tuple[list["SearchResult"], bool]:
        """The top ``depth`` captions (under the path prefix), and whether they are all of them."""
        if not self.use_captions:
            return [], True
        hits = self.index.search(self.q, depth, tower="text", exact=self.exact, where=self.caption_where)
        return hits, len(hits) < depth or depth >= self.index.count("text")

    def images_of(self, caption_hits: Sequence["SearchResult"], records: dict[int, "SearchResult"]
                  ) -> list[tuple[int, float]]:
        """``(image key, caption score)`` for the matching images of ``caption_hits``, in their order
        (an image first appears at its best caption). An image no image search returned (not in
        ``records``) is checked here: held, and kept by the filter."""
        order = []
        for h in caption_hits:
            if h.path is not None:
                if h.path not in self._keys_at:
                    self._keys_at[h.path] = self.index.find_path(h.path)
                order += [(key, h.score) for key in self._keys_at[h.path]]
        unknown = sorted({key for key, _ in order if key not in records and key not in self._kept})
        if unknown:
            _, missing = self.index.get_vectors(unknown, tower="image", where=self.where)
            gone = set(missing)
            self._kept.update((key, key not in gone) for key in unknown)
        return [(key, score) for key, score in order if key in records or self._kept[key]]

    def weighted(self, keys: Sequence[int], weight: float, image: dict[int, float] | None = None) -> dict[int, float]:
        """The weighted score of each image key, from the stored vectors of it and its captions
        (``image``: the keys' image similarities when already computed)."""
        if image is None:
            image = similarities(self.index, self.q, keys, tower="image")
        caption: dict[int, float] = {}
        if self.use_captions and keys:
            caps = self.index.captions_of(list(keys))
            cap_sim = similarities(self.index, self.q, sorted({t for c in caps.values() for t, _ in c}),
                                   tower="text", where=self.caption_where)
            for key, c in caps.items():
                scores = [cap_sim[t] for t, _ in c if t in cap_sim]
                if scores:
                    caption[key] = max(scores)
        return {key: (1.0 - weight) * a + weight * caption[key] if key in caption else a for key, a in image.items()}


def _kth(scores: dict[int, float], k: int) -> float:
    return sorted(scores.values(), reverse=True)[k - 1] if len(scores) >= k else -np.inf


def _weighted(s: _Searches, k: int, weight: float, deepen: bool) -> _Ranked:
    """The top ``k`` by the weighted rule over every image (module docstring), with the records found."""
    depth = candidate_depth(k)
    while True:
        image_hits, images_done = s.images(depth)
        records = {h.key: h for h in image_hits}
        fused = s.weighted(list(records), weight)
        a_last = image_hits[-1].score if image_hits else -np.inf
        caption_bound = None  # no caption beyond what was walked scores above this
        if not images_done:  # else every matching image is a candidate already
            caption_hits, captions_done = s.captions(depth)
            caption_bound = None if captions_done or not caption_hits else caption_hits[-1].score
            # An image only a caption brings has a <= a_last, so its score is at most (1 - w) a_last + w b:
            # walk the captions best first while that can beat the k-th candidate. Its first caption hit
            # is its best caption: that score ranks it during the walk, its stored vectors afterwards.
            brought: dict[int, float] = {}
            brought_image: dict[int, float] = {}  # their image similarities, computed once
            for start in range(0, len(caption_hits), _WALK):
                b = caption_hits[start].score
                if (1.0 - weight) * a_last + weight * b < _kth({**fused, **brought}, k) - _EPS:
                    caption_bound = b
                    break
                new = [(key, b) for key, b in s.images_of(caption_hits[start:start + _WALK], records)
                       if key not in fused and key not in brought]
                a = similarities(s.index, s.q, [key for key, _ in new], tower="image")
                brought_image.update(a)
                brought.update({key: (1.0 - weight) * a[key] + weight * b for key, b in dict(new[::-1]).items()})
            fused.update(s.weighted(list(brought), weight, image=brought_image))
        ranked = sorted(fused.items(), key=lambda kv: -kv[1])
        if images_done or not deepen:  # exact / one round on a graph
            return ranked[:k], records
        bound = a_last  # an image in neither list and without a caption
        if caption_bound is not None:
            bound = max(bound, (1.0 - weight) * a_last + weight * caption_bound)
        if len(ranked) >= k and ranked[k - 1][1] >= bound - _EPS:
            return ranked[:k], records
        depth *= _GROWTH


def _rrf(s: _Searches, k: int, deepen: bool) -> _Ranked:
    """The top ``k`` by windowed reciprocal-rank fusion (module docstring), with the records found."""
    window = candidate_depth(k)
    image_hits, _ = s.images(window)
    records = {h.key: h for h in image_hits}
    scores = np.asarray([h.score for h in image_hits], dtype=np.float64)
    fused = {h.key: rrf_term(rank) for h, rank in zip(image_hits, _min_ranks(scores))}
    depth = window
    while s.use_captions:
        # The caption window is W images by their best caption: deeper while W are not covered.
        caption_hits, done = s.captions(depth)
        by_caption: dict[int, float] = {}
        for key, score in s.images_of(caption_hits, records):
            by_caption.setdefault(key, score)
        if len(by_caption) >= window or done or not deepen:
            best = list(by_caption.items())[:window]
            ranks = _min_ranks(np.asarray([b for _, b in best], dtype=np.float64))
            for (key, _), rank in zip(best, ranks):
                fused[key] = fused.get(key, 0.0) + rrf_term(rank)
            break
        depth *= _GROWTH
    return sorted(fused.items(), key=lambda kv: -kv[1])[:k], records


def caption_fused(index: "Index", vector: Any, k: int, *, mode: str, weight: float, exact: bool | None,
                  where: "Filter | None") -> list["SearchResult"]:
    """The best ``k`` images for one query vector by image + caption fusion (module docstring)."""
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    use_captions = (where is None or where.has_caption is not False) and index.count("text") > 0
    deepen = _searches_exactly(index, "image", exact) and (not use_captions or _searches_exactly(index, "text", exact))
    searches = _Searches(index, q, exact, where, use_captions)
    if mode == "weighted":
        ranked, records = _weighted(searches, k, weight, deepen)
    else:
        ranked, records = _rrf(searches, k, deepen)
    out = []
    for key, score in ranked:
        rec = records.get(key) or _record(index, key)  # an image only a caption brought
        if rec is not None:
            out.append(replace(rec, score=float(score)))
    return out


def hybrid_merged(vector_hits: Sequence["SearchResult"], keyword_hits: Sequence["SearchResult"],
                  k: int) -> list["SearchResult"]:
    """The best ``k`` of two rankings of one tower merged by reciprocal-rank fusion; ``score`` is the RRF score."""
    records = {h.key: h for h in keyword_hits}
    records.update({h.key: h for h in vector_hits})  # same item either way; keep the vector hit's fields
    ranked = reciprocal_rank_fusion([[h.key for h in vector_hits], [h.key for h in keyword_hits]])
    return [replace(records[key], score=float(score)) for key, score in ranked[:k]]


def _record(index: Any, key: int) -> "SearchResult | None":
    from .index import SearchResult

    rec = index.get(key)
    return None if rec is None else SearchResult(key=rec.key, score=0.0, path=rec.path, caption=rec.caption,
                                                 tower=rec.tower)


__all__ = ["caption_fused", "hybrid_merged", "candidate_depth", "similarities"]
