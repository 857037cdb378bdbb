"""Client keys in PostgreSQL (``postgresql://``, ``postgres://``), through an asyncpg pool.

Needs the ``[postgres]`` extra. Two tables beside the conversations, created
if missing when the store opens (under an advisory lock: several gateways may
start at once, and two concurrent ``CREATE TABLE IF NOT EXISTS`` can still
collide in PostgreSQL's catalog):

- ``client_keys (id, data)``: a key's :class:`~engine.keys.ClientKey` JSON (the
  hash of its secret, never the secret), as ``text`` like the memory tables'
  JSON, so it reads back byte for byte;
- ``client_key_spend (key_id, period_start, tokens)``: tokens spent per budget
  period. :meth:`PostgresKeys.add_spent` is one upsert that adds, which
  PostgreSQL runs under the row's lock, so concurrent gateways never lose an
  increment.

``schema`` puts both tables in a schema of their own (created if missing):
how the tests keep runs sharing one database apart.
"""

from __future__ import annotations

import re
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints

from .errors import InvalidFields
from .keys import ClientKey

# The key store's own codec: every backend writes the same JSON.
from .keystore import KeyStore, _decode, _encode
from .memory.base import redact_url, translate_errors
from .memory.postgres import TIMEOUT

__all__ = ["PostgresKeys"]

#: Connections of the key store's pool. Its calls are few and short (a
#: refresh every few seconds, an admin change, one upsert per generation's
#: end): more would only hold server connections idle.
POOL_SIZE: Final = 4

# An arbitrary constant naming "sse-engine key tables" among advisory locks
# (the conversation schema's lock is 0x55EE419E).
_SCHEMA_LOCK: Final = 0x55E_E41_9F

_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

# A plain lowercase identifier needs no quoting and cannot inject anything.
_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


class PostgresKeys(KeyStore):
    """A :class:`KeyStore` in PostgreSQL. Open it with :meth:`open`."""

    def __init__(self, pool: Any, url: str, *, schema: str | None = None) -> None:
        self._pool = pool
        self._url = redact_url(url)
        where = f"{schema}." if schema else ""
        self._keys = f"{where}client_keys"
        self._spend = f"{where}client_key_spend"
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, schema: str | None = None) -> PostgresKeys:
        """Connect a pool to ``url`` and create the tables if they are missing.

        Raises :class:`~engine.errors.InvalidFields` for a ``schema`` that is
        not a lowercase identifier, and :class:`~engine.errors.StoreUnavailable`
        if the server cannot be reached or refuses the credentials or the DDL
        (the message never shows the URL's password).
        """
        if schema is not None and not _IDENTIFIER.match(schema):
            raise InvalidFields(f"key store schema must be a lowercase identifier, not {schema!r}")
        safe = redact_url(url)
        with translate_errors(_ERRORS, "connect", safe):
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=POOL_SIZE, timeout=TIMEOUT, command_timeout=TIMEOUT
            )
        store = cls(pool, url, schema=schema)
        try:
            with translate_errors(_ERRORS, "create the key tables", safe):
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                    if schema is not None:
                        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                    await conn.execute(store._ddl())
        except BaseException:
            pool.terminate()
            raise
        return store

    def _ddl(self) -> str:
        return f"""
        CREATE TABLE IF NOT EXISTS {self._keys} (
            id    text PRIMARY KEY,
            data  text NOT NULL  -- the ClientKey as JSON: a hash, never the secret
        );
        CREATE TABLE IF NOT EXISTS {self._spend} (
            key_id        text             NOT NULL,
            period_start  double precision NOT NULL,  -- unix seconds, UTC calendar period
            tokens        bigint           NOT NULL,
            PRIMARY KEY (key_id, period_start)
        )
        """

    async def load(self) -> list[ClientKey]:
        with translate_errors(_ERRORS, "load client keys", self._url):
            rows = await self._pool.fetch(f"SELECT data FROM {self._keys} ORDER BY id")
        return [_decode(row["data"]) for row in rows]

    async def put(self, key: ClientKey) -> None:
        with translate_errors(_ERRORS, "store a client key", self._url):
            await self._pool.execute(
                f"INSERT INTO {self._keys} (id, data) VALUES ($1, $2) "
                "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                key.id,
                _encode(key).decode(),
            )

    async def delete(self, key_id: str) -> bool:
        with translate_errors(_ERRORS, "delete a client key", self._url):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(f"DELETE FROM {self._spend} WHERE key_id = $1", key_id)
                status: str = await conn.execute(f"DELETE FROM {self._keys} WHERE id = $1", key_id)
        # asyncpg returns the command tag, "DELETE <count>".
        return int(status.rpartition(" ")[2]) > 0

    async def add_spent(self, key_id: str, period_start: float, tokens: int) -> None:
        with translate_errors(_ERRORS, "record a key's spending", self._url):
            await self._pool.execute(
                f"INSERT INTO {self._spend} AS s (key_id, period_start, tokens) "
                "VALUES ($1, $2, $3) ON CONFLICT (key_id, period_start) "
                "DO UPDATE SET tokens = s.tokens + excluded.tokens",
                key_id,
                float(period_start),
                tokens,
            )

    async def spent(self) -> dict[tuple[str, float], int]:
        with translate_errors(_ERRORS, "read the keys' spending", self._url):
            rows = await self._pool.fetch(f"SELECT key_id, period_start, tokens FROM {self._spend}")
        return {(row["key_id"], row["period_start"]): row["tokens"] for row in rows}

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with translate_errors(_ERRORS, "close", self._url):
            await self._pool.close()
