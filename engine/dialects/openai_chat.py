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

Requests: every field of OpenAI's reference is declared (:class:`CompletionRequest`)
and either carried, into the engine's :class:`~engine.wire.Message` (content
parts, assistant ``tool_calls``, ``tool`` results) and
:class:`~engine.wire.Options` (which each provider carries in its own form or
refuses by name), or refused here by name; an undeclared field is refused too.
Only platform bookkeeping that cannot change the answer is accepted unsent
(``metadata``, ``store``, ``service_tier``, ``prompt_cache_key``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from ..errors import EngineError, InvalidFields, UnsupportedField
from ..sse import encode, encode_json
from ..wire import Chunk, Message, Options, Part, Role, ToolCall, Usage
from . import ErrorAnswer, retry_headers

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


class RequestMessage(Struct, kw_only=True, forbid_unknown_fields=True):
    """One message of a Chat Completions request, every field OpenAI defines.

    Content parts decode straight into the engine's (:data:`~engine.wire.Part`):
    a part type the engine has no form for (``file``) is refused by msgspec
    with its path. ``name`` is refused on all but tool messages (a participant
    name the providers other than OpenAI have no place for); ``refusal`` on an
    assistant message replayed from history is its text; ``audio`` (a reference
    to an earlier audio reply) and the deprecated ``function_call`` are refused.
    """

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Part] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None


class StreamOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    include_usage: bool = False
    #: Obfuscation padding on OpenAI's own stream: nothing a relay can add.
    include_obfuscation: bool | None = None


class CompletionRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/chat/completions``: every field OpenAI's reference lists.

    Each one is carried (into :class:`~engine.wire.Options`, which each provider
    carries or refuses by name), accepted as bookkeeping that cannot change the
    answer (``metadata``, ``store``, ``service_tier``, ``prompt_cache_key``,
    ``safety_identifier``), or refused by name (:func:`check`). A field OpenAI
    does not define is refused by msgspec, naming it: nothing is dropped silently.
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
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, int] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    reasoning_effort: str | None = None
    # Bookkeeping on OpenAI's platform: cannot change the answer, accepted.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Refused by name (check()): outputs or tools the gateway cannot carry.
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    verbosity: str | None = None
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None


# -- responses -----------------------------------------------------------------------


class ResponseMessage(Struct, kw_only=True, omit_defaults=True):
    role: str
    content: str | None  # no default: always sent, null included
    tool_calls: list[dict[str, Any]] | None = None


class Choice(Struct, kw_only=True):
    index: int = 0
    message: ResponseMessage
    logprobs: dict[str, Any] | None = None
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
    logprobs: dict[str, Any] | None = None
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
    return ErrorAnswer(status, _encoder.encode(body), retry_headers(exc.retry_after))


def error_frame(exc: EngineError) -> bytes:
    """The error after the headers. No event name: OpenAI sends errors as plain
    data events, and the SDK raises APIError on any data with an ``"error"`` key."""
    return encode_json(openai_error(exc)[1])


# -- request -> engine ------------------------------------------------------------


# ``developer`` is ``system`` renamed (for o1); ``function`` is refused (deprecated).
_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def _message(message: RequestMessage, where: str) -> Message:
    role = _ROLES.get(message.role)
    if role is None:
        raise UnsupportedField(
            "the deprecated `function` role is not supported: send `tool` messages "
            f"answering `tool_calls` - at `{where}.role`",
            field=f"{where[2:]}.role",
        )
    for name in ("audio", "function_call"):
        if getattr(message, name) is not None:
            raise UnsupportedField(
                f"`{name}` on a message is not supported by this gateway - at `{where}.{name}`",
                field=f"{where[2:]}.{name}",
            )
    if message.name is not None and role != "tool":
        raise UnsupportedField(
            "a message `name` is not supported by this gateway (only OpenAI has a place "
            f"for it): leave it out - at `{where}.name`",
            field=f"{where[2:]}.name",
        )
    content = message.content
    if content is None and message.refusal is not None:
        content = message.refusal  # an assistant refusal replayed from history
    elif content is None and role == "assistant" and not message.tool_calls:
        content = ""  # an empty turn, as some clients replay one
    try:
        return Message(
            role=role,
            content=content,
            tool_calls=message.tool_calls,
            tool_call_id=message.tool_call_id,
        )
    except ValueError as exc:
        raise InvalidFields(f"{exc} - at `{where}`") from None


def to_messages(messages: list[RequestMessage]) -> list[Message]:
    """The engine's messages; raises InvalidFields/UnsupportedField naming the message.

    (That each ``tool`` message answers an earlier call is checked once memory's
    history is in front of them: ``engine.wire.check_tool_results``.)
    """
    return [_message(message, f"$.messages[{index}]") for index, message in enumerate(messages)]


# The first words of a message from Options' own checks ("`tools[0]` must ...").
_CHECKED_FIELD = re.compile(r"`(\w+)")

# Carried into Options under the same name.
_CARRIED = (
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
)


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
    parallel = body.parallel_tool_calls
    raw: dict[str, Any] = {name: getattr(body, name) for name in _CARRIED}
    raw.update(
        max_tokens=max_tokens,
        tools=tools,
        tool_choice=tool_choice,
        # Without tools there are no calls to make in parallel (the AI SDK sends it always).
        parallel_tool_calls=parallel if tools else None,
        # `safety_identifier` is what OpenAI renamed `user` to: the same end-user id.
        user=body.user if body.user is not None else body.safety_identifier,
    )
    if isinstance(body.response_format, dict) and body.response_format.get("type") == "text":
        raw["response_format"] = None  # prose: the default
    try:
        return msgspec.convert({k: v for k, v in raw.items() if v is not None}, Options)
    except msgspec.ValidationError as exc:
        message = str(exc).replace("$.max_tokens", f"$.{source}")
        named = _CHECKED_FIELD.match(message)
        if named and "- at `$." not in message:
            # Options' own checks name their field first but give no path.
            message += f" - at `$.{named.group(1)}`"
        raise InvalidFields(f"Invalid value: {message}") from exc


# Fields refused by name, and why.
_REFUSED = {
    "audio": "audio output is not supported by this gateway",
    "prediction": "predicted outputs are not supported by this gateway",
    "web_search_options": "web search is not supported by this gateway",
    "verbosity": "`verbosity` is not supported by this gateway",
    "functions": "the deprecated `functions` are not supported: send `tools`",
    "function_call": "the deprecated `function_call` is not supported: send `tool_choice`",
}


def check(body: CompletionRequest) -> None:
    """Refuse what the gateway cannot honour instead of ignoring it."""
    if body.n is not None and body.n != 1:
        raise UnsupportedField(f"only n=1 is supported, got n={body.n} - at `$.n`", field="n")
    if body.modalities is not None and body.modalities != ["text"]:
        raise UnsupportedField(
            f"only text output is supported, got modalities={body.modalities} - at `$.modalities`",
            field="modalities",
        )
    for name, why in _REFUSED.items():
        if getattr(body, name) is not None:
            raise UnsupportedField(f"{why} - at `$.{name}`", field=name)


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
        if not (chunk.content or chunk.tool_calls or chunk.logprobs):
            return None
        delta = Delta(content=chunk.content or None, tool_calls=chunk.tool_calls)
        return self.frame([ChunkChoice(delta=delta, logprobs=chunk.logprobs)])

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
