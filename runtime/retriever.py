"""Query encoding, search and re-ranking over one index: the object a service calls.

:class:`Retriever` joins an :class:`~crossmodal.encoder.Encoder`, an
:class:`~crossmodal.index.Index` of the same embedding space and, for ALBEF
bundles, a :class:`~crossmodal.rerank.Reranker`. The index stores and searches
vectors; the retriever turns texts and images into query vectors first and
re-scores hits afterwards (:mod:`crossmodal.retrieval_rerank`), so neither the
index nor the re-ranker imports the other.

Every search takes one query or a batch, by the rule of :mod:`crossmodal.inputs`,
and answers one list of hits for one query, a list of lists for a batch.

>>> r = Retriever(crossmodal.load("models/clip-vit-b-32"), Index.open("photos.idx", read_only=True))  # doctest: +SKIP
>>> r.search_text("two dogs in the snow", k=5)                                                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence, Union

from .errors import IncompatibleTowersError, InputError
from .inputs import image_batch, positive_int, text_batch
from .retrieval_rerank import rerank_hits

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import Encoder
    from .index import Index, SearchResult
    from .rerank import Reranker

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

    def search_vector(self, vectors: Any, k: int = 10, *, tower: str = "image", exact: bool | None = None) -> Hits:
        """Top-``k`` hits for one query vector (1-D -> list) or a batch of them (2-D -> list of lists).

        ``exact``: True scans every vector, False walks the HNSW graph, None (default)
        chooses by the tower's size (:attr:`crossmodal.index.Index.exact_threshold`).
        """
        return self.index.search(vectors, k, tower=tower, exact=exact)

    def search_text(self, texts: str | Sequence[str], k: int = 10, *, tower: str = "image",
                    exact: bool | None = None, rerank: int | None = None) -> Hits:
        """Encode ``texts`` (a ``str`` or a list of them) and search ``tower`` (text -> image by
        default, ``'text'`` for text -> caption).

        With ``rerank=R`` (>= k; needs a re-ranker) the top ``R`` embedding hits are
        re-scored from their image files and the best ``k`` by ITM score are returned
        (``itm_score`` set, ``score`` still the cosine). Unreadable files keep their
        embedding rank with ``itm_score=None``; see :mod:`crossmodal.retrieval_rerank`.
        """
        items, single = text_batch(texts)
        k = positive_int("k", k)
        depth = self._rerank_depth(k, rerank, tower)
        vecs = self.encoder.encode_text(items)
        if depth is None:
            hits = self.index.search(vecs, k, tower=tower, exact=exact)
        else:
            assert self.reranker is not None  # checked by _rerank_depth
            wide = self.index.search(vecs, depth, tower=tower, exact=exact)
            hits = [rerank_hits(h, q, self.reranker, k) for h, q in zip(wide, items)]  # type: ignore[arg-type]
        return hits[0] if single else hits  # type: ignore[return-value]

    def search_image(self, images: Any, k: int = 10, *, tower: str = "image", exact: bool | None = None) -> Hits:
        """Encode ``images`` and search ``tower`` (image -> image by default, ``'text'`` for image -> caption).

        One image (a path, bytes, a PIL image or an ``(H, W, C)`` array) gives a list of
        hits; a list of them or an ``(n, H, W, C)`` array gives one list per image.
        """
        items, single = image_batch(images)
        k = positive_int("k", k)
        vecs = self.encoder.encode_image(items)
        hits = self.index.search(vecs, k, tower=tower, exact=exact)
        return hits[0] if single else hits  # type: ignore[return-value]

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


__all__ = ["Retriever", "Hits"]
