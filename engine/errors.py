"""The engine's exceptions, mapped to HTTP in exactly one place (``app.py``).

Every error the engine raises on purpose is an :class:`EngineError`. Each class
carries the HTTP status it maps to and a short machine-readable ``type``, the way
h11 carries ``error_status_hint``: the code that raises knows what went wrong, the
middleware alone decides how that looks on the wire (a JSON body before the
response headers went out, an ``event: error`` after).

Tree::

    EngineError                      500 engine_error
    ├── BadRequest                   400 bad_request
    │   └── UnknownProvider          400 unknown_provider
    ├── Unauthorized                 401 unauthorized        (no key, a wrong or expired one)
    ├── Forbidden                    403 forbidden           (the key may not do that)
    ├── NotFound                     404 not_found
    │   └── StreamNotFound           404 stream_not_found
    ├── RequestTimeout               408 request_timeout
    ├── ResumeGap                    410 resume_gap
    ├── StreamInterrupted            499 interrupted       (only ever an event)
    ├── PayloadTooLarge              413 payload_too_large
    ├── ExpectationFailed            417 expectation_failed
    ├── HostNotAllowed               421 host_not_allowed
    ├── UnsupportedMediaType         415 unsupported_media_type
    ├── InvalidFields                422 invalid_fields
    ├── RateLimited                  429 rate_limit_exceeded (a client key's limit)
    │   └── QuotaExceeded            429 insufficient_quota  (its token budget is spent)
    ├── Overloaded                   503 overloaded          (the gateway's stream cap)
    ├── MetricsUnavailable           503 metrics_unavailable (no prometheus_client)
    ├── ProviderNotConfigured        503 provider_not_configured
    ├── StoreUnavailable             503 store_unavailable
    ├── StreamLogUnavailable         503 stream_log_unavailable (Redis stream log: a resume)
    ├── ProducerLost                 502 producer_lost       (only ever an event)
    ├── ShuttingDown                 503 shutdown
    ├── SSEProtocolError             502 sse_protocol_error
    └── UpstreamError                502 upstream_error
        ├── UpstreamAuthError        502 upstream_auth_error   (upstream 401/403)
        ├── UpstreamRateLimited      429 rate_limited          (upstream 429, Retry-After kept)
        ├── UpstreamBadRequest       400 upstream_bad_request  (upstream 400/404/422)
        ├── UpstreamUnavailable      503 upstream_unavailable  (upstream 503/529 overloaded)
        ├── UpstreamConnectError     502 upstream_connect_error
        └── UpstreamTimeout          504 upstream_timeout

Outside the tree, :class:`ClientDisconnectedError` is how a write learns that
the *client* is gone; there is nobody left to send an HTTP error to, so it never
reaches the middleware.

An upstream 401 is the *gateway's* credentials being wrong, not the caller's, so
it maps to 502 rather than being passed through as 401.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "ClientDisconnectedError",
    "EngineError",
    "ExpectationFailed",
    "Forbidden",
    "HostNotAllowed",
    "InvalidFields",
    "NotFound",
    "MetricsUnavailable",
    "Overloaded",
    "PayloadTooLarge",
    "ProducerLost",
    "ProviderNotConfigured",
    "QuotaExceeded",
    "RateLimited",
    "RequestTimeout",
    "ResumeGap",
    "StreamInterrupted",
    "StreamLogUnavailable",
    "StreamNotFound",
    "SSEProtocolError",
    "ShuttingDown",
    "StoreUnavailable",
    "Unauthorized",
    "UnknownProvider",
    "UnsupportedField",
    "UnsupportedMediaType",
    "UpstreamAuthError",
    "UpstreamBadRequest",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class EngineError(Exception):
    """Raised when the engine fails in a way it did not anticipate more precisely.

    ``status`` is the HTTP status the error maps to, ``type`` the short name that
    goes into JSON bodies and error events. Both are class attributes so a
    subclass is all it takes to add a new kind of failure.
    """

    status: int = 500
    type: str = "engine_error"

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.type)
        self.message = message or self.type
        #: Seconds the caller should wait before retrying, when known (429/503).
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, object]:
        """The error as the JSON object the HTTP layer sends."""
        return {"error": True, "message": self.message, "code": self.status, "type": self.type}


class BadRequest(EngineError):
    """Raised when a request cannot be parsed (malformed JSON, bad query string)."""

    status = 400
    type = "bad_request"


class UnknownProvider(BadRequest):
    """Raised when a request names a provider the engine does not know."""

    type = "unknown_provider"


class Unauthorized(EngineError):
    """Raised when a request carries no client key, or one the gateway does not accept."""

    status = 401
    type = "unauthorized"


class Forbidden(EngineError):
    """Raised when a client key may not do what it asks (a model, the admin API, a stream)."""

    status = 403
    type = "forbidden"


class NotFound(EngineError):
    """Raised when a resource or route does not exist."""

    status = 404
    type = "not_found"


class StreamNotFound(NotFound):
    """Raised when a resume or Stop names a stream the gateway does not hold (or no longer)."""

    type = "stream_not_found"


class ResumeGap(EngineError):
    """Raised when a resume asks for events the bounded stream log no longer holds."""

    status = 410
    type = "resume_gap"


class StreamInterrupted(EngineError):
    """The final event of a stream whose generation was cancelled (its readers left).

    Never raised to a client as a status: a resume of such a stream replays
    what was produced and then this, as ``event: error``, so it knows why it ended.
    """

    status = 499
    type = "interrupted"


class RequestTimeout(EngineError):
    """Raised when a client sends its request body too slowly (``header_timeout``)."""

    status = 408
    type = "request_timeout"


class PayloadTooLarge(EngineError):
    """Raised when a request body is larger than the configured limit."""

    status = 413
    type = "payload_too_large"


class ExpectationFailed(EngineError):
    """Raised when a request's ``Expect`` header asks for something other than ``100-continue``."""

    status = 417
    type = "expectation_failed"


