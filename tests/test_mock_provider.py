"""The mock provider: its limits, and the rules of what it answers.

A request may ask the mock for up to 1,000,000 chunks of 65,536 characters (the
``Options`` bounds). Streamed, that must cost memory independent of its length
and leave the loop to the other streams; whole (``send``), it is refused above
``MAX_WHOLE_REPLY_CHARS`` instead of being built.

The rules (the module's docstring): finish reasons, scripted tool calls, the
answer to a tool result, JSON outputs, images and audio acknowledged; each the
same streamed and whole, and the same every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import json
import tracemalloc
import uuid
import zlib
from typing import Literal

import msgspec
import pytest

from engine import create_app
from engine.client import iter_events
from engine.errors import InvalidFields
from engine.providers.mock import (
    _WORDS,
    DEFAULT_CHUNKS,
    MAX_WHOLE_REPLY_CHARS,
    MockProvider,
    mock_text,
    synthesize,
)
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
    TextPart,
    ToolCall,
)

from .helpers import make_config

MiB = 1024 * 1024
HI = [Message(role="user", content="hi")]
IDLE = [Message(role="user", content="idle")]


def reference_text(last: str, length: int) -> str:
    """The mock's text as it was built before it became lazy (the whole reply, word by word)."""
    parts = [f"You said: {last}. "]
    size = len(parts[0])
    seed = zlib.crc32(last.encode())
    while size < length:
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        word = _WORDS[seed % len(_WORDS)] + " "
        parts.append(word)
        size += len(word)
    return "".join(parts)[:length]


def options(max_tokens: int, token_size: int, interval_ms: int = 0) -> Options:
    return Options(max_tokens=max_tokens, token_size=token_size, interval_ms=interval_ms)


