"""The state behind the routes: model, index, batchers, cache, thread pools and their lifecycle.

One :class:`Service` per app. It owns:

* the :class:`~crossmodal.encoder.Encoder` (and, for ALBEF bundles with a re-ranker, the
  :class:`~crossmodal.rerank.Reranker` whose encoder it is) and one :class:`Batcher` per tower;
* the :class:`~crossmodal.index.Index` (optional; several index paths are searched as one read-only
  :class:`~crossmodal.index.sharded.ShardedIndex`) and the one :class:`~crossmodal.retriever.Retriever`
  that searches it (and re-ranks); the index is written by ONE writer thread (adds,
  removals, uploaded files, compaction) while searches run in a search pool: the index
  keeps its own lock around graph changes, so searches keep being answered during adds;
* a decode pool (image decoding and preprocessing) and the text-query cache.

Start-up (:meth:`start`, run as a background task by the app's lifespan): load what was
given as paths, open or create the index, warm it up, start the inference threads, then
a canary request through each tower; only then is the service ready. Shutdown
(:meth:`stop`): the server has stopped accepting and answered what it had; queued work
is finished, the index compacted and saved.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from starlette.requests import Request

from ..decode_pool import decode_pool
from ..errors import CrossmodalError, IncompatibleTowersError
from .batcher import Batcher, Job
from .cache import EmbeddingCache
from .config import ServeConfig
from .decode import prepare_image
from .errors import ServeError, bad_request, from_library, not_found, timed_out, unavailable
from .fingerprint import encoder_fingerprint
from .metrics import Metrics

if TYPE_CHECKING:  # pragma: no cover
    from ..encoder import Encoder
    from ..index import Index
    from ..rerank import Reranker
    from ..retriever import Retriever

log = logging.getLogger("crossmodal.serve")

# Small requests are tokenized on the loop (tens of microseconds); larger ones in a thread.
_INLINE_TOKENIZE_CHARS = 4096
_CANARY_TEXT = "a photo of a dog"
# The canary's deadline when the configured request deadline is shorter.
_CANARY_DEADLINE_S = 120.0


class ClientGone(Exception):
    """The client disconnected before its answer was ready (nothing left to answer)."""


@dataclass
class RequestStats:
    """What one request cost, for its log line and its timing headers."""

    items: int = 0
    queue_s: float = 0.0
    inference_s: float = 0.0

    def add(self, job: Job, items: int) -> None:
        self.items += items
        self.queue_s += job.queue_s
        self.inference_s += job.inference_s

    def headers(self) -> dict[str, str]:
        return {"x-queue-time": f"{self.queue_s * 1e3:.3f}", "x-inference-time": f"{self.inference_s * 1e3:.3f}"}


@dataclass
class TextEmbeddings:
    """Embeddings of a request's texts (``job.out``) and their token counts."""

    job: Job
    tokens: NDArray[np.int64]


