"""The native chat routes and the health probe.

::

    POST /v1/chat/stream     JSON ChatRequest  -> text/event-stream
    GET  /v1/chat/stream     ?q=&provider=&model=&parent=&parent_id=&<options>  (EventSource)
    POST /v1/chat            JSON ChatRequest  -> JSON Reply
    GET  /healthz            {"status": "ok", "streams": N}
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable

import msgspec
from aiohttp import web

from ..auth import memory_parent
from ..dialects.native import NativeFraming, chat_request_from_query
from ..errors import Forbidden, InvalidFields
from ..gateway import ENGINE, Engine
from ..memory.history import ChatMemory, attach
from ..middleware import (
    ADMISSION,
    HISTORY,
    SERVER_HEADER,
    add_headers,
    expect_handler,
    principal,
    public,
    query_token,
)
from ..providers import ChunkStream, Provider
from ..providers.fallback import Fallback
from ..streams import EventStream
from ..streams.generation import Generation, Generations, outlive_client
from ..streams.log import StreamLog
from ..streams.relay import open_upstream, relay
from ..wire import (
    ChatRequest,
    Message,
    Options,
    Reply,
    SessionRef,
    check_tool_results,
    estimate_tokens,
)
from ._io import json_response, read_json
from .streams import LAST_EVENT_ID, resume

__all__ = ["admit", "attach_memory", "model_path", "routes", "send_reply", "start_generation"]

routes = web.RouteTableDef()


# What a native stream's relay takes (see relay's parameters).
_Opened = tuple[
    EventStream,
    ChunkStream,
    NativeFraming,
    ChatMemory | None,
    str,
    StreamLog | None,
    Generation,
    Generations,
]


async def attach_memory(
    request: web.Request, body: ChatRequest
) -> tuple[ChatMemory | None, list[Message]]:
    """The request's memory, if it names a conversation, and the messages for upstream.

    The conversation is the request's key's own (:func:`~engine.auth.memory_parent`).
    """
    engine = request.app[ENGINE]
    session = body.session
    if session is not None:
        parent = memory_parent(principal(request), session.parent)
        if parent is not session.parent:
            body = msgspec.structs.replace(body, session=SessionRef(parent=parent, id=session.id))
    store = await engine.open_memory() if body.session is not None else None
    memory, messages = await attach(store, engine.config, body)
    first = len(messages) - len(body.messages)
    if first:
        request[HISTORY] = first  # (a provider's refusal is renumbered by it)
    try:
        # With the stored history first: a tool result may answer a call made there.
        check_tool_results(messages, first=first)
    except ValueError as exc:
        raise InvalidFields(str(exc)) from None
    return memory, messages


def model_path(provider: Provider, model: str | None) -> str:
    """What a key's ``models`` patterns are matched against: ``provider/model``,
    or a fallback's name (the targets it tries are the operator's choice)."""
    if isinstance(provider, Fallback):
        return provider.name
    return f"{provider.name}/{model or provider.default_model}"


async def admit(
    request: web.Request, body: ChatRequest, provider: Provider, model: str | None
) -> tuple[ChatMemory | None, list[Message], Options]:
    """Everything a generation needs before its upstream request, every route alike.

    The key may use the model (403), the memory is its own and the history
    loaded, and its share of the limits taken (429, or 503 at the gateway's
    stream cap), leaving the rate-limit headers for the response. Returns the
    memory, the messages for upstream and the options: a key with a token
    limit gives a request with no bound on its output (no ``max_tokens``; the
    mock is always bounded) the provider's ``default_max_tokens``, so what it
    reserved bounds what it may use.

    The share is :data:`ADMISSION` until :func:`start_generation` hands it to
    the generation (released when that ends, detached or not); the middleware
    releases one no generation took (a refusal, a reply not streamed).
    """
    engine = request.app[ENGINE]
    who = principal(request)
    key = who.key
    path = model_path(provider, model)
    if key is not None and not key.allows_model(path):
        raise Forbidden(f"this key may not use the model `{path}`")
    memory, messages = await attach_memory(request, body)
    options = body.options
    if key is None and not engine.config.max_streams:
        return memory, messages, options
    limit = provider.output_limit(options)
    if limit is None and key is not None and (key.tpm or key.budget_tokens):
        limit = engine.config.provider_settings(provider.name).default_max_tokens
        options = msgspec.structs.replace(options, max_tokens=limit)
    reserve = estimate_tokens(messages) + (limit or 0)
    admission = await engine.gate.admit(who, path, reserve, len(engine.generations))
    if admission is not None:
        request[ADMISSION] = admission
        if admission.headers:
            add_headers(request, admission.headers)
    return memory, messages, options


def start_generation(
    request: web.Request, stream_id: str, stream: EventStream | None = None
) -> Generation:
    """Register the request's generation, which takes over its share of the limits."""
    lease = request.pop(ADMISSION, None)
    who = principal(request)
    alias = who.key.alias if who.key is not None else None
    return request.app[ENGINE].generations.start(stream_id, stream, lease, who.owner, alias)