# -- lazy generation -------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [100, 1_000_000])
async def test_a_huge_stream_holds_little_memory(max_tokens):
    # 1,000,000 x 65,536 is 65 GB of text; the first few chunks must not cost it.
    provider = MockProvider(model="mock-1")
    tracemalloc.start()
    try:
        chunks = await provider.open(HI, options=options(max_tokens, 65_536))
        async with chunks:
            sizes = [len((await anext(chunks)).content) for _ in range(8)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sizes == [65_536] * 8
    assert peak < 2 * MiB


async def test_idle_streams_of_a_million_tokens_hold_little_memory():
    # What a load test of idle streams holds (the same request each time, as
    # benchmarks/bench_concurrency.py sends): each has sent its first chunk.
    provider = MockProvider(model="mock-1")
    streams = []
    tracemalloc.start()
    try:
        for _ in range(1_000):
            chunks = await provider.open(IDLE, options=options(1_000_000, 4, 60_000))
            await anext(chunks)
            streams.append(chunks)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        for chunks in streams:
            await chunks.aclose()
    # Under 2 KiB a stream: the 16 KiB of words they repeat are shared, not copied.
    assert held < 2 * MiB


@pytest.mark.parametrize(
    ("content", "max_tokens", "token_size"),
    [
        ("hi", 40_000, 1),
        ("hi", 10_000, 7),  # 7 divides no period of whole words here
        ("hi", 20, 4_096),
        ("hi", 5, 65_536),  # each chunk holds the period several times
        ("hello there", 3, 5),  # within the echo
        ("héllo wörld", 5_000, 13),
        ("x" * 20_000, 3_000, 11),  # an echo longer than the period
    ],
)
async def test_the_stream_is_mock_text_and_starts_as_before(content, max_tokens, token_size):
    messages = [Message(role="user", content=content)]
    provider = MockProvider(model="mock-1")
    chunks = await provider.open(messages, options=options(max_tokens, token_size))
    async with chunks:
        received = [chunk async for chunk in chunks]
    text = "".join(c.content for c in received)

    assert [len(c.content) for c in received] == [token_size] * max_tokens
    assert text == mock_text(messages, max_tokens * token_size)
    # The echo and the first 16 KiB of words are exactly the text of before.
    before = min(len(text), len(f"You said: {content}. ") + 16 * 1024)
    assert text[:before] == reference_text(content, before)
    assert [c.finish_reason for c in received[:-1]] == [None] * (max_tokens - 1)
    assert received[-1].finish_reason == "length"  # max_tokens cut it
    assert received[-1].usage is not None
    assert received[-1].usage.completion_tokens == max_tokens


# -- yielding ----------------------------------------------------------------------------


@pytest.mark.parametrize("token_size", [16_384, 65_536])
async def test_a_fast_stream_of_large_chunks_lets_another_stream_progress(token_size):
    provider = MockProvider(model="mock-1")
    big = await provider.open(HI, options=options(64, token_size))
    small = await provider.open(HI, options=options(10_000, 4))
    received_by_small = 0

    async def read_small() -> None:
        nonlocal received_by_small
        async for _ in small:
            received_by_small += 1

    # Created before the big stream is read, so it runs at the big stream's
    # first yield to the loop (the loop runs ready tasks in order): no race.
    task = asyncio.create_task(read_small())
    sent_by_big = 0
    try:
        async with big:
            while received_by_small == 0 and sent_by_big < 64 * token_size:
                sent_by_big += len((await anext(big)).content)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await small.aclose()
    assert received_by_small > 0
    # Yields come at least every 64 KiB; the first chunk after one is counted too.
    assert sent_by_big <= 64 * 1024 + token_size


# -- the whole reply's bound -------------------------------------------------------------


async def test_send_refuses_a_whole_reply_above_the_bound():
    provider = MockProvider(model="mock-1")
    with pytest.raises(InvalidFields) as caught:
        await provider.send(HI, max_tokens=17, token_size=65_536, interval_ms=0)
    message = caught.value.message
    assert "max_tokens" in message
    assert "token_size" in message
    assert str(MAX_WHOLE_REPLY_CHARS) in message


async def test_send_gives_a_whole_reply_at_the_bound():
    provider = MockProvider(model="mock-1")
    reply = await provider.send(HI, max_tokens=16, token_size=65_536, interval_ms=0)
    assert len(reply.content) == MAX_WHOLE_REPLY_CHARS
    assert reply.content == mock_text(HI, MAX_WHOLE_REPLY_CHARS)
    assert reply.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 16


@pytest.fixture
async def client(aiohttp_client):
    return await aiohttp_client(create_app(make_config()))


async def test_post_chat_above_the_bound_is_422(client):
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"max_tokens": 17, "token_size": 65_536, "interval_ms": 0},
    }
    resp = await client.post("/v1/chat", json=body)
    assert resp.status == 422
    error = await resp.json()
    assert error["type"] == "invalid_fields"
    assert "max_tokens" in error["message"]
    assert "token_size" in error["message"]


