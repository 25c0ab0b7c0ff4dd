"""The service's settings: one frozen dataclass, validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, fields
from ..errors import InputError
from ..inputs import boolean, non_negative_int, positive_int


@dataclass(frozen=True)
class ServeConfig:
    """Limits and knobs of one service instance (the CLI flags map onto these fields).

    Batching: ``max_batch`` items per model call (images or texts); ``max_tokens_per_batch``
    bounds a text batch by its padded size (rows x longest row), so one 77-token text does
    not make 63 short queries pay for 77 tokens each (a single text longer than the budget
    still runs, alone); ``max_wait_ms`` = 0 forms the next batch as soon as a tower's thread
    is free, more waits up to that long for a fuller batch.
    Overload: ``max_queue`` items waiting per tower (more answer 429 with ``Retry-After:
    retry_after_s``); ``max_inputs`` per request and ``max_body_bytes`` per body (413);
    ``deadline_s`` per request (504; queued items of a late request are dropped).
    ``cache_size``: text-query embeddings kept (0 disables). ``api_key``: required as
    ``Authorization: Bearer`` on every route but the health checks (None: open).
    ``decode_workers``: threads decoding images (0: one per CPU). ``spin_wait``: let idle
    onnxruntime threads spin-wait for work, as a process that only runs the model would; off by
    default, because here they share the cores with the event loop and the decoders (measured at
    4x overload on 2 cores: spinning cut the answers by a quarter and took the 429s' p99 from 2.5 to 24 s).
    """

    max_batch: int = 32
    max_tokens_per_batch: int = 2048
    max_wait_ms: float = 0.0
    max_queue: int = 1024
    max_inputs: int = 256
    max_body_bytes: int = 32 * 1024 * 1024
    deadline_s: float = 30.0
    retry_after_s: int = 1
    cache_size: int = 1024
    api_key: str | None = None
    decode_workers: int = 0
    spin_wait: bool = False
    # Journal entries (vectors added through /v1/items) that trigger a compaction of the
    # graph files (Index.save); the index also saves on shutdown.
    compact_every: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_tokens_per_batch", "max_queue", "max_inputs", "max_body_bytes",
                     "retry_after_s", "compact_every"):
            positive_int(name, getattr(self, name))
        for name in ("cache_size", "decode_workers"):
            non_negative_int(name, getattr(self, name))
        for name in ("max_wait_ms", "deadline_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InputError(f"{name} must be a number >= 0, got {value!r}")
        if self.deadline_s == 0:
            raise InputError("deadline_s must be > 0 seconds")
        if self.max_inputs > self.max_queue:
            raise InputError(f"max_inputs ({self.max_inputs}) cannot exceed max_queue ({self.max_queue}): "
                             "such a request could never be queued")
        boolean("spin_wait", self.spin_wait)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise InputError("api_key must be a non-empty string or None")

    def __repr__(self) -> str:
        # The key is never printed (logs, tracebacks, reprs).
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if shown["api_key"] is not None:
            shown["api_key"] = "***"
        return "ServeConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


__all__ = ["ServeConfig"]
