"""The one thread pool that decodes and preprocesses images ahead of the model.

Decoding (PIL, numpy) and inference (onnxruntime) both release the GIL, so images
decode in threads while the model runs on the previous batch. The image tower
(:meth:`~crossmodal.towers.ImageTower.encode` and ``preprocess``), folder ingestion
(:func:`~crossmodal.ingest.ingest_folder`), the Ray embedding actor
(:class:`~crossmodal.distributed.embed.BatchEmbedder`) and the re-ranker's candidate
reading all submit their work here instead of starting pools of their own.

Cache (the module's only state): one ``ThreadPoolExecutor`` per thread count, made on
first use and kept for the life of the process, because starting threads per batch
costs more than decoding a small image. Every default is 2 threads, so a process
normally holds one pool; the threads are named ``crossmodal-decode-*`` and sit idle
between calls.

Rule for callers: a task submitted here must never wait on another task of the same
pool (no nested submission). Two callers could otherwise fill every thread with
waiters and deadlock; each caller submits one task per image and collects the results
in its own thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from .inputs import positive_int

T = TypeVar("T")
R = TypeVar("R")

THREAD_NAME_PREFIX = "crossmodal-decode"

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def decode_pool(workers: int) -> ThreadPoolExecutor:
    """The process-wide decode executor with ``workers`` threads (see the module docstring)."""
    workers = positive_int("workers", workers)
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix=f"{THREAD_NAME_PREFIX}-{workers}")
        return pool


def submit_each(workers: int, fn: Callable[[T], R], items: Iterable[T]) -> list["Future[R]"]:
    """Submit ``fn(item)`` for every item to the decode pool; results come back with :func:`gather`."""
    pool = decode_pool(workers)
    return [pool.submit(fn, item) for item in items]


def gather(futures: list["Future[R]"]) -> list[R]:
    """Results in submission order; on the first error the tasks not yet started are cancelled."""
    try:
        return [f.result() for f in futures]
    except BaseException:
        cancel(futures)
        raise


def gather_in_batches(futures: list["Future[R]"], size: int) -> Iterator[list[R]]:
    """Results in submission order, ``size`` at a time, each list as soon as its own tasks are done.

    For a caller that submitted all its items at once: while it runs the model on one list,
    the pool keeps decoding the later ones. On an error, or when the caller stops iterating,
    the tasks not yet started are cancelled.
    """
    size = positive_int("size", size)
    try:
        for start in range(0, len(futures), size):
            yield gather(futures[start:start + size])
    finally:
        cancel(futures)


def cancel(futures: Iterable["Future[object]"]) -> None:
    """Cancel the tasks that have not started (running ones finish; their results are dropped)."""
    for f in futures:
        f.cancel()


__all__ = ["decode_pool", "submit_each", "gather", "gather_in_batches", "cancel", "THREAD_NAME_PREFIX"]
