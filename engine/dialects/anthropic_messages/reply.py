"""A reply as Anthropic's message object, and its ``stop_reason``.

``stop_reason`` is ``end_turn`` (``stop``, and a Stop on purpose: the turn
ended, nothing was refused), ``max_tokens`` (``length``), ``tool_use``
(``tool_calls``) or ``refusal`` (``content_filter``); ``stop_sequence`` is
always null, as the engine's ``stop`` does not say which sequence matched.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from msgspec import Struct

from ...errors import UpstreamError
from ...wire import Reply, Usage

__all__ = [
    "MessageObject",
    "MessageUsage",
    "TextContent",
    "ToolUseContent",
    "message_id",
    "reply_message",
    "stop_reason",
]

_decoder = msgspec.json.Decoder()


class TextContent(Struct, kw_only=True, tag_field="type", tag="text"):
    text: str


class ToolUseContent(Struct, kw_only=True, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class MessageUsage(Struct, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0


class MessageObject(Struct, kw_only=True, tag_field="type", tag="message"):
    """A whole reply (``stream: false``), and ``message_start``'s message."""

    id: str
    role: str = "assistant"
    model: str
    content: list[TextContent | ToolUseContent]
    stop_reason: str | None
    stop_sequence: str | None = None
    usage: MessageUsage


_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    # A Stop on purpose: the turn ended where the client asked, nothing was refused.
    "stopped": "end_turn",
}


def stop_reason(finish_reason: str | None) -> str:
    """Anthropic's ``stop_reason`` for the engine's ``finish_reason``."""
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def message_id() -> str:
    """A new message id, ``msg_`` and 32 hex digits (also the stream's id for Stop)."""
    return f"msg_{uuid.uuid4().hex}"


def _input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as ``tool_use.input``: a JSON object."""
    if not arguments.strip():
        return {}  # a call without arguments
    try:
        value = _decoder.decode(arguments)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError(
            f"the model's tool call arguments are not a JSON object: {arguments[:100]!r}"
        )
    return value


def reply_message(mid: str, model: str, reply: Reply) -> MessageObject:
    """The whole reply as Anthropic's message object."""
    content: list[TextContent | ToolUseContent] = []
    if reply.content:
        content.append(TextContent(text=reply.content))
    for call in reply.tool_calls or ():
        function = call.get("function") or {}
        content.append(
            ToolUseContent(
                id=call.get("id") or f"toolu_{uuid.uuid4().hex}",
                name=function.get("name") or "",
                input=_input(function.get("arguments") or ""),
            )
        )
    usage = reply.usage or Usage()
    return MessageObject(
        id=mid,
        model=model,
        content=content,
        stop_reason=stop_reason(reply.finish_reason),
        usage=MessageUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens),
    )
