"""Sharded search (crossmodal.index.sharded): a collection split into shards by key hash and
searched as one answers what one index answers.

Parity is the test idea: every search over the shards (batch and single queries, k from 1
to more than a shard or the whole collection holds, both towers, with filters, through the
Retriever, the CLI and the service) must return the keys, scores, paths and captions the
unsharded index returns by exact search.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import crossmodal
from crossmodal.errors import IncompatibleTowersError, IndexStoreError, InputError
from crossmodal.index import META_FILE, Filter, Index
from crossmodal.index.sharded import ShardedIndex, open_many, shard_of, split_index
from crossmodal.retriever import Retriever
from helpers.fake_encoder import COLOURS, FakeEncoder
from helpers.serve_server import asgi_client, b64, png_bytes
from test_index import unit

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "images"
DIM = 16
N = 300


def build_source(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """``N`` image items (every 10th under ``b/``, the first half added at t=1000, the rest at
    t=2000) and a caption item (text tower, same path) for every 3rd image."""
    path = tmp_path / "src.idx"
    vecs = unit(N, DIM, seed=3)
    with Index.create(path, bundle="fake-clip", space="fake-space", dim=DIM, root=tmp_path) as idx:
        keys = idx.add(vecs, [{"path": f"{'b' if i % 10 == 0 else 'a'}/img{i}.jpg",
                               "caption": f"caption {i}" if i % 3 == 0 else None} for i in range(N)])
        captioned = list(range(0, N, 3))
        idx.add(unit(len(captioned), DIM, seed=4), [{"path": f"{'b' if i % 10 == 0 else 'a'}/img{i}.jpg",
                                                     "caption": f"caption {i}"} for i in captioned], tower="text")
    with sqlite3.connect(path / META_FILE) as conn:
        conn.executemany("UPDATE items SET added_at = ? WHERE tower = 'image' AND key = ?",
                         [(1000.0 if i < N // 2 else 2000.0, int(k)) for i, k in enumerate(keys)])
    conn.close()
    return path, vecs


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The source index and its split into 3 shards."""
    tmp = tmp_path_factory.mktemp("sharded")
    src, _ = build_source(tmp)
    return src, split_index(src, 3, tmp / "shards")


def as_rows(hits: list) -> list[list[tuple[int, float, str | None, str | None]]]:
    rows = hits if hits and isinstance(hits[0], list) else [hits]
    return [[(h.key, h.score, h.path, h.caption) for h in row] for row in rows]


def assert_same_hits(got: list, want: list) -> None:
    """Same keys, paths and captions in the same order; scores equal to float32 rounding."""
    g, w = as_rows(got), as_rows(want)
    assert [[(k, p, c) for k, _, p, c in row] for row in g] == [[(k, p, c) for k, _, p, c in row] for row in w]
    for gr, wr in zip(g, w):
        np.testing.assert_allclose([s for _, s, _, _ in gr], [s for _, s, _, _ in wr], atol=1e-6)


# --------------------------------------------------------------------------- splitting


def test_split_puts_each_key_in_shard_key_mod_n_and_captions_with_their_image(collection) -> None:
    src, paths = collection
    assert [p.name for p in paths] == ["shard-000", "shard-001", "shard-002"]
    with Index.open(src, read_only=True) as source, open_many(paths) as shards:
        assert len(shards) == len(source) and shards.count("image") == N and shards.count("text") == N // 3
        image_shard = {}
        for i, shard in enumerate(shards.shards):
            assert shard.info["shard"] == f"{i}/3" and shard.space == "fake-space" and shard.root == source.root
            keys = shard.keys("image")
            assert 60 <= len(keys) <= 140  # content-hash keys: about N/3 each
            assert all(shard_of(k, 3) == i for k in keys)
            image_shard.update((shard.get(k).path, i) for k in keys)
            for k in shard.keys("text"):  # a caption item sits with its image
                assert image_shard.get(shard.get(k, tower="text").path, i) == i
        for tower in ("image", "text"):
            want = {r.key: r for r in source.items(tower=tower)}
            got = {r.key: r for r in shards.items(tower=tower)}
            assert got == want  # keys, paths (resolved against the same root), captions, sha256, extras
        key = next(iter(source.keys()))
        assert shards.get(key) == source.get(key) and shards.contains(key) and not shards.contains(key, "text")
        assert shards.get(12345) is None
        assert sorted(shards.find_path(source.get(key).path)) == sorted(source.find_path(source.get(key).path))


# --------------------------------------------------------------------------- search parity


