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
from ..wire import MAX_JSON_DEPTH, ImagePart, Part, TextPart, ToolCall, json_depth

__all__ = [
    "DEFAULT_TTL",
    "MAX_KEY_LENGTH",
    "MAX_PARENT_LENGTH",
    "MAX_LIMIT",
    "MAX_NAME_LENGTH",
    "MAX_PARTS",
    "MAX_TOOL_CALLS",
    "MAX_TOOL_ID_LENGTH",
    "Conversation",
    "MemoryStore",
    "MessageRole",
    "MessageType",
    "StoredMessage",
]

MessageRole = Literal["system", "user", "assistant", "tool"]
MessageType = Literal["text", "image", "audio"]

#: Longest parent class, parent id or message id, in characters. Matches
#: ``engine.wire.ParentKey``; 200 is ample for a class name plus a UUID and keeps
#: Redis keys and index entries small.
MAX_KEY_LENGTH: Final = 200
#: Longest parent class the store takes: a request's (``MAX_KEY_LENGTH``) and the
#: ``key_<id>/`` that makes a conversation its client key's own (engine.auth).
MAX_PARENT_LENGTH: Final = MAX_KEY_LENGTH + 32
#: ``get_messages(limit=...)`` above this reads as "all": a conversation longer
#: than this cannot be loaded in one piece anyway.
MAX_LIMIT: Final = 1_000_000

#: Most tool calls one assistant message may carry: twice the 128 tools an
#: OpenAI request may offer (``engine.wire.Options.tools``), since a model may
#: call one tool more than once in a turn.
MAX_TOOL_CALLS: Final = 256
#: Most content parts one message may carry: OpenAI takes up to 500 images in
#: one request, and text parts come between them.
MAX_PARTS: Final = 1024
#: Longest tool call id (a call's ``id``, a tool message's ``tool_call_id``).
#: Providers mint short ones (OpenAI ``call_`` + 24, Anthropic ``toolu_`` + 24);
#: a bound keeps a tool message's id column small.
MAX_TOOL_ID_LENGTH: Final = 256
#: Longest function name in a tool call. OpenAI and Anthropic allow 64; the
#: rest is headroom for other providers.
MAX_NAME_LENGTH: Final = 256

#: Seconds a conversation lives in stores that expire keys (Redis): 30 days,
#: the same default as ``Config.memory_ttl``.
DEFAULT_TTL: Final = 30 * 24 * 3600

_ROLES: Final = frozenset(get_args(MessageRole))
_TYPES: Final = frozenset(get_args(MessageType))
# C0 controls and DEL, as in ``engine.wire.ParentKey``: they break logs, keys as
# redis-cli shows them, and URL paths (the HTTP layer puts parent and id there).
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_BATCH_FIELDS: Final = frozenset(
    {"role", "content", "type", "metadata", "message_id", "tool_calls", "tool_call_id", "parts"}
)
# msgspec's "<problem> - at `$[0].id`", split so the field can be named first.
_AT_PATH: Final = re.compile(r"(.*) - at `\$(.*)`\Z", re.S)


class StoredMessage(msgspec.Struct, kw_only=True, frozen=True):
    """One message of a conversation as the store keeps it.

    Frozen because it is history: every read decodes fresh copies, so changing
    one in place could not change what is stored anyway.

    The three agent-loop fields are None on a message that does not use them
    (and on every message stored before they existed). Their shapes are OpenAI
    Chat Completions', the same as ``engine.wire.Message``'s, so a stored
    message converts back into one: ``tool_calls`` is
    ``[{"id", "type": "function", "function": {"name", "arguments"}}]``,
    ``tool_call_id`` names the call a ``tool`` message answers, and ``parts``
    are the content parts (``engine.wire.Part``) of a message whose content was
    a list, with ``content`` their text parts joined by newlines.
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
    #: An assistant message's tool calls, in the order the model made them.
    tool_calls: list[dict[str, Any]] | None = None
    #: On a ``tool`` message (and only there): the id of the call it answers.
    tool_call_id: str | None = None
    #: The content parts, when the content was a list rather than a string.
    parts: list[dict[str, Any]] | None = None


#: Shared by the backends that keep whole messages as JSON (Redis, in-memory).
message_encoder: Final = msgspec.json.Encoder()
message_decoder: Final = msgspec.json.Decoder(StoredMessage)
metadata_decoder: Final = msgspec.json.Decoder(dict[str, Any])
#: For ``tool_calls`` and ``parts``, which the SQL backends keep as JSON text.
objects_decoder: Final = msgspec.json.Decoder(list[dict[str, Any]])


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


def check_key(name: str, value: object, most: int = MAX_KEY_LENGTH) -> str:
    """Return ``value`` if it is a usable parent class, parent id or message id.

    Raises :class:`InvalidFields` naming ``name`` otherwise.
    """
    if not isinstance(value, str):
        raise InvalidFields(f"{name} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidFields(f"{name} must not be empty")
    if len(value) > most:
        raise InvalidFields(f"{name} must be at most {most} characters")
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


def _check_text(name: str, value: str) -> None:
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL; refusing it everywhere keeps the four
        # backends interchangeable.
        raise InvalidFields(f"{name} must not contain NUL characters")
    _check_utf8(name, value)


def _convert(name: str, value: object, kind: Any) -> Any:
    """``value`` validated as ``kind`` (a wire type), or :class:`InvalidFields` naming the spot."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        match = _AT_PATH.match(str(exc))
        problem, path = match.groups() if match else (str(exc), "")
        raise InvalidFields(f"{name}{path}: {problem}") from exc


