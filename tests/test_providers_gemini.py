"""Gemini specifics: URL, key header, roles, systemInstruction, finish reasons, usage."""

from __future__ import annotations

import json
import re

import aiohttp
import pytest

from engine.config import ProviderSettings
from engine.errors import UnsupportedField, UpstreamBadRequest, UpstreamError, UpstreamRateLimited
from engine.providers.gemini import THINKING_BUDGETS, GeminiProvider, _Parser
from engine.sse import ServerSentEvent
from engine.testing import FakeGemini, Script, ToolCall, serve
from engine.testing.gemini import GeminiScript, check_request
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

#: The id the provider makes for a call when Gemini gives none.
CALL_ID = re.compile(r"call_[0-9a-f]{24}\Z")
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
        {
            "index": 0,
            "id": calls[0]["id"],
            "type": "function",
            "function": {"name": "f", "arguments": '{"n": 1}'},
        }
    ]
    assert CALL_ID.match(calls[0]["id"])
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


# -- messages: tool loops, images, audio ------------------------------------------------


async def _reply(provider, messages, options=None, *, stream):
    """(text, tool-call deltas) of one reply, through ``stream()`` or ``send()``."""
    if not stream:
        reply = await provider.send(messages, options=options)
        calls = reply.tool_calls or []
        assert all("index" not in call for call in calls)  # whole calls, as OpenAI's message
        return reply.content, [{"index": i, **call} for i, call in enumerate(calls)]
    text, calls = "", []
    async for chunk in provider.stream(messages, options=options):
        text += chunk.content
        calls.extend(chunk.tool_calls or [])
    return text, calls


def _calls_of(deltas):
    """The deltas as the assistant message's ``tool_calls`` (Gemini sends each call whole)."""
    return [
        Call(id=d["id"], function=FunctionCall(**d["function"]))
        for d in sorted(deltas, key=lambda d: d["index"])
    ]


TOOLS = [{"functionDeclarations": [WEATHER["function"], {"name": "clock"}]}]
PARIS = ToolCall(name="get_weather", arguments=['{"city": ', '"Paris"}'])
NOON = ToolCall(name="clock", arguments=["{}"])


@pytest.mark.parametrize("stream", [True, False])
async def test_a_tool_loop_with_parallel_calls(env, stream):
    fake, provider = env
    fake.push(
        GeminiScript(tokens=["Checking."], tool_calls=[PARIS, NOON], finish="tool_calls"),
        Script(tokens=["Sunny, ", "noon."]),
    )
    options = Options(tools=[WEATHER, CLOCK])
    question = [Message(role="user", content="Weather and time in Paris?")]
    text, deltas = await _reply(provider, question, options, stream=stream)
    assert text == "Checking."
    assert [(d["index"], d["type"], d["function"]["name"]) for d in deltas] == [
        (0, "function", "get_weather"),
        (1, "function", "clock"),
    ]
    assert [json.loads(d["function"]["arguments"]) for d in deltas] == [{"city": "Paris"}, {}]
    ids = [d["id"] for d in deltas]
    assert all(CALL_ID.match(i) for i in ids) and len(set(ids)) == 2

    # The client runs both and answers in its own order; each result is named
    # after the call its id points to, not after its position.
    conversation = [
        *question,
        Message(role="assistant", content=text, tool_calls=_calls_of(deltas)),
        Message(role="tool", tool_call_id=ids[1], content="12:00"),
        Message(role="tool", tool_call_id=ids[0], content='{"sky": "clear", "celsius": 21}'),
    ]
    text, deltas = await _reply(provider, conversation, options, stream=stream)
    assert (text, deltas) == ("Sunny, noon.", [])
    first, second = fake.requests
    assert first.json == {
        "contents": [{"role": "user", "parts": [{"text": "Weather and time in Paris?"}]}],
        "tools": TOOLS,
    }
    assert second.json == {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
            {
                "role": "model",
                "parts": [
                    {"text": "Checking."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "clock", "args": {}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "clock", "response": {"content": "12:00"}}},
                    {
                        "functionResponse": {
                            "name": "get_weather",
                            "response": {"sky": "clear", "celsius": 21},
                        }
                    },
                ],
            },
        ],
        "tools": TOOLS,
    }


