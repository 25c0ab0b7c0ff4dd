"""The shared decode pool: one executor per thread count, ordered results, no deadlock between concurrent callers."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import crossmodal
from crossmodal.decode_pool import THREAD_NAME_PREFIX, decode_pool, gather, gather_in_batches, submit_each
from crossmodal.errors import ImageInputError, InputError
from helpers.threads import run_concurrently


def test_one_pool_per_thread_count_and_results_in_order() -> None:
    assert decode_pool(2) is decode_pool(np.int64(2)) and decode_pool(3) is not decode_pool(2)
    names: set[str] = set()

    def work(i: int) -> int:
        names.add(threading.current_thread().name)
        return i * i

    assert gather(submit_each(2, work, range(20))) == [i * i for i in range(20)]
    assert names and all(n.startswith(THREAD_NAME_PREFIX) for n in names)
    with pytest.raises(InputError, match="workers must be a positive integer"):
        decode_pool(True)


def test_gather_raises_the_first_error_and_cancels_what_has_not_started() -> None:
    gate = threading.Event()
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        if i == 0:
            raise ValueError("image 0 is bad")
        gate.wait(timeout=30)
        return i

    futures = submit_each(1, work, range(5))  # one thread: 1..4 queue behind 0
    with pytest.raises(ValueError, match="image 0"):
        gather(futures)
    gate.set()
    assert sum(f.cancelled() for f in futures) >= 3  # at most item 1 had started when 0 failed


def test_gather_in_batches_yields_each_batch_before_the_rest_is_done() -> None:
    assert list(gather_in_batches(submit_each(2, lambda i: i * i, range(7)), 3)) == [[0, 1, 4], [9, 16, 25], [36]]
    gate = threading.Event()

    def work(i: int) -> int:
        if i >= 3:
            gate.wait(timeout=30)
        return i

    futures = submit_each(1, work, range(8))  # one thread: 3 blocks on the gate, 4..7 queue behind it
    batches = gather_in_batches(futures, 3)
    try:
        assert next(batches) == [0, 1, 2]
        assert not futures[3].done()  # the first batch came while later tasks were still pending
        batches.close()  # the caller stops: what has not started is cancelled
        assert [f.cancelled() for f in futures[4:]] == [True] * 4
    finally:
        gate.set()
    with pytest.raises(InputError, match="size must be a positive integer"):
        next(gather_in_batches([], 0))


def test_concurrent_encodes_share_the_pool_without_deadlock(tiny_clip_bundle: Path) -> None:
    # Every caller submits one task per image and waits in its own thread; four callers at
    # once with multi-batch encodes (decode-ahead) would deadlock a pool whose tasks waited
    # on other tasks of the same pool.
    enc = crossmodal.load(tiny_clip_bundle, modality="image")
    images = np.random.default_rng(0).integers(0, 256, (5, 20, 24, 3), dtype=np.uint8)
    expected = enc.encode_image(images)
    got: dict[int, np.ndarray] = {}

    def caller(i: int):
        def run() -> None:
            got[i] = enc.encode_image(images, batch_size=2)
        return run

    run_concurrently([caller(i) for i in range(4)])
    for out in got.values():
        np.testing.assert_allclose(out, expected, atol=1e-6)
    bad = list(images[:3]) + [b"not an image"] + list(images[3:])
    with pytest.raises(ImageInputError, match=r"image #3"):
        enc.encode_image(bad, batch_size=2)
    np.testing.assert_allclose(enc.encode_image(images, batch_size=2), expected, atol=1e-6)  # still works after
