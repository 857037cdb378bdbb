"""The aiohttp application: ``create_app(config)``, standalone or mounted with ``add_subapp``.

Routes::

    POST /v1/chat/stream     JSON ChatRequest  -> text/event-stream
    GET  /v1/chat/stream     ?q=&provider=&model=&parent=&parent_id=&<options>  (EventSource)
    POST /v1/chat            JSON ChatRequest  -> JSON Reply
    GET  /v1/memory/{parent}/{id}            -> the conversation's messages
    POST /v1/memory/{parent}/{id}/messages   -> add one message
    DELETE /v1/memory/{parent}/{id}          -> clear
    GET  /healthz

Errors are mapped to HTTP here and only here: :func:`error_middleware` turns an
:class:`~engine.errors.EngineError` raised before the response headers went out
into a JSON body with the error's status; once a stream has begun,
:class:`~engine.stream.EventStream` sends the same fields as ``event: error``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypedDict, TypeVar

import msgspec
from aiohttp import StreamReader, web

from ._eager import next_ready
from .config import Config
from .errors import (
    BadRequest,
    ClientDisconnectedError,
    EngineError,
    ExpectationFailed,
    HostNotAllowed,
    InvalidFields,
    PayloadTooLarge,
    RequestTimeout,
    ShuttingDown,
    StoreUnavailable,
    UnsupportedMediaType,
)
from .gateway import Engine
from .hosts import HostCheck, host_check
from .memory import Conversation
from .providers import ChunkStream, Provider
from .sse import encode_json, encode_json_numbered, numbered_id_prefix
from .stream import EventStream, StreamSupervisor
from .wire import (
    MAX_JSON_DEPTH,
    ChatRequest,
    Chunk,
    DoneEvent,
    ErrorEvent,
    Message,
    Options,
    Reply,
    SessionRef,
    StartEvent,
    Usage,
)

__all__ = ["ENGINE", "create_app", "error_middleware"]

log = logging.getLogger("engine.app")

#: The application's :class:`Engine`, for handlers of an app that mounts ours.
ENGINE = web.AppKey("engine", Engine)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Most chunk frames joined into one write: bounds how long the first of a burst
#: waits for the others to be framed (microseconds each).
_MAX_BATCH = 64
#: Lone chunks in a row after which the stream stops stepping the provider
#: eagerly, and for how many chunks (see relay).
_LONE_RUN = 8
_PLAIN_RUN = 64

#: Characters of a streamed reply kept for memory; the rest is streamed but not
#: stored, and the stored message says ``"truncated": true``. The largest real
#: outputs (128k tokens) are about 512 KiB of text; the mock streams up to
#: 64 GB, which a conversation must not try to hold.
MAX_STORED_REPLY_CHARS = 4 * 1024 * 1024

# Query parameters of GET /v1/chat/stream that are not generation options.
_QUERY_FIELDS = frozenset({"q", "provider", "model", "parent", "parent_id"})


#: The ``Server`` header of every response of ours: the product, not its version
#: nor aiohttp's and Python's (aiohttp's default, which only helps an attacker
#: pick an exploit). Set on each response rather than from ``on_response_prepare``:
#: a signal handler costs every request a coroutine.
SERVER_HEADER = "sse-engine"


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.Response(
        body=msgspec.json.encode(obj),
        status=status,
        content_type="application/json",
        headers=headers,
    )
    response.headers["Server"] = SERVER_HEADER
    return response


def _error_response(
    status: int, message: str, type: str, retry_after: float | None = None
) -> web.Response:
    headers = None
    if retry_after is not None:
        # Retry-After is whole seconds (RFC 9110 10.2.3); round up, never to 0.
        headers = {"Retry-After": str(max(1, int(-(-retry_after // 1))))}
    return json_response(ErrorEvent(message=message, code=status, type=type), status, headers)


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}

#: How one route family answers an error before its headers went out: the
#: native ``{"error": true, ...}`` body by default, OpenAI's shape on the
#: OpenAI routes (registered by :func:`error_dialect`).
ErrorRenderer = Callable[[EngineError], web.Response]
_RENDERERS: dict[Callable[..., Any], ErrorRenderer] = {}


def native_error_response(exc: EngineError) -> web.Response:
    """The native JSON error body, ``{"error": true, "message", "code", "type"}``."""
    return _error_response(exc.status, exc.message, exc.type, exc.retry_after)


def error_dialect(render: ErrorRenderer) -> Callable[[Handler], Handler]:
    """Decorate a handler so :func:`error_middleware` answers its errors with ``render``."""

    def register(handler: Handler) -> Handler:
        _RENDERERS[handler] = render
        return handler

    return register


def _renderer(request: web.Request) -> ErrorRenderer:
    match_info = request.match_info
    handler = getattr(match_info, "handler", None) if match_info is not None else None
    return _RENDERERS.get(handler, native_error_response) if handler else native_error_response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every error raised before the response started to a JSON body, once.

    The body is in the route's dialect (:func:`error_dialect`), its message
    redacted of provider keys (:meth:`Engine.scrub`).
    """
    try:
        return await handler(request)
    except EngineError as exc:
        engine = request.app.get(ENGINE)
        if engine is not None:
            exc = engine.scrub(exc)
        if exc.status >= 500:
            log.warning("%s %s: %s (%s)", request.method, request.path, exc.message, exc.type)
        return _renderer(request)(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error_response(
            exc.status, exc.reason, _HTTP_TYPES.get(exc.status, "http_error")
        )
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except ConnectionResetError:
        # The client left before we answered: nobody to tell, nothing to log.
        return web.Response(status=499)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _renderer(request)(EngineError("internal error"))


def _guarded(check: HostCheck) -> Any:
    """:func:`error_middleware` that first refuses a ``Host`` the gateway does not serve.

    One middleware rather than two: a layer costs every request a call, and
    the refusal must be rendered in the route's dialect anyway.
    """

    @web.middleware
    async def guarded_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not check.allows(host):
            return _renderer(request)(
                HostNotAllowed(
                    f"this gateway does not answer for the host {host!r}; "
                    "add it to allowed_hosts (--allowed-hosts) if it should"
                )
            )
        return await error_middleware(request, handler)

    return guarded_middleware


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: refuse a body that is announced too large *before* inviting it.

    aiohttp's default handler sends ``100 Continue`` to any such request, so a
    client would upload a body the gateway then refuses with 413 (RFC 9110
    10.1.1 lets a server answer the final status instead). Errors are in the
    route's dialect; this runs before the middlewares, so it renders them itself.
    """
    expect = request.headers.get("Expect", "")
    try:
        if expect.lower() != "100-continue":
            raise ExpectationFailed(f"unsupported Expect: {expect[:100]!r}")
        limit = request.app[ENGINE].config.max_body_size
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    except EngineError as exc:
        response = _renderer(request)(exc)
        response.force_close()  # the body may follow anyway: do not read it as a request
        return response
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started (as aiohttp does)
    return None


async def read_json(request: web.Request, type: type[T]) -> T:
    """Read and validate a JSON body: 415 wrong type, 413 too large, 400 malformed, 422 invalid."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {request.content_type or 'none'}"
        )
    config = request.app[ENGINE].config
    limit = config.max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    content = request.content
    body: bytes | bytearray
    if content.is_eof():  # all of it arrived with the head (the usual case): no wait
        body = await content.read()
        if len(body) > limit:  # a chunked body has no Content-Length to check first
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    else:
        # A body sent a byte at a time would hold the connection and the
        # handler for ever (slowloris after the head): bounded like the head.
        try:
            async with asyncio.timeout(config.header_timeout):
                body = await _read_body(content, limit)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {config.header_timeout:g} s"
            ) from None
    try:
        return msgspec.json.decode(body, type=type)
    # ValidationError subclasses DecodeError: catch it first.
    except msgspec.ValidationError as exc:
        raise InvalidFields(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        # msgspec stops at the interpreter's recursion limit (about 1,000 levels,
        # in an unknown field too); values we keep are bounded far lower
        # (wire.MAX_JSON_DEPTH).
        raise BadRequest(f"JSON nested too deeply (limit {MAX_JSON_DEPTH} levels)") from exc


async def _read_body(content: StreamReader, limit: int) -> bytes | bytearray:
    body = bytearray()
    async for data in content.iter_any():
        body += data
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return body


def chat_request_from_query(request: web.Request) -> ChatRequest:
    """Build a ChatRequest from ``GET /v1/chat/stream``'s query string, typed and validated."""
    query = request.query
    text = query.get("q")
    if not text:
        raise InvalidFields("query parameter `q` (the user's message) is required")
    raw_options = {k: v for k, v in query.items() if k not in _QUERY_FIELDS}
    try:
        # strict=False lets "40" become 40: query values are always strings.
        options = msgspec.convert(raw_options, Options, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidFields(f"invalid option: {exc}") from exc
    session = None
    if "parent" in query or "parent_id" in query:
        try:
            session = msgspec.convert(
                {"parent": query.get("parent", ""), "id": query.get("parent_id", "")}, SessionRef
            )
        except msgspec.ValidationError as exc:
            raise InvalidFields(f"invalid session: {exc}") from exc
    return ChatRequest(
        messages=[Message(role="user", content=text)],
        provider=query.get("provider") or None,
        model=query.get("model") or None,
        options=options,
        session=session,
    )


# -- conversation memory around a chat ------------------------------------------


class _Memory:
    """The memory side of one chat request: history in, messages out."""

    __slots__ = ("conversation", "max_chars", "max_history", "new")

    def __init__(
        self,
        conversation: Conversation,
        new: list[Message],
        max_history: int,
        max_chars: int,
    ) -> None:
        self.conversation = conversation
        self.new = new
        self.max_history = max_history
        self.max_chars = max_chars

    @classmethod
    async def attach(cls, engine: Engine, body: ChatRequest) -> _Memory | None:
        if body.session is None:
            return None
        store = await engine.open_memory()
        conversation = store.for_parent(body.session.parent, body.session.id)
        config = engine.config
        limit = body.options.max_history
        return cls(
            conversation,
            body.messages,
            config.max_history if limit is None else limit,
            config.max_history_chars,
        )

    async def upstream_messages(self) -> list[Message]:
        """The stored history, then the new messages.

        The history is the last ``max_history`` stored messages, and of those
        the newest that fit in ``max_chars`` characters: a long conversation is
        neither loaded whole nor sent upstream whole on every request.
        """
        limit = self.max_history
        history = [] if limit == 0 else await self.conversation.get_messages(limit=limit)
        # Only text goes upstream: image and audio entries are kept, not sent.
        past: list[Message] = []
        budget = self.max_chars
        for m in reversed(history):
            if m.type != "text":
                continue
            budget -= len(m.content)
            if budget < 0:
                break
            past.append(Message(role=m.role, content=m.content))
        del history  # the stored rows (metadata and all) are not needed past here
        past.reverse()
        return past + self.new

    async def store_request(self) -> None:
        # All of the request's messages or none of them.
        await self.conversation.add_messages(
            [{"role": m.role, "content": m.content} for m in self.new]
        )

    async def store_reply(self, text: str, metadata: dict[str, Any] | None = None) -> None:
        await self.conversation.add_message("assistant", text, metadata=metadata or {})


async def _attach_memory(engine: Engine, body: ChatRequest) -> tuple[_Memory | None, list[Message]]:
    memory = await _Memory.attach(engine, body)
    if memory is None:
        return None, body.messages
    return memory, await memory.upstream_messages()


# -- handlers ------------------------------------------------------------------


async def chat_stream_post(request: web.Request) -> web.StreamResponse:
    args = await _open_stream(request, await read_json(request, ChatRequest))
    return args if isinstance(args, web.StreamResponse) else await relay(**args)


async def chat_stream_get(request: web.Request) -> web.StreamResponse:
    args = await _open_stream(request, chat_request_from_query(request))
    return args if isinstance(args, web.StreamResponse) else await relay(**args)


async def open_upstream(
    stream: EventStream,
    opening: Awaitable[ChunkStream],
    *,
    request: web.Request,
    supervisor: StreamSupervisor,
    deadline: float,
) -> ChunkStream | None:
    """Await ``opening`` (a provider's ``open()``), sending the headers after ``deadline`` s.

    An upstream that answers within ``deadline`` seconds (the usual case) is
    answered as before: its refusal is still a JSON error with a real status.
    One that is still thinking gets the response headers sent, and with them
    heartbeats, so no proxy cuts a silent connection (USERS-ASK 2); a refusal
    after that is an ``error`` event on the stream, which is then finished, and
    ``None`` is returned. A client that leaves meanwhile stops the upstream
    request, also when the server does not cancel handlers (USERS-ASK 1), and a
    server that is stopping makes none (503).

    ``opening`` runs in this task, not in one of its own, and the deadline is
    the supervisor's to watch (:class:`~engine.stream.Opening`): a task and a
    wait cost a stream 13 us, a timer 2 us, a supervisor entry well under one
    (benchmarks/NOTES.md).
    """
    watch = supervisor.opening(request, stream, deadline)
    try:
        chunks = await opening
    except BaseException as exc:
        early = watch.early
        if early is None:
            if isinstance(exc, asyncio.CancelledError) and watch.interrupted is not None:
                task = asyncio.current_task()
                if task is not None and task.uncancel() == 0:
                    if watch.interrupted == "shutdown":
                        raise ShuttingDown("the server is shutting down") from None
                    raise ClientDisconnectedError("the client left before the reply") from None
            raise
        if not early.done():
            if isinstance(exc, asyncio.CancelledError):
                early.cancel()
                raise
            await asyncio.wait((early,))  # the headers are on their way: finish them first
        if stream.prepared and await stream.__aexit__(type(exc), exc, exc.__traceback__):
            return None  # the error event was sent (or the client left)
        raise
    finally:
        supervisor.unregister(watch)
    if watch.early is not None:
        try:
            await watch.early  # the headers are out (or could not be sent) before any write
        except BaseException:
            await chunks.aclose()
            raise
    return chunks


class _NativeFraming:
    """Chunk ``n``'s frame (id ``<stream_id>:<n>``) and the final ``done`` event.

    A slotted object rather than two closures: an idle stream holds it for as
    long as it is open (benchmarks/NOTES.md, Change 9).
    """

    __slots__ = ("id_prefix", "stream", "stream_id")

    def __init__(self, stream: EventStream, stream_id: str) -> None:
        self.stream = stream
        self.stream_id = stream_id
        self.id_prefix = numbered_id_prefix(stream_id)  # chunk n's id is f"{sid}:{n}"

    def chunk(self, chunk: Chunk, n: int) -> bytes:
        return encode_json_numbered(chunk, self.id_prefix, n)

    async def finish(self, finish_reason: str | None, usage: Usage | None, n: int) -> None:
        done = DoneEvent(finish_reason=finish_reason, usage=usage)
        await self.stream.end(done, id=f"{self.stream_id}:{n + 1}")


class _RelayArgs(TypedDict):
    stream: EventStream
    chunks: ChunkStream
    memory: _Memory | None
    stream_id: str
    start: bytes
    frame: Callable[[Chunk, int], bytes | None]
    finish: Callable[[str | None, Usage | None, int], Awaitable[None]]


async def _open_stream(request: web.Request, body: ChatRequest) -> _RelayArgs | web.StreamResponse:
    """Everything before the first byte of a native stream: memory, the upstream
    request (a refusal is still a JSON error, see :func:`open_upstream`), the
    framing. Returns ``relay``'s arguments, so the handler awaits ``relay``
    itself and an open stream holds one coroutine frame less (and none of the
    request's messages); or the finished response, when the upstream refused
    after the header deadline."""
    engine = request.app[ENGINE]
    provider = engine.provider(body.provider)
    memory, messages = await _attach_memory(engine, body)
    stream = engine.sse(request, Server=SERVER_HEADER)
    chunks = await open_upstream(
        stream,
        provider.open(messages, model=body.model, options=body.options),
        request=request,
        supervisor=engine.supervisor,
        deadline=engine.config.header_deadline,
    )
    del messages
    if chunks is None:
        return stream.response or web.Response(status=499)
    sid = uuid.uuid4().hex
    framing = _NativeFraming(stream, sid)
    start = StartEvent(stream_id=sid, provider=provider.name, model=chunks.model)
    return _RelayArgs(
        stream=stream,
        chunks=chunks,
        memory=memory,
        stream_id=sid,
        start=encode_json(start, event="start", id=f"{sid}:0"),
        frame=framing.chunk,
        finish=framing.finish,
    )


async def relay(
    stream: EventStream,
    chunks: ChunkStream,
    memory: _Memory | None,
    stream_id: str,
    *,
    start: bytes,
    frame: Callable[[Chunk, int], bytes | None],
    finish: Callable[[str | None, Usage | None, int], Awaitable[None]],
) -> web.StreamResponse:
    """Relay ``chunks`` to ``stream`` in one endpoint's framing, with memory around it.

    ``start`` goes out first; ``frame(chunk, n)`` frames chunk ``n`` (``None``
    skips it); ``finish(finish_reason, usage, n)`` ends the stream once the
    whole reply is stored, so the final event means it is saved. A failure or
    a client that left stores the part that was written, marked partial.
    """
    seen: list[str] = []  # what the client was sent, for memory
    room = MAX_STORED_REPLY_CHARS  # below 0: the rest of the reply is not kept
    try:
        async with chunks:
            # Stored before the headers, so a store that is down is still a JSON
            # 503; once the header deadline sent them, inside the stream (an
            # error event). Either way the request is stored before any reply.
            store_inside = memory is not None and stream.prepared
            if memory is not None and not store_inside:
                await memory.store_request()
            async with stream:
                if memory is not None and store_inside:
                    await memory.store_request()
                await stream.send_frame(start)
                del start  # an idle stream holds no more than it needs
                n = 0
                finish_reason = None
                usage = None
                # Chunks the provider has ready at once (one upstream read holds
                # several events; the mock at interval 0 yields 32 at a time) go
                # out in one write, made the moment it would wait: one syscall
                # per burst, and no event waits for a later one (next_ready).
                # The eager step costs about a microsecond a chunk and saves
                # nothing when chunks come one at a time (a steady cadence): after
                # _LONE_RUN lone chunks in a row, the next _PLAIN_RUN are awaited
                # plainly and each written at once, then the loop looks again.
                flush = stream.flush_nowait  # None, or the wait for a slow reader
                lone = plain = 0
                pending = 0  # frames queued since the last flush we know of
                while True:
                    try:
                        if plain:
                            plain -= 1
                            chunk = await chunks.__anext__()
                        else:
                            chunk = await next_ready(chunks, flush)
                            if pending and not stream.queued:  # they went out in one write
                                lone = lone + 1 if pending == 1 else 0
                                if lone >= _LONE_RUN:
                                    lone, plain = 0, _PLAIN_RUN
                                pending = 0
                    except StopAsyncIteration:
                        break
                    except Exception:
                        await stream.flush()  # what came before the failure goes out first
                        raise
                    n += 1
                    if chunk.finish_reason is not None:
                        finish_reason = chunk.finish_reason
                    if chunk.usage is not None:
                        usage = chunk.usage
                    data = frame(chunk, n)
                    if data is None:
                        continue
                    stream.queue_frame(data)
                    pending += 1
                    if memory is not None and room >= 0:
                        room -= len(chunk.content)
                        if room >= 0:
                            seen.append(chunk.content)
                    if plain or pending >= _MAX_BATCH:
                        # (the last plain chunk is left queued: the eager step
                        # that follows writes it before any wait)
                        wait = flush()
                        if wait is not None:
                            await wait
                        pending = 0
                await stream.flush()
                if memory is not None:
                    metadata: dict[str, Any] = {"stream_id": stream_id}
                    if room < 0:
                        metadata["truncated"] = True
                    await memory.store_reply("".join(seen), metadata)
                    memory = None
                await finish(finish_reason, usage, n)
    finally:
        # `memory` is None once the whole reply was stored.
        if memory is not None and seen:
            if stream.queued and room >= 0:  # framed, never written: the user did not see them
                del seen[-stream.queued :]
            await _store_partial(memory, seen, stream_id, stream.end_reason, room < 0)
    return stream.response or web.Response(status=499)


async def _store_partial(
    memory: _Memory, seen: list[str], sid: str, reason: str, truncated: bool
) -> None:
    """Keep what the user saw of a reply that did not finish (USERS-ASK 5)."""
    metadata: dict[str, Any] = {"partial": True, "reason": reason, "stream_id": sid}
    if truncated:
        metadata["truncated"] = True
    try:
        await memory.store_reply("".join(seen), metadata)
    except StoreUnavailable:
        log.warning("could not store the partial reply of stream %s", sid)


async def send_reply(
    request: web.Request,
    provider: Provider,
    messages: list[Message],
    memory: _Memory | None,
    *,
    model: str | None,
    options: Options,
) -> Reply:
    """The whole reply, not streamed; stored with the request when memory is attached."""
    # The client may leave while the reply is computed: stop the upstream then too.
    async with request.app[ENGINE].supervisor.watch(request):
        reply = await provider.send(messages, model=model, options=options)
    if memory is not None:
        await memory.store_request()
        await memory.store_reply(reply.content)
    return reply


async def chat_send(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await read_json(request, ChatRequest)
    provider = engine.provider(body.provider)
    memory, messages = await _attach_memory(engine, body)
    reply = await send_reply(
        request, provider, messages, memory, model=body.model, options=body.options
    )
    return json_response(reply)


async def healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return json_response({"status": "ok", "streams": len(engine.supervisor)})


# -- memory endpoints ----------------------------------------------------------


class NewMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/memory/{parent}/{id}/messages``."""

    role: Literal["system", "user", "assistant"]
    content: str
    type: Literal["text", "image", "audio"] = "text"
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    message_id: str | None = None


async def _conversation(request: web.Request) -> Conversation:
    store = await request.app[ENGINE].open_memory()
    return store.for_parent(request.match_info["parent"], request.match_info["id"])


async def memory_get(request: web.Request) -> web.Response:
    limit = request.query.get("limit")
    try:
        n = None if limit is None else int(limit)
    except ValueError:
        n = -1
    if n is not None and n < 0:
        raise InvalidFields("`limit` must be a non-negative integer")
    conversation = await _conversation(request)
    messages = await conversation.get_messages(limit=n)
    return json_response(
        {
            "parent": request.match_info["parent"],
            "id": request.match_info["id"],
            "messages": messages,
        }
    )


async def memory_post(request: web.Request) -> web.Response:
    body = await read_json(request, NewMessage)
    conversation = await _conversation(request)
    stored = await conversation.add_message(
        body.role, body.content, type=body.type, metadata=body.metadata, message_id=body.message_id
    )
    return json_response(stored, status=201)


async def memory_delete(request: web.Request) -> web.Response:
    conversation = await _conversation(request)
    removed = await conversation.clear()
    return json_response({"deleted": removed})


# -- the application -----------------------------------------------------------


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    engine = app[ENGINE]
    try:
        # Open (and create the schema of) the store at start-up; a store that is
        # down is not fatal: memory requests retry and answer 503 meanwhile.
        await engine.open_memory()
    except StoreUnavailable as exc:
        log.warning("memory store unavailable at start-up: %s", exc.message)
    yield
    await engine.aclose()


async def _on_shutdown(app: web.Application) -> None:
    await app[ENGINE].shutdown()


def create_app(config: Config | None = None, *, engine: Engine | None = None) -> web.Application:
    """The gateway as an ``aiohttp.web.Application``.

    Run it with ``web.run_app``, or mount it into another app with
    ``parent.add_subapp("/llm", create_app(config))``: its start-up, shutdown
    and clean-up run with the parent's.
    """
    if engine is None:
        engine = Engine(config)
    hosts = host_check(engine.config.allowed_hosts, engine.config.host)
    app = web.Application(middlewares=[error_middleware if hosts is None else _guarded(hosts)])
    app[ENGINE] = engine
    app.cleanup_ctx.append(_lifetime)
    app.on_shutdown.append(_on_shutdown)
    add_post = functools.partial(app.router.add_post, expect_handler=expect_handler)
    add_post("/v1/chat/stream", chat_stream_post)
    app.router.add_get("/v1/chat/stream", chat_stream_get)
    add_post("/v1/chat", chat_send)
    app.router.add_get("/v1/memory/{parent}/{id}", memory_get)
    add_post("/v1/memory/{parent}/{id}/messages", memory_post)
    app.router.add_delete("/v1/memory/{parent}/{id}", memory_delete)
    app.router.add_get("/healthz", healthz)
    from .openai_api import add_openai_routes  # here: that module imports this one

    add_openai_routes(app)  # POST /v1/chat/completions, GET /v1/models
    return app
