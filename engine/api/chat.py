"""The native chat routes and the health probe.

::

    POST /v1/chat/stream     JSON ChatRequest  -> text/event-stream
    GET  /v1/chat/stream     ?q=&provider=&model=&parent=&parent_id=&<options>  (EventSource)
    POST /v1/chat            JSON ChatRequest  -> JSON Reply
    GET  /healthz            {"status": "ok", "streams": N}
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable

from aiohttp import web

from ..dialects.native import NativeFraming, chat_request_from_query
from ..errors import InvalidFields
from ..gateway import ENGINE, Engine
from ..memory.history import ChatMemory, attach
from ..middleware import SERVER_HEADER, expect_handler
from ..providers import ChunkStream, Provider
from ..streams import EventStream
from ..streams.generation import Generation, Generations, outlive_client
from ..streams.log import StreamLog
from ..streams.relay import open_upstream, relay
from ..wire import ChatRequest, Message, Options, Reply, check_tool_results, estimate_tokens
from ._io import json_response, read_json
from .streams import LAST_EVENT_ID, resume

__all__ = ["attach_memory", "routes", "send_reply"]

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
    engine: Engine, body: ChatRequest
) -> tuple[ChatMemory | None, list[Message]]:
    """The request's memory, if it names a conversation, and the messages for upstream."""
    store = await engine.open_memory() if body.session is not None else None
    memory, messages = await attach(store, engine.config, body)
    try:
        # With the stored history first: a tool result may answer a call made there.
        check_tool_results(messages, first=len(messages) - len(body.messages))
    except ValueError as exc:
        raise InvalidFields(str(exc)) from None
    return memory, messages


@routes.post("/v1/chat/stream", expect_handler=expect_handler)
async def chat_stream_post(request: web.Request) -> web.StreamResponse:
    if LAST_EVENT_ID in request.headers:
        # fetch-event-source re-POSTs the same body to reconnect: resume, never
        # a second generation of the same prompt.
        return await resume(request, None)
    body = await read_json(request, ChatRequest)
    opened = await _open_stream(request, body)
    return opened if isinstance(opened, web.StreamResponse) else await _run(request, opened, body)


@routes.get("/v1/chat/stream")
async def chat_stream_get(request: web.Request) -> web.StreamResponse:
    if LAST_EVENT_ID in request.headers:
        # A browser's EventSource reconnects to the same URL with Last-Event-ID.
        return await resume(request, None)
    body = chat_request_from_query(request.query)
    opened = await _open_stream(request, body)
    return opened if isinstance(opened, web.StreamResponse) else await _run(request, opened, body)


def _run(request: web.Request, opened: _Opened, body: ChatRequest) -> Awaitable[web.StreamResponse]:
    """The relay, in this task or (``options.detach``) in one of the engine's.

    A plain function returning the awaitable: the handler awaits it itself, so an
    open stream holds no coroutine frame more (benchmarks/NOTES.md, Change 9).
    """
    window = _detach_window(request.app[ENGINE], body)
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
    memory, messages = await attach_memory(engine, body)
    stream = engine.sse(request, Server=SERVER_HEADER)
    chunks = await open_upstream(
        stream,
        provider.open(messages, model=body.model, options=body.options),
        request=request,
        supervisor=engine.supervisor,
        deadline=engine.config.header_deadline,
    )
    if chunks is None:
        return stream.response or web.Response(status=499)
    chunks.prompt_estimate = estimate_tokens(messages)
    del messages
    sid = uuid.uuid4().hex
    log = engine.registry.open(sid) if engine.registry is not None else None
    framing = NativeFraming(sid, provider.name, chunks.model)
    generation = engine.generations.start(sid, stream)
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
    # The client may leave while the reply is computed: stop the upstream then too.
    async with request.app[ENGINE].supervisor.watch(request):
        reply = await provider.send(messages, model=model, options=options)
    if memory is not None:
        await memory.store_request()
        await memory.store_reply(reply.content, tool_calls=reply.tool_calls)
    return reply


@routes.post("/v1/chat", expect_handler=expect_handler)
async def chat_send(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await read_json(request, ChatRequest)
    provider = engine.provider(body.provider)
    memory, messages = await attach_memory(engine, body)
    reply = await send_reply(
        request, provider, messages, memory, model=body.model, options=body.options
    )
    return json_response(reply)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return json_response({"status": "ok", "streams": len(engine.supervisor)})
