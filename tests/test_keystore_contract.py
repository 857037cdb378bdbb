"""The key store contract: every backend behaves the same, checked on all four.

PostgreSQL and Redis run against the servers named by ENGINE_TEST_POSTGRES_URL
and ENGINE_TEST_REDIS_URL, with the rule of the memory contract: without them
the tests skip on a developer's machine, under CI (``CI`` set) they fail.
Each test gets its own PostgreSQL schema or Redis key prefix, removed at the
end, so runs can share a server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest

from engine.errors import InvalidFields, StoreUnavailable
from engine.keys import ClientKey, KeyPolicy
from engine.keystore import InMemoryKeys, KeyStore, SQLiteKeys, open_keystore
from tests.test_memory_contract import Proxy, closed_port, server_url  # noqa: F401 (a fixture)

BACKENDS = ["memory", "sqlite", "postgres", "redis"]

# Budget periods as period_bounds gives them: whole seconds, UTC midnights.
JAN = 1704067200.0  # 2024-01-01
FEB = 1706745600.0  # 2024-02-01


@dataclass
class Harness:
    """A backend's store, and how to open a second one on the same data."""

    store: KeyStore
    reopen: Callable[[], Awaitable[KeyStore]]


async def _open(backend: str, opener: Callable[[], Awaitable[KeyStore]]) -> KeyStore:
    try:
        return await opener()
    except StoreUnavailable as exc:
        # A URL was given, so the developer or CI asked for this server: never skip.
        pytest.fail(f"the {backend} test server does not answer: {exc}")


@pytest.fixture(params=BACKENDS)
async def harness(request, tmp_path) -> AsyncIterator[Harness]:
    backend = request.param
    uid = uuid.uuid4().hex[:12]
    opener: Callable[[], Awaitable[KeyStore]]
    cleanup: Callable[[], Awaitable[None]] | None = None
    if backend == "memory":
        memory = InMemoryKeys()

        async def opener() -> KeyStore:
            return memory

    elif backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'keys.db'}"

        async def opener() -> KeyStore:
            return await open_keystore(url)

    elif backend == "postgres":
        import asyncpg

        from engine.keystore_postgres import PostgresKeys

        url = server_url("postgres")
        schema = f"keys_test_{uid}"

        async def opener() -> KeyStore:
            return await PostgresKeys.open(url, schema=schema)

        async def cleanup() -> None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()

    else:
        from engine.keystore_redis import RedisKeys, connect

        url = server_url("redis")
        prefix = f"sse-engine-test:{uid}:"

        async def opener() -> KeyStore:
            return await RedisKeys.open(url, prefix=prefix)

        async def cleanup() -> None:
            client = connect(url)
            try:
                await client.delete(f"{prefix}keys", f"{prefix}key-spend")
            finally:
                await client.aclose()

    opened: list[KeyStore] = []

    async def reopen() -> KeyStore:
        store = await _open(backend, opener)
        opened.append(store)
        return store

    store = await reopen()
    try:
        yield Harness(store, reopen)
    finally:
        for each in opened:
            await each.aclose()
        if cleanup is not None:
            await cleanup()


def make_key(key_id: str, **fields) -> ClientKey:
    return ClientKey(id=key_id, alias=f"alias-{len(key_id)}", hash="ab" * 32, **fields)


def by_id(keys: list[ClientKey]) -> list[ClientKey]:
    return sorted(keys, key=lambda key: key.id)


async def test_a_new_store_is_empty(harness):
    assert await harness.store.load() == []
    assert await harness.store.spent() == {}


async def test_put_load_replace_delete(harness):
    store = harness.store
    first, second = make_key("key_a", rpm=10), make_key("key_b", tpm=500)
    await store.put(first)
    await store.put(second)
    assert by_id(await store.load()) == [first, second]

    replaced = make_key("key_a", rpm=20, models=["mock/*"])
    await store.put(replaced)  # same id: replaces, never duplicates
    assert by_id(await store.load()) == [replaced, second]

    assert await store.delete("key_a") is True
    assert await store.load() == [second]
    assert await store.delete("key_a") is False  # already gone
    assert await store.delete("key_never") is False
    assert await store.load() == [second]


async def test_every_policy_field_round_trips(harness):
    key = ClientKey(
        id="key_0123456789abcdef",
        alias="everything.set_1",
        hash="0f" * 32,
        shown="sk-sse-AbCd",
        created_at=1719792000.25,
        source="config",  # not what the admin API stores: still any field round-trips
        models=["openai/gpt-*", "mock/*", "my-fallback"],
        rpm=60,
        tpm=123_456,
        max_streams=3,
        budget_tokens=10**12,
        budget_period="week",
        expires_at=1893456000.5,
        shared_parents=["Team", "ChatSession ünïcode"],
    )
    # Every field differs from its default, so a field the backend dropped or
    # mangled cannot pass unnoticed (a new KeyPolicy field must be added here).
    defaults = ClientKey(id="", alias="x", hash="")
    for field in ClientKey.__struct_fields__:
        if field not in ("id", "alias", "hash"):
            assert getattr(key, field) != getattr(defaults, field), field
    assert set(KeyPolicy.__struct_fields__) <= set(ClientKey.__struct_fields__)

    await harness.store.put(key)
    assert await harness.store.load() == [key]
    other = await harness.reopen()  # another process, or a restart, reads it the same
    assert await other.load() == [key]
    assert (await other.load())[0].policy() == key.policy()


