"""The engine's messages as the Messages API's alternating turns.

https://docs.anthropic.com/en/api/messages (content blocks) and
https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use:

* system messages are no turn: they go to the top-level ``system`` (joined by
  blank lines, in :meth:`~engine.providers.anthropic.AnthropicProvider.body`);
* user text -> ``text`` blocks; images -> ``image`` blocks, a ``data:`` URL as a
  ``base64`` source, a web address as a ``url`` source. ``detail`` is OpenAI's
  resolution hint: Claude sizes images itself, so it is ignored (it cannot
  change what the image says). Audio parts are refused;
* assistant ``tool_calls`` -> ``tool_use`` blocks after the text; arguments must
  be a JSON object (an empty string is ``{}``: what a call without arguments
  streams as);
* ``tool`` messages -> ``tool_result`` blocks in a user turn;
* consecutive turns of one side (parallel tool results, a user message after
  tool results, two user messages) merge into one turn, so the body alternates
  user/assistant. Within a user turn the ``tool_result`` blocks come first, as
  Anthropic requires; a turn of one plain-text message stays a plain string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ...wire import MAX_JSON_DEPTH, ImagePart, Message, TextPart, ToolCall, json_depth
from ._refuse import refuse

__all__ = ["Turn", "to_turns"]

#: What a ``base64`` image source may be (image/jpg is a common alias of jpeg).
_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_MEDIA_ALIASES = {"image/jpg": "image/jpeg"}

_arguments_decoder = msgspec.json.Decoder()


def _image(part: ImagePart, where: str) -> dict[str, Any]:
    data = part.image_url.data()
    if data is None:
        return {"type": "image", "source": {"type": "url", "url": part.image_url.url}}
    media_type, encoded = data
    media_type = media_type.lower()
    media_type = _MEDIA_ALIASES.get(media_type, media_type)
    if media_type not in _MEDIA_TYPES:
        raise refuse(
            where,
            f"Claude reads JPEG, PNG, GIF and WebP images, not {media_type}. Convert the image",
        )
    # The wire form allows line breaks in the base64 (MIME style); they carry nothing.
    source = {"type": "base64", "media_type": media_type, "data": "".join(encoded.split())}
    return {"type": "image", "source": source}


def _user_blocks(message: Message, index: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for number, part in enumerate(message.parts):
        where = f"messages[{index}].content[{number}]"
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(_image(part, where))
        else:
            raise refuse(where, "Claude takes text and images, not audio. Transcribe it first")
    return blocks


def _input(call: ToolCall, where: str) -> dict[str, Any]:
    """A tool call's arguments as the JSON object ``tool_use.input`` must be."""
    text = call.function.arguments
    if not text.strip():
        return {}  # a call without arguments streams none
    why = "a tool call's arguments must be a JSON object (Anthropic's `tool_use.input`)"
    try:
        value = _arguments_decoder.decode(text)
    except (msgspec.DecodeError, RecursionError):
        raise refuse(where, f"{why}; these are not valid JSON") from None
    if not isinstance(value, dict):
        raise refuse(where, f"{why}, not {type(value).__name__}")
    if json_depth(value) > MAX_JSON_DEPTH:
        raise refuse(where, f"{why} nested at most {MAX_JSON_DEPTH} levels deep")
    return value


def _assistant_blocks(message: Message, index: int) -> list[dict[str, Any]]:
    # Empty text adds nothing, and Anthropic refuses empty text blocks.
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": part.text}
        for part in message.parts
        if isinstance(part, TextPart) and part.text
    ]
    for number, call in enumerate(message.tool_calls or ()):
        where = f"messages[{index}].tool_calls[{number}].function.arguments"
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": _input(call, where),
            }
        )
    return blocks


def _tool_result(message: Message) -> dict[str, Any]:
    content = message.content
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    if isinstance(content, str):
        result["content"] = content
    else:
        result["content"] = [
            {"type": "text", "text": part.text}
            for part in message.parts
            if isinstance(part, TextPart) and part.text
        ]
    return result


class Turn:
    """One side's consecutive messages, merged: Anthropic alternates user and assistant."""

    __slots__ = ("blocks", "plain", "role")

    def __init__(self, role: str, blocks: list[dict[str, Any]], plain: str | None) -> None:
        self.role = role
        self.blocks = blocks
        #: The text of a turn made of one plain-text message, sent as a string.
        self.plain = plain

    def merge(self, blocks: list[dict[str, Any]]) -> None:
        self.plain = None
        self.blocks.extend(blocks)

    def has_tool_use(self) -> bool:
        return any(block["type"] == "tool_use" for block in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        if self.plain is not None:
            return {"role": self.role, "content": self.plain}
        blocks = self.blocks
        if self.role == "user":
            # Tool results first: Anthropic refuses a turn with text before them.
            results = [b for b in blocks if b["type"] == "tool_result"]
            blocks = results + [b for b in blocks if b["type"] != "tool_result"]
        return {"role": self.role, "content": blocks}


def to_turns(messages: Sequence[Message]) -> list[Turn]:
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        role = message.role
        if role == "system":
            continue
        plain: str | None = None
        if role == "tool":
            blocks = [_tool_result(message)]
            role = "user"
        elif role == "user":
            blocks = _user_blocks(message, index)
            if isinstance(message.content, str):
                plain = message.content
        else:
            blocks = _assistant_blocks(message, index)
            if isinstance(message.content, str) and not message.tool_calls:
                plain = message.content
        if turns and turns[-1].role == role:
            turns[-1].merge(blocks)
        else:
            turns.append(Turn(role, blocks, plain))
    return turns