async def test_chat_completions_above_the_bound_is_400(client):
    # token_size is the mock's default, 4: 300,000 of them are over 1 MiB.
    body = {"model": "mock/x", "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post("/v1/chat/completions", json={**body, "max_tokens": 300_000})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "max_tokens" in error["message"]


# -- over HTTP ---------------------------------------------------------------------------


async def test_a_huge_stream_streams_while_the_server_answers(client):
    query = {"q": "x", "max_tokens": "1000000", "token_size": "65536", "interval_ms": "0"}
    async with client.get("/v1/chat/stream", params=query) as resp:
        assert resp.status == 200
        contents = []
        async with contextlib.aclosing(iter_events(resp)) as events:
            async for event in events:
                if event.event == "message":
                    contents.append(json.loads(event.data)["content"])
                    if len(contents) == 3:
                        break
        # The big stream is open (and its client not reading): others still get answers.
        health = await client.get("/healthz")
        assert health.status == 200
        assert (await health.json())["status"] == "ok"
    assert "".join(contents) == mock_text([Message(role="user", content="x")], 3 * 65_536)


# -- the rules: finish reasons ---------------------------------------------------------


async def stream_of(messages, opts):
    chunks = await MockProvider(model="mock-1").open(messages, options=opts)
    async with chunks:
        return [chunk async for chunk in chunks]


async def test_without_max_tokens_the_reply_is_the_default_length_and_stops():
    opts = Options(interval_ms=0)
    chunks = await stream_of(HI, opts)
    assert len(chunks) == DEFAULT_CHUNKS
    assert [c.finish_reason for c in chunks] == [None] * (DEFAULT_CHUNKS - 1) + ["stop"]
    reply = await MockProvider(model="mock-1").send(HI, options=opts)
    assert reply.content == "".join(c.content for c in chunks)
    assert reply.finish_reason == "stop"


@pytest.mark.parametrize("max_tokens", [1, 3, DEFAULT_CHUNKS, 500])
async def test_max_tokens_cuts_the_reply_and_ends_with_length(max_tokens):
    opts = options(max_tokens, 4)
    chunks = await stream_of(HI, opts)
    assert len(chunks) == max_tokens
    assert chunks[-1].finish_reason == "length"
    assert all(c.finish_reason is None for c in chunks[:-1])
    reply = await MockProvider(model="mock-1").send(HI, options=opts)
    assert reply.finish_reason == "length"
    assert reply.content == "".join(c.content for c in chunks)


# -- the rules: tool calls -------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
        },
    },
}
# None required: all its properties are given.
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {
                "zone": {"type": "string"},
                "precise": {"type": "boolean"},
                "offsets": {"type": "array", "items": {"type": "number"}},
            },
        },
    },
}
PING = {"type": "function", "function": {"name": "ping"}}  # no parameters at all
TOOLS = [WEATHER, TIME, PING]


def user(text):
    return [Message(role="user", content=text)]


def reassemble(chunks):
    """Whole calls from streamed deltas, the way an OpenAI client joins them."""
    calls = {}
    for chunk in chunks:
        for delta in chunk.tool_calls or ():
            if "id" in delta:
                assert delta["index"] not in calls
                assert delta["type"] == "function"
                assert delta["function"]["arguments"] == ""
                calls[delta["index"]] = {
                    "id": delta["id"],
                    "type": "function",
                    "function": {"name": delta["function"]["name"], "arguments": ""},
                }
            else:
                assert set(delta) == {"index", "function"}
                assert set(delta["function"]) == {"arguments"}
                calls[delta["index"]]["function"]["arguments"] += delta["function"]["arguments"]
    return [calls[index] for index in sorted(calls)]


