"""A reply as Anthropic's stream events (https://docs.anthropic.com/en/api/messages-streaming)."""

from __future__ import annotations

import uuid

from msgspec import Struct

from ...errors import EngineError
from ...sse import encode_json
from ...wire import Chunk, Usage
from .errors import error_frame
from .reply import MessageObject, MessageUsage, TextContent, ToolUseContent, stop_reason

__all__ = [
    "AnthropicFraming",
    "ContentBlockDelta",
    "ContentBlockStart",
    "ContentBlockStop",
    "DeltaUsage",
    "InputJSONDelta",
    "MessageDelta",
    "MessageStart",
    "MessageStop",
    "Ping",
    "StopDelta",
    "TextDelta",
]


class MessageStart(Struct, kw_only=True, tag_field="type", tag="message_start"):
    message: MessageObject


class Ping(Struct, kw_only=True, tag_field="type", tag="ping"):
    pass


class ContentBlockStart(Struct, kw_only=True, tag_field="type", tag="content_block_start"):
    index: int
    content_block: TextContent | ToolUseContent


class TextDelta(Struct, kw_only=True, tag_field="type", tag="text_delta"):
    text: str


class InputJSONDelta(Struct, kw_only=True, tag_field="type", tag="input_json_delta"):
    partial_json: str


class ContentBlockDelta(Struct, kw_only=True, tag_field="type", tag="content_block_delta"):
    index: int
    delta: TextDelta | InputJSONDelta


class ContentBlockStop(Struct, kw_only=True, tag_field="type", tag="content_block_stop"):
    index: int


class StopDelta(Struct, kw_only=True):
    stop_reason: str
    stop_sequence: str | None = None


class DeltaUsage(Struct, kw_only=True):
    #: Known only at the end (message_start says 0): the SDK takes the last value.
    input_tokens: int
    output_tokens: int


class MessageDelta(Struct, kw_only=True, tag_field="type", tag="message_delta"):
    delta: StopDelta
    usage: DeltaUsage


class MessageStop(Struct, kw_only=True, tag_field="type", tag="message_stop"):
    pass


_PING = encode_json(Ping(), event="ping")
_MESSAGE_STOP = encode_json(MessageStop(), event="message_stop")


class AnthropicFraming:
    """One message stream's events, in Anthropic's order (engine.streams.relay.Framing).

    ``message_start`` (empty content, usage 0: the input count comes with the
    end) and ``ping``; then content blocks indexed from 0 in order, each
    ``content_block_start``, its deltas (``text_delta``, or ``input_json_delta``
    for a ``tool_use`` block, which starts with its id, name and ``input: {}``)
    and ``content_block_stop`` before the next one starts; then
    ``message_delta`` (stop reason, usage) and ``message_stop``.

    A new tool call (a tool-call delta of an index not seen yet) closes the
    open block and starts a ``tool_use`` block; text after a tool call starts
    a new text block. A slotted object, not closures: an open stream keeps
    only this, never the request's messages.
    """

    __slots__ = ("blocks", "id", "index", "model", "open")

    def __init__(self, mid: str, model: str) -> None:
        self.id = mid
        self.model = model
        #: The index of the last block started (-1: none yet).
        self.index = -1
        #: Whether a block is open (started and not stopped).
        self.open = False
        #: The block index of each tool call, by the call's index in the engine's deltas.
        self.blocks: dict[int, int] = {}
        # (text is open when self.open and the last block is not a tool call's)

    def start(self) -> bytes:
        message = MessageObject(
            id=self.id, model=self.model, content=[], stop_reason=None, usage=MessageUsage()
        )
        return encode_json(MessageStart(message=message), event="message_start") + _PING

    def _close(self) -> bytes:
        if not self.open:
            return b""
        self.open = False
        return encode_json(ContentBlockStop(index=self.index), event="content_block_stop")

    def _begin(self, block: TextContent | ToolUseContent) -> bytes:
        frames = self._close()
        self.index += 1
        self.open = True
        start = ContentBlockStart(index=self.index, content_block=block)
        return frames + encode_json(start, event="content_block_start")

    def _text_open(self) -> bool:
        return self.open and self.index not in self.blocks.values()

    def chunk(self, chunk: Chunk, n: int) -> bytes | None:
        frames = b""
        if chunk.content:
            if not self._text_open():
                frames += self._begin(TextContent(text=""))
            delta = ContentBlockDelta(index=self.index, delta=TextDelta(text=chunk.content))
            frames += encode_json(delta, event="content_block_delta")
        for call in chunk.tool_calls or ():
            function = call.get("function") or {}
            number = call.get("index")
            if not isinstance(number, int):
                # No index: a new call when it names one, else more of the last one.
                number = len(self.blocks) if call.get("id") else max(self.blocks, default=0)
            block = self.blocks.get(number)
            if block is None:
                tool = ToolUseContent(
                    id=call.get("id") or f"toolu_{uuid.uuid4().hex}",
                    name=function.get("name") or "",
                    input={},
                )
                frames += self._begin(tool)
                block = self.blocks[number] = self.index
            arguments = function.get("arguments")
            if arguments:
                delta = ContentBlockDelta(index=block, delta=InputJSONDelta(partial_json=arguments))
                frames += encode_json(delta, event="content_block_delta")
        return frames or None

    def error(self, exc: EngineError, n: int) -> bytes:
        return error_frame(exc)

    def finish(self, finish_reason: str | None, usage: Usage | None, n: int) -> bytes:
        counted = usage or Usage()
        delta = MessageDelta(
            delta=StopDelta(stop_reason=stop_reason(finish_reason)),
            usage=DeltaUsage(
                input_tokens=counted.prompt_tokens, output_tokens=counted.completion_tokens
            ),
        )
        return self._close() + encode_json(delta, event="message_delta") + _MESSAGE_STOP
