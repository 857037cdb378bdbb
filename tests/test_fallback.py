"""Fallbacks: a model name whose targets are tried in turn, only before the first byte."""

from __future__ import annotations

import inspect
import json

import openai
import pytest

from engine import create_app
from engine.config import Config
from engine.errors import InvalidFields
from engine.gateway import Engine
from engine.sse import Decoder
from engine.testing import FakeAnthropic, FakeOpenAI, Script, serve

from .helpers import make_config

KEY = "sk-fake-key-0123456789"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def two(aiohttp_server, aiohttp_client):
    """``smart`` = the fake OpenAI first, the fake Anthropic second."""
    first, second = FakeOpenAI(), FakeAnthropic()
    async with serve(first.app()) as url1, serve(second.app()) as url2:
        config = make_config(
            providers={
                "openai": {"api_key": KEY, "base_url": f"{url1}/v1", "max_retries": 0},
                "anthropic": {"api_key": KEY, "base_url": url2, "max_retries": 0},
            },
            fallbacks={"smart": ["openai/gpt-test", "anthropic/claude-test"]},
        )
        server = await aiohttp_server(create_app(engine=Engine(config)))
        sdk = openai.AsyncOpenAI(
            base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0
        )
        yield first, second, sdk, await aiohttp_client(server)
        await sdk.close()


@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.parametrize("stream", [True, False])
async def test_a_failure_before_the_first_byte_goes_to_the_next_target(two, status, stream):
    first, second, sdk, _ = two
    first.push(Script(status=status))
    response = await sdk.chat.completions.with_raw_response.create(
        model="smart", messages=HI, stream=stream
    )
    assert response.headers["X-Model-Target"] == "anthropic/claude-test"
    reply = response.parse()
    if inspect.isawaitable(reply):
        reply = await reply
    if stream:
        chunks = [chunk async for chunk in reply]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        model = chunks[0].model
    else:
        text, model = reply.choices[0].message.content, reply.model
    assert text == "Hello, world!"
    assert model == "anthropic/claude-test"  # the target that answered
    assert (len(first.requests), len(second.requests)) == (1, 1)


async def test_the_first_target_answers_when_it_can(two):
    first, second, sdk, _ = two
    reply = await sdk.chat.completions.create(model="smart", messages=HI)
    assert reply.model == "openai/gpt-test"
    assert (len(first.requests), len(second.requests)) == (1, 0)


async def test_a_bad_request_is_not_tried_elsewhere(two):
    """A 400 upstream is the request's to fix: another provider would not make it right."""
    first, second, sdk, _ = two
    first.push(Script(status=400))
    with pytest.raises(openai.APIStatusError):
        await sdk.chat.completions.create(model="smart", messages=HI)
    assert (len(first.requests), len(second.requests)) == (1, 0)


async def test_a_failure_after_the_first_byte_is_reported_never_replayed(two):
    first, second, sdk, _ = two
    first.push(Script(tokens=["a ", "b ", "c "], drop_after=1))
    stream = await sdk.chat.completions.create(model="smart", messages=HI, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    assert len(second.requests) == 0


async def test_when_every_target_fails_the_last_failure_is_the_answer(two):
    first, second, sdk, _ = two
    first.push(Script(status=503))
    second.push(Script(status=529))
    with pytest.raises(openai.InternalServerError):
        await sdk.chat.completions.create(model="smart", messages=HI)
    assert (len(first.requests), len(second.requests)) == (1, 1)


async def test_the_native_stream_names_a_fallback_as_its_provider(two):
    first, second, _, raw = two
    first.push(Script(status=503))
    resp = await raw.post("/v1/chat/stream", json={"provider": "smart", "messages": HI})
    events = Decoder().feed(await resp.read())
    start = json.loads(events[0].data)
    assert start["model"] == "anthropic/claude-test"
    assert events[-1].event == "done"


@pytest.mark.parametrize(
    "fallbacks",
    [{"smart": []}, {"smart": ["no-slash"]}, {"bad name!": ["openai/x"]}, {"s": ["a/b"] * 9}],
)
def test_a_malformed_fallback_is_a_config_error(fallbacks):
    with pytest.raises(InvalidFields, match="fallbacks"):
        Config.load(environ={}, fallbacks=fallbacks)
