"""The OpenAI-compatible routes: Chat Completions and the model list.

::

    POST /v1/chat/completions   Chat Completions request -> chat.completion, or
                                text/event-stream of chat.completion.chunk + [DONE]
    GET  /v1/models             the configured models, as OpenAI's list

So any OpenAI client streams from any provider through the gateway::

    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")
    await client.chat.completions.create(model="anthropic/claude-sonnet-4-5", ...)

Routing: ``provider/model`` picks the provider (``mock/anything``,
``openai/gpt-4o``, ``anthropic/claude-...``, ``gemini/gemini-...``); a bare model
name goes to the default provider; an unknown prefix is 404 ``model_not_found``.
The request, response and error shapes are :mod:`engine.dialects.openai_chat`'s.

Memory: ``X-Session-Parent`` and ``X-Session-Id`` attach conversation memory
exactly as ``session`` does on ``/v1/chat/stream``.
"""

from __future__ import annotations

import time
import uuid

import msgspec
from aiohttp import web

from ..config import ProviderSettings
from ..dialects.openai_chat import (
    ChatCompletion,
    Choice,
    CompletionRequest,
    Model,
    ModelList,
    OpenAIFraming,
    ResponseMessage,
    check,
    error_answer,
    error_frame,
    to_messages,
    to_options,
)
from ..errors import InvalidFields, NotFound, UnknownProvider
from ..gateway import ENGINE, Engine
from ..memory.history import ChatMemory
from ..middleware import SERVER_HEADER, error_dialect, expect_handler, principal
from ..providers import PROVIDERS, ChunkStream, Provider
from ..providers.fallback import Fallback
from ..streams import EventStream
from ..streams.generation import Generation, Generations
from ..streams.relay import open_upstream, relay
from ..wire import ChatRequest, SessionRef, estimate_tokens
from ._io import json_response, read_json
from .chat import admit, send_reply, start_generation

__all__ = ["SESSION_ID_HEADER", "SESSION_PARENT_HEADER", "route", "routes"]

routes = web.RouteTableDef()

SESSION_PARENT_HEADER = "X-Session-Parent"
SESSION_ID_HEADER = "X-Session-Id"
#: The response header naming a completion stream's id, for Stop.
STREAM_ID_HEADER = "X-Stream-Id"
#: The response header naming the ``provider/model`` a fallback's reply came from.
TARGET_HEADER = "X-Model-Target"
_HEADERS = {"Server": SERVER_HEADER}


def route(engine: Engine, model: str) -> tuple[Provider, str | None, str]:
    """``(provider, model for it, prefix)`` for a request's ``model``.

    ``provider/model`` names the provider (any name or alias the engine knows,
    including providers added with ``Engine.add_provider``); a bare name goes
    to the default provider. Raises :class:`~engine.errors.NotFound` for an
    unknown prefix.
    """
    prefix, slash, name = model.partition("/")
    if not slash:
        if model in engine.config.fallbacks:
            # Its replies name the target that answered, `provider/model`.
            return engine.provider(model), None, ""
        return engine.provider(None), model or None, ""
    try:
        provider = engine.provider(prefix)
    except UnknownProvider as exc:
        raise NotFound(f"The model `{model}` does not exist: {exc.message} - at `$.model`") from exc
    return provider, name or None, prefix


def session_from_headers(request: web.Request) -> SessionRef | None:
    """The ``X-Session-Parent``/``X-Session-Id`` pair, validated like ``session``."""
    parent = request.headers.get(SESSION_PARENT_HEADER)
    sid = request.headers.get(SESSION_ID_HEADER)
    if parent is None and sid is None:
        return None
    try:
        return msgspec.convert({"parent": parent or "", "id": sid or ""}, SessionRef)
    except msgspec.ValidationError as exc:
        # Name the header, not a JSON path: these are not body fields.
        detail = str(exc).replace("`$.parent`", SESSION_PARENT_HEADER)
        detail = detail.replace("`$.id`", SESSION_ID_HEADER)
        raise InvalidFields(
            f"{SESSION_PARENT_HEADER} and {SESSION_ID_HEADER} must both be set, "
            f"printable, 1 to 200 characters: {detail}"
        ) from exc


