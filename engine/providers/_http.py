"""HTTP plumbing the real providers share: errors, retries, timeouts, SSE reading.

Everything that touches aiohttp on the provider side lives here, so the three
adapters only build request bodies and map events:

* :func:`translate_errors` turns aiohttp's and asyncio's exceptions into the
  engine's :class:`~engine.errors.UpstreamError` tree (after httpx
  ``_transports/default.py`` ``map_httpcore_exceptions``), naming the provider
  but never its address, and redacts the key from every error that passes;
* :func:`status_error` maps an upstream error status and body to the matching
  exception, keeping the provider's message but never the API key;
* :class:`Upstream` posts a request with bounded retries (429, 5xx, connect
  errors; exponential backoff with full jitter, honouring Retry-After) and the
  three timeouts (connect, first byte, gap between chunks), and never follows a
  redirect;
* :meth:`HTTPProvider._chunks` feeds the body, as it arrives, to the sans-IO SSE
  decoder and each event to the adapter's :class:`StreamParser`.

Retries happen only inside :meth:`Upstream.post`, that is before the caller has
accepted the response: once a chunk may have gone out, a failure is reported,
never replayed.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import email.utils
import functools
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, TypeVar

import aiohttp
import msgspec

from ..config import DEFAULT_MODELS
from ..errors import (
    ProviderNotConfigured,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..sse import Decoder, ServerSentEvent
from ..wire import Chunk, Message, Options, Reply
from .base import ChunkStream, Provider, to_options

if TYPE_CHECKING:
    from ..config import ProviderSettings

__all__ = [
    "DRAIN_GRACE",
    "HTTPProvider",
    "StreamParser",
    "event_error",
    "options_dict",
    "MAX_ERROR_BODY",
    "MAX_RETRY_AFTER",
    "RETRY_STATUSES",
    "Upstream",
    "close_response",
    "decode_view",
    "parse_retry_after",
    "read_json",
    "redact",
    "status_error",
    "translate_errors",
]

logger = logging.getLogger("engine.providers")

#: Bytes of an error response kept for its message. Error bodies are small JSON
#: objects; the cap keeps a misbehaving upstream from making us buffer a page.
MAX_ERROR_BODY = 64 * 1024
#: Largest Retry-After (seconds) waited out inside a request. A longer one is not
#: slept through while the client waits: the 429 goes to the client with it, as
#: the OpenAI and Anthropic SDKs also cap their own waits (at 60 s).
MAX_RETRY_AFTER = 20.0
#: First backoff step in seconds, doubled each retry, capped, with full jitter
#: (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015; the OpenAI SDK
#: starts at 0.5 s and caps at 8 s).
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
#: Statuses worth another try: rate limited, or a server-side failure that is
#: usually transient (529 is Anthropic's "overloaded"). 501 and the like are not.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})

T = TypeVar("T")

_REDACTED = "***"
_json_decoder = msgspec.json.Decoder()


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret in ``secrets`` replaced by ``***``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, _REDACTED)
    return text


def _scrub(exc: UpstreamError, secrets: Sequence[str]) -> None:
    """Redact ``exc``'s message of ``secrets``, in place (it is re-raised as it is)."""
    text = redact(exc.message, secrets)
    if text != exc.message:
        exc.message = text
        exc.args = (text,)


