"""The search page's two routes: ``GET /`` (one static HTML file) and ``GET /v1/thumbnails/{key}``.

The page (``static/index.html``: no build step, no framework, plain ``fetch``) calls
``POST /v1/search`` and shows each hit's thumbnail. It is served with a Content
Security Policy that allows only its own inline script and style (by hash), requests
to this origin, and ``blob:`` images (thumbnails are fetched with the API key header
and shown through object URLs, since an ``<img src>`` cannot send a header).

The thumbnail route returns a small JPEG of one indexed item.

Only indexed files can be served: the request names an integer key (plus a
size and a tower, both checked against fixed bounds), the handler looks the key
up in the index and opens the path the *index* stored for it. No part of the
request is ever joined into a path, so ``..``, absolute paths or symlink
tricks in a URL have nothing to act on; an unknown key is a 404.

Decoding and resizing a 1600x1200 JPEG costs a few milliseconds of CPU, so it
runs in the given executor (the service's decode pool), never on the event
loop. Rendered thumbnails are kept in a small per-route LRU (``cache_items``
entries, about 10-30 kB each at 256 px; 0 disables it): the page asks for the
same thumbnails again on every repeated or refined query. An entry is keyed by
the file's size and modification time too, so a file replaced on disk is
rendered afresh.

Mount both in the service's app::

    Route("/", search_page(), methods=["GET"]),
    Route("/v1/thumbnails/{key}", thumbnail_route(service.require_index, executor=service.decode_pool),
          methods=["GET"]),
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .errors import ServeError, bad_request, not_found, unprocessable

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response

    from crossmodal.index import Index

DEFAULT_SIZE = 256
MIN_SIZE, MAX_SIZE = 16, 1024
TOWERS = ("image", "text")
JPEG_QUALITY = 85
# Browsers may reuse a thumbnail for a while; "private" because the route may sit behind an API key.
CACHE_CONTROL = "private, max-age=300"


def parse_options(size: str | None, tower: str | None) -> tuple[int, str]:
    """``(size, tower)`` from the query string, or a 400 naming the bad one."""
    if size is None or size == "":
        px = DEFAULT_SIZE
    elif size.isascii() and size.isdigit() and MIN_SIZE <= int(size) <= MAX_SIZE:
        px = int(size)
    else:
        raise bad_request(f"size must be an integer from {MIN_SIZE} to {MAX_SIZE} (pixels of the longer side), "
                          f"got {size[:20]!r}", "invalid_value")
    tw = tower or "image"
    if tw not in TOWERS:
        raise bad_request(f"tower must be one of {list(TOWERS)}, got {tw[:20]!r}", "invalid_value")
    return px, tw


def stored_path(index: "Index", key: int, tower: str) -> str:
    """The file the index holds for ``key`` (never a path from the request), or a 404."""
    rec = index.get(key, tower=tower)
    if rec is None:
        raise not_found(f"no {tower} item with key {key} in the index", "item_not_found")
    if not rec.path:
        raise not_found(f"{tower} item {key} has no file (it was added as a vector or a caption only)", "no_file")
    return rec.path


def render(path: str, size: int) -> bytes:
    """A JPEG whose longer side is at most ``size`` pixels (EXIF orientation applied, alpha on white)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            # JPEG: let the decoder scale by 1/2, 1/4 or 1/8 in the DCT (several times faster for photos).
            im.draft("RGB", (size, size))
            im = ImageOps.exif_transpose(im)
            im.thumbnail((size, size), Image.Resampling.LANCZOS)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.new("RGB", rgba.size, (255, 255, 255))
                im.paste(rgba, mask=rgba.getchannel("A"))
            elif im.mode != "RGB":
                im = im.convert("RGB")
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=JPEG_QUALITY)
            return buf.getvalue()
    except FileNotFoundError:
        raise not_found("the item's file is no longer on disk; re-index its folder", "file_missing") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise unprocessable(f"the item's file cannot be decoded as an image ({type(e).__name__})",
                            "invalid_image") from None


