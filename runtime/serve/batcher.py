"""Dynamic batching: requests from many clients merged into one model call per tower.

Each tower has one :class:`Batcher`: an item queue fed from the event loop and ONE
inference thread (onnxruntime releases the GIL, so the loop keeps serving meanwhile).
The thread forms the next batch as soon as it is free (no timer; ``max_wait_s`` > 0
waits for a fuller batch), bounded by ``max_batch`` items and, for text, by a token
budget: a batch costs ``rows x longest row`` (what padding makes the model compute),
and the items are chosen near the oldest item's length (length-sorted batches), so one
77-token text does not pad 63 short queries. The oldest waiting item is always in the
next batch: nothing starves.

A request is a :class:`Job` of ``n`` items; its items may run in several batches and
are written into the job's output rows by position, so the caller gets them back in
order. Items whose job was cancelled (client gone) or whose deadline passed are dropped
before inference. A batch that raises is retried item by item, so one bad input fails
alone; only a ``BaseException`` escaping the model (which the thread cannot recover
from) ends the thread, and then :attr:`Batcher.alive` turns False (``/health/ready``
answers 503) and every waiting job fails.

The thread never touches asyncio objects directly: a job completes through
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from numpy.typing import NDArray

from .errors import ServeError, overloaded, timed_out, unavailable

log = logging.getLogger("crossmodal.serve")


class BatchObserver(Protocol):
    """What the batcher reports (implemented by :class:`crossmodal.serve.metrics.Metrics`)."""

    def batch_done(self, tower: str, size: int, cost: int, queue_s: Sequence[float], inference_s: float) -> None: ...

    def item_failed(self, tower: str, reason: str) -> None: ...


class Job:
    """One request's items on one tower: ``out[i]`` is item ``i``'s embedding, ``errors[i]`` its failure.

    Thread-safe: items finish on the inference thread, on the loop (cache hits, decode
    failures) or both; :meth:`finish_item` counts them under a lock and resolves
    :attr:`future` (on the loop) when the last one is in.
    """

    __slots__ = ("loop", "future", "out", "errors", "deadline", "deadline_s", "cancelled", "queue_s",
                 "inference_s", "_remaining", "_lock")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int, dim: int, deadline_s: float) -> None:
        self.loop = loop
        self.future: asyncio.Future[Job] = loop.create_future()
        self.out = np.zeros((n, dim), np.float32)
        self.errors: dict[int, BaseException] = {}
        self.deadline_s = deadline_s
        self.deadline = time.monotonic() + deadline_s
        self.cancelled = False
        self.queue_s = 0.0  # longest wait of one of its items before its batch ran
        self.inference_s = 0.0  # model time of the batches its items ran in
        self._remaining = n
        self._lock = threading.Lock()
        if n == 0:
            self.future.set_result(self)

    def finish_item(self, pos: int, row: NDArray[np.float32] | None = None,
                    error: BaseException | None = None) -> None:
        """Record item ``pos`` (its row or its error); the last one resolves the job."""
        with self._lock:
            if error is not None:
                self.errors[pos] = error
            elif row is not None:
                self.out[pos] = row
            self._remaining -= 1
            done = self._remaining == 0
        if done:
            self._resolve(None)

    def fail(self, error: ServeError) -> None:
        """Fail the whole job (deadline, shutdown, dead thread); its queued items are then dropped."""
        self.cancelled = True
        self._resolve(error)

    def cancel(self) -> None:
        """The caller gave up (client disconnected): drop the job's queued items."""
        self.cancelled = True

    def _resolve(self, error: ServeError | None) -> None:
        def resolve() -> None:
            if not self.future.done():
                if error is None:
                    self.future.set_result(self)
                else:
                    self.future.set_exception(error)

        try:
            self.loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


@dataclass(slots=True)
class Item:
    """One input of a job waiting in a tower's queue."""

    job: Job
    pos: int
    payload: Any
    cost: int
    enqueued: float


@dataclass
class BatchStats:
    """Totals since start, shown by ``GET /v1/models``."""

    batches: int = 0
    items: int = 0
    max_size: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "items": self.items, "max_batch_size": self.max_size,
                "mean_batch_size": round(self.items / self.batches, 3) if self.batches else 0.0,
                "failed_items": self.failed}