@pytest.mark.parametrize("k", [1, 7, 150, 1000])  # 150 > any shard's size, 1000 > the collection
@pytest.mark.parametrize("tower", ["image", "text"])
def test_sharded_search_equals_unsharded_exact_search(collection, k: int, tower: str) -> None:
    src, paths = collection
    queries = unit(5, DIM, seed=9)
    with Index.open(src, read_only=True) as source, open_many(paths) as shards:
        want = source.search(queries, k, tower=tower, exact=True)
        assert len(want[0]) == min(k, source.count(tower))
        for exact in (True, None):  # None: each shard is small, so it scans too
            assert_same_hits(shards.search(queries, k, tower=tower, exact=exact), want)
        single = shards.search(queries[2], k, tower=tower)
        assert isinstance(single, list) and not isinstance(single[0], list)
        assert_same_hits(single, want[2])
        assert shards.search(queries[:0], k, tower=tower) == []


def test_one_shard_and_shards_given_as_open_indexes(collection, tmp_path: Path) -> None:
    src, paths = collection
    q = unit(3, DIM, seed=11)
    with Index.open(src, read_only=True) as source:
        want = source.search(q, 9, exact=True)
        with open_many([src]) as one:  # one shard: searched in the caller's thread
            assert_same_hits(one.search(q, 9), want)
        with ShardedIndex([Index.open(p, read_only=True) for p in paths], threads=1) as shards:
            assert_same_hits(shards.search(q, 9), want)
            assert shards.read_only and shards.path == ", ".join(str(p) for p in paths)
        with pytest.raises(IndexStoreError, match="is closed"):
            shards.search(q, 9)


@pytest.mark.parametrize("where", [Filter(path_prefix="b/"), Filter(added_after=1500.0), Filter(has_caption=True),
                                   Filter(path_prefix="a/", has_caption=False, added_after=1500.0)])
def test_filtered_sharded_search_equals_the_filtered_source(collection, where: Filter) -> None:
    src, paths = collection
    q = unit(4, DIM, seed=12)
    with Index.open(src, read_only=True) as source, open_many(paths) as shards:
        want = source.search(q, 20, exact=True, where=where)
        assert 0 < len(want[0]) <= 20
        assert_same_hits(shards.search(q, 20, where=where), want)  # added_at was kept by the split


def test_captions_and_keywords_over_shards(collection) -> None:
    src, paths = collection
    with Index.open(src, read_only=True) as source, open_many(paths) as shards:
        keys = sorted(source.keys())
        assert shards.captions_of(keys) == source.captions_of(keys)
        assert sum(bool(v) for v in shards.captions_of(keys).values()) == N // 3
        # BM25 ranks within each shard: the same items match, scores are the shard's own
        want = source.keyword_search("caption 42", 1000)
        got = shards.keyword_search("caption 42", 1000)
        assert {h.key for h in got} == {h.key for h in want} and len(got) == len(want) > 1
        assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)
        assert got[0].path == want[0].path == str(src.parent / "a" / "img42.jpg")


def test_hnsw_and_exact_threshold_go_to_every_shard(collection) -> None:
    src, paths = collection
    q = unit(2, DIM, seed=13)
    with open_many(paths) as shards, Index.open(src, read_only=True) as source:
        assert shards.uses_exact("image") and shards.uses_exact("text")
        shards.exact_threshold = 0
        assert not shards.uses_exact() and all(s.exact_threshold == 0 for s in shards.shards)
        shards.expansion_search = 600
        assert all(s.expansion_search == 600 for s in shards.shards)
        # each shard walks its graph (about 100 vectors at ef 600: every neighbour is found)
        assert_same_hits(shards.search(q, 5), source.search(q, 5, exact=True))


# --------------------------------------------------------------------------- refusals


def test_shards_of_another_space_dim_or_metric_are_refused(collection, tmp_path: Path) -> None:
    src, _ = collection
    others = {
        "space": dict(bundle="other", space="other-space", dim=DIM),
        "dim": dict(bundle="fake-clip", space="fake-space", dim=DIM * 2),
        "metric": dict(bundle="fake-clip", space="fake-space", dim=DIM, metric="ip"),
    }
    for name, kw in others.items():
        Index.create(tmp_path / name, **kw).close()
        with pytest.raises(IncompatibleTowersError) as err:
            open_many([src, tmp_path / name])
        assert str(tmp_path / name) in str(err.value) and str(src) in str(err.value)
        assert "cannot be searched with shard" in str(err.value)
    with pytest.raises(InputError, match="is given twice"):
        open_many([src, src.parent / ".." / src.parent.name / src.name])
    with pytest.raises(InputError, match="at least one shard"):
        open_many([])
    with pytest.raises(IndexStoreError, match="is not a crossmodal index"):
        open_many([src, tmp_path / "missing"])
    # a shard of the right space but another encoder's space is refused by the Retriever
    with open_many([src]) as shards, pytest.raises(IncompatibleTowersError, match="other-space"):
        Retriever(FakeEncoder(DIM, space="other-space"), shards)


