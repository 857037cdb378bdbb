"""Anthropic Messages over raw aiohttp (alias ``claude``).

``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``;
the stream's events and the whole reply are read by :mod:`._events`.

The body is built field by field from the engine's messages and options (never
by encoding the wire Structs), so a field added to :mod:`engine.wire` cannot
reach Anthropic by accident. Each request field is carried in Anthropic's form
or refused with :class:`~engine.errors.UnsupportedField` naming it: the
messages as alternating turns in :mod:`._turns`, the options (and
``reasoning_effort`` as extended thinking, :data:`THINKING_BUDGETS`) in
:mod:`._options`.

Thinking blocks in replies are skipped (the engine's messages have no place for
them, nor for their signatures). Anthropic wants them passed back unchanged in a
tool loop: with thinking on, the assistant turn whose tool calls the last user
turn answers must start with its thinking block. The engine cannot send one, so
a request that continues a tool loop with ``reasoning_effort`` set (not
``none``) is refused naming ``reasoning_effort``; turn thinking off for the
steps that return tool results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ...wire import Message, Options, Reply
from .._http import HTTPProvider
from ._events import _Parser, parse_reply
from ._options import THINKING_BUDGETS, sampling, to_output_format, to_tool, to_tool_choice
from ._refuse import refuse
from ._turns import to_turns

__all__ = ["ANTHROPIC_VERSION", "THINKING_BUDGETS", "AnthropicProvider"]

#: The API version this adapter speaks (https://docs.anthropic.com/en/api/versioning).
ANTHROPIC_VERSION = "2023-06-01"

_encoder = msgspec.json.Encoder()


class AnthropicProvider(HTTPProvider):
    """Claude through the Messages API."""

    name = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    carries = frozenset(
        {
            "max_tokens",
            "temperature",
            "top_p",
            "stop",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "reasoning_effort",
            "user",
        }
    )
    default_base_url = "https://api.anthropic.com"

    def body(self, messages: Sequence[Message], model: str, options: Options) -> dict[str, Any]:
        """The Messages API body (without ``stream``). Raises UnsupportedField."""
        body: dict[str, Any] = {"model": model}
        body.update(sampling(options, self.settings.default_max_tokens))
        turns = to_turns(messages)
        thinking = body.get("thinking", {}).get("type") == "enabled"
        assistant = next((turn for turn in reversed(turns) if turn.role == "assistant"), None)
        if thinking and assistant is not None and assistant.has_tool_use():
            raise refuse(
                "reasoning_effort",
                "this request continues a tool loop, and with extended thinking Anthropic "
                "wants the assistant turn's thinking block passed back, which the engine "
                "does not keep. Leave `reasoning_effort` out (or `none`) when returning "
                "tool results",
            )
        body["messages"] = [turn.to_dict() for turn in turns]
        system = [m.text for m in messages if m.role == "system"]
        if system:
            body["system"] = "\n\n".join(system)
        if options.stop is not None:
            body["stop_sequences"] = (
                [options.stop] if isinstance(options.stop, str) else list(options.stop)
            )
        if options.tools:
            body["tools"] = [to_tool(tool["function"]) for tool in options.tools]
            choice = to_tool_choice(options)
            if choice is not None:
                if thinking and choice["type"] in ("any", "tool"):
                    raise refuse(
                        "tool_choice",
                        "with extended thinking (`reasoning_effort`) Claude cannot be forced "
                        'to call a tool; only "auto" and "none" are allowed',
                    )
                body["tool_choice"] = choice
        output_format = to_output_format(options)
        if output_format is not None:
            body["output_config"] = {"format": output_format}
        if options.user is not None:
            body["metadata"] = {"user_id": options.user}
        return body

    def request(
        self, messages: Sequence[Message], model: str, options: Options, *, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, str], bytes]:
        body = self.body(messages, model, options)
        headers = {"x-api-key": self.http.api_key, "anthropic-version": ANTHROPIC_VERSION}
        if stream:
            headers["Accept"] = "text/event-stream"
            body["stream"] = True
        return f"{self.base_url}/v1/messages", {}, headers, _encoder.encode(body)

    def parser(self, model: str) -> _Parser:
        return _Parser(model)

    def parse_reply(self, data: bytes, model: str) -> Reply:
        return parse_reply(data, model)
