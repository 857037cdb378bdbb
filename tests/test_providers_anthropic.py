"""Anthropic specifics: headers, the body's mapping and refusals, events, tool use.

The fake runs strict: it refuses, with the API's 400 shape, a body the real
Messages API would refuse (and one that does not alternate roles), so a wrong
mapping fails here as an upstream error rather than passing unnoticed.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from engine.config import ProviderSettings
from engine.errors import (
    UnsupportedField,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from engine.providers.anthropic import (
    ANTHROPIC_VERSION,
    THINKING_BUDGETS,
    AnthropicProvider,
    _Parser,
)
from engine.sse import ServerSentEvent
from engine.testing import FakeAnthropic, Script, ToolCall, serve
from engine.testing.anthropic import AnthropicScript, check_body
from engine.wire import (
    AudioPart,
    FunctionCall,
    ImagePart,
    ImageURL,
    InputAudio,
    JSONObjectFormat,
    JSONSchema,
    JSONSchemaFormat,
    Message,
    Options,
    TextFormat,
    TextPart,
)
from engine.wire import ToolCall as Call

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
    fake = FakeAnthropic(strict=True)
    async with serve(fake.app()) as url, aiohttp.ClientSession() as session:
        settings = ProviderSettings(
            api_key=KEY, base_url=url, model="claude-test", default_max_tokens=321
        )
        yield fake, AnthropicProvider(settings, session=session)
        assert fake.rejected == []  # a test expecting a refusal clears it


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
        "index": 0,  # the call's position, not Anthropic's block index (1: after the text)
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


# -- the body: messages ----------------------------------------------------------------

PARIS = Call(id="toolu_p", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))
ROME = Call(id="toolu_r", function=FunctionCall(name="get_weather", arguments='{"city":"Rome"}'))
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


async def _sent(fake, provider, messages, options=None) -> dict:
    """The body the fake received for one streamed and one whole request (the same)."""
    [c async for c in provider.stream(messages, options=options)]
    await provider.send(messages, options=options)
    streamed, whole = (r.json for r in fake.requests[-2:])
    assert streamed.pop("stream") is True and "stream" not in whole
    assert streamed == whole
    return whole


async def _refused(fake, provider, messages, options=None) -> UnsupportedField:
    """The refusal, the same through stream() and send(), before anything is sent."""
    with pytest.raises(UnsupportedField) as streamed:
        [c async for c in provider.stream(messages, options=options)]
    with pytest.raises(UnsupportedField) as whole:
        await provider.send(messages, options=options)
    assert fake.requests == []
    error = streamed.value
    assert (error.status, error.type) == (400, "unsupported_field")
    assert whole.value.field == error.field and error.field in error.message
    assert "anthropic" in error.message
    return error


def _calls_from(deltas: list[dict]) -> list[Call]:
    """Tool calls as a client rebuilds them from OpenAI-shaped deltas, by index."""
    by_index: dict[int, dict] = {}
    for delta in deltas:
        call = by_index.setdefault(delta["index"], {"arguments": ""})
        if "id" in delta:
            call.update(id=delta["id"], name=delta["function"]["name"])
        call["arguments"] += delta["function"]["arguments"]
    return [
        Call(id=c["id"], function=FunctionCall(name=c["name"], arguments=c["arguments"]))
        for _, c in sorted(by_index.items())
    ]


async def test_a_two_step_tool_loop_with_parallel_calls(env):
    fake, provider = env
    question = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Paris or Rome?"),
    ]
    options = Options(tools=[WEATHER])
    fake.push(
        AnthropicScript(
            tokens=["Checking both."],
            tool_calls=[
                ToolCall(name="get_weather", arguments=['{"city": ', '"Paris"}'], id="toolu_p"),
                ToolCall(name="get_weather", arguments=['{"city":"Rome"}'], id="toolu_r"),
            ],
            finish="tool_calls",
        )
    )
    chunks = [c async for c in provider.stream(question, options=options)]
    calls = _calls_from([t for c in chunks if c.tool_calls for t in c.tool_calls])
    assert [c.id for c in calls] == ["toolu_p", "toolu_r"]
    follow_up = [
        *question,
        Message(role="assistant", content="Checking both.", tool_calls=calls),
        Message(role="tool", tool_call_id="toolu_p", content="18C"),
        Message(role="tool", tool_call_id="toolu_r", content=[TextPart(text="21C")]),
        Message(role="user", content="Which is warmer?"),
    ]
    reply = await provider.send(follow_up, options=options)
    assert reply.content == "Hello, world!"
    first, second = (r.json for r in fake.requests)
    assert first["messages"] == [{"role": "user", "content": "Paris or Rome?"}]
    assert second == {
        "model": "claude-test",
        "max_tokens": 321,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Paris or Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking both."},
                    {"type": "tool_use", "id": "toolu_p", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_r", "name": "get_weather", "input": {"city": "Rome"}},
                ],
            },
            {
                # Both results in the one user turn Anthropic wants, the question after them.
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_p", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_r", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "text", "text": "Which is warmer?"},
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "The weather in a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    }  # fmt: skip


async def test_tool_results_come_first_in_their_turn(env):
    fake, provider = env
    messages = [
        Message(role="user", content="Both cities?"),
        Message(role="assistant", content=None, tool_calls=[PARIS, ROME]),
        Message(role="tool", tool_call_id="toolu_p", content="18C"),
        Message(role="user", content="Hurry."),  # said between the two results
        Message(role="tool", tool_call_id="toolu_r", content="21C"),
    ]
    body = await _sent(fake, provider, messages, Options(tools=[WEATHER]))
    assistant, results = body["messages"][1:]
    assert [b["type"] for b in assistant["content"]] == ["tool_use", "tool_use"]  # no empty text
    assert results["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_p", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "toolu_r", "content": "21C"},
        {"type": "text", "text": "Hurry."},
    ]


async def test_consecutive_turns_of_one_side_are_merged(env):
    fake, provider = env
    messages = [
        Message(role="user", content="One."),
        Message(role="system", content="Be brief."),  # goes to `system`: no turn
        Message(role="user", content=[TextPart(text="Two."), TextPart(text="")]),
        Message(role="assistant", content="Three."),
        Message(role="assistant", content=[TextPart(text="Four.")]),
        Message(role="user", content="Five."),
    ]
    body = await _sent(fake, provider, messages)
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Three."}, {"type": "text", "text": "Four."}]},
        {"role": "user", "content": "Five."},
    ]  # fmt: skip


async def test_images_by_data_url_and_by_web_address(env):
    fake, provider = env
    parts = [
        TextPart(text="What is this?"),
        ImagePart(image_url=ImageURL(url=f"data:image/png;base64,{PNG[:40]}\n{PNG[40:]}", detail="high")),
        ImagePart(image_url=ImageURL(url="https://example.com/cat.jpg", detail="low")),
        ImagePart(image_url=ImageURL(url=f"data:image/jpg;base64,{PNG}")),
    ]  # fmt: skip
    body = await _sent(fake, provider, [Message(role="user", content=parts)])
    # `detail` is OpenAI's resolution hint, not sent (module docstring).
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}},
            ],
        }
    ]  # fmt: skip


async def test_audio_and_unreadable_images_are_refused_by_position(env):
    fake, provider = env
    audio = AudioPart(input_audio=InputAudio(data="UklGRg==", format="wav"))
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content=[TextPart(text="Listen:"), audio]),
    ]
    error = await _refused(fake, provider, messages)
    assert error.field == "messages[1].content[1]"
    assert "audio" in error.message
    svg = ImagePart(image_url=ImageURL(url="data:image/svg+xml;base64,PHN2Zz4="))
    error = await _refused(fake, provider, [Message(role="user", content=[svg])])
    assert error.field == "messages[0].content[0]"
    assert "image/svg+xml" in error.message


@pytest.mark.parametrize(
    ("arguments", "why"),
    [("{not json", "not valid JSON"), ("[1, 2]", "not list"), ('"x"', "not str")],
)
async def test_tool_call_arguments_must_be_a_json_object(env, arguments, why):
    fake, provider = env
    bad = Call(id="toolu_x", function=FunctionCall(name="clock", arguments=arguments))
    messages = [
        Message(role="user", content="Time?"),
        Message(role="assistant", content="Looking.", tool_calls=[PARIS, bad]),
        Message(role="tool", tool_call_id="toolu_p", content="18C"),
        Message(role="tool", tool_call_id="toolu_x", content="noon"),
    ]
    error = await _refused(fake, provider, messages, Options(tools=[WEATHER, CLOCK]))
    assert error.field == "messages[1].tool_calls[1].function.arguments"
    assert why in error.message


async def test_a_call_without_arguments_is_an_empty_object_both_ways(env):
    fake, provider = env
    fake.default = Script(
        tokens=["."],
        tool_call=ToolCall(name="clock", arguments=(), id="toolu_c"),
        finish="tool_calls",
    )
    chunks = [c async for c in provider.stream(MESSAGES, options=Options(tools=[CLOCK]))]
    (call,) = _calls_from([t for c in chunks if c.tool_calls for t in c.tool_calls])
    reply = await provider.send(MESSAGES, options=Options(tools=[CLOCK]))
    assert reply.tool_calls is not None
    assert call.function.arguments == reply.tool_calls[0]["function"]["arguments"] == "{}"
    # What a client sends back, "" included, is `{}` again.
    empty = Call(id="toolu_c", function=FunctionCall(name="clock", arguments=""))
    messages = [
        Message(role="user", content="Time?"),
        Message(role="assistant", content=None, tool_calls=[empty]),
        Message(role="tool", tool_call_id="toolu_c", content="noon"),
    ]
    body = await _sent(fake, provider, messages, Options(tools=[CLOCK]))
    assert body["messages"][1]["content"][0]["input"] == {}  # fmt: skip


# -- replies: tool-call positions, thinking ----------------------------------------------


async def test_tool_calls_are_indexed_by_position_after_text_and_thinking(env):
    fake, provider = env
    fake.default = AnthropicScript(
        tokens=["Let me look."],
        thinking="The user wants two lookups.",
        tool_calls=[
            ToolCall(name="get_weather", arguments=['{"city": "Paris"}'], id="toolu_1"),
            ToolCall(name="clock", arguments=["{}"], id="toolu_2"),
        ],
        finish="tool_calls",
    )
    options = Options(tools=[WEATHER, CLOCK])
    chunks = [c async for c in provider.stream(MESSAGES, options=options)]
    deltas = [t for c in chunks if c.tool_calls for t in c.tool_calls]
    # Anthropic's blocks are 0 thinking, 1 text, 2 and 3 tool_use; the calls are 0 and 1.
    assert sorted({d["index"] for d in deltas}) == [0, 1]
    starts = [d for d in deltas if "id" in d]
    assert [(d["index"], d["id"]) for d in starts] == [(0, "toolu_1"), (1, "toolu_2")]
    assert [c.function.arguments for c in _calls_from(deltas)] == ['{"city": "Paris"}', "{}"]
    # Thinking is skipped: only the answer's text.
    assert "".join(c.content for c in chunks) == "Let me look."
    reply = await provider.send(MESSAGES, options=options)
    assert reply.content == "Let me look."
    assert reply.tool_calls is not None
    # Whole calls, in order, without a delta's `index` (OpenAI's message.tool_calls).
    assert [t["id"] for t in reply.tool_calls] == ["toolu_1", "toolu_2"]
    assert all("index" not in t for t in reply.tool_calls)
    assert json.loads(reply.tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}


# -- the body: options -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, {"type": "auto", "disable_parallel_tool_use": True}),
        ("auto", {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "clock"}},
            {"type": "tool", "name": "clock", "disable_parallel_tool_use": True},
        ),
        ("none", {"type": "none"}),  # no call at all: nothing to turn off
    ],
)
async def test_parallel_tool_calls_false_disables_parallel_tool_use(env, choice, expected):
    fake, provider = env
    options = Options(tools=[WEATHER, CLOCK], tool_choice=choice, parallel_tool_calls=False)
    body = await _sent(fake, provider, MESSAGES, options)
    assert body["tool_choice"] == expected


async def test_parallel_tool_calls_true_is_anthropics_default(env):
    fake, provider = env
    body = await _sent(fake, provider, MESSAGES, Options(tools=[CLOCK], parallel_tool_calls=True))
    assert "tool_choice" not in body


async def test_user_is_metadata_user_id(env):
    fake, provider = env
    body = await _sent(fake, provider, MESSAGES, Options(user="user-42"))
    assert body["metadata"] == {"user_id": "user-42"}


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high"])
async def test_reasoning_effort_is_extended_thinking(env, effort):
    fake, provider = env
    budget = THINKING_BUDGETS[effort]
    assert budget >= 1024  # Anthropic's minimum
    body = await _sent(fake, provider, MESSAGES, Options(reasoning_effort=effort))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] == 321 + budget  # the default room, plus the thinking
    options = Options(reasoning_effort=effort, max_tokens=budget + 1, temperature=1, top_p=0.95)
    body = await _sent(fake, provider, MESSAGES, options)
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (budget + 1, 1, 0.95)


async def test_reasoning_effort_none_disables_thinking(env):
    fake, provider = env
    body = await _sent(fake, provider, MESSAGES, Options(reasoning_effort="none", temperature=0.3))
    assert body["thinking"] == {"type": "disabled"}
    assert (body["max_tokens"], body["temperature"]) == (321, 0.3)


async def test_thinking_with_tool_choice_auto_is_carried(env):
    fake, provider = env
    options = Options(reasoning_effort="low", tools=[CLOCK], tool_choice="auto")
    body = await _sent(fake, provider, MESSAGES, options)
    assert body["tool_choice"] == {"type": "auto"}


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (Options(reasoning_effort="medium", max_tokens=4096), "max_tokens"),
        (Options(reasoning_effort="minimal", max_tokens=100), "max_tokens"),
        (Options(reasoning_effort="low", temperature=0.7), "temperature"),
        (Options(reasoning_effort="low", top_p=0.9), "top_p"),
        (Options(reasoning_effort="low", tools=[CLOCK], tool_choice="required"), "tool_choice"),
        (
            Options(
                reasoning_effort="high",
                tools=[CLOCK],
                tool_choice={"type": "function", "function": {"name": "clock"}},
            ),
            "tool_choice",
        ),
        (Options(temperature=1.5), "temperature"),  # Anthropic's range is 0..1
        (Options(response_format=JSONObjectFormat()), "response_format"),
    ],
)
async def test_what_anthropic_would_refuse_is_refused_by_name(env, options, field):
    fake, provider = env
    error = await _refused(fake, provider, MESSAGES, options)
    assert error.field == field


async def test_thinking_cannot_continue_a_tool_loop(env):
    fake, provider = env
    messages = [
        Message(role="user", content="Paris?"),
        Message(role="assistant", content=None, tool_calls=[PARIS]),
        Message(role="tool", tool_call_id="toolu_p", content="18C"),
    ]
    options = Options(tools=[WEATHER], reasoning_effort="medium")
    error = await _refused(fake, provider, messages, options)
    assert error.field == "reasoning_effort"
    assert "thinking block" in error.message
    # Without thinking the same step goes through; so does thinking once the loop is over.
    await _sent(fake, provider, messages, Options(tools=[WEATHER]))
    later = [
        *messages,
        Message(role="assistant", content="18C."),
        Message(role="user", content="Rome?"),
    ]
    body = await _sent(fake, provider, later, options)
    assert body["thinking"]["type"] == "enabled"


async def test_the_fake_refuses_a_tool_loop_without_the_thinking_block(env):
    fake, provider = env
    body = {
        "model": "c",
        "max_tokens": 5000,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": "Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "w", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "18C"}]},
        ],
    }  # fmt: skip
    assert "must start with a thinking block" in (check_body(body) or "")


async def test_json_schema_is_structured_output(env):
    fake, provider = env
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    fmt = JSONSchemaFormat(json_schema=JSONSchema(name="place", schema=schema, strict=True))
    body = await _sent(fake, provider, MESSAGES, Options(response_format=fmt))
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    described = JSONSchemaFormat(
        json_schema=JSONSchema(name="place", schema=schema, description="Where it is.")
    )
    body = await _sent(fake, provider, MESSAGES, Options(response_format=described))
    assert body["output_config"]["format"]["schema"] == {**schema, "description": "Where it is."}
    assert "description" not in schema  # the request's schema is not changed
    body = await _sent(fake, provider, MESSAGES, Options(response_format=TextFormat()))
    assert "output_config" not in body


async def test_a_description_the_schema_contradicts_is_refused(env):
    fake, provider = env
    spec = JSONSchema(name="p", schema={"type": "object", "description": "A"}, description="B")
    options = Options(response_format=JSONSchemaFormat(json_schema=spec))
    error = await _refused(fake, provider, MESSAGES, options)
    assert error.field == "response_format.json_schema.description"


@pytest.mark.parametrize(
    "options",
    [
        Options(seed=7),
        Options(presence_penalty=0.5),
        Options(frequency_penalty=-0.5),
        Options(logit_bias={"50256": -100}),
        Options(logprobs=True),
        Options(logprobs=True, top_logprobs=3),
    ],
    ids=lambda o: o.set_fields()[-1],
)
async def test_options_without_an_equivalent_are_refused(env, options):
    fake, provider = env
    error = await _refused(fake, provider, MESSAGES, options)
    assert error.field == options.set_fields()[0]


def test_carries_covers_every_provider_option():
    from engine.wire import ENGINE_OPTIONS

    refused = {
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
    }
    known = AnthropicProvider.carries | AnthropicProvider.ignores | ENGINE_OPTIONS | refused
    assert known == set(Options.__struct_fields__)
    assert not refused & (AnthropicProvider.carries | AnthropicProvider.ignores)


# -- the fake holds the mapping to the API's rules ---------------------------------------


def _body(*messages: dict, **extra) -> dict:
    return {"model": "c", "max_tokens": 5, "messages": list(messages), **extra}


ASK = {"role": "user", "content": "Hi"}
USE = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}],
}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_body(ASK, ASK), "roles must alternate"),
        (_body(ASK, USE, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}, {"type": "tool_result", "tool_use_id": "toolu_9"}]}), "unexpected `tool_use_id` found in `tool_result` blocks: toolu_9"),
        (_body(ASK, USE, ASK), "without `tool_result` blocks immediately after: toolu_1"),
        (_body(ASK, USE, {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "tool_result", "tool_use_id": "toolu_1"}]}), "must come first"),
        # The engine's own shapes, sent as they are, are not the API's.
        (_body({"role": "tool", "tool_call_id": "toolu_1", "content": "x"}), "messages.0.tool_call_id: Extra inputs"),
        (_body({"role": "system", "content": "x"}), "messages.0.role"),
        (_body({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}), "image_url"),
        (_body(ASK, {"role": "assistant", "content": "x", "tool_calls": []}), "tool_calls: Extra inputs"),
        (_body(ASK, seed=1), "seed: Extra inputs"),
        (_body(ASK, temperature=1.5), "temperature"),
        (_body(ASK, tool_choice={"type": "auto", "disable_parallel_tool_use": True, "x": 1}), "tool_choice.x"),
        (_body(ASK, thinking={"type": "enabled", "budget_tokens": 1024}), "greater than `thinking.budget_tokens`"),
        (_body(ASK, max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024}, temperature=0.5), "temperature"),
        (_body({"role": "user", "content": ""}), "non-empty content"),
    ],
)  # fmt: skip
async def test_the_fake_refuses_what_the_api_refuses(body, message):
    fake = FakeAnthropic(strict=True)
    async with serve(fake.app()) as url, aiohttp.ClientSession() as session:
        headers = {"anthropic-version": ANTHROPIC_VERSION, "x-api-key": KEY}
        async with session.post(url + "/v1/messages", json=body, headers=headers) as resp:
            status, answer = resp.status, await resp.json()
    assert status == 400
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert message in answer["error"]["message"]
    assert fake.rejected == [answer["error"]["message"]]
    assert [r.json for r in fake.requests] == [body]


async def test_a_refused_body_surfaces_as_an_upstream_bad_request(env, monkeypatch):
    fake, provider = env
    # Were the adapter to send a wire Struct as it is, the fake would say so.
    monkeypatch.setattr(
        AnthropicProvider,
        "body",
        lambda self, messages, model, options: {"model": model, "max_tokens": 5, "messages": [
            {"role": m.role, "content": m.content, "tool_call_id": m.tool_call_id} for m in messages
        ]},
    )  # fmt: skip
    with pytest.raises(UpstreamBadRequest, match="Extra inputs are not permitted"):
        await provider.send([Message(role="user", content="Hi")])
    fake.rejected.clear()


def test_the_fake_accepts_what_the_adapter_builds():
    assert check_body(_body(ASK), strict=True) is None
    assert check_body({"stream": True}) is None  # a probe, not strict
    assert check_body({"stream": True}, strict=True) == "model: Field required"
