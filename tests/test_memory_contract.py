"""The memory contract: every backend behaves the same, checked on all four.

Redis and PostgreSQL run against the servers named by ENGINE_TEST_REDIS_URL and
ENGINE_TEST_POSTGRES_URL. Without them the tests skip on a developer's machine;
under CI (``CI`` set, where ``.ci/run`` starts both) a missing URL or a server
that does not answer is a failure. Each test writes under fresh uuid ids and
clears what it wrote, so runs can share a server.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import anyio
import msgspec
import pytest

from engine.errors import InvalidFields, StoreUnavailable
from engine.memory import MemoryStore, StoredMessage, open_store
from engine.memory.base import MAX_PARENT_LENGTH
from engine.wire import FunctionCall, ImagePart, Message, ToolCall, check_tool_results

BACKENDS = ["memory", "sqlite", "redis", "postgres"]
SERVER_ENV = {"redis": "ENGINE_TEST_REDIS_URL", "postgres": "ENGINE_TEST_POSTGRES_URL"}


def server_url(backend: str) -> str:
    """The test server's URL for ``backend``: skip without one, but fail under CI."""
    var = SERVER_ENV[backend]
    url = os.environ.get(var)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{var} is not set: under CI, .ci/run must start a real {backend} server")
        pytest.skip(f"{var} is not set (run .ci/run with CI=true to start the servers)")
    return url


def backend_url(backend: str, tmp_path) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'memory.db'}"  # tmp_path is absolute: 4 slashes
    return server_url(backend)


async def open_test_store(backend: str, url: str) -> MemoryStore:
    try:
        return await open_store(url)
    except StoreUnavailable as exc:
        # A URL was given, so the developer or CI asked for this server: never skip.
        pytest.fail(f"the {backend} test server does not answer: {exc}")


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path) -> AsyncIterator[MemoryStore]:
    """An open store of each backend that clears, at the end, every conversation used."""
    backend = request.param
    url = backend_url(backend, tmp_path)
    store = await open_test_store(backend, url)
    used: set[tuple[str, str]] = set()
    for_parent = store.for_parent

    def tracking_for_parent(parent, parent_id):
        conversation = for_parent(parent, parent_id)
        used.add((parent, parent_id))
        return conversation

    store.for_parent = tracking_for_parent  # type: ignore[method-assign]
    try:
        yield store
    finally:
        cleaner = store
        if store.closed:  # the test closed it: clean up through a fresh one
            cleaner = await open_test_store(backend, url)
        try:
            for parent, parent_id in used:
                await MemoryStore.for_parent(cleaner, parent, parent_id).clear()
        finally:
            await cleaner.aclose()
            await store.aclose()


@pytest.fixture
def uid() -> str:
    """A fresh prefix for parent ids, so tests never see each other's data."""
    return uuid.uuid4().hex[:12]


def contents(messages: list[StoredMessage]) -> list[str]:
    return [m.content for m in messages]


# Order and limits


