"""The service's routes, one module per resource; :func:`routes` lists them for the app."""

from __future__ import annotations

from starlette.routing import Route

from .embeddings import embeddings
from .health import live, metrics, ready
from .items import add_items, delete_item, get_item
from .models import get_model, list_models
from .rank import rank
from .search import search


def routes() -> list[Route]:
    return [
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/search", search, methods=["POST"]),
        Route("/v1/rank", rank, methods=["POST"]),
        Route("/v1/items", add_items, methods=["POST"]),
        Route("/v1/items/{key}", get_item, methods=["GET"]),
        Route("/v1/items/{key}", delete_item, methods=["DELETE"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


__all__ = ["routes"]