@contextlib.contextmanager
def translate_errors(secrets: Sequence[str] = (), *, provider: str = "") -> Iterator[None]:
    """Re-raise aiohttp and timeout errors as :class:`~engine.errors.UpstreamError`.

    Cancellation is never caught. Engine errors pass through, redacted of
    ``secrets``: the adapters' parsers build them from what the upstream sent
    (an in-stream error's own message may quote the key), and this is the one
    place all their exceptions pass, so no parser needs to know the key.

    The new messages go to clients, so they name the ``provider`` but never
    quote aiohttp's text: it holds the base URL, host and port of the upstream
    (an internal address, for a self-hosted one). That detail goes to the
    ``engine.providers`` log instead, redacted too.

    Raises :class:`UpstreamTimeout` for timeouts (connect, first byte, idle),
    :class:`UpstreamConnectError` when the upstream cannot be reached, and
    :class:`UpstreamError` for a connection lost or a body cut short.
    """
    where = f"the {provider} upstream" if provider else "the upstream"
    try:
        yield
    except UpstreamError as exc:
        if secrets:
            _scrub(exc, secrets)
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise UpstreamTimeout(f"timed out connecting to {where}") from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        # asyncio.TimeoutError is TimeoutError on Python 3.11+.
        raise UpstreamTimeout(f"{where} took too long to respond") from exc
    except aiohttp.ClientError as exc:
        _log_cause(where, exc, secrets)
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise UpstreamConnectError(f"cannot connect to {where}") from exc
        if isinstance(exc, aiohttp.ClientPayloadError):
            raise UpstreamError(f"{where} closed the stream before it was complete") from exc
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            raise UpstreamError(f"{where} closed the connection") from exc
        # The class name is safe to show; str(exc) is not: ClientResponseError
        # carries the request URL (Gemini's key stays out of it only because
        # it goes in a header, x-goog-api-key, never in a ?key= query).
        raise UpstreamError(f"the connection to {where} failed ({type(exc).__name__})") from exc


