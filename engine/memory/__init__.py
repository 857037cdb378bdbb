"""Conversation memory: one interface, a backend per URL scheme.

::

    store = await open_store("sqlite:///./engine-memory.db")
    chat = store.for_parent("ChatSession", "42")
    await chat.add_user_message("Hello")
    history = await chat.get_messages(limit=20)
    await store.aclose()

This package knows nothing of HTTP: it raises
:class:`~engine.errors.InvalidFields` for bad input and
:class:`~engine.errors.StoreUnavailable` when the store fails, and ``app.py``
maps those to 422 and 503.

The Redis and PostgreSQL backends are imported only when their URL is used, so
their drivers stay optional extras.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final
from urllib.parse import urlsplit

from ..errors import InvalidFields, StoreUnavailable
from .base import (
    DEFAULT_TTL,
    Conversation,
    MemoryStore,
    StoredMessage,
    check_ttl,
    redact_url,
)

__all__ = [
    "DEFAULT_TTL",
    "Conversation",
    "MemoryStore",
    "StoredMessage",
    "open_store",
    "sqlite_path",
]

#: What :func:`open_store` accepts, for error messages and docs.
SUPPORTED_URLS: Final = (
    "sqlite:///relative/path.db",
    "sqlite:////absolute/path.db",
    "memory://",
    "redis://host:port/db",
    "rediss://host:port/db",
    "postgresql://user:password@host:port/database",
    "postgres://user:password@host:port/database",
)


@contextmanager
def _driver(scheme: str, driver: str, extra: str) -> Iterator[None]:
    """Turn a missing optional driver into an error that says what to install."""
    try:
        yield
    except ImportError as exc:
        if exc.name is None or exc.name.partition(".")[0] != driver:
            raise
        raise StoreUnavailable(
            f"{scheme}:// memory needs the {driver} driver: pip install 'sse-engine[{extra}]'"
        ) from exc


def sqlite_path(url: str) -> str:
    # sqlite:///x.db is the relative path x.db and sqlite:////x.db the absolute
    # /x.db, as in SQLAlchemy's URLs: everything after the third slash.
    rest = url[len("sqlite:") :]
    if not rest.startswith("///") or len(rest) == 3:
        raise InvalidFields(
            f"bad SQLite URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    return rest[3:]


async def open_store(url: str, *, ttl: int = DEFAULT_TTL) -> MemoryStore:
    """Open the store ``url`` names; the caller must ``aclose()`` it.

    ``ttl`` is how long (seconds) a backend that expires data (Redis) keeps a
    conversation after its last write.

    Raises :class:`InvalidFields` for a URL with an unknown scheme (the message
    lists the supported ones), a malformed SQLite URL or a bad ``ttl``, and
    :class:`StoreUnavailable` when the store cannot be opened or its driver is
    not installed (the message names the extra to install).
    """
    if not isinstance(url, str):
        raise InvalidFields(f"memory URL must be a string, not {type(url).__name__}")
    check_ttl(ttl)  # before connecting, so a bad value leaks no connection
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return await SQLiteStore.open(sqlite_path(url), ttl=ttl)
    if scheme == "memory":
        from .inmemory import InMemoryStore

        return InMemoryStore(ttl=ttl)
    if scheme in ("redis", "rediss"):
        with _driver(scheme, "redis", "redis"):
            from .redis import RedisStore
        return await RedisStore.open(url, ttl=ttl)
    if scheme in ("postgresql", "postgres"):
        with _driver(scheme, "asyncpg", "postgres"):
            from .postgres import PostgresStore
        return await PostgresStore.open(url, ttl=ttl)
    raise InvalidFields(
        f"unsupported memory URL {redact_url(url)!r}; use one of: {', '.join(SUPPORTED_URLS)}"
    )
