"""What ``/v1/responses`` answers: the response object, its output items, the stream's
events and the errors, in OpenAI's shapes (openai-python's ``types/responses``).

Every field OpenAI sends is sent, nulls included (``omit_defaults`` is not
used): the SDKs' models and the clients built on them read them by name.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from msgspec import Struct

from ...errors import EngineError, NotFound, UnsupportedField
from ...sse import encode_json
from ...wire import Usage
from .. import ErrorAnswer
from ..openai_chat import ErrorBody, ErrorDetail, openai_error
from ..openai_chat import error_answer as chat_error_answer
from .request import ResponsesRequest, param_of

__all__ = [
    "Completed",
    "ContentPartAdded",
    "ContentPartDone",
    "Created",
    "Failed",
    "FunctionCallArgumentsDelta",
    "FunctionCallArgumentsDone",
    "FunctionCallOut",
    "InProgress",
    "Incomplete",
    "OutputItemAdded",
    "OutputItemDone",
    "OutputMessage",
    "OutputText",
    "OutputTextDelta",
    "OutputTextDone",
    "Queued",
    "ResponseNotFound",
    "ResponseObject",
    "ResponseUsage",
    "UnknownRoute",
    "StreamError",
    "error_answer",
    "error_detail",
    "error_frame",
    "new_response",
]

_encoder = msgspec.json.Encoder()


class ResponseNotFound(NotFound):
    """Raised when a response id is unknown, deleted, expired, or was created with
    ``store: false`` and has ended."""

    type = "response_not_found"


class UnknownRoute(NotFound):
    """Raised for a method and path under ``/v1/responses`` that OpenAI does not define."""

    type = "invalid_url"


# -- output items ------------------------------------------------------------------


class OutputText(Struct, kw_only=True, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputMessage(Struct, kw_only=True, tag_field="type", tag="message"):
    id: str
    status: str
    content: list[OutputText]
    role: str = "assistant"


class FunctionCallOut(Struct, kw_only=True, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


OutputItem = OutputMessage | FunctionCallOut


class InputTokensDetails(Struct, kw_only=True):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)

    @classmethod
    def of(cls, usage: Usage) -> ResponseUsage:
        return cls(
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
        )


class ResponseError(Struct, kw_only=True):
    #: One of OpenAI's codes: ``server_error`` or ``rate_limit_exceeded`` here.
    code: str
    message: str


class IncompleteDetails(Struct, kw_only=True):
    reason: str | None


class ResponseObject(Struct, kw_only=True, tag_field="object", tag="response"):
    """OpenAI's ``Response``; ``status`` and ``output`` change as the generation goes."""

    id: str
    created_at: int
    status: str
    background: bool
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    max_tool_calls: int | None = None
    model: str
    output: list[OutputItem] = msgspec.field(default_factory=list)
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: dict[str, Any]
    service_tier: str
    store: bool
    temperature: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_logprobs: int = 0
    top_p: float | None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None
    metadata: dict[str, str]
    safety_identifier: str | None
    prompt_cache_key: str | None
    prompt_cache_retention: str | None = None
    completed_at: int | None = None


def new_response(
    rid: str,
    body: ResponsesRequest,
    *,
    model: str,
    tools: list[dict[str, Any]],
    status: str,
) -> ResponseObject:
    """The response object of a new request, echoing what it asked for."""
    form = body.text.format if body.text is not None else None
    return ResponseObject(
        id=rid,
        created_at=int(time.time()),
        status=status,
        background=bool(body.background),
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        model=model,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        reasoning={
            "effort": body.reasoning.effort if body.reasoning is not None else None,
            "summary": None,
        },
        service_tier=body.service_tier or "default",
        store=body.store is not False,
        temperature=body.temperature,
        text={"format": msgspec.to_builtins(form) if form is not None else {"type": "text"}},
        tool_choice=body.tool_choice if body.tool_choice is not None else "auto",
        tools=tools,
        top_p=body.top_p,
        user=body.user,
        metadata=dict(body.metadata or {}),
        safety_identifier=body.safety_identifier,
        prompt_cache_key=body.prompt_cache_key,
        prompt_cache_retention=body.prompt_cache_retention,
    )


# -- stream events -----------------------------------------------------------------


class Event(Struct, kw_only=True, tag_field="type"):
    """One streamed event; its ``type`` is also the SSE ``event:`` name."""

    #: The log index of the event (engine.streams.log), so a resume is a byte copy.
    sequence_number: int = 0

    def frame(self) -> bytes:
        """The event as SSE: ``event: <type>`` and its JSON (no ``id:``, as OpenAI)."""
        return encode_json(self, event=str(self.__struct_config__.tag))


class _Lifecycle(Event, kw_only=True):
    response: ResponseObject


class Created(_Lifecycle, tag="response.created"):
    pass


class Queued(_Lifecycle, tag="response.queued"):
    pass


class InProgress(_Lifecycle, tag="response.in_progress"):
    pass


class Completed(_Lifecycle, tag="response.completed"):
    pass


class Incomplete(_Lifecycle, tag="response.incomplete"):
    pass


class Failed(_Lifecycle, tag="response.failed"):
    pass


class OutputItemAdded(Event, tag="response.output_item.added", kw_only=True):
    output_index: int
    item: OutputItem


class OutputItemDone(Event, tag="response.output_item.done", kw_only=True):
    output_index: int
    item: OutputItem


class ContentPartAdded(Event, tag="response.content_part.added", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class ContentPartDone(Event, tag="response.content_part.done", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class OutputTextDelta(Event, tag="response.output_text.delta", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputTextDone(Event, tag="response.output_text.done", kw_only=True):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class FunctionCallArgumentsDelta(Event, tag="response.function_call_arguments.delta", kw_only=True):
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDone(Event, tag="response.function_call_arguments.done", kw_only=True):
    item_id: str
    output_index: int
    name: str
    arguments: str


class StreamError(Event, tag="error", kw_only=True):
    """A failure after the headers: the fields flat, as OpenAI's reference documents
    them (``ResponseErrorEvent``), and nested under ``error``, as its servers send
    them, on which the SDKs raise ``APIError`` while iterating."""

    code: str | None
    message: str
    param: str | None
    error: ErrorDetail


# -- errors ------------------------------------------------------------------------


def error_detail(exc: EngineError) -> tuple[int, ErrorBody]:
    """The status and OpenAI error body for ``exc``, its ``param`` the full path
    (``input[0].content[1].type``), not only the top-level field."""
    status, body = openai_error(exc)
    if not isinstance(exc, UnsupportedField):
        body.error.param = param_of(exc.message) or body.error.param
    return status, body


def error_answer(exc: EngineError) -> ErrorAnswer:
    """The error before the headers: OpenAI's status, body and retry headers."""
    answer = chat_error_answer(exc)  # (its Retry-After and retry-after-ms)
    return answer._replace(body=_encoder.encode(error_detail(exc)[1]))


def stream_error(exc: EngineError, sequence_number: int) -> StreamError:
    """The ``error`` event for ``exc``."""
    detail = error_detail(exc)[1].error
    return StreamError(
        sequence_number=sequence_number,
        code=detail.code,
        message=detail.message,
        param=detail.param,
        error=detail,
    )


def response_error(exc: EngineError) -> ResponseError:
    """``response.error`` for a generation that failed with ``exc``."""
    code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
    return ResponseError(code=code, message=exc.message)


def error_frame(exc: EngineError) -> bytes:
    """A failure after the headers that no response's log holds (the upstream refused
    after the header deadline): an ``error`` event, which the SDKs raise on."""
    return stream_error(exc, 0).frame()
