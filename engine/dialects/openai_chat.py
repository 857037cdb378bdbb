"""The OpenAI Chat Completions dialect: its request and response types, errors and framing.

The translation to each provider's format is the provider adapters' own: this
module maps an OpenAI request onto :class:`~engine.wire.Message` and
:class:`~engine.wire.Options`, and the engine's chunks back onto OpenAI's.

Errors use OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``,
mapped from the :class:`~engine.errors.EngineError` tree in one place
(:func:`openai_error`): before the headers went out as a JSON response with the
status the SDKs key their exception classes on (:func:`error_answer`); after,
as a ``data: {"error": ...}`` event, then the end of the body without
``[DONE]`` (:func:`error_frame`; what api.openai.com sends, and what the
``openai`` SDK raises ``APIError`` on).

Tools: ``tools`` (function tools) and ``tool_choice`` go into
:class:`~engine.wire.Options`, which each provider maps onto its own format
(the mock ignores them); tool-call deltas come back in ``delta.tool_calls``.
Not passed upstream (the engine's messages have no way to carry them yet):
``tool`` messages and assistant messages with ``tool_calls``, that is the
results of a tool call, are refused with a 400 rather than dropped, since a
model that silently loses them answers differently. ``user``, ``name`` and
OpenAI fields this module does not declare (``seed``, ``presence_penalty``,
``parallel_tool_calls``, ...) are accepted and ignored.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from ..errors import EngineError, InvalidFields, UnsupportedField
from ..sse import encode, encode_json
from ..wire import Chunk, Message, Options, Role, Usage
from . import ErrorAnswer, retry_after_seconds

__all__ = [
    "DONE",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Choice",
    "CompletionRequest",
    "ErrorBody",
    "Model",
    "ModelList",
    "OpenAIFraming",
    "ResponseMessage",
    "check",
    "error_answer",
    "error_frame",
    "openai_error",
    "to_messages",
    "to_options",
]

#: The stream's last event.
DONE = encode("[DONE]")

_encoder = msgspec.json.Encoder()

# -- request -----------------------------------------------------------------------


class TextPart(Struct, kw_only=True, tag_field="type", tag="text"):
    """A ``{"type": "text", "text": ...}`` content part; other part types are refused (400)."""

    text: str


class RequestMessage(Struct, kw_only=True):
    """One message of a Chat Completions request. Unknown keys are ignored."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(Struct, kw_only=True):
    include_usage: bool = False


