"""The conversation memory interface: one :class:`MemoryStore`, four backends.

A store is shared by every request of a server, so it holds no per-request
state: :meth:`MemoryStore.for_parent` returns a small :class:`Conversation`
handle scoped to one ``(parent, parent_id)`` pair, where the seed's
``setParent`` mutated the store and would race between concurrent requests.

All input is validated here, once, before a backend sees it, so every backend
stores and returns the same thing and a rejected call stores nothing. A backend
implements three primitives (:meth:`MemoryStore._append`,
:meth:`MemoryStore._read`, :meth:`MemoryStore._delete`) plus
:meth:`MemoryStore.ping` and :meth:`MemoryStore.aclose`, writes each
``_append`` batch atomically, and turns every driver failure into
:class:`~engine.errors.StoreUnavailable` raised ``from`` the original exception
(:func:`translate_errors`).
"""

from __future__ import annotations

import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Final, Literal, Self, get_args
from urllib.parse import urlsplit, urlunsplit

import msgspec

from ..errors import InvalidFields, StoreUnavailable
from ..wire import MAX_JSON_DEPTH, json_depth

__all__ = [
    "DEFAULT_TTL",
    "MAX_KEY_LENGTH",
    "MAX_LIMIT",
    "Conversation",
    "MemoryStore",
    "MessageRole",
    "MessageType",
    "StoredMessage",
]

MessageRole = Literal["system", "user", "assistant"]
MessageType = Literal["text", "image", "audio"]

#: Longest parent class, parent id or message id, in characters. Matches
#: ``engine.wire.ParentKey``; 200 is ample for a class name plus a UUID and keeps
#: Redis keys and index entries small.
MAX_KEY_LENGTH: Final = 200
#: ``get_messages(limit=...)`` above this reads as "all": a conversation longer
#: than this cannot be loaded in one piece anyway.
MAX_LIMIT: Final = 1_000_000

#: Seconds a conversation lives in stores that expire keys (Redis): 30 days,
#: the same default as ``Config.memory_ttl``.
DEFAULT_TTL: Final = 30 * 24 * 3600

_ROLES: Final = frozenset(get_args(MessageRole))
_TYPES: Final = frozenset(get_args(MessageType))
# C0 controls and DEL, as in ``engine.wire.ParentKey``: they break logs, keys as
# redis-cli shows them, and URL paths (the HTTP layer puts parent and id there).
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_BATCH_FIELDS: Final = frozenset({"role", "content", "type", "metadata", "message_id"})


class StoredMessage(msgspec.Struct, kw_only=True, frozen=True):
    """One message of a conversation as the store keeps it.

    Frozen because it is history: every read decodes fresh copies, so changing
    one in place could not change what is stored anyway.
    """

    #: Unique within its conversation; adding the same id again is a no-op.
    message_id: str
    role: MessageRole
    content: str
    type: MessageType = "text"
    #: A JSON object, returned exactly as a JSON round trip gives it back.
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Unix seconds at which the store first received the message.
    created_at: float


#: Shared by the backends that keep whole messages as JSON (Redis, in-memory).
message_encoder: Final = msgspec.json.Encoder()
message_decoder: Final = msgspec.json.Decoder(StoredMessage)
metadata_decoder: Final = msgspec.json.Decoder(dict[str, Any])


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for errors and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def translate_errors(
    errors: tuple[type[BaseException], ...], action: str, url: str = ""
) -> Iterator[None]:
    """Turn a driver's ``errors`` into :class:`StoreUnavailable`, raised ``from`` them.

    The one place a backend maps foreign failures (after httpx's
    ``map_httpcore_exceptions``), so the HTTP layer sees a 503 whatever broke.
    ``url`` must already be free of passwords.
    """
    try:
        yield
    except StoreUnavailable:
        raise
    except errors as exc:
        where = f" at {url}" if url else ""
        raise StoreUnavailable(
            f"memory store{where} failed to {action}: {type(exc).__name__}: {exc}"
        ) from exc


