"""The service in-process (httpx over ASGI): every route against the library's own answers.

Parity is the test idea: an embedding, a search hit list or a rank served over HTTP must
equal what the library returns for the same input (cosine >= 0.99999 for fp32). The
batching, overload, deadline and thread-death tests hold a tower's model call at a gate
(a threading.Event), so what is queued when is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

import crossmodal
from crossmodal.index import Index, key_from_sha256
from crossmodal.retriever import Retriever
from crossmodal.serve import ServeConfig, create_app
from helpers.images import png_claiming_size
from helpers.serve_server import asgi_client, b64, cosines, png_bytes, spin_setting

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "images"
MIN_COS = 0.99999


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


@pytest.fixture(scope="module")
def enc(tiny_clip_bundle: Path) -> Any:
    return crossmodal.load(tiny_clip_bundle)


@pytest.fixture(scope="module")
def example_index(tiny_clip_bundle: Path, enc: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example images (with captions) indexed by the library: image and caption towers."""
    import json

    out = tmp_path_factory.mktemp("serve-index") / "idx"
    files = _example_files()
    caps = {}
    for line in (EXAMPLES / "captions.jsonl").read_text().splitlines():
        rec = json.loads(line)
        caps[rec["file"]] = rec["caption"]
    with Index.create(out, bundle=enc.bundle) as idx:
        idx.add(enc.encode_image([str(p) for p in files]),
                [{"path": str(p), "caption": caps.get(p.name)} for p in files])
        texts = [caps[p.name] for p in files if p.name in caps]
        idx.add(enc.encode_text(texts), [{"caption": t} for t in texts], tower="text")
    return out


def _example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg"))


def _copy_index(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- embeddings


def test_text_embeddings_equal_the_library_in_float_and_base64(tiny_clip_bundle: Path, enc: Any) -> None:
    texts = ["two dogs in the snow", "a red circle", "London at night, raining", ""]
    ref = enc.encode_text(texts)

    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle)) as c:
            r = await c.post("/v1/embeddings", json={"input": texts, "model": enc.bundle.name})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["object"] == "list" and out["model"] == enc.bundle.name
            assert [d["index"] for d in out["data"]] == [0, 1, 2, 3]
            got = np.array([d["embedding"] for d in out["data"]], np.float32)
            assert got.shape == ref.shape and cosines(got, ref).min() >= MIN_COS
            tokens = enc.text.tokenize(texts)["attention_mask"].sum()
            assert out["usage"] == {"prompt_tokens": int(tokens), "total_tokens": int(tokens)}
            assert float(r.headers["x-queue-time"]) >= 0 and float(r.headers["x-inference-time"]) > 0
            r64 = await c.post("/v1/embeddings", json={"input": texts[0], "encoding_format": "base64"})
            row = np.frombuffer(base64.b64decode(r64.json()["data"][0]["embedding"]), dtype="<f4")
            np.testing.assert_array_equal(row, got[0])

    run(body)


def test_image_embeddings_as_base64_data_uri_multipart_and_raw_bytes(tiny_clip_bundle: Path, enc: Any) -> None:
    png = png_bytes(1)
    jpeg = (EXAMPLES / "sunset_gradient.jpg").read_bytes()
    ref = enc.encode_image([png, jpeg])

    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle)) as c:
            r = await c.post("/v1/embeddings", json={"input": [b64(png), "data:image/jpeg;base64," + b64(jpeg)],
                                                     "modality": "image"})
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]])
            assert cosines(got, ref).min() >= MIN_COS
            assert r.json()["usage"]["prompt_tokens"] == 0
            r = await c.post("/v1/embeddings", files=[("file", ("a.png", png, "image/png")),
                                                      ("file", ("b.jpg", jpeg, "image/jpeg"))],
                             data={"encoding_format": "float"})
            assert r.status_code == 200, r.text
            assert cosines([d["embedding"] for d in r.json()["data"]], ref).min() >= MIN_COS
            r = await c.post("/v1/embeddings", content=jpeg, headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            assert cosines(r.json()["data"][0]["embedding"], ref[1]).min() >= MIN_COS

    run(body)


def test_one_bad_image_among_32_fails_alone(tiny_clip_bundle: Path, enc: Any) -> None:
    images = [png_bytes(s) for s in range(32)]
    images[13] = b"GIF89a but not really an image" * 3
    good = [i for i in range(32) if i != 13]
    ref = enc.encode_image([images[i] for i in good])

    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle, max_batch=8)) as c:
            r = await c.post("/v1/embeddings", json={"input": [b64(b) for b in images], "modality": "image"})
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            assert [d["index"] for d in data] == list(range(32))
            bad = data[13]
            assert bad["object"] == "error" and "embedding" not in bad
            assert bad["error"]["type"] == "invalid_input_error" and "image #13" in bad["error"]["message"]
            got = np.array([data[i]["embedding"] for i in good])
            assert cosines(got, ref).min() >= MIN_COS
            # the batch and the thread survived: the next request is served
            again = await c.post("/v1/embeddings", json={"input": [b64(images[0])], "modality": "image"})
            assert again.status_code == 200
            metrics = (await c.get("/metrics")).text
            assert 'crossmodal_items_failed_total{reason="decode",tower="image"} 1.0' in metrics

    run(body)