class HostNotAllowed(EngineError):
    """Raised when a request's ``Host`` is not among the allowed hosts (DNS rebinding).

    421 Misdirected Request (RFC 9110 15.5.20): this server will not answer for
    that name.
    """

    status = 421
    type = "host_not_allowed"


class UnsupportedMediaType(EngineError):
    """Raised when a request body is not ``application/json``."""

    status = 415
    type = "unsupported_media_type"


class InvalidFields(EngineError):
    """Raised when a well-formed request has fields with wrong types or values."""

    status = 422
    type = "invalid_fields"


class UnsupportedField(BadRequest):
    """Raised when a request sets a field the chosen provider has no equivalent for.

    The rule on every endpoint: a field is carried to the provider in its own
    form, or refused by name; never dropped silently. ``field`` is the request
    field (``seed``, ``logprobs``, ``messages[2].content[1]``), for the
    dialects that report it separately (OpenAI's ``param``).
    """

    status = 400
    type = "unsupported_field"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class RateLimited(EngineError):
    """Raised when a client key is over one of its limits; ``retry_after`` says for how long."""

    status = 429
    type = "rate_limit_exceeded"
    #: False when waiting cannot help (a request larger than the limit, a spent
    #: budget): the response then tells the SDKs not to retry (``x-should-retry``).
    retry: bool = True
    #: The key's ``x-ratelimit-*`` headers, which a refusal carries too.
    headers: dict[str, str] | None = None


class QuotaExceeded(RateLimited):
    """Raised when a client key's token budget for the period is spent (OpenAI's
    ``insufficient_quota``: waiting a few seconds does not help)."""

    type = "insufficient_quota"


class Overloaded(EngineError):
    """Raised when the gateway already relays as many streams as it may (``max_streams``)."""

    status = 503
    type = "overloaded"


class MetricsUnavailable(EngineError):
    """Raised by ``GET /metrics`` when prometheus_client (the ``metrics`` extra) is missing."""

    status = 503
    type = "metrics_unavailable"


class ProviderNotConfigured(EngineError):
    """Raised when a provider is asked for but a setting it needs (an API key) is missing."""

    status = 503
    type = "provider_not_configured"


class StoreUnavailable(EngineError):
    """Raised when the conversation memory store cannot be reached or fails."""

    status = 503
    type = "store_unavailable"


class StreamLogUnavailable(EngineError):
    """Raised when a resume needs the Redis stream log and cannot use it: Redis is
    unreachable, or it lost events of this stream (they were not logged while it
    was away). ``retry_after`` says when to try again (the producing box may
    answer it from its own memory meanwhile)."""

    status = 503
    type = "stream_log_unavailable"


class ProducerLost(EngineError):
    """Sent (an ``error`` event) to readers of a stream whose producing worker
    died: its lease in the Redis stream log lapsed before the stream ended."""

    status = 502
    type = "producer_lost"


class ShuttingDown(EngineError):
    """Raised (and sent as an error event) when the server stops while a stream is open."""

    status = 503
    type = "shutdown"


class SSEProtocolError(EngineError):
    """Raised when an event stream breaks a hard limit (a line or event too large).

    The WHATWG rules never reject input otherwise; this exists so a hostile or
    broken upstream cannot make the decoder buffer without bound.
    """

    status = 502
    type = "sse_protocol_error"


class UpstreamError(EngineError):
    """Raised when a provider's API fails: a 5xx, a broken stream, an error event."""

    status = 502
    type = "upstream_error"

    def __init__(
        self,
        message: str = "",
        *,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        upstream_type: str | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        #: The HTTP status the upstream answered with, when it answered.
        self.upstream_status = upstream_status
        #: The provider's own error type (Anthropic's ``overloaded_error``, say).
        self.upstream_type = upstream_type


class UpstreamAuthError(UpstreamError):
    """Raised when the provider rejects the gateway's credentials (401/403)."""

    type = "upstream_auth_error"


class UpstreamRateLimited(UpstreamError):
    """Raised when the provider answers 429; ``retry_after`` carries its Retry-After."""

    status = 429
    type = "rate_limited"


class UpstreamBadRequest(UpstreamError):
    """Raised when the provider rejects the request itself (400, 404, 422)."""

    status = 400
    type = "upstream_bad_request"


class UpstreamUnavailable(UpstreamError):
    """Raised when the provider says it is overloaded or unavailable (503, 529)."""

    status = 503
    type = "upstream_unavailable"


class UpstreamConnectError(UpstreamError):
    """Raised when the provider cannot be reached (DNS, refused, reset before a reply)."""

    type = "upstream_connect_error"


class UpstreamTimeout(UpstreamError):
    """Raised when the provider is too slow: to connect, to the first byte, or between chunks."""

    status = 504
    type = "upstream_timeout"


class ClientDisconnectedError(ConnectionResetError):
    """Raised by a stream write when the client has gone away or stopped reading.

    A ``ConnectionResetError`` (so code that already handles aiohttp's
    ``ClientConnectionResetError`` keeps working), not an :class:`EngineError`:
    it ends the stream quietly, it is never reported to anyone.
    """
