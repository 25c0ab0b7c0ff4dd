"""The load generator of the service benchmark: one process, separate from the server it measures.

``python -m crossmodal.bench.serve_client`` reads a job (JSON) on stdin and prints
``RESULT <json>`` as its last line. Two kinds of job:

* ``closed``: ``concurrency`` clients, each sending its next request as soon as its
  previous one is answered (a closed loop), over HTTP with one ``aiohttp.ClientSession``
  (keep-alive, one connection per client), or, for ``target: "direct"``, the same
  loop calling the library in this process from ``concurrency`` threads: the
  server's overhead is the difference. Requests started during ``warmup_s`` are
  not counted; the loop stops at ``seconds`` after warm-up or at ``max_requests``,
  whichever comes first.
* ``open``: requests at a fixed ``rate`` for ``seconds`` whatever the answers (the
  overload run); in-flight requests are capped at ``max_in_flight`` and every
  request has a client timeout, so the run is bounded in time and memory.

Workloads: ``text`` (one short text -> ``/v1/embeddings``), ``image`` (one JPEG
as raw bytes -> ``/v1/embeddings``), ``search`` (one short text -> ``/v1/search``
top-10), ``infinity`` (one short text -> infinity's ``/embeddings``). Every text is
distinct (a caption plus a counter), so no query cache answers in place of the model.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

# A request that failed without an HTTP status (connection reset, client timeout) after it was sent.
NO_ANSWER = 0
# A connection the server never accepted (refused, or the listen backlog full under a flood): not sent,
# so not an accepted request left unanswered.
NOT_CONNECTED = -1


def texts_for(job: dict[str, Any]) -> Callable[[int], str]:
    """The i-th query text: distinct for every i and for every job (the cache must not answer for the model).

    The engines stay up across concurrency levels, so a counter alone would repeat the previous
    job's texts and be answered from the query cache: each job starts from its own base.
    """
    pool = job["texts"]
    base = job.get("text_base")
    if base is None:
        base = time.time_ns() // 1000 % 10**9
    return lambda i: f"{pool[i % len(pool)]} {base + i}"


def summary(records: list[tuple[float, float, int]], t_measure: float) -> dict[str, Any]:
    """Throughput and latency percentiles of the requests started after warm-up."""
    measured = [r for r in records if r[0] >= t_measure]
    ok = [r for r in measured if 200 <= r[2] < 300]
    statuses: dict[str, int] = {}
    for r in measured:
        statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
    out: dict[str, Any] = {"requests": len(measured), "ok": len(ok), "errors": len(measured) - len(ok),
                           "statuses": statuses}
    if ok:
        lat = np.array([(t1 - t0) * 1e3 for t0, t1, _ in ok])
        span = max(t1 for _, t1, _ in measured) - t_measure
        out.update(throughput=len(ok) / span if span > 0 else None, seconds=span,
                   p50_ms=float(np.percentile(lat, 50)), p95_ms=float(np.percentile(lat, 95)),
                   p99_ms=float(np.percentile(lat, 99)), mean_ms=float(lat.mean()), max_ms=float(lat.max()))
    return out


# ----------------------------------------------------------------------------- HTTP


def http_sender(job: dict[str, Any], client: Any, counts: dict[str, int] | None = None
                ) -> Callable[[int], Awaitable[int]]:
    """``send(i) -> HTTP status`` for the job's workload; ``counts`` tallies 429s without ``Retry-After``."""
    import orjson

    async def post(path: str, data: bytes, headers: dict[str, str]) -> int:
        async with client.post(url + path, data=data, headers=headers) as r:
            await r.read()  # the whole answer is in before the clock stops; parsing it stays out of the timing
            if r.status == 429 and counts is not None and "retry-after" not in r.headers:
                counts["429_without_retry_after"] = counts.get("429_without_retry_after", 0) + 1
            return int(r.status)

    url, kind, model = job["url"], job["workload"], job.get("model")
    text = texts_for(job) if kind != "image" else None
    if kind == "image":
        images = [Path(p).read_bytes() for p in job["photos"]]

        async def send(i: int) -> int:
            return await post("/v1/embeddings", images[i % len(images)], {"content-type": "image/jpeg"})
    else:
        path, body = {
            "text": ("/v1/embeddings", lambda t: {"input": t, "model": model, "modality": "text"}),
            "search": ("/v1/search", lambda t: {"text": t, "k": 10}),
            "infinity": ("/embeddings", lambda t: {"input": [t], "model": model}),
        }[kind]
        headers = {"content-type": "application/json"}

        async def send(i: int) -> int:
            return await post(path, orjson.dumps(body(text(i))), headers)  # type: ignore[misc]
    return send


def _client(job: dict[str, Any], connections: int) -> Any:
    # aiohttp, not httpx: the load generator shares the machine's cores with the server it measures,
    # and per request httpx spent ~4 ms of CPU here against ~1.2 ms for aiohttp (2-core Xeon, text
    # queries at 16 clients): a heavier client takes CPU from the server and the figures measure it.
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=job.get("timeout_s", 60.0)), trust_env=False)


async def _closed_http(job: dict[str, Any]) -> dict[str, Any]:
    c = int(job["concurrency"])
    async with _client(job, c) as client:
        send = http_sender(job, client)
        return await _closed_loop(send, job)


