"""A fake OpenAI Chat Completions API (``POST /v1/chat/completions``).

Streamed replies are what api.openai.com sends with ``stream: true``: one
``data: {chat.completion.chunk}`` event per delta, a role chunk first, the
finish reason in a chunk with an empty delta, the usage in a chunk with empty
``choices`` (only when ``stream_options.include_usage`` asked for it; the other
chunks then carry ``"usage": null``), and ``data: [DONE]``. A mid-stream error
is a ``data: {"error": {...}}`` event, which the official SDK raises on.

https://platform.openai.com/docs/api-reference/chat-streaming
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from ._fake import FakeUpstream, Frame, Recorded, Script

__all__ = ["FakeOpenAI", "openai_app"]

_CREATED = 1_700_000_000
_ID = "chatcmpl-fake0001"
_FINGERPRINT = "fp_fake0001"

_ERRORS: dict[int, tuple[str, str | None, str]] = {
    # status: (type, code, message); {key} is the key the request carried.
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        # The real API echoes a masked key; the fake echoes it whole, so a test
        # can prove the gateway never repeats it.
        "Incorrect API key provided: {key}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


class FakeOpenAI(FakeUpstream):
    """Speaks the Chat Completions wire format; see :class:`~engine.testing.Script`."""

    name = "openai"

    def add_routes(self, app: web.Application) -> None:
        # Both with and without /v1, so a base URL works either way.
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_post("/chat/completions", self.handle)

    def is_streaming(self, request: web.Request, body: Any) -> bool:
        return isinstance(body, dict) and body.get("stream") is True

    def _chunk(
        self,
        script: Script,
        rec: Recorded,
        choices: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        *,
        include_usage: bool,
    ) -> bytes:
        obj: dict[str, Any] = {
            "id": _ID,
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": script.model or self.model_of(rec),
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            obj["usage"] = usage
        return b"data: " + self.dumps(self.with_unknown(obj, script)) + b"\n\n"

    @staticmethod
    def _choice(
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    @staticmethod
    def _logprobs(body: dict[str, Any], tokens: list[str], first: int = 0) -> dict[str, Any] | None:
        """OpenAI's ``choices[].logprobs`` for ``tokens``, when the request asked for them."""
        if not body.get("logprobs"):
            return None
        top = int(body.get("top_logprobs") or 0)

        def entry(token: str, n: int) -> dict[str, Any]:
            return {"token": token, "logprob": -0.25 * n, "bytes": list(token.encode())}

        content = [
            {**entry(token, n), "top_logprobs": [entry(token, n + k) for k in range(top)]}
            for n, token in enumerate(tokens, first)
        ]
        return {"content": content, "refusal": None}

    def _usage(self, script: Script) -> dict[str, Any]:
        prompt, completion = script.usage()
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def stream_frames(self, script: Script, rec: Recorded) -> Iterator[Frame]:
        body = rec.json if isinstance(rec.json, dict) else {}
        options = body.get("stream_options") or {}
        usage_on = bool(options.get("include_usage"))

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            return self._chunk(script, rec, choices, usage, include_usage=usage_on)

        role = {"role": "assistant", "content": "", "refusal": None}
        yield Frame(chunk([self._choice(role)]))
        for index in range(script.token_count()):
            token = script.token(index)
            logprobs = self._logprobs(body, [token], index)
            yield Frame(chunk([self._choice({"content": token}, None, logprobs)]), content=True)
        call = script.tool_call
        if call is not None:
            head = {
                "index": 0,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            yield Frame(chunk([self._choice({"tool_calls": [head]})]), content=True)
            for piece in call.arguments:
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                yield Frame(chunk([self._choice(delta)]), content=True)
        yield Frame(chunk([self._choice({}, script.finish)]))
        if usage_on:
            yield Frame(chunk([], self._usage(script)))
        yield Frame(b"data: [DONE]\n\n")

    def error_frame(self, script: Script) -> bytes:
        error = {
            "message": script.error_message,
            "type": script.error_type or "server_error",
            "param": None,
            "code": None,
        }
        return b"data: " + self.dumps({"error": error}) + b"\n\n"

    def error_body(self, script: Script, rec: Recorded) -> bytes:
        kind, code, message = _ERRORS.get(
            script.status, ("server_error", None, f"Error {script.status}.")
        )
        auth = rec.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ")
        error = {"message": message.format(key=key), "type": kind, "param": None, "code": code}
        return json.dumps({"error": error}, indent=2).encode() + b"\n"

    def reply_body(self, script: Script, rec: Recorded) -> bytes:
        tokens = [script.token(i) for i in range(script.token_count())]
        call = script.tool_call
        message: dict[str, Any] = {
            "role": "assistant",
            # A tool-call turn without text has `"content": null`, as OpenAI sends it.
            "content": "".join(tokens) if tokens or call is None else None,
            "refusal": None,
            "annotations": [],
        }
        if call is not None:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
            ]
        obj = {
            "id": _ID,
            "object": "chat.completion",
            "created": _CREATED,
            "model": script.model or self.model_of(rec),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": self._logprobs(
                        rec.json if isinstance(rec.json, dict) else {}, tokens
                    ),
                    "finish_reason": script.finish,
                }
            ],
            "usage": self._usage(script),
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
        obj = self.with_unknown(obj, script)
        return json.dumps(obj, indent=2, ensure_ascii=False).encode() + b"\n"


def openai_app(default: Script | None = None) -> tuple[web.Application, FakeOpenAI]:
    """A fake OpenAI application and the fake behind it (for scripts and records)."""
    fake = FakeOpenAI(default)
    return fake.app(), fake