@routes.post("/v1/chat/stream", expect_handler=expect_handler)
async def chat_stream_post(request: web.Request) -> web.StreamResponse:
    if LAST_EVENT_ID in request.headers:
        # fetch-event-source re-POSTs the same body to reconnect: resume, never
        # a second generation of the same prompt.
        return await resume(request, None)
    body = await read_json(request, ChatRequest)
    window = _detach_window(request.app[ENGINE], body)
    opened = await _open_stream(request, body)
    del body  # (the request is parsed: an open stream need not hold it, see _run)
    if isinstance(opened, web.StreamResponse):
        return opened
    relaying = _run(request, opened, window)
    del opened  # (the relay's arguments, now its own)
    return await relaying


@routes.get("/v1/chat/stream")
@query_token
async def chat_stream_get(request: web.Request) -> web.StreamResponse:
    if LAST_EVENT_ID in request.headers:
        # A browser's EventSource reconnects to the same URL with Last-Event-ID.
        return await resume(request, None)
    body = chat_request_from_query(request.query)
    window = _detach_window(request.app[ENGINE], body)
    opened = await _open_stream(request, body)
    del body
    if isinstance(opened, web.StreamResponse):
        return opened
    relaying = _run(request, opened, window)
    del opened
    return await relaying


def _run(
    request: web.Request, opened: _Opened, window: float | None
) -> Awaitable[web.StreamResponse]:
    """The relay, in this task or (a detach ``window``) in one of the engine's.

    A plain function returning the awaitable: the handler awaits it itself, so an
    open stream holds no coroutine frame more (benchmarks/NOTES.md, Change 9).
    The handler drops the parsed request before: held in its frame for the
    stream's life, it cost every idle stream about 420 bytes (Change 11); and
    ``opened`` once this returned (the tuple of eight, 104 bytes, Change 12).
    """
    return _detached(request, opened, window) if window else relay(*opened)


def _detach_window(engine: Engine, body: ChatRequest) -> float | None:
    """Seconds the generation may outlive its readers (the request's, else the server's
    default, capped by ``max_detach``), or None for a stream kept for no resume."""
    if engine.registry is None:
        return None
    asked = body.options.detach
    return min(engine.config.detach if asked is None else asked, engine.config.max_detach)