async def _closed_loop(send: Callable[[int], Awaitable[int]], job: dict[str, Any]) -> dict[str, Any]:
    c, max_requests = int(job["concurrency"]), int(job["max_requests"])
    records: list[tuple[float, float, int]] = []
    issued = 0
    t_start = time.perf_counter()
    t_measure = t_start + float(job["warmup_s"])
    t_end = t_measure + float(job["seconds"])

    async def client_loop() -> None:
        nonlocal issued
        # Warm-up is bounded by time, the measured part by time and by max_requests (counted from
        # the measurement's start: a fast engine must not spend them all warming up), and each client
        # finishes at least one measured request, even on a slow machine.
        measured = False
        while time.perf_counter() < t_end or not measured:
            t0 = time.perf_counter()
            measured = t0 >= t_measure
            if measured and issued >= max_requests:
                return
            i = issued
            issued += measured
            try:
                status = await send(i)
            except Exception:  # noqa: BLE001 - connection errors and timeouts are counted, not raised
                status = NO_ANSWER
            records.append((t0, time.perf_counter(), status))

    await asyncio.gather(*(client_loop() for _ in range(c)))
    return summary(records, t_measure)


async def _open_http(job: dict[str, Any]) -> dict[str, Any]:
    """Fixed arrival rate; statuses and latencies of every request, 429s and 2xx apart."""
    import aiohttp

    rate, seconds, cap = float(job["rate"]), float(job["seconds"]), int(job["max_in_flight"])
    records: list[tuple[float, float, int]] = []
    skipped = 0
    counts: dict[str, int] = {}
    async with _client(job, cap) as client:
        send = http_sender(job, client, counts)
        in_flight: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                status = await send(i)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):  # never connected: never sent
                status = NOT_CONNECTED
            except Exception:  # noqa: BLE001
                status = NO_ANSWER
            records.append((t0, time.perf_counter(), status))

        t_start = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = t_start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= cap:
                skipped += 1  # the client's own bound: counted, never sent
                continue
            t = asyncio.create_task(one(i))
            in_flight.add(t)
            t.add_done_callback(in_flight.discard)
        sent_s = time.perf_counter() - t_start
        if in_flight:
            await asyncio.wait(in_flight, timeout=float(job.get("timeout_s", 60.0)) + 5)
        # Still alive and ready after the flood?
        try:
            async with client.get(f"{job['url']}/health/ready") as r:
                ready = r.status
        except Exception:  # noqa: BLE001
            ready = NO_ANSWER
    by_status: dict[str, list[float]] = {}
    for t0, t1, st in records:
        by_status.setdefault(str(st), []).append((t1 - t0) * 1e3)
    stats = {s: {"n": len(v), "p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)),
                 "max_ms": float(np.max(v))} for s, v in by_status.items()}
    ok = sum(v["n"] for s, v in stats.items() if s.startswith("2"))
    return {"offered_rate": n / sent_s if sent_s > 0 else None, "sent": len(records), "skipped_by_client": skipped,
            "ok": ok, "ok_rate": ok / max(sent_s, 1e-9), "by_status": stats,
            "unanswered": stats.get(str(NO_ANSWER), {}).get("n", 0),
            "not_connected": stats.get(str(NOT_CONNECTED), {}).get("n", 0), "ready_after": ready,
            "seconds": sent_s, **counts}


# ----------------------------------------------------------------------------- direct


def direct_call(job: dict[str, Any]) -> Callable[[int], object]:
    """The library call a request stands for, in this process (no HTTP, no batching across callers)."""
    import crossmodal

    kind = job["workload"]
    modality = "image" if kind == "image" else "text"
    enc = crossmodal.load(job["bundle"], variant=job.get("variant"), modality=modality, threads=job["threads"])
    if kind == "image":
        images = [Path(p).read_bytes() for p in job["photos"]]
        return lambda i: enc.encode_image([images[i % len(images)]])
    text = texts_for(job)
    if kind == "search":
        from crossmodal.index import Index
        from crossmodal.retriever import Retriever

        retriever = Retriever(enc, Index.open(job["index"], read_only=True))
        return lambda i: retriever.search_text(text(i), k=10)
    return lambda i: enc.encode_text([text(i)])


def _closed_direct(job: dict[str, Any]) -> dict[str, Any]:
    call = direct_call(job)
    c, max_requests = int(job["concurrency"]), int(job["max_requests"])
    records: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    issued = [0]
    t_measure = time.perf_counter() + float(job["warmup_s"])
    t_end = t_measure + float(job["seconds"])

    def client_loop() -> None:
        measured = False  # as in _closed_loop: warm-up bounded by time, max_requests counts measured requests
        while time.perf_counter() < t_end or not measured:
            t0 = time.perf_counter()
            measured = t0 >= t_measure
            with lock:
                if measured and issued[0] >= max_requests:
                    return
                i = issued[0]
                issued[0] += measured
            call(i)
            records.append((t0, time.perf_counter(), 200))

    with ThreadPoolExecutor(c) as pool:
        for f in [pool.submit(client_loop) for _ in range(c)]:
            f.result()
    return summary(records, t_measure)


def run(job: dict[str, Any]) -> dict[str, Any]:
    if job["mode"] == "open":
        return asyncio.run(_open_http(job))
    if job.get("target") == "direct":
        return _closed_direct(job)
    return asyncio.run(_closed_http(job))


def main() -> int:
    job = json.loads(sys.stdin.read())
    result = run(job)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
