"""``POST /v1/rank``: zero-shot classification, one image against candidate labels.

Request (JSON): ``image`` (base64 or a data URI) and ``labels`` (a list of strings);
or multipart (one image file part, ``labels`` repeated as fields); or a raw image body
with ``?labels=...&labels=...``. Response: ``{"object": "rank", "model", "labels",
"probabilities", "scores", "best"}`` where ``probabilities`` is
softmax(logit_scale x cosine) over the labels (in the request's order), ``scores`` the
cosines and ``best`` the most probable label. The labels go through the text batcher
and the query cache (label sets repeat), the image through the image batcher.
"""

from __future__ import annotations

import asyncio

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ..body import read_body
from ..errors import as_serve_error, bad_request
from ..service import RequestStats
from .common import check_count, check_model, json_response, service_of, stats_of


async def rank(request: Request) -> Response:
    service = service_of(request)
    cfg = service.config
    body = await read_body(request, cfg.max_body_bytes, 1)
    opts = body.options()
    model = check_model(service, opts.get("model"))
    if body.kind == "json":
        image, labels = opts.get("image"), opts.get("labels")
    else:
        image = body.files[0][2] if body.files else None
        labels = body.fields.get("labels")
    if image is None:
        raise bad_request("send the image to rank the labels against (base64, data URI, multipart or raw bytes)",
                          "empty_input")
    if not isinstance(labels, list) or not all(isinstance(t, str) for t in labels):
        raise bad_request("labels must be a list of strings", "invalid_type")
    check_count(service, len(labels), "labels")
    stats = stats_of(request)
    text_stats = RequestStats()
    image_job, texts = await asyncio.gather(service.embed_images([image], stats, request),
                                            service.embed_texts(labels, text_stats, None))
    stats.items += text_stats.items
    stats.queue_s = max(stats.queue_s, text_stats.queue_s)
    stats.inference_s += text_stats.inference_s
    for job in (image_job, texts.job):
        if job.errors:
            raise as_serve_error(job.errors[min(job.errors)])
    enc = service.encoder
    assert enc is not None
    cosines = texts.job.out @ image_job.out[0]
    logits = enc.bundle.logit_scale * cosines.astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    best = int(np.argmax(p))
    return json_response({"object": "rank", "model": model, "labels": labels,
                          "probabilities": p.astype(np.float32), "scores": cosines,
                          "best": {"index": best, "label": labels[best], "probability": float(p[best])}},
                         headers=stats.headers())


__all__ = ["rank"]
