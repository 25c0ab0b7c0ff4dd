"""Reading a request body within the size limit, in one of three encodings.

* ``application/json``: an object (anything else is a 400);
* ``multipart/form-data``: file parts (images) in order, plus plain fields;
* ``image/*`` (or ``application/octet-stream``): the body is one image's bytes, options
  come from the query string. This avoids base64's 33% on large photos.

The limit is checked against ``Content-Length`` before anything is read, and again
while streaming (a chunked body has no length), so an oversized body costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request

from .errors import bad_request, too_large, unsupported_media_type

RAW_TYPES = ("image/", "application/octet-stream")


@dataclass
class Body:
    """A parsed body: ``json`` (JSON), ``files`` + ``fields`` (multipart) or ``files`` alone (raw image)."""

    kind: str  # "json" | "form" | "raw"
    json: dict[str, Any] = field(default_factory=dict)
    files: list[tuple[str, str | None, bytes]] = field(default_factory=list)  # (field, filename, bytes)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def options(self) -> Mapping[str, Any]:
        """Scalar options: the JSON object itself, or the single-valued form fields."""
        if self.kind == "json":
            return self.json
        return {k: v[0] for k, v in self.fields.items() if len(v) == 1}


async def read_bytes(request: Request, limit: int) -> bytes:
    """The whole body, or a 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large(f"the request body ({int(declared)} bytes) exceeds the limit of {limit} bytes; "
                                "send fewer or smaller inputs", "body_too_large")
        except ValueError:
            raise bad_request("Content-Length is not a number", "bad_header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"the request body exceeds the limit of {limit} bytes; send fewer or smaller inputs",
                            "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: Request, limit: int, max_parts: int) -> Body:
    """Parse the body by its Content-Type (see the module docstring); 400/413 on bad input."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    data = await read_bytes(request, limit)
    if ctype.startswith(RAW_TYPES):
        if not data:
            raise bad_request("the request body is empty; send the image bytes", "empty_input")
        body = Body("raw", files=[("body", None, data)])
        for k, v in request.query_params.multi_items():
            body.fields.setdefault(k, []).append(v)
        return body
    if ctype == "multipart/form-data":
        return await _form(request, data, limit, max_parts)
    if ctype not in ("application/json", "text/json", "application/x-www-form-urlencoded", ""):
        raise unsupported_media_type(ctype)
    try:
        obj = orjson.loads(data) if data else None
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the body is not valid JSON ({exc}); send a JSON object", "invalid_json") from None
    if not isinstance(obj, dict):
        raise bad_request(f"the body must be a JSON object, got {type(obj).__name__ if obj is not None else 'nothing'}",
                          "invalid_json")
    return Body("json", json=obj)


async def _form(request: Request, data: bytes, limit: int, max_parts: int) -> Body:
    sent = False

    async def replay() -> dict[str, Any]:
        # The body was read (within the limit) already; hand it to Starlette's parser once.
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_parts, max_fields=max_parts + 32,
                                                         max_part_size=limit)
    except Exception as exc:  # noqa: BLE001 - Starlette raises its own HTTP/parse errors for malformed forms
        raise bad_request(f"malformed multipart body ({getattr(exc, 'detail', exc)})", "invalid_multipart") from None
    body = Body("form")
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                body.files.append((name, value.filename, await value.read()))
            else:
                body.fields.setdefault(name, []).append(str(value))
    finally:
        await form.close()
    return body


__all__ = ["Body", "read_body", "read_bytes", "RAW_TYPES"]
