"""A fake Anthropic Messages API (``POST /v1/messages``).

Streamed replies follow https://docs.anthropic.com/en/api/messages-streaming:
``message_start``, ``content_block_start``, a ``ping``, one
``content_block_delta`` (``text_delta``) per token, ``content_block_stop``, a
``tool_use`` block with ``input_json_delta``s per scripted tool call,
``message_delta`` (stop reason and output usage) and ``message_stop``, each as
``event: <type>`` plus ``data: {...}``. A mid-stream failure is an ``event:
error``. :class:`AnthropicScript` adds what only this API answers: several tool
calls and a thinking block (``thinking_delta`` and ``signature_delta``).

Each body is checked field by field before it is answered, as the real API
does, and refused with its 400 ``invalid_request_error`` shape: unknown fields,
wrong types, content blocks of the wrong kind or role, a ``tool_result`` whose
``tool_use_id`` the previous assistant turn did not call, ``tool_use`` ids left
unanswered, tool results after text, thinking's limits (budget, sampling,
forced tools, the thinking block a tool loop must pass back). The fake is
stricter than the real API in one way, on purpose: consecutive turns of one
role are refused (the API would merge them), so an adapter that promises to
alternate is held to it. A refusal is recorded (:attr:`FakeAnthropic.requests`
and :attr:`FakeAnthropic.rejected`) and uses no queued script; a scripted error
status wins over it, as authentication comes first upstream. ``strict=True``
also requires ``model``, ``max_tokens``, ``messages`` and the
``anthropic-version`` header (hand-written probes like ``{"stream": true}``
pass without it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ._fake import FakeUpstream, Frame, Recorded, Script, ToolCall

__all__ = ["AnthropicScript", "FakeAnthropic", "anthropic_app", "check_body"]

_ID = "msg_fake0001"
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_SIGNATURE = "c2lnbmF0dXJlLWZha2U="

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "messages: field required"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "model: not found"),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


@dataclass(kw_only=True)
class AnthropicScript(Script):
    """A :class:`Script` with what only the Messages API answers."""

    #: Tool calls after the text, in order (after ``tool_call`` when both are set).
    tool_calls: Sequence[ToolCall] = ()
    #: A thinking block before the text (one ``thinking_delta``, then its signature).
    thinking: str | None = None


def _calls(script: Script) -> list[ToolCall]:
    calls = [script.tool_call] if script.tool_call is not None else []
    return calls + list(getattr(script, "tool_calls", ()))


# -- what the API accepts -------------------------------------------------------------
# The fields of MessageCreateParams (https://docs.anthropic.com/en/api/messages).

_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "stream", "temperature", "top_p",
        "top_k", "stop_sequences", "tools", "tool_choice", "metadata", "thinking",
        "output_config", "service_tier", "container", "mcp_servers", "context_management",
        "cache_control", "inference_geo", "speed",
    }
)  # fmt: skip
_TOOL_FIELDS = frozenset({"name", "description", "input_schema", "cache_control", "strict", "type"})
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}\Z")
_CHOICE_FIELDS = {
    "auto": {"type", "disable_parallel_tool_use"},
    "any": {"type", "disable_parallel_tool_use"},
    "tool": {"type", "name", "disable_parallel_tool_use"},
    "none": {"type"},
}
_THINKING = frozenset({"enabled", "disabled", "adaptive"})
_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
#: Block types each role may send, and the fields each block may have.
_BLOCKS = {
    "user": frozenset({"text", "image", "tool_result", "document"}),
    "assistant": frozenset({"text", "tool_use", "thinking", "redacted_thinking"}),
}
_BLOCK_FIELDS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
    "document": {"type", "source", "title", "context", "citations", "cache_control"},
}


class _Invalid(Exception):
    """What the real API would answer 400 ``invalid_request_error`` with."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fields(obj: Any, allowed: set[str] | frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _Invalid(f"{where}: Input should be a valid dictionary")
    for key in obj:
        if key not in allowed:
            raise _Invalid(f"{where}.{key}: Extra inputs are not permitted")
    return obj