class Batcher:
    """The queue and inference thread of one tower (see the module docstring).

    ``run_batch(payloads) -> (len(payloads), dim)`` runs the model on the inference thread.
    ``max_cost``: the padded-cost budget of a batch (``None``: items only).
    """

    def __init__(self, tower: str, run_batch: Callable[[list[Any]], NDArray[np.float32]], *, max_batch: int,
                 max_queue: int, max_cost: int | None = None, max_wait_s: float = 0.0,
                 retry_after_s: int = 1, observer: BatchObserver | None = None) -> None:
        self.tower = tower
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_cost = max_cost
        self.max_wait_s = max_wait_s
        self.retry_after_s = retry_after_s
        self._observer = observer
        self._queue: deque[Item] = deque()
        self._depth = 0  # admitted items not yet taken into a batch (queued + being decoded)
        self._cond = threading.Condition()
        self._stopping = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self.alive = False
        self.death: str | None = None
        self.stats = BatchStats()

    # ------------------------------------------------------------- loop side

    def start(self) -> None:
        self.alive = True
        self._thread = threading.Thread(target=self._loop, name=f"crossmodal-infer-{self.tower}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items admitted and not yet running (the queue depth the 429 limit applies to)."""
        return self._depth

    def admit(self, n: int) -> None:
        """Reserve queue room for ``n`` items, or raise the 429 :class:`ServeError` at once."""
        with self._cond:
            if not self.alive or self._stopping:
                raise self._unavailable()
            if self._depth + n > self.max_queue:
                raise overloaded(self.tower, self.retry_after_s)
            self._depth += n

    def release(self, n: int = 1) -> None:
        """Give back room admitted for items that will not be submitted (they failed to decode)."""
        with self._cond:
            self._depth = max(0, self._depth - n)  # a dead thread has reset the count already

    def submit(self, job: Job, pos: int, payload: Any, cost: int = 1) -> None:
        """Queue one admitted item (call :meth:`admit` first)."""
        item = Item(job, pos, payload, cost, time.monotonic())
        with self._cond:
            if job.cancelled:
                self._depth -= 1
                return
            self._queue.append(item)
            self._cond.notify()

    def stop(self, *, drain: bool, timeout: float = 30.0) -> None:
        """Stop the thread: run what is queued first (``drain``) or fail it with 503."""
        with self._cond:
            self._stopping = True
            self._drain = drain
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for item in left:
            item.job.fail(self._unavailable())

    def _unavailable(self) -> ServeError:
        if self.death is not None:
            return unavailable(f"the {self.tower} tower's inference thread died ({self.death}); restart the service",
                               "inference_thread_died")
        return unavailable("the service is shutting down", "shutting_down")

    # ------------------------------------------------------------- inference thread

    def _loop(self) -> None:
        batch: list[Item] | None = None
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._run(batch)
                batch = None
        except BaseException as exc:  # noqa: BLE001 - the thread is ending: tell everyone waiting
            self.death = f"{type(exc).__name__}: {exc}"
            log.error("inference thread of the %s tower died: %s", self.tower, self.death)
        finally:
            self.alive = False
            with self._cond:
                left = list(self._queue)
                self._queue.clear()
                self._depth = 0
            for item in left + (batch or []):
                item.job.fail(self._unavailable())

    def _next_batch(self) -> list[Item] | None:
        with self._cond:
            while True:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping and (not self._drain or not self._queue):
                    return None
                if self.max_wait_s > 0 and len(self._queue) < self.max_batch and not self._stopping:
                    # Fuller batches on request: wait from the oldest item's arrival.
                    left = self._queue[0].enqueued + self.max_wait_s - time.monotonic()
                    if left > 0:
                        self._cond.wait(left)
                        continue
                batch = self._take()
                self._depth -= len(batch)
                live = [it for it in batch if not it.job.cancelled]
                if live:
                    return live

    def _take(self) -> list[Item]:
        """Pop the next batch: the oldest item plus the items nearest its cost, within the budgets."""
        q = self._queue
        if self.max_cost is None:
            return [q.popleft() for _ in range(min(self.max_batch, len(q)))]
        # A window of the oldest items, sorted by cost; grow around the oldest one (cheaper
        # neighbours first: they do not raise the padded length), keeping rows x max <= budget.
        window = [q.popleft() for _ in range(min(4 * self.max_batch, len(q)))]
        order = sorted(range(len(window)), key=lambda i: window[i].cost)
        h = order.index(0)
        lo = hi = h
        longest = window[0].cost
        count = 1
        while lo > 0 and count < self.max_batch and (count + 1) * longest <= self.max_cost:
            lo -= 1
            count += 1
        while hi + 1 < len(order) and count < self.max_batch:
            c = max(longest, window[order[hi + 1]].cost)
            if (count + 1) * c > self.max_cost:
                break
            hi += 1
            longest = c
            count += 1
        chosen = set(order[lo:hi + 1])
        q.extendleft(reversed([it for i, it in enumerate(window) if i not in chosen]))
        return [window[i] for i in sorted(chosen)]

    def _run(self, batch: list[Item]) -> None:
        now = time.monotonic()
        live: list[Item] = []
        for it in batch:
            if now > it.job.deadline:
                it.job.fail(timed_out(it.job.deadline_s))
                self._failed("deadline")
            else:
                live.append(it)
        if not live:
            return
        t0 = time.monotonic()
        try:
            rows: list[Any] = list(self._run_batch([it.payload for it in live]))
        except Exception as exc:  # noqa: BLE001 - isolate the bad item(s): retry one by one
            if len(live) == 1:
                rows = [exc]
            else:
                rows = []
                for it in live:
                    try:
                        rows.append(self._run_batch([it.payload])[0])
                    except Exception as one:  # noqa: BLE001 - this item fails alone
                        rows.append(one)
        t1 = time.monotonic()
        elapsed = t1 - t0
        self.stats.batches += 1
        self.stats.items += len(live)
        self.stats.max_size = max(self.stats.max_size, len(live))
        waits = []
        for it, row in zip(live, rows):
            wait = t0 - it.enqueued
            waits.append(wait)
            job = it.job
            job.queue_s = max(job.queue_s, wait)
            job.inference_s += elapsed
            if isinstance(row, BaseException):
                log.warning("%s item failed in inference: %s", self.tower, row)
                self._failed("inference")
                job.finish_item(it.pos, error=row)
            else:
                job.finish_item(it.pos, row=row)
        if self._observer is not None:
            self._observer.batch_done(self.tower, len(live), len(live) * max(it.cost for it in live), waits, elapsed)

    def _failed(self, reason: str) -> None:
        self.stats.failed += 1
        if self._observer is not None:
            self._observer.item_failed(self.tower, reason)


__all__ = ["Batcher", "BatchStats", "BatchObserver", "Item", "Job"]
