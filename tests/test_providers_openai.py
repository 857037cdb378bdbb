"""OpenAI specifics: the request on the wire, tool-call deltas, finish reasons."""

from __future__ import annotations

import json

import aiohttp
import pytest

from engine.config import ProviderSettings
from engine.errors import InvalidFields, UpstreamError
from engine.providers.openai import OpenAIProvider
from engine.testing import FakeOpenAI, Script, ToolCall, serve
from engine.wire import Message, Options

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK = {"type": "function", "function": {"name": "clock"}}  # no description, no parameters

KEY = "sk-openai-test"
MESSAGES = [
    Message(role="system", content="Be brief."),
    Message(role="user", content="Hi"),
    Message(role="assistant", content="Hello"),
    Message(role="user", content="Weather?"),
]


@pytest.fixture
async def env():
    fake = FakeOpenAI()
    async with serve(fake.app()) as url, aiohttp.ClientSession() as session:
        settings = ProviderSettings(
            api_key=KEY, base_url=f"{url}/v1", model="gpt-test", organization="org-42"
        )
        yield fake, OpenAIProvider(settings, session=session)


async def test_stream_request_headers_and_body(env):
    fake, provider = env
    options = Options(
        max_tokens=50, temperature=0.5, top_p=0.9, stop=["END"], interval_ms=5, max_history=3
    )
    [c async for c in provider.stream(MESSAGES, model="gpt-other", options=options)]
    (rec,) = fake.requests
    assert rec.method == "POST"
    assert rec.path == "/v1/chat/completions"
    assert rec.headers["Authorization"] == f"Bearer {KEY}"
    assert rec.headers["OpenAI-Organization"] == "org-42"
    assert rec.headers["Content-Type"] == "application/json"
    assert rec.json == {
        "model": "gpt-other",
        "messages": [{"role": m.role, "content": m.content} for m in MESSAGES],
        "max_completion_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_send_request_body_has_no_stream_fields(env):
    fake, provider = env
    await provider.send(MESSAGES, stop="X")
    (rec,) = fake.requests
    assert rec.json == {
        "model": "gpt-test",
        "messages": [{"role": m.role, "content": m.content} for m in MESSAGES],
        "stop": "X",
    }


async def test_tool_call_deltas_are_carried_not_dropped(env):
    fake, provider = env
    call = ToolCall(name="get_weather", arguments=['{"city"', ': "Paris"}'])
    fake.default = Script(tokens=["Let me check."], tool_call=call, finish="tool_calls")
    chunks = [c async for c in provider.stream(MESSAGES)]
    deltas = [t for c in chunks if c.tool_calls for t in c.tool_calls]
    assert deltas[0] == {
        "index": 0,
        "id": "call_0001",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"city": "Paris"}'
    assert chunks[-1].finish_reason == "tool_calls"
    reply = await provider.send(MESSAGES)
    assert reply.tool_calls is not None
    assert json.loads(reply.tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert reply.finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "choice", ["auto", "none", "required", {"type": "function", "function": {"name": "clock"}}]
)
async def test_tools_and_tool_choice_are_passed_as_they_are(env, choice):
    fake, provider = env
    options = Options(tools=[WEATHER, CLOCK], tool_choice=choice)
    [c async for c in provider.stream(MESSAGES, options=options)]
    await provider.send(MESSAGES, options=options)
    for rec in fake.requests:
        assert rec.json["tools"] == [WEATHER, CLOCK]
        assert rec.json["tool_choice"] == choice


async def test_tools_without_tool_choice_send_no_tool_choice(env):
    fake, provider = env
    await provider.send(MESSAGES, tools=[CLOCK])
    (rec,) = fake.requests
    assert rec.json["tools"] == [CLOCK]
    assert "tool_choice" not in rec.json


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"tools": [{"type": "retrieval"}]}, r'`tools\[0\]` must have "type": "function"'),
        ({"tools": [{"type": "function", "function": {}}]}, "function.name"),
        ({"tools": [CLOCK, CLOCK]}, "repeats the function name 'clock'"),
        ({"tools": [{**CLOCK, "function": {"name": "c", "parameters": "x"}}]}, "parameters"),
        ({"tools": "clock"}, "Expected `array"),
        ({"tools": [CLOCK], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [CLOCK], "tool_choice": {"type": "function"}}, "tool_choice"),
        ({"tools": [CLOCK], "tool_choice": {"function": {"name": "clock"}}}, "tool_choice"),
        ({"tools": [CLOCK], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "'x'"),
        ({"tool_choice": "auto"}, "`tool_choice` needs `tools`"),
    ],
)
async def test_a_bad_tool_is_invalid_fields_and_nothing_is_sent(env, extra, match):
    fake, provider = env
    with pytest.raises(InvalidFields, match=match) as info:
        await provider.send(MESSAGES, **extra)
    assert info.value.status == 422
    assert fake.requests == []


async def test_upstream_model_name_is_reported(env):
    fake, provider = env
    fake.default = Script(tokens=["a"], model="gpt-4o-mini-2024-07-18")
    chunks = [c async for c in provider.stream(MESSAGES)]
    assert {c.model for c in chunks} == {"gpt-4o-mini-2024-07-18"}


async def test_usage_is_on_the_last_chunk_even_though_it_comes_after_finish(env):
    fake, provider = env
    fake.default = Script(tokens=["a", "b"], prompt_tokens=3, completion_tokens=7)
    chunks = [c async for c in provider.stream(MESSAGES)]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.total_tokens) == (3, 10)


async def test_malformed_json_event_is_an_upstream_error():
    from engine.providers.openai import _Parser
    from engine.sse import ServerSentEvent

    with pytest.raises(UpstreamError, match="malformed JSON"):
        _Parser("m").event(ServerSentEvent(data="{not json"))


async def test_stream_without_done_but_with_finish_is_accepted():
    from engine.providers.openai import _Parser
    from engine.sse import ServerSentEvent

    parser = _Parser("m")
    data = '{"model":"m","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}'
    assert parser.event(ServerSentEvent(data=data)) is None
    last = parser.end()
    assert last is not None and (last.content, last.finish_reason) == ("x", "stop")
