"""Re-ranked search through the service on the tiny ALBEF bundle (image, text and rerank towers)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import crossmodal
from crossmodal.index import Index
from crossmodal.retriever import Retriever
from crossmodal.serve import create_app
from helpers.bundles import TINY_ALBEF, copy_prebuilt, export_tiny_albef
from helpers.images import random_rgb
from helpers.serve_server import asgi_client


@pytest.fixture(scope="module")
def albef_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve-albef") / TINY_ALBEF
    if copy_prebuilt(TINY_ALBEF, out):
        return out
    return export_tiny_albef(out, targets="cpu-fp32")


def test_rerank_search_equals_the_retriever_and_refuses_what_it_cannot_do(albef_bundle: Path,
                                                                          tmp_path: Path) -> None:
    rr = crossmodal.Reranker.load(albef_bundle)
    enc = rr.encoder
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = []
    for seed in range(6):
        p = photos / f"p{seed}.png"
        Image.fromarray(random_rgb(64, 48, seed)).save(p)
        paths.append(p)
    with Index.create(tmp_path / "idx", bundle=enc.bundle, root=photos) as idx:
        idx.add(enc.encode_image([str(p) for p in paths]), [{"path": str(p)} for p in paths])
    query = "unbelievably photobombing kittens"
    with Index.open(tmp_path / "idx", read_only=True) as idx:
        want = Retriever(enc, idx, rr).search_text(query, k=3, rerank=5)

    async def body() -> None:
        async with asgi_client(create_app(albef_bundle, tmp_path / "idx")) as c:
            card = (await c.get("/v1/models")).json()["data"][0]
            assert card["rerank"] is True and card["family"] == "albef"
            r = await c.post("/v1/search", json={"text": query, "k": 3, "rerank": 5})
            assert r.status_code == 200, r.text
            hits = r.json()["hits"]
            assert [int(h["key"]) for h in hits] == [h.key for h in want]
            np.testing.assert_allclose([h["itm_score"] for h in hits], [h.itm_score for h in want], atol=1e-5)
            assert all(h["itm_score"] is not None for h in hits)
            for bad in ({"text": query, "k": 3, "rerank": 2}, {"text": query, "rerank": 5, "target": "text"}):
                r = await c.post("/v1/search", json=bad)
                assert r.status_code == 400, (bad, r.text)
            buf = io.BytesIO()
            Image.fromarray(random_rgb(32, 32, 1)).save(buf, format="PNG")
            r = await c.post("/v1/search", files={"image": ("q.png", buf.getvalue(), "image/png")},
                             data={"rerank": "5", "k": "3"})
            assert r.status_code == 400 and "text query" in r.json()["error"]["message"]

    asyncio.run(body())


def test_the_reranker_the_service_loads_sleeps_instead_of_spin_waiting(albef_bundle: Path) -> None:
    from crossmodal.serve.service import load_model
    from helpers.serve_server import spin_setting

    rr = load_model(albef_bundle)
    assert {spin_setting(s) for s in (rr.session, rr.encoder.text.session, rr.encoder.image.session)} == {"0"}
