"""Query encoding, search and re-ranking over one index: the object a service calls.

:class:`Retriever` joins an :class:`~crossmodal.encoder.Encoder`, an
:class:`~crossmodal.index.Index` of the same embedding space and, for ALBEF
bundles, a :class:`~crossmodal.rerank.Reranker`. The index stores and searches
vectors; the retriever turns texts and images into query vectors first and
re-scores hits afterwards, so neither the index nor the re-ranker imports the other.

>>> r = Retriever(crossmodal.load("models/clip-vit-b-32"), Index.open("photos.idx", read_only=True))  # doctest: +SKIP
>>> r.search_text("two dogs in the snow", k=5)                                                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .errors import IncompatibleTowersError, InputError
from .inputs import image_batch, positive_int, text_batch

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import Encoder
    from .index import Index, SearchResult
    from .rerank import Reranker



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
                f"the index {index.path} holds {index.space!r}; load the re-ranker from the bundle the index was built with")
        self.encoder = encoder
        self.index = index
        self.reranker = reranker

    def search_vector(self, vectors: Any, k: int = 10, *, tower: str = "image",
                      exact: bool | None = None) -> Any:
        """Top-``k`` hits for one query vector (-> list) or a batch of them (-> list of lists)."""
        return self.index.search(vectors, k, tower=tower, exact=exact)

    def search_text(self, texts: str | Sequence[str], k: int = 10, *, tower: str = "image",
                    exact: bool | None = None, rerank: int | None = None) -> Any:
        """Encode ``texts`` and search ``tower`` (text -> image by default, ``'text'`` for text -> caption).

        With ``rerank=R`` (>= k; needs a re-ranker) the top ``R`` embedding hits are
        re-scored from their image files and the best ``k`` by ITM score are returned
        (``itm_score`` set, ``score`` still the cosine); see :mod:`crossmodal.index_rerank`.
        """
        items, single = text_batch(texts)
        k = positive_int("k", k)
        depth = self._check_rerank(k, rerank, tower)
        vecs = self.encoder.encode_text(items)
        if depth is None:
            hits = self.index.search(vecs, k, tower=tower, exact=exact)
        else:
            from .index_rerank import rerank_hits

            assert self.reranker is not None  # checked above
            wide = self.index.search(vecs, depth, tower=tower, exact=exact)
            hits = [rerank_hits(h, q, self.reranker, k) for h, q in zip(wide, items)]
        return hits[0] if single else hits

    def search_image(self, images: Any, k: int = 10, *, tower: str = "image",
                     exact: bool | None = None) -> Any:
        """Encode ``images`` (one source or a batch, by :mod:`crossmodal.inputs`'s rule) and search
        ``tower`` (image -> image by default, ``tower='text'`` for image -> caption)."""
        items, single = image_batch(images)
        vecs = self.encoder.encode_image(items)
        hits = self.index.search(vecs, positive_int("k", k), tower=tower, exact=exact)
        return hits[0] if single else hits

    def _check_rerank(self, k: int, rerank: int | None, tower: str) -> int | None:
        if rerank is None:
            return None
        if self.reranker is None:
            raise InputError("rerank=R needs a Retriever made with reranker=crossmodal.Reranker.load(BUNDLE) "
                             "(an ALBEF bundle with a rerank tower)")
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


__all__ = ["Retriever"]