class Service:
    """See the module docstring. ``bundle`` / ``index``: paths (loaded at start) or loaded objects."""

    def __init__(self, bundle: Any, index: Any = None, *, variant: str | None = None, threads: int | None = None,
                 config: ServeConfig | None = None, create_index: bool = True,
                 uploads_dir: str | os.PathLike[str] | None = None) -> None:
        self.config = config or ServeConfig()
        self.metrics = Metrics()
        self._bundle_arg = bundle
        self._index_arg = index
        self._variant_arg = variant
        self._threads = threads
        self._create_index = create_index
        self._uploads_arg = uploads_dir
        self.encoder: Encoder | None = None
        self.reranker: Reranker | None = None
        self.index: Index | None = None
        self.retriever: Retriever | None = None
        self.index_error: ServeError | None = None
        # Number of shards when the index is a ShardedIndex (read-only: no items routes), else None.
        self.shards: int | None = None
        self.uploads_dir: Path | None = None
        self.fingerprint = ""
        self.cache = EmbeddingCache(0, "")
        self.batchers: dict[str, Batcher] = {}
        self.started_at = int(time.time())
        self.ready = False
        self.stopping = False
        self.load_error: str | None = None
        workers = self.config.decode_workers or (os.cpu_count() or 2)
        # The process-wide decode pool (crossmodal.decode_pool), shared with the library's
        # image tower; it outlives the service, so stop() leaves it running.
        self.decode_pool = decode_pool(workers)
        self.search_pool = ThreadPoolExecutor(max(2, workers), thread_name_prefix="crossmodal-serve-search")
        # One writer: index adds/removals, uploaded files and compaction never interleave.
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="crossmodal-serve-writer")
        self._journal_since_save = 0

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load, warm up, start the inference threads and pass the canary; then :attr:`ready`."""
        try:
            await asyncio.to_thread(self._load)
            self._start_batchers()
            await self._canary()
        except Exception as exc:  # noqa: BLE001 - reported by /health/ready and the log
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("crossmodal serve failed to start: %s", self.load_error)
            return
        self.ready = True
        enc = self.encoder
        assert enc is not None
        log.info("ready: bundle %s (%s), variant %s, fingerprint %s, index %s", enc.bundle.name, enc.bundle.family,
                 enc.variant, self.fingerprint, self.index.path if self.index is not None else None)

    def _load(self) -> None:
        enc = self._bundle_arg
        if isinstance(enc, (str, os.PathLike)):
            enc = load_model(enc, self._variant_arg, self._threads, spin=self.config.spin_wait)
        if hasattr(enc, "score_states"):  # a Reranker: its encoder serves the towers
            self.reranker, enc = enc, enc.encoder
        self.encoder = enc
        self.fingerprint = encoder_fingerprint(enc)
        self.cache = EmbeddingCache(self.config.cache_size, self.fingerprint)
        index = self._index_arg
        if isinstance(index, (str, os.PathLike, list, tuple)):
            index = open_indexes(index, enc, create=self._create_index)
        if index is None:
            return
        self.index = index
        self.shards = len(getattr(index, "shards", ())) or None
        from ..retriever import Retriever

        try:
            # One Retriever answers every search; it refuses an index (or re-ranker) of another space.
            self.retriever = Retriever(enc, index, self.reranker)
        except IncompatibleTowersError as exc:
            # Embedding still works; search and items refuse with 409 (and say why).
            self.index_error = from_library(exc)
            log.error("index %s cannot be searched with this bundle: %s", index.path, exc)
            return
        index.warm_up()
        if self.shards is None:  # shards are never written here: no uploads
            self.uploads_dir = self._choose_uploads_dir(index)

    def _choose_uploads_dir(self, index: "Index") -> Path:
        # Item paths must lie inside the index root when it has one (the index refuses others).
        if self._uploads_arg is not None:
            return Path(os.path.abspath(self._uploads_arg))
        if index.root is not None:
            return Path(index.root) / "crossmodal-uploads"
        return Path(os.path.abspath(index.path)) / "uploads"

    def _start_batchers(self) -> None:
        enc = self.encoder
        assert enc is not None
        cfg = self.config
        common = dict(max_batch=cfg.max_batch, max_queue=cfg.max_queue, max_wait_s=cfg.max_wait_ms / 1000.0,
                      retry_after_s=cfg.retry_after_s, observer=self.metrics)
        if enc.text is not None:
            self.batchers["text"] = Batcher("text", _text_runner(enc.text), max_cost=cfg.max_tokens_per_batch,
                                            **common)  # type: ignore[arg-type]
        if enc.image is not None:
            self.batchers["image"] = Batcher("image", enc.image.run_pixels, **common)  # type: ignore[arg-type]
        for name, b in self.batchers.items():
            self.metrics.track_queue(name, lambda b=b: b.depth)
            b.start()

    async def _canary(self) -> None:
        """One real request through each tower: the batcher, the thread and the model all work."""
        if "text" in self.batchers:
            emb = await self.embed_texts([_CANARY_TEXT], RequestStats(), None, use_cache=False,
                                         deadline_s=self._canary_deadline_s())
            _check_finite(emb.job, "text")
        if "image" in self.batchers:
            from PIL import Image
            import io

            buf = io.BytesIO()
            Image.new("RGB", (64, 48), (120, 130, 140)).save(buf, format="PNG")
            job = await self.embed_images([buf.getvalue()], RequestStats(), None,
                                          deadline_s=self._canary_deadline_s())
            _check_finite(job, "image")

    def _canary_deadline_s(self) -> float:
        # The canary is a tower's first run (onnxruntime allocates and plans then): a
        # service configured with a short request deadline must still start.
        return max(self.config.deadline_s, _CANARY_DEADLINE_S)

    async def stop(self) -> None:
        """Finish queued work, stop the threads, compact and save the index, close everything."""
        self.stopping = True
        self.ready = False
        for b in self.batchers.values():
            await asyncio.to_thread(b.stop, drain=True)
        if self.index is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(self.writer, self._save_and_close)
            except Exception as exc:  # noqa: BLE001 - logged; the journal still holds every add
                log.error("saving the index on shutdown failed (the journal keeps every add): %s", exc)
        for pool in (self.search_pool, self.writer):
            pool.shutdown(wait=True, cancel_futures=True)
        log.info("stopped")

    def _save_and_close(self) -> None:
        assert self.index is not None
        if not self.index.read_only and self.index_error is None:
            self.index.save()
        self.index.close()

    # ------------------------------------------------------------- readiness

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, details)`` for ``/health/ready``."""
        dead = {n: b.death for n, b in self.batchers.items() if not b.alive}
        if self.load_error is not None:
            return False, {"status": "failed", "error": self.load_error}
        if self.stopping:
            return False, {"status": "stopping"}
        if not self.ready:
            return False, {"status": "loading"}
        if dead:
            return False, {"status": "inference_thread_died", "towers": dead}
        return True, {"status": "ready", "fingerprint": self.fingerprint}

    def require_ready(self) -> None:
        ok, details = self.health()
        if not ok:
            if details["status"] == "loading":
                raise unavailable("the service is still loading its models; retry shortly", "loading",
                                  retry_after_s=self.config.retry_after_s)
            raise unavailable(f"the service is not ready ({details['status']})", details["status"])

    def batcher(self, tower: str) -> Batcher:
        b = self.batchers.get(tower)
        if b is None:
            enc = self.encoder
            towers = sorted(self.batchers)
            raise bad_request(f"bundle {enc.bundle.name if enc else '?'} has no {tower} tower (it serves: {towers})",
                              "modality_not_supported")
        return b

    def require_index(self, writable: bool = False) -> "Index":
        if self.index is None:
            raise not_found("this service has no index: start it with --index INDEX", "no_index")
        if self.index_error is not None:
            raise self.index_error
        if writable and self.shards is not None:
            raise ServeError(403, f"the index is split across {self.shards} shards ({self.index.path}), searched "
                             "read-only here: add or remove items with the one writer of the shard they belong "
                             "to (crossmodal index add, or a service started with that shard alone)",
                             "permission_error", "index_sharded")
        if writable and self.index.read_only:
            raise ServeError(403, f"the index {self.index.path} is open read-only here", "permission_error",
                             "index_read_only")
        return self.index

    # ------------------------------------------------------------- embedding

    async def embed_texts(self, texts: Sequence[str], stats: RequestStats, request: Request | None, *,
                          use_cache: bool = True, deadline_s: float | None = None) -> TextEmbeddings:
        """Embed ``texts`` through the text batcher (cache first); per-item errors in ``job.errors``.

        ``deadline_s`` overrides the configured request deadline (the start-up canary's own).
        """
        batcher = self.batcher("text")
        enc = self.encoder
        assert enc is not None and enc.text is not None
        loop = asyncio.get_running_loop()
        tower = enc.text
        if sum(len(t) for t in texts) <= _INLINE_TOKENIZE_CHARS:
            feeds = _tokenize(tower, texts)
        else:
            feeds = await loop.run_in_executor(self.decode_pool, _tokenize, tower, texts)
        lengths = feeds["attention_mask"].sum(axis=1).astype(np.int64)
        job = Job(loop, len(texts), enc.dim, deadline_s or self.config.deadline_s)
        misses: list[tuple[int, Any, dict[str, NDArray[np.int64]]]] = []
        for i, n in enumerate(lengths):
            row = {name: arr[i, :n] for name, arr in feeds.items()}
            key = self.cache.key(row["input_ids"]) if use_cache else None
            hit = self.cache.get(key) if key is not None else None
            if hit is not None:
                self.metrics.cache_hits.inc()
                job.finish_item(i, row=hit)
            else:
                if use_cache:
                    self.metrics.cache_misses.inc()
                misses.append((i, key, row))
        if misses:
            batcher.admit(len(misses))
            for i, _, row in misses:
                batcher.submit(job, i, row, cost=int(lengths[i]))
        await self.wait(job, request)
        for i, key, _ in misses:
            if key is not None and i not in job.errors:
                self.cache.put(key, job.out[i])
        stats.add(job, len(texts))
        return TextEmbeddings(job, lengths)

    async def embed_images(self, sources: Sequence[Any], stats: RequestStats, request: Request | None, *,
                           deadline_s: float | None = None) -> Job:
        """Decode (in the pool) and embed images given as bytes or JSON strings; per-item errors in ``errors``.

        ``deadline_s`` overrides the configured request deadline (the start-up canary's own).
        """
        batcher = self.batcher("image")
        enc = self.encoder
        assert enc is not None and enc.image is not None
        loop = asyncio.get_running_loop()
        job = Job(loop, len(sources), enc.dim, deadline_s or self.config.deadline_s)
        batcher.admit(len(sources))  # before decoding: a flood is refused without decoding anything

        def prepared(pos: int, fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or job.cancelled:
                batcher.release(1)
                return
            exc = fut.exception()
            if exc is not None:
                batcher.release(1)
                self.metrics.item_failed("image", "decode")
                job.finish_item(pos, error=exc)
            else:
                batcher.submit(job, pos, fut.result())

        for i, src in enumerate(sources):
            fut = loop.run_in_executor(self.decode_pool, prepare_image, enc.image, src, i)
            fut.add_done_callback(lambda f, i=i: prepared(i, f))
        await self.wait(job, request)
        stats.add(job, len(sources))
        return job

    async def wait(self, job: Job, request: Request | None) -> None:
        """Wait for ``job``; 504 past its deadline; :class:`ClientGone` when the client disconnects.

        Either way the job is cancelled, so its queued items are dropped before inference.
        """
        watch = asyncio.ensure_future(_disconnected(request)) if request is not None else None
        waiters: set[asyncio.Future[Any]] = {job.future} | ({watch} if watch is not None else set())
        try:
            await asyncio.wait(waiters, timeout=max(0.0, job.deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server gave up on the request (forced shutdown, ...)
            job.cancel()
            raise
        finally:
            if watch is not None:
                watch.cancel()
        if job.future.done():
            job.future.result()  # raises the job's ServeError, if it failed as a whole
            return
        job.cancel()
        if watch is not None and watch.done() and not watch.cancelled():
            raise ClientGone()
        raise timed_out(job.deadline_s)

    # ------------------------------------------------------------- index

    async def search(self, vectors: NDArray[np.float32], k: int, tower: str, exact: bool | None, *,
                     where: Any = None, text: str | None = None,
                     ranking: Mapping[str, Any] | None = None) -> tuple[list[Any], str]:
        """Top-``k`` hits of one query vector (in the search pool), and which search answered.

        ``where``: a metadata filter; ``text`` with ``ranking`` (``fuse``, ``fuse_mode``,
        ``fuse_weight``, ``hybrid``): the text ``vectors`` embeds, ranked as
        :meth:`~crossmodal.retriever.Retriever.search_text` does with those options.
        """
        index = self.require_index()
        retriever = self.retriever
        assert retriever is not None

        def run() -> tuple[list[Any], str]:
            used = exact if exact is not None else index.uses_exact(tower)
            if text is not None:
                hits = retriever.search_text(text, k, tower=tower, exact=exact, where=where,
                                             vectors=vectors, **(ranking or {}))
            else:
                hits = retriever.search_vector(vectors, k, tower=tower, exact=exact, where=where)
            return hits, ("exact" if used else "hnsw")

        return await self._in(self.search_pool, run)

    async def rerank_search(self, text: str, k: int, depth: int, exact: bool | None, *, where: Any = None,
                            ranking: Mapping[str, Any] | None = None) -> tuple[list[Any], str]:
        """Text -> image search re-scored by the bundle's re-ranker (its own model calls, in the search pool)."""
        index = self.require_index()
        retriever = self.retriever
        assert retriever is not None
        if retriever.reranker is None:
            enc = self.encoder
            raise bad_request(f"rerank needs an ALBEF bundle with a rerank tower; {enc.bundle.name if enc else '?'} "
                              "has none", "rerank_not_supported")

        def run() -> tuple[list[Any], str]:
            used = exact if exact is not None else index.uses_exact("image")
            hits = retriever.search_text(text, k, exact=exact, rerank=depth, where=where, **(ranking or {}))
            return hits, ("exact" if used else "hnsw")

        return await self._in(self.search_pool, run)

    async def in_writer(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the single writer thread (library errors become HTTP errors)."""
        return await self._in(self.writer, fn, *args)

    async def _in(self, pool: ThreadPoolExecutor, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except CrossmodalError as exc:
            raise from_library(exc) from exc
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise unavailable("the service is shutting down", "shutting_down") from None
            raise

    def saved_if_due(self, added: int) -> None:
        """Writer thread: compact the journal into the graph files when it has grown enough."""
        assert self.index is not None
        self._journal_since_save += added
        if self._journal_since_save >= max(self.config.compact_every, len(self.index) // 4):
            self.index.save()
            self._journal_since_save = 0


def load_model(path: str | os.PathLike[str], variant: str | None = None, threads: int | None = None, *,
               spin: bool = False) -> Any:
    """The bundle's :class:`~crossmodal.encoder.Encoder`, or its :class:`~crossmodal.rerank.Reranker`
    (whose encoder shares its sessions) when the bundle has a ``rerank`` tower; ``spin`` as
    :attr:`ServeConfig.spin_wait <crossmodal.serve.config.ServeConfig>`."""
    import crossmodal

    from ..manifest import read_bundle
    from ..variants import DEFAULT_VARIANT

    if "rerank" in read_bundle(Path(path)).towers:
        return crossmodal.Reranker.load(path, variant=variant or DEFAULT_VARIANT, threads=threads, spin=spin)
    return crossmodal.load(path, variant=variant, threads=threads, spin=spin)


def open_index(path: str | os.PathLike[str], encoder: Any, *, create: bool = True,
               read_only: bool = False) -> "Index":
    """Open the index at ``path`` for writing, or create it empty for ``encoder``'s bundle when missing;
    ``read_only``: open it as a reader (never created; many replicas may share it)."""
    from ..index import Index

    p = Path(path)
    if read_only:
        return Index.open(p, read_only=True)
    if not p.exists() and create:
        log.info("creating an empty index at %s for bundle %s", p, encoder.bundle.name)
        return Index.create(p, bundle=encoder.bundle, info={"variant": encoder.variant})
    return Index.open(p)


def open_indexes(paths: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]", encoder: Any, *,
                 create: bool = True, read_only: bool = False) -> Any:
    """One path: :func:`open_index`. Several: the shards of one collection, opened read-only as a
    :class:`~crossmodal.index.sharded.ShardedIndex` (never created: each shard has its own writer)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if len(paths) == 1:
        return open_index(paths[0], encoder, create=create, read_only=read_only)
    from ..index.sharded import open_many

    return open_many(paths, read_only=True)


def _tokenize(tower: Any, texts: Sequence[str]) -> dict[str, NDArray[np.int64]]:
    return tower.tokenize(list(texts))


def _text_runner(tower: Any) -> Any:
    """The text batcher's model call: pad the items' token rows to one batch, as the tokenizer pads."""
    settings = tower.manifest.text
    pad_id = int(settings.pad_id)
    fixed = int(settings.max_length) if settings.pad_to_max_length else None

    def run(rows: list[dict[str, NDArray[np.int64]]]) -> NDArray[np.float32]:
        width = fixed or max(len(r["input_ids"]) for r in rows)
        feeds = {}
        for name in rows[0]:
            # Right padding: pad_id for the ids, 0 for the attention mask and token types.
            arr = np.full((len(rows), width), pad_id if name == "input_ids" else 0, dtype=np.int64)
            for i, r in enumerate(rows):
                arr[i, :len(r[name])] = r[name]
            feeds[name] = arr
        return tower.run(feeds)

    return run


async def _disconnected(request: Request) -> None:
    # The body has been read: the next message is the disconnect (or the response's end).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _check_finite(job: Job, tower: str) -> None:
    if job.errors or not np.isfinite(job.out).all():
        raise RuntimeError(f"the canary request through the {tower} tower failed: "
                           f"{next(iter(job.errors.values()), 'non-finite embedding')}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = ["Service", "load_model", "open_index", "open_indexes", "RequestStats", "TextEmbeddings", "ClientGone", "sha256_hex"]