def check_key(name: str, value: object) -> str:
    """Return ``value`` if it is a usable parent class, parent id or message id.

    Raises :class:`InvalidFields` naming ``name`` otherwise.
    """
    if not isinstance(value, str):
        raise InvalidFields(f"{name} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidFields(f"{name} must not be empty")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidFields(f"{name} must be at most {MAX_KEY_LENGTH} characters")
    if _CONTROL.search(value):
        raise InvalidFields(f"{name} must not contain control characters")
    _check_utf8(name, value)
    return value


def check_ttl(ttl: object) -> int:
    """Return ``ttl`` if it is a whole number of seconds >= 1; else raise :class:`InvalidFields`."""
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        raise InvalidFields(f"ttl must be a whole number of seconds >= 1, not {ttl!r}")
    return ttl


def _check_utf8(name: str, value: str) -> None:
    # Lone surrogates cannot be stored as UTF-8 by any backend; finding out here
    # makes them a 422 rather than a 503 from deep inside a driver.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidFields(f"{name} is not valid Unicode text") from exc


def build_message(
    *,
    role: object,
    content: object,
    kind: object = "text",
    metadata: object = None,
    message_id: object = None,
    now: float,
) -> StoredMessage:
    """Validate one message and give it an id (when it has none) and a timestamp.

    Raises :class:`InvalidFields` for an unknown role or type, content that is
    not a string, metadata that is not a JSON object, or a bad message id.
    """
    if role not in _ROLES:
        raise InvalidFields(f"role must be one of {sorted(_ROLES)}, not {role!r}")
    if kind not in _TYPES:
        raise InvalidFields(f"type must be one of {sorted(_TYPES)}, not {kind!r}")
    if not isinstance(content, str):
        raise InvalidFields(f"content must be a string, not {type(content).__name__}")
    if "\x00" in content:
        # PostgreSQL text cannot hold NUL; refusing it everywhere keeps the four
        # backends interchangeable.
        raise InvalidFields("content must not contain NUL characters")
    _check_utf8("content", content)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise InvalidFields(f"metadata must be an object, not {type(metadata).__name__}")
    if json_depth(metadata) > MAX_JSON_DEPTH:
        raise InvalidFields(f"metadata is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        # Normalise through JSON now, so every backend returns exactly this and
        # anything JSON cannot carry is a 422 here rather than a failure mid-write.
        metadata = metadata_decoder.decode(message_encoder.encode(metadata))
    except (TypeError, ValueError, msgspec.MsgspecError) as exc:
        raise InvalidFields(f"metadata must be JSON-serialisable: {exc}") from exc
    if message_id is None:
        message_id = uuid.uuid4().hex
    return StoredMessage(
        message_id=check_key("message_id", message_id),
        role=role,  # type: ignore[arg-type]  # checked against _ROLES above
        content=content,
        type=kind,  # type: ignore[arg-type]  # checked against _TYPES above
        metadata=metadata,
        created_at=now,
    )


class MemoryStore(ABC):
    """Where conversations live. Open one with :func:`engine.memory.open_store`.

    One store serves every request of a server; it is safe to use from many
    tasks at once. Use it as an async context manager, or call :meth:`aclose`.
    """

    def __init__(self, *, ttl: int = DEFAULT_TTL) -> None:
        #: Seconds a conversation is kept after its last write, where the
        #: backend expires data (Redis); the others keep it until cleared.
        self.ttl = check_ttl(ttl)
        self._closed = False

    def for_parent(self, parent: str, parent_id: str) -> Conversation:
        """The conversation of ``parent``/``parent_id``, e.g. ``("ChatSession", "42")``.

        Returns a new handle each time and changes nothing in the store, so
        concurrent requests cannot see each other's conversation.

        Raises :class:`InvalidFields` if either is empty, longer than
        :data:`MAX_KEY_LENGTH` characters, or holds control characters.
        """
        return Conversation(self, check_key("parent", parent), check_key("parent_id", parent_id))

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("memory store is closed")

    @abstractmethod
    async def ping(self) -> None:
        """Check the store answers.

        Raises :class:`StoreUnavailable` if it is closed, down or failing.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections, pools and threads. Safe to call twice."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # Backend primitives. The arguments are already validated; each call is
    # atomic and raises only StoreUnavailable.

    @abstractmethod
    async def _append(
        self, parent: str, parent_id: str, messages: Sequence[StoredMessage]
    ) -> list[StoredMessage]:
        """Add ``messages`` in order, all or none, and return what is stored for each.

        A message whose id the conversation already holds (or that appeared
        earlier in ``messages``) is not added again; the stored one is returned
        in its place.
        """

    @abstractmethod
    async def _read(self, parent: str, parent_id: str, limit: int | None) -> list[StoredMessage]:
        """The messages in insertion order: all, or the last ``limit`` (>= 1)."""

    @abstractmethod
    async def _delete(self, parent: str, parent_id: str) -> int:
        """Remove the conversation and return how many messages it had."""


class Conversation:
    """One conversation of a :class:`MemoryStore`: a cheap, immutable handle.

    Get one from :meth:`MemoryStore.for_parent`; it holds no connection, so
    make as many as needed.
    """

    __slots__ = ("_parent", "_parent_id", "_store")

    def __init__(self, store: MemoryStore, parent: str, parent_id: str) -> None:
        self._store = store
        self._parent = parent
        self._parent_id = parent_id

    @property
    def parent(self) -> str:
        """The parent class, e.g. ``"ChatSession"``."""
        return self._parent

    @property
    def parent_id(self) -> str:
        """The parent's id, e.g. ``"42"``."""
        return self._parent_id

    def __repr__(self) -> str:
        return f"<Conversation {self._parent!r}/{self._parent_id!r}>"

    async def add_message(
        self,
        role: str,
        content: str,
        type: str = "text",
        metadata: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> StoredMessage:
        """Store one message and return it as stored.

        ``message_id`` defaults to a new UUID4 hex. If the conversation already
        holds ``message_id``, nothing is added and the stored message is
        returned, so a retried request does not duplicate history.

        Raises :class:`InvalidFields` (nothing stored) for an unknown role or
        type, content that is not a string, metadata that is not a JSON object,
        or a bad ``message_id``; :class:`StoreUnavailable` if the store fails
        (nothing stored either).
        """
        message = build_message(
            role=role,
            content=content,
            kind=type,
            metadata=metadata,
            message_id=message_id,
            now=time.time(),
        )
        (stored,) = await self._store._append(self._parent, self._parent_id, [message])
        return stored

    async def add_user_message(self, content: str, **kw: Any) -> StoredMessage:
        """:meth:`add_message` with ``role="user"``."""
        return await self.add_message("user", content, **kw)

    async def add_assistant_message(self, content: str, **kw: Any) -> StoredMessage:
        """:meth:`add_message` with ``role="assistant"``."""
        return await self.add_message("assistant", content, **kw)

    async def add_system_message(self, content: str, **kw: Any) -> StoredMessage:
        """:meth:`add_message` with ``role="system"``."""
        return await self.add_message("system", content, **kw)

    async def add_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[StoredMessage]:
        """Store several messages at once, all or none, and return them as stored.

        Each item has the keyword arguments of :meth:`add_message`:
        ``{"role": "user", "content": "hi"}`` plus optional ``type``,
        ``metadata`` and ``message_id``. Meant for a user message and its reply,
        which should land together or not at all. Ids already stored (or
        repeated within ``messages``) are not added again; the stored message
        is returned at their place.

        Raises :class:`InvalidFields` if any item is invalid (nothing stored)
        and :class:`StoreUnavailable` if the store fails (nothing stored).
        """
        if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
            raise InvalidFields("messages must be a list of objects")
        now = time.time()
        batch: list[StoredMessage] = []
        for index, item in enumerate(messages):
            if not isinstance(item, Mapping):
                raise InvalidFields(f"messages[{index}] must be an object")
            unknown = set(item) - _BATCH_FIELDS
            if unknown:
                raise InvalidFields(f"messages[{index}] has unknown fields {sorted(unknown)}")
            if "role" not in item or "content" not in item:
                raise InvalidFields(f"messages[{index}] needs role and content")
            try:
                batch.append(
                    build_message(
                        role=item["role"],
                        content=item["content"],
                        kind=item.get("type", "text"),
                        metadata=item.get("metadata"),
                        message_id=item.get("message_id"),
                        now=now,
                    )
                )
            except InvalidFields as exc:
                raise InvalidFields(f"messages[{index}]: {exc.message}") from exc
        if not batch:
            return []
        return await self._store._append(self._parent, self._parent_id, batch)

    async def get_messages(self, limit: int | None = None) -> list[StoredMessage]:
        """The conversation's messages, oldest first.

        With ``limit``, the last ``limit`` messages, still oldest first (what a
        prompt with a bounded history wants). An unknown conversation is empty.

        Raises :class:`InvalidFields` if ``limit`` is negative or not an
        integer, :class:`StoreUnavailable` if the store fails.
        """
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise InvalidFields(f"limit must be an integer >= 0, not {limit!r}")
            # Past every stored conversation's length, and inside every backend's
            # integer type (SQLite's 64-bit LIMIT raised OverflowError above it).
            limit = min(limit, MAX_LIMIT)
            if limit == 0:
                self._store._check_open()
                return []
        return await self._store._read(self._parent, self._parent_id, limit)

    async def clear(self) -> int:
        """Forget the conversation; return how many messages it had.

        Raises :class:`StoreUnavailable` if the store fails (nothing removed).
        """
        return await self._store._delete(self._parent, self._parent_id)
