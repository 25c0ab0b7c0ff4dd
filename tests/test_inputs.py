"""One rule for "one item or a batch" (crossmodal.inputs) and the argument checks, on every entry point.

The rule's unit cases first; then each entry point that takes images gets the case that
once differed between them: a uint8 ``(2, H, W, 3)`` array is a batch of two images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import crossmodal
from crossmodal.errors import InputError, TextInputError
from crossmodal.evaluate import KarpathySplit, evaluate, evaluate_embeddings
from crossmodal.index import Index
from crossmodal.inputs import (
    image_batch,
    is_int,
    non_negative_int,
    optional_bool,
    positive_int,
    text_batch,
    vector_batch,
)
from crossmodal.retriever import Retriever
from helpers.albef import export_tiny_bundle, require_golden


def _pixels(seed: int, h: int = 24, w: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


PAIR = np.stack([_pixels(1), _pixels(2)])  # (2, H, W, 3) uint8: a batch of two images


# ----------------------------------------------------------------------------- the rule


def test_text_batch_str_is_one_text_and_sequences_are_batches() -> None:
    assert text_batch("a cat") == (["a cat"], True)
    assert text_batch(["a cat", "a dog"]) == (["a cat", "a dog"], False)
    assert text_batch(("a cat",)) == (["a cat"], False)
    assert text_batch([]) == ([], False)
    items, single = text_batch(np.array(["a cat", "a dog"]))
    assert (items, single) == (["a cat", "a dog"], False)
    with pytest.raises(TextInputError, match=r"text #1 is a bytes"):
        text_batch(["a cat", b"a dog"])
    for bad in (b"a cat", 7, None, np.array([["a", "b"]]), (t for t in ["a"])):
        with pytest.raises(TextInputError, match="must be a str or a list of str"):
            text_batch(bad)


def test_image_batch_sources_are_single_and_lists_and_4d_arrays_are_batches(tmp_path: Path) -> None:
    pil = Image.fromarray(_pixels(3))
    for one in ("cat.jpg", tmp_path / "cat.jpg", b"\xff\xd8", bytearray(b"\xff\xd8"), pil,
                _pixels(4), _pixels(4)[..., 0]):  # path str, PathLike, bytes, PIL, HxWx3 and HxW arrays
        items, single = image_batch(one)
        assert single and len(items) == 1 and items[0] is one
    items, single = image_batch(PAIR)
    assert not single and len(items) == 2
    assert all(np.array_equal(a, b) for a, b in zip(items, PAIR))
    assert image_batch(["a.jpg", pil]) == (["a.jpg", pil], False)
    assert image_batch(("a.jpg",)) == (["a.jpg"], False)
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = "a.jpg", _pixels(5)
    items, single = image_batch(objects)
    assert not single and items[0] == "a.jpg" and items[1].shape == (24, 20, 3)
    assert image_batch([]) == ([], False)


def test_vector_batch() -> None:
    assert vector_batch(np.zeros(4)) is True
    assert vector_batch(np.zeros((1, 4))) is False
    assert vector_batch([0.0, 1.0]) is True


def test_counts_refuse_bool_and_accept_numpy_ints() -> None:
    assert positive_int("k", np.int64(3)) == 3 and type(positive_int("k", np.int32(3))) is int
    assert non_negative_int("n", 0) == 0 and is_int(np.uint8(1)) and not is_int(True)
    for bad in (True, False, np.bool_(True), 0, -2, 2.0, "3", None):
        with pytest.raises(InputError, match="k must be a positive integer"):
            positive_int("k", bad)
    for bad in (True, -1, 1.5):
        with pytest.raises(InputError, match="n must be an integer >= 0"):
            non_negative_int("n", bad)
    assert [optional_bool("exact", v) for v in (True, False, None)] == [True, False, None]
    with pytest.raises(InputError, match="exact must be True, False or None"):
        optional_bool("exact", 1)


# ----------------------------------------------------------------------------- the encoder


@pytest.fixture(scope="module")
def enc(tiny_clip_bundle: Path) -> crossmodal.Encoder:
    return crossmodal.load(tiny_clip_bundle)


def test_encode_image_4d_array_is_a_batch_and_one_image_is_one_row(enc: crossmodal.Encoder) -> None:
    both = enc.encode_image(PAIR)
    assert both.shape == (2, enc.dim)
    np.testing.assert_array_equal(both, enc.encode_image(list(PAIR)))
    for i in range(2):
        one = enc.encode_image(PAIR[i])  # a single HxWx3 array: one image, still a 2-D result
        assert one.shape == (1, enc.dim)
        np.testing.assert_allclose(one[0], both[i], atol=1e-6)
    assert not np.allclose(both[0], both[1])  # two different images, not one image seen twice
    # several batches (decode-ahead in the shared pool) give the rows of one batch
    many = np.stack([_pixels(s) for s in range(5)])
    np.testing.assert_allclose(enc.encode_image(many, batch_size=2), enc.encode_image(many), atol=1e-6)


def test_encode_image_takes_every_source_kind(enc: crossmodal.Encoder, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(PAIR[0]).save(path)  # lossless: decodes to the same pixels
    ref = enc.encode_image(PAIR[0])
    for source in (str(path), path, path.read_bytes(), Image.open(path)):
        np.testing.assert_allclose(enc.encode_image(source), ref, atol=1e-6)
    assert enc.encode_image([str(path), PAIR[1]]).shape == (2, enc.dim)


def test_encode_text_str_is_one_row_and_arrays_are_batches(enc: crossmodal.Encoder) -> None:
    one = enc.encode_text("a red circle")
    assert one.shape == (1, enc.dim)
    both = enc.encode_text(np.array(["a red circle", "a blue square"]))
    assert both.shape == (2, enc.dim)
    np.testing.assert_allclose(both[0], one[0], atol=1e-6)


def test_batch_size_refuses_bool_and_accepts_numpy_ints(enc: crossmodal.Encoder) -> None:
    for call in (lambda b: enc.encode_text(["a", "b"], batch_size=b), lambda b: enc.encode_image(PAIR, batch_size=b)):
        for bad in (True, 0, 1.0):
            with pytest.raises(InputError, match="batch_size must be a positive integer"):
                call(bad)
        assert call(np.int64(1)).shape == (2, enc.dim)


def test_rank_one_image_gives_a_row_and_a_4d_batch_one_row_per_image(enc: crossmodal.Encoder) -> None:
    texts = ["a red circle", "a blue square", "London at night"]
    rows = enc.rank(PAIR, texts)
    assert rows.shape == (2, 3) and rows.dtype == np.float32
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-6)
    for i in range(2):
        one = enc.rank(PAIR[i], texts)
        assert one.shape == (3,)
        np.testing.assert_allclose(one, rows[i], atol=1e-6)
    # the probabilities are softmax(logit_scale * cosine) of the encoder's own embeddings
    cos = enc.encode_image(PAIR) @ enc.encode_text(texts).T
    logits = enc.bundle.logit_scale * cos.astype(np.float64)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(rows, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
    with pytest.raises(TextInputError, match="list of candidate texts"):
        enc.rank(PAIR[0], "a red circle")


def test_retriever_search_image_4d_array_gives_one_list_per_image(enc: crossmodal.Encoder, tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "idx", bundle=enc.bundle, root=tmp_path)
    images = np.stack([_pixels(s) for s in range(10, 14)])
    idx.add(enc.encode_image(images), [{"path": f"img{i}.png"} for i in range(4)])
    search = Retriever(enc, idx)
    both = search.search_image(PAIR, k=2)
    assert len(both) == 2 and all(len(hits) == 2 for hits in both)
    one = search.search_image(PAIR[1], k=2)
    assert [h.key for h in one] == [h.key for h in both[1]]
    assert isinstance(search.search_text("a red circle", k=2), list) and len(search.search_text(["a", "b"], k=2)) == 2
    with pytest.raises(InputError, match="k must be a positive integer"):
        search.search_image(PAIR, k=True)
    idx.close()


# ----------------------------------------------------------------------------- the re-ranker


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> crossmodal.Reranker:
    require_golden()
    return crossmodal.Reranker.load(export_tiny_bundle(tmp_path_factory.mktemp("albef") / "tiny"), threads=1)


CAPTIONS = ["a dog on the grass", "two cats", "a city at night"]


def test_reranker_score_4d_array_is_a_batch_and_one_image_one_row(reranker: crossmodal.Reranker) -> None:
    both = reranker.score(PAIR, CAPTIONS)
    assert both.shape == (2, 3)
    np.testing.assert_allclose(both, reranker.score(list(PAIR), CAPTIONS), atol=1e-5)
    for i in range(2):
        one = reranker.score(PAIR[i], CAPTIONS)
        assert one.shape == (1, 3)
        np.testing.assert_allclose(one[0], both[i], atol=1e-5)
    assert reranker.image_states(PAIR[0]).shape[0] == 1 and reranker.image_states(PAIR).shape[0] == 2
    assert len(reranker.text_states("two cats")) == 1


def test_rerank_image_batch_gives_one_ranking_per_image(reranker: crossmodal.Reranker) -> None:
    scores = reranker.score(PAIR, CAPTIONS)
    rankings = reranker.rerank_image(PAIR, CAPTIONS)
    assert len(rankings) == 2
    for i, ranked in enumerate(rankings):
        order = np.argsort(-scores[i], kind="stable")
        assert [j for j, _ in ranked] == order.tolist()
        np.testing.assert_allclose([s for _, s in ranked], scores[i, order], atol=1e-5)
    single = reranker.rerank_image(PAIR[1], CAPTIONS, k=np.int64(2))
    assert [j for j, _ in single] == [j for j, _ in rankings[1][:2]]
    np.testing.assert_allclose([s for _, s in single], [s for _, s in rankings[1][:2]], atol=1e-5)


def test_rerank_text_4d_candidates_and_a_batch_of_queries(reranker: crossmodal.Reranker) -> None:
    scores = reranker.score(PAIR, CAPTIONS)
    ranked = reranker.rerank_text(CAPTIONS[1], PAIR)  # one query, two candidate images
    assert [i for i, _ in ranked] == np.argsort(-scores[:, 1], kind="stable").tolist()
    per_query = reranker.rerank_text(CAPTIONS[:2], PAIR, k=1)
    assert len(per_query) == 2 and all(len(r) == 1 for r in per_query)
    assert per_query[1][0][0] == ranked[0][0]
    assert reranker.rerank_text("a dog", []) == [] and reranker.rerank_text(["a", "b"], []) == [[], []]
    for bad in (True, 0, 1.5):
        with pytest.raises(InputError, match="k must be a positive integer"):
            reranker.rerank_text("a dog", PAIR, k=bad)
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        reranker.image_states(PAIR, batch_size=True)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_refuses_bool_counts_before_any_work() -> None:
    data = KarpathySplit("flickr30k", "test", (Path(os.devnull),), ("x",), np.zeros(1, np.int64))

    class NoEncoder:
        def encode_image(self, *a, **k):  # pragma: no cover - must not be reached
            raise AssertionError("encoded before checking the arguments")

        encode_text = encode_image

    for kwargs in ({"image_batch_size": True}, {"text_batch_size": 0}, {"ks": (1, True)}):
        with pytest.raises(InputError, match="must be a positive integer"):
            evaluate(NoEncoder(), data, **kwargs)
    img = np.eye(2, dtype=np.float32)
    assert evaluate_embeddings(img, img, [0, 1], ks=(np.int64(1),)).text_to_image.recall == {1: 100.0}
