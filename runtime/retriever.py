"""Query encoding, search and re-ranking over one index: the object a service calls.

:class:`Retriever` joins an :class:`~crossmodal.encoder.Encoder`, an
:class:`~crossmodal.index.Index` of the same embedding space and, for ALBEF
bundles, a :class:`~crossmodal.rerank.Reranker`. The index stores and searches
vectors; the retriever turns texts and images into query vectors first and
re-scores hits afterwards (:mod:`crossmodal.retrieval_rerank`), so neither the
index nor the re-ranker imports the other.

Every search takes one query or a batch, by the rule of :mod:`crossmodal.inputs`,
and answers one list of hits for one query, a list of lists for a batch.

Text searches can also rank by what the index knows beyond the vectors
(:mod:`crossmodal.retrieval_fusion`): ``fuse="captions"`` fuses each image's similarity
with its captions', ``hybrid=True`` merges keyword hits (SQLite FTS5 over captions and
file names) with the vector hits. Every search takes ``where=`` (a
:class:`crossmodal.index.Filter` or its mapping: path prefix, added after, has caption).
None of this is on by default.

>>> r = Retriever(crossmodal.load("models/clip-vit-b-32"), Index.open("photos.idx", read_only=True))  # doctest: +SKIP
>>> r.search_text("two dogs in the snow", k=5)                                                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np

from .errors import IncompatibleTowersError, InputError
from .fusion import fuse_mode, fuse_weight
from .index.filters import as_filter
from .inputs import image_batch, optional_bool, positive_int, text_batch
from .retrieval_fusion import candidate_depth, caption_fused, hybrid_merged
from .retrieval_rerank import rerank_hits

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import Encoder
    from .index import Filter, Index, SearchResult
    from .rerank import Reranker

# What ``where=`` accepts: a Filter, its mapping ({"path_prefix": ..., ...}) or None.
Where = Union["Filter", Mapping[str, Any], None]
FUSE_CHOICES = ("captions",)

# One list of hits for one query, a list of them for a batch.
Hits = Union[list["SearchResult"], list[list["SearchResult"]]]


class Retriever:
    """Search an index by text, image or vector; see the module docstring.

    Raises :class:`~crossmodal.errors.IncompatibleTowersError` at construction when the
    encoder or the re-ranker embeds into another space than the index.
    """

    def __init__(self, encoder: "Encoder", index: "Index", reranker: "Reranker | None" = None) -> None:
        index.check_encoder(encoder)
        if reranker is not None and reranker.bundle.space != index.space:
            raise IncompatibleTowersError(
                f"the reranker's bundle {reranker.bundle.name!r} embeds into space {reranker.bundle.space!r} but "
                f"the index {index.path} holds {index.space!r}; load the re-ranker from the bundle the index was "
                "built with")
        self.encoder = encoder
        self.index = index
        self.reranker = reranker

    def search_vector(self, vectors: Any, k: int = 10, *, tower: str = "image", exact: bool | None = None,
                      where: Where = None) -> Hits:
        """Top-``k`` hits for one query vector (1-D -> list) or a batch of them (2-D -> list of lists).

        ``exact``: True scans every vector, False walks the HNSW graph, None (default)
        chooses by the tower's size (:attr:`crossmodal.index.Index.exact_threshold`).
        ``where``: only items this filter keeps (see :meth:`crossmodal.index.Index.search`).
        """
        return self.index.search(vectors, k, tower=tower, exact=exact, where=as_filter(where))

    def search_text(self, texts: str | Sequence[str], k: int = 10, *, tower: str = "image",
                    exact: bool | None = None, rerank: int | None = None, where: Where = None,
                    fuse: str | None = None, fuse_mode: str = "weighted", fuse_weight: float | None = None,
                    hybrid: bool = False, vectors: Any = None) -> Hits:
        """Encode ``texts`` (a ``str`` or a list of them) and search ``tower`` (text -> image by
        default, ``'text'`` for text -> caption).

        With ``rerank=R`` (>= k; needs a re-ranker) the top ``R`` hits are re-scored from
        their image files and the best ``k`` by ITM score are returned (``itm_score`` set,
        ``score`` kept). Unreadable files keep their rank with ``itm_score=None``; see
        :mod:`crossmodal.retrieval_rerank`.

        ``fuse="captions"`` (image tower only) ranks images by their similarity fused with
        their captions': ``fuse_mode="weighted"`` scores ``(1 - w) * cos(q, image) + w * max
        cos(q, caption)`` with ``w = fuse_weight`` (default 0.5), the best of every image;
        ``"rrf"`` by reciprocal-rank fusion of the two rankings (a rank counted within the top
        ``max(4k, 50)``). ``hybrid=True`` merges the keyword hits of the query
        (:meth:`crossmodal.index.Index.keyword_search`) with the vector hits by
        reciprocal-rank fusion. Both fused rankings report the fused score in ``score``; see
        :mod:`crossmodal.retrieval_fusion`. Re-ranking, if asked, re-scores the fused ranking.
        ``where`` filters every part. ``vectors``: the texts' embeddings when already
        computed (the service batches them), skipping the encoder.
        """
        items, single = text_batch(texts)
        k = positive_int("k", k)
        depth = self._rerank_depth(k, rerank, tower)
        flt = as_filter(where)
        mode, weight = self._fusion(fuse, fuse_mode, fuse_weight, tower)
        hybrid = bool(optional_bool("hybrid", hybrid))
        if vectors is None:
            vecs = self.encoder.encode_text(items)
        else:
            vecs = np.asarray(vectors, dtype=np.float32)
            vecs = vecs[None] if vecs.ndim == 1 else vecs
            if len(vecs) != len(items):
                raise InputError(f"vectors must hold one embedding per text: {len(items)} texts, {len(vecs)} vectors")
        n = depth or k
        if fuse is not None:
            hits = [caption_fused(self.index, v, candidate_depth(n) if hybrid else n, mode=mode, weight=weight,
                                  exact=exact, where=flt) for v in vecs]
        else:
            hits = self.index.search(vecs, candidate_depth(n) if hybrid else n, tower=tower, exact=exact,
                                     where=flt)
        if hybrid:
            hits = [hybrid_merged(h, self.index.keyword_search(q, candidate_depth(n), tower=tower, where=flt), n)
                    for h, q in zip(hits, items)]
        if depth is not None:
            assert self.reranker is not None  # checked by _rerank_depth
            hits = [rerank_hits(h, q, self.reranker, k) for h, q in zip(hits, items)]  # type: ignore[arg-type]
        return hits[0] if single else hits  # type: ignore[return-value]

    def search_image(self, images: Any, k: int = 10, *, tower: str = "image", exact: bool | None = None,
                     where: Where = None) -> Hits:
        """Encode ``images`` and search ``tower`` (image -> image by default, ``'text'`` for image -> caption).

        One image (a path, bytes, a PIL image or an ``(H, W, C)`` array) gives a list of
        hits; a list of them or an ``(n, H, W, C)`` array gives one list per image.
        ``where``: only items this filter keeps.
        """
        items, single = image_batch(images)
        k = positive_int("k", k)
        flt = as_filter(where)
        vecs = self.encoder.encode_image(items)
        hits = self.index.search(vecs, k, tower=tower, exact=exact, where=flt)
        return hits[0] if single else hits  # type: ignore[return-value]

    @staticmethod
    def _fusion(fuse: str | None, mode: str, weight: float | None, tower: str) -> tuple[str, float]:
        """Checked fusion settings; errors say what to pass instead."""
        if fuse is None:
            if weight is not None or mode != "weighted":
                raise InputError("fuse_mode and fuse_weight set how captions are fused: pass fuse='captions'")
            return mode, 0.0
        if fuse not in FUSE_CHOICES:
            raise InputError(f"fuse must be one of {list(FUSE_CHOICES)} or None, got {fuse!r}")
        if tower != "image":
            raise InputError(f"caption fusion ranks images: search tower='image', not {tower!r}")
        mode = fuse_mode(mode)
        if mode == "rrf" and weight is not None:
            raise InputError("fuse_weight weights the cosines of fuse_mode='weighted'; 'rrf' has no weight")
        return mode, fuse_weight(weight)

    def _rerank_depth(self, k: int, rerank: int | None, tower: str) -> int | None:
        """How many embedding hits to re-score (None: no re-ranking); errors say what to pass instead."""
        if rerank is None:
            return None
        if self.reranker is None:
            raise InputError("rerank=R needs reranker=crossmodal.Reranker.load(BUNDLE) (an ALBEF bundle with a "
                             "rerank tower): make the retriever with Retriever(encoder, index, reranker=...)")
        depth = positive_int("rerank", rerank)
        if depth < k:
            raise InputError(f"rerank must be an integer >= k ({k}): the number of embedding hits to re-score, "
                             f"got {rerank!r}")
        if tower != "image":
            raise InputError(f"re-ranking scores (text, image) pairs: search tower='image', not {tower!r}")
        return depth

    def __repr__(self) -> str:
        rr = f", reranker={self.reranker.bundle.name!r}" if self.reranker is not None else ""
        return f"Retriever(encoder={self.encoder!r}, index={self.index!r}{rr})"


__all__ = ["Retriever", "Hits", "Where", "FUSE_CHOICES"]