# --------------------------------------------------------------------------- Retriever


def test_retriever_over_shards_answers_like_one_index(tmp_path: Path) -> None:
    enc = FakeEncoder(dim=DIM)
    colours = list(COLOURS)
    images = [np.full((10, 10, 3), COLOURS[c], np.uint8) for c in colours]
    with Index.create(tmp_path / "one.idx", bundle=enc.bundle, root=tmp_path) as idx:
        idx.add(enc.encode_image(images), [{"path": f"{c}.png", "caption": c} for c in colours])
        idx.add(enc.encode_text([f"a {c} thing" for c in colours]),
                [{"path": f"{c}.png", "caption": f"a {c} thing"} for c in colours], tower="text")
    paths = split_index(tmp_path / "one.idx", 2, tmp_path / "shards")
    with Index.open(tmp_path / "one.idx", read_only=True) as one, open_many(paths) as shards:
        assert min(s.count("image") for s in shards.shards) > 0  # both shards hold images
        a, b = Retriever(enc, one), Retriever(enc, shards)
        assert_same_hits(b.search_text(["a red car", "blue sky"], k=5), a.search_text(["a red car", "blue sky"], k=5))
        assert b.search_text("a red car", k=1)[0].caption == "red"
        assert_same_hits(b.search_text("green", k=3, tower="text"), a.search_text("green", k=3, tower="text"))
        assert_same_hits(b.search_image(images[2], k=4), a.search_image(images[2], k=4))
        vec = enc.encode_text(["yellow"])
        assert_same_hits(b.search_vector(vec, k=8), a.search_vector(vec, k=8))
        assert_same_hits(b.search_text("a white cat", k=3, where={"path_prefix": "w"}),
                         a.search_text("a white cat", k=3, where={"path_prefix": "w"}))
        # caption fusion scores candidates by their stored vectors: read from the shard holding each
        for kw in ({"fuse": "captions"}, {"fuse": "captions", "fuse_mode": "rrf"},
                   {"fuse": "captions", "fuse_weight": 0.8}):
            assert_same_hits(b.search_text(["a red thing", "blue"], k=6, **kw),
                             a.search_text(["a red thing", "blue"], k=6, **kw))
        keys = sorted(one.keys())[:5] + [12345]
        got, want = shards.get_vectors(keys), one.get_vectors(keys)
        np.testing.assert_array_equal(got[0][:5], want[0][:5])
        assert got[1] == want[1] == [12345] and np.isnan(got[0][5]).all()


# --------------------------------------------------------------------------- CLI and service


