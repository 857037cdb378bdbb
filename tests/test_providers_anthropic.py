"""Anthropic specifics: headers, system and max_tokens, events, tool use, stop reasons."""

from __future__ import annotations

import json

import aiohttp
import pytest

from engine.config import ProviderSettings
from engine.errors import UpstreamError, UpstreamRateLimited, UpstreamUnavailable
from engine.providers.anthropic import ANTHROPIC_VERSION, AnthropicProvider, _Parser
from engine.sse import ServerSentEvent
from engine.testing import FakeAnthropic, Script, ToolCall, serve
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

KEY = "sk-ant-test"
MESSAGES = [
    Message(role="system", content="Be brief."),
    Message(role="system", content="Use French."),
    Message(role="user", content="Hi"),
]


@pytest.fixture
async def env():
    fake = FakeAnthropic()
    async with serve(fake.app()) as url, aiohttp.ClientSession() as session:
        settings = ProviderSettings(
            api_key=KEY, base_url=url, model="claude-test", default_max_tokens=321
        )
        yield fake, AnthropicProvider(settings, session=session)


async def test_stream_request_headers_and_body(env):
    fake, provider = env
    [c async for c in provider.stream(MESSAGES)]
    (rec,) = fake.requests
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == KEY
    assert rec.headers["anthropic-version"] == ANTHROPIC_VERSION == "2023-06-01"
    assert "Authorization" not in rec.headers
    assert rec.json == {
        "model": "claude-test",
        "max_tokens": 321,  # always sent: the default when the request has none
        "messages": [{"role": "user", "content": "Hi"}],
        "system": "Be brief.\n\nUse French.",
        "stream": True,
    }


async def test_options_are_renamed(env):
    fake, provider = env
    options = Options(max_tokens=10, temperature=0.2, top_p=0.5, stop="STOP", token_size=4)
    await provider.send(MESSAGES[2:], options=options)
    (rec,) = fake.requests
    assert rec.json == {
        "model": "claude-test",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.2,
        "top_p": 0.5,
        "stop_sequences": ["STOP"],
    }


@pytest.mark.parametrize(("finish", "expected"), [("stop", "stop"), ("length", "length")])
async def test_stop_reasons_are_mapped(env, finish, expected):
    fake, provider = env
    fake.default = Script(tokens=["a"], finish=finish)
    chunks = [c async for c in provider.stream(MESSAGES)]
    assert chunks[-1].finish_reason == expected
    assert (await provider.send(MESSAGES)).finish_reason == expected


async def test_tool_use_blocks_are_carried_as_tool_call_deltas(env):
    fake, provider = env
    call = ToolCall(name="lookup", arguments=['{"q": ', '"x"}'], id="toolu_01")
    fake.default = Script(tokens=["Checking."], tool_call=call, finish="tool_calls")
    chunks = [c async for c in provider.stream(MESSAGES)]
    deltas = [t for c in chunks if c.tool_calls for t in c.tool_calls]
    assert deltas[0] == {
        "index": 1,
        "id": "toolu_01",
        "type": "function",
        "function": {"name": "lookup", "arguments": ""},
    }
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"q": "x"}'
    assert chunks[-1].finish_reason == "tool_calls"
    reply = await provider.send(MESSAGES)
    assert reply.content == "Checking."
    assert reply.tool_calls is not None
    assert json.loads(reply.tool_calls[0]["function"]["arguments"]) == {"q": "x"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None),
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "clock"}}, {"type": "tool", "name": "clock"}),
    ],
)
async def test_tools_and_tool_choice_are_mapped(env, choice, expected):
    fake, provider = env
    options = Options(tools=[WEATHER, CLOCK], tool_choice=choice)
    [c async for c in provider.stream(MESSAGES, options=options)]
    await provider.send(MESSAGES, options=options)
    for rec in fake.requests:
        assert rec.json["tools"] == [
            {
                "name": "get_weather",
                "description": "The weather in a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
            # input_schema is required: an empty object schema when there is none.
            {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
        ]
        assert rec.json.get("tool_choice") == expected


def _events(*pairs: tuple[str, dict]) -> list[ServerSentEvent]:
    return [ServerSentEvent(data=json.dumps(d), event=e) for e, d in pairs]


def test_parser_usage_counts_cache_tokens_and_ignores_unknown_events():
    parser = _Parser("m")
    start = {
        "type": "message_start",
        "message": {
            "model": "claude-x",
            "usage": {
                "input_tokens": 5,
                "cache_read_input_tokens": 2,
                "cache_creation_input_tokens": 1,
                "output_tokens": 1,
            },
        },
    }
    events = _events(
        ("message_start", start),
        ("future_event", {"type": "future_event"}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "t"}}),
        ("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
        ("message_stop", {"type": "message_stop"}),
    )
    out = [parser.event(e) for e in events]
    assert out[:-1] == [None] * 5
    last = out[-1]
    assert last is not None and parser.done
    assert last.model == "claude-x"
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (8, 4)


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("overloaded_error", UpstreamUnavailable),
        ("rate_limit_error", UpstreamRateLimited),
        ("api_error", UpstreamError),
    ],
)
def test_error_events_raise(kind, cls):
    (event,) = _events(("error", {"type": "error", "error": {"type": kind, "message": "boom"}}))
    with pytest.raises(cls) as info:
        _Parser("m").event(event)
    assert type(info.value) is cls
    assert "boom" in info.value.message


def test_stream_ending_before_message_stop_is_an_error():
    with pytest.raises(UpstreamError, match="message_stop"):
        _Parser("m").end()
