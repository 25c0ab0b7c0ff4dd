"""crossmodal.Retriever: one query or a batch on every entry point, argument checks, space checks, re-ranking."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from PIL import Image

from crossmodal import Retriever
from crossmodal.errors import IncompatibleTowersError, InputError
from crossmodal.index import Index, SearchResult
from crossmodal.manifest import BundleInfo
from helpers.fake_encoder import COLOURS, FakeEncoder

DIM = 16
NAMES = ["red", "green", "blue", "yellow", "black", "white"]


def solid(colour: str, size: int = 12) -> np.ndarray:
    """An (H, W, 3) uint8 image of one colour."""
    return np.broadcast_to(np.asarray(COLOURS[colour], np.uint8), (size, size, 3)).copy()


@pytest.fixture()
def retriever(tmp_path: Path):
    enc = FakeEncoder(dim=DIM)
    idx = Index.create(tmp_path / "idx", bundle=enc.bundle, root=tmp_path)
    idx.add(enc.encode_image([solid(c) for c in NAMES]), [{"path": f"{c}.png", "caption": c} for c in NAMES])
    idx.add(enc.encode_text([f"a {c} thing" for c in NAMES]), [{"caption": f"a {c} thing"} for c in NAMES],
            tower="text")
    yield Retriever(enc, idx)
    idx.close()


def captions(hits: Sequence[SearchResult]) -> list[str | None]:
    return [h.caption for h in hits]


def test_search_text_one_string_or_a_batch(retriever: Retriever) -> None:
    one = retriever.search_text("a red car", k=2)
    assert isinstance(one, list) and all(isinstance(h, SearchResult) for h in one)
    assert len(one) == 2 and one[0].caption == "red" and one[0].tower == "image"
    batch = retriever.search_text(["blue sky", "red"], k=1)
    assert [captions(row) for row in batch] == [["blue"], ["red"]]
    assert captions(retriever.search_text(("yellow",), k=1)[0]) == ["yellow"]  # a tuple is a batch too
    assert retriever.search_text([], k=3) == []
    # text -> caption
    assert retriever.search_text("green", k=1, tower="text")[0].caption == "a green thing"


def test_search_image_one_image_a_list_or_a_4d_batch(retriever: Retriever, tmp_path: Path) -> None:
    one = retriever.search_image(solid("green"), k=2)  # (H, W, 3): one image -> one list
    assert len(one) == 2 and isinstance(one[0], SearchResult) and one[0].caption == "green"
    four_d = np.stack([solid("blue"), solid("yellow")])  # (2, H, W, 3) uint8: a batch of two
    batch = retriever.search_image(four_d, k=2)
    assert len(batch) == 2 and all(len(row) == 2 for row in batch)
    assert [row[0].caption for row in batch] == ["blue", "yellow"]
    as_list = retriever.search_image([solid("blue"), solid("yellow")], k=2)
    assert [[h.key for h in row] for row in as_list] == [[h.key for h in row] for row in batch]
    path = tmp_path / "probe.png"
    Image.fromarray(solid("black")).save(path)
    assert retriever.search_image(str(path), k=1)[0].caption == "black"  # a path: one image
    assert retriever.search_image(path, k=1, tower="text")[0].caption == "a black thing"  # image -> caption


def test_search_vector_1d_or_2d(retriever: Retriever) -> None:
    enc = retriever.encoder
    vecs = enc.encode_text(["red", "white"])
    one = retriever.search_vector(vecs[0], k=3)
    assert len(one) == 3 and isinstance(one[0], SearchResult) and one[0].caption == "red"
    batch = retriever.search_vector(vecs, k=3)
    assert len(batch) == 2 and [row[0].caption for row in batch] == ["red", "white"]
    assert [h.key for h in batch[0]] == [h.key for h in one]
    assert retriever.search_vector(vecs[:1], k=1, exact=False)[0][0].caption == "red"


@pytest.mark.parametrize("bad", [0, -1, True, False, 2.0, "3", None])
def test_k_must_be_a_positive_integer_on_every_entry_point(retriever: Retriever, bad: Any) -> None:
    vec = retriever.encoder.encode_text(["red"])[0]
    for call in (lambda: retriever.search_text("red", k=bad), lambda: retriever.search_image(solid("red"), k=bad),
                 lambda: retriever.search_vector(vec, k=bad)):
        with pytest.raises(InputError, match="k must be a positive integer"):
            call()
    assert len(retriever.search_text("red", k=np.int64(2))) == 2  # numpy integers are integers


def test_bad_queries_are_refused(retriever: Retriever) -> None:
    with pytest.raises(InputError, match="text #1"):
        retriever.search_text(["red", 7], k=1)  # type: ignore[list-item]
    with pytest.raises(InputError, match="exact must be"):
        retriever.search_text("red", k=1, exact="yes")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="tower='nope'"):
        retriever.search_vector(np.ones(DIM, np.float32), k=1, tower="nope")
    with pytest.raises(InputError, match="16-dimensional"):
        retriever.search_vector(np.ones(DIM + 1, np.float32), k=1)


def test_encoder_of_another_space_or_dim_is_refused(tmp_path: Path) -> None:
    enc = FakeEncoder(dim=DIM)
    with Index.create(tmp_path / "idx", bundle=enc.bundle) as idx:
        with pytest.raises(IncompatibleTowersError, match="fake-space"):
            Retriever(FakeEncoder(dim=DIM, name="other", space="other-space"), idx)
        with pytest.raises(IncompatibleTowersError, match="dim 16"):
            Retriever(FakeEncoder(dim=8), idx)
        with pytest.raises(IncompatibleTowersError, match="load the re-ranker from the bundle"):
            Retriever(enc, idx, reranker=FakeReranker({}, space="other-space"))
        assert "reranker='fake-albef'" in repr(Retriever(enc, idx, reranker=FakeReranker({})))


# ---------------------------------------------------------------- re-ranking


class FakeReranker:
    """The part of crossmodal.Reranker that re-ranking uses; the ITM score of an image is looked up by its file
    name, and files named in ``unreadable`` fail to decode."""

    def __init__(self, itm: dict[str, float], *, space: str = "fake-space", unreadable: Sequence[str] = ()):
        self.bundle = BundleInfo(name="fake-albef", family="albef", dim=DIM, space=space, logit_scale=1.0,
                                 towers={"image": "image", "text": "text", "rerank": "rerank"})
        self._itm = itm
        self._unreadable = set(unreadable)
        self.queries: list[str] = []

    def text_states(self, texts: Sequence[str]) -> list[str]:
        self.queries.extend(texts)
        return list(texts)

    def preprocess_readable(self, paths: Sequence[str]) -> tuple[np.ndarray, list[int], dict[int, str]]:
        ok = [i for i, p in enumerate(paths) if Path(p).name not in self._unreadable]
        failed = {i: f"cannot read {p}" for i, p in enumerate(paths) if i not in ok}
        return np.asarray([self._itm[Path(paths[i]).name] for i in ok], np.float32), ok, failed

    def pixel_states(self, pixels: np.ndarray) -> np.ndarray:
        return pixels

    def score_states(self, states: np.ndarray, text: list[str]) -> np.ndarray:
        return states[:, None]


def test_rerank_orders_the_top_r_by_itm_and_keeps_the_cosine(retriever: Retriever) -> None:
    plain = retriever.search_text("red", k=4)
    itm = {f"{c}.png": float(i) for i, c in enumerate(NAMES)}  # white best, red worst
    rr = Retriever(retriever.encoder, retriever.index, reranker=FakeReranker(itm))
    hits = rr.search_text("red", k=2, rerank=4)
    top4 = sorted(plain, key=lambda h: -itm[Path(h.path).name])  # type: ignore[arg-type]
    assert [h.key for h in hits] == [h.key for h in top4[:2]]
    assert [h.itm_score for h in hits] == [itm[Path(h.path).name] for h in top4[:2]]  # type: ignore[arg-type]
    cosine = {h.key: h.score for h in plain}
    assert all(h.score == pytest.approx(cosine[h.key]) for h in hits)
    assert all(h.itm_score is None for h in plain)
    batch = rr.search_text(["red", "blue"], k=3, rerank=4)
    assert len(batch) == 2 and all(len(row) == 3 and row[0].itm_score is not None for row in batch)
    assert rr.reranker.queries == ["red", "red", "blue"]  # type: ignore[union-attr]


def test_rerank_keeps_an_unreadable_file_at_its_embedding_rank(retriever: Retriever) -> None:
    plain = retriever.search_text("red", k=3)
    lost = Path(plain[1].path).name  # type: ignore[arg-type]
    itm = {f"{c}.png": float(i) for i, c in enumerate(NAMES)}
    rr = Retriever(retriever.encoder, retriever.index, reranker=FakeReranker(itm, unreadable=[lost]))
    hits = rr.search_text("red", k=3, rerank=3)
    assert hits[1].key == plain[1].key and hits[1].itm_score is None
    rest = [h for h in hits if h.itm_score is not None]
    assert [h.itm_score for h in rest] == sorted((h.itm_score for h in rest), reverse=True)  # type: ignore[misc]


def test_rerank_argument_errors(retriever: Retriever) -> None:
    with pytest.raises(InputError, match="needs reranker="):
        retriever.search_text("red", k=2, rerank=3)  # no re-ranker given to the retriever
    rr = Retriever(retriever.encoder, retriever.index, reranker=FakeReranker({}))
    with pytest.raises(InputError, match=r"integer >= k \(2\)"):
        rr.search_text("red", k=2, rerank=1)
    with pytest.raises(InputError, match="rerank must be a positive integer"):
        rr.search_text("red", k=2, rerank=True)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="tower='image'"):
        rr.search_text("red", k=2, rerank=3, tower="text")
    assert rr.reranker.queries == []  # type: ignore[union-attr]  # refused before any work
