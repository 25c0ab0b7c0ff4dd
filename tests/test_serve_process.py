"""The service as users run it: `python -m crossmodal.serve` in its own process, on 127.0.0.1.

What needs a real server: the official ``openai`` client over HTTP, the API key read
from the environment, SIGTERM draining queued requests and saving the index, and
``kill -9`` while items are being added (restart: the index is consistent and every
acknowledged item is there). Every loop here is bounded in count and time.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

import crossmodal
from crossmodal.index import Index, key_from_sha256
from helpers.serve_server import b64, cosines, png_bytes, running_server, start_server

MIN_COS = 0.99999


def test_openai_client_works_unchanged_behind_the_api_key(tiny_clip_bundle: Path, tmp_path: Path) -> None:
    from openai import AuthenticationError, OpenAI

    key = "key-from-the-environment-0123"
    enc = crossmodal.load(tiny_clip_bundle)
    texts = ["two dogs in the snow", "a cat on a table", "London at night"]
    ref = enc.encode_text(texts)
    with running_server(tiny_clip_bundle, "--api-key-env", "CM_TEST_KEY", log_dir=tmp_path,
                        env={"CM_TEST_KEY": key}) as srv:
        client = OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0, timeout=30)
        # the client asks for base64 unless told otherwise and decodes it itself
        for kwargs in ({}, {"encoding_format": "float"}):
            out = client.embeddings.create(model=enc.bundle.name, input=texts, **kwargs)
            got = np.array([d.embedding for d in out.data])
            assert got.shape == ref.shape and cosines(got, ref).min() >= MIN_COS
            assert [d.index for d in out.data] == [0, 1, 2] and out.model == enc.bundle.name
            assert out.usage.prompt_tokens == out.usage.total_tokens > 0
        assert [m.id for m in client.models.list()] == [enc.bundle.name]
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{srv.url}/v1", api_key="wrong", max_retries=0).embeddings.create(
                model=enc.bundle.name, input="x")
        assert httpx.get(f"{srv.url}/health/ready").status_code == 200  # probes need no key
        assert httpx.get(f"{srv.url}/metrics").status_code == 401
        assert srv.stop() == 0
    log = srv.log()
    assert key not in log
    assert '"route":"/v1/embeddings","status":200' in log and '"status":401' in log


def test_sigterm_drains_queued_requests_saves_the_index_and_exits_0(tiny_clip_bundle: Path, tmp_path: Path) -> None:
    idx = tmp_path / "photos.idx"
    n_clients, per_request = 10, 16
    results: list[Any] = [None] * n_clients
    with running_server(tiny_clip_bundle, "--index", str(idx), "--max-batch", "1", "--decode-workers", "1",
                        log_dir=tmp_path) as srv:
        added = httpx.post(f"{srv.url}/v1/items", json={"items": [{"image": b64(png_bytes(s)), "caption": f"item {s}"}
                                                                 for s in range(3)]}, timeout=30)
        assert added.status_code == 200
        # Serialised once: the clients only send, so all of them reach the server while the first is queued.
        body = orjson.dumps({"input": [b64(png_bytes(1000 + i, (320, 240))) for i in range(per_request)],
                             "modality": "image"})
        start = threading.Barrier(n_clients)

        def client(i: int) -> None:
            start.wait(timeout=30)
            try:
                results[i] = httpx.post(f"{srv.url}/v1/embeddings", content=body,
                                        headers={"content-type": "application/json"}, timeout=60)
            except httpx.HTTPError as exc:
                results[i] = exc

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while True:  # every request read by the server, and work still queued, before the signal
            received, depth = _embeddings_received_and_image_queue(srv.url)
            if received == n_clients and depth >= 1:
                break
            assert time.monotonic() < deadline, f"never all received with work queued: {received}, {depth}"
            time.sleep(0.005)
        srv.send_signal(signal.SIGTERM)
        code = srv.wait(timeout=90)
        for t in threads:
            t.join(timeout=90)
        after = httpx.Client(timeout=5)
        with pytest.raises(httpx.ConnectError):  # stopped listening: a new client is refused, not hung
            after.get(f"{srv.url}/health/live")
    assert code == 0, srv.log()
    # A request the server has read is answered in full, however deep in the queue it was at the signal.
    assert [getattr(r, "status_code", r) for r in results] == [200] * n_clients
    assert all(len(r.json()["data"]) == per_request for r in results)
    with Index.open(idx, read_only=True) as index:
        assert index.journal_size() == 0  # compacted into the graph files on the way out
        assert index.count("image") == 3 and index.count("text") == 3


def _embeddings_received_and_image_queue(url: str) -> tuple[int, float]:
    """(requests to /v1/embeddings read by the server so far, images waiting), from /metrics via prometheus' parser."""
    from prometheus_client.parser import text_string_to_metric_families

    received, depth = 0.0, 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.labels.get("route") == "/v1/embeddings" and sample.name in (
                    "crossmodal_requests_in_progress", "crossmodal_requests_total"):
                received += sample.value
            elif sample.name == "crossmodal_queue_depth" and sample.labels.get("tower") == "image":
                depth = sample.value
    return int(received), depth


