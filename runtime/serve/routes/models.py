"""``GET /v1/models`` (OpenAI's list shape) and ``GET /v1/models/{id}``: what this service runs.

Each model object carries, beyond OpenAI's ``id`` / ``object`` / ``created`` / ``owned_by``:
``family``, ``dim``, ``space``, ``variant``, ``towers``, ``fingerprint`` (see
:mod:`crossmodal.serve.fingerprint`), ``rerank`` (whether re-ranking is available),
``queue`` (items waiting per tower), ``batches`` (batch statistics per tower), ``cache``
and ``index`` (path, counts, or the reason it cannot be searched).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..errors import not_found
from ..service import Service
from .common import json_response, service_of


def model_card(service: Service) -> dict[str, Any]:
    enc = service.encoder
    assert enc is not None
    b = enc.bundle
    index: dict[str, Any] | None = None
    if service.index is not None:
        idx = service.index
        index = {"path": str(idx.path), "bundle": idx.bundle, "space": idx.space,
                 "count": {"image": idx.count("image"), "text": idx.count("text")},
                 "read_only": idx.read_only,
                 "error": service.index_error.message if service.index_error is not None else None}
    return {"id": b.name, "object": "model", "created": service.started_at, "owned_by": "crossmodal",
            "family": b.family, "dim": b.dim, "space": b.space, "variant": enc.variant,
            "towers": sorted(service.batchers), "logit_scale": b.logit_scale, "fingerprint": service.fingerprint,
            "rerank": service.reranker is not None,
            "queue": {n: bt.depth for n, bt in service.batchers.items()},
            "batches": {n: bt.stats.as_dict() for n, bt in service.batchers.items()},
            "cache": {"size": service.cache.size, "entries": len(service.cache)},
            "index": index}


async def list_models(request: Request) -> Response:
    service = service_of(request)
    return json_response({"object": "list", "data": [model_card(service)]})


async def get_model(request: Request) -> Response:
    service = service_of(request)
    card = model_card(service)
    if request.path_params["model"] != card["id"]:
        raise not_found(f"model {request.path_params['model']!r} is not served here; this service serves "
                        f"{card['id']!r}", "model_not_found")
    return json_response(card)


__all__ = ["list_models", "get_model", "model_card"]