@pytest.mark.parametrize("kwargs, status, code, words", [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json", "JSON"),
    ({"json": ["a list"]}, 400, "invalid_json", "object"),
    ({"json": {"input": 5}}, 400, "invalid_type", "input must be a string"),
    ({"json": {"input": ["ok", 7]}}, 400, "invalid_type", "input #1"),
    ({"json": {"input": [[1, 2, 3]]}}, 400, "invalid_type", "token arrays"),
    ({"json": {"input": []}}, 400, "empty_input", "at least one"),
    ({"json": {"input": "hi", "encoding_format": "int8"}}, 400, "invalid_value", "encoding_format"),
    ({"json": {"input": "hi", "model": "gpt-4"}}, 404, "model_not_found", "gpt-4"),
    ({"json": {"input": "hi", "dimensions": 3}}, 400, "invalid_value", "dimensions"),
    ({"json": {"input": ["x"] * 9}}, 413, "too_many_inputs", "limit of 8"),
    ({"json": {"input": "x" * 5000}}, 413, "body_too_large", "exceeds the limit"),
    ({"json": {"input": "data:image/png;base64,AAAA"}}, 400, "wrong_modality", "modality"),
    ({"json": {"input": ["https://example.com/cat.jpg"], "modality": "image"}}, 400, "url_not_supported",
     "does not fetch URLs"),
    ({"json": {"input": ["%%% not base64 %%%"], "modality": "image"}}, 400, "invalid_base64", "input #0"),
    ({"json": {"input": [b64(b"plain text, not an image")], "modality": "image"}}, 422, "invalid_image",
     "image #0"),
    ({"json": {"input": [b64(png_claiming_size(60000, 60000))], "modality": "image"}}, 422, "invalid_image",
     "image #0"),
    ({"json": {"input": ["x"], "modality": "audio"}}, 400, "invalid_value", "modality"),
    ({"content": b"input=x", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type", "text/plain"),
])
def test_bad_requests_get_the_error_shape_naming_the_input(tiny_clip_bundle: Path, kwargs: dict[str, Any],
                                                           status: int, code: str, words: str) -> None:
    async def body() -> None:
        app = create_app(tiny_clip_bundle, max_inputs=8, max_body_bytes=4096)
        async with asgi_client(app) as c:
            r = await c.post("/v1/embeddings", **kwargs)
            assert r.status_code == status, r.text
            err = r.json()["error"]
            assert set(err) == {"message", "type", "code"}
            assert err["code"] == code and words in err["message"]

    run(body)


def test_unknown_routes_and_methods_answer_in_the_error_shape(tiny_clip_bundle: Path) -> None:
    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle)) as c:
            r = await c.get("/v1/nothing")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            r = await c.get("/v1/embeddings")
            assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"

    run(body)


# --------------------------------------------------------------------------- search, rank, items


def test_search_by_text_image_and_vector_equals_the_retriever(tiny_clip_bundle: Path, enc: Any,
                                                               example_index: Path, tmp_path: Path) -> None:
    idx_path = _copy_index(example_index, tmp_path / "idx")
    query_image = (EXAMPLES / "stop_sign.png").read_bytes()

    with Index.open(idx_path, read_only=True) as idx:
        r = Retriever(enc, idx)
        want_text = r.search_text("a red circle", k=3)
        want_caption = r.search_text("a red circle", k=2, tower="text")
        want_image = r.search_image(query_image, k=4)

    def keys(hits: list[dict[str, Any]]) -> list[int]:
        return [int(h["key"]) for h in hits]

    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle, idx_path)) as c:
            r = await c.post("/v1/search", json={"text": "a red circle", "k": 3})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["query"] == "text" and out["target"] == "image" and out["search"] == "exact"
            assert keys(out["hits"]) == [h.key for h in want_text]
            np.testing.assert_allclose([h["score"] for h in out["hits"]], [h.score for h in want_text], atol=1e-5)
            assert out["hits"][0]["path"] == want_text[0].path and out["hits"][0]["itm_score"] is None
            assert "x-queue-time" in r.headers and "x-inference-time" in r.headers
            r = await c.post("/v1/search", json={"text": "a red circle", "k": 2, "target": "text"})
            assert [h["caption"] for h in r.json()["hits"]] == [h.caption for h in want_caption]
            r = await c.post("/v1/search", files={"image": ("q.png", query_image, "image/png")}, data={"k": "4"})
            assert r.status_code == 200, r.text
            assert keys(r.json()["hits"]) == [h.key for h in want_image]
            assert r.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)  # the stop sign itself
            r = await c.post("/v1/search?k=4", content=query_image, headers={"content-type": "image/png"})
            assert keys(r.json()["hits"]) == [h.key for h in want_image]
            vec = enc.encode_image([query_image])[0].tolist()
            r = await c.post("/v1/search", json={"vector": vec, "k": 4, "exact": False})
            assert r.json()["search"] == "hnsw" and keys(r.json()["hits"])[0] == want_image[0].key
            for bad, code in (({"text": "x", "vector": vec}, "invalid_query"), ({}, "invalid_query"),
                              ({"vector": [1.0, 2.0]}, "invalid_input"), ({"text": "x", "k": 0}, "invalid_input"),
                              ({"text": "x", "k": True}, "invalid_input"), ({"text": "x", "target": "audio"},
                                                                             "invalid_value"),
                              ({"text": "x", "rerank": 5}, "rerank_not_supported")):
                r = await c.post("/v1/search", json=bad)
                assert r.status_code == 400 and r.json()["error"]["code"] == code, (bad, r.text)

    run(body)