@routes.post("/v1/chat/completions", expect_handler=expect_handler)
@error_dialect(error_answer)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = await _start_completion(request)
    return started if isinstance(started, web.StreamResponse) else await relay(*started)


async def _start_completion(
    request: web.Request,
) -> (
    web.StreamResponse
    | tuple[
        EventStream,
        ChunkStream,
        OpenAIFraming,
        ChatMemory | None,
        str,
        None,
        Generation,
        Generations,
    ]
):
    """Everything up to the upstream's acceptance: a whole response when not
    streamed (or refused after the header deadline), else what ``relay`` needs.

    A function of its own so that nothing of the request (its messages, the
    stored history) stays referenced by the handler while the stream is open.
    """
    engine = request.app[ENGINE]
    body = await read_json(request, CompletionRequest)
    check(body)
    chat = ChatRequest(
        messages=to_messages(body.messages),
        options=to_options(body),
        session=session_from_headers(request),
    )
    provider, model, prefix = route(engine, body.model)
    memory, messages, options = await admit(request, chat, provider, model)

    def shown(name: str) -> str:
        # The model as the client can name it again: with the prefix it used.
        return f"{prefix}/{name}" if prefix else name

    cid = f"chatcmpl-{uuid.uuid4().hex}{engine.stream_tag}"
    created = int(time.time())
    if not body.stream:
        reply = await send_reply(request, provider, messages, memory, model=model, options=options)
        message = ResponseMessage(
            role="assistant",
            # OpenAI's tool-call message has `"content": null`, not "".
            content=reply.content or (None if reply.tool_calls else ""),
            tool_calls=reply.tool_calls,
        )
        choice = Choice(
            message=message, finish_reason=reply.finish_reason or "stop", logprobs=reply.logprobs
        )
        completion = ChatCompletion(
            id=cid, created=created, model=shown(reply.model), choices=[choice], usage=reply.usage
        )
        target = {TARGET_HEADER: reply.model} if isinstance(provider, Fallback) else None
        return json_response(completion, headers=target)

    include_usage = body.stream_options is not None and body.stream_options.include_usage
    # No retry: and no id: fields, unlike the native stream: OpenAI sends neither,
    # and the SDK's decoder dispatches a retry-only event (or, once an id was
    # seen, a comment) as an empty event it then fails to parse as JSON.
    headers = {**_HEADERS, STREAM_ID_HEADER: cid}
    stream = EventStream(
        request,
        supervisor=engine.supervisor,
        send_timeout=engine.config.send_timeout,
        # The id POST /v1/streams/{id}/stop takes.
        headers=headers,
        error_frame=error_frame,
        scrub=engine.scrub,
    )
    # Returns once the upstream accepted: a refusal is still a JSON error
    # (after the header deadline, an error chunk on the stream).
    chunks = await open_upstream(
        stream,
        provider.open(messages, model=model, options=options),
        request=request,
        supervisor=engine.supervisor,
        deadline=engine.config.header_deadline,
    )
    if chunks is None:
        return stream.response or web.Response(status=499)
    chunks.prompt_estimate = estimate_tokens(messages)
    if isinstance(provider, Fallback) and not stream.prepared:
        headers[TARGET_HEADER] = chunks.model  # (read when the headers go out)
    framing = OpenAIFraming(cid, created, shown(chunks.model), include_usage)
    generation = start_generation(request, cid)
    return stream, chunks, framing, memory, cid, None, generation, engine.generations


@routes.get("/v1/models")
@error_dialect(error_answer)
async def list_models(request: web.Request) -> web.Response:
    """The default model of each provider with a key configured, and the mock's:
    those the request's client key may use."""
    config = request.app[ENGINE].config
    key = principal(request).key
    data = []
    for name in PROVIDERS:
        if name == "mock" or (config.providers.get(name) or ProviderSettings()).api_key:
            model = f"{name}/{config.provider_settings(name).model}"
            if key is None or key.allows_model(model):
                data.append(Model(id=model, owned_by=name))
    return json_response(ModelList(data=data))
