"""Where client keys made through the admin API live: the memory store's database.

One interface, :class:`KeyStore`, a backend per memory URL scheme: SQLite (the
default: two tables beside the conversations, in the same file), PostgreSQL,
Redis, and memory (tests). Keys from the TOML config are not stored: the file
is their source. Each backend keeps a key as its JSON (a
:class:`~engine.keys.ClientKey`: the hash of the secret, never the secret) and
the tokens spent against each budget period, so a budget outlives a restart.

The gateway reads the keys into its :class:`~engine.keys.KeyRing` at start-up
and after every change it makes, and again every ``key_refresh`` seconds, so a
key changed through another worker or box is seen within that time. A request
never waits for the store.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from typing import Final
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import msgspec

from .errors import InvalidFields, StoreUnavailable
from .keys import ClientKey

__all__ = ["InMemoryKeys", "KeyStore", "SQLiteKeys", "open_keystore"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ClientKey).decode


class KeyStore(ABC):
    """Client keys by id, and what each spent per budget period."""

    @abstractmethod
    async def load(self) -> list[ClientKey]:
        """Every stored key."""

    @abstractmethod
    async def put(self, key: ClientKey) -> None:
        """Store ``key``, replacing the one with its id."""

    @abstractmethod
    async def delete(self, key_id: str) -> bool:
        """Remove a key (and its spending); False if there was none."""

    @abstractmethod
    async def add_spent(self, key_id: str, period_start: float, tokens: int) -> None:
        """Add ``tokens`` to what ``key_id`` spent in the period starting at ``period_start``."""

    @abstractmethod
    async def spent(self) -> dict[tuple[str, float], int]:
        """What each key spent, by (key id, period start)."""

    async def aclose(self) -> None:
        return None


class InMemoryKeys(KeyStore):
    """Keys in this process only (``memory://``): gone at exit."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._spent: dict[tuple[str, float], int] = {}

    async def load(self) -> list[ClientKey]:
        return [_decode(data) for data in self._keys.values()]

    async def put(self, key: ClientKey) -> None:
        self._keys[key.id] = _encode(key)

    async def delete(self, key_id: str) -> bool:
        for period in [p for p in self._spent if p[0] == key_id]:
            del self._spent[period]
        return self._keys.pop(key_id, None) is not None

    async def add_spent(self, key_id: str, period_start: float, tokens: int) -> None:
        period = (key_id, period_start)
        self._spent[period] = self._spent.get(period, 0) + tokens

    async def spent(self) -> dict[tuple[str, float], int]:
        return dict(self._spent)


_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS client_keys (
        id    TEXT PRIMARY KEY,
        data  TEXT NOT NULL  -- the ClientKey as JSON: a hash, never the secret
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS client_key_spend (
        key_id        TEXT    NOT NULL,
        period_start  REAL    NOT NULL,  -- unix seconds, UTC calendar period
        tokens        INTEGER NOT NULL,
        PRIMARY KEY (key_id, period_start)
    ) WITHOUT ROWID""",
)


class SQLiteKeys(KeyStore):
    """Two tables in the memory file (created if missing; the conversations'
    schema version is not touched). Calls run in a worker thread, one at a time,
    as the conversation store's do (:mod:`engine.memory.sqlite`)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, path: str) -> SQLiteKeys:
        def connect() -> sqlite3.Connection:
            db = sqlite3.connect(path, check_same_thread=False, timeout=5.0, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                with db:
                    db.execute("BEGIN IMMEDIATE")
                    for statement in _SCHEMA:
                        db.execute(statement)
            except BaseException:
                db.close()
                raise
            return db

        try:
            return cls(await anyio.to_thread.run_sync(connect))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the key store: {exc}") from exc

    async def _run(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        def run() -> list[tuple[object, ...]]:
            with self._db:
                return self._db.execute(sql, args).fetchall()

        async with self._lock:
            try:
                return await anyio.to_thread.run_sync(run)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"key store failed: {exc}") from exc

    async def load(self) -> list[ClientKey]:
        rows = await self._run("SELECT data FROM client_keys ORDER BY id")
        return [_decode(str(row[0])) for row in rows]

    async def put(self, key: ClientKey) -> None:
        await self._run(
            "INSERT INTO client_keys (id, data) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            key.id,
            _encode(key).decode(),
        )

    async def delete(self, key_id: str) -> bool:
        def run() -> bool:
            with self._db:  # one transaction: the key and its spending go together
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM client_key_spend WHERE key_id = ?", (key_id,))
                cursor = self._db.execute("DELETE FROM client_keys WHERE id = ?", (key_id,))
                return cursor.rowcount > 0

        async with self._lock:
            try:
                return await anyio.to_thread.run_sync(run)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"key store failed: {exc}") from exc

    async def add_spent(self, key_id: str, period_start: float, tokens: int) -> None:
        await self._run(
            "INSERT INTO client_key_spend (key_id, period_start, tokens) VALUES (?, ?, ?) "
            "ON CONFLICT (key_id, period_start) DO UPDATE SET tokens = tokens + excluded.tokens",
            key_id,
            period_start,
            tokens,
        )

    async def spent(self) -> dict[tuple[str, float], int]:
        rows = await self._run("SELECT key_id, period_start, tokens FROM client_key_spend")
        return {(str(k), float(str(p))): int(str(t)) for k, p, t in rows}

    async def aclose(self) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(self._db.close)


async def open_keystore(url: str) -> KeyStore:
    """The key store in the database ``url`` (the memory store's URL) names."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return InMemoryKeys()
    if scheme == "sqlite":
        from .memory import sqlite_path

        return await SQLiteKeys.open(sqlite_path(url))
    # The drivers are optional extras: imported only when their URL is used.
    from .memory import _driver

    if scheme in ("postgresql", "postgres"):
        with _driver(scheme, "asyncpg", "postgres"):
            from .keystore_postgres import PostgresKeys
        return await PostgresKeys.open(url)
    if scheme in ("redis", "rediss"):
        with _driver(scheme, "redis", "redis"):
            from .keystore_redis import RedisKeys
        return await RedisKeys.open(url)
    raise InvalidFields(f"keys cannot be stored in {scheme}:// yet")