def _log_cause(where: str, exc: BaseException, secrets: Sequence[str]) -> None:
    # Only on a failure, never per chunk: the operator's copy of what the client
    # is not shown.
    logger.warning("%s failed: %s: %s", where, type(exc).__name__, redact(str(exc), secrets))


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or an HTTP date), or ``None``.

    ``retry-after-ms`` (sent by OpenAI) wins when present, as the OpenAI SDK reads
    it. RFC 9110 section 10.2.3: https://www.rfc-editor.org/rfc/rfc9110#name-retry-after
    """
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_detail(body: bytes) -> tuple[str, str | None]:
    """The provider's own message and error type from an error body, if it has them.

    OpenAI ``{"error": {"message", "type"}}``, Anthropic ``{"type": "error",
    "error": {"type", "message"}}``, Gemini ``{"error": {"code", "message",
    "status"}}``; anything else is quoted as text.
    """
    try:
        doc = _json_decoder.decode(body)
    except msgspec.DecodeError:
        return body.decode("utf-8", "replace").strip()[:1000], None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        kind = err.get("type") or err.get("status")
        return (
            str(message) if message is not None else "",
            str(kind) if kind is not None else None,
        )
    if isinstance(err, str):
        return err, None
    return body.decode("utf-8", "replace").strip()[:1000], None


def status_error(
    status: int,
    body: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    provider: str = "upstream",
    secrets: Sequence[str] = (),
) -> UpstreamError:
    """The exception for an upstream answering ``status`` with ``body``.

    401/403 -> :class:`UpstreamAuthError`, 429 -> :class:`UpstreamRateLimited`
    (``retry_after`` from the headers), 400/404/413/422 ->
    :class:`UpstreamBadRequest`, 503/529 -> :class:`UpstreamUnavailable`, any
    other status -> :class:`UpstreamError`. The message keeps the provider's own
    words, minus the ``secrets``.
    """
    message, kind = _error_detail(body)
    text = redact(f"{provider} answered {status}: {message or 'no message'}", secrets)
    retry_after = parse_retry_after(headers) if headers is not None else None
    cls: type[UpstreamError]
    if status in (401, 403):
        cls = UpstreamAuthError
    elif status == 429:
        cls = UpstreamRateLimited
    elif status in (400, 404, 413, 422):
        cls = UpstreamBadRequest
    elif status in (503, 529):
        cls = UpstreamUnavailable
    else:
        cls = UpstreamError
    return cls(text, retry_after=retry_after, upstream_status=status, upstream_type=kind)


def event_error(
    status: int | None,
    message: str,
    kind: str | None,
    *,
    provider: str,
    secrets: Sequence[str] = (),
) -> UpstreamError:
    """The exception for an error the upstream reported inside a stream.

    Anthropic's types (``overloaded_error``, ``rate_limit_error``, ...) and
    Gemini's statuses (``UNAVAILABLE``, ...) pick the class when no status is known.
    """
    by_kind: dict[str, int] = {
        "overloaded_error": 529,
        "rate_limit_error": 429,
        "authentication_error": 401,
        "permission_error": 403,
        "invalid_request_error": 400,
        "not_found_error": 404,
        "api_error": 500,
        "UNAVAILABLE": 503,
        "RESOURCE_EXHAUSTED": 429,
        "INVALID_ARGUMENT": 400,
        "UNAUTHENTICATED": 401,
        "PERMISSION_DENIED": 403,
    }
    if status is None and kind is not None:
        status = by_kind.get(kind)
    err = status_error(status or 500, b"", provider=provider, secrets=secrets)
    text = redact(
        f"{provider} stream error ({kind or 'error'}): {message or 'no message'}", secrets
    )
    return type(err)(text, upstream_status=status, upstream_type=kind)


def backoff_delay(attempt: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**attempt)]``."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def close_response(resp: aiohttp.ClientResponse) -> None:
    """Give the connection back if the body was read to its end, else close it.

    Closing (not releasing) a half-read response drops the TCP connection, so
    the upstream sees at once that nobody is reading and can stop generating.
    """
    if resp.content.at_eof():
        resp.release()
    else:
        resp.close()


async def read_json(resp: aiohttp.ClientResponse, *, idle_timeout: float) -> bytes:
    """The whole body of ``resp``, each read bounded by ``idle_timeout``.

    Raises :class:`UpstreamTimeout` when the upstream stalls.
    """
    parts: list[bytes] = []
    while True:
        async with asyncio.timeout(idle_timeout):
            data = await resp.content.readany()
        if not data:
            return b"".join(parts)
        parts.append(data)


class _IdleDeadline:
    """The idle timeout of a streamed body, at the cost of a clock read per read.

    ``asyncio.timeout`` around every read builds and cancels a timer and a
    context each time: 9% of the gateway's CPU when relaying 1,000 streams
    (py-spy, benchmarks/NOTES.md). Here one timer serves a whole idle period:
    a read only records its start; the timer, when it fires, cancels the task
    if a read has been waiting for ``seconds``, and otherwise re-arms itself for
    the current read's deadline. Time the consumer spends elsewhere (a slow
    client draining) is not counted against the upstream.
    """

    __slots__ = ("_fired", "_handle", "_loop", "_seconds", "_since", "_task")

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._seconds = seconds
        self._since: float | None = None  # when the pending read began
        self._fired = False
        self._handle = self._loop.call_later(seconds, self._check)

    def reading(self) -> None:
        self._since = self._loop.time()

    def paused(self) -> None:
        self._since = None

    def _check(self) -> None:
        since = self._since
        now = self._loop.time()
        if since is not None and now - since >= self._seconds and self._task is not None:
            self._fired = True
            self._task.cancel()
            return
        deadline = (since if since is not None else now) + self._seconds
        self._handle = self._loop.call_at(deadline, self._check)

    def expired(self) -> bool:
        """True (once) if this timer cancelled the read; the cancellation is then withdrawn."""
        if self._fired and self._task is not None and self._task.uncancel() == 0:
            self._fired = False
            return True
        return False

    def cancel(self) -> None:
        self._handle.cancel()


class Upstream:
    """One provider's HTTP side: session, timeouts, retries and secret hygiene.

    ``session`` is the app's shared :class:`aiohttp.ClientSession`; when it is
    ``None`` (library use) a private one is made on first use and closed by
    :meth:`aclose`.
    """

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        session: aiohttp.ClientSession | None,
        provider: str,
        key_env: str,
        backoff_base: float = BACKOFF_BASE,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.key_env = key_env
        self.backoff_base = backoff_base
        self._session = session
        self._own_session: aiohttp.ClientSession | None = None
        self.secrets: tuple[str, ...] = (settings.api_key,) if settings.api_key else ()
        #: Told of every attempt (engine.telemetry): its status (``"error"`` when no
        #: connection was made, ``"timeout"`` without an answer in time), seconds to
        #: the answer, and whether it was a retry. Once per attempt, never per chunk.
        self.observe: Callable[[str, float, bool], None] | None = None
        # sock_read stays off: the idle timeout is applied around each body read
        # instead, and the first-byte timeout around the wait for the status.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=None,
        )

    @property
    def api_key(self) -> str:
        """The API key. Raises :class:`ProviderNotConfigured` naming the variable when unset."""
        key = self.settings.api_key
        if not key:
            raise ProviderNotConfigured(
                f"{self.key_env} is not set: the {self.provider} provider needs an API key"
            )
        return key

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._own_session = self._session = aiohttp.ClientSession()
        return self._session

    async def aclose(self) -> None:
        """Close the private session, if one was made."""
        if self._own_session is not None:
            session, self._own_session, self._session = self._own_session, None, None
            await session.close()

    def error_for(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        """:func:`status_error` for this provider, redacted of its key."""
        return status_error(
            status, body, headers=headers, provider=self.provider, secrets=self.secrets
        )

    async def post(
        self,
        url: str,
        body: bytes,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """POST ``body`` and return the response once the upstream answered 200.

        Retries up to ``settings.max_retries`` times for 429, 5xx and connect
        errors, waiting an exponential, jittered backoff or the upstream's
        Retry-After (when at most :data:`MAX_RETRY_AFTER`). The caller owns the
        returned response and must :func:`close_response` it.

        Redirects are not followed: aiohttp would re-send the body and the key
        headers to the Location's origin and stream back whatever answers there.

        Raises the :class:`UpstreamError` subclasses of :func:`status_error` and
        :func:`translate_errors`, and :class:`UpstreamError` for a 3xx.
        """
        settings = self.settings
        all_headers = {"Content-Type": "application/json", **headers}
        attempt = 0
        observe = self.observe
        while True:
            retry_after: float | None = None
            sent = time.monotonic()
            with translate_errors(self.secrets, provider=self.provider):
                try:
                    async with asyncio.timeout(settings.first_byte_timeout):
                        resp = await self.session.post(
                            url,
                            data=body,
                            headers=all_headers,
                            params=params,
                            timeout=self._timeout,
                            # Following one would re-send the prompt and the key
                            # headers to wherever the Location points.
                            allow_redirects=False,
                        )
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                    if observe is not None:
                        observe("error", time.monotonic() - sent, attempt > 0)
                    # Nothing reached the upstream: always safe to try again.
                    if attempt >= settings.max_retries:
                        raise
                    logger.info(
                        "%s: connect failed (%s), retrying", self.provider, type(exc).__name__
                    )
                except TimeoutError as exc:
                    if observe is not None:
                        observe("timeout", time.monotonic() - sent, attempt > 0)
                    # Not retried: the upstream may be working on it (and billing it).
                    raise UpstreamTimeout(
                        f"{self.provider} did not answer within "
                        f"{settings.first_byte_timeout:g} s (first_byte_timeout)"
                    ) from exc
                else:
                    if observe is not None:
                        observe(str(resp.status), time.monotonic() - sent, attempt > 0)
                    if resp.status == 200:
                        return resp
                    if 300 <= resp.status < 400:
                        raise self._redirect_error(resp)
                    try:
                        data = await self._error_body(resp)
                    finally:
                        close_response(resp)
                    error = self.error_for(resp.status, data, resp.headers)
                    retry_after = error.retry_after
                    if (
                        attempt >= settings.max_retries
                        or resp.status not in RETRY_STATUSES
                        or (retry_after is not None and retry_after > MAX_RETRY_AFTER)
                    ):
                        raise error
                    logger.info("%s: upstream answered %d, retrying", self.provider, resp.status)
            delay = backoff_delay(attempt, base=self.backoff_base)
            if retry_after is not None:
                # The upstream said when: wait that long (0 means now), not less.
                delay = max(retry_after, delay) if retry_after > 0 else 0.0
            attempt += 1
            await asyncio.sleep(delay)

    def _redirect_error(self, resp: aiohttp.ClientResponse) -> UpstreamError:
        """The error for a 3xx: never followed, never retried, its Location only logged.

        The Location is not in the message: it may be an internal address, or
        carry a token in its query.
        """
        close_response(resp)
        location = redact(resp.headers.get("Location", "none"), self.secrets)
        logger.warning(
            "%s: upstream answered %d, redirect to %s not followed",
            self.provider,
            resp.status,
            location,
        )
        return UpstreamError(
            f"the {self.provider} upstream answered a redirect ({resp.status}), "
            "which is not followed",
            upstream_status=resp.status,
        )

    async def _error_body(self, resp: aiohttp.ClientResponse) -> bytes:
        parts: list[bytes] = []
        size = 0
        while size < MAX_ERROR_BODY:
            async with asyncio.timeout(self.settings.idle_timeout):
                data = await resp.content.readany()
            if not data:
                break
            parts.append(data)
            size += len(data)
        return b"".join(parts)[:MAX_ERROR_BODY]

    async def post_json(
        self,
        url: str,
        body: bytes,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
    ) -> bytes:
        """POST and read the whole (non-streamed) body; the connection is released after."""
        resp = await self.post(url, body, headers=headers, params=params)
        try:
            with translate_errors(self.secrets, provider=self.provider):
                return await read_json(resp, idle_timeout=self.settings.idle_timeout)
        finally:
            close_response(resp)


def decode_view(decoder: msgspec.json.Decoder[T], data: bytes | str, *, provider: str) -> T:
    """Decode upstream JSON with a view decoder; bad JSON is an :class:`UpstreamError`."""
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"{provider} sent malformed JSON: {exc}") from exc


#: Seconds a finished stream may take to end its body before the connection is
#: closed instead of reused. A well-behaved upstream ends it at once after its
#: last event; this only bounds one that does not.
DRAIN_GRACE = 0.25


class StreamParser(Protocol):
    """Turns one provider's events into chunks; one instance per reply."""

    #: True once the terminal event arrived.
    done: bool

    def event(self, event: ServerSentEvent) -> Chunk | None:
        """The chunk this event makes, if any. Raises :class:`UpstreamError` for error events."""
        ...

    def end(self) -> Chunk | None:
        """Called when the body ended before ``done``: a last chunk, or raise."""
        ...


