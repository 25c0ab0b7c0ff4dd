"""Prometheus metrics of one app, in the app's own registry (two apps in one process never mix)."""

from __future__ import annotations

from typing import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: from 0.5 ms (a cached text query) to 30 s (the default deadline).
_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's counters and histograms; ``render()`` gives the Prometheus text format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("crossmodal_requests", "HTTP requests by route and status", ("route", "status"),
                                registry=r)
        self.request_seconds = Histogram("crossmodal_request_seconds", "Time to answer a request, by route",
                                         ("route",), buckets=_TIME_BUCKETS, registry=r)
        # What a drain or an autoscaler watches: requests read by the server and not yet answered.
        self.in_progress = Gauge("crossmodal_requests_in_progress", "Requests received and not yet answered, "
                                 "by route", ("route",), registry=r)
        self.queue_depth = Gauge("crossmodal_queue_depth", "Items admitted and waiting for a batch, by tower",
                                 ("tower",), registry=r)
        self.batch_size = Histogram("crossmodal_batch_size", "Items per model call, by tower", ("tower",),
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.batch_cost = Histogram("crossmodal_batch_cost", "Padded cost per model call (text: rows x longest "
                                    "row in tokens; image: images)", ("tower",),
                                    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384), registry=r)
        self.queue_seconds = Histogram("crossmodal_queue_seconds", "Time an item waited before its batch ran",
                                       ("tower",), buckets=_TIME_BUCKETS, registry=r)
        self.inference_seconds = Histogram("crossmodal_inference_seconds", "Model time per batch", ("tower",),
                                           buckets=_TIME_BUCKETS, registry=r)
        self.items_failed = Counter("crossmodal_items_failed", "Inputs that failed (decode, inference, deadline)",
                                    ("tower", "reason"), registry=r)
        self.cache_hits = Counter("crossmodal_cache_hits", "Text queries answered from the embedding cache",
                                  registry=r)
        self.cache_misses = Counter("crossmodal_cache_misses", "Text queries that had to be embedded", registry=r)

    def track_queue(self, tower: str, depth: Callable[[], float]) -> None:
        """Read a tower's queue depth at scrape time."""
        self.queue_depth.labels(tower).set_function(depth)

    def batch_done(self, tower: str, size: int, cost: int, queue_s: Sequence[float], inference_s: float) -> None:
        self.batch_size.labels(tower).observe(size)
        self.batch_cost.labels(tower).observe(cost)
        self.inference_seconds.labels(tower).observe(inference_s)
        h = self.queue_seconds.labels(tower)
        for q in queue_s:
            h.observe(q)

    def item_failed(self, tower: str, reason: str) -> None:
        self.items_failed.labels(tower, reason).inc()

    def request_started(self, route: str) -> None:
        self.in_progress.labels(route).inc()

    def request_done(self, route: str, status: int, seconds: float) -> None:
        self.in_progress.labels(route).dec()
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["Metrics"]
