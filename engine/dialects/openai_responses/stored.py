"""Stored responses, on the memory store: one conversation per response.

A response ``resp_...`` is the conversation ``(parent, "resp_...")`` of the
memory store (:mod:`engine.memory`), ``parent`` being :data:`PARENT` as the
request's key stores it (:func:`engine.auth.memory_parent`: ``key_.../Response``,
so another key's response is simply not there, a 404), and every backend
(SQLite, Redis, PostgreSQL, in-memory) keeps responses with no table of its own:

* the messages that went upstream, in order: those inherited from
  ``previous_response_id`` (its own conversation's window, as memory sends a
  history: ``max_history`` messages, ``max_history_chars``), then the
  request's input (instructions excepted: as on OpenAI, a continuation does
  not inherit them), stored before the first token;
* the reply, last: an assistant message (its text and tool calls) whose
  metadata holds the response object (``"response"``) and the request's input
  items (``"input_items"``), stored before the stream's last event.

So a retrieve is one read of one message (``get_messages(limit=1)``), a
continuation one read of a bounded window, and a delete ``clear()``. The
store's interface could hold it all, so no table was added: a response
object and its items are JSON, like any message's metadata. A response
created with ``store: false`` stores nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from ...memory.history import ChatMemory

if TYPE_CHECKING:
    from ...config import Config
    from ...memory import MemoryStore
    from ...wire import Message
    from .state import ResponseState

__all__ = ["PARENT", "ResponseRecord", "delete", "history", "load"]

#: The memory parent of stored responses; the response id is the parent id.
PARENT = "Response"


class ResponseRecord:
    """Where one response is stored (see the module docstring)."""

    __slots__ = ("items", "memory")

    def __init__(
        self,
        store: MemoryStore,
        parent: str,
        rid: str,
        messages: list[Message],
        items: list[dict[str, Any]],
    ) -> None:
        # (max_history is moot: only store_request and store_reply are used.)
        self.memory = ChatMemory(store.for_parent(parent, rid), messages, 0, 0)
        self.items = items

    async def store_request(self) -> None:
        """The messages that go upstream (the inherited history, then the input)."""
        await self.memory.store_request()

    async def discard(self) -> None:
        """Forget the request again (the upstream refused it: there is no response)."""
        await self.memory.conversation.clear()

    async def store_reply(self, state: ResponseState) -> None:
        """The reply, with the response object and the input items in its metadata."""
        response = state.response
        metadata: dict[str, Any] = {
            "response": msgspec.to_builtins(response),
            "input_items": self.items,
            "stream_id": response.id,
        }
        if response.status != "completed":
            metadata.update(partial=True, reason=response.status)
        text, calls = state.reply()
        await self.memory.store_reply(text, metadata, calls or None)


async def load(
    store: MemoryStore, parent: str, rid: str
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The stored response object and its input items, or None."""
    last = await store.for_parent(parent, rid).get_messages(limit=1)
    if not last:
        return None
    metadata = last[-1].metadata
    response, items = metadata.get("response"), metadata.get("input_items")
    if not isinstance(response, dict) or not isinstance(items, list):
        return None  # its reply was never stored (the gateway stopped mid-generation)
    return response, items


async def history(store: MemoryStore, parent: str, config: Config, rid: str) -> list[Message]:
    """The conversation a continuation of ``rid`` starts from, as memory windows one.

    An assistant turn with neither text nor calls (a response that failed
    before its first token) is left out: providers refuse empty turns.
    """
    conversation = store.for_parent(parent, rid)
    memory = ChatMemory(conversation, [], config.max_history, config.max_history_chars)
    past = await memory.upstream_messages()
    return [m for m in past if m.role != "assistant" or m.tool_calls or m.text]


async def delete(store: MemoryStore, parent: str, rid: str) -> bool:
    """Forget the response; False if nothing was stored."""
    return await store.for_parent(parent, rid).clear() > 0