class HTTPProvider(Provider):
    """What the real providers share: settings, :class:`Upstream`, the read loop.

    Subclasses build requests (:meth:`request`), parse events
    (:meth:`parser`) and non-streamed replies (:meth:`parse_reply`).
    """

    #: The environment variable that holds the key, named in the error when it is unset.
    key_env: ClassVar[str]
    default_base_url: ClassVar[str]

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        backoff_base: float = BACKOFF_BASE,
    ) -> None:
        super().__init__(model=settings.model or DEFAULT_MODELS[self.name])
        self.settings = settings
        self.base_url = (settings.base_url or self.default_base_url).rstrip("/")
        self.http = Upstream(
            settings,
            session=session,
            provider=self.name,
            key_env=self.key_env,
            backoff_base=backoff_base,
        )

    @classmethod
    def from_settings(
        cls, settings: ProviderSettings, *, session: aiohttp.ClientSession | None = None
    ) -> Self:
        """Build the provider from its settings, sharing ``session`` (the app's)."""
        return cls(settings, session=session)

    @abc.abstractmethod
    def request(
        self, messages: Sequence[Message], model: str, options: Options, *, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, str], bytes]:
        """``(url, query params, headers, JSON body)``. Raises ProviderNotConfigured."""

    @abc.abstractmethod
    def parser(self, model: str) -> StreamParser:
        """A fresh parser for one streamed reply."""

    @abc.abstractmethod
    def parse_reply(self, data: bytes, model: str) -> Reply:
        """A non-streamed reply body as a :class:`Reply`."""

    async def open(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
    ) -> ChunkStream:
        model = model or self.default_model
        options = options or Options()
        self.check_options(options)
        url, params, headers, body = self.request(messages, model, options, stream=True)
        resp = await self.http.post(url, body, headers=headers, params=params)
        return ChunkStream(
            self._chunks(resp, self.parser(model)),
            model=model,
            on_close=functools.partial(close_response, resp),
            provider=self.name,
        )

    async def _chunks(
        self, resp: aiohttp.ClientResponse, parser: StreamParser
    ) -> AsyncGenerator[Chunk, None]:
        """Each chunk of ``resp``'s body the moment its event's blank line arrives.

        Bytes go to :class:`~engine.sse.Decoder` exactly as the socket delivers
        them (``readany``: no line buffering, no fixed read size), and each event
        to ``parser``. The read loop is written out here rather than in a second
        generator: at one chunk per read (a steady token cadence) every layer of
        generator costs each chunk a resumption (benchmarks/NOTES.md, Change 8).
        The gap between reads is bounded by ``idle_timeout`` (:class:`_IdleDeadline`).
        """
        idle_timeout = self.settings.idle_timeout
        idle = _IdleDeadline(idle_timeout)
        decoder = Decoder()
        content = resp.content
        try:
            # Parsers raise the upstream's in-stream errors; translate_errors
            # redacts the key from them (only when one is raised: nothing per chunk).
            with translate_errors(self.http.secrets, provider=self.name):
                while not parser.done:
                    idle.reading()
                    try:
                        data = await content.readany()
                    except asyncio.CancelledError:
                        if idle.expired():
                            raise UpstreamTimeout(
                                f"no data from the {self.name} upstream for "
                                f"{idle_timeout:g} s (idle_timeout)"
                            ) from None
                        raise
                    idle.paused()
                    if not data:  # end of body: an unfinished event is dropped (the spec)
                        break
                    for event in decoder.feed(data):
                        chunk = parser.event(event)
                        if chunk is not None:
                            yield chunk
                        if parser.done:
                            break
                if not parser.done:
                    chunk = parser.end()
                    if chunk is not None:
                        yield chunk
            idle.cancel()
            if not resp.content.at_eof():
                await _drain(resp)
        finally:
            idle.cancel()
            close_response(resp)

    async def send(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
        **extra: Any,
    ) -> Reply:
        """One non-streaming upstream call (``stream: false`` or its equivalent)."""
        model = model or self.default_model
        options = to_options(options, extra)
        self.check_options(options)
        url, params, headers, body = self.request(messages, model, options, stream=False)
        data = await self.http.post_json(url, body, headers=headers, params=params)
        # A reply can hold an error too (Gemini's 200 with an "error" object).
        with translate_errors(self.http.secrets, provider=self.name):
            return self.parse_reply(data, model)

    async def aclose(self) -> None:
        await self.http.aclose()


async def _drain(resp: aiohttp.ClientResponse) -> None:
    # Read what follows the terminal event (usually just the end of the chunked
    # body) so the connection can go back to the pool.
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(DRAIN_GRACE):
            while await resp.content.readany():
                pass


def options_dict(options: Options, names: Mapping[str, str]) -> dict[str, Any]:
    """The options set in ``options``, renamed by ``names`` (engine name -> provider name).

    Options not in ``names`` (the mock's ``interval_ms``, memory's
    ``max_history``) are never sent upstream.
    """
    out: dict[str, Any] = {}
    for ours, theirs in names.items():
        value = getattr(options, ours)
        if value is not None:
            out[theirs] = value
    return out
