"""The Anthropic-compatible routes: Messages and its token count.

::

    POST /v1/messages                Messages request -> message object, or
                                     text/event-stream of Anthropic's events
    POST /v1/messages/count_tokens   -> {"input_tokens": N}, an estimate

So any Anthropic client streams from any provider through the gateway::

    client = anthropic.AsyncAnthropic(base_url="http://127.0.0.1:8080", api_key="unused")
    await client.messages.create(model="openai/gpt-4o", max_tokens=1024, messages=[...])

Routing is ``/v1/chat/completions``' (:func:`engine.api.openai.route`):
``provider/model`` picks the provider, a bare name goes to the default one, an
unknown prefix is 404 ``not_found_error``. The request, response and error
shapes are :mod:`engine.dialects.anthropic_messages`'.

Headers: ``x-api-key``, ``anthropic-version`` and ``anthropic-beta`` are
accepted and not checked (the gateway's keys are its own business: another
issue). ``X-Session-Parent``/``X-Session-Id`` attach conversation memory as on
the other routes; a streamed reply's ``X-Stream-Id`` (its message id) is what
``POST /v1/streams/{id}/stop`` takes, after which the stream ends normally
with ``stop_reason: "end_turn"``.
"""

from __future__ import annotations

from aiohttp import web

from ..dialects.anthropic_messages import (
    AnthropicFraming,
    CountTokensRequest,
    MessagesRequest,
    TokenCount,
    check,
    error_answer,
    error_frame,
    estimate_tokens,
    message_id,
    prompt_options,
    reply_message,
    to_messages,
    to_options,
)
from ..gateway import ENGINE
from ..memory.history import ChatMemory
from ..middleware import SERVER_HEADER, error_dialect, expect_handler
from ..providers import ChunkStream
from ..streams import EventStream
from ..streams.generation import Generation, Generations
from ..streams.relay import open_upstream, relay
from ..wire import ChatRequest
from ._io import json_response, read_json
from .chat import admit, attach_memory, send_reply, start_generation
from .openai import STREAM_ID_HEADER, route, session_from_headers

__all__ = ["routes"]

routes = web.RouteTableDef()

_HEADERS = {"Server": SERVER_HEADER}

# What relay takes (see its parameters).
_Opened = tuple[
    EventStream,
    ChunkStream,
    AnthropicFraming,
    ChatMemory | None,
    str,
    None,
    Generation,
    Generations,
]


@routes.post("/v1/messages", expect_handler=expect_handler)
@error_dialect(error_answer)
async def create_message(request: web.Request) -> web.StreamResponse:
    started = await _start_message(request)
    return started if isinstance(started, web.StreamResponse) else await relay(*started)


async def _start_message(request: web.Request) -> web.StreamResponse | _Opened:
    """Everything up to the upstream's acceptance: a whole response when not
    streamed (or refused after the header deadline), else what ``relay`` needs.

    A function of its own so that nothing of the request (its messages, the
    stored history) stays referenced by the handler while the stream is open.
    """
    engine = request.app[ENGINE]
    body = await read_json(request, MessagesRequest)
    check(body)
    chat = ChatRequest(
        messages=to_messages(body),
        options=to_options(body),
        session=session_from_headers(request),
    )
    provider, model, prefix = route(engine, body.model)
    memory, messages, options = await admit(request, chat, provider, model)

    def shown(name: str) -> str:
        # The model as the client can name it again: with the prefix it used.
        return f"{prefix}/{name}" if prefix else name

    mid = message_id() + engine.stream_tag
    if not body.stream:
        reply = await send_reply(request, provider, messages, memory, model=model, options=options)
        return json_response(reply_message(mid, shown(reply.model), reply))

    # No retry: nor id: fields: Anthropic sends neither.
    stream = EventStream(
        request,
        supervisor=engine.supervisor,
        send_timeout=engine.config.send_timeout,
        # The id POST /v1/streams/{id}/stop takes.
        headers={**_HEADERS, STREAM_ID_HEADER: mid},
        error_frame=error_frame,
        scrub=engine.scrub,
    )
    # Returns once the upstream accepted: a refusal is still a JSON error
    # (after the header deadline, an error event on the stream).
    chunks = await open_upstream(
        stream,
        provider.open(messages, model=model, options=options),
        request=request,
        supervisor=engine.supervisor,
        deadline=engine.config.header_deadline,
    )
    if chunks is None:
        return stream.response or web.Response(status=499)
    chunks.prompt_estimate = estimate_tokens(messages, chat.options)  # (an estimated usage)
    framing = AnthropicFraming(mid, shown(chunks.model))
    generation = start_generation(request, mid)
    return stream, chunks, framing, memory, mid, None, generation, engine.generations


@routes.post("/v1/messages/count_tokens", expect_handler=expect_handler)
@error_dialect(error_answer)
async def count_tokens(request: web.Request) -> web.Response:
    """``{"input_tokens": N}``: an estimate, not the provider's count.

    No provider is asked (none of the engine's adapters has a count endpoint):
    the request is validated and routed as ``/v1/messages`` would (a bad field
    is 400, an unknown model prefix 404), then counted by
    :func:`~engine.dialects.anthropic_messages.estimate_tokens`, about a token
    per four characters plus fixed costs per image, message and tool set.
    With memory headers the stored history is counted too, as it would be sent.
    """
    engine = request.app[ENGINE]
    body = await read_json(request, CountTokensRequest)
    check(body)
    chat = ChatRequest(
        messages=to_messages(body),
        options=prompt_options(body),
        session=session_from_headers(request),
    )
    route(engine, body.model)
    _, messages = await attach_memory(request, chat)
    return json_response(TokenCount(input_tokens=estimate_tokens(messages, chat.options)))
