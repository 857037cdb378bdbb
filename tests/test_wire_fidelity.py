"""Every Chat Completions field is carried to the provider or refused by name.

Driven by the official ``openai`` SDK against a loopback gateway; what reaches
OpenAI is checked field by field on the fake upstream, what reaches any
provider on a scripted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import openai
import pydantic
import pytest

from engine import create_app
from engine.gateway import Engine
from engine.sse import Decoder
from engine.testing import FAKES, FakeOpenAI, Script, ToolCall, serve

from .helpers import ScriptedProvider, make_config

KEY = "sk-fake-key-0123456789"
HI = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@dataclass
class Gateway:
    sdk: openai.AsyncOpenAI
    raw: Any
    engine: Engine


@pytest.fixture
async def gateway(aiohttp_server, aiohttp_client):
    clients: list[openai.AsyncOpenAI] = []

    async def start(*providers: Any, **config: Any) -> Gateway:
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


@pytest.fixture
async def openai_upstream(gateway):
    """A fake OpenAI and a gateway whose ``openai`` provider points at it."""
    fake = FakeOpenAI()
    async with serve(fake.app()) as url:
        settings = {"api_key": KEY, "base_url": f"{url}/v1", "max_retries": 0}

        async def start(**extra: Any) -> Gateway:
            return await gateway(providers={"openai": {**settings, **extra}})

        yield fake, start


# -- an agent loop ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_a_two_step_tool_loop_reaches_openai_exactly_as_sent(openai_upstream, stream):
    fake, start = openai_upstream
    gw = await start()
    fake.push(Script(tokens=[], finish="tool_calls", tool_call=ToolCall("get_weather")))
    first = await gw.sdk.chat.completions.create(
        model="openai/gpt-test", messages=HI, tools=[WEATHER], stream=stream
    )
    if stream:
        # The SDK's own accumulator, as openai-node runTools and the AI SDK do.
        calls: dict[int, dict[str, Any]] = {}
        finish = None
        async for chunk in first:
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"arguments": ""})
                    if delta.id:
                        call["id"] = delta.id
                    if delta.function and delta.function.name:
                        call["name"] = delta.function.name
                    if delta.function and delta.function.arguments:
                        call["arguments"] += delta.function.arguments
        (call,) = calls.values()
        assert finish == "tool_calls"
    else:
        (whole,) = first.choices[0].message.tool_calls
        assert first.choices[0].finish_reason == "tool_calls"
        assert first.choices[0].message.content is None  # OpenAI's null, not ""
        call = {
            "id": whole.id,
            "name": whole.function.name,
            "arguments": whole.function.arguments,
        }
    assert call == {"id": "call_0001", "name": "get_weather", "arguments": '{"city": "Paris"}'}

    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
        ],
    }
    result = {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21}'}
    reply = await gw.sdk.chat.completions.create(
        model="openai/gpt-test", messages=[*HI, assistant, result], tools=[WEATHER]
    )
    assert reply.choices[0].message.content == "Hello, world!"
    sent = fake.requests[1].json["messages"]
    # `content: null` is left out (OpenAI accepts both); everything else as sent.
    assert sent == [HI[0], {k: v for k, v in assistant.items() if v is not None}, result]


async def test_images_reach_openai_exactly_as_sent(openai_upstream):
    fake, start = openai_upstream
    gw = await start()
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": PIXEL}},
            {
                "type": "image_url",
                "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
            },
        ],
    }
    await gw.sdk.chat.completions.create(model="openai/gpt-test", messages=[message])
    assert fake.requests[0].json["messages"] == [message]


# -- options --------------------------------------------------------------------------

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "weather",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
            "required": ["city", "temp_c"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_format", SCHEMA),
        ("response_format", {"type": "json_object"}),
        ("seed", 42),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -0.5),
        ("logit_bias", {"1234": -100}),
        ("logprobs", True),
        ("reasoning_effort", "low"),
        ("user", "end-user-7"),
        ("temperature", 0.3),
        ("top_p", 0.5),
        ("stop", ["END"]),
    ],
)
async def test_each_option_reaches_openai_in_its_own_form(openai_upstream, field, value):
    fake, start = openai_upstream
    gw = await start()
    await gw.sdk.chat.completions.create(model="openai/gpt-test", messages=HI, **{field: value})
    assert fake.requests[0].json[field] == value


async def test_tool_options_reach_openai(openai_upstream):
    fake, start = openai_upstream
    gw = await start()
    await gw.sdk.chat.completions.create(
        model="openai/gpt-test",
        messages=HI,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        logprobs=True,
        top_logprobs=3,
    )
    body = fake.requests[0].json
    assert body["tools"] == [WEATHER]
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("required", False)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)


async def test_max_tokens_goes_under_the_field_the_upstream_knows(openai_upstream):
    fake, start = openai_upstream
    gw = await start()
    await gw.sdk.chat.completions.create(model="openai/gpt-test", messages=HI, max_tokens=7)
    await gw.sdk.chat.completions.create(
        model="openai/gpt-test", messages=HI, max_completion_tokens=8
    )
    old = await start(max_tokens_field="max_tokens")  # a server that knows only max_tokens
    await old.sdk.chat.completions.create(
        model="openai/gpt-test", messages=HI, max_completion_tokens=9
    )
    bodies = [rec.json for rec in fake.requests]
    assert [b.get("max_completion_tokens") for b in bodies] == [7, 8, None]
    assert [b.get("max_tokens") for b in bodies] == [None, None, 9]


async def test_bookkeeping_fields_are_accepted(gateway):
    """Fields that cannot change the answer: accepted, and the reply is the usual one."""
    provider = ScriptedProvider(["ok"])
    gw = await gateway(provider)
    reply = await gw.sdk.chat.completions.create(
        model="scripted/x",
        messages=HI,
        metadata={"app": "test"},
        store=False,
        service_tier="auto",
        stream_options=None,
        extra_body={"prompt_cache_key": "k", "safety_identifier": "u1"},
    )
    assert reply.choices[0].message.content == "ok"
    ((_, options),) = provider.requests
    assert options is not None and options.user == "u1"  # OpenAI's new name for `user`


# -- refusals, by name ----------------------------------------------------------------------

TOOL_TURN = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"frobnicate": 1}, None, "frobnicate"),
        ({"n": 2}, "n", "n=1"),
        ({"modalities": ["text", "audio"]}, "modalities", "text output"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio", "audio output"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction", "predicted"),
        ({"web_search_options": {}}, "web_search_options", "web search"),
        ({"functions": [{"name": "f"}]}, "functions", "tools"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "w", "schema": "x"},
                }
            },
            "response_format",
            "object",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format", "yaml"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort", "extreme"),
        ({"top_logprobs": 2}, "top_logprobs", "logprobs"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages", "name"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages", "function"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
                    }
                ]
            },
            "messages",
            "http(s)",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}
                ]
            },
            "messages",
            "file",
        ),
        (
            {"messages": [*HI, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]},
            "messages",
            "call_9",
        ),
        (
            {"messages": [*HI, TOOL_TURN, {"role": "tool", "content": "sunny"}]},
            "messages",
            "tool_call_id",
        ),
        (
            {
                "messages": [
                    {
                        "role": "system",
                        "content": [{"type": "image_url", "image_url": {"url": PIXEL}}],
                    }
                ]
            },
            "messages",
            "only user messages",
        ),
    ],
)
async def test_what_cannot_be_carried_is_refused_by_name(gateway, body, param, needle):
    gw = await gateway()
    resp = await gw.raw.post(
        "/v1/chat/completions", json={"model": "mock/x", "messages": HI, **body}
    )
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    # The field, or the message it is in (`messages[0].name`).
    assert error["param"] == param or error["param"].startswith(f"{param}[")
    assert needle in error["message"]


async def test_a_tool_result_answering_its_call_is_accepted(gateway):
    provider = ScriptedProvider(["It is sunny."])
    gw = await gateway(provider)
    result = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    reply = await gw.sdk.chat.completions.create(
        model="scripted/x", messages=[*HI, TOOL_TURN, result], tools=[WEATHER]
    )
    assert reply.choices[0].message.content == "It is sunny."
    ((messages, _),) = provider.requests
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    assert messages[1].tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert messages[2].tool_call_id == "call_1"


async def test_a_data_url_over_the_body_limit_is_413(gateway):
    gw = await gateway(max_body_size=4096)
    big = "data:image/png;base64," + "A" * 8000
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": big}}]}
    resp = await gw.raw.post(
        "/v1/chat/completions", json={"model": "mock/x", "messages": [message]}
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
async def test_an_option_a_provider_has_no_form_for_is_refused_naming_both(gateway, provider):
    gw = await gateway(providers={provider: {"api_key": KEY, "base_url": "http://127.0.0.1:9"}})
    with pytest.raises(openai.BadRequestError) as info:
        await gw.sdk.chat.completions.create(
            model=f"{provider}/x", messages=HI, logit_bias={"1": 5}
        )
    assert info.value.param == "logit_bias"
    assert provider in info.value.message
    assert json.loads(info.value.response.text)["error"]["code"] == "unsupported_field"


# -- memory keeps the loop ------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_memory_stores_a_tool_loop_and_sends_it_upstream_again(openai_upstream, stream):
    """With a conversation attached, the second step carries only the tool result: the
    user's question and the assistant's call come from memory, as they were."""
    fake, start = openai_upstream
    gw = await start()
    session = {"X-Session-Parent": "Agent", "X-Session-Id": f"loop-{stream}"}
    fake.push(Script(tokens=[], finish="tool_calls", tool_call=ToolCall("get_weather")))
    first = await gw.sdk.chat.completions.create(
        model="openai/gpt-test",
        messages=HI,
        tools=[WEATHER],
        stream=stream,
        extra_headers=session,
    )
    if stream:
        async for _ in first:
            pass
    result = {"role": "tool", "tool_call_id": "call_0001", "content": '{"temp_c": 21}'}
    await gw.sdk.chat.completions.create(
        model="openai/gpt-test", messages=[result], tools=[WEATHER], extra_headers=session
    )
    call = {
        "id": "call_0001",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assert fake.requests[1].json["messages"] == [
        HI[0],
        {"role": "assistant", "tool_calls": [call]},
        result,
    ]
    stored = (await gw.raw.get("/v1/memory/Agent/" + session["X-Session-Id"])).json
    messages = (await stored())["messages"]
    assert [(m["role"], m["tool_call_id"]) for m in messages] == [
        ("user", None),
        ("assistant", None),
        ("tool", "call_0001"),
        ("assistant", None),
    ]
    assert messages[1]["tool_calls"] == [call]
    assert messages[3]["content"] == "Hello, world!"


@pytest.mark.parametrize("stream", [True, False])
async def test_logprobs_come_back_from_openai(openai_upstream, stream):
    fake, start = openai_upstream
    gw = await start()
    reply = await gw.sdk.chat.completions.create(
        model="openai/gpt-test", messages=HI, logprobs=True, top_logprobs=2, stream=stream
    )
    if stream:
        tokens = []
        async for chunk in reply:
            for choice in chunk.choices:
                if choice.logprobs is not None and choice.logprobs.content:
                    tokens += choice.logprobs.content
    else:
        tokens = reply.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == "Hello, world!"
    assert [len(t.top_logprobs) for t in tokens] == [2] * len(tokens)
    assert tokens[1].logprob == -0.25


# -- every provider, by both endpoints ---------------------------------------------------------

PROVIDERS = ["openai", "anthropic", "gemini"]


@pytest.fixture
async def any_upstream(request, gateway):
    """The fake of ``request.param`` (checking every body it gets) and a gateway on it."""
    name = request.param
    fake = FAKES[name](strict=True) if name == "anthropic" else FAKES[name]()
    async with serve(fake.app()) as url:
        base = f"{url}/v1" if name == "openai" else url
        gw = await gateway(providers={name: {"api_key": KEY, "base_url": base, "max_retries": 0}})
        yield name, fake, gw


def _rejected(fake) -> list[Any]:
    return getattr(fake, "rejected", [])


@pytest.mark.parametrize("any_upstream", PROVIDERS, indirect=True)
async def test_a_tool_loop_goes_through_every_provider(any_upstream):
    name, fake, gw = any_upstream
    fake.push(Script(tokens=[], finish="tool_calls", tool_call=ToolCall("get_weather")))
    first = await gw.sdk.chat.completions.create(
        model=f"{name}/test-model", messages=HI, tools=[WEATHER]
    )
    (call,) = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assistant = first.choices[0].message.model_dump(exclude_none=True)
    result = {"role": "tool", "tool_call_id": call.id, "content": "21 C and sunny"}
    reply = await gw.sdk.chat.completions.create(
        model=f"{name}/test-model", messages=[*HI, assistant, result], tools=[WEATHER]
    )
    assert reply.choices[0].message.content == "Hello, world!"
    assert len(fake.requests) == 2 and not _rejected(fake)  # the fake checked the pairing
    sent = json.dumps(fake.requests[1].json)
    assert "21 C and sunny" in sent and "get_weather" in sent


@pytest.mark.parametrize("any_upstream", PROVIDERS, indirect=True)
async def test_an_image_goes_through_every_provider(any_upstream):
    name, fake, gw = any_upstream
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": PIXEL}},
        ],
    }
    reply = await gw.sdk.chat.completions.create(model=f"{name}/test-model", messages=[message])
    assert reply.choices[0].message.content == "Hello, world!"
    assert not _rejected(fake)
    data = PIXEL.partition(",")[2]
    assert data in json.dumps(fake.requests[0].json)  # the image itself, base64


class Weather(pydantic.BaseModel):
    city: str
    temp_c: float


@pytest.mark.parametrize("any_upstream", PROVIDERS, indirect=True)
async def test_structured_output_parses_through_every_provider(any_upstream):
    name, fake, gw = any_upstream
    fake.push(Script(tokens=['{"city": "Paris", ', '"temp_c": 21.5}']))
    completion = await gw.sdk.beta.chat.completions.parse(
        model=f"{name}/test-model", messages=HI, response_format=Weather
    )
    assert completion.choices[0].message.parsed == Weather(city="Paris", temp_c=21.5)
    assert not _rejected(fake)
    body = json.dumps(fake.requests[0].json)
    assert '"temp_c"' in body  # the schema went upstream, in the provider's own field


async def test_structured_output_from_the_mock_parses(gateway):
    gw = await gateway()
    completion = await gw.sdk.beta.chat.completions.parse(
        model="mock/x", messages=HI, response_format=Weather
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Weather)


@pytest.mark.parametrize("any_upstream", PROVIDERS, indirect=True)
async def test_the_native_stream_carries_a_tool_result_to_every_provider(any_upstream):
    name, fake, gw = any_upstream
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    body = {
        "provider": name,
        "model": "test-model",
        "messages": [
            *HI,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
        ],
        "options": {"tools": [WEATHER]},
    }
    resp = await gw.raw.post("/v1/chat/stream", json=body)
    assert resp.status == 200
    events = Decoder().feed(await resp.read())
    assert events[-1].event == "done"
    assert "".join(json.loads(e.data)["content"] for e in events[1:-1]) == "Hello, world!"
    assert not _rejected(fake)
    assert "21 C" in json.dumps(fake.requests[0].json)


@pytest.mark.parametrize("stream", [True, False])
async def test_gemini_thought_signatures_make_the_round_trip(gateway, stream):
    """Gemini 3 signs each call and refuses it back unsigned: the signature travels in the
    call's `extra_content.google.thought_signature` (Google's own OpenAI-compatible form)."""
    from engine.testing.gemini import GeminiScript

    fake = FAKES["gemini"]()
    async with serve(fake.app()) as url:
        gw = await gateway(providers={"gemini": {"api_key": KEY, "base_url": url}})
        fake.push(
            GeminiScript(
                tokens=[],
                finish="tool_calls",
                tool_call=ToolCall("get_weather", id="c1"),
                call_ids=True,
                signatures=True,
            )
        )
        first = await gw.sdk.chat.completions.create(
            model="gemini/test-model", messages=HI, tools=[WEATHER], stream=stream
        )
        if stream:
            deltas = [d async for c in first for d in (c.choices[0].delta.tool_calls or [])]
            (head,) = deltas
            call = head.model_dump(exclude_none=True)
            call.pop("index")
        else:
            call = first.choices[0].message.tool_calls[0].model_dump(exclude_none=True)
        assert call["extra_content"] == {"google": {"thought_signature": "sig-c1"}}
        assistant = {"role": "assistant", "tool_calls": [call]}
        result = {"role": "tool", "tool_call_id": call["id"], "content": "21 C"}
        await gw.sdk.chat.completions.create(
            model="gemini/test-model", messages=[*HI, assistant, result], tools=[WEATHER]
        )
    model_turn = fake.requests[1].json["contents"][1]
    assert model_turn["parts"][0]["thoughtSignature"] == "sig-c1"


async def test_a_gemini_signature_is_not_sent_to_openai(openai_upstream):
    fake, start = openai_upstream
    gw = await start()
    signed = {
        **TOOL_TURN["tool_calls"][0],
        "extra_content": {"google": {"thought_signature": "sig"}},
    }
    messages = [
        *HI,
        {"role": "assistant", "tool_calls": [signed]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ]
    await gw.sdk.chat.completions.create(model="openai/gpt-test", messages=messages)
    assert fake.requests[0].json["messages"][1]["tool_calls"] == TOOL_TURN["tool_calls"]


async def test_a_refused_message_is_named_in_the_requests_own_numbering(gateway):
    # Providers number what they are sent: the stored history, then the request's own.
    gw = await gateway(providers={"anthropic": {"api_key": KEY, "base_url": "http://127.0.0.1:9"}})
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    session = {"X-Session-Parent": "Chat", "X-Session-Id": "renumbered"}
    stored = await gw.raw.post(
        "/v1/memory/Chat/renumbered/messages", json={"role": "user", "content": "earlier"}
    )
    assert stored.status == 201
    ask = {"model": "anthropic/claude-test", "messages": [{"role": "user", "content": [audio]}]}
    refused = await gw.raw.post("/v1/chat/completions", json=ask, headers=session)
    assert refused.status == 400
    error = (await refused.json())["error"]
    assert (
        error["param"] == "messages[0].content[0]" and "messages[0].content[0]" in error["message"]
    )

    await gw.raw.post(
        "/v1/memory/Chat/renumbered/messages", json={"role": "user", "parts": [audio]}
    )
    plain = {"model": "anthropic/claude-test", "messages": HI}
    refused = await gw.raw.post("/v1/chat/completions", json=plain, headers=session)
    error = (await refused.json())["error"]
    assert error["param"] == "history[1].content[0]"
    assert "stored message of the conversation" in error["message"]