async def _detached(request: web.Request, opened: _Opened, window: float) -> web.StreamResponse:
    """Relay in a task the engine owns, so the generation can outlive this handler.

    Only streams that asked to (``options.detach``): a task and a shield per
    stream cost set-up time and about 4 KiB per idle stream (benchmarks/NOTES.md),
    so the others keep the single-task path. aiohttp cancels a handler whose
    client left (``serve`` runs it that way); here that cancels only the wait
    below. The stream detaches instead of cancelling its producer, which goes on
    into the log while anyone follows it (a resumed reader), and ``window``
    seconds more.
    """
    engine = request.app[ENGINE]
    stream, generation, log = opened[0], opened[6], opened[5]
    assert log is not None
    outlive_client(generation, lambda: log.readers, window, engine.spawn)
    task = engine.spawn(relay(*opened))
    stream.set_owner(task)  # the server stopping still ends it
    generation.set_task(task)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if task.cancelled() and current is not None and not current.cancelling():
            # The generation was abandoned (nobody left to read it), not this handler.
            return stream.response or web.Response(status=499)
        # aiohttp cancels a handler when its client's connection is lost: say so
        # now rather than at the supervisor's next tick (the upstream of a stream
        # nobody follows is then closed at once, as on the single-task path).
        stream.client_lost()
        raise


async def _open_stream(request: web.Request, body: ChatRequest) -> _Opened | web.StreamResponse:
    """Everything before the first byte of a native stream: memory, the upstream
    request (a refusal is still a JSON error, see ``open_upstream``), the
    framing. Returns ``relay``'s arguments, so the handler awaits ``relay``
    itself and an open stream holds one coroutine frame less (and none of the
    request's messages); or the finished response, when the upstream refused
    after the header deadline."""
    engine = request.app[ENGINE]
    provider = engine.provider(body.provider)
    memory, messages, options = await admit(request, body, provider, body.model)
    stream = engine.sse(request, Server=SERVER_HEADER)
    chunks = await open_upstream(
        stream,
        provider.open(messages, model=body.model, options=options),
        request=request,
        supervisor=engine.supervisor,
        deadline=engine.config.header_deadline,
    )
    if chunks is None:
        return stream.response or web.Response(status=499)
    chunks.prompt_estimate = estimate_tokens(messages)
    del messages
    sid = uuid.uuid4().hex + engine.stream_tag
    owner = principal(request).owner
    log = engine.registry.open(sid, owner) if engine.registry is not None else None
    framing = NativeFraming(sid, provider.name, chunks.model)
    generation = start_generation(request, sid, stream)
    return stream, chunks, framing, memory, sid, log, generation, engine.generations


async def send_reply(
    request: web.Request,
    provider: Provider,
    messages: list[Message],
    memory: ChatMemory | None,
    *,
    model: str | None,
    options: Options,
) -> Reply:
    """The whole reply, not streamed; stored with the request when memory is attached."""
    engine = request.app[ENGINE]
    started = time.monotonic()
    # The client may leave while the reply is computed: stop the upstream then too.
    async with engine.supervisor.watch(request):
        reply = await provider.send(messages, model=model, options=options)
    name, slash, answered = reply.model.partition("/")
    if not (slash and isinstance(provider, Fallback)):
        name, answered = provider.name, reply.model  # (a fallback's reply names its target)
    engine.telemetry.reply_ended(name, answered, time.monotonic() - started, reply.usage)
    admission = request.get(ADMISSION)
    if admission is not None:
        admission.release(reply.usage.total_tokens if reply.usage else estimate_tokens(messages))
    if memory is not None:
        await memory.store_request()
        await memory.store_reply(reply.content, tool_calls=reply.tool_calls)
    return reply


@routes.post("/v1/chat", expect_handler=expect_handler)
async def chat_send(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await read_json(request, ChatRequest)
    provider = engine.provider(body.provider)
    memory, messages, options = await admit(request, body, provider, body.model)
    reply = await send_reply(request, provider, messages, memory, model=body.model, options=options)
    return json_response(reply)


@routes.get("/healthz")
@public
async def healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    if engine.siblings is not None:  # (which worker of `serve --workers N` answered)
        return json_response(
            {"status": "ok", "streams": len(engine.supervisor), "worker": engine.siblings.slot}
        )
    return json_response({"status": "ok", "streams": len(engine.supervisor)})
