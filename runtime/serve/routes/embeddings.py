"""``POST /v1/embeddings``: OpenAI-compatible embeddings of texts or images.

Request (JSON): ``input`` (a string or a list of strings), ``model`` (optional; the
served bundle's name), ``encoding_format`` (``float`` or ``base64``: little-endian
float32, as OpenAI encodes it), ``modality`` (``text``, default, or ``image``: inputs
are base64 or ``data:image/...;base64,`` URIs), ``dimensions`` (optional, must equal the
model's). The same route takes ``multipart/form-data`` (every file part is an image, in
order; ``model`` / ``encoding_format`` as form fields) and a raw image body
(``Content-Type: image/*``; options in the query string).

Response: ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
"model", "usage": {"prompt_tokens", "total_tokens"}}`` (tokens: text tokens, 0 for
images). When some inputs fail and others succeed, the failed ones appear as
``{"object": "error", "index": i, "error": {"message", "type", "code"}}`` in ``data``
and the rest carry their embeddings; when every input fails, the first failure is the
response's error status (400/422).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ..body import read_body
from ..errors import as_serve_error, bad_request, item_error
from .common import check_count, check_model, choice, json_response, service_of, stats_of


async def embeddings(request: Request) -> Response:
    service = service_of(request)
    cfg = service.config
    body = await read_body(request, cfg.max_body_bytes, cfg.max_inputs)
    opts = body.options()
    model = check_model(service, opts.get("model"))
    fmt = choice(opts, "encoding_format", ("float", "base64"), "float")
    dims = opts.get("dimensions")
    enc = service.encoder
    assert enc is not None
    if dims is not None and str(dims) != str(enc.dim):
        raise bad_request(f"dimensions={dims!r}: this model returns {enc.dim}-dimensional embeddings only",
                          "invalid_value")
    stats = stats_of(request)
    if body.kind == "json":
        modality = choice(opts, "modality", ("text", "image"), "text")
        inputs = _inputs(opts.get("input"))
    elif body.files:
        modality = choice(opts, "modality", ("image",), "image")
        inputs = [data for _, _, data in body.files]
    else:
        modality = choice(opts, "modality", ("text", "image"), "text")
        inputs = body.fields.get("input", [])
    check_count(service, len(inputs))
    if modality == "text":
        _refuse_images_as_text(inputs)
        emb = await service.embed_texts(inputs, stats, request)
        job, tokens = emb.job, int(emb.tokens.sum())
    else:
        job, tokens = await service.embed_images(inputs, stats, request), 0
    if len(job.errors) == len(inputs):
        raise as_serve_error(job.errors[min(job.errors)])
    data: list[dict[str, Any]] = []
    for i in range(len(inputs)):
        if i in job.errors:
            data.append({"object": "error", "index": i, "error": item_error(job.errors[i])})
        else:
            data.append({"object": "embedding", "index": i, "embedding": _encode(job.out[i], fmt)})
    return json_response({"object": "list", "data": data, "model": model,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                         headers=stats.headers())


def _inputs(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise bad_request(f"input must be a string or a list of strings, got {type(value).__name__}", "invalid_type")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            what = "token arrays are not supported: send the text" if isinstance(v, (int, list)) else \
                f"got {type(v).__name__}"
            raise bad_request(f"input #{i} must be a string ({what})", "invalid_type")
    return value


def _refuse_images_as_text(texts: list[str]) -> None:
    for i, t in enumerate(texts):
        if t[:11].lower() == "data:image/":
            raise bad_request(f"input #{i} is an image data URI; send it with \"modality\": \"image\"",
                              "wrong_modality")


def _encode(row: np.ndarray, fmt: str) -> Any:
    if fmt == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    return row


__all__ = ["embeddings"]
