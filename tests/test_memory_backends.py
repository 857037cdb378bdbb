"""What differs between backends: choosing one by URL, SQLite's file, Redis's TTL,
PostgreSQL's schema. The shared behaviour is in test_memory_contract.py."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import msgspec
import pytest

from engine.config import Config
from engine.errors import InvalidFields, StoreUnavailable
from engine.memory import StoredMessage, open_store
from engine.memory.base import message_decoder
from engine.memory.inmemory import InMemoryStore
from engine.memory.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.test_memory_contract import server_url

DATA = Path(__file__).parent / "data"


def v1_conversations() -> list[dict]:
    """What the schema-1 release wrote into tests/data/memory-v1.sqlite3, as it read it back."""
    return json.loads((DATA / "memory-v1.json").read_text(encoding="utf-8"))


def v1_messages(conversation: dict) -> list[StoredMessage]:
    """``conversation``'s messages as this release must read them: unchanged, no agent fields."""
    return [msgspec.convert(m, StoredMessage) for m in conversation["messages"]]


#: An agent loop written after the upgrade, next to the old messages.
AGENT_TURN = [
    {
        "role": "user",
        "parts": [
            {"type": "text", "text": "what is in this picture?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/p.png"}},
        ],
    },
    {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "look", "arguments": '{"zoom": 2}'},
            },
            {"id": "call_b", "type": "function", "function": {"name": "search", "arguments": ""}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_a", "content": "a cat"},
    {"role": "tool", "tool_call_id": "call_b", "content": "cats are mammals"},
    {"role": "assistant", "content": "A cat."},
]


async def check_upgraded(url: str) -> None:
    """The old conversations read back unchanged through ``url``, and take agent turns."""
    old = v1_conversations()
    async with await open_store(url) as store:
        for conversation in old:
            chat = store.for_parent(conversation["parent"], conversation["parent_id"])
            assert await chat.get_messages() == v1_messages(conversation)
            assert await chat.get_messages(limit=2) == v1_messages(conversation)[-2:]
        chat = store.for_parent("ChatSession", "v1-42")
        # Old ids are still known; new messages follow the old ones.
        first = v1_messages(old[0])[1]
        assert await chat.add_user_message("retried", message_id=first.message_id) == first
        added = await chat.add_messages(AGENT_TURN)
        assert added[0].parts == AGENT_TURN[0]["parts"]
        assert added[0].content == "what is in this picture?"
        assert added[1].tool_calls == AGENT_TURN[1]["tool_calls"] and added[1].content == ""
        assert [m.tool_call_id for m in added[2:4]] == ["call_a", "call_b"]
        assert await chat.get_messages() == v1_messages(old[0]) + added
    async with await open_store(url) as store:  # and still there after a restart
        chat = store.for_parent("ChatSession", "v1-42")
        assert await chat.get_messages() == v1_messages(old[0]) + added
        other = store.for_parent(old[1]["parent"], old[1]["parent_id"])
        assert await other.get_messages() == v1_messages(old[1])


# Choosing a backend


@pytest.mark.parametrize(
    "url", ["mysql://u:s3cret@localhost/db", "file:///tmp/x.db", "memory", "", "http://x"]
)
async def test_unknown_scheme_names_the_supported_ones(url):
    with pytest.raises(InvalidFields) as info:
        await open_store(url)
    message = str(info.value)
    for scheme in ("sqlite:///", "memory://", "redis://", "rediss://", "postgresql://"):
        assert scheme in message
    assert "s3cret" not in message


async def test_memory_url_opens_an_in_process_store():
    async with await open_store("memory://") as store:
        assert isinstance(store, InMemoryStore)
        await store.ping()


async def test_sqlite_relative_path_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with await open_store("sqlite:///rel.db") as store:
        await store.for_parent("ChatSession", "42").add_user_message("hi")
    assert (tmp_path / "rel.db").is_file()


async def test_sqlite_four_slashes_is_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    path = tmp_path / "abs.db"
    async with await open_store(f"sqlite:///{path}") as store:
        assert isinstance(store, SQLiteStore)
        assert store.path == str(path)
    assert path.is_file()


