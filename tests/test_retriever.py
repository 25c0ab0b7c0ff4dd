"""crossmodal.Retriever: one query or a batch on every entry point, argument checks, space checks, re-ranking."""

from __future__ import annotations

import time
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


# ---------------------------------------------------------------- caption fusion, hybrid, filters


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture()
def captioned(tmp_path: Path):
    """Two images a.png, b.png and a query q: a is closer to q by its pixels, b has a caption that is q."""
    rng = np.random.default_rng(7)
    q, other = unit(rng.standard_normal(DIM)), unit(rng.standard_normal(DIM))
    a, b = unit(0.5 * q + other), unit(0.4 * q + other)
    enc = FakeEncoder(dim=DIM)
    idx = Index.create(tmp_path / "idx", bundle=enc.bundle, root=tmp_path)
    idx.add(np.stack([a, b]), [{"path": "a.png", "sha256": "a" * 64}, {"path": "b.png", "sha256": "b" * 64}])
    cap = unit(0.9 * q + 0.1 * other)
    idx.add(cap[None], [{"path": "b.png", "caption": "a lighthouse at dusk", "sha256": "c" * 64}], tower="text")
    yield Retriever(enc, idx), q, {"a": a, "b": b, "cap": cap}
    idx.close()


def test_caption_fusion_ranks_the_image_with_a_matching_caption_first(captioned: Any) -> None:
    r, q, v = captioned
    plain = r.search_text("q", k=2, vectors=q[None])
    assert [Path(h.path).name for h in plain] == ["a.png", "b.png"]  # by pixels alone a wins
    cos = {name: float(q @ v[name]) for name in v}
    assert cos["a"] > cos["b"]
    fused = r.search_text("q", k=2, vectors=q[None], fuse="captions")
    assert [Path(h.path).name for h in fused] == ["b.png", "a.png"]
    # b: .5 * cos(q, b) + .5 * cos(q, its caption); a has no caption: its image cosine alone
    assert fused[0].score == pytest.approx(0.5 * cos["b"] + 0.5 * cos["cap"], abs=1e-5)
    assert fused[1].score == pytest.approx(cos["a"], abs=1e-5)
    # w = 0.1: the caption no longer outweighs a's better pixels
    w = {Path(h.path).name: h.score for h in r.search_text("q", k=2, vectors=q[None], fuse="captions",
                                                          fuse_weight=0.1)}
    assert list(w) == ["a.png", "b.png"]
    assert w["b.png"] == pytest.approx(0.9 * cos["b"] + 0.1 * cos["cap"], abs=1e-5)
    rrf = r.search_text("q", k=2, vectors=q[None], fuse="captions", fuse_mode="rrf")
    # b: 2nd by image, 1st (only) by caption; a: 1st by image, no caption
    assert [Path(h.path).name for h in rrf] == ["b.png", "a.png"]
    assert [h.score for h in rrf] == pytest.approx([1 / 62 + 1 / 61, 1 / 61])
    # the fake encoder path: a query text is encoded when no vectors are given; a batch gives a list per text
    batch = r.search_text(["a lighthouse", "x"], k=1, fuse="captions")
    assert len(batch) == 2 and all(len(row) == 1 for row in batch)