def _unit(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and (not _is_number(value) or not 0 <= value <= 1):
        raise _Invalid(f"{name}: Input should be a number from 0 to 1")


def _check_options(body: dict[str, Any]) -> set[str]:
    """Check everything but ``messages``; return the tool names declared."""
    if "model" in body and not isinstance(body["model"], str):
        raise _Invalid("model: Input should be a valid string")
    if "max_tokens" in body and (not _is_int(body["max_tokens"]) or body["max_tokens"] < 0):
        raise _Invalid("max_tokens: Input should be a valid integer, at least 0")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _Invalid("stream: Input should be a valid boolean")
    _unit(body, "temperature")
    _unit(body, "top_p")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise _Invalid("stop_sequences: Input should be a valid list of strings")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            raise _Invalid("system: Input should be a valid string or list of text blocks")
        for number, block in enumerate(system):
            _text_block(block, f"system.{number}")
    if "metadata" in body:
        metadata = _fields(body["metadata"], {"user_id"}, "metadata")
        user = metadata.get("user_id")
        if user is not None and (not isinstance(user, str) or len(user) > 256):
            raise _Invalid("metadata.user_id: Input should be a string of at most 256 characters")
    names = _check_tools(body)
    _check_output_config(body)
    return names


def _check_tools(body: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _Invalid("tools: Input should be a valid list")
        for number, tool in enumerate(tools):
            where = f"tools.{number}"
            tool = _fields(tool, _TOOL_FIELDS, where)
            name = tool.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise _Invalid(
                    f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                )
            if name in names:
                raise _Invalid(f"tools: Tool names must be unique, {name!r} is repeated")
            names.add(name)
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise _Invalid(f"{where}.input_schema.type: Input should be 'object'")
            if "description" in tool and not isinstance(tool["description"], str):
                raise _Invalid(f"{where}.description: Input should be a valid string")
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind not in _CHOICE_FIELDS:
            raise _Invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        _fields(choice, _CHOICE_FIELDS[kind], "tool_choice")
        if kind == "tool" and choice.get("name") not in names:
            raise _Invalid(f"tool_choice.name: Tool {choice.get('name')!r} not found in tools")
        parallel = choice.get("disable_parallel_tool_use")
        if parallel is not None and not isinstance(parallel, bool):
            raise _Invalid("tool_choice.disable_parallel_tool_use: Input should be a valid boolean")
    return names


def _check_output_config(body: dict[str, Any]) -> None:
    if "output_config" not in body:
        return
    config = _fields(body["output_config"], {"format", "effort"}, "output_config")
    fmt = config.get("format")
    if fmt is not None:
        fmt = _fields(fmt, {"type", "schema"}, "output_config.format")
        if fmt.get("type") != "json_schema":
            raise _Invalid("output_config.format.type: Input should be 'json_schema'")
        if not isinstance(fmt.get("schema"), dict):
            raise _Invalid("output_config.format.schema: Field required")


def _check_thinking(body: dict[str, Any]) -> bool:
    """Check ``thinking`` and what it rules out; True when it is enabled."""
    if "thinking" not in body:
        return False
    thinking = body["thinking"]
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in _THINKING:
        raise _Invalid("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
    allowed = {"type", "budget_tokens", "display"} if kind == "enabled" else {"type", "display"}
    _fields(thinking, allowed, "thinking")
    if kind != "enabled":
        return False
    budget = thinking.get("budget_tokens")
    if not _is_int(budget) or budget < 1024:
        raise _Invalid(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        )
    max_tokens = body.get("max_tokens")
    if _is_int(max_tokens) and max_tokens <= budget:
        raise _Invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
    if body.get("temperature", 1) != 1:
        raise _Invalid("`temperature` may only be set to 1 when thinking is enabled")
    if body.get("top_p", 1) < 0.95:
        raise _Invalid("`top_p` must be greater than or equal to 0.95 when thinking is enabled")
    if "top_k" in body:
        raise _Invalid("`top_k` is not supported when thinking is enabled")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise _Invalid("Thinking may not be enabled when tool_choice forces tool use.")
    return True


def _text_block(block: Any, where: str) -> None:
    block = _fields(block, _BLOCK_FIELDS["text"], where)
    if block.get("type") != "text":
        raise _Invalid(f"{where}.type: Input should be 'text'")
    text = block.get("text")
    if not isinstance(text, str):
        raise _Invalid(f"{where}.text: Field required")
    if not text:
        raise _Invalid(f"{where}: text content blocks must be non-empty")


def _image_block(block: dict[str, Any], where: str) -> None:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        source = _fields(source, {"type", "media_type", "data"}, f"{where}.source")
        if source.get("media_type") not in _MEDIA_TYPES:
            raise _Invalid(
                f"{where}.source.base64.media_type: Input should be 'image/jpeg', "
                "'image/png', 'image/gif' or 'image/webp'"
            )
        data = source.get("data")
        if not isinstance(data, str) or not data or any(c.isspace() for c in data):
            raise _Invalid(f"{where}.source.base64.data: The image data is not valid base64")
    elif kind == "url":
        source = _fields(source, {"type", "url"}, f"{where}.source")
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _Invalid(f"{where}.source.url.url: Input should be a valid URL")
    else:
        raise _Invalid(f"{where}.source.type: Input should be 'base64', 'url' or 'file'")


def _block(given: Any, role: str, where: str) -> dict[str, Any]:
    kind = given.get("type") if isinstance(given, dict) else None
    if kind not in _BLOCK_FIELDS:
        raise _Invalid(f"{where}.type: Input tag {kind!r} does not match any of the expected tags")
    if kind not in _BLOCKS[role]:
        raise _Invalid(f"{where}.type: `{kind}` blocks are not allowed in `{role}` messages")
    block = _fields(given, _BLOCK_FIELDS[kind], where)
    if kind == "text":
        _text_block(block, where)
    elif kind == "image":
        _image_block(block, where)
    elif kind == "tool_use":
        for name in ("id", "name"):
            if not isinstance(block.get(name), str) or not block[name]:
                raise _Invalid(f"{where}.{name}: Field required")
        if not isinstance(block.get("input"), dict):
            raise _Invalid(f"{where}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise _Invalid(f"{where}.tool_use_id: Field required")
        content = block.get("content", "")
        if isinstance(content, list):
            for number, part in enumerate(content):
                inner = f"{where}.content.{number}"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "image":
                    _image_block(_fields(part, _BLOCK_FIELDS["image"], inner), inner)
                else:
                    _text_block(part, inner)
        elif not isinstance(content, str):
            raise _Invalid(f"{where}.content: Input should be a valid string or list")
    return block


def _check_messages(messages: Any, thinking: bool) -> None:
    if not isinstance(messages, list):
        raise _Invalid("messages: Input should be a valid list")
    if not messages:
        raise _Invalid("messages: at least one message is required")
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    last = len(messages) - 1
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        message = _fields(message, {"role", "content"}, where)
        role = message.get("role")
        if role not in _BLOCKS:
            raise _Invalid(f"{where}.role: Input should be 'user' or 'assistant'")
        if turns and turns[-1][0] == role:
            # The real API would merge the two turns; the fake holds adapters to alternation.
            raise _Invalid(
                f'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        content = message.get("content")
        if isinstance(content, str):
            blocks = [{"type": "text", "text": content}] if content else []
        elif isinstance(content, list):
            blocks = [_block(b, role, f"{where}.content.{n}") for n, b in enumerate(content)]
        else:
            raise _Invalid(f"{where}.content: Field required")
        if not blocks and not (role == "assistant" and index == last):
            raise _Invalid(
                f"{where}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        turns.append((role, blocks))
    _check_tool_pairs(turns, thinking)


def _check_tool_pairs(turns: list[tuple[str, list[dict[str, Any]]]], thinking: bool) -> None:
    """Every tool_use answered in the next turn, every tool_result answering the last one."""
    for index, (role, blocks) in enumerate(turns):
        if role == "user":
            called: set[str] = set()
            if index:
                called = {b["id"] for b in turns[index - 1][1] if b["type"] == "tool_use"}
            seen_other = False
            for number, block in enumerate(blocks):
                if block["type"] != "tool_result":
                    seen_other = True
                    continue
                if seen_other:
                    raise _Invalid(
                        f"messages.{index}: `tool_result` blocks must come first in the "
                        "content, before any other block"
                    )
                if block["tool_use_id"] not in called:
                    raise _Invalid(
                        f"messages.{index}.content.{number}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` block "
                        "must have a corresponding `tool_use` block in the previous message."
                    )
            continue
        ids = [b["id"] for b in blocks if b["type"] == "tool_use"]
        if not ids or index == len(turns) - 1:
            continue
        answered = {b["tool_use_id"] for b in turns[index + 1][1] if b["type"] == "tool_result"}
        missing = [i for i in ids if i not in answered]
        if missing:
            raise _Invalid(
                f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
    if thinking:
        assistant = [i for i, (role, _) in enumerate(turns) if role == "assistant"]
        if assistant:
            index = assistant[-1]
            blocks = turns[index][1]
            tools = any(b["type"] == "tool_use" for b in blocks)
            if tools and blocks[0]["type"] not in ("thinking", "redacted_thinking"):
                raise _Invalid(
                    f"messages.{index}.content.0.type: Expected `thinking` or "
                    f"`redacted_thinking`, but found `{blocks[0]['type']}`. When `thinking` "
                    "is enabled, a final `assistant` message must start with a thinking block."
                )


def check_body(body: Any, *, strict: bool = False) -> str | None:
    """Why the real API would refuse ``body`` (400 ``invalid_request_error``), or None.

    ``strict`` also requires ``model``, ``max_tokens`` and ``messages``.
    """
    try:
        if not isinstance(body, dict):
            raise _Invalid("Input should be a valid dictionary")
        _fields(body, _FIELDS, "body")
        if strict:
            for name in ("model", "max_tokens", "messages"):
                if name not in body:
                    raise _Invalid(f"{name}: Field required")
        _check_options(body)
        thinking = _check_thinking(body)
        if "messages" in body:
            _check_messages(body["messages"], thinking)
    except _Invalid as exc:
        return str(exc).removeprefix("body.")
    return None


class FakeAnthropic(FakeUpstream):
    """Speaks the Messages wire format; see :class:`~engine.testing.Script`."""

    name = "anthropic"
    # Comment mode adds both a comment line and an extra ping before each delta.
    comment = b": keep-alive\n\n" + _PING

    def __init__(self, default: Script | None = None, *, strict: bool = False) -> None:
        super().__init__(default)
        self.strict = strict
        #: The message of each request refused as invalid, oldest first.
        self.rejected: list[str] = []

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Refuse an invalid body as the API would; answer the rest as scripted."""
        script = self._queue[0] if self._queue else self.default
        if script.status != 200:
            return await super().handle(request)  # authentication and limits come first
        raw = await request.read()  # aiohttp keeps it: the base handler reads it again
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        problem = check_body(body, strict=self.strict)
        if problem is None and self.strict and "anthropic-version" not in request.headers:
            problem = "anthropic-version: header is required"
        if problem is None:
            return await super().handle(request)
        rec = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            json=body,
        )
        self.requests.append(rec)
        self.rejected.append(problem)
        self.received.set()
        rec.done.set()
        error = {"type": "invalid_request_error", "message": problem}
        obj = {"type": "error", "error": error, "request_id": "req_fake0001"}
        return web.Response(
            status=400, body=self.dumps(obj), headers={"Content-Type": "application/json"}
        )

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

    def _block_events(
        self, script: Script, index: int, block: dict[str, Any], deltas: Sequence[dict[str, Any]]
    ) -> Iterator[Frame]:
        start = {"type": "content_block_start", "index": index, "content_block": block}
        yield Frame(self._event(script, start), content=block["type"] == "tool_use")
        for delta in deltas:
            event = {"type": "content_block_delta", "index": index, "delta": delta}
            yield Frame(self._event(script, event), content=block["type"] == "tool_use")
        yield Frame(self._event(script, {"type": "content_block_stop", "index": index}))

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
        index = 0
        thinking = getattr(script, "thinking", None)
        if thinking is not None:
            deltas = [
                {"type": "thinking_delta", "thinking": thinking},
                {"type": "signature_delta", "signature": _SIGNATURE},
            ]
            block: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            yield from self._block_events(script, index, block, deltas)
            index += 1
        text: dict[str, Any] = {"type": "text", "text": ""}
        start = {"type": "content_block_start", "index": index, "content_block": text}
        yield Frame(self._event(script, start))
        yield Frame(_PING)
        if script.unknown_fields:
            # "We may occasionally add new event types": clients must ignore them.
            yield Frame(self._event(script, {"type": "future_event", "detail": "ignore me"}))
        for number in range(script.token_count()):
            delta = {"type": "text_delta", "text": script.token(number)}
            event = {"type": "content_block_delta", "index": index, "delta": delta}
            yield Frame(self._event(script, event), content=True)
        yield Frame(self._event(script, {"type": "content_block_stop", "index": index}))
        for call in _calls(script):
            index += 1
            tool = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            pieces = [{"type": "input_json_delta", "partial_json": p} for p in call.arguments]
            yield from self._block_events(script, index, tool, pieces)
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
        content: list[dict[str, Any]] = []
        thinking = getattr(script, "thinking", None)
        if thinking is not None:
            content.append({"type": "thinking", "thinking": thinking, "signature": _SIGNATURE})
        content.append({"type": "text", "text": text})
        for call in _calls(script):
            args = json.loads("".join(call.arguments) or "{}")
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