@pytest.mark.parametrize("stream", [True, False])
async def test_gemini_call_ids_are_kept(env, stream):
    fake, provider = env
    call = ToolCall(name="clock", arguments=["{}"], id="gem-7")
    fake.default = GeminiScript(tokens=[], tool_calls=[call], call_ids=True, finish="tool_calls")
    text, deltas = await _reply(provider, MESSAGES, Options(tools=[CLOCK]), stream=stream)
    assert text == ""
    assert deltas == [
        {
            "index": 0,
            "id": "gem-7",
            "type": "function",
            "function": {"name": "clock", "arguments": "{}"},
        }
    ]


async def test_results_merge_with_what_follows_and_a_reused_id_means_its_latest_call(env):
    fake, provider = env
    messages = [
        Message(role="user", content="a"),
        Message(role="user", content="b"),
        Message(
            role="assistant",
            tool_calls=[Call(id="same", function=FunctionCall(name="clock", arguments=""))],
        ),
        Message(role="tool", tool_call_id="same", content="[1, 2]"),
        Message(
            role="assistant",
            content="",
            tool_calls=[
                Call(
                    id="same",
                    function=FunctionCall(name="get_weather", arguments='{"city": "Oslo"}'),
                )
            ],
        ),
        Message(role="tool", tool_call_id="same", content=[TextPart(text="snow")]),
        Message(role="user", content="Thanks"),
    ]
    await provider.send(messages, options=Options(tools=[WEATHER, CLOCK]))
    (rec,) = fake.requests
    assert rec.json["contents"] == [
        {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "clock", "args": {}}}]},
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "clock", "response": {"content": "[1, 2]"}}}],
        },
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"content": "snow"}}},
                {"text": "Thanks"},
            ],
        },
    ]


PNG = "iVBORw0KGgo="  # the PNG signature


@pytest.mark.parametrize("stream", [True, False])
async def test_images_and_audio_are_inline_data(env, stream):
    fake, provider = env
    content = [
        TextPart(text="What are these?"),
        ImagePart(image_url=ImageURL(url=f"data:image/png;base64,{PNG[:5]}\n{PNG[5:]}")),
        ImagePart(image_url=ImageURL(url=f"data:image/JPEG;base64,{PNG}", detail="auto")),
        AudioPart(input_audio=InputAudio(data="UklGRg==", format="wav")),
        AudioPart(input_audio=InputAudio(data="SUQz", format="mp3")),
    ]
    await _reply(provider, [Message(role="user", content=content)], stream=stream)
    (rec,) = fake.requests
    assert rec.json["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "What are these?"},
                {"inlineData": {"mimeType": "image/png", "data": PNG}},
                {"inlineData": {"mimeType": "image/jpeg", "data": PNG}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                {"inlineData": {"mimeType": "audio/mp3", "data": "SUQz"}},
            ],
        }
    ]


WEB_IMAGE = ImagePart(image_url=ImageURL(url="https://example.com/cat.png"))
HIGH_DETAIL = ImagePart(image_url=ImageURL(url=f"data:image/png;base64,{PNG}", detail="high"))


