"""A fake Anthropic Messages API (``POST /v1/messages``).

Streamed replies follow https://docs.anthropic.com/en/api/messages-streaming:
``message_start``, ``content_block_start``, a ``ping``, one
``content_block_delta`` (``text_delta``) per token, ``content_block_stop``, a
``tool_use`` block with ``input_json_delta``s when scripted, ``message_delta``
(stop reason and output usage) and ``message_stop``, each as ``event: <type>``
plus ``data: {...}``. A mid-stream failure is an ``event: error``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from ._fake import FakeUpstream, Frame, Recorded, Script

__all__ = ["FakeAnthropic", "anthropic_app"]

_ID = "msg_fake0001"
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "messages: field required"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "model: not found"),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


class FakeAnthropic(FakeUpstream):
    """Speaks the Messages wire format; see :class:`~engine.testing.Script`."""

    name = "anthropic"
    # Comment mode adds both a comment line and an extra ping before each delta.
    comment = b": keep-alive\n\n" + _PING

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.handle)

    def is_streaming(self, request: web.Request, body: Any) -> bool:
        return isinstance(body, dict) and body.get("stream") is True

    def _event(self, script: Script, obj: dict[str, Any]) -> bytes:
        kind = str(obj["type"]).encode()
        data = self.dumps(self.with_unknown(obj, script))
        return b"event: " + kind + b"\ndata: " + data + b"\n\n"

    def _usage(self, script: Script, output: int) -> dict[str, Any]:
        prompt, _ = script.usage()
        return {
            "input_tokens": prompt,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output,
            "service_tier": "standard",
        }

    def stream_frames(self, script: Script, rec: Recorded) -> Iterator[Frame]:
        _, completion = script.usage()
        message: dict[str, Any] = {
            "id": _ID,
            "type": "message",
            "role": "assistant",
            "model": script.model or self.model_of(rec),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(script, 1),
        }
        yield Frame(self._event(script, {"type": "message_start", "message": message}))
        block: dict[str, Any] = {"type": "text", "text": ""}
        start = {"type": "content_block_start", "index": 0, "content_block": block}
        yield Frame(self._event(script, start))
        yield Frame(_PING)
        if script.unknown_fields:
            # "We may occasionally add new event types": clients must ignore them.
            yield Frame(self._event(script, {"type": "future_event", "detail": "ignore me"}))
        for index in range(script.token_count()):
            delta = {"type": "text_delta", "text": script.token(index)}
            event = {"type": "content_block_delta", "index": 0, "delta": delta}
            yield Frame(self._event(script, event), content=True)
        yield Frame(self._event(script, {"type": "content_block_stop", "index": 0}))
        call = script.tool_call
        if call is not None:
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            start = {"type": "content_block_start", "index": 1, "content_block": block}
            yield Frame(self._event(script, start), content=True)
            for piece in call.arguments:
                delta = {"type": "input_json_delta", "partial_json": piece}
                event = {"type": "content_block_delta", "index": 1, "delta": delta}
                yield Frame(self._event(script, event), content=True)
            yield Frame(self._event(script, {"type": "content_block_stop", "index": 1}))
        stop: dict[str, Any] = {"stop_reason": _STOP_REASONS[script.finish], "stop_sequence": None}
        usage = {"output_tokens": completion}
        yield Frame(self._event(script, {"type": "message_delta", "delta": stop, "usage": usage}))
        yield Frame(self._event(script, {"type": "message_stop"}))

    def error_frame(self, script: Script) -> bytes:
        error = {"type": script.error_type or "overloaded_error", "message": script.error_message}
        return b"event: error\ndata: " + self.dumps({"type": "error", "error": error}) + b"\n\n"

    def error_body(self, script: Script, rec: Recorded) -> bytes:
        kind, message = _ERRORS.get(script.status, ("api_error", f"Error {script.status}"))
        obj = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": "req_fake0001",
        }
        return self.dumps(obj)

    def reply_body(self, script: Script, rec: Recorded) -> bytes:
        _, completion = script.usage()
        text = "".join(script.token(i) for i in range(script.token_count()))
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        call = script.tool_call
        if call is not None:
            args = json.loads("".join(call.arguments))
            content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": args})
        obj = {
            "id": _ID,
            "type": "message",
            "role": "assistant",
            "model": script.model or self.model_of(rec),
            "content": content,
            "stop_reason": _STOP_REASONS[script.finish],
            "stop_sequence": None,
            "usage": self._usage(script, completion),
        }
        return self.dumps(self.with_unknown(obj, script))


def anthropic_app(default: Script | None = None) -> tuple[web.Application, FakeAnthropic]:
    """A fake Anthropic application and the fake behind it (for scripts and records)."""
    fake = FakeAnthropic(default)
    return fake.app(), fake
