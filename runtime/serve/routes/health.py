"""``GET /health/live`` (the process answers) and ``GET /health/ready`` (it can serve).

Ready only after the towers are loaded, the index is open and warmed up, and a canary
request went through every tower's batcher and inference thread; 503 while loading,
while shutting down, after a failed start, or when an inference thread has died. Both
stay open when an API key is required (load balancers probe without one).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .common import json_response, service_of


async def live(request: Request) -> Response:
    return json_response({"status": "alive"})


async def ready(request: Request) -> Response:
    service = service_of(request, ready=False)
    ok, details = service.health()
    return json_response(details, status=200 if ok else 503)


async def metrics(request: Request) -> Response:
    service = service_of(request, ready=False)
    return Response(service.metrics.render(), media_type=service.metrics.content_type)


__all__ = ["live", "ready", "metrics"]