async def test_a_tool_call_streams_as_openai_deltas_and_sends_whole():
    messages = user("What is the weather in Paris? Use get_weather.")
    opts = Options(tools=TOOLS, interval_ms=0)
    chunks = await stream_of(messages, opts)

    assert all(c.content == "" for c in chunks)
    assert [c.finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["tool_calls"]
    assert chunks[-1].tool_calls is None
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(chunks)
    assert chunks[0].tool_calls == [
        {
            "index": 0,
            "id": "call_mock_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
    ]
    # The arguments come in more than one piece, none alone a JSON text.
    pieces = [d["function"]["arguments"] for c in chunks[1:] for d in c.tool_calls or ()]
    assert len(pieces) == 2
    (call,) = reassemble(chunks)
    arguments = json.loads(call["function"]["arguments"])
    assert set(arguments) == {"city", "unit"}  # the required ones
    assert isinstance(arguments["city"], str)
    assert arguments["city"]
    assert arguments["unit"] == "celsius"

    reply = await MockProvider(model="mock-1").send(messages, options=opts)
    assert reply.content == ""
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls == [call]
    assert reply.usage == chunks[-1].usage


async def test_tools_mentioned_are_called_in_parallel_in_the_order_of_tools():
    messages = user("Call get_time, then get_weather.")
    reply = await MockProvider(model="mock-1").send(
        messages, options=Options(tools=TOOLS, interval_ms=0)
    )
    names = [c["function"]["name"] for c in reply.tool_calls]
    assert names == ["get_weather", "get_time"]
    assert [c["id"] for c in reply.tool_calls] == ["call_mock_1", "call_mock_2"]
    time_arguments = json.loads(reply.tool_calls[1]["function"]["arguments"])
    assert set(time_arguments) == {"zone", "precise", "offsets"}  # none required: all
    assert isinstance(time_arguments["zone"], str)
    assert time_arguments["precise"] is True
    assert isinstance(time_arguments["offsets"], list)
    assert all(isinstance(x, int | float) for x in time_arguments["offsets"])

    chunks = await stream_of(messages, Options(tools=TOOLS, interval_ms=0))
    assert reassemble(chunks) == reply.tool_calls
    assert sorted({d["index"] for c in chunks for d in c.tool_calls or ()}) == [0, 1]


async def test_parallel_tool_calls_false_calls_only_the_first():
    messages = user("Call get_time, then get_weather.")
    opts = Options(tools=TOOLS, parallel_tool_calls=False, interval_ms=0)
    reply = await MockProvider(model="mock-1").send(messages, options=opts)
    assert [c["function"]["name"] for c in reply.tool_calls] == ["get_weather"]
    assert reassemble(await stream_of(messages, opts)) == reply.tool_calls


@pytest.mark.parametrize(
    ("text", "choice", "called"),
    [
        ("hello", None, []),  # auto, nothing mentioned: text
        ("hello", "auto", []),
        ("hello", "required", ["get_weather"]),  # the first tool
        ("please ping", "required", ["ping"]),  # the one mentioned
        ("please ping", "auto", ["ping"]),
        ("please ping", "none", []),
        ("please ping", {"type": "function", "function": {"name": "get_time"}}, ["get_time"]),
        ("try get_weather_v2 or pinging", "auto", []),  # whole words only
    ],
)
async def test_tool_choice_decides_the_calls(text, choice, called):
    opts = Options(tools=TOOLS, tool_choice=choice, interval_ms=0)
    reply = await MockProvider(model="mock-1").send(user(text), options=opts)
    assert [c["function"]["name"] for c in reply.tool_calls or ()] == called
    if called:
        assert reply.finish_reason == "tool_calls"
        assert json.loads(reply.tool_calls[0]["function"]["arguments"]) is not None
        if called == ["ping"]:
            assert reply.tool_calls[0]["function"]["arguments"] == "{}"
    else:
        assert reply.tool_calls is None
        assert reply.content == mock_text(user(text), DEFAULT_CHUNKS * 4)
        assert reply.finish_reason == "stop"


def weather_conversation(*results):
    """A user asks, the assistant called get_weather (and get_time), the tools answered."""
    calls = [
        ToolCall(id="call_mock_1", function=FunctionCall(name="get_weather", arguments="{}")),
        ToolCall(id="call_mock_2", function=FunctionCall(name="get_time", arguments="{}")),
    ][: len(results)]
    return [
        Message(role="user", content="The weather in Paris? get_weather"),
        Message(role="assistant", content=None, tool_calls=calls),
        *(
            Message(role="tool", tool_call_id=call.id, content=result)
            for call, result in zip(calls, results, strict=True)
        ),
    ]


async def test_after_a_tool_result_it_says_what_the_tool_returned():
    messages = weather_conversation("sunny, 21 C")
    opts = Options(tools=TOOLS, interval_ms=0)  # tools still offered: the last message decides
    chunks = await stream_of(messages, opts)
    text = "".join(c.content for c in chunks)
    assert text.startswith("Tool get_weather returned: sunny, 21 C. ")
    assert len(text) > len("Tool get_weather returned: sunny, 21 C. ")  # then the usual words
    assert text == mock_text(messages, DEFAULT_CHUNKS * 4)
    assert all(c.tool_calls is None for c in chunks)
    assert chunks[-1].finish_reason == "stop"
    reply = await MockProvider(model="mock-1").send(messages, options=opts)
    assert (reply.content, reply.finish_reason, reply.tool_calls) == (text, "stop", None)

    cut = await MockProvider(model="mock-1").send(
        messages, options=Options(tools=TOOLS, max_tokens=3, token_size=5, interval_ms=0)
    )
    assert (cut.content, cut.finish_reason) == ("Tool get_weathe", "length")


async def test_after_parallel_tool_results_it_says_each():
    messages = weather_conversation("sunny", "noon")
    reply = await MockProvider(model="mock-1").send(messages, max_tokens=20, interval_ms=0)
    assert reply.content.startswith(
        "Tool get_weather returned: sunny. Tool get_time returned: noon. "
    )


async def test_call_ids_continue_from_the_conversation():
    messages = [
        *weather_conversation("sunny", "noon"),
        Message(role="user", content="and ping"),
    ]
    reply = await MockProvider(model="mock-1").send(
        messages, options=Options(tools=TOOLS, interval_ms=0)
    )
    assert [(c["id"], c["function"]["name"]) for c in reply.tool_calls] == [("call_mock_3", "ping")]


# -- the rules: JSON -------------------------------------------------------------------


@pytest.mark.parametrize("token_size", [1, 5, 65_536])
async def test_json_object_is_a_json_object_in_chunks_of_token_size(token_size):
    opts = Options(response_format=JSONObjectFormat(), token_size=token_size, interval_ms=0)
    chunks = await stream_of(HI, opts)
    document = "".join(c.content for c in chunks)
    assert json.loads(document) == {"reply": "You said: hi."}
    assert len(chunks) == -(-len(document) // token_size)
    assert all(len(c.content) == token_size for c in chunks[:-1])
    assert 1 <= len(chunks[-1].content) <= token_size
    assert [c.finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(chunks)
    reply = await MockProvider(model="mock-1").send(HI, options=opts)
    assert (reply.content, reply.finish_reason) == (document, "stop")


async def test_max_tokens_does_not_cut_a_json_document():
    opts = Options(response_format=JSONObjectFormat(), max_tokens=1, interval_ms=0)
    chunks = await stream_of(HI, opts)
    assert json.loads("".join(c.content for c in chunks)) == {"reply": "You said: hi."}
    assert chunks[-1].finish_reason == "stop"


# What Pydantic writes for nested models: $defs, $ref, an enum, a list of
# objects, an optional field (anyOf with null, not required), a const.
ORDER = {
    "$defs": {
        "Color": {"enum": ["red", "green"], "title": "Color", "type": "string"},
        "Item": {
            "properties": {
                "name": {"title": "Name", "type": "string"},
                "qty": {"minimum": 2, "title": "Qty", "type": "integer"},
                "price": {"exclusiveMaximum": 1, "exclusiveMinimum": 0, "type": "number"},
            },
            "required": ["name", "qty", "price"],
            "title": "Item",
            "type": "object",
        },
        "Address": {
            "properties": {
                "street": {"title": "Street", "type": "string"},
                "zip": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            },
            "required": ["street"],
            "title": "Address",
            "type": "object",
        },
    },
    "properties": {
        "title": {"maxLength": 20, "minLength": 12, "title": "Title", "type": "string"},
        "color": {"$ref": "#/$defs/Color"},
        "address": {"$ref": "#/$defs/Address"},
        "items": {"items": {"$ref": "#/$defs/Item"}, "minItems": 1, "type": "array"},
        "done": {"title": "Done", "type": "boolean"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "kind": {"const": "order", "type": "string"},
    },
    "required": ["title", "color", "address", "items", "done", "kind"],
    "title": "Order",
    "type": "object",
}


def order_format():
    return JSONSchemaFormat(json_schema=JSONSchema(name="Order", schema=ORDER, strict=True))


async def test_json_schema_gives_a_document_that_follows_the_schema():
    opts = Options(response_format=order_format(), token_size=7, interval_ms=0)
    chunks = await stream_of(HI, opts)
    order = json.loads("".join(c.content for c in chunks))
    assert chunks[-1].finish_reason == "stop"

    assert set(order) == {"title", "color", "address", "items", "done", "kind"}  # no "note"
    assert isinstance(order["title"], str)
    assert 12 <= len(order["title"]) <= 20
    assert order["color"] in ("red", "green")
    assert set(order["address"]) == {"street"}
    assert isinstance(order["address"]["street"], str)
    assert isinstance(order["items"], list)
    assert len(order["items"]) >= 1
    for item in order["items"]:
        assert set(item) == {"name", "qty", "price"}
        assert isinstance(item["name"], str)
        assert isinstance(item["qty"], int)
        assert item["qty"] >= 2
        assert isinstance(item["price"], int | float)
        assert 0 < item["price"] < 1
    assert order["done"] is True
    assert order["kind"] == "order"

    reply = await MockProvider(model="mock-1").send(HI, options=opts)
    assert json.loads(reply.content) == order
    assert reply.finish_reason == "stop"


async def test_json_schema_output_validates_with_pydantic():
    pydantic = pytest.importorskip("pydantic")

    class Color(enum.StrEnum):
        red = "red"
        green = "green"

    class Item(pydantic.BaseModel):
        name: str
        qty: int = pydantic.Field(ge=2, le=5)
        price: float = pydantic.Field(gt=0, lt=1)

    class Node(pydantic.BaseModel):  # recursive: its children and its parent
        label: str
        children: list[Node] = []
        parent: Node | None

    class Order(pydantic.BaseModel):
        id: uuid.UUID
        when: datetime.datetime
        color: Color
        kind: Literal["a", "b"]
        items: list[Item] = pydantic.Field(min_length=1)
        note: str | None = None
        tree: Node
        pair: tuple[int, str]
        flags: dict[str, bool]

    schema = JSONSchema(name="Order", schema=Order.model_json_schema())
    opts = Options(response_format=JSONSchemaFormat(json_schema=schema), interval_ms=0)
    reply = await MockProvider(model="mock-1").send(HI, options=opts)
    order = Order.model_validate_json(reply.content)
    assert order.items
    chunks = await stream_of(HI, opts)
    assert "".join(c.content for c in chunks) == reply.content


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({}, {}),
        ({"type": "null"}, None),
        ({"type": ["null", "integer"]}, 1),
        ({"type": "integer", "minimum": 5}, 5),
        ({"type": "integer", "exclusiveMinimum": 5}, 6),
        ({"type": "integer", "maximum": -3}, -3),
        ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, 0.5),
        ({"type": "number", "minimum": 1.5}, 1.5),
        ({"type": "string", "format": "date"}, "2024-01-01"),
        ({"type": "string", "maxLength": 2}, "st"),
        ({"type": "string", "enum": ["b", "a"]}, "b"),
        ({"const": {"x": [1]}}, {"x": [1]}),
        ({"oneOf": [{"type": "boolean"}, {"type": "string"}]}, True),
        ({"type": "array", "maxItems": 0, "items": {"type": "string"}}, []),
        ({"type": "array", "minItems": 3, "items": {"type": "integer"}}, [1, 1, 1]),
        ({"prefixItems": [{"type": "integer"}, {"type": "boolean"}]}, [1, True]),
        (
            {
                "allOf": [
                    {"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                    {"$ref": "#/definitions/B"},
                ],
                "definitions": {"B": {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}},
            },
            {"a": 1, "b": True},
        ),
        ({"$ref": "#/definitions/X", "definitions": {"X": {"type": "integer"}}}, 1),
        ({"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}}, None),  # no end
        ({"$ref": "https://example.com/schema.json"}, None),  # not fetched
    ],
)
def test_synthesize(schema, value):
    assert synthesize(schema) == value


def test_synthesize_is_bounded_on_schemas_that_explode():
    # Ten properties, each a reference to ten more, twenty levels deep: 10**20 values.
    defs = {
        f"L{i}": {
            "type": "object",
            "properties": {f"p{j}": {"$ref": f"#/$defs/L{i + 1}"} for j in range(10)},
            "required": [f"p{j}" for j in range(10)],
        }
        for i in range(20)
    }
    defs["L20"] = {"type": "string"}
    assert len(json.dumps(synthesize({"$ref": "#/$defs/L0", "$defs": defs}))) < MiB
    many = {"type": "array", "minItems": 10**9, "items": {"type": "string", "minLength": 10**9}}
    assert len(json.dumps(synthesize(many))) < MiB


# -- the rules: images and audio -------------------------------------------------------

IMAGE = ImagePart(image_url=ImageURL(url="https://example.com/cat.png"))
AUDIO = AudioPart(input_audio=InputAudio(data="UklGRg==", format="wav"))


@pytest.mark.parametrize(
    ("parts", "echo"),
    [
        ([TextPart(text="look"), IMAGE], "You said: look [1 image]. "),
        (
            [IMAGE, TextPart(text="and this"), IMAGE, AUDIO],
            "You said: and this [2 images, 1 audio clip]. ",
        ),
        ([AUDIO], "You said: [1 audio clip]. "),
        ([TextPart(text="just text")], "You said: just text. "),
    ],
)
async def test_images_and_audio_are_acknowledged(parts, echo):
    messages = [Message(role="user", content=parts)]
    opts = options(40, 4)
    text = "".join(c.content for c in await stream_of(messages, opts))
    assert text.startswith(echo)
    assert text == mock_text(messages, 160)
    reply = await MockProvider(model="mock-1").send(messages, options=opts)
    assert reply.content == text


# -- determinism -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "opts"),
    [
        (HI, options(50, 3)),
        (user("Call get_time, then get_weather."), Options(tools=TOOLS, interval_ms=0)),
        (weather_conversation("sunny", "noon"), Options(tools=TOOLS, interval_ms=0)),
        (HI, Options(response_format=JSONObjectFormat(), interval_ms=0)),
        (HI, Options(response_format=order_format(), interval_ms=0)),
        ([Message(role="user", content=[TextPart(text="look"), IMAGE])], options(10, 9)),
    ],
)
async def test_the_same_request_gives_the_same_reply(messages, opts):
    encode = msgspec.json.encode
    first = [encode(c) for c in await stream_of(messages, opts)]
    assert [encode(c) for c in await stream_of(messages, opts)] == first
    one = await MockProvider(model="mock-1").send(messages, options=opts)
    two = await MockProvider(model="mock-2").send(messages, options=opts, model="mock-1")
    assert encode(one) == encode(two)


# -- the rules over HTTP ---------------------------------------------------------------


async def test_native_chat_answers_with_tool_calls(client):
    body = {
        "messages": [{"role": "user", "content": "get_weather in Paris"}],
        "options": {"tools": TOOLS, "interval_ms": 0},
    }
    resp = await client.post("/v1/chat", json=body)
    assert resp.status == 200
    reply = await resp.json()
    assert reply["finish_reason"] == "tool_calls"
    ((call),) = reply["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["unit"] == "celsius"


async def test_chat_completions_streams_tool_calls_and_json(client):
    body = {
        "model": "mock/x",
        "messages": [{"role": "user", "content": "get_time and get_weather"}],
        "tools": TOOLS,
        "stream": True,
    }
    async with client.post("/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        datas = [e.data async for e in iter_events(resp)]
    assert datas[-1] == "[DONE]"
    choices = [json.loads(d)["choices"][0] for d in datas[:-1]]
    deltas = [t for c in choices for t in c["delta"].get("tool_calls") or ()]
    names = [d["function"]["name"] for d in deltas if "name" in d.get("function", {})]
    assert names == ["get_weather", "get_time"]
    for index in (0, 1):
        arguments = "".join(d["function"]["arguments"] for d in deltas if d["index"] == index)
        assert isinstance(json.loads(arguments), dict)
    assert choices[-1]["finish_reason"] == "tool_calls"

    body = {
        "model": "mock/x",
        "messages": [{"role": "user", "content": "an order"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Order", "schema": ORDER},
        },
    }
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    choice = (await resp.json())["choices"][0]
    assert json.loads(choice["message"]["content"])["kind"] == "order"
    assert choice["finish_reason"] == "stop"
