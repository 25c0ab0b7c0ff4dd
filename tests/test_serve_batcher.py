"""The dynamic batcher alone (no model): batch formation, budgets, order, isolation, cancellation.

The "model" is a function of each item's payload (payload p -> row [p, p]), so every test
knows exactly which row each request must get back, whichever batch it ran in.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from crossmodal.serve.batcher import Batcher, Item, Job
from crossmodal.serve.errors import ServeError


class Model:
    """Records each batch's payloads; fails on payload -1; holds while ``gate`` is closed."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, payloads: list[Any]) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(20)
        self.batches.append(list(payloads))
        if -1 in payloads:
            raise ValueError("payload -1 cannot be embedded")
        return np.array([[p, p] for p in payloads], np.float32)


def _submit(b: Batcher, loop: asyncio.AbstractEventLoop, payloads: list[int], costs: list[int] | None = None,
            deadline_s: float = 30.0) -> Job:
    job = Job(loop, len(payloads), 2, deadline_s)
    b.admit(len(payloads))
    for i, p in enumerate(payloads):
        b.submit(job, i, p, cost=(costs[i] if costs else 1))
    return job


async def _busy(tower: str = "text", **limits: Any) -> tuple[asyncio.AbstractEventLoop, Model, Batcher, Job]:
    """A started batcher whose inference thread is held on one item (payload 1000), so the
    next submissions queue up until the test opens ``model.gate``."""
    loop = asyncio.get_running_loop()
    model = Model()
    b = Batcher(tower, model, **limits)
    b.start()
    model.gate.clear()
    job = _submit(b, loop, [1000])
    while not model.entered.is_set():
        await asyncio.sleep(0.002)
    return loop, model, b, job


async def _done(*jobs: Job) -> None:
    await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), 10)


def test_queued_requests_merge_and_each_gets_its_rows_in_order() -> None:
    async def body() -> None:
        loop, model, b, held = await _busy("text", max_batch=8, max_queue=64)
        jobs = [_submit(b, loop, [10 * r + i for i in range(r + 1)]) for r in range(4)]  # 1+2+3+4 = 10 items
        model.gate.set()
        for job in (held, *jobs):
            await asyncio.wait_for(job.future, 10)
        for r, job in enumerate(jobs):
            np.testing.assert_array_equal(job.out[:, 0], [10 * r + i for i in range(r + 1)])
        assert [len(x) for x in model.batches] == [1, 8, 2]  # FIFO, 8 per batch, a request split over two
        assert b.stats.max_size == 8 and b.stats.items == 11
        b.stop(drain=True)

    asyncio.run(body())


def test_token_budget_keeps_the_oldest_item_and_groups_similar_lengths() -> None:
    b = Batcher("text", Model(), max_batch=4, max_queue=64, max_cost=40)
    loop = asyncio.new_event_loop()
    try:
        job = Job(loop, 8, 2, 30.0)
        costs = [20, 3, 19, 4, 5, 18, 2, 30]
        for i, c in enumerate(costs):
            b._queue.append(Item(job, i, i, c, 0.0))
        first = [it.cost for it in b._take()]
        # the oldest (20) with the nearest shorter one (19): 2 x 20 = 40 fits, a third would not
        assert first == [20, 19]
        second = [it.cost for it in b._take()]
        assert second == [3, 4, 5, 2]  # now the oldest is 3: four short ones, padded to 5
        assert [it.cost for it in b._take()] == [18]  # 18 + 30 would pad to 60 > 40
        assert [it.cost for it in b._take()] == [30]
        assert not b._queue
    finally:
        loop.close()


def test_one_failing_item_fails_alone_and_the_thread_lives_on() -> None:
    async def body() -> None:
        loop, model, b, held = await _busy("image", max_batch=8, max_queue=64)
        good = _submit(b, loop, [1, 2])
        mixed = _submit(b, loop, [3, -1, 4])
        model.gate.set()
        await _done(held, good, mixed)
        np.testing.assert_array_equal(good.out[:, 0], [1, 2])
        assert set(mixed.errors) == {1} and "payload -1" in str(mixed.errors[1])
        np.testing.assert_array_equal(mixed.out[[0, 2], 0], [3, 4])
        assert b.alive and b.stats.failed == 1
        b.stop(drain=True)

    asyncio.run(body())


def test_cancelled_and_late_items_are_dropped_before_inference() -> None:
    async def body() -> None:
        loop, model, b, held = await _busy("text", max_batch=8, max_queue=64)
        gone = _submit(b, loop, [7, 8])
        late = _submit(b, loop, [9], deadline_s=0.01)
        kept = _submit(b, loop, [5])
        gone.cancel()  # the client disconnected
        await asyncio.sleep(0.05)  # past the late job's deadline
        model.gate.set()
        await _done(held, kept)
        with pytest.raises(ServeError) as err:
            await asyncio.wait_for(late.future, 10)
        assert err.value.status == 504
        assert model.batches == [[1000], [5]]  # neither 7, 8 nor 9 reached the model
        b.stop(drain=True)

    asyncio.run(body())


def test_full_queue_is_refused_at_once_and_room_comes_back() -> None:
    async def body() -> None:
        loop, model, b, held = await _busy("text", max_batch=2, max_queue=3, retry_after_s=2)
        queued = _submit(b, loop, [1, 2, 3])
        with pytest.raises(ServeError) as err:
            _submit(b, loop, [4])
        assert err.value.status == 429 and err.value.headers == {"retry-after": "2"}
        model.gate.set()
        await _done(held, queued)
        again = _submit(b, loop, [4])
        await asyncio.wait_for(again.future, 10)
        assert b.depth == 0
        b.stop(drain=True)

    asyncio.run(body())


def test_stop_with_drain_runs_what_is_queued_and_a_dead_thread_fails_everything() -> None:
    async def body() -> None:
        loop, model, b, held = await _busy("text", max_batch=2, max_queue=16)
        queued = _submit(b, loop, [1, 2, 3])
        stopper = asyncio.ensure_future(asyncio.to_thread(b.stop, drain=True))
        await asyncio.sleep(0.05)
        model.gate.set()
        await stopper
        await _done(held, queued)
        np.testing.assert_array_equal(queued.out[:, 0], [1, 2, 3])
        with pytest.raises(ServeError) as err:
            b.admit(1)
        assert err.value.status == 503

        class Abort(BaseException):
            pass

        def dies(payloads: list[Any]) -> np.ndarray:
            raise Abort("native crash")

        d = Batcher("image", dies, max_batch=2, max_queue=16)
        d.start()
        job = _submit(d, loop, [1, 2, 3])
        with pytest.raises(ServeError) as err:
            await asyncio.wait_for(job.future, 10)
        assert err.value.status == 503 and "native crash" in err.value.message
        assert not d.alive and d.depth == 0

    asyncio.run(body())