async def test_default_config_url_is_a_sqlite_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Config.load(environ={})
    async with await open_store(config.memory_url, ttl=config.memory_ttl) as store:
        await store.for_parent("ChatSession", "42").add_user_message("hi")
    assert (tmp_path / "engine-memory.db").is_file()


@pytest.mark.parametrize("url", ["sqlite://rel.db", "sqlite:///", "sqlite:", "sqlite://"])
async def test_malformed_sqlite_url_is_rejected(url):
    with pytest.raises(InvalidFields, match="sqlite:///relative"):
        await open_store(url)


@pytest.mark.parametrize("ttl", [0, -1, 1.5, "30", True])
async def test_bad_ttl_is_rejected_before_connecting(tmp_path, ttl):
    with pytest.raises(InvalidFields, match="ttl"):
        await open_store(f"sqlite:///{tmp_path}/x.db", ttl=ttl)
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("url", "driver", "extra"),
    [
        ("redis://127.0.0.1:1/0", "redis", "sse-engine[redis]"),
        ("rediss://127.0.0.1:1/0", "redis", "sse-engine[redis]"),
        ("postgresql://u@127.0.0.1:1/db", "asyncpg", "sse-engine[postgres]"),
        ("postgres://u@127.0.0.1:1/db", "asyncpg", "sse-engine[postgres]"),
    ],
)
async def test_missing_driver_names_the_extra_to_install(monkeypatch, url, driver, extra):
    # None in sys.modules makes `import driver` fail as if it were not installed;
    # dropping our backend module makes open_store import it afresh.
    for name in list(sys.modules):
        if name == driver or name.startswith(f"{driver}."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, driver, None)
    backend = "engine.memory.redis" if driver == "redis" else "engine.memory.postgres"
    monkeypatch.delitem(sys.modules, backend, raising=False)
    with pytest.raises(StoreUnavailable, match=re.escape(f"pip install '{extra}'")):
        await open_store(url)


# SQLite


async def test_sqlite_restart_keeps_every_message(tmp_path):
    url = f"sqlite:///{tmp_path}/engine-memory.db"
    async with await open_store(url) as store:
        written = {}
        for i in range(3):
            chat = store.for_parent("ChatSession", str(i))
            written[i] = [
                await chat.add_user_message(f"question {i}", message_id=f"q{i}"),
                await chat.add_assistant_message(f"answer {i}", metadata={"partial": i == 2}),
            ]

    async with await open_store(url) as store:  # the "restarted server"
        for i in range(3):
            chat = store.for_parent("ChatSession", str(i))
            assert await chat.get_messages() == written[i]
        # Ids are still known and order continues after the old messages.
        chat = store.for_parent("ChatSession", "0")
        assert await chat.add_user_message("retry", message_id="q0") == written[0][0]
        await chat.add_user_message("after restart")
        assert [m.content for m in await chat.get_messages()] == [
            "question 0",
            "answer 0",
            "after restart",
        ]


async def test_sqlite_file_is_in_wal_mode_with_a_versioned_schema(tmp_path):
    path = tmp_path / "m.db"
    async with await open_store(f"sqlite:///{path}"):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


