"""Anthropic's error shape, mapped from the engine's errors in one place.

Errors use Anthropic's body, ``{"type": "error", "error": {"type", "message"}}``
(https://docs.anthropic.com/en/api/errors), mapped from the
:class:`~engine.errors.EngineError` tree by :func:`anthropic_error`: before
the headers with the status the ``anthropic`` SDK keys its classes on
(:func:`error_answer`), after them as ``event: error`` (:func:`error_frame`),
as Anthropic sends it. :func:`refuse` words the gateway's own refusals of a
request field, with its path, as msgspec words its errors.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct

from ...errors import EngineError, UnsupportedField, UpstreamUnavailable
from ...sse import encode_json
from .. import ErrorAnswer, retry_headers

__all__ = ["ErrorBody", "ErrorDetail", "anthropic_error", "error_answer", "error_frame", "refuse"]

_encoder = msgspec.json.Encoder()


class ErrorDetail(Struct, kw_only=True):
    type: str
    message: str


class ErrorBody(Struct, kw_only=True, tag_field="type", tag="error"):
    """Anthropic's error body, before and after the headers went out."""

    error: ErrorDetail


# https://docs.anthropic.com/en/api/errors: the types by status. Any other 4xx
# is an invalid_request_error ("we may also use this error type for other 4XX").
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Anthropic answers 400 to any invalid field, never 422: its SDK expects BadRequestError.
# An upstream that is overloaded is Anthropic's 529 (the SDK's OverloadedError).
_STATUS = {422: 400}


def anthropic_error(exc: EngineError) -> tuple[int, ErrorBody]:
    """The HTTP status and Anthropic error body for ``exc``.

    The status is the error's own, so the ``anthropic`` SDK raises the matching
    class: 400 ``BadRequestError`` (422 becomes 400), 404 ``NotFoundError``,
    413 ``ContentTooLargeError``, 429 ``RateLimitError``, 504
    ``GatewayTimeoutError``, other 5xx ``InternalServerError``; an upstream
    that is overloaded or unavailable is 529 ``OverloadedError``, the gateway's
    own 503s (no key configured, store down, shutting down) stay 503
    ``ServiceUnavailableError``. An upstream 401/403 is the gateway's key being
    wrong, not the caller's: it stays a 502 ``api_error``.
    """
    status = 529 if isinstance(exc, UpstreamUnavailable) else _STATUS.get(exc.status, exc.status)
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return status, ErrorBody(error=ErrorDetail(type=kind, message=exc.message))


def error_answer(exc: EngineError) -> ErrorAnswer:
    """The error response before the headers: Anthropic's status, body and retry headers."""
    status, body = anthropic_error(exc)
    return ErrorAnswer(status, _encoder.encode(body), retry_headers(exc.retry_after))


def error_frame(exc: EngineError) -> bytes:
    """The error after the headers: ``event: error``, which the SDK raises on."""
    return encode_json(anthropic_error(exc)[1], event="error")


def refuse(where: str, why: str) -> UnsupportedField:
    """A field the gateway cannot honour, refused naming its path in the request."""
    return UnsupportedField(f"{why} - at `$.{where}`", field=where)