def _check_json(name: str, value: object) -> None:
    # Strings are not checked as they are converted; a lone surrogate only
    # shows when encoding, so find it here rather than mid-write.
    try:
        message_encoder.encode(value)
    except (TypeError, ValueError, msgspec.MsgspecError) as exc:
        raise InvalidFields(f"{name} must be JSON-serialisable: {exc}") from exc


def _check_list(name: str, value: object, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidFields(f"{name} must be a list of objects, not {type(value).__name__}")
    if len(value) > most:
        raise InvalidFields(f"{name} must hold at most {most} items, not {len(value)}")
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidFields(f"{name} is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _check_tool_id(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidFields(f"{name} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidFields(f"{name} must not be empty")
    if len(value) > MAX_TOOL_ID_LENGTH:
        raise InvalidFields(f"{name} must be at most {MAX_TOOL_ID_LENGTH} characters")
    _check_text(name, value)
    return value


def check_tool_calls(value: object) -> list[dict[str, Any]]:
    """Return ``value`` as stored tool calls: OpenAI's shape, ``type`` filled in.

    Raises :class:`InvalidFields` unless it is a non-empty list of
    ``{"id", "type"?: "function", "function": {"name", "arguments"}}`` with
    distinct non-empty ids, non-empty names and string arguments.
    """
    items = _check_list("tool_calls", value, MAX_TOOL_CALLS)
    if not items:
        raise InvalidFields("tool_calls must hold at least one call (or be left out)")
    calls: list[ToolCall] = _convert("tool_calls", items, list[ToolCall])
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        _check_tool_id(f"tool_calls[{index}].id", call.id)
        if call.id in seen:
            raise InvalidFields(f"tool_calls[{index}].id repeats {call.id!r}")
        seen.add(call.id)
        if len(call.function.name) > MAX_NAME_LENGTH:
            raise InvalidFields(
                f"tool_calls[{index}].function.name must be at most {MAX_NAME_LENGTH} characters"
            )
        function = {"name": call.function.name, "arguments": call.function.arguments}
        out.append({"id": call.id, "type": call.type, "function": function})
    _check_json("tool_calls", out)
    return out


def check_parts(value: object, role: object) -> tuple[list[dict[str, Any]], str]:
    """Return ``value`` as stored content parts, and their text.

    The text is the text parts joined by newlines, as ``engine.wire.Message.text``
    gives it. Raises :class:`InvalidFields` unless ``value`` is a list of
    ``engine.wire.Part`` objects (text, image_url or input_audio), with images
    and audio on user messages only.
    """
    items = _check_list("parts", value, MAX_PARTS)
    parts: list[Part] = _convert("parts", items, list[Part])
    if role != "user" and any(not isinstance(part, TextPart) for part in parts):
        kind = "images" if any(isinstance(part, ImagePart) for part in parts) else "audio"
        raise InvalidFields(f"parts: only user messages may carry {kind}, not {role!r} ones")
    out: list[dict[str, Any]] = msgspec.to_builtins(parts)
    _check_json("parts", out)
    text = "\n".join(part.text for part in parts if isinstance(part, TextPart))
    return out, text


def build_message(
    *,
    role: object,
    content: object,
    kind: object = "text",
    metadata: object = None,
    message_id: object = None,
    tool_calls: object = None,
    tool_call_id: object = None,
    parts: object = None,
    now: float,
) -> StoredMessage:
    """Validate one message and give it an id (when it has none) and a timestamp.

    ``content`` may be None when ``parts`` are given (it becomes their text) or
    on an assistant message with ``tool_calls`` (it becomes ``""``).

    Raises :class:`InvalidFields` for an unknown role or type, content that is
    not a string (or, with parts, not their text), metadata that is not a JSON
    object, a bad message id, malformed tool calls, tool calls on a message
    that is not the assistant's, a tool message without ``tool_call_id`` (or
    another message with one), or malformed parts.
    """
    if role not in _ROLES:
        raise InvalidFields(f"role must be one of {sorted(_ROLES)}, not {role!r}")
    if kind not in _TYPES:
        raise InvalidFields(f"type must be one of {sorted(_TYPES)}, not {kind!r}")
    calls: list[dict[str, Any]] | None = None
    if tool_calls is not None:
        if role != "assistant":
            raise InvalidFields(f"tool_calls belong to assistant messages, not {role!r} ones")
        calls = check_tool_calls(tool_calls)
    answers: str | None = None
    if role == "tool":
        if tool_call_id is None:
            raise InvalidFields("tool_call_id is required on a tool message: the call it answers")
        answers = _check_tool_id("tool_call_id", tool_call_id)
    elif tool_call_id is not None:
        raise InvalidFields(f"tool_call_id belongs to tool messages, not {role!r} ones")
    stored_parts: list[dict[str, Any]] | None = None
    if parts is not None:
        stored_parts, text = check_parts(parts, role)
        if content is None:
            content = text
        elif content != text:
            # content is what search and history budgets read: it must be the
            # parts' own text, not a second version of the message.
            raise InvalidFields("content must be the text parts joined by newlines (or None)")
    elif content is None and calls is not None:
        content = ""
    if not isinstance(content, str):
        raise InvalidFields(f"content must be a string, not {type(content).__name__}")
    _check_text("content", content)
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
        tool_calls=calls,
        tool_call_id=answers,
        parts=stored_parts,
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
        return Conversation(
            self,
            check_key("parent", parent, MAX_PARENT_LENGTH),
            check_key("parent_id", parent_id),
        )

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
        content: str | None,
        *,
        type: str = "text",
        metadata: dict[str, Any] | None = None,
        message_id: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        parts: list[dict[str, Any]] | None = None,
    ) -> StoredMessage:
        """Store one message and return it as stored.

        ``message_id`` defaults to a new UUID4 hex. If the conversation already
        holds ``message_id``, nothing is added and the stored message is
        returned, so a retried request does not duplicate history.

        An agent loop's messages, in OpenAI Chat Completions' shapes (see
        :class:`StoredMessage`): an ``assistant`` message may carry
        ``tool_calls`` (``content`` may then be None, stored as ``""``); a
        ``tool`` message needs the ``tool_call_id`` it answers; a message whose
        content was a list gives it as ``parts``, with ``content`` their text
        parts joined by newlines, or None to have it computed.

        Raises :class:`InvalidFields` (nothing stored) for an unknown role or
        type, content that is not a string (or not the parts' text), metadata
        that is not a JSON object, a bad ``message_id``, malformed or misplaced
        ``tool_calls``, ``tool_call_id`` or ``parts``;
        :class:`StoreUnavailable` if the store fails (nothing stored either).
        """
        message = build_message(
            role=role,
            content=content,
            kind=type,
            metadata=metadata,
            message_id=message_id,
            tool_calls=tool_calls,
            tool_call_id=tool_call_id,
            parts=parts,
            now=time.time(),
        )
        (stored,) = await self._store._append(self._parent, self._parent_id, [message])
        return stored

    async def add_user_message(self, content: str, **kw: Any) -> StoredMessage:
        """:meth:`add_message` with ``role="user"``."""
        return await self.add_message("user", content, **kw)

    async def add_assistant_message(self, content: str | None, **kw: Any) -> StoredMessage:
        """:meth:`add_message` with ``role="assistant"``."""
        return await self.add_message("assistant", content, **kw)

    async def add_tool_message(
        self, content: str, *, tool_call_id: str, **kw: Any
    ) -> StoredMessage:
        """:meth:`add_message` with ``role="tool"``: the result of call ``tool_call_id``."""
        return await self.add_message("tool", content, tool_call_id=tool_call_id, **kw)

    async def add_system_message(self, content: str, **kw: Any) -> StoredMessage:
        """:meth:`add_message` with ``role="system"``."""
        return await self.add_message("system", content, **kw)

    async def add_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[StoredMessage]:
        """Store several messages at once, all or none, and return them as stored.

        Each item has the keyword arguments of :meth:`add_message`:
        ``{"role": "user", "content": "hi"}`` plus optional ``type``,
        ``metadata``, ``message_id``, ``tool_calls``, ``tool_call_id`` and
        ``parts`` (``content`` may be left out where it may be None). Meant
        for a user message and its reply, which should land together or not
        at all. Ids already stored (or repeated within ``messages``) are not
        added again; the stored message is returned at their place.

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
            if "role" not in item:
                raise InvalidFields(f"messages[{index}] needs a role")
            if "content" not in item and "parts" not in item and "tool_calls" not in item:
                raise InvalidFields(f"messages[{index}] needs content")
            try:
                batch.append(
                    build_message(
                        role=item["role"],
                        content=item.get("content"),
                        kind=item.get("type", "text"),
                        metadata=item.get("metadata"),
                        message_id=item.get("message_id"),
                        tool_calls=item.get("tool_calls"),
                        tool_call_id=item.get("tool_call_id"),
                        parts=item.get("parts"),
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
