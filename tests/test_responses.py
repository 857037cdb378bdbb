"""POST /v1/responses and its companions, read by the official ``openai`` SDK on a loopback
gateway: streamed and not, the stream helper, retrieve, resume, cancel, tool loops,
continuations, structured output, an output cut by max_output_tokens."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import openai
import pydantic
import pytest

from engine import create_app
from engine.gateway import Engine
from engine.sse import Decoder

from .helpers import ScriptedProvider, make_config

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


def held(tokens: int = 6, hold_from: int = 2) -> tuple[ScriptedProvider, asyncio.Event]:
    """A provider that sends ``hold_from`` chunks, then waits for the event."""
    gate = asyncio.Event()
    return ScriptedProvider([f"t{i} " for i in range(tokens)], gate=gate, hold_from=hold_from), gate


async def test_a_whole_response_from_the_mock(gateway):
    gw = await gateway()
    response = await gw.sdk.responses.create(model="mock/x", input="hi")
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text.startswith("You said: hi.")
    assert response.model == "mock/x"
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed"
    assert response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


async def test_a_streamed_response_sends_openais_events_in_order(gateway):
    gw = await gateway(ScriptedProvider(["Hello", ", ", "world"]))
    stream = await gw.sdk.responses.create(model="scripted/x", input="hi", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "Hello, world"
    )
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "Hello, world"
    assert final.usage.input_tokens == 1 and final.usage.output_tokens == 3
    # On the wire: each event named by its type, no id: nor retry: field (OpenAI sends none).
    resp = await gw.raw.post(
        "/v1/responses", json={"model": "scripted/x", "input": "hi", "stream": True}
    )
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    wire = Decoder().feed(await resp.read())
    assert [e.event for e in wire] == [json.loads(e.data)["type"] for e in wire]
    assert all(e.id == "" and e.retry is None for e in wire)


async def test_the_stream_helper_accumulates_the_final_response(gateway):
    gw = await gateway(ScriptedProvider(["Hello", ", ", "world"]))
    async with gw.sdk.responses.stream(model="scripted/x", input="hi") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == "Hello, world"
    assert final.output_text == "Hello, world"
    assert final.status == "completed"


async def test_a_response_is_stored_retrieved_listed_and_deleted(gateway):
    gw = await gateway()
    created = await gw.sdk.responses.create(
        model="mock/x",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hi there"}]}],
        instructions="Be brief.",
        metadata={"ticket": "42"},
    )
    got = await gw.sdk.responses.retrieve(created.id)
    assert got.id == created.id and got.status == "completed"
    assert got.output_text == created.output_text
    assert got.instructions == "Be brief." and got.metadata == {"ticket": "42"}
    items = await gw.sdk.responses.input_items.list(created.id)
    (item,) = items.data
    assert item.type == "message" and item.role == "user"
    assert item.content[0].text == "hi there"
    await gw.sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await gw.sdk.responses.retrieve(created.id)


async def test_store_false_keeps_nothing(gateway):
    gw = await gateway()
    created = await gw.sdk.responses.create(model="mock/x", input="hi", store=False)
    assert created.store is False and created.status == "completed"
    with pytest.raises(openai.NotFoundError):
        await gw.sdk.responses.retrieve(created.id)


async def test_previous_response_id_continues_the_conversation(gateway):
    provider = ScriptedProvider(["Paris."])
    gw = await gateway(provider)
    first = await gw.sdk.responses.create(
        model="scripted/x", input="Capital of France?", instructions="Answer in one word."
    )
    second = await gw.sdk.responses.create(
        model="scripted/x", input="And of Italy?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    sent = [(m.role, m.text) for m in provider.requests[1][0]]
    # The earlier turn and its answer, then the new input; the first instructions are not
    # inherited (as on OpenAI).
    assert sent == [
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "And of Italy?"),
    ]
    assert [(m.role, m.text) for m in provider.requests[0][0]][0] == (
        "system",
        "Answer in one word.",
    )
    third = await gw.sdk.responses.create(
        model="scripted/x", input="And Spain?", previous_response_id=second.id
    )
    assert third.status == "completed"
    assert [m.text for m in provider.requests[2][0]][-3:] == [
        "And of Italy?",
        "Paris.",
        "And Spain?",
    ]
    assert len(provider.requests[2][0]) == 5


async def test_a_function_call_loop_with_function_call_output(gateway):
    gw = await gateway()
    question = "What is the weather in Paris? use get_weather"
    first = await gw.sdk.responses.create(model="mock/x", input=question, tools=[WEATHER])
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and set(json.loads(call.arguments)) == {"city"}
    assert call.call_id and call.id.startswith("fc_")
    assert first.status == "completed"
    # The loop as the SDK docs write it: the output items back, then the result.
    second = await gw.sdk.responses.create(
        model="mock/x",
        input=[
            {"role": "user", "content": question},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "21 C, sunny"},
        ],
        tools=[WEATHER],
    )
    assert second.output_text.startswith("Tool get_weather returned: 21 C, sunny.")
    # The same loop by previous_response_id: only the result is sent.
    third = await gw.sdk.responses.create(
        model="mock/x",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "22 C"}],
        tools=[WEATHER],
    )
    assert third.output_text.startswith("Tool get_weather returned: 22 C.")


async def test_a_streamed_function_call(gateway):
    gw = await gateway()
    async with gw.sdk.responses.stream(
        model="mock/x", input="weather in Paris? use get_weather", tools=[WEATHER]
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert set(json.loads(done.arguments)) == {"city"}
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather"


class Weather(pydantic.BaseModel):
    city: str
    temp_c: float


async def test_text_format_json_schema_gives_a_document_of_the_schema(gateway):
    gw = await gateway()
    parsed = await gw.sdk.responses.parse(
        model="mock/x", input="the weather in Paris", text_format=Weather
    )
    assert isinstance(parsed.output_parsed, Weather)
    assert parsed.text.format.type == "json_schema"


async def test_max_output_tokens_ends_incomplete(gateway):
    gw = await gateway()
    whole = await gw.sdk.responses.create(model="mock/x", input="hi", max_output_tokens=16)
    assert whole.status == "incomplete"
    assert whole.incomplete_details.reason == "max_output_tokens"
    stream = await gw.sdk.responses.create(
        model="mock/x", input="hi", max_output_tokens=16, stream=True
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.output[0].status == "incomplete"


async def test_retrieve_with_starting_after_replays_the_rest(gateway):
    gw = await gateway(ScriptedProvider(["Hello", ", ", "world"]))
    stream = await gw.sdk.responses.create(model="scripted/x", input="hi", stream=True)
    events = [event async for event in stream]
    rid = events[0].response.id
    again = await gw.sdk.responses.retrieve(rid, stream=True, starting_after=4)
    rest = [event async for event in again]
    assert [e.sequence_number for e in rest] == list(range(5, len(events)))
    assert [e.model_dump() for e in rest] == [e.model_dump() for e in events[5:]]
    # The helper resumes the same way.
    async with gw.sdk.responses.stream(response_id=rid, starting_after=7) as resumed:
        tail = [event.type async for event in resumed]
    assert tail == [e.type for e in events[8:]]


async def test_a_cut_connection_resumes_with_the_rest_exactly(gateway):
    provider, gate = held(tokens=6, hold_from=2)
    gw = await gateway(provider)
    resp = await gw.raw.post(
        "/v1/responses", json={"model": "scripted/x", "input": "hi", "stream": True}
    )
    decoder, seen = Decoder(), []
    while sum(e.event == "response.output_text.delta" for e in seen) < 2:
        seen += decoder.feed(await resp.content.readany())
    resp.close()  # the connection is cut mid-stream
    last = json.loads(seen[-1].data)["sequence_number"]
    rid = json.loads(seen[0].data)["response"]["id"]
    gate.set()  # the generation went on meanwhile
    resumed = await gw.sdk.responses.retrieve(rid, stream=True, starting_after=last)
    rest = [event async for event in resumed]
    numbers = [json.loads(e.data)["sequence_number"] for e in seen] + [
        e.sequence_number for e in rest
    ]
    assert numbers == list(range(len(numbers)))  # no gap, no duplicate
    assert rest[-1].type == "response.completed"
    assert rest[-1].response.output_text == "".join(f"t{i} " for i in range(6))


async def test_cancel_mid_stream_stops_the_generation(gateway):
    provider, gate = held(tokens=6, hold_from=2)
    gw = await gateway(provider)
    stream = await gw.sdk.responses.create(model="scripted/x", input="hi", stream=True)
    events, rid = [], None
    async for event in stream:
        events.append(event)
        rid = rid or event.response.id
        if event.type == "response.output_text.delta" and event.delta == "t1 ":
            cancelled = await gw.sdk.responses.cancel(rid)
            assert cancelled.status == "cancelled"
            assert cancelled.output_text == "t0 t1 "
    assert provider.closed.is_set()  # the upstream was closed
    assert provider.sent == 2
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "cancelled"
    got = await gw.sdk.responses.retrieve(rid)
    assert got.status == "cancelled" and got.output_text == "t0 t1 "
    assert (await gw.sdk.responses.cancel(rid)).status == "cancelled"  # twice: as it ended


async def test_a_background_response_can_be_polled_and_streamed_later(gateway):
    provider, gate = held(tokens=4, hold_from=2)
    gw = await gateway(provider)
    created = await gw.sdk.responses.create(model="scripted/x", input="hi", background=True)
    assert created.status == "queued" and created.background is True
    await provider.started.wait()
    polled = await gw.sdk.responses.retrieve(created.id)
    assert polled.status == "in_progress"
    gate.set()
    stream = await gw.sdk.responses.retrieve(created.id, stream=True, starting_after=0)
    events = [event async for event in stream]
    assert events[0].sequence_number == 1 and events[0].type == "response.queued"
    assert events[-1].type == "response.completed"
    done = await gw.sdk.responses.retrieve(created.id)
    assert done.status == "completed" and done.output_text == "t0 t1 t2 t3 "


async def test_streams_stop_and_resume_off_work_on_responses_too(gateway):
    provider, gate = held(tokens=6, hold_from=2)
    gw = await gateway(provider, resume=False)
    stream = await gw.sdk.responses.create(model="scripted/x", input="hi", stream=True)
    events = []
    async for event in stream:
        events.append(event)
        if event.type == "response.output_text.delta" and event.delta == "t1 ":
            rid = events[0].response.id
            stopped = await gw.raw.post(f"/v1/streams/{rid}/stop")
            assert (await stopped.json())["state"] == "stopped"
    assert events[-1].response.status == "cancelled"
    # With resume off there is no log to stream again: a 400 saying so.
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.sdk.responses.retrieve(rid, stream=True)
    assert "resume off" in caught.value.message


async def test_a_response_stream_is_counted_in_the_metrics(gateway):
    gw = await gateway(ScriptedProvider(["a", "b"]))
    await gw.sdk.responses.create(model="scripted/x", input="hi")
    scrape = await (await gw.raw.get("/metrics")).text()
    line = next(
        line
        for line in scrape.splitlines()
        if line.startswith("sse_engine_streams_ended_total") and 'reason="done"' in line
    )
    assert line.endswith(" 1.0")


async def test_a_long_output_reaches_its_reader_whole(gateway):
    # Its last events hold the whole output four times over, in one burst: more than a
    # native stream's log keeps (--resume-max-bytes), which must not cut its own reader.
    tokens = [f"{i:04d}" + "x" * 996 for i in range(400)]  # 400 KB of text
    gw = await gateway(ScriptedProvider(tokens))
    async with gw.sdk.responses.stream(model="scripted/x", input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "".join(tokens)