def _min_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks, best first, equal scores sharing the better rank (as crossmodal.evaluate ranks)."""
    return np.array([1 + int((scores > s).sum()) for s in scores])


def brute_force_fused(q: np.ndarray, images: np.ndarray, captions: dict[int, np.ndarray], *, mode: str, k: int,
                      weight: float = 0.5, keep: np.ndarray | None = None) -> dict[int, float]:
    """The documented fusion rule applied to every image (row i of ``images``; ``captions[i]``: its
    caption vectors), in plain numpy: what caption_fused must return the top of. rrf counts a
    term within the top ``max(4k, 50)`` of its ranking only."""
    keep = np.ones(len(images), bool) if keep is None else keep
    rows = np.flatnonzero(keep)
    cos = lambda m: (m / np.linalg.norm(m, axis=-1, keepdims=True)) @ (q / np.linalg.norm(q))  # noqa: E731
    a = cos(images[rows])
    b = np.array([cos(captions[i]).max() if i in captions else np.nan for i in rows])
    has = ~np.isnan(b)
    if mode == "weighted":
        fused = np.where(has, (1 - weight) * a + weight * np.nan_to_num(b), a)
    else:
        rank_b = np.zeros(len(rows))
        rank_b[has] = _min_ranks(b[has])
        window = max(4 * k, 50)
        rank_a = _min_ranks(a)
        fused = np.where(rank_a <= window, 1 / (60 + rank_a), 0.0) + np.where(has & (rank_b <= window),
                                                                              1 / (60 + rank_b), 0.0)
    return {int(i): float(f) for i, f in zip(rows, fused)}


def same_top(hits: Sequence[SearchResult], want: dict[int, float], k: int) -> None:
    """``hits`` are a top ``k`` of ``want`` (key -> score) with its scores, best first. Ties may be
    ordered either way (rrf scores tie often: 1/(60 + r) from either ranking alone)."""
    best = sorted(want.values(), reverse=True)[:k]
    assert len(hits) == len(best)
    np.testing.assert_allclose([h.score for h in hits], best, rtol=0, atol=2e-6)  # the top k scores, in order
    np.testing.assert_allclose([h.score for h in hits], [want[h.key] for h in hits], rtol=0, atol=2e-6)
    assert len({h.key for h in hits}) == len(hits)


@pytest.fixture()
def many_captioned(tmp_path: Path):
    """300 images (keys 0..299, path i.png); 140 of them have 1-2 caption items. The captions are
    drawn independently of their images, so an image's two rankings disagree: many fused hits
    are in one top-N list only. Images 150.. are added after ``t`` (``added_after``)."""
    rng = np.random.default_rng(11)
    q = unit(rng.standard_normal(DIM))
    images = np.stack([unit(0.3 * q + rng.standard_normal(DIM)) for _ in range(300)])
    captions = {int(i): np.stack([unit(0.6 * q + rng.standard_normal(DIM)) for _ in range(1 + int(i) % 2)])
                for i in rng.choice(300, 140, replace=False)}
    enc = FakeEncoder(dim=DIM)
    idx = Index.create(tmp_path / "idx", bundle=enc.bundle, root=tmp_path)
    owners = [i for i, caps in captions.items() for _ in caps]
    idx.add(np.concatenate(list(captions.values())),
            [{"path": f"{i}.png", "caption": f"caption of {i}"} for i in owners],
            keys=range(10_000, 10_000 + len(owners)), tower="text")
    idx.add(images[:150], [{"path": f"{i}.png"} for i in range(150)], keys=range(150))
    t = time.time()
    time.sleep(0.01)
    idx.add(images[150:], [{"path": f"{i}.png"} for i in range(150, 300)], keys=range(150, 300))
    yield Retriever(enc, idx), q, images, captions, t
    idx.close()


@pytest.mark.parametrize("mode", ["weighted", "rrf"])
@pytest.mark.parametrize("k", [1, 5, 12, 40])
def test_caption_fusion_equals_the_rule_over_every_image(many_captioned: Any, mode: str, k: int) -> None:
    r, q, images, captions, _ = many_captioned
    want = brute_force_fused(q, images, captions, mode=mode, k=k)
    best = sorted(want, key=lambda i: -want[i])[:k]
    hits = r.search_text("q", k=k, vectors=q[None], fuse="captions", fuse_mode=mode)
    same_top(hits, want, k)
    assert [Path(h.path).name for h in hits] == [f"{h.key}.png" for h in hits]  # type: ignore[arg-type]
    # The point of the check: hits found by one top-N list only (N = max(4k, 50)) carry their true score.
    n = max(4 * k, 50)
    by_image = set(np.argsort(-(images @ q))[:n].tolist())
    cap_scores = sorted(((float(c @ q), i) for i, caps in captions.items() for c in caps), reverse=True)[:n]
    by_caption = {i for _, i in cap_scores}
    if k >= (5 if mode == "weighted" else 12):  # rrf's top 5 here: all in both lists
        assert any((i in by_image) != (i in by_caption) for i in best)


@pytest.mark.parametrize("mode", ["weighted", "rrf"])
def test_search_and_eval_fuse_by_the_same_rule(many_captioned: Any, mode: str) -> None:
    # crossmodal eval's fused ranks over all images (one query, each image in turn as its ground truth)
    from crossmodal.evaluate import CaptionFusion, ranks_text_to_image_fused

    r, q, images, captions, _ = many_captioned
    owner = np.array([i for i, caps in captions.items() for _ in caps])
    cap = np.concatenate(list(captions.values()))
    ranks = ranks_text_to_image_fused(np.repeat(q[None], 300, 0), images, cap, owner, np.arange(300),
                                      CaptionFusion(mode=mode), leave_one_out=False, window=50)
    hits = [h.key for h in r.search_text("q", k=12, vectors=q[None], fuse="captions", fuse_mode=mode)]  # window 50
    # eval counts ties against: a group of t tied images at positions p.. all rank p + t - 1
    assert set(np.flatnonzero(ranks < 12).tolist()) <= set(hits)
    assert ranks[hits].tolist() == sorted(ranks[hits]) and all(ranks[h] >= j for j, h in enumerate(hits))


@pytest.mark.parametrize("mode", ["weighted", "rrf"])
def test_caption_fusion_with_filters_equals_the_rule_over_the_matching_images(many_captioned: Any,
                                                                            mode: str) -> None:
    r, q, images, captions, t = many_captioned
    names = np.array([f"{i}.png" for i in range(300)])
    captioned = np.isin(np.arange(300), list(captions))
    cases = [({"path_prefix": "1"}, np.char.startswith(names, "1")),
             ({"added_after": t}, np.arange(300) >= 150),  # caption items predate every image: checked per image
             ({"has_caption": True}, captioned),
             ({"path_prefix": "2", "added_after": t}, np.char.startswith(names, "2") & (np.arange(300) >= 150))]
    for where, keep in cases:
        want = brute_force_fused(q, images, captions, mode=mode, k=10, keep=keep)
        hits = r.search_text("q", k=10, vectors=q[None], fuse="captions", fuse_mode=mode, where=where)
        same_top(hits, want, 10)
        assert all(keep[h.key] for h in hits), where
    # has_caption=False: no caption to fuse, the image ranking (weighted: the image cosine itself)
    plain = r.search_text("q", k=10, vectors=q[None], where={"has_caption": False})
    fused = r.search_text("q", k=10, vectors=q[None], fuse="captions", fuse_mode=mode, where={"has_caption": False})
    assert [h.key for h in fused] == [h.key for h in plain]


@pytest.mark.parametrize("mode", ["weighted", "rrf"])
def test_caption_fusion_over_shards_equals_one_index(many_captioned: Any, tmp_path: Path, mode: str) -> None:
    from crossmodal.index.sharded import open_many, split_index

    r, q, images, captions, t = many_captioned
    r.index.save()
    paths = split_index(r.index, 3, tmp_path / "shards")
    want = brute_force_fused(q, images, captions, mode=mode, k=12)
    with open_many(paths) as shards:
        hits = Retriever(r.encoder, shards).search_text("q", k=12, vectors=q[None], fuse="captions", fuse_mode=mode)
        same_top(hits, want, 12)
        late = Retriever(r.encoder, shards).search_text("q", k=5, vectors=q[None], fuse="captions",
                                                        fuse_mode=mode, where={"added_after": t})
    same_top(late, brute_force_fused(q, images, captions, mode=mode, k=5, keep=np.arange(300) >= 150), 5)


def test_caption_fusion_on_the_graph_scores_each_candidate_from_its_vectors(many_captioned: Any) -> None:
    # exact=False: one round of graph searches (no deepening), but every weighted score is still exact
    r, q, images, captions, _ = many_captioned
    want = brute_force_fused(q, images, captions, mode="weighted", k=10)
    hits = r.search_text("q", k=10, vectors=q[None], fuse="captions", exact=False)
    assert len(hits) == 10
    np.testing.assert_allclose([h.score for h in hits], [want[h.key] for h in hits], rtol=0, atol=2e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hybrid_merges_keyword_and_vector_hits_by_rrf(captioned: Any) -> None:
    r, q, _ = captioned
    plain = r.search_text("lighthouse", k=2, vectors=q[None])
    assert [Path(h.path).name for h in plain] == ["a.png", "b.png"]
    kw = r.index.keyword_search("lighthouse", 5)
    assert [Path(h.path).name for h in kw] == ["b.png"]  # through its caption item
    hy = r.search_text("lighthouse", k=2, vectors=q[None], hybrid=True)
    assert [Path(h.path).name for h in hy] == ["b.png", "a.png"]
    assert [h.score for h in hy] == pytest.approx([1 / 62 + 1 / 61, 1 / 61])
    # a word no item has: the vector ranking, RRF-scored
    none = r.search_text("zebra", k=2, vectors=q[None], hybrid=True)
    assert [h.key for h in none] == [h.key for h in plain] and none[0].score == pytest.approx(1 / 61)
    both = r.search_text("lighthouse", k=2, vectors=q[None], hybrid=True, fuse="captions")
    assert Path(both[0].path).name == "b.png"
    with pytest.raises(InputError):
        r.search_text("  ", k=2, vectors=q[None], hybrid=True)  # no word to search for


def test_where_filters_every_entry_point(retriever: Retriever) -> None:
    from crossmodal.index import Filter

    enc = retriever.encoder
    red = enc.encode_text(["red"])[0]
    assert [h.caption for h in retriever.search_vector(red, k=2, where=Filter(path_prefix="b"))] == ["black", "blue"]
    assert [h.caption for h in retriever.search_text("red", k=6, where={"path_prefix": "b"})] == ["black", "blue"]
    assert [h.caption for h in retriever.search_image(solid("red"), k=1, where={"path_prefix": "g"})] == ["green"]
    assert retriever.search_text("red", k=3, where={"added_after": 4102444800}) == []  # 2100-01-01
    fused = retriever.search_text("red", k=6, where={"path_prefix": "b"}, fuse="captions")
    assert sorted(h.caption for h in fused) == ["black", "blue"]
    with pytest.raises(InputError, match=r"unknown filter field\(s\) \['colour'\]"):
        retriever.search_text("red", k=1, where={"colour": "red"})
    with pytest.raises(InputError, match="where must be"):
        retriever.search_vector(red, k=1, where="b")  # type: ignore[arg-type]


def test_fusion_and_hybrid_argument_errors(captioned: Any) -> None:
    r, q, _ = captioned
    with pytest.raises(InputError, match=r"fuse must be one of \['captions'\]"):
        r.search_text("q", k=1, fuse="keywords")
    with pytest.raises(InputError, match="tower='image', not 'text'"):
        r.search_text("q", k=1, fuse="captions", tower="text")
    with pytest.raises(InputError, match="pass fuse='captions'"):
        r.search_text("q", k=1, fuse_weight=0.3)
    with pytest.raises(InputError, match="'rrf' has no weight"):
        r.search_text("q", k=1, fuse="captions", fuse_mode="rrf", fuse_weight=0.3)
    with pytest.raises(InputError, match="fuse_weight must be a number"):
        r.search_text("q", k=1, fuse="captions", fuse_weight=3)
    with pytest.raises(InputError, match="hybrid must be"):
        r.search_text("q", k=1, hybrid="yes")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="one embedding per text: 2 texts, 1 vectors"):
        r.search_text(["q", "r"], k=1, vectors=q[None])
    assert [h.key for h in r.search_text("q", k=2, vectors=q)] == [h.key for h in r.search_vector(q, k=2)]


# ---------------------------------------------------------------- the search command


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"


@pytest.fixture(scope="module")
def example_index(tiny_clip_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example images with their captions (image and caption towers), built by `crossmodal index build`."""
    from crossmodal.cli import main

    out = tmp_path_factory.mktemp("fusion") / "examples.idx"
    assert main(["index", "build", str(tiny_clip_bundle), "--images", str(EXAMPLES), "--captions",
                 str(EXAMPLES / "captions.jsonl"), "--out", str(out), "--no-progress", "--json"]) == 0
    return out


