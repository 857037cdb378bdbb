"""POST /v1/messages: Anthropic's Messages API in front of any provider, read by the
official ``anthropic`` SDK on a loopback gateway."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from engine import create_app
from engine.gateway import Engine
from engine.sse import Decoder
from engine.testing import FakeOpenAI, Script, ToolCall, serve

from .helpers import ScriptedProvider, make_config, read_until

HI = [{"role": "user", "content": "hi"}]
KEY = "sk-fake-key-0123456789"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
async def gateway(aiohttp_server, aiohttp_client):
    clients: list[anthropic.AsyncAnthropic] = []

    async def start(*providers: Any, **config: Any):
        engine = Engine(make_config(**config))
        for provider in providers:
            engine.add_provider(provider)
        server = await aiohttp_server(create_app(engine=engine))
        sdk = anthropic.AsyncAnthropic(
            base_url=str(server.make_url("")).rstrip("/"), api_key="unused", max_retries=0
        )
        clients.append(sdk)
        return sdk, await aiohttp_client(server), engine

    yield start
    for sdk in clients:
        await sdk.close()


async def test_a_whole_message_from_the_mock(gateway):
    sdk, _, _ = await gateway()
    message = await sdk.messages.create(model="mock/x", max_tokens=5, messages=HI)
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].text.startswith("You said: hi.")
    assert message.stop_reason == "max_tokens"  # cut by max_tokens, as Anthropic says it
    assert message.model == "mock/x"
    assert message.usage.output_tokens == 5


async def test_the_streaming_helpers_read_the_event_sequence(gateway):
    provider = ScriptedProvider(["Hello", ", ", "world"])
    sdk, raw, _ = await gateway(provider)
    async with sdk.messages.stream(model="scripted/x", max_tokens=50, messages=HI) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello, world"
    assert final.content[0].text == "Hello, world"
    assert final.stop_reason == "end_turn"
    # On the wire: Anthropic's events, each named, in Anthropic's order.
    resp = await raw.post(
        "/v1/messages",
        json={"model": "scripted/x", "max_tokens": 50, "messages": HI, "stream": True},
    )
    events = [e for e in Decoder().feed(await resp.read()) if e.event != "ping"]
    assert [e.event for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(json.loads(e.data)["type"] == e.event for e in events)
    assert resp.headers["X-Stream-Id"].startswith("msg_")


async def test_a_tool_loop_through_the_mock(gateway):
    sdk, _, _ = await gateway()
    question = {"role": "user", "content": "What is the weather? Use get_weather."}
    first = await sdk.messages.create(
        model="mock/x", max_tokens=100, tools=[WEATHER], messages=[question]
    )
    assert first.stop_reason == "tool_use"
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "get_weather" and set(use.input) == {"city"}
    result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C"}],
    }
    second = await sdk.messages.create(
        model="mock/x",
        max_tokens=100,
        tools=[WEATHER],
        messages=[question, {"role": "assistant", "content": first.content}, result],
    )
    assert second.content[0].text.startswith("Tool get_weather returned: 21 C.")


async def test_a_tool_loop_reaches_openai_as_openai_speaks_it(gateway):
    fake = FakeOpenAI()
    async with serve(fake.app()) as url:
        providers = {"openai": {"api_key": KEY, "base_url": f"{url}/v1", "max_retries": 0}}
        sdk, _, _ = await gateway(providers=providers)
        fake.push(Script(tokens=[], finish="tool_calls", tool_call=ToolCall("get_weather")))
        async with sdk.messages.stream(
            model="openai/gpt-test", max_tokens=100, tools=[WEATHER], messages=HI
        ) as stream:
            first = await stream.get_final_message()
        (use,) = [block for block in first.content if block.type == "tool_use"]
        assert (use.id, use.input) == ("call_0001", {"city": "Paris"})
        assert first.stop_reason == "tool_use"
        result = {"type": "tool_result", "tool_use_id": use.id, "content": "21 C"}
        await sdk.messages.create(
            model="openai/gpt-test",
            max_tokens=100,
            tools=[WEATHER],
            messages=[
                *HI,
                {"role": "assistant", "content": first.content},
                {"role": "user", "content": [result]},
            ],
        )
    sent = fake.requests[1].json
    function = sent["messages"][1]["tool_calls"][0]["function"]
    assert function["name"] == "get_weather"
    assert json.loads(function["arguments"]) == {"city": "Paris"}  # the tool_use input
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "call_0001", "content": "21 C"}
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    assert sent["max_completion_tokens"] == 100


async def test_an_image_reaches_the_provider_as_a_part(gateway):
    provider = ScriptedProvider(["a cat"])
    sdk, _, _ = await gateway(provider)
    image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    await sdk.messages.create(
        model="scripted/x",
        max_tokens=10,
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "what?"}, {"type": "image", "source": image}],
            }
        ],
    )
    ((messages, _),) = provider.requests
    part = messages[0].content[1]
    assert part.image_url.url == "data:image/png;base64,iVBORw0KGgo="


async def test_errors_are_anthropics_and_the_sdk_raises_its_classes(gateway):
    sdk, raw, _ = await gateway()
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk.messages.create(
            model="mock/x", max_tokens=5, messages=HI, extra_body={"top_k": 3}
        )
    assert "top_k" in info.value.message
    with pytest.raises(anthropic.NotFoundError):
        await sdk.messages.create(model="nope/x", max_tokens=5, messages=HI)
    resp = await raw.post("/v1/messages", json={"model": "mock/x", "messages": HI})
    assert resp.status == 400
    body = await resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


async def test_count_tokens_is_an_estimate(gateway):
    sdk, _, _ = await gateway()
    short = await sdk.messages.count_tokens(model="mock/x", messages=HI)
    long = await sdk.messages.count_tokens(
        model="mock/x", messages=[{"role": "user", "content": "word " * 400}]
    )
    assert 0 < short.input_tokens < long.input_tokens


async def test_stop_ends_the_stream_normally(gateway):
    import asyncio

    gate = asyncio.Event()
    provider = ScriptedProvider([f"t{i} " for i in range(6)], gate=gate, hold_from=2)
    _, raw, _ = await gateway(provider)
    resp = await raw.post(
        "/v1/messages",
        json={"model": "scripted/x", "max_tokens": 50, "messages": HI, "stream": True},
    )
    await read_until(resp, 4)
    stop = await raw.post(f"/v1/streams/{resp.headers['X-Stream-Id']}/stop")
    assert (await stop.json())["state"] == "stopped"
    events = Decoder().feed(await resp.read())
    assert events[-1].event == "message_stop"
    assert provider.closed.is_set()


async def test_memory_headers_keep_the_conversation(gateway):
    sdk, raw, _ = await gateway()
    headers = {"X-Session-Parent": "Claude", "X-Session-Id": "1"}
    await sdk.messages.create(model="mock/x", max_tokens=3, messages=HI, extra_headers=headers)
    stored = (await (await raw.get("/v1/memory/Claude/1")).json())["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"]


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
    "required": ["city", "temp_c"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("name", ["openai", "anthropic", "gemini"])
async def test_structured_output_and_an_image_through_every_provider(gateway, name):
    from engine.testing import FAKES

    fake = FAKES[name]()
    async with serve(fake.app()) as url:
        base = f"{url}/v1" if name == "openai" else url
        providers = {name: {"api_key": KEY, "base_url": base, "max_retries": 0}}
        sdk, _, _ = await gateway(providers=providers)
        fake.push(Script(tokens=['{"city": "Paris", ', '"temp_c": 21.5}']))
        image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
        message = await sdk.messages.create(
            model=f"{name}/test-model",
            max_tokens=100,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather in this picture?"},
                        {"type": "image", "source": image},
                    ],
                }
            ],
            extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
        )
    assert json.loads(message.content[0].text) == {"city": "Paris", "temp_c": 21.5}
    body = json.dumps(fake.requests[0].json)
    assert "iVBORw0KGgo=" in body  # the image, in the provider's own form
    assert '"temp_c"' in body  # and the schema
    assert not getattr(fake, "rejected", [])
