"""``sqlite:///path``: the default store, one file, the standard library's sqlite3.

sqlite3 blocks, so every call runs in a worker thread (``anyio.to_thread``)
and never on the event loop. One connection per store, opened with
``check_same_thread=False`` and used by one thread at a time under an
:class:`anyio.Lock`: waiting tasks hold no thread, and a cancelled task cannot
abandon a half-done transaction because ``to_thread.run_sync`` waits for the
thread to finish.

The file is in WAL mode (https://www.sqlite.org/wal.html): readers do not block
the writer, and with ``synchronous=NORMAL`` a commit survives a crash or restart
of the process; only a power cut may lose the last few commits. The schema is
created at start-up and its version kept in ``PRAGMA user_version``, and an
older file is migrated in place, in one transaction, when opened
(:data:`_MIGRATIONS`): version 2 added the nullable ``tool_calls``,
``tool_call_id`` and ``parts`` columns, which rows written before read as NULL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

import anyio
import anyio.to_thread

from ..errors import StoreUnavailable
from .base import (
    DEFAULT_TTL,
    MemoryStore,
    StoredMessage,
    message_encoder,
    metadata_decoder,
    objects_decoder,
    translate_errors,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

#: The schema this release writes. A file with a higher version was written by
#: a newer release and is refused rather than misread.
SCHEMA_VERSION: Final = 2

# _MIGRATIONS[n] takes a file from version n to n + 1, inside one transaction.
# Version 0 is an empty file. One row per message; ``seq`` counts per
# conversation, so (parent, parent_id, seq) orders a conversation and the
# primary key doubles as the index every read uses.
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    0: (
        """
        CREATE TABLE messages (
            parent      TEXT    NOT NULL,
            parent_id   TEXT    NOT NULL,
            seq         INTEGER NOT NULL,
            message_id  TEXT    NOT NULL,
            role        TEXT    NOT NULL,
            type        TEXT    NOT NULL,
            content     TEXT    NOT NULL,
            metadata    TEXT    NOT NULL,  -- a JSON object
            created_at  REAL    NOT NULL,  -- unix seconds
            PRIMARY KEY (parent, parent_id, seq),
            UNIQUE (parent, parent_id, message_id)
        ) WITHOUT ROWID
        """,
    ),
    # Agent loops. ADD COLUMN only rewrites the schema, not the rows, so this is
    # instant on any size of file; SQLite takes one column per statement.
    1: (
        "ALTER TABLE messages ADD COLUMN tool_calls TEXT",  # a JSON array, or NULL
        "ALTER TABLE messages ADD COLUMN tool_call_id TEXT",
        "ALTER TABLE messages ADD COLUMN parts TEXT",  # a JSON array, or NULL
    ),
}

#: Seconds a write waits for another process's write lock before failing
#: (sqlite3's own default is 5).
BUSY_TIMEOUT: Final = 5.0

_COLUMNS: Final = (
    "message_id, role, content, type, metadata, created_at, tool_calls, tool_call_id, parts"
)
_ERRORS: Final = (sqlite3.Error, OSError)

Row = tuple[str, str, str, str, str, float, str | None, str | None, str | None]


def _message(row: Row) -> StoredMessage:
    message_id, role, content, kind, metadata, created_at, tool_calls, tool_call_id, parts = row
    return StoredMessage(
        message_id=message_id,
        role=role,  # type: ignore[arg-type]  # only validated roles are written
        content=content,
        type=kind,  # type: ignore[arg-type]  # only validated types are written
        metadata=metadata_decoder.decode(metadata),
        created_at=created_at,
        tool_calls=None if tool_calls is None else objects_decoder.decode(tool_calls),
        tool_call_id=tool_call_id,
        parts=None if parts is None else objects_decoder.decode(parts),
    )


def _json(value: list[dict[str, Any]] | None) -> str | None:
    return None if value is None else message_encoder.encode(value).decode()


def _connect(path: str) -> sqlite3.Connection:
    """Open ``path``, switch it to WAL and bring its schema to :data:`SCHEMA_VERSION`."""
    # isolation_level=None: no implicit transactions; we BEGIN explicitly.
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"memory store {path} has schema version {version}; this release "
                    f"understands up to {SCHEMA_VERSION} (was it written by a newer one?)"
                )
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                version += 1
                # user_version is part of the transaction: a failed migration
                # leaves the old version and the old schema together.
                conn.execute(f"PRAGMA user_version = {version:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise
    except BaseException:
        conn.close()
        raise
    return conn


class SQLiteStore(MemoryStore):
    """A :class:`MemoryStore` in one SQLite file. Open it with :meth:`open`.

    ``ttl`` is accepted and ignored: conversations are kept until cleared.
    """

    def __init__(self, conn: sqlite3.Connection, path: str, *, ttl: int = DEFAULT_TTL) -> None:
        super().__init__(ttl=ttl)
        self._conn = conn
        self._path = path
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, path: str, *, ttl: int = DEFAULT_TTL) -> SQLiteStore:
        """Open (creating if needed) the database at ``path``.

        Raises :class:`StoreUnavailable` if the file cannot be opened or
        written, or was written by a newer release.
        """
        with translate_errors(_ERRORS, "open", path):
            conn = await anyio.to_thread.run_sync(_connect, path)
        return cls(conn, path, ttl=ttl)

    @property
    def path(self) -> str:
        """The database file, as given in the URL."""
        return self._path

    async def _run(self, action: str, fn: Any, *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in a worker thread, one call at a time."""
        async with self._lock:
            self._check_open()
            with translate_errors(_ERRORS, action, self._path):
                return await anyio.to_thread.run_sync(fn, self._conn, *args)

    async def ping(self) -> None:
        await self._run("answer a ping", _ping)

    async def aclose(self) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            with translate_errors(_ERRORS, "close", self._path):
                await anyio.to_thread.run_sync(self._conn.close)

    async def _append(
        self, parent: str, parent_id: str, messages: Sequence[StoredMessage]
    ) -> list[StoredMessage]:
        result: list[StoredMessage] = await self._run(
            "store messages", _append, parent, parent_id, messages
        )
        return result

    async def _read(self, parent: str, parent_id: str, limit: int | None) -> list[StoredMessage]:
        result: list[StoredMessage] = await self._run(
            "read messages", _read, parent, parent_id, limit
        )
        return result

    async def _delete(self, parent: str, parent_id: str) -> int:
        result: int = await self._run("clear messages", _delete, parent, parent_id)
        return result


