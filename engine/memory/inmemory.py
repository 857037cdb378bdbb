"""``memory://``: conversations in a dict, gone when the process ends.

For tests and throwaway runs. Messages are kept as their JSON encoding, so a
read returns fresh objects exactly as the other backends would: nothing a
caller does to a returned message can reach the stored history (tool calls
and parts included).
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import DEFAULT_TTL, MemoryStore, StoredMessage, message_decoder, message_encoder

__all__ = ["InMemoryStore"]


class _Log:
    """One conversation: encoded messages in order, and their ids for dedup."""

    __slots__ = ("ids", "items")

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.ids: dict[str, int] = {}


class InMemoryStore(MemoryStore):
    """A :class:`MemoryStore` in process memory.

    Every primitive runs without awaiting, so on one event loop each call is
    atomic with no lock needed. ``ttl`` is accepted and ignored: the data lives
    as long as the process.
    """

    def __init__(self, *, ttl: int = DEFAULT_TTL) -> None:
        super().__init__(ttl=ttl)
        self._logs: dict[tuple[str, str], _Log] = {}

    async def ping(self) -> None:
        self._check_open()

    async def aclose(self) -> None:
        self._closed = True
        self._logs.clear()

    async def _append(
        self, parent: str, parent_id: str, messages: Sequence[StoredMessage]
    ) -> list[StoredMessage]:
        self._check_open()
        # Encode everything before touching the log, so a failure adds nothing.
        encoded = [message_encoder.encode(m) for m in messages]
        log = self._logs.setdefault((parent, parent_id), _Log())
        stored: list[StoredMessage] = []
        for message, data in zip(messages, encoded, strict=True):
            index = log.ids.get(message.message_id)
            if index is None:
                log.ids[message.message_id] = len(log.items)
                log.items.append(data)
                stored.append(message)
            else:
                stored.append(message_decoder.decode(log.items[index]))
        return stored

    async def _read(self, parent: str, parent_id: str, limit: int | None) -> list[StoredMessage]:
        self._check_open()
        log = self._logs.get((parent, parent_id))
        if log is None:
            return []
        items = log.items if limit is None else log.items[-limit:]
        return [message_decoder.decode(data) for data in items]

    async def _delete(self, parent: str, parent_id: str) -> int:
        self._check_open()
        log = self._logs.pop((parent, parent_id), None)
        return 0 if log is None else len(log.items)