def test_kill_9_while_adding_items_then_restart_finds_every_acknowledged_item(tiny_clip_bundle: Path,
                                                                                tmp_path: Path) -> None:
    idx = tmp_path / "photos.idx"
    acked: list[tuple[str, bytes]] = []
    stop = threading.Event()
    srv = start_server(tiny_clip_bundle, "--index", str(idx), log_dir=tmp_path)
    try:
        def writer() -> None:
            with httpx.Client(timeout=30) as c:
                for seed in range(200):  # bounded; the kill comes long before
                    if stop.is_set():
                        return
                    data = png_bytes(5000 + seed)
                    try:
                        r = c.post(f"{srv.url}/v1/items", json={"image": b64(data), "caption": f"photo {seed}"})
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        acked.append((r.json()["data"][0]["key"], data))

        t = threading.Thread(target=writer)
        t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 8:
            assert time.monotonic() < deadline and t.is_alive(), srv.log()
            time.sleep(0.01)
        srv.kill()  # SIGKILL in the middle of the stream of adds: no drain, no save
        stop.set()
        t.join(timeout=60)
    finally:
        if srv.proc.poll() is None:
            srv.kill()
    assert srv.proc.returncode == -signal.SIGKILL
    with running_server(tiny_clip_bundle, "--index", str(idx), log_dir=tmp_path) as again:
        with httpx.Client(base_url=again.url, timeout=30) as c:
            for key, data in acked:
                item = c.get(f"/v1/items/{key}")
                assert item.status_code == 200, (key, item.text)
                assert key == str(key_from_sha256(hashlib.sha256(data).hexdigest()))
                assert Path(item.json()["path"]).read_bytes() == data
            key, data = acked[len(acked) // 2]
            hits = c.post("/v1/search", json={"image": b64(data), "k": 1}).json()["hits"]
            assert hits[0]["key"] == key and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
            # and it keeps taking items after the crash
            assert c.post("/v1/items", json={"image": b64(png_bytes(99999))}).json()["data"][0]["added"] is True
    with Index.open(idx, read_only=True) as index:
        assert {str(k) for k in index.keys("image")} >= {k for k, _ in acked}
        assert index.count("text") >= len(acked)


def test_cli_refuses_bad_arguments_before_binding(tiny_clip_bundle: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from crossmodal.serve.cli import main

    monkeypatch.delenv("CM_UNSET_KEY", raising=False)
    cases = [([str(tmp_path / "missing")], "bundle.json"),
             ([str(tiny_clip_bundle), "--api-key-env", "CM_UNSET_KEY"], "CM_UNSET_KEY"),
             ([str(tiny_clip_bundle), "--max-batch", "0"], "max_batch"),
             ([str(tiny_clip_bundle), "--index", str(tmp_path)], "not a crossmodal index")]
    for argv, words in cases:
        assert main([*argv, "--port", "0"]) == 2, argv
        err = capsys.readouterr().err
        assert words in err and "listening" not in err, (argv, err)
