"""Anthropic Messages over raw aiohttp (alias ``claude``).

``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``;
system messages go to the top-level ``system`` field and ``max_tokens`` is always
sent (the API requires it). Events, per
https://docs.anthropic.com/en/api/messages-streaming: ``message_start`` (model,
input usage), ``content_block_*`` (text, and ``tool_use`` blocks relayed as
tool-call deltas), ``message_delta`` (stop reason, output usage),
``message_stop`` (the end), ``ping`` (ignored), ``error`` (raised: an
``overloaded_error`` is never swallowed). Unknown event types are ignored, as the
documentation asks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgspec

from ..errors import UpstreamError
from ..sse import ServerSentEvent
from ..wire import Chunk, Message, Options, Reply, Usage
from ._http import HTTPProvider, decode_view, event_error, options_dict

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider"]

#: The API version this adapter speaks (https://docs.anthropic.com/en/api/versioning).
ANTHROPIC_VERSION = "2023-06-01"

_OPTIONS = {"max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p"}
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
_message_delta_decoder = msgspec.json.Decoder(_MessageDelta)
_error_decoder = msgspec.json.Decoder(_ErrorEvent)
_reply_decoder = msgspec.json.Decoder(_ReplyView)
_encoder = msgspec.json.Encoder()


# https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use
_TOOL_CHOICE = {"auto": "auto", "required": "any", "none": "none"}
_NO_PARAMETERS = {"type": "object", "properties": {}}


def _tool(function: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as an Anthropic tool (``input_schema`` is required)."""
    tool: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        tool["description"] = function["description"]
    tool["input_schema"] = function.get("parameters") or _NO_PARAMETERS
    return tool


def _tool_choice(options: Options) -> dict[str, Any]:
    name = options.tool_name()
    if name is not None:
        return {"type": "tool", "name": name}
    return {"type": _TOOL_CHOICE[str(options.tool_choice)]}


def _finish(reason: str | None) -> str | None:
    return None if reason is None else _FINISH.get(reason, reason)


class _Parser:
    __slots__ = ("_finish", "_input", "_output", "done", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self._finish: str | None = None
        self._input = 0
        self._output = 0

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
            d = decode_view(_block_delta_decoder, event.data, provider="anthropic")
            if d.delta.type == "text_delta" and d.delta.text:
                return self._chunk(d.delta.text)
            if d.delta.type == "input_json_delta" and d.delta.partial_json:
                call = {"index": d.index, "function": {"arguments": d.delta.partial_json}}
                return self._chunk(tools=[call])
            return None  # thinking, signatures, ...
        if kind == "ping":
            return None
        if kind == "message_start":
            start = decode_view(_start_decoder, event.data, provider="anthropic")
            self.model = start.message.model or self.model
            self.count(start.message.usage)
            return None
        if kind == "content_block_start":
            block = decode_view(_block_start_decoder, event.data, provider="anthropic")
            if block.content_block.type == "tool_use":
                call = {
                    "index": block.index,
                    "id": block.content_block.id,
                    "type": "function",
                    "function": {"name": block.content_block.name, "arguments": ""},
                }
                return self._chunk(tools=[call])
            return None
        if kind == "message_delta":
            delta = decode_view(_message_delta_decoder, event.data, provider="anthropic")
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
            raise event_error(None, err.message, err.type, provider="anthropic")
        return None  # content_block_stop and event types added later

    def end(self) -> Chunk | None:
        raise UpstreamError("anthropic stream ended before message_stop")


class AnthropicProvider(HTTPProvider):
    """Claude through the Messages API."""

    name = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    carries = frozenset({"max_tokens", "temperature", "top_p", "stop", "tools", "tool_choice"})
    default_base_url = "https://api.anthropic.com"

    def request(
        self, messages: Sequence[Message], model: str, options: Options, *, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, str], bytes]:
        headers = {"x-api-key": self.http.api_key, "anthropic-version": ANTHROPIC_VERSION}
        system = [m.text for m in messages if m.role == "system"]
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": options.max_tokens or self.settings.default_max_tokens,
            "messages": [m for m in messages if m.role != "system"],
        }
        if system:
            body["system"] = "\n\n".join(system)
        body.update(options_dict(options, _OPTIONS))
        if options.stop is not None:
            body["stop_sequences"] = (
                [options.stop] if isinstance(options.stop, str) else options.stop
            )
        if options.tools:
            body["tools"] = [_tool(tool["function"]) for tool in options.tools]
            if options.tool_choice is not None:
                body["tool_choice"] = _tool_choice(options)
        if stream:
            headers["Accept"] = "text/event-stream"
            body["stream"] = True
        return f"{self.base_url}/v1/messages", {}, headers, _encoder.encode(body)

    def parser(self, model: str) -> _Parser:
        return _Parser(model)

    def parse_reply(self, data: bytes, model: str) -> Reply:
        view = decode_view(_reply_decoder, data, provider="anthropic")
        text: list[str] = []
        tools: list[dict[str, Any]] = []
        for block in view.content:
            if block.type == "text" and block.text:
                text.append(block.text)
            elif block.type == "tool_use":
                tools.append(
                    {
                        "id": block.id,
                        "type": "function",
                        "function": {"name": block.name, "arguments": json.dumps(block.input)},
                    }
                )
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