def test_search_refuses_an_index_of_another_space_with_409(tiny_clip_bundle: Path, enc: Any, tmp_path: Path) -> None:
    Index.create(tmp_path / "other", bundle="another-model", dim=enc.dim, space="another-space").close()

    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle, tmp_path / "other")) as c:
            r = await c.post("/v1/search", json={"text": "a dog"})
            assert r.status_code == 409
            assert r.json()["error"]["code"] == "incompatible_space" and "another-space" in r.json()["error"]["message"]
            r = await c.post("/v1/items", json={"image": b64(png_bytes(0))})
            assert r.status_code == 409
            assert (await c.post("/v1/embeddings", json={"input": "a dog"})).status_code == 200
            card = (await c.get("/v1/models")).json()["data"][0]
            assert "another-space" in card["index"]["error"]

    run(body)


def test_search_without_an_index_is_a_404(tiny_clip_bundle: Path) -> None:
    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle)) as c:
            r = await c.post("/v1/search", json={"text": "a dog"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "no_index"

    run(body)


def test_rank_gives_the_library_probabilities(tiny_clip_bundle: Path, enc: Any) -> None:
    image = (EXAMPLES / "red_circle.png").read_bytes()
    labels = ["a red circle", "a blue square", "London at night"]
    want = enc.rank(image, labels)

    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle)) as c:
            r = await c.post("/v1/rank", json={"image": b64(image), "labels": labels})
            assert r.status_code == 200, r.text
            out = r.json()
            np.testing.assert_allclose(out["probabilities"], want, atol=1e-5)
            assert out["best"]["label"] == labels[int(np.argmax(want))]
            r = await c.post("/v1/rank", files={"image": ("x.png", image, "image/png")},
                             data={"labels": labels})
            np.testing.assert_allclose(r.json()["probabilities"], want, atol=1e-5)
            r = await c.post("/v1/rank", json={"image": b64(image), "labels": "a red circle"})
            assert r.status_code == 400 and "labels" in r.json()["error"]["message"]
            r = await c.post("/v1/rank", json={"image": b64(image), "labels": []})
            assert r.status_code == 400

    run(body)


