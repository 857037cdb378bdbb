"""The memory side of one chat request: the stored history in, the new messages and reply out.

No HTTP here: the chat handlers attach a :class:`ChatMemory` when a request names
a conversation, and the relay stores through it (engine.streams.relay.ReplyMemory).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from ..wire import ChatRequest, Message, Part, ToolCall
from .base import Conversation, StoredMessage

if TYPE_CHECKING:
    from ..config import Config
    from .base import MemoryStore

__all__ = ["ChatMemory", "attach"]


class ChatMemory:
    """One request's conversation: what goes upstream, what is stored."""

    __slots__ = ("conversation", "max_chars", "max_history", "new")

    def __init__(
        self,
        conversation: Conversation,
        new: list[Message],
        max_history: int,
        max_chars: int,
    ) -> None:
        self.conversation = conversation
        self.new = new
        self.max_history = max_history
        self.max_chars = max_chars

    async def upstream_messages(self) -> list[Message]:
        """The stored history, then the new messages.

        The history is the last ``max_history`` stored messages, and of those
        the newest that fit in ``max_chars`` characters: a long conversation is
        neither loaded whole nor sent upstream whole on every request. Tool
        calls, tool results and content parts go upstream as they were stored;
        a tool result whose call fell outside the window is left out with it
        (every provider refuses a result for a call it was not shown).
        """
        limit = self.max_history
        history = [] if limit == 0 else await self.conversation.get_messages(limit=limit)
        # Only text goes upstream: image and audio entries are kept, not sent.
        past: list[Message] = []
        budget = self.max_chars
        for m in reversed(history):
            if m.type != "text":
                continue
            budget -= len(m.content)
            if budget < 0:
                break
            past.append(_upstream(m))
        del history  # the stored rows (metadata and all) are not needed past here
        past.reverse()
        while past and past[0].role == "tool":
            del past[0]  # its call is not in the window
        return past + self.new

    async def store_request(self) -> None:
        # All of the request's messages or none of them.
        await self.conversation.add_messages([_stored(m) for m in self.new])

    async def store_reply(
        self,
        text: str,
        metadata: dict[str, Any] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        for call in tool_calls or ():
            if not call.get("id"):
                # A provider that names no call (folded deltas keep ""): the
                # store, like every provider, needs an id to pair the result with.
                call["id"] = f"call_{uuid.uuid4().hex[:24]}"
        await self.conversation.add_message(
            "assistant", text, metadata=metadata or {}, tool_calls=tool_calls or None
        )


def _upstream(m: StoredMessage) -> Message:
    """A stored message as it goes upstream again."""
    content: str | list[Part] | None = m.content
    if m.parts is not None:
        content = _parts(m.parts)
    elif m.tool_calls and not m.content:
        content = None  # a tool-call turn without text, as it came
    return Message(
        role=m.role,
        content=content,
        tool_calls=_calls(m.tool_calls) if m.tool_calls else None,
        tool_call_id=m.tool_call_id,
    )


def _parts(parts: list[dict[str, Any]]) -> list[Part]:
    return msgspec.convert(parts, list[Part])


def _calls(calls: list[dict[str, Any]]) -> list[ToolCall]:
    return msgspec.convert(calls, list[ToolCall])


def _stored(m: Message) -> dict[str, Any]:
    """A request's message as the store takes it (``content`` is always its text)."""
    item: dict[str, Any] = {"role": m.role, "content": m.text}
    if isinstance(m.content, list):
        item["parts"] = msgspec.to_builtins(m.content)
    if m.tool_calls:
        item["tool_calls"] = msgspec.to_builtins(m.tool_calls)
    if m.tool_call_id is not None:
        item["tool_call_id"] = m.tool_call_id
    return item


async def attach(
    store: MemoryStore | None, config: Config, body: ChatRequest
) -> tuple[ChatMemory | None, list[Message]]:
    """``body``'s memory (``None`` without a session) and the messages to send upstream.

    ``store`` is needed only when ``body.session`` is set.
    """
    if body.session is None:
        return None, body.messages
    assert store is not None
    limit = body.options.max_history
    memory = ChatMemory(
        store.for_parent(body.session.parent, body.session.id),
        body.messages,
        config.max_history if limit is None else limit,
        config.max_history_chars,
    )
    return memory, await memory.upstream_messages()