class ThumbnailCache:
    """A bounded LRU of rendered thumbnails, shared by the executor's threads; ``hits`` counts reuse."""

    def __init__(self, items: int) -> None:
        self.items = items
        self._data: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
                self.hits += 1
            return data

    def put(self, key: tuple[Any, ...], data: bytes) -> None:
        with self._lock:
            self._data[key] = data
            self._data.move_to_end(key)
            while len(self._data) > self.items:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def make_thumbnail(index: "Index", key: int, size: int, tower: str, cache: ThumbnailCache | None = None) -> bytes:
    """Look ``key`` up and render its file (blocking: run it in a thread)."""
    path = stored_path(index, key, tower)
    try:
        st = os.stat(path)
    except OSError:
        raise not_found(f"{tower} item {key}'s file is no longer on disk; re-index its folder",
                        "file_missing") from None
    ck = (tower, key, size, st.st_size, st.st_mtime_ns)
    if cache is not None and (hit := cache.get(ck)) is not None:
        return hit
    data = render(path, size)
    if cache is not None:
        cache.put(ck, data)
    return data


PAGE = Path(__file__).parent / "static" / "index.html"


def page_headers(html: str) -> dict[str, str]:
    """Response headers of the page: a CSP naming the hashes of its inline script and style."""
    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
                        for b in bodies)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
           "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
    return {"content-security-policy": csp, "x-content-type-options": "nosniff", "cache-control": "no-cache",
            "referrer-policy": "no-referrer"}


def search_page() -> "Callable[[Request], Awaitable[Response]]":
    """A Starlette endpoint for ``GET /``: the search page (read once, at app creation).

    The page holds no data: it may stay open when an API key is configured (it asks for
    the key and sends it on every API call), so an auth middleware should let ``/`` pass.
    """
    from starlette.responses import HTMLResponse

    html = PAGE.read_text(encoding="utf-8")
    headers = page_headers(html)

    async def endpoint(request: "Request") -> "Response":
        return HTMLResponse(html, headers=headers)

    return endpoint


def thumbnail_route(index: "Callable[[], Index | None]", *, executor: Executor | None = None,
                    cache_items: int = 256, error_response: "Callable[[int, str], Response] | None" = None,
                    ) -> "Callable[[Request], Awaitable[Response]]":
    """A Starlette endpoint for ``GET /v1/thumbnails/{key}?size=256&tower=image``.

    ``index``: returns the service's open index; None (no index) or a :class:`ServeError`
    it raises (``Service.require_index`` fits: 404 without an index, 409 for another
    embedding space) answers the request. ``executor``: where lookups and decoding run
    (None: the event loop's default executor). ``cache_items``: LRU entries (0: no cache;
    the endpoint's ``cache`` attribute is then None). ``error_response(status, message)``:
    the app's error response; default: the service's JSON error shape.
    """
    from starlette.responses import JSONResponse, Response

    from .routes.common import key_param

    cache = ThumbnailCache(cache_items) if cache_items > 0 else None

    def error(e: ServeError) -> Response:
        if error_response is not None:
            return error_response(e.status, e.message)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    async def endpoint(request: "Request") -> Response:
        try:
            key = key_param(request)
            size, tower = parse_options(request.query_params.get("size"), request.query_params.get("tower"))
            idx = index()
            if idx is None:
                raise not_found("this service has no index to show thumbnails from", "no_index")
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(executor, make_thumbnail, idx, key, size, tower, cache)
        except ServeError as e:
            return error(e)
        return Response(data, media_type="image/jpeg", headers={"cache-control": CACHE_CONTROL})

    endpoint.cache = cache  # type: ignore[attr-defined]  # tests and metrics read its hit count
    return endpoint


__all__ = ["search_page", "page_headers", "thumbnail_route", "make_thumbnail", "render", "parse_options", "stored_path", "ThumbnailCache",
           "DEFAULT_SIZE", "MIN_SIZE", "MAX_SIZE"]