def test_items_are_added_searchable_durable_and_deleted(tiny_clip_bundle: Path, enc: Any, tmp_path: Path) -> None:
    images = [png_bytes(100 + i) for i in range(3)]
    idx_path = tmp_path / "new.idx"  # missing: the service creates it for the bundle

    async def body() -> list[str]:
        async with asgi_client(create_app(tiny_clip_bundle, idx_path)) as c:
            r = await c.post("/v1/items", json={"items": [
                {"image": b64(images[0]), "caption": "a noisy gradient"},
                {"image": "data:image/png;base64," + b64(images[1])},
                {"image": "not base64 !!"},
                {"image": b64(images[2]), "caption": "another one"}]})
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            assert data[2]["object"] == "error" and data[2]["error"]["code"] == "invalid_base64"
            keys = [data[i]["key"] for i in (0, 1, 3)]
            assert keys == [str(key_from_sha256(__import__("hashlib").sha256(b).hexdigest())) for b in images]
            assert all(data[i]["added"] for i in (0, 1, 3))
            stored = Path(data[0]["path"])
            assert stored.read_bytes() == images[0] and stored.parent == idx_path / "uploads"
            # the same bytes again: not added twice
            again = await c.post("/v1/items?caption=renamed", content=images[0], headers={"content-type": "image/png"})
            assert again.json()["data"][0] == {"object": "item", "index": 0, "key": keys[0], "path": str(stored),
                                               "caption": "a noisy gradient", "added": False}
            assert sorted(p.name for p in stored.parent.iterdir()) == sorted(
                Path(data[i]["path"]).name for i in (0, 1, 3))  # no second file
            # searchable at once, through both towers
            r = await c.post("/v1/search", json={"image": b64(images[1]), "k": 1})
            assert r.json()["hits"][0]["key"] == keys[1]
            r = await c.post("/v1/search", json={"text": "a noisy gradient", "k": 1, "target": "text"})
            assert r.json()["hits"][0]["caption"] == "a noisy gradient"
            got = (await c.get(f"/v1/items/{keys[0]}")).json()
            assert got["caption"] == "a noisy gradient" and got["path"] == str(stored)
            # delete: the item, its caption vector and its uploaded file go
            r = await c.delete(f"/v1/items/{keys[0]}")
            # both captions of the item ("a noisy gradient" and the later "renamed") go with it
            assert r.status_code == 200 and r.json()["captions_removed"] == 2 and r.json()["file_removed"]
            assert not stored.exists()
            assert (await c.get(f"/v1/items/{keys[0]}")).status_code == 404
            assert (await c.delete(f"/v1/items/{keys[0]}")).status_code == 404
            assert (await c.delete("/v1/items/not-a-key")).status_code == 404
            r = await c.post("/v1/search", json={"image": b64(images[0]), "k": 5})
            assert keys[0] not in [h["key"] for h in r.json()["hits"]]
            r = await c.post("/v1/items", json={"items": [{"image": "nope"}]})  # valid base64, not an image
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_image"
            return keys

    keys = run(body)
    # saved on shutdown: the journal is compacted into the graph files
    with Index.open(idx_path, read_only=True) as idx:
        assert idx.journal_size() == 0
        assert idx.keys("image") == {int(keys[1]), int(keys[2])}
        assert {r.caption for r in idx.items(tower="text")} == {"another one"}


# --------------------------------------------------------------------------- models, metrics, auth, cache


def test_models_card_fingerprint_and_metrics(tiny_clip_bundle: Path, enc: Any, example_index: Path,
                                             tmp_path: Path) -> None:
    idx_path = _copy_index(example_index, tmp_path / "idx")

    async def body() -> str:
        async with asgi_client(create_app(tiny_clip_bundle, idx_path, variant="cpu-int8")) as c:
            out = (await c.get("/v1/models")).json()
            card = out["data"][0]
            assert out["object"] == "list" and card["id"] == enc.bundle.name and card["object"] == "model"
            assert (card["family"], card["dim"], card["space"], card["variant"]) == (
                enc.bundle.family, enc.dim, enc.bundle.space, "cpu-int8")
            assert card["towers"] == ["image", "text"] and card["fingerprint"].startswith("sha256:")
            assert card["queue"] == {"image": 0, "text": 0}
            assert card["batches"]["text"]["batches"] >= 1  # the canary
            assert card["index"]["count"]["image"] == len(_example_files())
            assert (await c.get(f"/v1/models/{enc.bundle.name}")).json()["id"] == enc.bundle.name
            assert (await c.get("/v1/models/nope")).status_code == 404
            await c.post("/v1/embeddings", json={"input": "x"})
            m = await c.get("/metrics")
            assert m.headers["content-type"].startswith("text/plain")
            text = m.text
            assert 'crossmodal_requests_total{route="/v1/embeddings",status="200"} 1.0' in text
            assert 'crossmodal_requests_total{route="/v1/models/{model:path}",status="404"} 1.0' in text
            assert 'crossmodal_batch_size_count{tower="text"}' in text
            assert 'crossmodal_queue_depth{tower="image"} 0.0' in text
            assert 'crossmodal_requests_in_progress{route="/v1/embeddings"} 0.0' in text
            assert 'crossmodal_requests_in_progress{route="/metrics"} 1.0' in text  # this scrape itself
            return card["fingerprint"]

    fp_int8 = run(body)

    async def fp32() -> str:
        async with asgi_client(create_app(tiny_clip_bundle)) as c:
            return (await c.get("/v1/models")).json()["data"][0]["fingerprint"]

    assert run(fp32) != fp_int8  # another variant is another model
    assert run(fp32) == run(fp32)  # stable across restarts