async def test_messages_come_back_in_insertion_order(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    before = time.time()
    await chat.add_system_message("be brief")
    await chat.add_user_message("hello")
    await chat.add_assistant_message("hi there")
    await chat.add_message("user", "and again")

    messages = await chat.get_messages()

    assert [(m.role, m.content) for m in messages] == [
        ("system", "be brief"),
        ("user", "hello"),
        ("assistant", "hi there"),
        ("user", "and again"),
    ]
    assert all(m.type == "text" and m.metadata == {} for m in messages)
    assert len({m.message_id for m in messages}) == 4
    assert all(len(m.message_id) == 32 and int(m.message_id, 16) >= 0 for m in messages)
    assert before - 1 <= messages[0].created_at <= messages[-1].created_at <= time.time() + 1


async def test_add_returns_exactly_what_is_read_back(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    added = [
        await chat.add_user_message("a picture", type="image", metadata={"url": "x.png"}),
        await chat.add_assistant_message("a sound", type="audio", message_id="reply-1"),
    ]
    assert await chat.get_messages() == added
    assert added[1].message_id == "reply-1"
    assert [m.type for m in added] == ["image", "audio"]


async def test_limit_gives_the_last_messages_in_insertion_order(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    for i in range(5):
        await chat.add_user_message(f"m{i}")

    assert contents(await chat.get_messages(limit=2)) == ["m3", "m4"]
    assert contents(await chat.get_messages(limit=1)) == ["m4"]
    assert contents(await chat.get_messages(limit=5)) == ["m0", "m1", "m2", "m3", "m4"]
    assert contents(await chat.get_messages(limit=50)) == ["m0", "m1", "m2", "m3", "m4"]
    assert await chat.get_messages(limit=0) == []
    assert contents(await chat.get_messages(limit=None)) == ["m0", "m1", "m2", "m3", "m4"]


@pytest.mark.parametrize("limit", [-1, 1.5, "2", True])
async def test_bad_limit_is_rejected(store, uid, limit):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    with pytest.raises(InvalidFields, match="limit"):
        await chat.get_messages(limit=limit)


async def test_unknown_conversation_is_empty(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-never")
    assert await chat.get_messages() == []
    assert await chat.get_messages(limit=3) == []
    assert await chat.clear() == 0


# De-duplication by message_id


async def test_same_message_id_is_stored_once(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    first = await chat.add_user_message("hello", message_id="req-1")
    retried = await chat.add_user_message("hello (retried)", message_id="req-1")
    await chat.add_assistant_message("hi", message_id="req-1-reply")

    assert retried == first  # the stored one, content and created_at included
    assert contents(await chat.get_messages()) == ["hello", "hi"]


async def test_message_ids_are_unique_per_parent_only(store, uid):
    one = store.for_parent("ChatSession", f"{uid}-42")
    other = store.for_parent("ChatSession", f"{uid}-43")
    await one.add_user_message("in 42", message_id="same")
    await other.add_user_message("in 43", message_id="same")
    assert contents(await one.get_messages()) == ["in 42"]
    assert contents(await other.get_messages()) == ["in 43"]


async def test_batch_is_stored_in_order_and_deduplicated(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    old = await chat.add_user_message("question", message_id="q")

    stored = await chat.add_messages(
        [
            {"role": "user", "content": "question (retried)", "message_id": "q"},
            {"role": "assistant", "content": "answer", "message_id": "a", "metadata": {"n": 1}},
            {"role": "assistant", "content": "answer twice", "message_id": "a"},
            {"role": "user", "content": "next"},
        ]
    )

    assert stored[0] == old
    assert stored[2] == stored[1] and stored[1].content == "answer"
    assert await chat.get_messages() == [old, stored[1], stored[3]]
    assert await chat.add_messages([]) == []


async def test_concurrent_retries_store_a_message_once(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    results: list[StoredMessage] = []

    async def retry(n: int) -> None:
        results.append(await chat.add_user_message(f"attempt {n}", message_id="once"))

    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(retry, n)

    messages = await chat.get_messages()
    assert len(messages) == 1
    assert results == messages * 50


# Clearing and scoping


async def test_clear_removes_one_conversation_and_counts(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    kept = store.for_parent("ChatSession", f"{uid}-43")
    for i in range(3):
        await chat.add_user_message(f"m{i}", message_id=f"id{i}")
    await kept.add_user_message("stays")

    assert await chat.clear() == 3
    assert await chat.get_messages() == []
    assert await chat.clear() == 0
    assert contents(await kept.get_messages()) == ["stays"]
    # A cleared conversation starts afresh: its old ids can be used again.
    await chat.add_user_message("new", message_id="id0")
    assert contents(await chat.get_messages()) == ["new"]


async def test_conversations_are_scoped_by_parent_and_id(store, uid):
    a = store.for_parent("ChatSession", f"{uid}-42")
    b = store.for_parent("ChatSession", f"{uid}-43")
    c = store.for_parent(f"Other-{uid}", f"{uid}-42")
    # Keys built by joining with a separator must not collide.
    d = store.for_parent(f"Chat:{uid}", "x:y")
    e = store.for_parent(f"Chat:{uid}:x", "y")
    for chat in (a, b, c, d, e):
        await chat.add_user_message(repr(chat))

    for chat in (a, b, c, d, e):
        assert contents(await chat.get_messages()) == [repr(chat)]
    # A second handle on the same conversation sees the same messages.
    assert contents(await store.for_parent("ChatSession", f"{uid}-42").get_messages()) == [repr(a)]
    assert (a.parent, a.parent_id) == ("ChatSession", f"{uid}-42")


# Bad input stores nothing

BAD_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("x" * (MAX_PARENT_LENGTH + 1), id="too-long"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x1bb", id="escape"),
    pytest.param("a\x7fb", id="del"),
    pytest.param(42, id="not-a-string"),
    pytest.param(None, id="none"),
]


@pytest.mark.parametrize("bad", BAD_KEYS)
async def test_bad_parent_or_id_is_rejected(store, uid, bad):
    with pytest.raises(InvalidFields, match="parent "):
        store.for_parent(bad, f"{uid}-42")
    with pytest.raises(InvalidFields, match="parent_id"):
        store.for_parent("ChatSession", bad)


async def test_an_id_of_201_characters_is_rejected(store):
    with pytest.raises(InvalidFields, match="parent_id"):
        store.for_parent("ChatSession", "x" * 201)


async def test_longest_parent_and_id_are_accepted(store, uid):
    # A parent may be longer than a request's: a client key's namespace goes first.
    chat = store.for_parent("P" * MAX_PARENT_LENGTH, uid + "i" * (200 - len(uid)))
    await chat.add_user_message("fits")
    assert contents(await chat.get_messages()) == ["fits"]


BAD_MESSAGES = [
    pytest.param({"role": "robot"}, "role", id="unknown-role"),
    pytest.param({"role": "tool"}, "tool_call_id", id="tool-role-without-call-id"),
    pytest.param({"role": None}, "role", id="no-role"),
    pytest.param({"type": "video"}, "type", id="unknown-type"),
    pytest.param({"content": None}, "content", id="content-none"),
    pytest.param({"content": 42}, "content", id="content-int"),
    pytest.param({"content": b"bytes"}, "content", id="content-bytes"),
    pytest.param({"content": "a\x00b"}, "content", id="content-nul"),
    pytest.param({"content": "\ud800"}, "content", id="content-lone-surrogate"),
    pytest.param({"metadata": [1, 2]}, "metadata", id="metadata-list"),
    pytest.param({"metadata": "x"}, "metadata", id="metadata-string"),
    pytest.param({"metadata": {"when": object()}}, "metadata", id="metadata-not-json"),
    pytest.param({"message_id": ""}, "message_id", id="id-empty"),
    pytest.param({"message_id": "x" * 201}, "message_id", id="id-too-long"),
    pytest.param({"message_id": "a\nb"}, "message_id", id="id-control"),
    pytest.param({"message_id": 7}, "message_id", id="id-int"),
]


def call(id="call_1", name="get_weather", arguments='{"city": "Paris"}', **changes):
    """One tool call in OpenAI's shape; ``changes`` replace or (as None) drop keys."""
    function = {"name": name, "arguments": arguments}
    made = {"id": id, "type": "function", "function": function, **changes}
    for key, value in list(made.items()):
        if value is None:
            del made[key]
    for key, value in list(function.items()):
        if value is None:
            del function[key]
    return made


def deep(levels):
    value: object = "x"
    for _ in range(levels):
        value = [value]
    return value


ASSISTANT = {"role": "assistant"}
TOOL = {"role": "tool", "tool_call_id": "call_1"}
TEXT = {"type": "text", "text": "hello"}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}

# Each refusal names the field (and where in it) first.
BAD_AGENT_MESSAGES = [
    # tool_calls: on assistant messages only, in OpenAI's shape, bounded
    pytest.param({"tool_calls": [call()]}, "tool_calls", id="calls-on-user"),
    pytest.param({**TOOL, "tool_calls": [call()]}, "tool_calls", id="calls-on-tool"),
    pytest.param({"role": "system", "tool_calls": [call()]}, "tool_calls", id="calls-on-system"),
    pytest.param({**ASSISTANT, "tool_calls": "x"}, "tool_calls", id="calls-string"),
    pytest.param({**ASSISTANT, "tool_calls": call()}, "tool_calls", id="calls-object"),
    pytest.param({**ASSISTANT, "tool_calls": []}, "tool_calls", id="calls-empty"),
    pytest.param({**ASSISTANT, "tool_calls": ["x"]}, "tool_calls[0]", id="call-string"),
    pytest.param({**ASSISTANT, "tool_calls": [call(id=None)]}, "tool_calls[0]", id="call-no-id"),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(id="")]}, "tool_calls[0].id", id="call-id-empty"
    ),
    pytest.param({**ASSISTANT, "tool_calls": [call(id=7)]}, "tool_calls[0].id", id="call-id-int"),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(id="c" * 257)]}, "tool_calls[0].id", id="call-id-long"
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(id="a\x00b")]}, "tool_calls[0].id", id="call-id-nul"
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(type="tool")]}, "tool_calls[0].type", id="call-type"
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(index=0)]}, "tool_calls[0]", id="call-unknown-key"
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(function=None)]}, "tool_calls[0]", id="call-no-function"
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(function="f")]},
        "tool_calls[0].function",
        id="call-function-string",
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(name="")]},
        "tool_calls[0].function.name",
        id="call-name-empty",
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(name=5)]},
        "tool_calls[0].function.name",
        id="call-name-int",
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(name="n" * 257)]},
        "tool_calls[0].function.name",
        id="call-name-long",
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(arguments=None)]},
        "tool_calls[0].function",
        id="call-no-arguments",
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(arguments={"city": "Paris"})]},
        "tool_calls[0].function.arguments",
        id="call-arguments-object",
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(arguments="\ud800")]},
        "tool_calls",
        id="call-arguments-lone-surrogate",
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(), call(name="other")]},
        "tool_calls[1].id",
        id="call-ids-repeat",
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(id=f"c{i}") for i in range(257)]},
        "tool_calls",
        id="calls-too-many",
    ),
    pytest.param(
        {**ASSISTANT, "tool_calls": [call(arguments=deep(70))]}, "tool_calls", id="calls-too-deep"
    ),
    # tool_call_id: required on tool messages, and only there
    pytest.param({"role": "user", "tool_call_id": "call_1"}, "tool_call_id", id="call-id-on-user"),
    pytest.param(
        {**ASSISTANT, "tool_call_id": "call_1"}, "tool_call_id", id="call-id-on-assistant"
    ),
    pytest.param({**TOOL, "tool_call_id": ""}, "tool_call_id", id="tool-call-id-empty"),
    pytest.param({**TOOL, "tool_call_id": 5}, "tool_call_id", id="tool-call-id-int"),
    pytest.param({**TOOL, "tool_call_id": "c" * 257}, "tool_call_id", id="tool-call-id-long"),
    pytest.param({**TOOL, "tool_call_id": "a\x00b"}, "tool_call_id", id="tool-call-id-nul"),
    pytest.param({**TOOL, "tool_call_id": "\ud800"}, "tool_call_id", id="tool-call-id-surrogate"),
    pytest.param({**TOOL, "content": None}, "content", id="tool-content-none"),
    # parts: a list of wire Parts whose text is the content, media on user messages only
    pytest.param({"parts": "hello"}, "parts", id="parts-string"),
    pytest.param({"parts": TEXT}, "parts", id="parts-object"),
    pytest.param({"parts": ["hello"]}, "parts[0]", id="part-string"),
    pytest.param({"parts": [{"text": "hello"}]}, "parts[0]", id="part-no-type"),
    pytest.param({"parts": [{"type": "video"}]}, "parts[0].type", id="part-type-unknown"),
    pytest.param({"parts": [{"type": 3}]}, "parts[0].type", id="part-type-int"),
    pytest.param({"parts": [{"type": "text"}]}, "parts[0]", id="part-no-text"),
    pytest.param({"parts": [{"type": "text", "text": 5}]}, "parts[0].text", id="part-text-int"),
    pytest.param({"parts": [{**TEXT, "extra": 1}]}, "parts[0]", id="part-unknown-key"),
    pytest.param(
        {"parts": [TEXT, {"type": "image_url", "image_url": {"url": "ftp://x/a.png"}}]},
        "parts[1].image_url",
        id="part-image-url",
    ),
    pytest.param(
        {"parts": [TEXT, {"type": "image_url", "image_url": {**IMAGE["image_url"], "detail": 1}}]},
        "parts[1].image_url.detail",
        id="part-image-detail",
    ),
    pytest.param(
        {"parts": [{"type": "input_audio", "input_audio": {"data": "", "format": "ogg"}}]},
        "parts[0].input_audio.format",
        id="part-audio-format",
    ),
    pytest.param({**ASSISTANT, "parts": [TEXT, IMAGE]}, "parts", id="image-on-assistant"),
    pytest.param({"role": "system", "parts": [TEXT, AUDIO]}, "parts", id="audio-on-system"),
    pytest.param({**TOOL, "parts": [TEXT, IMAGE]}, "parts", id="image-on-tool"),
    pytest.param({"content": "", "parts": [IMAGE] * 1025}, "parts", id="parts-too-many"),
    pytest.param({"parts": [{"type": "text", "text": deep(70)}]}, "parts", id="parts-too-deep"),
    pytest.param({"parts": [{"type": "text", "text": "\ud800"}]}, "parts", id="part-surrogate"),
    pytest.param({"parts": [{"type": "text", "text": "other"}]}, "content", id="parts-not-content"),
]


