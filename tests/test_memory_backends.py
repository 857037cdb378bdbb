"""What differs between backends: choosing one by URL, SQLite's file, Redis's TTL,
PostgreSQL's schema. The shared behaviour is in test_memory_contract.py."""

from __future__ import annotations

import re
import sqlite3
import sys
import uuid

import anyio
import pytest

from engine.config import Config
from engine.errors import InvalidFields, StoreUnavailable
from engine.memory import open_store
from engine.memory.inmemory import InMemoryStore
from engine.memory.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.test_memory_contract import server_url

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


# PostgreSQL


async def test_postgres_schema_is_versioned_and_reopening_is_harmless():
    import asyncpg

    url = server_url("postgres")
    short = url.replace("postgresql://", "postgres://", 1)  # both spellings work
    async with await open_store(url), await open_store(short):
        pass  # two servers starting at once both find (or make) the schema
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT max(version) FROM sse_engine_schema") == 1
        assert await conn.fetchval("SELECT count(*) FROM sse_engine_schema") == 1
        key = await conn.fetchval(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index"
            " WHERE indrelid = 'sse_engine_messages'::regclass AND indisprimary"
        )
        assert "(parent_class, parent_id, seq)" in key
    finally:
        await conn.close()