def test_api_key_guards_everything_but_health_and_is_never_logged(tiny_clip_bundle: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    key = "s3cret-key-for-tests"
    caplog.set_level(logging.DEBUG, logger="crossmodal")

    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle, api_key=key)) as c:
            for path in ("/health/live", "/health/ready"):
                assert (await c.get(path)).status_code == 200
            r = await c.post("/v1/embeddings", json={"input": "x"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
            for header in (f"Bearer {key}x", f"Basic {key}", key, "Bearer "):
                r = await c.post("/v1/embeddings", json={"input": "x"}, headers={"authorization": header})
                assert r.status_code == 401, header
            assert (await c.get("/metrics")).status_code == 401
            assert (await c.get("/v1/models")).status_code == 401
            ok = await c.post("/v1/embeddings", json={"input": "x"}, headers={"authorization": f"Bearer {key}"})
            assert ok.status_code == 200

    run(body)
    assert key not in caplog.text
    assert '"status":401' in caplog.text  # the structured request line


def test_repeated_text_query_hits_the_cache(tiny_clip_bundle: Path) -> None:
    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle)) as c:
            first = (await c.post("/v1/embeddings", json={"input": "two dogs"})).json()["data"][0]["embedding"]
            service = c._transport.app.state.service  # type: ignore[attr-defined]
            batches = service.batchers["text"].stats.batches
            # the tokenizer normalises case and spacing for CLIP: the same tokens, the same entry
            second = (await c.post("/v1/embeddings", json={"input": "Two  DOGS"})).json()["data"][0]["embedding"]
            assert second == first
            assert service.batchers["text"].stats.batches == batches  # no model call
            text = (await c.get("/metrics")).text
            assert "crossmodal_cache_hits_total 1.0" in text

    async def disabled() -> None:
        async with asgi_client(create_app(tiny_clip_bundle, cache_size=0)) as c:
            for _ in range(2):
                await c.post("/v1/embeddings", json={"input": "two dogs"})
            assert "crossmodal_cache_hits_total 0.0" in (await c.get("/metrics")).text

    run(body)
    run(disabled)


# --------------------------------------------------------------------------- batching and overload


class Gate:
    """Holds a tower's model calls until opened; counts calls and batch sizes."""

    def __init__(self, run: Callable[..., Any]) -> None:
        self._run = run
        self.open = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []
        self.fail_with: BaseException | None = None

    def __call__(self, feeds: Any) -> Any:
        self.entered.set()
        assert self.open.wait(30), "the test never opened the gate"
        if self.fail_with is not None:
            raise self.fail_with
        out = self._run(feeds)
        self.sizes.append(len(out))
        return out


def _gated_text(tiny_clip_bundle: Path) -> tuple[Any, Gate]:
    enc = crossmodal.load(tiny_clip_bundle)
    gate = Gate(enc.text.run)
    enc.text.run = gate  # type: ignore[method-assign]
    gate.open.set()  # open during start-up (the canary); tests close it
    return enc, gate


async def _hold(c: Any, gate: Gate) -> "asyncio.Task[Any]":
    """Close the gate and send one request that occupies the text tower's thread at it."""
    gate.open.clear()
    gate.entered.clear()
    blocker = asyncio.create_task(c.post("/v1/embeddings", json={"input": "hold the thread"}))
    await _until(gate.entered.is_set)
    return blocker


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_concurrent_clients_are_batched_and_each_gets_its_own_rows(tiny_clip_bundle: Path) -> None:
    enc, gate = _gated_text(tiny_clip_bundle)
    ref = crossmodal.load(tiny_clip_bundle)
    clients = [[f"client {c} query {j} " + "word " * (c % 4) for j in range(1 + c % 3)] for c in range(12)]

    async def body() -> None:
        async with asgi_client(create_app(enc, cache_size=0, max_batch=64)) as c:
            service = c._transport.app.state.service  # type: ignore[attr-defined]
            blocker = await _hold(c, gate)
            tasks = [asyncio.create_task(c.post("/v1/embeddings", json={"input": texts})) for texts in clients]
            want = sum(len(t) for t in clients)
            await _until(lambda: service.batchers["text"].depth == want)
            gate.open.set()
            responses = await asyncio.gather(blocker, *tasks)
            for texts, r in zip(clients, responses[1:]):
                assert r.status_code == 200, r.text
                got = np.array([d["embedding"] for d in r.json()["data"]])
                # each client's rows, in its order, equal the library's answer for that client alone
                assert cosines(got, ref.encode_text(texts)).min() >= MIN_COS
            # after the canary and the blocker: all 24 queued items in one model call
            assert gate.sizes[2:] == [want]
            text = (await c.get("/metrics")).text
            line = next(ln for ln in text.splitlines() if ln.startswith('crossmodal_batch_size_bucket{le="1.0"'))
            merged = int(float(line.split()[-1]))
            count = int(float(next(ln for ln in text.splitlines()
                                   if ln.startswith('crossmodal_batch_size_count{tower="text"}')).split()[-1]))
            assert count > merged  # some batches held more than one item

    run(body)