def _search(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    import json

    from crossmodal.cli import main

    assert main(["search", *argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_search_command_fuses_filters_and_merges_as_the_library(tiny_clip_bundle: Path, example_index: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import crossmodal
    from crossmodal.index import Filter

    enc = crossmodal.load(tiny_clip_bundle)
    q = "a red circle"
    with Index.open(example_index, read_only=True) as idx:
        r = Retriever(enc, idx)
        cases = [
            (["--fuse", "captions"], r.search_text(q, k=3, fuse="captions")),
            (["--fuse", "captions", "--fuse-weight", "0.2"], r.search_text(q, k=3, fuse="captions", fuse_weight=0.2)),
            (["--fuse", "captions", "--fuse-mode", "rrf"], r.search_text(q, k=3, fuse="captions", fuse_mode="rrf")),
            (["--hybrid"], r.search_text(q, k=3, hybrid=True)),
            (["--path-prefix", str(EXAMPLES / "s")], r.search_text(q, k=3, where=Filter(path_prefix=str(EXAMPLES / "s")))),
            (["--no-caption"], []),
            (["--has-caption", "--added-after", "2001-01-01"], r.search_text(q, k=3)),
        ]
        plain = r.search_text(q, k=3)
    for argv, want in cases:
        got = _search(capsys, str(example_index), q, "-k", "3", *argv)
        assert [row["key"] for row in got["results"]] == [h.key for h in want], argv
        np.testing.assert_allclose([row["score"] for row in got["results"]], [h.score for h in want], atol=1e-6)
    # The tiny bundle's weights are random: by pixels the red circle is not in the top 3, but its caption
    # is the query, so fusion puts it first (the README's measured example).
    assert "red_circle.png" not in [Path(h.path).name for h in plain]  # type: ignore[arg-type]
    fused = _search(capsys, str(example_index), q, "-k", "3", "--fuse", "captions")
    assert Path(fused["results"][0]["path"]).name == "red_circle.png"
    assert fused["fuse"] == {"what": "captions", "mode": "weighted", "weight": 0.5} and fused["hybrid"] is False
    filtered = _search(capsys, str(example_index), q, "--added-after", "1700000000", "--no-caption")
    assert filtered["filter"] == {"added_after": 1700000000.0, "has_caption": False} and filtered["fuse"] is None
    # a file name is a keyword: --hybrid finds the checkerboard by its name among the vector hits
    hy = _search(capsys, str(example_index), "checkerboard", "-k", "1", "--hybrid")
    assert Path(hy["results"][0]["path"]).name == "checkerboard.png" and hy["hybrid"] is True


@pytest.mark.parametrize("argv, message", [
    (["--fuse-weight", "0.3"], "add --fuse captions"),
    (["--fuse", "captions", "--fuse-mode", "rrf", "--fuse-weight", "0.3"], "rrf has no weight"),
    (["--fuse", "captions", "--target", "text"], "tower='image', not 'text'"),
    (["--added-after", "last tuesday"], "neither unix seconds nor an ISO 8601 date"),
])
def test_search_command_refuses_bad_ranking_flags(example_index: Path, capsys: pytest.CaptureFixture[str],
                                                  argv: list[str], message: str) -> None:
    from crossmodal.cli import main

    assert main(["search", str(example_index), "a red circle", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--fuse", "captions", "--fuse-weight", "2"], "expected a number in [0, 1], got '2'"),
    (["--has-caption", "--no-caption"], "not allowed with argument"),
    (["--fuse", "words"], "invalid choice: 'words'"),
])
def test_search_command_usage_errors(example_index: Path, capsys: pytest.CaptureFixture[str],
                                     argv: list[str], message: str) -> None:
    from crossmodal.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["search", str(example_index), "a red circle", *argv])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_search_command_says_when_the_filter_keeps_nothing(example_index: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodal.cli import main

    # a prefix relative to the current directory, not to the indexed folder: nothing matches, and it says why
    assert main(["search", str(example_index), "a red circle", "--path-prefix", "examples/images/s"]) == 0
    out = capsys.readouterr().out
    assert "no item matches the filter" in out and str(EXAMPLES) in out and "empty" not in out
    assert main(["search", str(example_index), "a red circle", "--added-after", "2100-01-01"]) == 0
    assert capsys.readouterr().out.strip() == "(no item matches the filter)"


def test_search_command_ranking_flags_need_a_text_query(example_index: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodal.cli import main

    assert main(["search", str(example_index), "--image", str(EXAMPLES / "red_circle.png"), "--hybrid"]) == 2
    assert "give a query text, not --image" in capsys.readouterr().err
    got = _search(capsys, str(example_index), "--image", str(EXAMPLES / "red_circle.png"), "-k", "2",
                  "--path-prefix", str(EXAMPLES / "red"))
    assert [Path(r["path"]).name for r in got["results"]] == ["red_circle.png"]  # filters apply to image queries


def test_rerank_rescores_the_fused_ranking(captioned: Any) -> None:
    r, q, v = captioned
    rr = Retriever(r.encoder, r.index, reranker=FakeReranker({"a.png": 0.0, "b.png": 1.0}))
    fused = r.search_text("q", k=2, vectors=q[None], fuse="captions")
    # ITM prefers b, as fusion does: order kept, each hit keeps its fused score and gains its ITM score
    hits = rr.search_text("q", k=2, rerank=2, vectors=q[None], fuse="captions")
    assert [h.key for h in hits] == [h.key for h in fused] and [h.itm_score for h in hits] == [1.0, 0.0]
    assert [h.score for h in hits] == pytest.approx([h.score for h in fused])
    flipped = Retriever(r.encoder, r.index, reranker=FakeReranker({"a.png": 1.0, "b.png": 0.0}))
    top = flipped.search_text("q", k=1, rerank=2, vectors=q[None], fuse="captions")
    assert [Path(h.path).name for h in top] == ["a.png"]  # type: ignore[arg-type]
    assert top[0].score == pytest.approx(float(q @ v["a"]), abs=1e-5)  # a's fused score: no caption, its cosine