@pytest.fixture(scope="module")
def clip_collection(tiny_clip_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The example images and captions indexed by the tiny CLIP bundle, and its split into 2 shards."""
    tmp = tmp_path_factory.mktemp("clip-sharded")
    enc = crossmodal.load(tiny_clip_bundle)
    files = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg"))
    caps = {}
    for line in (EXAMPLES / "captions.jsonl").read_text().splitlines():
        rec = json.loads(line)
        caps[rec["file"]] = rec["caption"]
    with Index.create(tmp / "src.idx", bundle=enc.bundle, info={"bundle_path": str(tiny_clip_bundle)}) as idx:
        idx.add(enc.encode_image([str(p) for p in files]), [{"path": str(p), "caption": caps.get(p.name)}
                                                            for p in files])
        captioned = [p for p in files if p.name in caps]
        idx.add(enc.encode_text([caps[p.name] for p in captioned]),
                [{"path": str(p), "caption": caps[p.name]} for p in captioned], tower="text")
    paths = split_index(tmp / "src.idx", 2, tmp / "shards")
    assert all(Index.open(p, read_only=True).count("image") > 0 for p in paths)
    return tmp / "src.idx", paths


def test_cli_search_over_several_paths_equals_the_library(tiny_clip_bundle: Path, clip_collection,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodal.cli import main

    src, paths = clip_collection
    enc = crossmodal.load(tiny_clip_bundle)
    image = str(EXAMPLES / "sunset_gradient.jpg")
    with Index.open(src, read_only=True) as one:
        r = Retriever(enc, one)
        cases = [(["a red circle", "-k", "4"], r.search_text("a red circle", k=4)),
                 (["a stop sign", "-k", "3", "--target", "text"], r.search_text("a stop sign", k=3, tower="text")),
                 (["--image", image, "-k", "20"], r.search_image(image, k=20))]
    for argv, want in cases:
        assert main(["search", *map(str, paths), *argv, "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["shards"] == [str(p) for p in paths] and answer["search"] == "exact"
        got = answer["results"]
        assert [h["key"] for h in got] == [h.key for h in want] and len(got) == len(want)
        assert [h["path"] for h in got] == [h.path for h in want]
        np.testing.assert_allclose([h["score"] for h in got], [h.score for h in want], atol=1e-6)
    assert main(["search", str(paths[0]), "a red circle", "--json"]) == 0  # one index: as before
    assert "shards" not in json.loads(capsys.readouterr().out)
    # forgetting the query: the last positional is an index, not a text
    assert main(["search", *map(str, paths)]) == 2
    assert "is an index, but the last positional is the query text" in capsys.readouterr().err
    assert main(["search", str(paths[0]), "a red circle", "--image", image]) == 2
    assert "exactly one" in capsys.readouterr().err


def test_service_over_two_shards_answers_search(tiny_clip_bundle: Path, clip_collection) -> None:
    from crossmodal.serve import create_app

    src, paths = clip_collection
    enc = crossmodal.load(tiny_clip_bundle)
    query_image = (EXAMPLES / "stop_sign.png").read_bytes()
    with Index.open(src, read_only=True) as one:
        r = Retriever(enc, one)
        want_text = r.search_text("a red circle", k=5)
        want_image = r.search_image(query_image, k=3)
        want_caption = r.search_text("a red circle", k=2, tower="text")

    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle, [str(p) for p in paths])) as c:
            out = (await c.post("/v1/search", json={"text": "a red circle", "k": 5})).json()
            assert out["search"] == "exact" and [int(h["key"]) for h in out["hits"]] == [h.key for h in want_text]
            np.testing.assert_allclose([h["score"] for h in out["hits"]], [h.score for h in want_text], atol=1e-5)
            out = (await c.post("/v1/search", json={"image": b64(query_image), "k": 3})).json()
            assert [int(h["key"]) for h in out["hits"]] == [h.key for h in want_image]
            out = (await c.post("/v1/search", json={"text": "a red circle", "k": 2, "target": "text"})).json()
            assert [h["caption"] for h in out["hits"]] == [h.caption for h in want_caption]
            got = await c.get(f"/v1/items/{want_text[0].key}")  # reads work on shards
            assert got.status_code == 200 and got.json()["path"] == want_text[0].path
            for r in (await c.post("/v1/items", json={"image": b64(png_bytes(0))}),
                      await c.delete(f"/v1/items/{want_text[0].key}")):
                assert r.status_code == 403 and r.json()["error"]["code"] == "index_sharded"
                assert "split across 2 shards" in r.json()["error"]["message"]
            card = (await c.get("/v1/models")).json()["data"][0]["index"]
            assert card["count"] == {"image": 12, "text": one_count_text} and card["read_only"] is True

    with Index.open(src, read_only=True) as one:
        one_count_text = one.count("text")
    asyncio.run(body())
    for p in paths:  # the shards were opened read-only: a writer can open each at once
        Index.open(p).close()


def test_serve_cli_index_flags(tiny_clip_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodal.serve.cli import build_parser, main

    args = build_parser().parse_args([str(tiny_clip_bundle), "--index", "a.idx", "--index", "b.idx"])
    assert args.index == ["a.idx", "b.idx"] and not args.read_only
    assert main([str(tiny_clip_bundle), "--read-only"]) == 2
    assert "--read-only opens the index as a reader: give --index INDEX too" in capsys.readouterr().err


def test_service_read_only_replica_refuses_writes(tiny_clip_bundle: Path, clip_collection, tmp_path: Path) -> None:
    from crossmodal.serve import create_app
    from crossmodal.serve.service import open_indexes

    src, _ = clip_collection
    enc = crossmodal.load(tiny_clip_bundle)
    with Index.open(src) as writer:  # a writer elsewhere holds the index while replicas read it
        replicas = [open_indexes([src], enc, read_only=True) for _ in range(2)]
        assert all(isinstance(r, Index) and r.read_only for r in replicas)
        with pytest.raises(IndexStoreError, match="is not a crossmodal index"):
            open_indexes([tmp_path / "missing"], enc, read_only=True)  # a reader never creates one

        async def body() -> None:
            async with asgi_client(create_app(enc, replicas[0])) as c:
                assert (await c.post("/v1/search", json={"text": "a red circle", "k": 1})).status_code == 200
                r = await c.post("/v1/items", json={"image": b64(png_bytes(1))})
                assert r.status_code == 403 and r.json()["error"]["code"] == "index_read_only"

        asyncio.run(body())
        replicas[1].close()
        assert len(writer) > 0