@pytest.mark.parametrize(("change", "field"), BAD_MESSAGES + BAD_AGENT_MESSAGES)
async def test_bad_message_is_rejected_and_nothing_stored(store, uid, change, field):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    await chat.add_user_message("before")
    message = {"role": "user", "content": "hello", **change}

    with pytest.raises(InvalidFields) as info:
        fields = dict(message)
        await chat.add_message(fields.pop("role"), fields.pop("content"), **fields)
    assert info.value.message.startswith(field), info.value.message
    # One bad item spoils the whole batch, including the good one before it.
    with pytest.raises(InvalidFields, match=rf"messages\[1\]: {re.escape(field)}"):
        await chat.add_messages([{"role": "user", "content": "good"}, message])

    assert contents(await chat.get_messages()) == ["before"]


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param([{"role": "user"}], id="no-content"),
        pytest.param([{"role": "user", "content": "x", "extra": 1}], id="unknown-field"),
        pytest.param(["hello"], id="not-an-object"),
        pytest.param({"role": "user", "content": "x"}, id="not-a-list"),
    ],
)
async def test_malformed_batch_is_rejected_and_nothing_stored(store, uid, batch):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    with pytest.raises(InvalidFields):
        await chat.add_messages(batch)
    assert await chat.get_messages() == []


