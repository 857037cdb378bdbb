"""/v1/responses through every provider's fake, bad input answered in OpenAI's shape, a
response private to the key that made it, and a stream cut and resumed under both
handler-cancellation modes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest

from engine import create_app
from engine.gateway import Engine
from engine.sse import Decoder
from engine.testing import FAKES, Script, ToolCall, serve

from .helpers import ScriptedProvider, make_config, running

KEY = "sk-fake-key-0123456789"
APP = "sk-sse-" + "k" * 43
OTHER = "sk-sse-" + "o" * 43
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
PROVIDERS = ["anthropic", "gemini", "openai"]


@pytest.fixture
async def upstream(request, aiohttp_server):
    """The fake of ``request.param`` (strict where it can be) and an SDK on a gateway to it."""
    name = request.param
    fake = FAKES[name](strict=True) if name == "anthropic" else FAKES[name]()
    async with serve(fake.app()) as url:
        base = f"{url}/v1" if name == "openai" else url
        config = make_config(providers={name: {"api_key": KEY, "base_url": base, "max_retries": 0}})
        server = await aiohttp_server(create_app(config))
        sdk = openai.AsyncOpenAI(
            base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0
        )
        try:
            yield name, fake, sdk
        finally:
            await sdk.close()


@pytest.mark.parametrize("upstream", PROVIDERS, indirect=True)
async def test_a_streamed_response_from_every_provider(upstream):
    name, fake, sdk = upstream
    fake.push(Script(tokens=["Hello", ",", " world", "!"]))
    async with sdk.responses.stream(model=f"{name}/test-model", input="hi") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == "Hello, world!"
    assert final.status == "completed" and final.output_text == "Hello, world!"
    assert final.model == f"{name}/test-model"
    assert final.usage.input_tokens == 9 and final.usage.output_tokens == 4
    assert not getattr(fake, "rejected", [])


@pytest.mark.parametrize("upstream", PROVIDERS, indirect=True)
async def test_a_function_call_loop_through_every_provider(upstream):
    name, fake, sdk = upstream
    fake.push(Script(tokens=[], finish="tool_calls", tool_call=ToolCall("get_weather")))
    first = await sdk.responses.create(
        model=f"{name}/test-model", input="Weather in Paris?", tools=[WEATHER], stream=True
    )
    events = [event async for event in first]
    final = events[-1].response
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert final.status == "completed"
    second = await sdk.responses.create(
        model=f"{name}/test-model",
        previous_response_id=final.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21 C"}],
        tools=[WEATHER],
    )
    assert second.output_text == "Hello, world!"
    assert not getattr(fake, "rejected", [])  # the fake checked the call/result pairing
    sent = json.dumps(fake.requests[1].json)
    assert "21 C" in sent and "get_weather" in sent and "Weather in Paris?" in sent


PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize("upstream", PROVIDERS, indirect=True)
async def test_an_input_image_goes_through_every_provider(upstream):
    name, fake, sdk = upstream
    message = {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": PIXEL, "detail": "auto"},
        ],
    }
    response = await sdk.responses.create(model=f"{name}/test-model", input=[message])
    assert response.output_text == "Hello, world!"
    assert not getattr(fake, "rejected", [])
    assert PIXEL.partition(",")[2] in json.dumps(fake.requests[0].json)  # the image itself


@pytest.mark.parametrize("upstream", ["anthropic", "gemini"], indirect=True)
async def test_max_output_tokens_is_incomplete_on_every_provider(upstream):
    name, fake, sdk = upstream
    fake.push(Script(finish="length"))
    response = await sdk.responses.create(
        model=f"{name}/test-model", input="hi", max_output_tokens=4
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("upstream", ["anthropic"], indirect=True)
async def test_an_upstream_failure_mid_stream_is_an_error_event_and_a_failed_response(upstream):
    name, fake, sdk = upstream
    fake.push(Script(error_after=2, error_type="overloaded_error"))
    stream = await sdk.responses.create(model=f"{name}/test-model", input="hi", stream=True)
    seen = []
    with pytest.raises(openai.APIError):
        async for event in stream:
            seen.append(event)
    rid = seen[0].response.id
    failed = await sdk.responses.retrieve(rid)
    assert failed.status == "failed" and failed.error is not None
    assert failed.output_text == "Hello,"


@pytest.mark.parametrize("upstream", ["openai"], indirect=True)
@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_refusal_is_the_sdks_error_before_any_event(upstream, stream):
    name, fake, sdk = upstream
    fake.push(Script(status=429, retry_after="7"))
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.responses.create(model=f"{name}/test-model", input="hi", stream=stream)
    assert caught.value.response.headers["Retry-After"] == "7"
    assert caught.value.body["type"] == "rate_limit_error"


# -- bad input, in OpenAI's shape ------------------------------------------------------------


@pytest.fixture
async def gateway(aiohttp_server):
    servers: list[Any] = []

    async def start(**config: Any):
        engine = Engine(make_config(**config))
        server = await aiohttp_server(create_app(engine=engine))
        servers.append(server)
        return server

    return start


def sdk_for(server, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": [{"type": "telepathy", "x": 1}]}, "input[0].type", "telepathy"),
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "input[0].type", "hosted"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
            "input_file",
        ),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type", "web_search"),
        (
            {"input": [{"type": "item_reference", "id": "msg_1"}]},
            "input[0].type",
            "previous_response_id",
        ),
        (
            {
                "input": [
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c", "output": "x", "pi": 3},
                ]
            },
            "input[1].pi",
            "pi",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call",
                        "call_id": "c",
                        "name": "f",
                        "arguments": "{}",
                        "async": True,
                    }
                ]
            },
            "input[0].async",
            "asynchronous",
        ),
        ({"input": "hi", "conversation": "conv_1"}, "conversation", "previous_response_id"),
        ({"input": "hi", "prompt": {"id": "p"}}, "prompt", "instructions"),
        ({"input": "hi", "truncation": "auto"}, "truncation", "auto"),
        ({"input": "hi", "top_logprobs": 3}, "top_logprobs", "log probabilities"),
        ({"input": "hi", "max_tool_calls": 3}, "max_tool_calls", "max_tool_calls"),
        ({"input": "hi", "temperature": 7}, "temperature", "temperature"),
        ({"input": "hi", "telepathy": True}, "telepathy", "telepathy"),
        ({"input": "hi", "reasoning": {"summary": "auto"}}, "reasoning.summary", "summary"),
        ({"input": "hi", "include": ["file_search_call.results"]}, "include[0]", "not supported"),
    ],
)
async def test_bad_input_is_an_openai_400_naming_the_field(gateway, body, param, words):
    server = await gateway()
    async with sdk_for(server) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            # (extra_body: the SDK would refuse an unknown keyword itself.)
            rest = {k: v for k, v in body.items() if k != "input"}
            await sdk.responses.create(model="mock/x", input=body["input"], extra_body=rest)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


async def test_previous_response_id_unknown_or_another_keys_is_404(gateway):
    server = await gateway(keys={"app": {"key": APP}, "other": {"key": OTHER}})
    async with sdk_for(server, APP) as app, sdk_for(server, OTHER) as other:
        mine = await app.responses.create(model="mock/x", input="hi")
        with pytest.raises(openai.NotFoundError) as caught:
            await other.responses.create(model="mock/x", input="more", previous_response_id=mine.id)
        assert caught.value.body["param"] == "previous_response_id"
        with pytest.raises(openai.NotFoundError):
            await app.responses.create(
                model="mock/x", input="more", previous_response_id="resp_nothing"
            )
        # Nor may the other key read, list, cancel or delete it.
        for call in (
            other.responses.retrieve(mine.id),
            other.responses.input_items.list(mine.id),
            other.responses.cancel(mine.id),
            other.responses.delete(mine.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await call
        assert (await app.responses.retrieve(mine.id)).status == "completed"
        continued = await app.responses.create(
            model="mock/x", input="more", previous_response_id=mine.id
        )
        assert continued.status == "completed"


async def test_a_live_response_is_private_to_its_key_too(aiohttp_server):
    gate = asyncio.Event()
    engine = Engine(make_config(keys={"app": {"key": APP}, "other": {"key": OTHER}}))
    engine.add_provider(ScriptedProvider(["a", "b", "c"], gate=gate, hold_from=1))
    server = await aiohttp_server(create_app(engine=engine))
    async with sdk_for(server, APP) as app, sdk_for(server, OTHER) as other:
        created = await app.responses.create(model="scripted/x", input="hi", background=True)
        for call in (
            other.responses.retrieve(created.id),
            other.responses.retrieve(created.id, stream=True),
            other.responses.cancel(created.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await call
        gate.set()
        stream = await app.responses.retrieve(created.id, stream=True)
        assert [e.type async for e in stream][-1] == "response.completed"


async def test_starting_after_beyond_the_end_is_a_400(gateway):
    server = await gateway()
    async with sdk_for(server) as sdk:
        done = await sdk.responses.create(model="mock/x", input="hi")
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.responses.retrieve(done.id, stream=True, starting_after=10_000)
        assert caught.value.body["param"] == "starting_after"
        with pytest.raises(openai.NotFoundError):
            await sdk.responses.retrieve("resp_unknown", stream=True, starting_after=1)
        # At the very end: nothing more, and the stream simply ends.
        whole = [e async for e in await sdk.responses.retrieve(done.id, stream=True)]
        last = whole[-1].sequence_number
        assert [
            e async for e in await sdk.responses.retrieve(done.id, stream=True, starting_after=last)
        ] == []


async def test_unknown_routes_and_methods_under_v1_responses_are_openai_404s(gateway):
    server = await gateway()
    async with sdk_for(server) as sdk:
        done = await sdk.responses.create(model="mock/x", input="hi")
    async with aiohttp.ClientSession() as http:
        for method, path in (
            ("GET", "/v1/responses"),
            ("PUT", f"/v1/responses/{done.id}"),
            ("GET", f"/v1/responses/{done.id}/nothing"),
            ("POST", "/v1/responses/a/b/c"),
        ):
            async with http.request(method, server.make_url(path)) as resp:
                body = await resp.json()
            assert resp.status == 404, (method, path)
            assert body["error"]["type"] == "invalid_request_error"
            assert body["error"]["message"] == f"Invalid URL ({method} {path})"
        async with http.get(server.make_url("/v1/responses/resp_x")) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["message"] == "Response with id 'resp_x' not found."
        async with http.get(server.make_url(f"/v1/responses/{done.id}?telepathy=1")) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "telepathy"


# -- a cut and a resume, with and without handler cancellation --------------------------------


@pytest.mark.parametrize("handler_cancellation", [True, False, "serve"])
async def test_a_cut_stream_resumes_with_no_gap_and_no_duplicate(handler_cancellation):
    gate = asyncio.Event()
    provider = ScriptedProvider([f"t{i} " for i in range(8)], gate=gate, hold_from=3)
    engine = Engine(make_config())
    engine.add_provider(provider)
    app = create_app(engine=engine)
    async with running(app, handler_cancellation=handler_cancellation) as url:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{url}/v1/responses", json={"model": "scripted/x", "input": "hi", "stream": True}
            )
            decoder, seen = Decoder(), []
            while sum(e.event == "response.output_text.delta" for e in seen) < 3:
                seen += decoder.feed(await resp.content.readany())
            resp.close()  # cut mid-stream
            await asyncio.sleep(0)
            gate.set()  # the generation goes on without a reader
            rid = json.loads(seen[0].data)["response"]["id"]
            last = json.loads(seen[-1].data)["sequence_number"]
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused") as sdk:
            rest = [
                e async for e in await sdk.responses.retrieve(rid, stream=True, starting_after=last)
            ]
    numbers = [json.loads(e.data)["sequence_number"] for e in seen]
    numbers += [e.sequence_number for e in rest]
    assert numbers == list(range(len(numbers)))
    assert rest[-1].type == "response.completed"
    assert rest[-1].response.output_text == "".join(f"t{i} " for i in range(8))


async def test_a_server_that_stops_ends_a_background_response_and_its_upstream(tmp_path):
    gate = asyncio.Event()  # never set: the response would wait for ever
    provider = ScriptedProvider(["a", "b", "c"], gate=gate, hold_from=1)
    url_of_store = f"sqlite:///{tmp_path / 'memory.db'}"
    engine = Engine(make_config(memory_url=url_of_store))
    engine.add_provider(provider)
    async with running(create_app(engine=engine), handler_cancellation="serve") as url:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused") as sdk:
            created = await sdk.responses.create(model="scripted/x", input="hi", background=True)
            await provider.started.wait()
    assert provider.closed.is_set()
    # What it had is stored, cancelled: a gateway started again on the same store serves it.
    again = Engine(make_config(memory_url=url_of_store))
    async with running(create_app(engine=again), handler_cancellation="serve") as url:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused") as sdk:
            got = await sdk.responses.retrieve(created.id)
    assert got.status == "cancelled" and got.output_text == "a"