class CompletionRequest(Struct, kw_only=True):
    """The body of ``POST /v1/chat/completions``, as far as the gateway reads it.

    ``tools`` and ``tool_choice`` are checked by :class:`~engine.wire.Options`;
    undeclared fields are ignored, as lenient OpenAI-compatible servers do.
    """

    model: str
    messages: Annotated[list[RequestMessage], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


# -- responses -----------------------------------------------------------------------


class ResponseMessage(Struct, kw_only=True, omit_defaults=True):
    role: str
    content: str | None  # no default: always sent, null included
    tool_calls: list[dict[str, Any]] | None = None


class Choice(Struct, kw_only=True):
    index: int = 0
    message: ResponseMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(Struct, kw_only=True, tag_field="object", tag="chat.completion"):
    """A whole reply (``stream: false``)."""

    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None


class Delta(Struct, kw_only=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(Struct, kw_only=True):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(
    Struct, kw_only=True, omit_defaults=True, tag_field="object", tag="chat.completion.chunk"
):
    """One streamed event; the usage chunk has empty ``choices`` and ``usage`` set."""

    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Model(Struct, kw_only=True, tag_field="object", tag="model"):
    id: str
    #: Unix time; the gateway does not know when a provider made a model, so 0.
    created: int = 0
    owned_by: str


class ModelList(Struct, kw_only=True, tag_field="object", tag="list"):
    data: list[Model]


class ErrorDetail(Struct, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(Struct, kw_only=True):
    """OpenAI's error body, before and after the headers went out."""

    error: ErrorDetail


# -- errors: the one mapping for these routes ----------------------------------------

# OpenAI's error types by status; every 5xx is a ``server_error``. A 404 here is
# an unknown model, which OpenAI reports as an ``invalid_request_error``.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
# OpenAI's own codes where it has one; otherwise the engine's type is the code.
_CODES = {"not_found": "model_not_found", "rate_limited": "rate_limit_exceeded"}
# OpenAI answers 400 to any invalid field, never 422: its SDKs expect BadRequestError.
_STATUS = {422: 400}
# msgspec's "... - at `$.field`" and "missing required field `field`".
_PARAM = re.compile(r"at `\$\.(\w+)|required field `(\w+)`")


def openai_error(exc: EngineError) -> tuple[int, ErrorBody]:
    """The HTTP status and OpenAI error body for ``exc``.

    The status is the error's own (422 becomes 400), so the SDKs raise the
    matching class: 400 ``BadRequestError``, 404 ``NotFoundError``, 429
    ``RateLimitError``, 5xx ``InternalServerError``. An upstream 401/403 is the
    gateway's key being wrong, not the caller's: it stays a 502.
    """
    status = _STATUS.get(exc.status, exc.status)
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    param = exc.field if isinstance(exc, UnsupportedField) else None
    if param is None:
        match = _PARAM.search(exc.message)
        param = (match.group(1) or match.group(2)) if match else None
    code = _CODES.get(exc.type, exc.type)
    detail = ErrorDetail(message=exc.message, type=kind, param=param, code=code)
    return status, ErrorBody(error=detail)


def error_answer(exc: EngineError) -> ErrorAnswer:
    """The error response before the headers: OpenAI's status, body and retry headers."""
    status, body = openai_error(exc)
    headers = None
    if exc.retry_after is not None:
        # The SDKs also read OpenAI's retry-after-ms, which keeps the precision.
        headers = {
            "Retry-After": retry_after_seconds(exc.retry_after),
            "retry-after-ms": str(max(1, math.ceil(exc.retry_after * 1000))),
        }
    return ErrorAnswer(status, _encoder.encode(body), headers)


def error_frame(exc: EngineError) -> bytes:
    """The error after the headers. No event name: OpenAI sends errors as plain
    data events, and the SDK raises APIError on any data with an ``"error"`` key."""
    return encode_json(openai_error(exc)[1])


# -- request -> engine ------------------------------------------------------------


def _text(message: RequestMessage) -> str:
    content = message.content
    if isinstance(content, list):
        # Text parts joined by newlines, as vLLM and others join them.
        return "\n".join(part.text for part in content)
    return content or ""


# ``developer`` is ``system`` renamed (for o1); ``tool`` and ``function`` have no equivalent.
_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}


def to_messages(messages: list[RequestMessage]) -> list[Message]:
    """The engine's messages.

    Raises :class:`InvalidFields` for tool messages and assistant tool calls
    (tool results in a conversation), which no provider can be given yet.
    """
    out: list[Message] = []
    for index, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None or message.tool_calls:
            raise InvalidFields(
                "tool results are not supported by this gateway yet: `tools` are passed "
                f"upstream, but messages with role `{message.role}` or with `tool_calls` "
                f"cannot be - at `$.messages[{index}]`"
            )
        out.append(Message(role=role, content=_text(message)))
    return out


# The first words of a message from Options' own checks ("`tools[0]` must ...").
_CHECKED_FIELD = re.compile(r"`(tools|tool_choice)\b")


def to_options(body: CompletionRequest) -> Options:
    """Generation options, validated like the native endpoint's (bad values are 400)."""
    max_tokens = body.max_completion_tokens
    source = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, source = body.max_tokens, "max_tokens"
    tools = body.tools or None  # an empty list is no tools
    tool_choice = body.tool_choice
    if not tools and tool_choice in ("none", "auto"):
        tool_choice = None  # harmless without tools, and some clients always send it
    raw = {
        "max_tokens": max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": body.stop,
        "tools": tools,
        "tool_choice": tool_choice,
    }
    try:
        return msgspec.convert({k: v for k, v in raw.items() if v is not None}, Options)
    except msgspec.ValidationError as exc:
        message = str(exc).replace("$.max_tokens", f"$.{source}")
        named = _CHECKED_FIELD.match(message)
        if named and "- at `$." not in message:
            # Options' own checks name their field first but give no path.
            message += f" - at `$.{named.group(1)}`"
        raise InvalidFields(f"Invalid value: {message}") from exc


def check(body: CompletionRequest) -> None:
    """Refuse what the gateway cannot honour instead of ignoring it."""
    if body.n is not None and body.n != 1:
        raise InvalidFields(f"only n=1 is supported, got n={body.n} - at `$.n`")


# -- engine -> stream --------------------------------------------------------------


class OpenAIFraming:
    """One completion stream's chunk frames and its finish, in OpenAI's shape.

    A slotted object, not closures over the handler's locals: an open stream
    keeps only this, never the request's messages or the stored history
    (those are dropped once the upstream request is made).
    """

    __slots__ = ("created", "id", "include_usage", "model")

    def __init__(self, cid: str, created: int, model: str, include_usage: bool) -> None:
        self.id = cid
        self.created = created
        self.model = model
        self.include_usage = include_usage

    def frame(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        return encode_json(
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
            )
        )

    def start(self) -> bytes:
        return self.frame([ChunkChoice(delta=Delta(role="assistant"))])

    def chunk(self, chunk: Chunk, n: int) -> bytes | None:
        if not (chunk.content or chunk.tool_calls):
            return None
        delta = Delta(content=chunk.content or None, tool_calls=chunk.tool_calls)
        return self.frame([ChunkChoice(delta=delta)])

    def error(self, exc: EngineError, n: int) -> bytes:
        return error_frame(exc)

    def finish(self, finish_reason: str | None, usage: Usage | None, n: int) -> bytes:
        # As OpenAI does: the finish reason in a chunk of its own, empty delta,
        # the usage chunk (empty choices) when asked for, then [DONE].
        last = ChunkChoice(delta=Delta(), finish_reason=finish_reason or "stop")
        frames = self.frame([last])
        if self.include_usage:
            frames += self.frame([], usage)
        return frames + DONE
