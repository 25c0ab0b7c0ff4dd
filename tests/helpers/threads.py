"""Run test bodies in threads and re-raise what any of them raised."""

from __future__ import annotations

import threading
from typing import Callable, Sequence


def run_concurrently(targets: Sequence[Callable[[], None]]) -> None:
    """Start one thread per target, join all, then raise the first exception any thread raised."""
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # re-raised in the calling thread below
                errors.append(e)
        return run

    threads = [threading.Thread(target=guarded(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
