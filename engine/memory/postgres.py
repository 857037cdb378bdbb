"""``postgresql://...`` (and ``postgres://``): PostgreSQL through an asyncpg pool.

Needs the ``[postgres]`` extra. One table, one row per message; ``seq`` comes
from an identity column, so it grows across all conversations, and the primary
key (parent_class, parent_id, seq) orders each conversation and serves every
read. A batch is written in one transaction that first takes a transaction-level
advisory lock on its conversation: writers to the same conversation commit in
``seq`` order, so a reader never sees a later message before an earlier one,
while different conversations never wait for each other.

The schema is created at start-up under a global advisory lock (several servers
may start at once) and its version kept in ``sse_engine_schema``; an older
schema is migrated in place, in one transaction with the version bump
(:data:`_MIGRATIONS`). Version 2 added the nullable ``tool_calls``,
``tool_call_id`` and ``parts`` columns. JSON is kept as ``text``, like
``metadata``: returned byte for byte, where ``jsonb`` would refuse an escaped NUL
in a string and reorder keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints

from ..errors import StoreUnavailable
from .base import (
    DEFAULT_TTL,
    MemoryStore,
    StoredMessage,
    message_encoder,
    metadata_decoder,
    objects_decoder,
    redact_url,
    translate_errors,
)

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

#: The schema this release writes; a database at a higher version is refused.
SCHEMA_VERSION: Final = 2

#: Seconds to connect, and for any one statement, before the store counts as down.
TIMEOUT: Final = 10.0

#: Connections per store. asyncpg's default is 10; a gateway's memory calls are
#: short, so 10 serve hundreds of concurrent streams.
POOL_SIZE: Final = 10

# An arbitrary constant naming "sse-engine schema migration" among advisory locks.
_SCHEMA_LOCK: Final = 0x55E_E41_9E

_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

# _MIGRATIONS[n] takes the database from version n to n + 1, in one transaction.
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    0: (
        """
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
        """,
    ),
    # Agent loops. Nullable columns without a default: PostgreSQL only changes
    # the catalog (no table rewrite), so this is instant however many rows.
    1: (
        """
        ALTER TABLE sse_engine_messages
            ADD COLUMN tool_calls   text,  -- a JSON array, or NULL
            ADD COLUMN tool_call_id text,
            ADD COLUMN parts        text   -- a JSON array, or NULL
        """,
    ),
}

_COLUMNS: Final = (
    "message_id, role, content, type, metadata, created_at, tool_calls, tool_call_id, parts"
)

_INSERT: Final = f"""
INSERT INTO sse_engine_messages (parent_class, parent_id, {_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (parent_class, parent_id, message_id) DO NOTHING
RETURNING seq
"""
# The same, taking the conversation's lock first. Rows come out of `locked`
# only once the lock is held, and the identity default is computed per inserted
# row, so seq is drawn under the lock too.
_INSERT_LOCKED: Final = f"""
WITH locked AS (
    SELECT pg_advisory_xact_lock(hashtextextended($1::text || chr(31) || $2::text, 0))
)
INSERT INTO sse_engine_messages (parent_class, parent_id, {_COLUMNS})
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM locked
ON CONFLICT (parent_class, parent_id, message_id) DO NOTHING
RETURNING seq
"""
_SELECT_ONE: Final = f"""
SELECT {_COLUMNS} FROM sse_engine_messages
WHERE parent_class = $1 AND parent_id = $2 AND message_id = $3
"""
_SELECT_ALL: Final = f"""
SELECT {_COLUMNS} FROM sse_engine_messages
WHERE parent_class = $1 AND parent_id = $2 ORDER BY seq
"""
_SELECT_LAST: Final = f"""
SELECT * FROM (
    SELECT seq, {_COLUMNS} FROM sse_engine_messages
    WHERE parent_class = $1 AND parent_id = $2 ORDER BY seq DESC LIMIT $3
) AS last ORDER BY seq
"""
# hashtextextended is PostgreSQL's own text hash (11+); chr(31) cannot occur
# in a validated parent, so ("a", "bc") and ("ab", "c") lock differently.
_LOCK_CONVERSATION: Final = "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 0))"


def _message(row: Any) -> StoredMessage:
    tool_calls, parts = row["tool_calls"], row["parts"]
    return StoredMessage(
        message_id=row["message_id"],
        role=row["role"],
        content=row["content"],
        type=row["type"],
        metadata=metadata_decoder.decode(row["metadata"]),
        created_at=row["created_at"],
        tool_calls=None if tool_calls is None else objects_decoder.decode(tool_calls),
        tool_call_id=row["tool_call_id"],
        parts=None if parts is None else objects_decoder.decode(parts),
    )


def _json(value: list[dict[str, Any]] | None) -> str | None:
    return None if value is None else message_encoder.encode(value).decode()


async def _migrate(conn: Any, url: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS sse_engine_schema (version integer NOT NULL)"
        )
        version = await conn.fetchval("SELECT max(version) FROM sse_engine_schema") or 0
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"memory store {url} has schema version {version}; this release "
                f"understands up to {SCHEMA_VERSION} (was it written by a newer one?)"
            )
        while version < SCHEMA_VERSION:
            for statement in _MIGRATIONS[version]:
                await conn.execute(statement)
            version += 1
        await conn.execute("DELETE FROM sse_engine_schema")
        await conn.execute("INSERT INTO sse_engine_schema (version) VALUES ($1)", version)


class PostgresStore(MemoryStore):
    """A :class:`MemoryStore` in PostgreSQL. Open it with :meth:`open`.

    ``ttl`` is accepted and ignored: conversations are kept until cleared.
    """

    def __init__(self, pool: Any, url: str, *, ttl: int = DEFAULT_TTL) -> None:
        super().__init__(ttl=ttl)
        self._pool = pool
        self._url = redact_url(url)

    @classmethod
    async def open(cls, url: str, *, ttl: int = DEFAULT_TTL) -> PostgresStore:
        """Connect a pool to ``url`` and create or migrate the schema.

        Raises :class:`StoreUnavailable` if the server cannot be reached, refuses
        the credentials, or holds a schema from a newer release.
        """
        safe = redact_url(url)
        with translate_errors(_ERRORS, "connect", safe):
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=POOL_SIZE, timeout=TIMEOUT, command_timeout=TIMEOUT
            )
        try:
            with translate_errors(_ERRORS, "create its schema", safe):
                async with pool.acquire() as conn:
                    await _migrate(conn, safe)
        except BaseException:
            pool.terminate()
            raise
        return cls(pool, url, ttl=ttl)

    async def ping(self) -> None:
        self._check_open()
        with translate_errors(_ERRORS, "answer a ping", self._url):
            await self._pool.fetchval("SELECT 1")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with translate_errors(_ERRORS, "close", self._url):
            await self._pool.close()

    async def _append(
        self, parent: str, parent_id: str, messages: Sequence[StoredMessage]
    ) -> list[StoredMessage]:
        self._check_open()
        stored: list[StoredMessage] = []
        with translate_errors(_ERRORS, "store messages", self._url):
            async with self._pool.acquire() as conn:
                if len(messages) == 1:
                    # The common case, one round trip: a single statement is its
                    # own transaction and holds the lock until it commits.
                    stored.append(
                        await self._insert(conn, _INSERT_LOCKED, parent, parent_id, messages[0])
                    )
                else:
                    async with conn.transaction():
                        await conn.execute(_LOCK_CONVERSATION, parent, parent_id)
                        for message in messages:
                            stored.append(
                                await self._insert(conn, _INSERT, parent, parent_id, message)
                            )
        return stored

    @staticmethod
    async def _insert(
        conn: Any, query: str, parent: str, parent_id: str, message: StoredMessage
    ) -> StoredMessage:
        seq = await conn.fetchval(
            query,
            parent,
            parent_id,
            message.message_id,
            message.role,
            message.content,
            message.type,
            message_encoder.encode(message.metadata).decode(),
            message.created_at,
            _json(message.tool_calls),
            message.tool_call_id,
            _json(message.parts),
        )
        if seq is not None:
            return message
        # The id is already there, committed (ON CONFLICT waits for a concurrent
        # insert to finish; this new statement's snapshot then sees it): hand
        # back the stored message, as the contract says.
        row = await conn.fetchrow(_SELECT_ONE, parent, parent_id, message.message_id)
        return _message(row)

    async def _read(self, parent: str, parent_id: str, limit: int | None) -> list[StoredMessage]:
        self._check_open()
        with translate_errors(_ERRORS, "read messages", self._url):
            if limit is None:
                rows = await self._pool.fetch(_SELECT_ALL, parent, parent_id)
            else:
                rows = await self._pool.fetch(_SELECT_LAST, parent, parent_id, limit)
        return [_message(row) for row in rows]

    async def _delete(self, parent: str, parent_id: str) -> int:
        self._check_open()
        with translate_errors(_ERRORS, "clear messages", self._url):
            status: str = await self._pool.execute(
                "DELETE FROM sse_engine_messages WHERE parent_class = $1 AND parent_id = $2",
                parent,
                parent_id,
            )
        # asyncpg returns the command tag, "DELETE <count>".
        return int(status.rpartition(" ")[2])
