"""Gemini specifics: URL, key header, roles, systemInstruction, finish reasons, usage."""

from __future__ import annotations

import json

import aiohttp
import pytest

from engine.config import ProviderSettings
from engine.errors import UpstreamError, UpstreamRateLimited
from engine.providers.gemini import GeminiProvider, _Parser
from engine.sse import ServerSentEvent
from engine.testing import FakeGemini, Script, ToolCall, serve
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

KEY = "AIza-test"
MESSAGES = [
    Message(role="system", content="Be brief."),
    Message(role="user", content="Hi"),
    Message(role="assistant", content="Hello"),
    Message(role="user", content="More"),
]


@pytest.fixture
async def env():
    fake = FakeGemini()
    async with serve(fake.app()) as url, aiohttp.ClientSession() as session:
        settings = ProviderSettings(api_key=KEY, base_url=url, model="gemini-test")
        yield fake, GeminiProvider(settings, session=session)


async def test_stream_request_url_headers_and_body(env):
    fake, provider = env
    options = Options(max_tokens=20, temperature=1.0, top_p=0.3, stop=["a", "b"], interval_ms=1)
    [c async for c in provider.stream(MESSAGES, options=options)]
    (rec,) = fake.requests
    assert rec.path == "/v1beta/models/gemini-test:streamGenerateContent"
    assert rec.query == {"alt": "sse"}
    assert rec.headers["x-goog-api-key"] == KEY
    assert "key" not in rec.query  # the key never goes in the URL
    assert rec.json == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello"}]},
            {"role": "user", "parts": [{"text": "More"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "maxOutputTokens": 20,
            "temperature": 1.0,
            "topP": 0.3,
            "stopSequences": ["a", "b"],
        },
    }


async def test_send_uses_generate_content(env):
    fake, provider = env
    fake.default = Script(tokens=["x", "y"])
    reply = await provider.send(MESSAGES[1:2], model="models/gemini-other")
    (rec,) = fake.requests
    assert rec.path == "/v1beta/models/gemini-other:generateContent"
    assert rec.query == {}
    assert "generationConfig" not in rec.json and "systemInstruction" not in rec.json
    assert reply.content == "xy"
    assert reply.model == "gemini-other"


@pytest.mark.parametrize(("finish", "expected"), [("stop", "stop"), ("length", "length")])
async def test_finish_reasons_are_mapped(env, finish, expected):
    fake, provider = env
    fake.default = Script(tokens=["a", "b"], finish=finish)
    chunks = [c async for c in provider.stream(MESSAGES)]
    assert [c.content for c in chunks] == ["a", "b"]  # the last event carries text too
    assert chunks[-1].finish_reason == expected


async def test_function_calls_are_carried(env):
    fake, provider = env
    fake.default = Script(tokens=["ok"], tool_call=ToolCall(name="f", arguments=['{"n": 1}']))
    chunks = [c async for c in provider.stream(MESSAGES)]
    calls = [t for c in chunks if c.tool_calls for t in c.tool_calls]
    assert calls == [
        {"index": 0, "type": "function", "function": {"name": "f", "arguments": '{"n": 1}'}}
    ]
    assert chunks[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None),
        ("auto", {"mode": "AUTO"}),
        ("required", {"mode": "ANY"}),
        ("none", {"mode": "NONE"}),
        (
            {"type": "function", "function": {"name": "clock"}},
            {"mode": "ANY", "allowedFunctionNames": ["clock"]},
        ),
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
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "The weather in a city.",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    },
                    {"name": "clock"},
                ]
            }
        ]
        if expected is None:
            assert "toolConfig" not in rec.json
        else:
            assert rec.json["toolConfig"] == {"functionCallingConfig": expected}


def _event(obj: dict) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(obj))


def test_thoughts_are_skipped_and_usage_counts_them():
    parser = _Parser("m")
    chunk = parser.event(
        _event(
            {
                "candidates": [
                    {
                        "content": {"parts": [{"text": "hmm", "thought": True}, {"text": "A"}]},
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 3,
                    "candidatesTokenCount": 1,
                    "thoughtsTokenCount": 5,
                    "totalTokenCount": 9,
                },
            }
        )
    )
    assert chunk is not None
    assert chunk.content == "A"
    assert chunk.usage is not None
    assert (chunk.usage.prompt_tokens, chunk.usage.completion_tokens) == (3, 6)
    assert chunk.usage.total_tokens == 9


def test_safety_and_blocked_prompts_are_content_filter():
    safety = {"candidates": [{"content": {"parts": []}, "finishReason": "SAFETY"}]}
    chunk = _Parser("m").event(_event(safety))
    assert chunk is not None and chunk.finish_reason == "content_filter"
    blocked = _Parser("m").event(_event({"promptFeedback": {"blockReason": "OTHER"}}))
    assert blocked is not None and blocked.finish_reason == "content_filter"


def test_error_object_in_stream_raises():
    event = _event({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}})
    with pytest.raises(UpstreamRateLimited, match="quota"):
        _Parser("m").event(event)


def test_stream_ending_without_finish_reason_is_an_error():
    with pytest.raises(UpstreamError, match="finishReason"):
        _Parser("m").end()
