"""Helpers every route shares: the service handle, JSON responses, option parsing, input limits."""

from __future__ import annotations

from typing import Any, Mapping

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ...inputs import optional_bool, positive_int
from ..errors import ServeError, bad_request, not_found, too_large
from ..service import RequestStats, Service

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def service_of(request: Request, *, ready: bool = True) -> Service:
    service: Service = request.app.state.service
    if ready:
        service.require_ready()
    return service


def stats_of(request: Request) -> RequestStats:
    """The request's cost record (created by the middleware; a fresh one when the app runs without it)."""
    stats = request.scope.get("crossmodal.stats")
    if stats is None:
        stats = request.scope["crossmodal.stats"] = RequestStats()
    return stats


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """orjson-encoded JSON (numpy arrays serialised natively)."""
    return Response(orjson.dumps(obj, option=_JSON_OPTIONS), status_code=status, headers=dict(headers or {}),
                    media_type="application/json")


def check_model(service: Service, model: Any) -> str:
    """The served model's name; 404 when the request names another model."""
    enc = service.encoder
    assert enc is not None
    name = enc.bundle.name
    if model is not None and model != "" and model not in (name, f"{name}:{enc.variant}"):
        raise ServeError(404, f"model {model!r} is not served here; this service serves {name!r} "
                         "(GET /v1/models)", "invalid_request_error", "model_not_found")
    return name


def check_count(service: Service, n: int, what: str = "inputs") -> None:
    """400 for none, 413 for more than the per-request limit."""
    if n == 0:
        raise bad_request(f"no {what} given: send at least one", "empty_input")
    if n > service.config.max_inputs:
        raise too_large(f"{n} {what} exceed the limit of {service.config.max_inputs} per request; "
                        "split them into several requests", "too_many_inputs")


def int_option(opts: Mapping[str, Any], name: str, default: int | None, *, form: bool) -> int | None:
    """A positive integer option (form fields arrive as strings)."""
    value = opts.get(name, default)
    if value is None:
        return None
    if form and isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise bad_request(f"{name} must be a positive integer, got {value!r}", "invalid_type") from None
    return positive_int(name, value)


def bool_option(opts: Mapping[str, Any], name: str, *, form: bool) -> bool | None:
    """True, False or None (form fields: 'true'/'false')."""
    value = opts.get(name)
    if form and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered not in ("true", "false", "1", "0", ""):
            raise bad_request(f"{name} must be true or false, got {value!r}", "invalid_type")
        value = None if lowered == "" else lowered in ("true", "1")
    return optional_bool(name, value)


def choice(opts: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = opts.get(name, default)
    if value is None:
        value = default
    if value not in allowed:
        raise bad_request(f"{name} must be one of {list(allowed)}, got {value!r}", "invalid_value")
    return str(value)


def key_param(request: Request) -> int:
    """The ``{key}`` path parameter as an index key (a decimal integer in [0, 2**63))."""
    raw = request.path_params.get("key", "")
    try:
        key = int(raw)
    except ValueError:
        raise not_found(f"item key {raw!r} is not a decimal integer", "invalid_key") from None
    if not 0 <= key < 2 ** 63:
        raise not_found(f"item key {raw} is outside [0, 2**63)", "invalid_key")
    return key


__all__ = ["service_of", "stats_of", "json_response", "check_model", "check_count", "int_option", "bool_option",
           "choice", "key_param"]