# The functions below run in the worker thread.


def _ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


def _append(
    conn: sqlite3.Connection, parent: str, parent_id: str, messages: Sequence[StoredMessage]
) -> list[StoredMessage]:
    # IMMEDIATE takes the write lock up front, so MAX(seq) + 1 cannot race with
    # another process writing the same file.
    conn.execute("BEGIN IMMEDIATE")
    try:
        (seq,) = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE parent = ? AND parent_id = ?",
            (parent, parent_id),
        ).fetchone()
        stored: list[StoredMessage] = []
        for message in messages:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM messages"
                " WHERE parent = ? AND parent_id = ? AND message_id = ?",
                (parent, parent_id, message.message_id),
            ).fetchone()
            if row is not None:
                stored.append(_message(row))
                continue
            seq += 1
            conn.execute(
                f"INSERT INTO messages (parent, parent_id, seq, {_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    parent,
                    parent_id,
                    seq,
                    message.message_id,
                    message.role,
                    message.content,
                    message.type,
                    message_encoder.encode(message.metadata).decode(),
                    message.created_at,
                    _json(message.tool_calls),
                    message.tool_call_id,
                    _json(message.parts),
                ),
            )
            stored.append(message)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    return stored


def _read(
    conn: sqlite3.Connection, parent: str, parent_id: str, limit: int | None
) -> list[StoredMessage]:
    if limit is None:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE parent = ? AND parent_id = ? ORDER BY seq",
            (parent, parent_id),
        ).fetchall()
    else:
        # The last `limit` by walking the primary key backwards, then put back
        # in insertion order.
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE parent = ? AND parent_id = ?"
            " ORDER BY seq DESC LIMIT ?",
            (parent, parent_id, limit),
        ).fetchall()
        rows.reverse()
    return [_message(row) for row in rows]


def _delete(conn: sqlite3.Connection, parent: str, parent_id: str) -> int:
    # One statement is its own transaction in autocommit mode.
    cursor = conn.execute(
        "DELETE FROM messages WHERE parent = ? AND parent_id = ?", (parent, parent_id)
    )
    return cursor.rowcount