def _assistant_calling(arguments):
    return Message(role="assistant", tool_calls=[
        Call(id="c0", function=FunctionCall(name="clock", arguments="{}")),
        Call(id="c1", function=FunctionCall(name="clock", arguments=arguments)),
    ])  # fmt: skip


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("messages", "field", "needle"),
    [
        (
            [MESSAGES[0], Message(role="user", content=[TextPart(text="Look"), WEB_IMAGE])],
            "messages[1].content[1]",
            "data:image/...;base64,",
        ),
        (
            [Message(role="user", content=[HIGH_DETAIL])],
            "messages[0].content[0].image_url.detail",
            "detail",
        ),
        (
            [MESSAGES[1], _assistant_calling("[1]")],
            "messages[1].tool_calls[1].function.arguments",
            "JSON object",
        ),
        (
            [MESSAGES[1], _assistant_calling("{oops")],
            "messages[1].tool_calls[1].function.arguments",
            "JSON object",
        ),
        (
            [MESSAGES[1], Message(role="tool", tool_call_id="nobody", content="x")],
            "messages[1].tool_call_id",
            "no earlier assistant message called",
        ),
    ],
)
async def test_messages_gemini_cannot_take_are_refused_by_path(
    env, stream, messages, field, needle
):
    fake, provider = env
    with pytest.raises(UnsupportedField) as info:
        await _reply(provider, messages, stream=stream)
    assert info.value.field == field
    assert info.value.status == 400
    assert f"`{field}`" in info.value.message and needle in info.value.message
    assert fake.requests == []  # refused before anything went upstream


# -- options --------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("options", "config"),
    [
        (Options(seed=7), {"seed": 7}),
        (
            Options(presence_penalty=0.5, frequency_penalty=-1.5),
            {"presencePenalty": 0.5, "frequencyPenalty": -1.5},
        ),
        (Options(response_format=TextFormat()), {"responseMimeType": "text/plain"}),
        (Options(response_format=JSONObjectFormat()), {"responseMimeType": "application/json"}),
        (
            Options(
                response_format=JSONSchemaFormat(
                    json_schema=JSONSchema(
                        name="city", schema=SCHEMA, description="A city.", strict=True
                    )
                )
            ),
            {
                "responseMimeType": "application/json",
                "responseJsonSchema": {**SCHEMA, "title": "city", "description": "A city."},
            },
        ),
        (
            # The schema's own title and description stand (the same description may repeat).
            Options(
                response_format=JSONSchemaFormat(
                    json_schema=JSONSchema(
                        name="c",
                        schema={**SCHEMA, "title": "City", "description": "A city."},
                        description="A city.",
                    )
                )
            ),
            {
                "responseMimeType": "application/json",
                "responseJsonSchema": {**SCHEMA, "title": "City", "description": "A city."},
            },
        ),
        *[
            (Options(reasoning_effort=effort), {"thinkingConfig": {"thinkingBudget": budget}})
            for effort, budget in [
                ("none", 0),
                ("minimal", 512),
                ("low", 1024),
                ("medium", 8192),
                ("high", 24576),
            ]
        ],
        (Options(stop="END"), {"stopSequences": ["END"]}),
        # Accepted, nothing to send: no Gemini field, or the default.
        (Options(user="user-1234"), None),
        (Options(logprobs=False), None),
        (Options(parallel_tool_calls=False), None),  # no tools: nothing to call in parallel
    ],
)
async def test_each_option_reaches_generation_config(env, stream, options, config):
    fake, provider = env
    await _reply(provider, MESSAGES[1:2], options, stream=stream)
    (rec,) = fake.requests  # and the fake, which checks every name, accepted it
    assert rec.json.get("generationConfig") == config
    assert set(rec.json) <= {"contents", "generationConfig"}
    assert "user-1234" not in json.dumps(rec.json)


def test_every_effort_has_a_budget():
    assert set(THINKING_BUDGETS) == {"none", "minimal", "low", "medium", "high"}


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    "options",
    [
        Options(tools=[WEATHER], parallel_tool_calls=True),
        Options(tools=[WEATHER], tool_choice="none", parallel_tool_calls=False),
    ],
)
async def test_parallel_tool_calls_is_accepted_where_it_changes_nothing(env, stream, options):
    fake, provider = env
    await _reply(provider, MESSAGES[1:2], options, stream=stream)
    (rec,) = fake.requests
    assert set(rec.json) <= {"contents", "tools", "toolConfig"}


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("options", "field"),
    [
        (Options(logit_bias={"50256": -100}), "logit_bias"),
        (Options(logprobs=True), "logprobs"),
        (Options(logprobs=True, top_logprobs=3), "logprobs"),
        (Options(tools=[WEATHER], parallel_tool_calls=False), "parallel_tool_calls"),
        (
            Options(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False),
            "parallel_tool_calls",
        ),
        (Options(stop=["1", "2", "3", "4", "5", "6"]), "stop"),
        (
            Options(
                response_format=JSONSchemaFormat(
                    json_schema=JSONSchema(
                        name="c", schema={"description": "One"}, description="Two"
                    )
                )
            ),
            "response_format.json_schema.description",
        ),
    ],
)
async def test_options_gemini_cannot_carry_are_refused_by_name(env, stream, options, field):
    fake, provider = env
    with pytest.raises(UnsupportedField) as info:
        await _reply(provider, MESSAGES, options, stream=stream)
    assert info.value.field == field
    assert f"`{field}" in info.value.message and "gemini" in info.value.message
    assert fake.requests == []


