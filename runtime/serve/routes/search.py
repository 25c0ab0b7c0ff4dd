"""``POST /v1/search``: the index's nearest items to a text, an image or a vector.

Request (JSON): exactly one of ``text`` (a string), ``image`` (base64 or a data URI) or
``vector`` (``dim`` numbers); ``k`` (default 10), ``target`` (the index tower to search:
``image``, default, or ``text`` for captions), ``exact`` (true: scan every vector, false:
HNSW, absent: the index decides by its size), ``rerank`` (ALBEF bundles with a re-ranker:
re-score the top ``rerank`` >= k text -> image hits by image-text matching). Multipart
(an image file part plus the options as fields) and a raw image body (options in the
query string) work too.

Response: ``{"object": "search", "model", "query": "text"|"image"|"vector", "target",
"search": "exact"|"hnsw", "hits": [{"key", "path", "caption", "score", "itm_score"}]}``.
Keys are decimal strings: 63-bit integers exceed what JavaScript numbers hold exactly.
An index of another embedding space than the bundle answers 409.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ..body import read_body
from ..errors import as_serve_error, bad_request
from .common import bool_option, check_model, choice, int_option, json_response, service_of, stats_of


async def search(request: Request) -> Response:
    service = service_of(request)
    cfg = service.config
    body = await read_body(request, cfg.max_body_bytes, 1)
    opts = body.options()
    form = body.kind != "json"
    model = check_model(service, opts.get("model"))
    k = int_option(opts, "k", 10, form=form)
    assert k is not None
    target = choice(opts, "target", ("image", "text"), "image")
    exact = bool_option(opts, "exact", form=form)
    rerank = int_option(opts, "rerank", None, form=form)
    query, value = _query(body, opts)
    service.require_index()  # 404 / 409 before any model work
    stats = stats_of(request)
    if rerank is not None:
        if query != "text":
            raise bad_request("rerank re-scores text -> image hits: send a text query", "invalid_value")
        hits, used = await service.rerank_search(value, k, rerank, exact)
        stats.items += 1
    else:
        if query == "text":
            job = (await service.embed_texts([value], stats, request)).job
        elif query == "image":
            job = await service.embed_images([value], stats, request)
        else:
            job = None
        if job is not None and job.errors:
            raise as_serve_error(job.errors[0])
        vector = job.out[0] if job is not None else value
        hits, used = await service.search(vector, k, target, exact)
    return json_response({"object": "search", "model": model, "query": query, "target": target, "search": used,
                          "hits": [_hit(h) for h in hits]}, headers=stats.headers())


def _query(body: Any, opts: Any) -> tuple[str, Any]:
    given = [name for name in ("text", "image", "vector") if opts.get(name) is not None]
    if body.files:
        given.append("image")
    if len(given) != 1:
        raise bad_request("send exactly one query: text, image (base64, data URI, multipart or raw bytes) or "
                          f"vector; got {given or 'none'}", "invalid_query")
    name = given[0]
    if name == "image":
        return name, body.files[0][2] if body.files else opts["image"]
    value = opts[name]
    if name == "text":
        if not isinstance(value, str):
            raise bad_request(f"text must be a string, got {type(value).__name__}", "invalid_type")
        return name, value
    if not isinstance(value, list) or not value or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                           for x in value):
        raise bad_request("vector must be a non-empty list of numbers", "invalid_type")
    vec = np.asarray(value, dtype=np.float32)
    if not np.isfinite(vec).all():
        raise bad_request("vector holds a non-finite number", "invalid_value")
    return name, vec


def _hit(h: Any) -> dict[str, Any]:
    return {"key": str(h.key), "path": h.path, "caption": h.caption, "score": h.score, "itm_score": h.itm_score}


__all__ = ["search"]