async def test_sqlite_file_from_a_newer_release_is_refused_untouched(tmp_path):
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreUnavailable, match="newer"):
        await open_store(f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    assert tables == [("future",)]


def sqlite_columns(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
    finally:
        conn.close()


def sqlite_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


V1_COLUMNS = [
    "parent",
    "parent_id",
    "seq",
    "message_id",
    "role",
    "type",
    "content",
    "metadata",
    "created_at",
]


async def test_sqlite_file_of_schema_1_is_upgraded_in_place(tmp_path):
    path = tmp_path / "engine-memory.db"
    shutil.copyfile(DATA / "memory-v1.sqlite3", path)
    assert sqlite_version(path) == 1 and sqlite_columns(path) == V1_COLUMNS  # the fixture

    await check_upgraded(f"sqlite:///{path}")

    assert sqlite_version(path) == SCHEMA_VERSION == 2
    assert sqlite_columns(path) == [*V1_COLUMNS, "tool_calls", "tool_call_id", "parts"]


async def test_sqlite_upgrade_that_fails_changes_nothing(tmp_path):
    # A file whose last migration step must fail (its column already exists):
    # the steps before it are rolled back with it, and the version stays 1.
    path = tmp_path / "engine-memory.db"
    shutil.copyfile(DATA / "memory-v1.sqlite3", path)
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE messages ADD COLUMN parts TEXT")
    conn.commit()
    conn.close()

    with pytest.raises(StoreUnavailable, match="duplicate column"):
        await open_store(f"sqlite:///{path}")

    assert sqlite_version(path) == 1
    assert sqlite_columns(path) == [*V1_COLUMNS, "parts"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (8,)
    finally:
        conn.close()


async def test_two_stores_on_one_sqlite_file_share_it(tmp_path):
    # Two server processes on one file: each write takes the file's write lock.
    url = f"sqlite:///{tmp_path}/shared.db"
    async with await open_store(url) as one, await open_store(url) as two:

        async def write(store, who):
            chat = store.for_parent("ChatSession", "42")
            for i in range(20):
                await chat.add_user_message(f"{who}{i}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, one, "a")
            tg.start_soon(write, two, "b")
        messages = await one.for_parent("ChatSession", "42").get_messages()
    assert len(messages) == 40
    assert [m.content for m in messages if m.content[0] == "a"] == [f"a{i}" for i in range(20)]
    assert [m.content for m in messages if m.content[0] == "b"] == [f"b{i}" for i in range(20)]


# Redis


async def test_redis_conversation_expires_ttl_seconds_after_its_last_write():
    import redis.asyncio as aioredis

    url = server_url("redis")
    uid = uuid.uuid4().hex
    async with await open_store(url, ttl=120) as store:
        chat = store.for_parent("ChatSession", uid)
        await chat.add_user_message("hi")
        client = aioredis.Redis.from_url(url)
        try:
            keys = [key async for key in client.scan_iter(match=f"sse-engine:memory:*{uid}*")]
            assert keys  # the conversation is there, under the engine's prefix
            for key in keys:
                await client.expire(key, 5)
            await chat.add_assistant_message("hello")  # a write renews the TTL
            ttls = [await client.ttl(key) for key in keys]
            assert all(100 < ttl <= 120 for ttl in ttls), ttls
        finally:
            await chat.clear()
            await client.aclose()


async def test_redis_entries_written_before_agent_fields_still_decode():
    import redis.asyncio as aioredis

    from engine.memory.redis import _keys

    url = server_url("redis")
    uid = uuid.uuid4().hex
    (conversation, _) = v1_conversations()
    messages = v1_messages(conversation)
    client = aioredis.Redis.from_url(url)
    async with await open_store(url) as store:
        chat = store.for_parent("ChatSession", uid)
        try:
            # As the schema-1 release wrote them: its JSON has no agent fields.
            list_key, ids_key = _keys("ChatSession", uid)
            for index, raw in enumerate(conversation["messages"]):
                assert "tool_calls" not in raw
                await client.rpush(list_key, msgspec.json.encode(raw))
                await client.hset(ids_key, raw["message_id"], index)
            assert await chat.get_messages() == messages
            added = await chat.add_messages(AGENT_TURN)
            assert await chat.get_messages() == messages + added
            assert await chat.add_user_message("again", message_id="q-1") == messages[1]
        finally:
            await chat.clear()
            await client.aclose()


def test_json_messages_without_agent_fields_decode():
    # What Redis (and the in-memory store) kept before tool calls and parts existed.
    for conversation in v1_conversations():
        for raw in conversation["messages"]:
            message = message_decoder.decode(msgspec.json.encode(raw))
            assert (message.tool_calls, message.tool_call_id, message.parts) == (None, None, None)
            assert msgspec.to_builtins(message) == {
                **raw,
                "tool_calls": None,
                "tool_call_id": None,
                "parts": None,
            }


# PostgreSQL

#: The schema-1 release's DDL, verbatim (engine/memory/postgres.py at 142f953).
POSTGRES_V1_DDL = """
CREATE TABLE sse_engine_messages (
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    parent_class text             NOT NULL,
    parent_id    text             NOT NULL,
    message_id   text             NOT NULL,
    role         text             NOT NULL,
    type         text             NOT NULL,
    content      text             NOT NULL,
    metadata     text             NOT NULL,  -- a JSON object, byte for byte
    created_at   double precision NOT NULL,  -- unix seconds
    PRIMARY KEY (parent_class, parent_id, seq),
    UNIQUE (parent_class, parent_id, message_id)
)
"""


@pytest.fixture
async def postgres_v1_schema():
    """A fresh PostgreSQL schema holding a schema-1 database; yields its URL and a connection.

    The store's tables are unqualified, so a URL whose ``search_path`` names the
    schema (asyncpg passes unknown URL parameters on as server settings) opens it
    apart from the shared test tables.
    """
    import asyncpg

    url = server_url("postgres")
    name = f"sse_v1_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {name}")
        await conn.execute(f"SET search_path TO {name}")
        async with conn.transaction():
            await conn.execute(POSTGRES_V1_DDL)
            await conn.execute("CREATE TABLE sse_engine_schema (version integer NOT NULL)")
            await conn.execute("INSERT INTO sse_engine_schema (version) VALUES (1)")
            for conversation in v1_conversations():
                for m in conversation["messages"]:
                    await conn.execute(
                        "INSERT INTO sse_engine_messages (parent_class, parent_id, message_id,"
                        " role, content, type, metadata, created_at)"
                        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        conversation["parent"],
                        conversation["parent_id"],
                        m["message_id"],
                        m["role"],
                        m["content"],
                        m["type"],
                        msgspec.json.encode(m["metadata"]).decode(),
                        m["created_at"],
                    )
        parts = urlsplit(url)
        query = f"{parts.query}&" if parts.query else ""
        yield urlunsplit(parts._replace(query=f"{query}search_path={name}")), conn
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        await conn.close()


async def postgres_columns(conn) -> list[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'sse_engine_messages'"
        " ORDER BY ordinal_position"
    )
    return [row["column_name"] for row in rows]


POSTGRES_V1_COLUMNS = [
    "seq",
    "parent_class",
    "parent_id",
    "message_id",
    "role",
    "type",
    "content",
    "metadata",
    "created_at",
]


async def test_postgres_schema_1_is_upgraded_in_place(postgres_v1_schema):
    from engine.memory.postgres import SCHEMA_VERSION as POSTGRES_VERSION

    url, conn = postgres_v1_schema
    assert await postgres_columns(conn) == POSTGRES_V1_COLUMNS

    await check_upgraded(url)

    assert await conn.fetchval("SELECT max(version) FROM sse_engine_schema") == 2
    assert POSTGRES_VERSION == 2
    assert await conn.fetchval("SELECT count(*) FROM sse_engine_schema") == 1
    assert await postgres_columns(conn) == [
        *POSTGRES_V1_COLUMNS,
        "tool_calls",
        "tool_call_id",
        "parts",
    ]


async def test_postgres_upgrade_that_fails_changes_nothing(postgres_v1_schema):
    url, conn = postgres_v1_schema
    await conn.execute("ALTER TABLE sse_engine_messages ADD COLUMN parts text")

    with pytest.raises(StoreUnavailable, match="parts"):
        await open_store(url)

    assert await conn.fetchval("SELECT max(version) FROM sse_engine_schema") == 1
    assert await postgres_columns(conn) == [*POSTGRES_V1_COLUMNS, "parts"]
    assert await conn.fetchval("SELECT count(*) FROM sse_engine_messages") == 8


async def test_postgres_schema_is_versioned_and_reopening_is_harmless():
    import asyncpg

    from engine.memory.postgres import SCHEMA_VERSION as POSTGRES_VERSION

    url = server_url("postgres")
    short = url.replace("postgresql://", "postgres://", 1)  # both spellings work
    async with await open_store(url), await open_store(short):
        pass  # two servers starting at once both find (or make) the schema
    conn = await asyncpg.connect(url)
    try:
        version = await conn.fetchval("SELECT max(version) FROM sse_engine_schema")
        assert version == POSTGRES_VERSION
        assert await conn.fetchval("SELECT count(*) FROM sse_engine_schema") == 1
        key = await conn.fetchval(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index"
            " WHERE indrelid = 'sse_engine_messages'::regclass AND indisprimary"
        )
        assert "(parent_class, parent_id, seq)" in key
    finally:
        await conn.close()