def test_token_budget_splits_a_request_and_reassembles_it_in_order(tiny_clip_bundle: Path) -> None:
    enc, gate = _gated_text(tiny_clip_bundle)
    ref = crossmodal.load(tiny_clip_bundle)
    texts = ["short", "a much longer query " * 6, "mid length query here", "x", "another long one " * 5, "y z"]
    lengths = ref.text.tokenize(texts)["attention_mask"].sum(1)
    budget = int(lengths.max()) * 2

    async def body() -> None:
        async with asgi_client(create_app(enc, cache_size=0, max_tokens_per_batch=budget)) as c:
            gate.sizes.clear()
            r = await c.post("/v1/embeddings", json={"input": texts})
            assert r.status_code == 200
            got = np.array([d["embedding"] for d in r.json()["data"]])
            assert cosines(got, ref.encode_text(texts)).min() >= MIN_COS
            assert len(gate.sizes) > 1  # split across several model calls

    run(body)


def test_a_full_queue_answers_429_with_retry_after_and_the_rest_are_served(tiny_clip_bundle: Path) -> None:
    enc, gate = _gated_text(tiny_clip_bundle)

    async def body() -> None:
        async with asgi_client(create_app(enc, cache_size=0, max_queue=4, max_inputs=4)) as c:
            service = c._transport.app.state.service  # type: ignore[attr-defined]
            blocker = await _hold(c, gate)
            # a flood of 20 clients against a queue of 4 items
            flood = [asyncio.create_task(c.post("/v1/embeddings", json={"input": [f"q{i}", f"r{i}"]}))
                     for i in range(20)]
            await _until(lambda: sum(t.done() for t in flood) >= 18)
            refused = [t.result() for t in flood if t.done()]
            assert len(refused) == 18 and all(r.status_code == 429 for r in refused)
            assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full" for r in refused)
            assert service.batchers["text"].depth == 4
            gate.open.set()
            answered = await asyncio.gather(blocker, *flood)
            assert sum(r.status_code == 200 for r in answered) == 3  # the blocker and the two queued
            assert "crossmodal_requests_total{route=\"/v1/embeddings\",status=\"429\"} 18.0" in (
                await c.get("/metrics")).text

    run(body)


def test_a_request_past_its_deadline_gets_504_and_its_items_never_run(tiny_clip_bundle: Path) -> None:
    enc, gate = _gated_text(tiny_clip_bundle)

    async def body() -> None:
        async with asgi_client(create_app(enc, cache_size=0, deadline_s=0.3)) as c:
            blocker = await _hold(c, gate)
            late = await c.post("/v1/embeddings", json={"input": ["late one", "late two"]})
            assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
            gate.sizes.clear()
            gate.open.set()
            assert (await blocker).status_code == 504  # it waited past its deadline too
            ok = await c.post("/v1/embeddings", json={"input": "fresh"})
            assert ok.status_code == 200
            assert gate.sizes[-1] == 1  # the late items were dropped, not run with "fresh"

    run(body)


def test_a_deadline_shorter_than_a_first_run_still_starts_and_decodes_in_the_shared_pool(tiny_clip_bundle: Path,
                                                                                           enc: Any) -> None:
    from crossmodal.decode_pool import decode_pool

    # 1 us: no inference finishes that fast, so only the canary's own deadline lets the service start.
    app = create_app(enc, cache_size=0, deadline_s=1e-6, decode_workers=2)

    async def body() -> None:
        async with asgi_client(app) as c:
            late = await c.post("/v1/embeddings", json={"input": "a dog"})
            assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
        assert app.state.service.decode_pool is decode_pool(2)
        assert not decode_pool(2)._shutdown  # the service's stop leaves the process-wide pool running

    run(body)


def test_a_client_that_disconnects_has_its_queued_items_dropped(tiny_clip_bundle: Path) -> None:
    enc, gate = _gated_text(tiny_clip_bundle)
    body_bytes = b'{"input": ["never run", "me neither"]}'

    async def call_then_disconnect(app: Any, gone: asyncio.Event) -> list[dict[str, Any]]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/embeddings", "raw_path": b"/v1/embeddings", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", str(len(body_bytes)).encode())]}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body_bytes, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        messages: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        await app(scope, receive, send)
        return messages

    async def body() -> None:
        app = create_app(enc, cache_size=0)
        async with asgi_client(app) as c:
            service = app.state.service
            gate.sizes.clear()
            blocker = await _hold(c, gate)
            gone = asyncio.Event()
            leaving = asyncio.create_task(call_then_disconnect(app, gone))
            await _until(lambda: service.batchers["text"].depth == 2)
            gone.set()
            messages = await asyncio.wait_for(leaving, 10)
            assert messages[0]["status"] == 499
            gate.open.set()
            assert (await blocker).status_code == 200
            assert (await c.post("/v1/embeddings", json={"input": "fresh"})).status_code == 200
            assert gate.sizes == [1, 1]  # the blocker, then "fresh": the two dropped texts never ran
            assert 'status="499"} 1.0' in (await c.get("/metrics")).text

    run(body)


