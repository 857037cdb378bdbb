"""What Anthropic sends back, as the engine's chunks and replies.

Events, per https://docs.anthropic.com/en/api/messages-streaming:
``message_start`` (model, input usage), ``content_block_*`` (text, and
``tool_use`` blocks relayed as tool-call deltas), ``message_delta`` (stop
reason, output usage), ``message_stop`` (the end), ``ping`` (ignored), ``error``
(raised: an ``overloaded_error`` is never swallowed). Unknown event types are
ignored, as the documentation asks. Thinking blocks, streamed or whole, are
skipped: the engine's messages have no place for them, nor for their
signatures.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from ...errors import UpstreamError
from ...sse import ServerSentEvent
from ...wire import Chunk, Reply, Usage
from .._http import decode_view, event_error
from ._refuse import PROVIDER

__all__ = ["parse_reply"]

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_ROLE = "assistant"


class _UsageView(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _MessageView(msgspec.Struct):
    model: str = ""
    usage: _UsageView | None = None


class _MessageStart(msgspec.Struct):
    message: _MessageView


class _Block(msgspec.Struct):
    type: str
    id: str | None = None
    name: str | None = None


class _BlockStart(msgspec.Struct):
    index: int
    content_block: _Block


class _Delta(msgspec.Struct):
    type: str
    text: str | None = None
    partial_json: str | None = None


class _BlockDelta(msgspec.Struct):
    index: int
    delta: _Delta


class _BlockStop(msgspec.Struct):
    index: int


class _StopView(msgspec.Struct):
    stop_reason: str | None = None


class _MessageDelta(msgspec.Struct):
    delta: _StopView
    usage: _UsageView | None = None


class _ErrorView(msgspec.Struct):
    type: str | None = None
    message: str = ""


class _ErrorEvent(msgspec.Struct):
    error: _ErrorView


class _ReplyBlock(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _ReplyView(msgspec.Struct):
    model: str = ""
    content: list[_ReplyBlock] = []
    stop_reason: str | None = None
    usage: _UsageView | None = None


_start_decoder = msgspec.json.Decoder(_MessageStart)
_block_start_decoder = msgspec.json.Decoder(_BlockStart)
_block_delta_decoder = msgspec.json.Decoder(_BlockDelta)
_block_stop_decoder = msgspec.json.Decoder(_BlockStop)
_message_delta_decoder = msgspec.json.Decoder(_MessageDelta)
_error_decoder = msgspec.json.Decoder(_ErrorEvent)
_reply_decoder = msgspec.json.Decoder(_ReplyView)


def _finish(reason: str | None) -> str | None:
    return None if reason is None else _FINISH.get(reason, reason)


def _call_delta(position: int, arguments: str) -> dict[str, Any]:
    return {"index": position, "function": {"arguments": arguments}}


class _Parser:
    __slots__ = ("_calls", "_finish", "_input", "_output", "_silent", "done", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self._finish: str | None = None
        self._input = 0
        self._output = 0
        #: Content-block index -> the tool call's position in the reply (0, 1, ...):
        #: deltas carry the position, as OpenAI's do, not Anthropic's block index.
        self._calls: dict[int, int] = {}
        #: Tool blocks that have streamed no arguments yet.
        self._silent: set[int] = set()

    def count(self, usage: _UsageView | None) -> None:
        if usage is None:
            return
        if usage.input_tokens is not None:
            self._input = (
                usage.input_tokens
                + (usage.cache_creation_input_tokens or 0)
                + (usage.cache_read_input_tokens or 0)
            )
        if usage.output_tokens is not None:
            self._output = usage.output_tokens  # cumulative, per the docs

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self._input,
            completion_tokens=self._output,
            total_tokens=self._input + self._output,
        )

    def _chunk(self, content: str = "", tools: list[dict[str, Any]] | None = None) -> Chunk:
        return Chunk(
            role=_ROLE, content=content, model=self.model, finish_reason=None, tool_calls=tools
        )

    def event(self, event: ServerSentEvent) -> Chunk | None:
        kind = event.event
        if kind == "content_block_delta":
            d = decode_view(_block_delta_decoder, event.data, provider=PROVIDER)
            if d.delta.type == "text_delta" and d.delta.text:
                return self._chunk(d.delta.text)
            if d.delta.type == "input_json_delta" and d.delta.partial_json:
                position = self._calls.get(d.index)
                if position is None:
                    return None  # not a tool_use block (server tools are never sent)
                self._silent.discard(d.index)
                return self._chunk(tools=[_call_delta(position, d.delta.partial_json)])
            return None  # thinking, signatures, ...
        if kind == "ping":
            return None
        if kind == "message_start":
            start = decode_view(_start_decoder, event.data, provider=PROVIDER)
            self.model = start.message.model or self.model
            self.count(start.message.usage)
            return None
        if kind == "content_block_start":
            block = decode_view(_block_start_decoder, event.data, provider=PROVIDER)
            if block.content_block.type == "tool_use":
                position = self._calls[block.index] = len(self._calls)
                self._silent.add(block.index)
                call = {
                    "index": position,
                    "id": block.content_block.id,
                    "type": "function",
                    "function": {"name": block.content_block.name, "arguments": ""},
                }
                return self._chunk(tools=[call])
            return None
        if kind == "content_block_stop":
            if not self._silent:
                return None
            stop = decode_view(_block_stop_decoder, event.data, provider=PROVIDER)
            if stop.index not in self._silent:
                return None
            # A call without arguments streams none: say "{}", as the whole reply does.
            self._silent.discard(stop.index)
            return self._chunk(tools=[_call_delta(self._calls[stop.index], "{}")])
        if kind == "message_delta":
            delta = decode_view(_message_delta_decoder, event.data, provider=PROVIDER)
            self._finish = _finish(delta.delta.stop_reason)
            self.count(delta.usage)
            return None
        if kind == "message_stop":
            self.done = True
            return Chunk(
                role=_ROLE,
                content="",
                model=self.model,
                finish_reason=self._finish,
                usage=self.usage(),
            )
        if kind == "error":
            try:
                err = _error_decoder.decode(event.data).error
            except msgspec.DecodeError:
                err = _ErrorView(message=event.data)
            raise event_error(None, err.message, err.type, provider=PROVIDER)
        return None  # event types added later

    def end(self) -> Chunk | None:
        raise UpstreamError("anthropic stream ended before message_stop")


def parse_reply(data: bytes, model: str) -> Reply:
    """A whole (``stream: false``) Messages response as the engine's reply."""
    view = decode_view(_reply_decoder, data, provider=PROVIDER)
    text: list[str] = []
    tools: list[dict[str, Any]] = []
    for block in view.content:
        if block.type == "text" and block.text:
            text.append(block.text)
        elif block.type == "tool_use":
            # Whole calls, as OpenAI's message.tool_calls: no `index` (a delta's).
            tools.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": json.dumps(block.input)},
                }
            )
        # thinking and redacted_thinking blocks are skipped (module docstring)
    parser = _Parser(model)
    parser.count(view.usage)
    return Reply(
        role=_ROLE,
        content="".join(text),
        model=view.model or model,
        finish_reason=_finish(view.stop_reason),
        usage=parser.usage(),
        tool_calls=tools or None,
    )