# -- the fake refuses what Gemini refuses ---------------------------------------------------


def _turns(*contents):
    return {"contents": list(contents)}


def _user(*parts):
    return {"role": "user", "parts": list(parts)}


def _model(*parts):
    return {"role": "model", "parts": list(parts)}


CALL = {"functionCall": {"name": "clock", "args": {}}}


def _answer(name):
    return {"functionResponse": {"name": name, "response": {"content": "x"}}}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_turns(_user({"text": "hi"}), _model(CALL), _user(_answer("calendar"))), "do not match"),
        (
            _turns(_user({"text": "hi"}), _model(CALL, CALL), _user(_answer("clock"))),
            "number of function response parts",
        ),
        (
            _turns(_user({"text": "hi"}), _model(CALL), _user({"text": "?"})),
            "number of function response parts",
        ),
        (_turns(_user(_answer("clock"))), "immediately after a function call turn"),
        (_turns(_model(CALL)), "function call turn comes immediately after a user turn"),
        (_turns(_user(CALL)), "belongs in a model turn"),
        (_turns({"role": "assistant", "parts": [{"text": "hi"}]}), "valid role"),
        (_turns(_user()), "must not be empty"),
        (
            _turns(_user({"text": "a", "inlineData": {"mimeType": "image/png", "data": PNG}})),
            "exactly one",
        ),
        (_turns(_user({"inlineData": {"mimeType": "image/png", "data": "not base64!"}})), "Base64"),
        (_turns(_user({"image_url": {"url": "x"}})), 'Unknown name "image_url"'),
        (
            {**_turns(_user({"text": "a"})), "generationConfig": {"responseFormat": "json"}},
            'Unknown name "responseFormat"',
        ),
        (
            {**_turns(_user({"text": "a"})), "generationConfig": {"responseJsonSchema": {}}},
            "response_mime_type",
        ),
        ({**_turns(_user({"text": "a"})), "generationConfig": {"seed": "7"}}, "seed"),
        (
            {**_turns(_user({"text": "a"})), "generationConfig": {"thinkingConfig": {"budget": 1}}},
            'Unknown name "budget"',
        ),
        ({**_turns(_user({"text": "a"})), "user": "u"}, 'Unknown name "user"'),
    ],
)
def test_the_fake_refuses_what_gemini_refuses(body, needle):
    problem = check_request(body)
    assert problem is not None and needle in problem


def test_the_fake_takes_snake_case_too():
    body = _turns(
        _user({"inline_data": {"mime_type": "image/png", "data": PNG}}),
        _model(CALL),
        _user(_answer("clock")),
    )
    assert (
        check_request({**body, "generation_config": {"response_mime_type": "text/plain"}}) is None
    )


async def test_a_refused_request_gets_geminis_400_and_raises_upstream_bad_request(env):
    fake, provider = env
    body = _turns(_user({"text": "hi"}), _model(CALL), _user(_answer("calendar")))
    url = provider.base_url + "/v1beta/models/gemini-test:generateContent"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert "calendar" in error["message"]
    # What a wrong mapping would meet: the provider's error for it.
    fake.default = Script(status=400)
    with pytest.raises(UpstreamBadRequest):
        await provider.send(MESSAGES)
