"""Google Gemini over raw aiohttp.

``POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse`` with
``x-goog-api-key``; roles ``user``/``model``, system messages in
``systemInstruction``. Each event is a whole ``GenerateContentResponse``:
``candidates[0].content.parts[*].text`` is the content, the last one carries
``finishReason`` and ``usageMetadata``. There is no terminating event.
https://ai.google.dev/api/generate-content
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import msgspec

from ..errors import UpstreamError
from ..sse import ServerSentEvent
from ..wire import Chunk, Message, Options, Reply, Usage
from ._http import HTTPProvider, decode_view, event_error, options_dict

__all__ = ["GeminiProvider"]

_OPTIONS = {"max_tokens": "maxOutputTokens", "temperature": "temperature", "top_p": "topP"}
_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
_ROLES = {"user": "user", "assistant": "model"}
_ROLE = "assistant"


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool = False
    function_call: dict[str, Any] | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = []


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None


class _UsageView(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    total_token_count: int = 0


class _Feedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class _ErrorView(msgspec.Struct):
    code: int | None = None
    message: str = ""
    status: str | None = None


class _ResponseView(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] = []
    usage_metadata: _UsageView | None = None
    model_version: str | None = None
    prompt_feedback: _Feedback | None = None
    error: _ErrorView | None = None


_decoder = msgspec.json.Decoder(_ResponseView)
_encoder = msgspec.json.Encoder()


# https://ai.google.dev/gemini-api/docs/function-calling
_TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


def _declaration(function: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as a Gemini ``FunctionDeclaration``."""
    return {
        key: function[key]
        for key in ("name", "description", "parameters")
        if function.get(key) is not None
    }


def _calling_config(options: Options) -> dict[str, Any]:
    name = options.tool_name()
    if name is not None:
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    return {"mode": _TOOL_MODES[str(options.tool_choice)]}


def _usage(view: _UsageView | None) -> Usage | None:
    if view is None:
        return None
    completion = view.candidates_token_count + view.thoughts_token_count
    return Usage(
        prompt_tokens=view.prompt_token_count,
        completion_tokens=completion,
        total_tokens=view.total_token_count or view.prompt_token_count + completion,
    )


class _Parser:
    __slots__ = ("_tools", "done", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self._tools = 0

    def read(self, view: _ResponseView) -> tuple[str, list[dict[str, Any]] | None, str | None]:
        """Text, tool calls and finish reason (engine words) of one response."""
        if view.error is not None:
            err = view.error
            raise event_error(err.code, err.message, err.status, provider="gemini")
        if view.model_version:
            self.model = view.model_version
        if not view.candidates:
            if view.prompt_feedback is not None and view.prompt_feedback.block_reason:
                return "", None, "content_filter"
            return "", None, None
        candidate = view.candidates[0]
        text: list[str] = []
        tools: list[dict[str, Any]] | None = None
        if candidate.content is not None:
            for part in candidate.content.parts:
                if part.text is not None and not part.thought:
                    text.append(part.text)
                elif part.function_call is not None:
                    call = part.function_call
                    tools = tools or []
                    tools.append(
                        {
                            "index": self._tools,
                            "type": "function",
                            "function": {
                                "name": call.get("name"),
                                "arguments": json.dumps(call.get("args", {})),
                            },
                        }
                    )
                    self._tools += 1
        reason = candidate.finish_reason
        finish = None
        if reason is not None and reason != "FINISH_REASON_UNSPECIFIED":
            finish = "tool_calls" if self._tools and reason == "STOP" else _FINISH.get(reason)
            finish = finish or reason.lower()
        return "".join(text), tools, finish

    def event(self, event: ServerSentEvent) -> Chunk | None:
        view = decode_view(_decoder, event.data, provider="gemini")
        content, tools, finish = self.read(view)
        if finish is not None:
            self.done = True
            return Chunk(
                role=_ROLE,
                content=content,
                model=self.model,
                finish_reason=finish,
                usage=_usage(view.usage_metadata),
                tool_calls=tools,
            )
        if not content and not tools:
            return None
        return Chunk(
            role=_ROLE, content=content, model=self.model, finish_reason=None, tool_calls=tools
        )

    def end(self) -> Chunk | None:
        raise UpstreamError("gemini stream ended before a finishReason")


class GeminiProvider(HTTPProvider):
    """Gemini through the Generative Language API."""

    name = "gemini"
    key_env = "GEMINI_API_KEY"
    carries = frozenset({"max_tokens", "temperature", "top_p", "stop", "tools", "tool_choice"})
    default_base_url = "https://generativelanguage.googleapis.com"

    def request(
        self, messages: Sequence[Message], model: str, options: Options, *, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, str], bytes]:
        headers = {"x-goog-api-key": self.http.api_key}
        system = [m.text for m in messages if m.role == "system"]
        body: dict[str, Any] = {
            "contents": [
                {"role": _ROLES[m.role], "parts": [{"text": m.content}]}
                for m in messages
                if m.role != "system"
            ]
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        config = options_dict(options, _OPTIONS)
        if options.stop is not None:
            config["stopSequences"] = (
                [options.stop] if isinstance(options.stop, str) else options.stop
            )
        if config:
            body["generationConfig"] = config
        if options.tools:
            declarations = [_declaration(tool["function"]) for tool in options.tools]
            body["tools"] = [{"functionDeclarations": declarations}]
            if options.tool_choice is not None:
                body["toolConfig"] = {"functionCallingConfig": _calling_config(options)}
        name = quote(model.removeprefix("models/"), safe="-._~")
        if stream:
            url = f"{self.base_url}/v1beta/models/{name}:streamGenerateContent"
            params = {"alt": "sse"}
            headers["Accept"] = "text/event-stream"
        else:
            url = f"{self.base_url}/v1beta/models/{name}:generateContent"
            params = {}
        return url, params, headers, _encoder.encode(body)

    def parser(self, model: str) -> _Parser:
        return _Parser(model)

    def parse_reply(self, data: bytes, model: str) -> Reply:
        view = decode_view(_decoder, data, provider="gemini")
        parser = _Parser(model)
        content, tools, finish = parser.read(view)
        return Reply(
            role=_ROLE,
            content=content,
            model=parser.model,
            finish_reason=finish,
            usage=_usage(view.usage_metadata),
            tool_calls=tools,
        )
