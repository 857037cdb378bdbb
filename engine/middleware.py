"""Errors mapped to HTTP once, in the route's dialect; keys; CORS; the Host check; ``Expect``.

:func:`error_middleware` turns an :class:`~engine.errors.EngineError` raised
before the response headers went out into the JSON body of the route's
dialect (native by default; a route registers another with
:func:`error_dialect`), its message redacted of provider keys
(:meth:`Engine.scrub`). Once a stream has begun,
:class:`~engine.streams.EventStream` sends the same fields as an event, in the
dialect's ``error_frame``. aiohttp's own HTTP errors (404, 405) answer in the
native shape.

The same middleware authenticates the request (:meth:`Gatekeeper.authenticate
<engine.auth.Gatekeeper.authenticate>`) before its route runs, so a 401 is
rendered in the route's dialect too, and puts the principal in
``request[PRINCIPAL]``. Routes marked :func:`public` need no key; routes marked
:func:`query_token` also take ``?token=`` on ``GET`` (what an ``EventSource``
can send). Headers a response must carry whatever its route sends (CORS, the
rate-limit headers of an admitted request) collect in
``request[EXTRA_HEADERS]``: merged into a JSON response here, and into a stream's
headers by :class:`~engine.streams.EventStream` before they go out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from .dialects import ErrorAnswer, native
from .errors import (
    EngineError,
    ExpectationFailed,
    HostNotAllowed,
    PayloadTooLarge,
    UnsupportedField,
)
from .gateway import ENGINE
from .hosts import HostCheck
from .keys import ANONYMOUS, Principal
from .limits import Admission
from .streams.response import EXTRA_HEADERS

__all__ = [
    "ADMISSION",
    "EXTRA_HEADERS",
    "HISTORY",
    "PRINCIPAL",
    "SERVER_HEADER",
    "error_dialect",
    "error_middleware",
    "expect_handler",
    "guarded",
    "public",
    "query_token",
    "render_error",
]

log = logging.getLogger("engine.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: How a route family answers an error before its headers went out.
ErrorRenderer = Callable[[EngineError], ErrorAnswer]
_RENDERERS: dict[Callable[..., Any], ErrorRenderer] = {}

#: The ``Server`` header of every response of ours: the product, not its version
#: nor aiohttp's and Python's (aiohttp's default, which only helps an attacker
#: pick an exploit). Set on each response rather than from ``on_response_prepare``:
#: a signal handler costs every request a coroutine.
SERVER_HEADER = "sse-engine"

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}

#: Who the request is (set for every request that reached a route).
PRINCIPAL = web.RequestKey("principal", Principal)
#: The request's share of its key's limits, until a generation takes it over.
ADMISSION = web.RequestKey("admission", Admission)
#: Stored messages sent upstream ahead of the request's own (its memory's history).
HISTORY = web.RequestKey("history", int)
_MESSAGE_INDEX = re.compile(r"messages\[(\d+)\]")

_PUBLIC: set[Callable[..., Any]] = set()
_QUERY_TOKEN: set[Callable[..., Any]] = set()
#: What a page on an allowed origin may read of a response.
_EXPOSED = ", ".join(
    (
        "X-Stream-Id",
        "X-Model-Target",
        "Retry-After",
        "retry-after-ms",
        *(
            f"x-ratelimit-{what}-{unit}"
            for what in ("limit", "remaining", "reset")
            for unit in ("requests", "tokens")
        ),
    )
)
_ALLOWED_HEADERS = (
    "Authorization, Content-Type, Last-Event-ID, X-Session-Parent, X-Session-Id, "
    "x-api-key, anthropic-version, anthropic-beta"
)


def public(handler: Handler) -> Handler:
    """Mark a route that needs no key (probes, the playground page)."""
    _PUBLIC.add(handler)
    return handler


def query_token(handler: Handler) -> Handler:
    """Mark a ``GET`` route that also takes ``?token=`` (the streams a page's EventSource reads)."""
    _QUERY_TOKEN.add(handler)
    return handler


def principal(request: web.Request) -> Principal:
    """Who ``request`` is (anonymous on an open gateway)."""
    found: Principal = request.get(PRINCIPAL, ANONYMOUS)
    return found


def add_headers(request: web.Request, headers: dict[str, str]) -> None:
    """Have the response to ``request`` carry ``headers`` (see the module docstring)."""
    extra = request.get(EXTRA_HEADERS)
    if extra is None:
        request[EXTRA_HEADERS] = dict(headers)
    else:
        extra.update(headers)


def error_dialect(render: ErrorRenderer) -> Callable[[Handler], Handler]:
    """Decorate a handler so its errors are answered with ``render`` (the route's dialect)."""

    def register(handler: Handler) -> Handler:
        _RENDERERS[handler] = render
        return handler

    return register


def render_error(request: web.BaseRequest, exc: EngineError) -> web.Response:
    """``exc`` as a response in the dialect of the route ``request`` matched."""
    match_info = getattr(request, "match_info", None)
    handler = getattr(match_info, "handler", None)
    render = _RENDERERS.get(handler, native.error_answer) if handler else native.error_answer
    answer = render(exc)
    response = web.Response(
        body=answer.body,
        status=answer.status,
        content_type="application/json",
        headers=answer.headers,
    )
    limit_headers = getattr(exc, "headers", None)
    if limit_headers:
        response.headers.update(limit_headers)
    if getattr(exc, "retry", True) is False:
        # The openai and anthropic SDKs retry a 429 unless told not to: waiting
        # does not make a request fit a limit smaller than itself.
        response.headers["x-should-retry"] = "false"
    extra = request.get(EXTRA_HEADERS) if isinstance(request, web.Request) else None
    if extra:
        response.headers.update(extra)
    response.headers["Server"] = SERVER_HEADER
    return response


def _reindexed(exc: UnsupportedField, history: int) -> UnsupportedField:
    """A provider's refusal of ``messages[i]`` in the request's own numbering.

    Providers number the messages they were sent: the stored history first,
    then the request's. A refused stored message is ``history[i]``.
    """
    match = _MESSAGE_INDEX.match(exc.field)
    if match is None:
        return exc
    index = int(match.group(1))
    where = f"messages[{index - history}]" if index >= history else f"history[{index}]"
    message = exc.message.replace(match.group(0), where, 1)
    if index < history:
        message += " (a stored message of the conversation this request names)"
    return UnsupportedField(message, field=exc.field.replace(match.group(0), where, 1))


def _cors(request: web.Request, origins: list[str]) -> web.StreamResponse | None:
    """CORS for an allowed ``Origin``: a preflight's answer, or the headers of the response."""
    origin = request.headers.get("Origin")
    if origin is None or (origin not in origins and "*" not in origins):
        return None
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE, OPTIONS"
        headers["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
        headers["Access-Control-Max-Age"] = "600"
        headers["Server"] = SERVER_HEADER
        return web.Response(status=204, headers=headers)
    headers["Access-Control-Expose-Headers"] = _EXPOSED
    add_headers(request, headers)
    return None


def guarded(check: HostCheck | None) -> Middleware:
    """The gateway's middleware: refuse a ``Host`` it does not serve (``check``, None
    for none), authenticate, then map every error raised before the response started
    to a JSON body in the route's dialect.

    One middleware and one frame rather than a chain: every layer is a coroutine
    frame that each open stream holds for its whole life (about 330 bytes per
    idle stream, benchmarks/NOTES.md Change 11), and the Host refusal must be
    rendered in the route's dialect anyway.
    """

    @web.middleware
    async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if check is not None:
                host = request.headers.get("Host")
                if not check.allows(host):
                    return render_error(
                        request,
                        HostNotAllowed(
                            f"this gateway does not answer for the host {host!r}; "
                            "add it to allowed_hosts (--allowed-hosts) if it should"
                        ),
                    )
            engine = request.app.get(ENGINE)
            if engine is not None and engine.config.cors_origins:
                preflight = _cors(request, engine.config.cors_origins)
                if preflight is not None:
                    return preflight
            gate = engine.gate if engine is not None else None
            if gate is not None and gate.required:
                route = request.match_info
                if route.http_exception is None and route.handler not in _PUBLIC:
                    request[PRINCIPAL] = gate.authenticate(
                        request.headers,
                        request.query,
                        query_token=request.method == "GET" and route.handler in _QUERY_TOKEN,
                    )
            response = await handler(request)
            if not response.prepared:
                extra = request.get(EXTRA_HEADERS)
                if extra:
                    response.headers.update(extra)
            return response
        except EngineError as exc:
            history = request.get(HISTORY)
            if history and isinstance(exc, UnsupportedField):
                exc = _reindexed(exc, history)
            engine = request.app.get(ENGINE)
            if engine is not None:
                exc = engine.scrub(exc)
            if exc.status >= 500:
                log.warning("%s %s: %s (%s)", request.method, request.path, exc.message, exc.type)
            return render_error(request, exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = EngineError(exc.reason)
            error.status, error.type = exc.status, _HTTP_TYPES.get(exc.status, "http_error")
            response = render_error(request, error)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except ConnectionResetError:
            # The client left before we answered: nobody to tell, nothing to log.
            return web.Response(status=499)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return render_error(request, EngineError("internal error"))
        finally:
            # A share no generation took over (refused, failed, not streamed) goes back.
            admission = request.get(ADMISSION)
            if admission is not None:
                admission.release()

    return error_middleware


#: :func:`guarded` with no Host check (a sub-app behind its parent's, or ``allowed_hosts`` empty).
error_middleware = guarded(None)


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: refuse a body that is announced too large *before* inviting it.

    aiohttp's default handler sends ``100 Continue`` to any such request, so a
    client would upload a body the gateway then refuses with 413 (RFC 9110
    10.1.1 lets a server answer the final status instead). This runs before
    the middlewares, so it renders its errors itself.
    """
    expect = request.headers.get("Expect", "")
    try:
        if expect.lower() != "100-continue":
            raise ExpectationFailed(f"unsupported Expect: {expect[:100]!r}")
        limit = request.app[ENGINE].config.max_body_size
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    except EngineError as exc:
        response = render_error(request, exc)
        response.force_close()  # the body may follow anyway: do not read it as a request
        return response
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started (as aiohttp does)
    return None