def test_search_page_is_open_and_thumbnails_serve_indexed_items_only(tiny_clip_bundle: Path, example_index: Path,
                                                                       tmp_path: Path) -> None:
    idx_path = _copy_index(example_index, tmp_path / "idx")
    key = "k3y"
    with Index.open(idx_path, read_only=True) as idx:
        item = next(r for r in idx.items(tower="image"))

    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle, idx_path, api_key=key)) as c:
            page = await c.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            auth = {"authorization": f"Bearer {key}"}
            assert (await c.get(f"/v1/thumbnails/{item.key}")).status_code == 401
            thumb = await c.get(f"/v1/thumbnails/{item.key}", headers=auth)
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            assert Image.open(io.BytesIO(thumb.content)).format == "JPEG"
            missing = await c.get("/v1/thumbnails/12345", headers=auth)
            assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "code"}

    run(body)


def test_a_dead_inference_thread_makes_the_service_not_ready(tiny_clip_bundle: Path) -> None:
    enc, gate = _gated_text(tiny_clip_bundle)

    class Fatal(BaseException):
        pass

    async def body() -> None:
        async with asgi_client(create_app(enc, cache_size=0)) as c:
            gate.fail_with = RuntimeError("one bad batch")
            r = await c.post("/v1/embeddings", json={"input": "a"})
            assert r.status_code == 500 and "one bad batch" in r.json()["error"]["message"]
            assert (await c.get("/health/ready")).status_code == 200  # an exception is not a dead thread
            gate.fail_with = Fatal("the runtime aborted")
            r = await c.post("/v1/embeddings", json={"input": "b"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "inference_thread_died"
            ready = await c.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "inference_thread_died"
            assert (await c.get("/health/live")).status_code == 200
            r = await c.post("/v1/embeddings", json={"input": "c"})
            assert r.status_code == 503

    run(body)


def test_config_is_validated_and_never_shows_the_key() -> None:
    with pytest.raises(crossmodal.InputError, match="max_batch"):
        ServeConfig(max_batch=0)
    with pytest.raises(crossmodal.InputError, match="max_inputs"):
        ServeConfig(max_inputs=10, max_queue=5)
    assert "hunter2" not in repr(ServeConfig(api_key="hunter2"))


# --------------------------------------------------------------------------- fusion, hybrid, filters


@pytest.fixture(scope="module")
def captioned_index(enc: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example images ingested with their captions: caption items share their image's path."""
    from crossmodal.ingest import ingest_folder, read_captions

    out = tmp_path_factory.mktemp("serve-fused") / "idx"
    with Index.create(out, bundle=enc.bundle) as idx:
        ingest_folder(idx, enc, EXAMPLES, captions=read_captions(EXAMPLES / "captions.jsonl"), progress=False)
    return out


def test_search_fuse_hybrid_and_filter_equal_the_retriever(tiny_clip_bundle: Path, enc: Any,
                                                           captioned_index: Path, tmp_path: Path) -> None:
    import json

    idx_path = _copy_index(captioned_index, tmp_path / "idx")
    prefix = str(EXAMPLES / "s")
    with Index.open(idx_path, read_only=True) as idx:
        r = Retriever(enc, idx)
        want = {
            "plain": r.search_text("a red circle", k=3),
            "fused": r.search_text("a red circle", k=3, fuse="captions"),
            "rrf": r.search_text("a red circle", k=3, fuse="captions", fuse_mode="rrf"),
            "w": r.search_text("a red circle", k=3, fuse="captions", fuse_weight=0.8),
            "hybrid": r.search_text("checkerboard", k=3, hybrid=True),
            "filtered": r.search_text("a red circle", k=3, where={"path_prefix": prefix, "has_caption": True}),
        }
    # the tiny bundle's weights are random: only the caption puts the red circle first
    assert Path(want["fused"][0].path).name == "red_circle.png"  # type: ignore[arg-type]
    assert Path(want["plain"][0].path).name != "red_circle.png"  # type: ignore[arg-type]

    def same(out: dict[str, Any], hits: list[Any]) -> None:
        assert "hits" in out, out
        assert [int(h["key"]) for h in out["hits"]] == [h.key for h in hits]
        np.testing.assert_allclose([h["score"] for h in out["hits"]], [h.score for h in hits], atol=1e-5)

    async def body() -> None:
        async with asgi_client(create_app(tiny_clip_bundle, idx_path)) as c:
            for name, extra in (("fused", {"fuse": "captions"}), ("rrf", {"fuse": "captions", "fuse_mode": "rrf"}),
                                ("w", {"fuse": "captions", "fuse_weight": 0.8}),
                                ("filtered", {"filter": {"path_prefix": prefix, "has_caption": True}})):
                got = await c.post("/v1/search", json={"text": "a red circle", "k": 3, **extra})
                assert got.status_code == 200, got.text
                same(got.json(), want[name])
            got = await c.post("/v1/search", json={"text": "checkerboard", "k": 3, "hybrid": True})
            same(got.json(), want["hybrid"])
            assert Path(got.json()["hits"][0]["path"]).name == "checkerboard.png"
            # FTS5 syntax in the text is plain text: no 400, no 500, the keyword still found
            got = await c.post("/v1/search", json={"text": 'checkerboard* NEAR( "x AND path:y ^OR', "k": 3,
                                                   "hybrid": True})
            assert got.status_code == 200, got.text
            assert Path(got.json()["hits"][0]["path"]).name == "checkerboard.png"
            # form fields: the filter as a JSON string, booleans and numbers as text
            got = await c.post("/v1/search", files={"text": (None, "a red circle"), "k": (None, "3"),
                                                    "fuse": (None, "captions"), "fuse_weight": (None, "0.8")})
            assert got.status_code == 200, got.text
            same(got.json(), want["w"])
            got = await c.post("/v1/search", files={"image": ("q.png", (EXAMPLES / "stop_sign.png").read_bytes(),
                                                              "image/png")},
                               data={"k": "5", "filter": json.dumps({"path_prefix": prefix})})
            assert got.status_code == 200, got.text
            assert {Path(h["path"]).name[0] for h in got.json()["hits"]} == {"s"}
            for bad, code, words in (
                ({"text": "x", "filter": {"colour": "red"}}, "invalid_filter", "['colour']"),
                ({"text": "x", "filter": {"added_after": "soon"}}, "invalid_filter", "added_after"),
                ({"text": "x", "filter": [1]}, "invalid_filter", "must be an object"),
                ({"vector": [0.0] * enc.dim, "fuse": "captions"}, "invalid_value", "send text, not vector"),
                ({"text": "x", "fuse_weight": 0.3}, "invalid_value", '"fuse": "captions"'),
                ({"text": "x", "fuse": "words"}, "invalid_value", "fuse must be one of"),
                ({"text": "x", "fuse": "captions", "fuse_weight": 2}, "invalid_input", "fuse_weight must be"),
                ({"text": "x", "fuse": "captions", "target": "text"}, "invalid_input", "tower='image'"),
                ({"text": "x", "hybrid": "maybe"}, "invalid_input", "hybrid"),
                ({"text": "* -- ()", "hybrid": True}, "invalid_input", "holds no word to search for"),
                ({"text": "x", "filter": {"path_prefix": ""}}, "invalid_filter", "non-empty string"),
                ({"text": "x", "filter": {"has_caption": "maybe"}}, "invalid_filter", "use true or false"),
            ):
                got = await c.post("/v1/search", json=bad)
                assert got.status_code == 400 and got.json()["error"]["code"] == code, (bad, got.text)
                assert words in got.json()["error"]["message"], (bad, got.text)

    run(body)


def test_service_sessions_sleep_instead_of_spin_waiting_unless_told(tiny_clip_bundle: Path) -> None:
    # The service shares its cores with the event loop and the decoders: idle onnxruntime threads
    # must not spin (measured: under overload, spinning starved the loop and the 429s took seconds).
    from crossmodal.serve.cli import _config, build_parser
    from crossmodal.serve.service import load_model

    enc = load_model(tiny_clip_bundle)
    assert spin_setting(enc.text.session) == spin_setting(enc.image.session) == "0"
    assert spin_setting(load_model(tiny_clip_bundle, spin=True).text.session) == "default"
    # the library keeps onnxruntime's default: a process that only runs the model wants the spin
    assert spin_setting(crossmodal.load(tiny_clip_bundle).text.session) == "default"
    assert spin_setting(crossmodal.load(tiny_clip_bundle, spin=False).image.session) == "0"
    parse = build_parser().parse_args
    assert _config(parse([str(tiny_clip_bundle)])).spin_wait is False
    assert _config(parse([str(tiny_clip_bundle), "--spin-wait"])).spin_wait is True
    with pytest.raises(crossmodal.errors.InputError, match="spin_wait"):
        ServeConfig(spin_wait="yes")  # type: ignore[arg-type]
    with pytest.raises(crossmodal.errors.InputError, match="spin must be True or False"):
        crossmodal.load(tiny_clip_bundle, spin="no")  # type: ignore[arg-type]  # truthy: would have spun