async def test_spend_accumulates_per_key_and_period(harness):
    store = harness.store
    await store.add_spent("key_a", JAN, 10)
    await store.add_spent("key_a", JAN, 5)
    await store.add_spent("key_a", FEB, 7)
    await store.add_spent("key_b", JAN, 1)
    await store.add_spent("key_b", 1719792000.5, 2)  # any float comes back exactly
    await store.add_spent("key_c", JAN, 2**40)  # past 32 bits

    assert await store.spent() == {
        ("key_a", JAN): 15,
        ("key_a", FEB): 7,
        ("key_b", JAN): 1,
        ("key_b", 1719792000.5): 2,
        ("key_c", JAN): 2**40,
    }
    assert await (await harness.reopen()).spent() == await store.spent()


async def test_delete_drops_the_keys_spending_and_only_its(harness):
    store = harness.store
    # "key_a|x" is another key whose id starts with "key_a|": Redis keeps
    # spending as "<id>|<period>" fields, so it must not be taken for key_a's.
    await store.put(make_key("key_a"))
    await store.put(make_key("key_a|x"))
    await store.put(make_key("key_ab"))
    for key_id in ("key_a", "key_a|x", "key_ab"):
        await store.add_spent(key_id, JAN, 3)
        await store.add_spent(key_id, FEB, 4)

    assert await store.delete("key_a") is True

    assert [key.id for key in by_id(await store.load())] == ["key_ab", "key_a|x"]
    assert await store.spent() == {
        ("key_a|x", JAN): 3,
        ("key_a|x", FEB): 4,
        ("key_ab", JAN): 3,
        ("key_ab", FEB): 4,
    }
    # Spending recorded after the delete starts again from nothing.
    await store.add_spent("key_a", JAN, 1)
    assert (await store.spent())["key_a", JAN] == 1


async def test_deleting_a_key_that_is_not_stored_still_drops_its_spending(harness):
    # Keys from the config file are never stored, but their budgets are.
    await harness.store.add_spent("cfg_team", JAN, 9)
    assert await harness.store.delete("cfg_team") is False
    assert await harness.store.spent() == {}


async def test_concurrent_add_spent_sums_exactly(harness):
    # Two stores on the same data, like two gateways, 50 tasks in all.
    stores = [harness.store, await harness.reopen()]
    await asyncio.gather(
        *(stores[i % 2].add_spent("key_hot", JAN, i + 1) for i in range(50)),
        *(stores[i % 2].put(make_key(f"key_{i}")) for i in range(10)),
    )
    assert await harness.store.spent() == {("key_hot", JAN): sum(range(1, 51))}
    assert len(await harness.store.load()) == 10


@pytest.mark.parametrize("backend", ["sqlite", "redis", "rediss", "postgresql", "postgres"])
async def test_store_that_is_down_raises_promptly(backend, tmp_path, closed_port):  # noqa: F811
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = {
        "sqlite": f"sqlite:///{blocker}/keys.db",
        "redis": f"redis://:s3cret@127.0.0.1:{closed_port}/0",
        "rediss": f"rediss://:s3cret@127.0.0.1:{closed_port}/0",
        "postgresql": f"postgresql://engine:s3cret@127.0.0.1:{closed_port}/engine",
        "postgres": f"postgres://engine:s3cret@127.0.0.1:{closed_port}/engine",
    }[backend]
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await open_keystore(url)
    assert info.value.__cause__ is not None
    assert info.value.status == 503
    assert "s3cret" not in str(info.value)
    assert time.monotonic() - started < 10  # a request waiting on it gets its 503 soon


@pytest.mark.parametrize("backend", ["redis", "postgres"])
async def test_server_going_away_makes_the_store_unavailable(backend):
    url = server_url(backend)
    parts = urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or {"redis": 6379}.get(backend, 5432))
    port = await proxy.start()
    netloc = parts.netloc.rpartition("@")
    proxied = urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}127.0.0.1:{port}"))
    store = await _open(backend, lambda: open_keystore(proxied))
    try:
        await store.load()
        await proxy.cut()
        started = time.monotonic()
        calls = [
            store.load(),
            store.put(make_key("key_a")),
            store.delete("key_a"),
            store.add_spent("key_a", JAN, 1),
            store.spent(),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as info:
                await call
            assert info.value.status == 503
        assert time.monotonic() - started < 20
    finally:
        await proxy.cut()
        await store.aclose()


async def test_open_keystore_picks_the_backend_by_scheme(tmp_path):
    assert isinstance(await open_keystore("memory://"), InMemoryKeys)
    sqlite = await open_keystore(f"sqlite:///{tmp_path / 'k.db'}")
    assert isinstance(sqlite, SQLiteKeys)
    await sqlite.aclose()
    with pytest.raises(InvalidFields):
        await open_keystore("mysql://localhost/keys")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "redis"])
async def test_open_keystore_opens_the_server_backends(scheme):
    from engine.keystore_postgres import PostgresKeys
    from engine.keystore_redis import RedisKeys

    backend = "redis" if scheme == "redis" else "postgres"
    url = server_url(backend)
    url = scheme + url[url.index(":") :]
    store = await _open(backend, lambda: open_keystore(url))
    try:
        assert isinstance(store, RedisKeys if backend == "redis" else PostgresKeys)
        await store.spent()  # it answers
    finally:
        await store.aclose()


async def test_a_bad_schema_name_is_refused():
    from engine.keystore_postgres import PostgresKeys

    with pytest.raises(InvalidFields):
        await PostgresKeys.open("postgresql://x@127.0.0.1:1/x", schema="keys; DROP TABLE x")
