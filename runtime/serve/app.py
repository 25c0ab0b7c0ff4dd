"""``create_app``: the service as a Starlette (ASGI) app, for ``crossmodal serve`` or a user's own server.

>>> from crossmodal.serve import create_app
>>> app = create_app("models/clip-vit-b-32", index="photos.idx", variant="cpu-int8", max_batch=32)  # doctest: +SKIP
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)  # one process, one worker

The app's lifespan loads the bundle (when given as a path), opens the index, warms up
and passes a canary request in the background: ``/health/live`` answers at once,
``/health/ready`` and the API once the canary passed. Shutdown finishes queued work and
saves the index. Run ONE writing worker process per index (the index has a single writer);
any number of replicas may search it opened read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any, AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from ..errors import CrossmodalError
from .auth import BearerAuth
from .config import ServeConfig
from .errors import ServeError, as_serve_error, error_body, unauthorized
from .routes import routes
from .service import ClientGone, RequestStats, Service

log = logging.getLogger("crossmodal.serve")
access_log = logging.getLogger("crossmodal.serve.access")

# Paths open without the API key: the probes, and the search page itself (it holds no data;
# its requests carry the key).
OPEN_PATHS = ("/health/live", "/health/ready", "/")


def create_app(bundle: Any, index: Any = None, *, variant: str | None = None, threads: int | None = None,
               config: ServeConfig | None = None, create_index: bool = True,
               uploads_dir: str | os.PathLike[str] | None = None, **limits: Any) -> Starlette:
    """The service's ASGI app.

    ``bundle``: a bundle directory (or an already loaded :class:`~crossmodal.encoder.Encoder`
    or :class:`~crossmodal.rerank.Reranker`). ``index``: an index directory (created empty
    for the bundle when missing and ``create_index``), an open :class:`~crossmodal.index.Index`,
    or None (embedding and ranking only); a list of index directories, or an open
    :class:`~crossmodal.index.sharded.ShardedIndex`, is searched as one read-only index (the
    items routes answer 403). ``variant`` / ``threads``: as :func:`crossmodal.load`.
    ``config``: a :class:`ServeConfig`; ``limits``: its fields given directly (``max_batch=16``).
    ``uploads_dir``: where images added through ``POST /v1/items`` are stored (default: inside
    the index root, or ``INDEX/uploads``).
    """
    if limits:
        import dataclasses

        config = dataclasses.replace(config or ServeConfig(), **limits)
    service = Service(bundle, index, variant=variant, threads=threads, config=config, create_index=create_index,
                      uploads_dir=uploads_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        starting = asyncio.create_task(service.start())
        try:
            yield
        finally:
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            await service.stop()

    all_routes: list[BaseRoute] = list(routes())
    all_routes += _page_routes(service)
    app = Starlette(routes=all_routes, lifespan=lifespan, exception_handlers={
        ServeError: _serve_error, HTTPException: _http_error, CrossmodalError: _library_error,
        ClientGone: _client_gone,
    })
    app.state.service = service
    app.add_middleware(RequestMiddleware, service=service, auth=BearerAuth(service.config.api_key))
    return app


def _page_routes(service: Service) -> list[BaseRoute]:
    """The search page and its thumbnail route (:mod:`crossmodal.serve.thumbnails`), when shipped."""
    try:
        from .thumbnails import PAGE, search_page, thumbnail_route
    except ImportError:
        return []
    out: list[BaseRoute] = []
    if PAGE.is_file():
        out.append(Route("/", search_page(), methods=["GET"]))
    # The index accessor raises the service's 404 (no index) / 409 (another space) itself.
    out.append(Route("/v1/thumbnails/{key}", thumbnail_route(service.require_index, executor=service.decode_pool),
                     methods=["GET"]))
    return out


def _response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


async def _serve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServeError)
    return _response(exc.status, exc.body(), exc.headers)


async def _library_error(request: Request, exc: Exception) -> Response:
    return await _serve_error(request, as_serve_error(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
    message = {404: f"no route {request.method} {request.url.path}; see GET /v1/models and the README",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return _response(exc.status_code, error_body(message, kind, {404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error")), dict(exc.headers or {}))


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody reads this; 499 ("client closed request") marks it in the log and metrics.
    return Response(b"", status_code=499)


class RequestMiddleware:
    """Pure ASGI: the API key check, one structured log line and the request metrics per request."""

    def __init__(self, app: Any, service: Service, auth: BearerAuth) -> None:
        self.app = app
        self.service = service
        self.auth = auth
        self._routes: list[BaseRoute] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        stats = scope["crossmodal.stats"] = RequestStats()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        path = scope["path"]
        route = self._label(scope)
        self.service.metrics.request_started(route)
        try:
            if path in OPEN_PATHS or self.auth.allows(path, _header(scope, b"authorization")):
                await self.app(scope, receive, send_status)
            else:
                err = unauthorized()
                await _response(err.status, err.body(), err.headers)(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - t0
            self.service.metrics.request_done(route, status, elapsed)
            level = logging.DEBUG if route.startswith(("/health/", "/metrics")) else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(level, orjson.dumps({
                    "method": scope["method"], "route": route, "status": status, "items": stats.items,
                    "queue_ms": round(stats.queue_s * 1e3, 3), "inference_ms": round(stats.inference_s * 1e3, 3),
                    "total_ms": round(elapsed * 1e3, 3)}).decode())

    def _label(self, scope: dict[str, Any]) -> str:
        # The route template, never the raw path: /v1/items/{key} is one label, not one per key.
        route = scope.get("route")
        if route is None:
            if self._routes is None:
                self._routes = list(getattr(scope.get("app"), "routes", []) or [])
            for r in self._routes:
                if r.matches(scope)[0] != Match.NONE:
                    route = r
                    break
        return getattr(route, "path", None) or "unmatched"


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


__all__ = ["create_app", "RequestMiddleware", "OPEN_PATHS"]
