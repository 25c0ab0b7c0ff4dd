"""``POST /v1/search``: the index's nearest items to a text, an image or a vector.

Request (JSON): exactly one of ``text`` (a string), ``image`` (base64 or a data URI) or
``vector`` (``dim`` numbers); ``k`` (default 10), ``target`` (the index tower to search:
``image``, default, or ``text`` for captions), ``exact`` (true: scan every vector, false:
HNSW, absent: the index decides by its size), ``rerank`` (ALBEF bundles with a re-ranker:
re-score the top ``rerank`` >= k text -> image hits by image-text matching), ``filter``
(``{"path_prefix", "added_after" (unix seconds or ISO 8601 date), "has_caption"}``; any
other field is a 400 naming it), and for text queries ``fuse`` (``"captions"``: rank images
by image + caption similarity, with ``fuse_mode`` ``"weighted"`` (default, ``fuse_weight``
0.5) or ``"rrf"``) and ``hybrid`` (true: merge keyword hits by reciprocal-rank fusion); see
:meth:`crossmodal.retriever.Retriever.search_text`. Multipart (an image file part plus the
options as fields; ``filter`` as a JSON string) and a raw image body (options in the query
string) work too.

Response: ``{"object": "search", "model", "query": "text"|"image"|"vector", "target",
"search": "exact"|"hnsw", "hits": [{"key", "path", "caption", "score", "itm_score"}]}``;
with ``fuse`` or ``hybrid`` the ``score`` is the fused score. Keys are decimal strings: 63-bit integers exceed what JavaScript numbers hold exactly.
An index of another embedding space than the bundle answers 409.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..body import read_body
from ...errors import InputError
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
    where = _filter(opts.get("filter"))
    ranking = _ranking(opts, form)
    if ranking and query != "text":
        raise bad_request(f"fuse and hybrid rank the hits of a text query: send text, not {query}", "invalid_value")
    service.require_index()  # 404 / 409 before any model work
    stats = stats_of(request)
    if rerank is not None:
        if query != "text":
            raise bad_request("rerank re-scores text -> image hits: send a text query", "invalid_value")
        hits, used = await service.rerank_search(value, k, rerank, exact, where=where, ranking=ranking)
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
        text = value if ranking else None  # fusion and keywords need the text; plain searches only the vector
        hits, used = await service.search(vector, k, target, exact, where=where, text=text, ranking=ranking)
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


def _filter(raw: Any) -> Any:
    """The ``filter`` option as a :class:`crossmodal.index.Filter` (None: no filter); 400 naming a bad field."""
    if raw is None:
        return None
    if isinstance(raw, str):  # a form field carries the object as JSON
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise bad_request(f"filter must be a JSON object, got {raw[:80]!r}", "invalid_filter") from None
    from ...index import Filter

    try:
        return Filter.from_mapping(raw)
    except InputError as exc:
        raise bad_request(str(exc), "invalid_filter") from None


def _ranking(opts: Any, form: bool) -> dict[str, Any]:
    """``fuse`` / ``fuse_mode`` / ``fuse_weight`` / ``hybrid`` as Retriever.search_text options (only those set)."""
    out: dict[str, Any] = {}
    fuse = opts.get("fuse")
    if fuse not in (None, ""):
        out["fuse"] = choice(opts, "fuse", ("captions",), "captions")
    if opts.get("fuse_mode") is not None:
        out["fuse_mode"] = choice(opts, "fuse_mode", ("weighted", "rrf"), "weighted")
    weight = opts.get("fuse_weight")
    if weight is not None:
        if form and isinstance(weight, str):
            try:
                weight = float(weight)
            except ValueError:
                raise bad_request(f"fuse_weight must be a number in [0, 1], got {weight!r}", "invalid_type") from None
        out["fuse_weight"] = weight
    if bool_option(opts, "hybrid", form=form):
        out["hybrid"] = True
    if "fuse" not in out and ("fuse_mode" in out or "fuse_weight" in out):
        raise bad_request("fuse_mode and fuse_weight set how captions are fused: add \"fuse\": \"captions\"",
                          "invalid_value")
    return out


def _hit(h: Any) -> dict[str, Any]:
    return {"key": str(h.key), "path": h.path, "caption": h.caption, "score": h.score, "itm_score": h.itm_score}


__all__ = ["search"]