# Round trips

TEXTS = [
    "emoji 🙂👩🏽‍💻🇫🇷 and astral 𝄞",
    "中文, 日本語, 한국어",
    "עברית ועربية",
    "combining e\u0301 and zero\u200bwidth",
    "line\nbreaks\r\nand\ttabs\u2028\u2029",
    'quotes " \' \\ and json {"a": [1]}',
    "",
    " ",
    "x" * 100_000,
]


async def test_unicode_round_trips(store, uid):
    chat = store.for_parent("Чат 🙂", f"{uid}-会话")
    for i, text in enumerate(TEXTS):
        await chat.add_user_message(text, message_id=f"ид-{i}-🙂")
    messages = await chat.get_messages()
    assert contents(messages) == TEXTS
    assert [m.message_id for m in messages] == [f"ид-{i}-🙂" for i in range(len(TEXTS))]
    assert (chat.parent, chat.parent_id) == ("Чат 🙂", f"{uid}-会话")


async def test_metadata_round_trips(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    metadata = {
        "partial": True,
        "reason": "client_disconnected",
        "usage": {"prompt_tokens": 12, "completion_tokens": 0},
        "score": 0.1,
        "big": 2**53 + 1,
        "negative": -3.5e-8,
        "none": None,
        "list": [1, "two", [3], {"four": 4}],
        "ключ 🙂": "значение\u0000with nul",
        "": "empty key",
    }
    stored = await chat.add_assistant_message("partial reply", metadata=metadata)
    (read,) = await chat.get_messages()
    assert read.metadata == metadata
    assert stored.metadata == metadata


async def test_returned_messages_do_not_alias_storage(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    metadata = {"tags": ["a"]}
    stored = await chat.add_user_message("hi", metadata=metadata)
    metadata["tags"].append("changed by caller")
    stored.metadata["tags"].append("changed too")
    (read,) = await chat.get_messages()
    read.metadata["tags"].append("and this")
    assert (await chat.get_messages())[0].metadata == {"tags": ["a"]}


# Agent loops: tool calls, tool results, content parts

PHOTO = {
    "type": "image_url",
    "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"},
}


async def test_tool_calls_results_and_parts_round_trip(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    question = [
        {"type": "text", "text": "What is the weather where this was taken?"},
        PHOTO,
        {"type": "text", "text": "And in Oslo 🙂"},
    ]
    calls = [
        # "type" may be left out, as in wire.ToolCall: it is stored filled in.
        {"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}},
        call(id="call_2", arguments='{"city": "Oslo", "note": "a\x00b"}'),
    ]
    stored = await chat.add_messages(
        [
            {"role": "user", "content": None, "parts": question, "message_id": "q"},
            {"role": "assistant", "tool_calls": calls, "metadata": {"stream_id": "s1"}},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
            {"role": "tool", "tool_call_id": "call_2", "content": '{"temp": 4}'},
            {"role": "assistant", "content": "21° there, 4° in Oslo."},
        ]
    )

    assert await chat.get_messages() == stored
    assert await chat.get_messages(limit=3) == stored[2:]
    user, asked, first, second, answer = stored
    assert user.parts == question
    assert user.content == "What is the weather where this was taken?\nAnd in Oslo 🙂"
    assert user.tool_calls is None and user.tool_call_id is None
    assert asked.content == "" and asked.metadata == {"stream_id": "s1"}
    assert asked.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
        },
        call(id="call_2", arguments='{"city": "Oslo", "note": "a\x00b"}'),
    ]
    assert asked.parts is None and asked.tool_call_id is None
    assert [(m.role, m.tool_call_id, m.content) for m in (first, second)] == [
        ("tool", "call_1", '{"temp": 21}'),
        ("tool", "call_2", '{"temp": 4}'),
    ]
    assert (answer.tool_calls, answer.tool_call_id, answer.parts) == (None, None, None)
    # A retry returns the stored message, agent fields and all.
    assert await chat.add_user_message("retried", message_id="q") == user


async def test_single_adds_keep_tool_calls_results_and_parts(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    sound = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    added = [
        await chat.add_user_message("listen", parts=[{"type": "text", "text": "listen"}, sound]),
        await chat.add_assistant_message(None, tool_calls=[call(), call(id="call_2")]),
        await chat.add_tool_message("sunny", tool_call_id="call_1"),
        await chat.add_message("tool", "rainy", tool_call_id="call_2", metadata={"ms": 12}),
        await chat.add_assistant_message("text", parts=[{"type": "text", "text": "text"}]),
    ]
    assert await chat.get_messages() == added
    assert added[0].parts == [{"type": "text", "text": "listen"}, sound]
    assert [m.tool_call_id for m in added] == [None, None, "call_1", "call_2", None]
    assert [len(m.tool_calls or ()) for m in added] == [0, 2, 0, 0, 0]


async def test_stored_agent_messages_convert_back_into_wire_messages(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    await chat.add_user_message(None, parts=[{"type": "text", "text": "look"}, PHOTO])
    await chat.add_assistant_message(None, tool_calls=[call()])
    await chat.add_tool_message("sunny", tool_call_id="call_1")

    wire = [
        msgspec.convert(
            {
                "role": m.role,
                "content": m.parts if m.parts is not None else (m.content or None),
                "tool_calls": m.tool_calls,
                "tool_call_id": m.tool_call_id,
            },
            Message,
        )
        for m in await chat.get_messages()
    ]
    check_tool_results(wire)
    assert wire[0].text == "look" and isinstance(wire[0].parts[1], ImagePart)
    assert wire[1].tool_calls == [
        ToolCall(id="call_1", function=FunctionCall(**call()["function"]))
    ]
    assert wire[2].tool_call_id == "call_1"


async def test_returned_agent_fields_do_not_alias_storage(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    calls = [call()]
    parts = [{"type": "text", "text": "hi"}]
    stored = await chat.add_assistant_message("hi", tool_calls=calls, parts=parts)
    calls[0]["function"]["name"] = "changed by caller"
    parts.append({"type": "text", "text": "added by caller"})
    stored.tool_calls[0]["id"] = "changed too"
    (read,) = await chat.get_messages()
    assert read.tool_calls == [call()] and read.parts == [{"type": "text", "text": "hi"}]


# Load


async def test_200_conversations_written_at_once_lose_nothing(store, uid):
    n_conversations, n_messages = 200, 5

    async def converse(i: int) -> None:
        chat = store.for_parent("ChatSession", f"{uid}-{i}")
        for j in range(n_messages):
            role = "user" if j % 2 == 0 else "assistant"
            await chat.add_message(role, f"{i}:{j}")

    async with anyio.create_task_group() as tg:
        for i in range(n_conversations):
            tg.start_soon(converse, i)

    async def check(i: int) -> None:
        chat = store.for_parent("ChatSession", f"{uid}-{i}")
        assert contents(await chat.get_messages()) == [f"{i}:{j}" for j in range(n_messages)]

    await asyncio.gather(*(check(i) for i in range(n_conversations)))


async def test_writers_sharing_a_conversation_keep_their_own_order(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")

    async def write(who: str) -> None:
        for i in range(10):
            if i % 3 == 2:  # batches interleave with single adds
                await chat.add_messages([{"role": "user", "content": f"{who}{i}"}])
            else:
                await chat.add_user_message(f"{who}{i}")

    async with anyio.create_task_group() as tg:
        for who in "abcdefghij":
            tg.start_soon(write, who)

    messages = contents(await chat.get_messages())
    assert len(messages) == 100
    for who in "abcdefghij":
        assert [m for m in messages if m[0] == who] == [f"{who}{i}" for i in range(10)]


# Failures


async def test_closed_store_is_unavailable(store, uid):
    chat = store.for_parent("ChatSession", f"{uid}-42")
    await chat.add_user_message("before closing")
    await store.ping()
    await store.aclose()
    await store.aclose()  # closing twice is fine

    assert store.closed
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await chat.add_user_message("after closing")
    with pytest.raises(StoreUnavailable):
        await chat.get_messages()
    with pytest.raises(StoreUnavailable):
        await chat.get_messages(limit=0)
    with pytest.raises(StoreUnavailable):
        await chat.clear()


@pytest.fixture
def closed_port():
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("backend", ["sqlite", "redis", "rediss", "postgresql", "postgres"])
async def test_store_that_cannot_be_reached_is_unavailable(backend, tmp_path, closed_port):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = {
        "sqlite": f"sqlite:///{blocker}/memory.db",
        "redis": f"redis://:s3cret@127.0.0.1:{closed_port}/0",
        "rediss": f"rediss://:s3cret@127.0.0.1:{closed_port}/0",
        "postgresql": f"postgresql://engine:s3cret@127.0.0.1:{closed_port}/engine",
        "postgres": f"postgres://engine:s3cret@127.0.0.1:{closed_port}/engine",
    }[backend]
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await open_store(url)
    assert info.value.__cause__ is not None
    assert info.value.status == 503
    assert "s3cret" not in str(info.value)
    assert time.monotonic() - started < 10  # a request waiting on it gets its 503 soon


class Proxy:
    """A loopback TCP proxy to a real server that the test can cut, like a crash."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        self.writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.append(up_writer)
        await asyncio.gather(self.pipe(reader, up_writer), self.pipe(up_reader, writer))

    @staticmethod
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def cut(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            try:
                await writer.wait_closed()
            except OSError:
                pass


@pytest.mark.parametrize("backend", ["redis", "postgres"])
async def test_server_going_away_makes_the_store_unavailable(backend, uid):
    url = server_url(backend)
    parts = urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or {"redis": 6379}.get(backend, 5432))
    port = await proxy.start()
    netloc = parts.netloc.rpartition("@")
    proxied = urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}127.0.0.1:{port}"))
    direct = await open_test_store(backend, url)
    store = await open_test_store(backend, proxied)
    try:
        chat = store.for_parent("ChatSession", f"{uid}-42")
        await chat.add_user_message("while up")

        await proxy.cut()

        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await chat.add_messages(
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
            )
        with pytest.raises(StoreUnavailable):
            await chat.get_messages()
        # Nothing half-written: the server holds exactly what was acknowledged.
        same = direct.for_parent("ChatSession", f"{uid}-42")
        assert contents(await same.get_messages()) == ["while up"]
        await same.clear()
    finally:
        await proxy.cut()
        await store.aclose()
        await direct.aclose()
