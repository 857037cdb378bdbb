"""The memory side of one chat request: the stored history in, the new messages and reply out.

No HTTP here: the chat handlers attach a :class:`ChatMemory` when a request names
a conversation, and the relay stores through it (engine.streams.relay.ReplyMemory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..wire import ChatRequest, Message
from .base import Conversation

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
        neither loaded whole nor sent upstream whole on every request.
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
            past.append(Message(role=m.role, content=m.content))
        del history  # the stored rows (metadata and all) are not needed past here
        past.reverse()
        return past + self.new

    async def store_request(self) -> None:
        # All of the request's messages or none of them.
        await self.conversation.add_messages(
            [{"role": m.role, "content": m.content} for m in self.new]
        )

    async def store_reply(self, text: str, metadata: dict[str, Any] | None = None) -> None:
        await self.conversation.add_message("assistant", text, metadata=metadata or {})


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
