"""OpenAI Chat Completions over raw aiohttp (and any API that speaks it).

``POST {base_url}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage``; ``data:`` chunks until ``data: [DONE]``.
https://platform.openai.com/docs/api-reference/chat-streaming

The chunk that carries ``finish_reason`` comes before the usage chunk (whose
``choices`` is empty), so the last :class:`Chunk` is held until ``[DONE]`` and
then carries both, as the engine's format wants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..errors import UpstreamError
from ..sse import ServerSentEvent
from ..wire import Chunk, Message, Options, Reply, Usage
from ._http import HTTPProvider, decode_view, event_error, options_dict

__all__ = ["OpenAIProvider"]

# Engine option -> request field. ``max_completion_tokens`` replaced the
# deprecated ``max_tokens``, which reasoning models reject.
# (``max_tokens`` goes under the provider's ``max_tokens_field``.) Every other
# option is already in this API's form and goes as it came.
_OPTIONS = {
    name: name
    for name in (
        "temperature",
        "top_p",
        "stop",
        "parallel_tool_calls",
        "response_format",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "user",
    )
}
_ROLE = "assistant"


# Views: only the fields read (msgspec docs/perf-tips.rst).
class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class _ErrorView(msgspec.Struct):
    message: str = ""
    type: str | None = None


class _ChunkView(msgspec.Struct):
    model: str = ""
    choices: list[_Choice] = []
    usage: Usage | None = None
    error: _ErrorView | None = None


class _MessageView(msgspec.Struct):
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _ReplyChoice(msgspec.Struct):
    message: _MessageView
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class _ReplyView(msgspec.Struct):
    model: str = ""
    choices: list[_ReplyChoice] = []
    usage: Usage | None = None


_chunk_decoder = msgspec.json.Decoder(_ChunkView)
_reply_decoder = msgspec.json.Decoder(_ReplyView)
_encoder = msgspec.json.Encoder()


class _Parser:
    __slots__ = ("_finish", "_held", "_logprobs", "_tools", "_usage", "done", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self._finish: str | None = None
        self._held = ""
        self._tools: list[dict[str, Any]] | None = None
        self._logprobs: dict[str, Any] | None = None
        self._usage: Usage | None = None

    def event(self, event: ServerSentEvent) -> Chunk | None:
        data = event.data
        if data == "[DONE]":
            self.done = True
            return self._final()
        view = decode_view(_chunk_decoder, data, provider="openai")
        if view.error is not None or event.event == "error":
            err = view.error or _ErrorView(message=data)
            raise event_error(None, err.message, err.type, provider="openai")
        if view.model:
            self.model = view.model
        if view.usage is not None:
            self._usage = view.usage
        if not view.choices:
            return None
        choice = view.choices[0]
        delta = choice.delta
        content = (delta.content or "") if delta is not None else ""
        tools = delta.tool_calls if delta is not None else None
        if choice.finish_reason is not None:
            # Held: the usage chunk may still follow.
            self._finish = choice.finish_reason
            self._held += content
            if tools:
                self._tools = (self._tools or []) + tools
            if choice.logprobs is not None:
                self._logprobs = choice.logprobs
            return None
        if not content and not tools and choice.logprobs is None:
            return None  # the role-only first chunk
        return Chunk(
            role=_ROLE,
            content=content,
            model=self.model,
            finish_reason=None,
            tool_calls=tools,
            logprobs=choice.logprobs,
        )

    def _final(self) -> Chunk:
        return Chunk(
            role=_ROLE,
            content=self._held,
            model=self.model,
            finish_reason=self._finish,
            usage=self._usage,
            tool_calls=self._tools,
            logprobs=self._logprobs,
        )

    def end(self) -> Chunk | None:
        if self._finish is None:
            raise UpstreamError("openai stream ended before it was complete")
        # A finish reason without [DONE]: some compatible servers omit it.
        return self._final()


def _messages(messages: Sequence[Message]) -> Sequence[Message] | list[dict[str, Any]]:
    """``messages`` as this API takes them: as they are, unless a tool call is among them.

    A tool call then gets its ``type`` (which the engine's encoding leaves out, see
    ``wire.ToolCall``) and loses Gemini's ``extra_content`` (a conversation that
    changed provider).
    """
    if not any(m.tool_calls for m in messages):
        return messages
    out: list[dict[str, Any]] = msgspec.to_builtins(messages)
    for message in out:
        for call in message.get("tool_calls", ()):
            call["type"] = "function"
            call.pop("extra_content", None)
    return out


class OpenAIProvider(HTTPProvider):
    """Chat Completions; ``OPENAI_BASE_URL`` points it at any compatible server."""

    name = "openai"
    key_env = "OPENAI_API_KEY"
    carries = frozenset({"max_tokens", "tools", "tool_choice", *_OPTIONS})
    default_base_url = "https://api.openai.com/v1"

    def request(
        self, messages: Sequence[Message], model: str, options: Options, *, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {self.http.api_key}"}
        if self.settings.organization:
            headers["OpenAI-Organization"] = self.settings.organization
        # The engine's messages are this API's (engine.wire): sent as they are,
        # bar Gemini's thought signatures (a conversation that changed provider).
        body: dict[str, Any] = {"model": model, "messages": _messages(messages)}
        if options.max_tokens is not None:
            body[self.settings.max_tokens_field] = options.max_tokens
        body.update(options_dict(options, _OPTIONS))
        if options.tools:
            # Already in this API's format: passed as they came.
            body["tools"] = options.tools
            if options.tool_choice is not None:
                body["tool_choice"] = options.tool_choice
        if stream:
            headers["Accept"] = "text/event-stream"
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return f"{self.base_url}/chat/completions", {}, headers, _encoder.encode(body)

    def parser(self, model: str) -> _Parser:
        return _Parser(model)

    def parse_reply(self, data: bytes, model: str) -> Reply:
        view = decode_view(_reply_decoder, data, provider="openai")
        if not view.choices:
            raise UpstreamError("openai reply has no choices")
        choice = view.choices[0]
        return Reply(
            role=_ROLE,
            content=choice.message.content or "",
            model=view.model or model,
            finish_reason=choice.finish_reason,
            usage=view.usage,
            tool_calls=choice.message.tool_calls,
            logprobs=choice.logprobs,
        )
