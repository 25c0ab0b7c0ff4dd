"""One JSON error shape for every failure, and the mapping from the library's exceptions.

Every error response is ``{"error": {"message", "type", "code"}}`` with the HTTP status
below, the shape OpenAI's API uses (so its clients raise their usual exceptions):

=====  =========================  ==================================================
400    ``invalid_request_error``  malformed JSON, wrong types, empty or invalid input
401    ``authentication_error``   missing or wrong ``Authorization: Bearer`` key
404    ``not_found_error``        unknown route, model or item
409    ``incompatible_error``     the index belongs to another embedding space
413    ``request_too_large``      body or input count over the configured limit
415    ``invalid_request_error``  a Content-Type the route does not read
422    ``invalid_input_error``    an input is well-formed but unusable (not an image, ...)
429    ``overloaded_error``       the queue is full (``Retry-After`` says when to retry)
503    ``unavailable_error``      not ready, shutting down, or an inference thread died
504    ``timeout_error``          the request's deadline passed before its inputs ran
=====  =========================  ==================================================
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import CrossmodalError, ImageInputError, IncompatibleTowersError, IndexStoreError, InputError


class ServeError(Exception):
    """An error with its HTTP status, error type, machine-readable code and extra headers."""

    def __init__(self, status: int, message: str, type: str, code: str, *,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code)


def error_body(message: str, type: str, code: str) -> dict[str, Any]:
    """The JSON error object (also used for per-item errors inside a 200 response)."""
    return {"error": {"message": message, "type": type, "code": code}}


def bad_request(message: str, code: str = "invalid_input") -> ServeError:
    return ServeError(400, message, "invalid_request_error", code)


def unprocessable(message: str, code: str = "invalid_input") -> ServeError:
    return ServeError(422, message, "invalid_input_error", code)


def too_large(message: str, code: str = "too_large") -> ServeError:
    return ServeError(413, message, "request_too_large", code)


def unsupported_media_type(ctype: str) -> ServeError:
    return ServeError(415, f"Content-Type {ctype!r} is not supported; send application/json, multipart/form-data "
                      "or the image bytes with an image/* Content-Type", "invalid_request_error",
                      "unsupported_media_type")


def not_found(message: str, code: str = "not_found") -> ServeError:
    return ServeError(404, message, "not_found_error", code)


def unauthorized() -> ServeError:
    return ServeError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                      "authentication_error", "invalid_api_key", headers={"www-authenticate": "Bearer"})


def overloaded(tower: str, retry_after_s: int) -> ServeError:
    return ServeError(429, f"the {tower} queue is full; retry after {retry_after_s} s or lower the request rate",
                      "overloaded_error", "queue_full", headers={"retry-after": str(retry_after_s)})


def unavailable(message: str, code: str = "not_ready", retry_after_s: int | None = None) -> ServeError:
    headers = {"retry-after": str(retry_after_s)} if retry_after_s else None
    return ServeError(503, message, "unavailable_error", code, headers=headers)


def timed_out(deadline_s: float) -> ServeError:
    return ServeError(504, f"the request did not finish within its {deadline_s:g} s deadline "
                      "(the service is busy); retry later or send fewer inputs", "timeout_error", "deadline_exceeded")


def from_library(exc: CrossmodalError) -> ServeError:
    """The HTTP error of an exception the library raised on purpose."""
    if isinstance(exc, IncompatibleTowersError):
        return ServeError(409, str(exc), "incompatible_error", "incompatible_space")
    if isinstance(exc, ImageInputError):
        return unprocessable(str(exc), "invalid_image")
    if isinstance(exc, InputError):
        return bad_request(str(exc))
    if isinstance(exc, IndexStoreError):
        return ServeError(500, str(exc), "server_error", "index_error")
    return ServeError(500, str(exc), "server_error", "internal_error")


def as_serve_error(exc: BaseException) -> ServeError:
    """Any exception as the HTTP error it answers with (unexpected ones are a 500)."""
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, CrossmodalError):
        return from_library(exc)
    return ServeError(500, f"{type(exc).__name__}: {exc}", "server_error", "internal_error")


def item_error(exc: BaseException) -> dict[str, Any]:
    """The ``error`` object of one failed input inside an otherwise successful response."""
    return as_serve_error(exc).body()["error"]


__all__ = ["ServeError", "error_body", "bad_request", "unprocessable", "too_large", "unsupported_media_type", "not_found", "unauthorized",
           "overloaded", "unavailable", "timed_out", "from_library", "as_serve_error", "item_error"]
