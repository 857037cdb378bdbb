"""The OpenAI-compatible endpoint, driven by the official ``openai`` SDK on a loopback server.

Every provider answers through the gateway (the mock directly, the real
adapters through their fake upstreams), every error status surfaces as the
SDK's matching exception class, and bad input gets OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from aiohttp import web
from openai._streaming import SSEDecoder
from openai.types.chat import ChatCompletionChunk

from engine import create_app
from engine.errors import (
    EngineError,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from engine.gateway import Engine
from engine.providers.base import ChunkStream, Provider
from engine.providers.mock import mock_text
from engine.testing import FAKES, Script, ToolCall, serve
from engine.wire import Message, Options, TextPart

from .helpers import ScriptedProvider, make_config

HI = [{"role": "user", "content": "hi"}]
ERROR_KEYS = {"message", "type", "param", "code"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
FORCE_CLOCK = {"type": "function", "function": {"name": "clock"}}  # not among the tools
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


@dataclass
class Gateway:
    sdk: openai.AsyncOpenAI
    raw: Any  # aiohttp TestClient on the same server
    engine: Engine


@pytest.fixture
async def gateway(aiohttp_server, aiohttp_client):
    clients: list[openai.AsyncOpenAI] = []

    async def start(*providers: Provider, **config: Any) -> Gateway:
        engine = Engine(make_config(**config))
        for provider in providers:
            engine.add_provider(provider)
        server = await aiohttp_server(create_app(engine=engine))
        sdk = openai.AsyncOpenAI(
            base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0
        )
        clients.append(sdk)
        return Gateway(sdk, await aiohttp_client(server), engine)

    yield start
    for sdk in clients:
        await sdk.close()


class FailingProvider(Provider):
    """Refuses every request the way an upstream would, before any chunk."""

    name = "failing"

    def __init__(self, error: BaseException) -> None:
        super().__init__(model="failing-1")
        self.error = error

    async def open(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
    ) -> ChunkStream:
        raise self.error


async def read_stream(stream) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in stream]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- the mock, stream true and false -------------------------------------------------


async def test_stream_with_the_sdk(gateway):
    gw = await gateway()
    stream = await gw.sdk.chat.completions.create(
        model="mock/anything",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=5,
    )
    chunks = await read_stream(stream)
    assert text_of(chunks) == mock_text([Message(role="user", content="hi")], 20)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].id.startswith("chatcmpl-")
    assert {c.created for c in chunks} == {chunks[0].created}
    assert {c.model for c in chunks} == {"mock/anything"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    first, *middle, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in middle)
    assert all(c.choices[0].finish_reason is None for c in [first, *middle])
    assert finish.choices[0].finish_reason == "length"  # cut by max_tokens
    assert finish.choices[0].delta.content is None
    assert usage.choices == []
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (1, 5)
    assert usage.usage.total_tokens == 6


async def test_stream_without_include_usage_has_no_usage_chunk(gateway):
    gw = await gateway()
    stream = await gw.sdk.chat.completions.create(
        model="mock/anything", messages=HI, stream=True, max_tokens=2
    )
    chunks = await read_stream(stream)
    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_non_stream_with_the_sdk(gateway):
    gw = await gateway()
    reply = await gw.sdk.chat.completions.create(model="mock/anything", messages=HI, max_tokens=5)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "mock/anything"
    (choice,) = reply.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == mock_text([Message(role="user", content="hi")], 20)
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1, 5)


async def test_a_bare_model_goes_to_the_default_provider(gateway):
    provider = ScriptedProvider(["x"])
    gw = await gateway(provider, provider="scripted")
    reply = await gw.sdk.chat.completions.create(model="my-model", messages=HI)
    assert reply.choices[0].message.content == "x"
    assert len(provider.requests) == 1


async def test_request_maps_onto_messages_and_options(gateway):
    provider = ScriptedProvider(["ok"])
    gw = await gateway(provider)
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": [{"type": "text", "text": "and kind"}]},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    await gw.sdk.chat.completions.create(
        model="scripted/x",
        messages=messages,
        temperature=0.5,
        top_p=0.9,
        max_completion_tokens=7,
        max_tokens=99,  # max_completion_tokens wins, as on OpenAI
        stop=["END"],
        user="someone",
        n=1,
        extra_body={"seed": 1, "presence_penalty": 0.1},
    )
    await gw.sdk.chat.completions.create(model="scripted/x", messages=HI, max_tokens=3, stop="S")
    (sent, options), (_, options2) = provider.requests
    # Parts stay parts (each provider maps them); their text is the parts' joined.
    assert [(m.role, m.text) for m in sent] == [
        ("system", "be brief"),
        ("system", "and kind"),
        ("user", "first"),
        ("assistant", ""),
        ("user", "a\nb"),
    ]
    assert sent[4].content == [TextPart(text="a"), TextPart(text="b")]
    assert options == Options(
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
        user="someone",
        seed=1,
        presence_penalty=0.1,
    )
    assert options2 == Options(max_tokens=3, stop="S")


async def test_tools_and_tool_choice_map_onto_options(gateway):
    provider = ScriptedProvider(["ok"])
    gw = await gateway(provider)
    await gw.sdk.chat.completions.create(
        model="scripted/x", messages=HI, tools=[WEATHER], tool_choice=FORCE_WEATHER
    )
    await gw.sdk.chat.completions.create(
        model="scripted/x", messages=HI, tools=[WEATHER], tool_choice="required", stream=True
    )
    # "none"/"auto" without tools mean nothing: dropped, not refused; [] is no tools.
    await gw.sdk.chat.completions.create(model="scripted/x", messages=HI, tool_choice="auto")
    await gw.sdk.chat.completions.create(
        model="scripted/x", messages=HI, tools=[], tool_choice="none"
    )
    options = [o for _, o in provider.requests]
    assert options == [
        Options(tools=[WEATHER], tool_choice=FORCE_WEATHER),
        Options(tools=[WEATHER], tool_choice="required"),
        Options(),
        Options(),
    ]


async def test_a_bad_tool_raises_bad_request_error(gateway):
    gw = await gateway()
    bad = {"type": "function", "function": {"description": "no name"}}
    with pytest.raises(openai.BadRequestError) as info:
        await gw.sdk.chat.completions.create(model="mock/x", messages=HI, tools=[bad])
    assert info.value.param == "tools"
    assert "`tools[0]` must have a non-empty string `function.name`" in info.value.message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (
            {"json": {"messages": HI, "options": {"tools": [{"type": "retrieval"}]}}},
            '`tools[0]` must have "type": "function"',
        ),
        (
            {"json": {"messages": HI, "options": {"tools": [WEATHER], "tool_choice": 1}}},
            "tool_choice",
        ),
        ({"json": {"messages": HI, "options": {"tool_choice": "auto"}}}, "needs `tools`"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/stream"])
async def test_a_bad_tool_on_the_native_endpoints_is_422(gateway, path, kwargs, needle):
    gw = await gateway()
    resp = await gw.raw.post(path, **kwargs)
    assert resp.status == 422
    body = await resp.json()
    assert body["type"] == "invalid_fields"
    assert needle in body["message"]


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ({"tools": "get_weather"}, "Expected `array | null`, got `str` - at `$.tools`"),
        ({"tool_choice": "auto"}, "`tool_choice` needs `tools`"),
    ],
)
async def test_tools_in_a_query_string_are_422(gateway, query, needle):
    gw = await gateway()
    resp = await gw.raw.get("/v1/chat/stream", params={"q": "hi", **query})
    assert resp.status == 422
    assert needle in (await resp.json())["message"]


async def test_models_lists_the_configured_providers(gateway):
    providers = {"anthropic": {"api_key": "k"}, "gemini": {"api_key": "k", "model": "gemini-x"}}
    gw = await gateway(providers=providers)
    page = await gw.sdk.models.list()
    assert [m.id for m in page.data] == [
        "mock/mock-1",
        "anthropic/claude-sonnet-4-5",
        "gemini/gemini-x",
    ]
    assert [m.owned_by for m in page.data] == ["mock", "anthropic", "gemini"]
    assert {m.object for m in page.data} == {"model"}
    resp = await gw.raw.get("/v1/models")
    assert (await resp.json())["object"] == "list"
    # Every listed id is a model the endpoint accepts.
    reply = await gw.sdk.chat.completions.create(model="mock/mock-1", messages=HI, max_tokens=1)
    assert reply.model == "mock/mock-1"


async def test_works_mounted_as_a_sub_app(aiohttp_server):
    parent = web.Application()
    parent.add_subapp("/llm", create_app(make_config()))
    server = await aiohttp_server(parent)
    sdk = openai.AsyncOpenAI(base_url=str(server.make_url("/llm/v1")), api_key="x", max_retries=0)
    try:
        stream = await sdk.chat.completions.create(
            model="mock/m", messages=HI, stream=True, max_tokens=2
        )
        assert text_of(await read_stream(stream)) == "You said"
        with pytest.raises(openai.NotFoundError):
            await sdk.chat.completions.create(model="nope/m", messages=HI)
    finally:
        await sdk.close()


# -- the wire: what the SDK's own decoder makes of the bytes ---------------------------


async def test_heartbeats_and_framing_suit_the_sdk_decoder(gateway):
    gate = asyncio.Event()
    provider = ScriptedProvider(["a", "b"], gate=gate)
    gw = await gateway(provider, heartbeat=0.05)
    body = {"model": "scripted/x", "messages": HI, "stream": True}
    async with gw.raw.post("/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        raw = b""
        # The provider waits on the gate: only the role chunk and comments can come.
        while raw.count(b": keepalive\n") < 2:
            raw += await resp.content.readany()
        gate.set()
        raw += await resp.read()
    # Neither `retry:` nor `id:`: the SDK's decoder would turn them into empty events.
    assert not any(line.startswith((b"retry:", b"id:", b"event:")) for line in raw.split(b"\n"))
    assert raw.endswith(b"data: [DONE]\n\n")

    async def body_bytes():
        yield raw

    events = [e async for e in SSEDecoder().aiter_bytes(body_bytes())]
    assert events[-1].data == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e.json()) for e in events[:-1]]
    assert text_of(chunks) == "ab"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_client_that_leaves_stops_the_provider(gateway):
    gate = asyncio.Event()
    provider = ScriptedProvider(["a", "b"], gate=gate)
    gw = await gateway(provider, heartbeat=0.05)
    stream = await gw.sdk.chat.completions.create(model="scripted/x", messages=HI, stream=True)
    first = await stream.__anext__()
    assert first.choices[0].delta.role == "assistant"
    await stream.close()
    await asyncio.wait_for(provider.closed.wait(), 5)
    assert provider.sent == 0


# -- errors ----------------------------------------------------------------------------


class GatewayUnauthorized(EngineError):
    """Stands in for gateway authentication, which the tree does not have yet."""

    status = 401
    type = "unauthorized"


class GatewayForbidden(EngineError):
    status = 403
    type = "forbidden"


ERRORS = [
    # error raised by the provider, SDK class, status, OpenAI type, code
    (
        UpstreamRateLimited("slow down", retry_after=7),
        openai.RateLimitError,
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
    ),
    (
        UpstreamBadRequest("upstream says no"),
        openai.BadRequestError,
        400,
        "invalid_request_error",
        "upstream_bad_request",
    ),
    # The gateway's own key is wrong: not the caller's fault, so not a 401.
    (
        UpstreamAuthError("bad key"),
        openai.InternalServerError,
        502,
        "server_error",
        "upstream_auth_error",
    ),
    (UpstreamError("broken"), openai.InternalServerError, 502, "server_error", "upstream_error"),
    (
        UpstreamUnavailable("busy"),
        openai.InternalServerError,
        503,
        "server_error",
        "upstream_unavailable",
    ),
    (UpstreamTimeout("slow"), openai.InternalServerError, 504, "server_error", "upstream_timeout"),
    (RuntimeError("a bug"), openai.InternalServerError, 500, "server_error", "engine_error"),
    (
        GatewayUnauthorized("who?"),
        openai.AuthenticationError,
        401,
        "authentication_error",
        "unauthorized",
    ),
    (GatewayForbidden("no"), openai.PermissionDeniedError, 403, "permission_error", "forbidden"),
]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("error", "cls", "status", "kind", "code"), ERRORS)
async def test_each_error_status_raises_the_sdk_class(
    gateway, stream, error, cls, status, kind, code
):
    gw = await gateway(FailingProvider(error))
    with pytest.raises(cls) as info:
        await gw.sdk.chat.completions.create(model="failing/x", messages=HI, stream=stream)
    exc = info.value
    assert exc.status_code == status
    assert exc.body == {
        "message": "internal error" if isinstance(error, RuntimeError) else str(error),
        "type": kind,
        "param": None,
        "code": code,
    }
    if isinstance(error, UpstreamRateLimited):
        assert exc.response.headers["Retry-After"] == "7"
        assert exc.response.headers["retry-after-ms"] == "7000"


async def test_a_provider_without_a_key_is_a_server_error(gateway):
    gw = await gateway()
    with pytest.raises(openai.InternalServerError) as info:
        await gw.sdk.chat.completions.create(model="openai/gpt-4o", messages=HI)
    assert info.value.status_code == 503
    assert info.value.code == "provider_not_configured"
    assert "OPENAI_API_KEY" in info.value.message


async def test_unknown_provider_prefix_is_not_found(gateway):
    gw = await gateway()
    with pytest.raises(openai.NotFoundError) as info:
        await gw.sdk.chat.completions.create(model="nope/x", messages=HI, stream=True)
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"
    assert info.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(("kwargs", "param"), [({"messages": []}, "messages"), ({"n": 2}, "n")])
async def test_bad_requests_raise_bad_request_error(gateway, kwargs, param):
    gw = await gateway()
    with pytest.raises(openai.BadRequestError) as info:
        await gw.sdk.chat.completions.create(**{"model": "mock/x", "messages": HI, **kwargs})
    assert info.value.param == param
    assert info.value.type == "invalid_request_error"


JSON = {"Content-Type": "application/json"}
GOOD = {"model": "mock/x", "messages": HI}


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"data": b'{"model": "mock/x", "messages": [', "headers": JSON}, 400, None),
        ({"data": b"", "headers": JSON}, 400, None),
        ({"data": json.dumps(GOOD), "headers": {"Content-Type": "text/plain"}}, 415, None),
        ({"json": {**GOOD, "messages": [{"role": "user", "content": "x" * 5000}]}}, 413, None),
        ({"json": {"messages": HI}}, 400, "model"),
        ({"json": {"model": "mock/x"}}, 400, "messages"),
        ({"json": {**GOOD, "messages": []}}, 400, "messages"),
        ({"json": {**GOOD, "messages": [{"role": "wizard", "content": "x"}]}}, 400, "messages"),
        (
            {
                "json": {
                    **GOOD,
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "image_url", "image_url": {"url": "x"}}],
                        }
                    ],
                }
            },
            400,
            "messages",
        ),
        (
            {
                "json": {
                    **GOOD,
                    "messages": [{"role": "tool", "content": "42", "tool_call_id": "c"}],
                }
            },
            400,
            "messages",
        ),
        ({"json": {**GOOD, "n": 2}}, 400, "n"),
        ({"json": {**GOOD, "n": 0}}, 400, "n"),
        ({"json": {**GOOD, "temperature": 5}}, 400, "temperature"),
        ({"json": {**GOOD, "temperature": "hot"}}, 400, "temperature"),
        ({"json": {**GOOD, "max_completion_tokens": 0}}, 400, "max_completion_tokens"),
        ({"json": {**GOOD, "max_tokens": 0}}, 400, "max_tokens"),
        ({"json": {**GOOD, "tools": "get_weather"}}, 400, "tools"),
        ({"json": {**GOOD, "tools": [{"type": "retrieval"}]}}, 400, "tools"),
        ({"json": {**GOOD, "tools": [{"type": "function", "function": {}}]}}, 400, "tools"),
        ({"json": {**GOOD, "tools": [WEATHER, WEATHER]}}, 400, "tools"),
        ({"json": {**GOOD, "tool_choice": "required"}}, 400, "tool_choice"),
        ({"json": {**GOOD, "tools": [WEATHER], "tool_choice": "always"}}, 400, "tool_choice"),
        (
            {"json": {**GOOD, "tools": [WEATHER], "tool_choice": {"type": "function"}}},
            400,
            "tool_choice",
        ),
        ({"json": {**GOOD, "tools": [WEATHER], "tool_choice": FORCE_CLOCK}}, 400, "tool_choice"),
        ({"json": {**GOOD, "model": "nope/x"}}, 404, "model"),
        ({"json": GOOD, "headers": {"X-Session-Parent": "ChatSession"}}, 400, None),
        (
            {"json": GOOD, "headers": {"X-Session-Parent": "P", "X-Session-Id": "x" * 201}},
            400,
            None,
        ),
    ],
)
async def test_bad_input_gets_the_openai_error_shape(gateway, kwargs, status, param):
    gw = await gateway(max_body_size=4096)
    resp = await gw.raw.post("/v1/chat/completions", **kwargs)
    assert resp.status == status
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (UpstreamUnavailable("upstream overloaded"), "upstream_unavailable", "upstream overloaded"),
        (RuntimeError("a bug"), "engine_error", "internal error"),
    ],
)
async def test_mid_stream_error_raises_api_error_during_iteration(gateway, error, code, message):
    provider = ScriptedProvider(["a", "b", "c"], fail_after=2, error=error)
    gw = await gateway(provider)
    stream = await gw.sdk.chat.completions.create(model="scripted/x", messages=HI, stream=True)
    received: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert text_of(received) == "ab"
    assert info.value.message == message
    assert info.value.body == {
        "message": message,
        "type": "server_error",
        "param": None,
        "code": code,
    }


async def test_mid_stream_error_is_an_error_chunk_then_the_end(gateway):
    provider = ScriptedProvider(["a", "b"], fail_after=1, error=UpstreamError("cut"))
    gw = await gateway(provider)
    body = {"model": "scripted/x", "messages": HI, "stream": True}
    async with gw.raw.post("/v1/chat/completions", json=body) as resp:
        raw = await resp.read()
    *_, last = raw.rstrip(b"\n").split(b"\n\n")
    assert json.loads(last.removeprefix(b"data: ")) == {
        "error": {"message": "cut", "type": "server_error", "param": None, "code": "upstream_error"}
    }
    assert b"[DONE]" not in raw


# -- memory ------------------------------------------------------------------------------

SESSION = {"X-Session-Parent": "ChatSession", "X-Session-Id": "42"}


async def stored(gw: Gateway) -> list[tuple[str, str]]:
    resp = await gw.raw.get("/v1/memory/ChatSession/42")
    assert resp.status == 200
    return [(m["role"], m["content"]) for m in (await resp.json())["messages"]]


async def test_memory_headers_store_and_replay_the_conversation(gateway):
    provider = ScriptedProvider(["Hel", "lo"])
    gw = await gateway(provider)
    stream = await gw.sdk.chat.completions.create(
        model="scripted/x", messages=HI, stream=True, extra_headers=SESSION
    )
    await read_stream(stream)
    assert await stored(gw) == [("user", "hi"), ("assistant", "Hello")]

    question = [{"role": "user", "content": "again"}]
    await gw.sdk.chat.completions.create(
        model="scripted/x", messages=question, extra_headers=SESSION
    )
    history, _ = provider.requests[1]
    assert history == [
        Message(role="user", content="hi"),
        Message(role="assistant", content="Hello"),
        Message(role="user", content="again"),
    ]
    assert await stored(gw) == [
        ("user", "hi"),
        ("assistant", "Hello"),
        ("user", "again"),
        ("assistant", "Hello"),
    ]


async def test_without_memory_headers_nothing_is_stored(gateway):
    gw = await gateway(ScriptedProvider(["x"]))
    await gw.sdk.chat.completions.create(model="scripted/x", messages=HI)
    assert await stored(gw) == []


async def test_memory_keeps_the_part_of_a_failed_stream_the_client_saw(gateway):
    provider = ScriptedProvider(["a", "b", "c"], fail_after=2, error=UpstreamError("cut"))
    gw = await gateway(provider)
    stream = await gw.sdk.chat.completions.create(
        model="scripted/x", messages=HI, stream=True, extra_headers=SESSION
    )
    with pytest.raises(openai.APIError):
        await read_stream(stream)
    resp = await gw.raw.get("/v1/memory/ChatSession/42")
    messages = (await resp.json())["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "hi"), ("assistant", "ab")]
    assert messages[1]["metadata"]["partial"] is True


# -- each real provider through its fake upstream ----------------------------------------

KEY = "sk-fake-key-0123456789"
PROVIDER_NAMES = sorted(FAKES)


@pytest.fixture
async def upstream(request, gateway):
    """A fake upstream for ``request.param`` and a gateway pointed at it."""
    name = request.param
    fake = FAKES[name]()
    async with serve(fake.app()) as url:
        base = f"{url}/v1" if name == "openai" else url
        providers = {name: {"api_key": KEY, "base_url": base, "max_retries": 0}}
        gw = await gateway(providers=providers)
        yield name, fake, gw


@pytest.mark.parametrize("upstream", PROVIDER_NAMES, indirect=True)
async def test_each_provider_streams_through_the_gateway(upstream):
    name, fake, gw = upstream
    stream = await gw.sdk.chat.completions.create(
        model=f"{name}/test-model",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = await read_stream(stream)
    assert text_of(chunks) == "Hello, world!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {f"{name}/test-model"}
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (9, 4, 13)
    (rec,) = fake.requests
    assert "test-model" in json.dumps(rec.json) + rec.path


@pytest.mark.parametrize("upstream", PROVIDER_NAMES, indirect=True)
async def test_each_provider_answers_whole_through_the_gateway(upstream):
    name, _, gw = upstream
    reply = await gw.sdk.chat.completions.create(model=f"{name}/test-model", messages=HI)
    assert reply.choices[0].message.content == "Hello, world!"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (9, 4)
    assert reply.model == f"{name}/test-model"


#: What each fake upstream must receive for ``tools=[WEATHER], tool_choice=FORCE_WEATHER``.
MAPPED_TOOLS = {
    "openai": {"tools": [WEATHER], "tool_choice": FORCE_WEATHER},
    "anthropic": {
        "tools": [
            {
                "name": "get_weather",
                "description": "The weather in a city.",
                "input_schema": WEATHER["function"]["parameters"],
            }
        ],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    },
    "gemini": {
        "tools": [{"functionDeclarations": [WEATHER["function"]]}],
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
        },
    },
}


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("upstream", PROVIDER_NAMES, indirect=True)
async def test_each_provider_receives_the_tools_in_its_format(upstream, stream):
    name, fake, gw = upstream
    reply = await gw.sdk.chat.completions.create(
        model=f"{name}/m", messages=HI, tools=[WEATHER], tool_choice=FORCE_WEATHER, stream=stream
    )
    if stream:
        await read_stream(reply)
    (rec,) = fake.requests
    expected = MAPPED_TOOLS[name]
    assert {key: rec.json.get(key) for key in expected} == expected
    assert set(rec.json) & {"tools", "tool_choice", "toolConfig"} == set(expected)


@pytest.mark.parametrize("upstream", PROVIDER_NAMES, indirect=True)
async def test_each_provider_receives_the_tools_from_the_native_endpoint(upstream):
    name, fake, gw = upstream
    options = {"tools": [WEATHER], "tool_choice": FORCE_WEATHER}
    resp = await gw.raw.post(
        "/v1/chat", json={"provider": name, "messages": HI, "options": options}
    )
    assert resp.status == 200
    (rec,) = fake.requests
    expected = MAPPED_TOOLS[name]
    assert {key: rec.json.get(key) for key in expected} == expected


@pytest.mark.parametrize("upstream", PROVIDER_NAMES, indirect=True)
async def test_each_provider_tool_calls_reach_the_sdk(upstream):
    name, fake, gw = upstream
    fake.push(
        Script(tokens=["Checking."], tool_call=ToolCall(name="get_weather"), finish="tool_calls"),
        Script(tokens=["Checking."], tool_call=ToolCall(name="get_weather"), finish="tool_calls"),
    )
    stream = await gw.sdk.chat.completions.create(
        model=f"{name}/m", messages=HI, tools=[WEATHER], stream=True
    )
    chunks = await read_stream(stream)
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in calls if c.function and c.function.name] == ["get_weather"]
    arguments = "".join(c.function.arguments or "" for c in calls if c.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    reply = await gw.sdk.chat.completions.create(model=f"{name}/m", messages=HI, tools=[WEATHER])
    (call,) = reply.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert reply.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("script", "cls", "status"),
    [
        (Script(status=429, retry_after="30"), openai.RateLimitError, 429),
        (Script(status=401), openai.InternalServerError, 502),
        (Script(status=400), openai.BadRequestError, 400),
        (Script(status=500), openai.InternalServerError, 502),
    ],
)
@pytest.mark.parametrize("upstream", PROVIDER_NAMES, indirect=True)
async def test_each_provider_upstream_error_raises_the_sdk_class(
    upstream, script, cls, status, stream
):
    name, fake, gw = upstream
    fake.push(script)
    with pytest.raises(cls) as info:
        await gw.sdk.chat.completions.create(model=f"{name}/m", messages=HI, stream=stream)
    assert info.value.status_code == status
    assert KEY not in info.value.message
    if status == 429:
        assert info.value.response.headers["Retry-After"] == "30"


@pytest.mark.parametrize("upstream", PROVIDER_NAMES, indirect=True)
async def test_each_provider_mid_stream_error_raises_during_iteration(upstream):
    name, fake, gw = upstream
    fake.push(Script(error_after=2))
    stream = await gw.sdk.chat.completions.create(model=f"{name}/m", messages=HI, stream=True)
    received: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert text_of(received) == "Hello,"
    assert info.value.body["type"] == "server_error"
    assert "overloaded" in info.value.message
