"""The Anthropic Messages dialect: its request and response types, errors and framing.

The translation to each provider's format is the provider adapters' own: this
module maps a Messages request onto :class:`~engine.wire.Message` and
:class:`~engine.wire.Options`, and the engine's chunks back onto Anthropic's
message object and stream events
(https://docs.anthropic.com/en/api/messages, .../messages-streaming).

Requests: every field of Anthropic's reference is declared
(:class:`MessagesRequest`, content blocks, tools, ``tool_choice``,
``thinking``, ``output_config``) and either carried, accepted as bookkeeping
that cannot change the answer, or refused by name (:class:`UnsupportedField`,
400); an undeclared field is refused by msgspec, naming it. The mapping:

==================================  ==================================================
Anthropic                           engine
==================================  ==================================================
``system`` (string or text blocks)  a ``system`` message first
``messages[].role: system``         a ``system`` message in place
``text`` block                      text (one block: a string; several: text parts)
``image`` block, ``base64`` source  ``ImagePart`` with a ``data:<type>;base64,`` URL
``image`` block, ``url`` source     ``ImagePart`` with the http(s) URL
``tool_use`` (assistant)            ``tool_calls`` (``input`` JSON-encoded as arguments)
``tool_result`` (user)              a ``tool`` message (text), before the turn's rest
``tool_result.is_error: true``      its text prefixed with ``Error: `` (below)
``thinking``/``redacted_thinking``  dropped (below)
``max_tokens``                      ``max_tokens`` (0, a cache pre-warm, is refused)
``stop_sequences``                  ``stop``
``temperature``, ``top_p``          the same (``temperature`` 0..1, as Anthropic)
``tools`` (custom)                  OpenAI function tools (``input_schema`` ->
                                    ``parameters``)
``tool_choice`` auto/any/tool/none  ``"auto"``/``"required"``/named function/``"none"``
``disable_parallel_tool_use: true`` ``parallel_tool_calls: false``
``metadata.user_id``                ``user``
``thinking`` enabled                ``reasoning_effort`` (below); disabled: ``"none"``
``output_config.effort``            ``reasoning_effort`` low/medium/high
``output_config.format``            ``response_format`` json_schema (name ``output``)
==================================  ==================================================

Decisions:

* ``is_error`` has no place in the engine's ``tool`` messages (nor in OpenAI's
  or Gemini's), and refusing it would break every agent loop whose tool can
  fail: the result's text is prefixed with ``Error: ``, which every model
  reads as the failure it is.
* ``thinking`` blocks replayed in assistant turns are dropped: their
  signatures only Anthropic can check and the engine's messages have no place
  for them. Claude ignores earlier turns' thinking anyway; the Anthropic
  adapter refuses the one case where it would matter (continuing a tool loop
  with thinking on), naming ``reasoning_effort``.
* ``thinking.budget_tokens`` becomes the largest ``reasoning_effort`` whose
  budget in the Anthropic adapter (:data:`~engine.providers.anthropic.THINKING_BUDGETS`)
  is not above it: the nearest effort that never thinks more than was
  allowed, so a request Anthropic would take (budget below ``max_tokens``)
  stays one, and a budget of exactly 1024/2048/4096/16384 goes to Claude
  unchanged. ``display`` is moot: thinking is never returned.
* Accepted and not sent, as they cannot change the answer: ``cache_control``
  (top-level and on blocks and tools: prompt caching is cost, not content),
  ``citations`` on replayed text, ``service_tier``, ``diagnostics``,
  ``user_profile_id``, ``workspace_id``, ``speed: "standard"``, a tool's
  ``eager_input_streaming``, ``strict: false``, ``allowed_callers: ["direct"]``.
* Refused by name: ``top_k`` (no engine form), ``container``, ``mcp_servers``,
  ``context_management``, ``inference_geo`` (a residency promise the gateway
  cannot keep for other providers), ``speed: "fast"``, adaptive and
  between-tools ``thinking``, ``effort`` ``xhigh``/``max`` (and with
  ``thinking``), server tools (``web_search_*``, ``bash_*``, ...), a tool's
  ``strict: true``, ``input_examples`` and ``defer_loading``, ``document``,
  ``search_result``, server-tool and ``container_upload`` blocks, ``file``
  image sources, image ``transformations``, images in tool results.

Responses: ``stop_reason`` is ``end_turn`` (``stop``, and a Stop on purpose:
the turn ended, nothing was refused), ``max_tokens`` (``length``),
``tool_use`` (``tool_calls``) or ``refusal`` (``content_filter``);
``stop_sequence`` is always null, as the engine's ``stop`` does not say which
sequence matched.

Errors use Anthropic's body, ``{"type": "error", "error": {"type", "message"}}``,
mapped from the :class:`~engine.errors.EngineError` tree in one place
(:func:`anthropic_error`): before the headers with the status the ``anthropic``
SDK keys its classes on (:func:`error_answer`), after them as ``event: error``
(:func:`error_frame`), as Anthropic sends it.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from ..errors import (
    EngineError,
    InvalidFields,
    UnsupportedField,
    UpstreamError,
    UpstreamUnavailable,
)
from ..providers.anthropic import THINKING_BUDGETS
from ..sse import encode_json
from ..wire import (
    Chunk,
    FunctionCall,
    ImagePart,
    ImageURL,
    Message,
    Options,
    Part,
    Reply,
    TextPart,
    ToolCall,
    Usage,
)
from . import ErrorAnswer, retry_after_seconds

__all__ = [
    "IMAGE_TOKENS",
    "MESSAGE_TOKENS",
    "TOOLS_TOKENS",
    "AnthropicFraming",
    "CountTokensRequest",
    "ErrorBody",
    "MessagesRequest",
    "TokenCount",
    "anthropic_error",
    "check",
    "error_answer",
    "error_frame",
    "estimate_tokens",
    "message_id",
    "prompt_options",
    "reply_message",
    "stop_reason",
    "to_messages",
    "to_options",
]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

# -- request: content blocks -----------------------------------------------------------


class CacheControl(Struct, kw_only=True, forbid_unknown_fields=True):
    """A prompt-caching breakpoint: accepted, not sent (cost, not content)."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(Struct, kw_only=True, tag_field="type", tag="text", forbid_unknown_fields=True):
    text: str
    cache_control: CacheControl | None = None
    #: On text replayed from an earlier reply: where it came from (not sent).
    citations: list[dict[str, Any]] | None = None


class Base64Source(
    Struct, kw_only=True, tag_field="type", tag="base64", forbid_unknown_fields=True
):
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLSource(Struct, kw_only=True, tag_field="type", tag="url", forbid_unknown_fields=True):
    url: str


class FileSource(Struct, kw_only=True, tag_field="type", tag="file", forbid_unknown_fields=True):
    """An image uploaded to Anthropic's Files API: refused (no gateway has it)."""

    file_id: str


class ImageBlock(Struct, kw_only=True, tag_field="type", tag="image", forbid_unknown_fields=True):
    source: Base64Source | URLSource | FileSource
    cache_control: CacheControl | None = None
    transformations: dict[str, Any] | None = None


class ToolUseBlock(
    Struct, kw_only=True, tag_field="type", tag="tool_use", forbid_unknown_fields=True
):
    id: Annotated[str, Meta(min_length=1)]
    name: Annotated[str, Meta(min_length=1)]
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: dict[str, Any] | None = None
    toolset_name: str | None = None


class ThinkingBlock(
    Struct, kw_only=True, tag_field="type", tag="thinking", forbid_unknown_fields=True
):
    thinking: str
    signature: str


class RedactedThinkingBlock(
    Struct, kw_only=True, tag_field="type", tag="redacted_thinking", forbid_unknown_fields=True
):
    data: str


class _RefusedBlock(Struct, kw_only=True, tag_field="type"):
    """A block the gateway has no form for: decoded only to be refused by its type."""


class DocumentBlock(_RefusedBlock, tag="document"):
    pass


class SearchResultBlock(_RefusedBlock, tag="search_result"):
    pass


class ToolReferenceBlock(_RefusedBlock, tag="tool_reference"):
    pass


class BrowserStateBlock(_RefusedBlock, tag="browser_state"):
    pass


class ServerToolUseBlock(_RefusedBlock, tag="server_tool_use"):
    pass


class WebSearchToolResultBlock(_RefusedBlock, tag="web_search_tool_result"):
    pass


class WebFetchToolResultBlock(_RefusedBlock, tag="web_fetch_tool_result"):
    pass


class CodeExecutionToolResultBlock(_RefusedBlock, tag="code_execution_tool_result"):
    pass


class BashCodeExecutionToolResultBlock(_RefusedBlock, tag="bash_code_execution_tool_result"):
    pass


class TextEditorCodeExecutionToolResultBlock(
    _RefusedBlock, tag="text_editor_code_execution_tool_result"
):
    pass


class ToolSearchToolResultBlock(_RefusedBlock, tag="tool_search_tool_result"):
    pass


class ContainerUploadBlock(_RefusedBlock, tag="container_upload"):
    pass


class MCPToolUseBlock(_RefusedBlock, tag="mcp_tool_use"):
    pass


class MCPToolResultBlock(_RefusedBlock, tag="mcp_tool_result"):
    pass


# Why each refused block cannot be carried.
_REFUSED_BLOCKS = {
    "document": "documents (PDF, text sources) have no form in the engine's messages",
    "search_result": "search results have no form in the engine's messages",
    "tool_reference": "tool references need Anthropic's tool search",
    "browser_state": "browser state needs Anthropic's browser tool",
    "container_upload": "container uploads need Anthropic's code execution container",
}
_SERVER_BLOCK = "server tools run on Anthropic's side; this gateway offers none"

ToolResultContent = (
    TextBlock
    | ImageBlock
    | SearchResultBlock
    | DocumentBlock
    | ToolReferenceBlock
    | BrowserStateBlock
)


class ToolResultBlock(
    Struct, kw_only=True, tag_field="type", tag="tool_result", forbid_unknown_fields=True
):
    tool_use_id: Annotated[str, Meta(min_length=1)]
    content: str | list[ToolResultContent] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None
    toolset_name: str | None = None


Block = (
    TextBlock
    | ImageBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | DocumentBlock
    | SearchResultBlock
    | ServerToolUseBlock
    | WebSearchToolResultBlock
    | WebFetchToolResultBlock
    | CodeExecutionToolResultBlock
    | BashCodeExecutionToolResultBlock
    | TextEditorCodeExecutionToolResultBlock
    | ToolSearchToolResultBlock
    | ContainerUploadBlock
    | MCPToolUseBlock
    | MCPToolResultBlock
)


class InputMessage(Struct, kw_only=True, forbid_unknown_fields=True):
    """One message: a user or assistant turn (or, lately, a system message in place)."""

    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


# -- request: tools, choices, thinking, output ---------------------------------------------


class Tool(Struct, kw_only=True, forbid_unknown_fields=True):
    """A client tool (``type`` absent or ``custom``); server tools are refused by type."""

    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,128}$")]
    input_schema: dict[str, Any]
    description: str | None = None
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None
    strict: bool | None = None
    input_examples: list[dict[str, Any]] | None = None
    defer_loading: bool | None = None
    allowed_callers: list[str] | None = None
    eager_input_streaming: bool | None = None


class ToolChoiceAuto(
    Struct, kw_only=True, tag_field="type", tag="auto", forbid_unknown_fields=True
):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(Struct, kw_only=True, tag_field="type", tag="any", forbid_unknown_fields=True):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(
    Struct, kw_only=True, tag_field="type", tag="tool", forbid_unknown_fields=True
):
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(
    Struct, kw_only=True, tag_field="type", tag="none", forbid_unknown_fields=True
):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class ThinkingEnabled(
    Struct, kw_only=True, tag_field="type", tag="enabled", forbid_unknown_fields=True
):
    #: Anthropic's minimum is 1,024.
    budget_tokens: Annotated[int, Meta(ge=1024)]
    display: Literal["summarized", "omitted"] | None = None


class ThinkingDisabled(
    Struct, kw_only=True, tag_field="type", tag="disabled", forbid_unknown_fields=True
):
    pass


class ThinkingAdaptive(
    Struct, kw_only=True, tag_field="type", tag="adaptive", forbid_unknown_fields=True
):
    display: Literal["summarized", "omitted"] | None = None


class ThinkingBetweenTools(
    Struct, kw_only=True, tag_field="type", tag="between_tools", forbid_unknown_fields=True
):
    pass


Thinking = ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive | ThinkingBetweenTools


class JSONOutputFormat(
    Struct, kw_only=True, tag_field="type", tag="json_schema", forbid_unknown_fields=True
):
    schema: dict[str, Any]


class OutputConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JSONOutputFormat | None = None


class Metadata(Struct, kw_only=True, forbid_unknown_fields=True):
    user_id: Annotated[str, Meta(max_length=256)] | None = None


class _Prompt(Struct, kw_only=True, forbid_unknown_fields=True):
    """What ``/v1/messages`` and ``/v1/messages/count_tokens`` share."""

    model: str
    messages: Annotated[list[InputMessage], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    #: Decoded per tool (:func:`_tools`): a server tool has fields of its own.
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    # Bookkeeping that cannot change the answer: accepted, not sent.
    cache_control: CacheControl | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None
    speed: Literal["standard", "fast"] | None = None
    # Refused by name (check()): Anthropic-side features the gateway cannot carry.
    mcp_servers: list[Any] | None = None
    context_management: Any | None = None


class MessagesRequest(_Prompt, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/messages``: every field of Anthropic's reference.

    Carried, accepted as bookkeeping, or refused by name (see the module
    docstring); a field Anthropic does not define is refused by msgspec.
    """

    max_tokens: int
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: int | None = None
    metadata: Metadata | None = None
    # Bookkeeping that cannot change the answer: accepted, not sent.
    service_tier: Literal["auto", "standard_only"] | None = None
    diagnostics: dict[str, Any] | None = None
    # Refused by name (check()).
    container: str | dict[str, Any] | None = None
    inference_geo: str | None = None
    compaction: Any | None = None
    fallbacks: Any | None = None
    thread: Any | None = None
    billing_policy: Any | None = None
    fallback_credit_token: Any | None = None


class CountTokensRequest(_Prompt, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/messages/count_tokens``."""


# -- responses ---------------------------------------------------------------------------


class TextContent(Struct, kw_only=True, tag_field="type", tag="text"):
    text: str


class ToolUseContent(Struct, kw_only=True, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class MessageUsage(Struct, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0


class MessageObject(Struct, kw_only=True, tag_field="type", tag="message"):
    """A whole reply (``stream: false``), and ``message_start``'s message."""

    id: str
    role: str = "assistant"
    model: str
    content: list[TextContent | ToolUseContent]
    stop_reason: str | None
    stop_sequence: str | None = None
    usage: MessageUsage


class TokenCount(Struct, kw_only=True):
    input_tokens: int


class ErrorDetail(Struct, kw_only=True):
    type: str
    message: str


class ErrorBody(Struct, kw_only=True, tag_field="type", tag="error"):
    """Anthropic's error body, before and after the headers went out."""

    error: ErrorDetail


# -- errors: the one mapping for these routes ----------------------------------------------

# https://docs.anthropic.com/en/api/errors: the types by status. Any other 4xx
# is an invalid_request_error ("we may also use this error type for other 4XX").
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Anthropic answers 400 to any invalid field, never 422: its SDK expects BadRequestError.
# An upstream that is overloaded is Anthropic's 529 (the SDK's OverloadedError).
_STATUS = {422: 400}


def anthropic_error(exc: EngineError) -> tuple[int, ErrorBody]:
    """The HTTP status and Anthropic error body for ``exc``.

    The status is the error's own, so the ``anthropic`` SDK raises the matching
    class: 400 ``BadRequestError`` (422 becomes 400), 404 ``NotFoundError``,
    413 ``ContentTooLargeError``, 429 ``RateLimitError``, 504
    ``GatewayTimeoutError``, other 5xx ``InternalServerError``; an upstream
    that is overloaded or unavailable is 529 ``OverloadedError``, the gateway's
    own 503s (no key configured, store down, shutting down) stay 503
    ``ServiceUnavailableError``. An upstream 401/403 is the gateway's key being
    wrong, not the caller's: it stays a 502 ``api_error``.
    """
    status = 529 if isinstance(exc, UpstreamUnavailable) else _STATUS.get(exc.status, exc.status)
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return status, ErrorBody(error=ErrorDetail(type=kind, message=exc.message))


def error_answer(exc: EngineError) -> ErrorAnswer:
    """The error response before the headers: Anthropic's status, body and retry headers."""
    status, body = anthropic_error(exc)
    headers = None
    if exc.retry_after is not None:
        # The SDK also reads retry-after-ms, which keeps the precision.
        headers = {
            "Retry-After": retry_after_seconds(exc.retry_after),
            "retry-after-ms": str(max(1, math.ceil(exc.retry_after * 1000))),
        }
    return ErrorAnswer(status, _encoder.encode(body), headers)


def error_frame(exc: EngineError) -> bytes:
    """The error after the headers: ``event: error``, which the SDK raises on."""
    return encode_json(anthropic_error(exc)[1], event="error")


# -- request -> engine -----------------------------------------------------------------


def _refuse(where: str, why: str) -> UnsupportedField:
    return UnsupportedField(f"{why} - at `$.{where}`", field=where)


def _refused_block(block: Any, where: str) -> UnsupportedField:
    kind = block.__struct_config__.tag
    why = _REFUSED_BLOCKS.get(kind, _SERVER_BLOCK)
    return _refuse(where, f"`{kind}` blocks are not supported by this gateway: {why}")


def _text(texts: list[TextPart]) -> str | list[Part]:
    """One text block as a string (what every provider takes), several as parts."""
    if len(texts) == 1:
        return texts[0].text
    parts: list[Part] = [*texts]
    return parts


def _image(block: ImageBlock, where: str) -> ImagePart:
    if block.transformations:
        raise _refuse(f"{where}.transformations", "image `transformations` are not supported")
    source = block.source
    if isinstance(source, FileSource):
        raise _refuse(
            f"{where}.source",
            "`file` image sources name an upload to Anthropic's Files API, which this "
            "gateway does not hold: send the image as `base64` or `url`",
        )
    if isinstance(source, URLSource):
        url = source.url
    else:
        url = f"data:{source.media_type};base64,{source.data}"
    try:
        return ImagePart(image_url=ImageURL(url=url))
    except ValueError as exc:
        raise InvalidFields(f"{exc} - at `$.{where}.source`") from None


def _tool_call(block: ToolUseBlock, where: str) -> ToolCall:
    if block.caller is not None and block.caller.get("type") != "direct":
        raise _refuse(f"{where}.caller", "calls made by Anthropic's server tools are not supported")
    if block.toolset_name is not None:
        raise _refuse(f"{where}.toolset_name", "toolsets are not supported by this gateway")
    arguments = _encoder.encode(block.input).decode()
    return ToolCall(
        id=block.id, type="function", function=FunctionCall(name=block.name, arguments=arguments)
    )


def _tool_result(block: ToolResultBlock, where: str) -> Message:
    if block.toolset_name is not None:
        raise _refuse(f"{where}.toolset_name", "toolsets are not supported by this gateway")
    content = block.content
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        texts = []
        for index, part in enumerate(content):
            if isinstance(part, ImageBlock):
                raise _refuse(
                    f"{where}.content[{index}]",
                    "images in tool results are not supported: the engine's tool "
                    "messages carry text",
                )
            if not isinstance(part, TextBlock):
                raise _refused_block(part, f"{where}.content[{index}]")
            texts.append(part.text)
        text = "\n".join(texts)
    if block.is_error:
        text = f"Error: {text}"  # see the module docstring
    return Message(role="tool", content=text, tool_call_id=block.tool_use_id)


def _turn(message: InputMessage, where: str) -> list[Message]:
    """The engine's messages for one Anthropic message (a user turn's tool results first)."""
    role = message.role
    if isinstance(message.content, str):
        return [_make(role, message.content, None, where)]
    results: list[Message] = []
    texts: list[TextPart] = []
    parts: list[Part] = []
    calls: list[ToolCall] = []
    for index, block in enumerate(message.content):
        at = f"{where[2:]}.content[{index}]"
        if isinstance(block, TextBlock):
            text = TextPart(text=block.text)
            texts.append(text)
            parts.append(text)
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock) and role == "assistant":
            continue  # see the module docstring
        elif isinstance(block, ImageBlock) and role == "user":
            parts.append(_image(block, at))
        elif isinstance(block, ToolUseBlock) and role == "assistant":
            calls.append(_tool_call(block, at))
        elif isinstance(block, ToolResultBlock) and role == "user":
            results.append(_tool_result(block, at))
        elif isinstance(block, _RefusedBlock):
            raise _refused_block(block, at)
        else:
            kind = block.__struct_config__.tag
            raise InvalidFields(f"`{kind}` blocks do not belong in {role} messages - at `$.{at}`")
    if role == "assistant":
        content: str | list[Part] | None = _text(texts) if texts else None
        if content is None and not calls:
            content = ""  # an empty turn (thinking only, or nothing)
        return [_make(role, content, calls or None, where)]
    if len(parts) > len(texts):
        results.append(_make(role, parts, None, where))  # with images
    elif texts:
        results.append(_make(role, _text(texts), None, where))
    elif not results:
        raise InvalidFields(
            f"a {role} message needs at least one content block - at `{where}.content`"
        )
    return results


def _make(
    role: Literal["user", "assistant", "system"],
    content: str | list[Part] | None,
    calls: list[ToolCall] | None,
    where: str,
) -> Message:
    try:
        return Message(role=role, content=content, tool_calls=calls)
    except ValueError as exc:
        raise InvalidFields(f"{exc} - at `{where}`") from None


def to_messages(body: _Prompt) -> list[Message]:
    """The engine's messages: ``system`` first, then each turn's.

    Raises InvalidFields/UnsupportedField naming the path. (That each tool
    result answers an earlier ``tool_use`` is checked once memory's history is
    in front of them: ``engine.wire.check_tool_results``.)
    """
    messages: list[Message] = []
    system = body.system
    if isinstance(system, str):
        if system:
            messages.append(Message(role="system", content=system))
    elif system:
        texts = [TextPart(text=block.text) for block in system]
        messages.append(Message(role="system", content=_text(texts)))
    for index, message in enumerate(body.messages):
        messages += _turn(message, f"$.messages[{index}]")
    return messages


# -- request -> options ----------------------------------------------------------------


def _at(message: str, where: str) -> str:
    """A msgspec message about a value converted alone, with the path in the request."""
    if "- at `$" in message:
        return message.replace("- at `$", f"- at `$.{where}")
    return f"{message} - at `$.{where}`"


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Client tools as OpenAI function tools; server tools and unsent features refused."""
    out: list[dict[str, Any]] = []
    for index, raw in enumerate(tools or ()):
        where = f"tools[{index}]"
        kind = raw.get("type")
        if kind is not None and kind != "custom":
            raise _refuse(
                f"{where}.type",
                f"server tools ({str(kind)[:64]!r}) run on Anthropic's side and this gateway "
                "offers none: send client tools (`name`, `description`, `input_schema`)",
            )
        try:
            tool = msgspec.convert(raw, Tool)
        except msgspec.ValidationError as exc:
            raise InvalidFields(_at(str(exc), where)) from None
        if tool.strict:
            raise _refuse(
                f"{where}.strict",
                "strict tool inputs are not supported by every provider this gateway routes to",
            )
        if tool.input_examples:
            raise _refuse(f"{where}.input_examples", "tool `input_examples` are not supported")
        if tool.defer_loading:
            raise _refuse(f"{where}.defer_loading", "deferred tools need Anthropic's tool search")
        if tool.allowed_callers is not None and tool.allowed_callers != ["direct"]:
            raise _refuse(
                f"{where}.allowed_callers", "only the model itself may call tools here (`direct`)"
            )
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.input_schema
        out.append({"type": "function", "function": function})
    return out or None


def _tool_choice(choice: ToolChoice | None) -> tuple[str | dict[str, Any] | None, bool | None]:
    """``(tool_choice, parallel_tool_calls)`` in the engine's (OpenAI's) form."""
    if choice is None:
        return None, None
    if isinstance(choice, ToolChoiceNone):
        return "none", None
    parallel = False if choice.disable_parallel_tool_use else None
    if isinstance(choice, ToolChoiceAuto):
        return "auto", parallel
    if isinstance(choice, ToolChoiceAny):
        return "required", parallel
    return {"type": "function", "function": {"name": choice.name}}, parallel


def _effort(thinking: Thinking | None, config: OutputConfig | None) -> str | None:
    """``reasoning_effort`` for ``thinking`` and ``output_config.effort`` (module docstring)."""
    effort: str | None = None
    if isinstance(thinking, ThinkingEnabled):
        budget = thinking.budget_tokens
        effort = max(
            (name for name, tokens in THINKING_BUDGETS.items() if tokens <= budget),
            key=THINKING_BUDGETS.__getitem__,
        )
    elif isinstance(thinking, ThinkingDisabled):
        effort = "none"
    elif thinking is not None:
        kind = thinking.__struct_config__.tag
        raise _refuse(
            "thinking.type",
            f"`{kind}` thinking has no equivalent among the providers this gateway routes "
            'to: send {"type": "enabled", "budget_tokens": N} or {"type": "disabled"}',
        )
    asked = config.effort if config is not None else None
    if asked is None:
        return effort
    if effort is not None:
        raise _refuse(
            "output_config.effort",
            "`output_config.effort` and `thinking` both become the engine's "
            "`reasoning_effort`: send one of them",
        )
    if asked in ("xhigh", "max"):
        raise _refuse(
            "output_config.effort",
            f"effort {asked!r} has no equivalent here: the highest is 'high'",
        )
    return asked


# Where an Options field came from in the request, for its error messages.
_SOURCES = {
    "stop": "stop_sequences",
    "user": "metadata.user_id",
    "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
    "response_format": "output_config.format",
    "reasoning_effort": "thinking",
}
_CHECKED_FIELD = re.compile(r"`(\w+)")


def _options(raw: dict[str, Any]) -> Options:
    try:
        return msgspec.convert({k: v for k, v in raw.items() if v is not None}, Options)
    except msgspec.ValidationError as exc:
        message = str(exc)
        for name, source in _SOURCES.items():
            message = message.replace(f"`$.{name}`", f"`$.{source}`")
            message = message.replace(f"`$.{name}[", f"`$.{source}[")
        named = _CHECKED_FIELD.match(message)
        if named and "- at `$." not in message:
            # Options' own checks name their field first but give no path.
            message += f" - at `$.{_SOURCES.get(named.group(1), named.group(1))}`"
        raise InvalidFields(f"Invalid value: {message}") from exc


def _prompt_fields(body: _Prompt) -> dict[str, Any]:
    tools = _tools(body.tools)
    tool_choice, parallel = _tool_choice(body.tool_choice)
    if not tools and tool_choice in ("none", "auto"):
        tool_choice = None  # harmless without tools
    config = body.output_config
    response_format = None
    if config is not None and config.format is not None:
        response_format = {
            "type": "json_schema",
            # OpenAI's form needs a name; Anthropic's has none (and none is sent to it).
            "json_schema": {"name": "output", "schema": config.format.schema},
        }
    return {
        "tools": tools,
        "tool_choice": tool_choice,
        # Without tools there are no calls to make in parallel.
        "parallel_tool_calls": parallel if tools else None,
        "reasoning_effort": _effort(body.thinking, config),
        "response_format": response_format,
    }


def prompt_options(body: _Prompt) -> Options:
    """The options a prompt alone sets (tools, thinking, output format), validated."""
    return _options(_prompt_fields(body))


def to_options(body: MessagesRequest) -> Options:
    """Generation options, validated like the other endpoints' (bad values are 400)."""
    if body.max_tokens == 0:
        raise _refuse(
            "max_tokens",
            "`max_tokens: 0` (a prompt-cache pre-warm) is not supported by this gateway",
        )
    raw = _prompt_fields(body)
    raw.update(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences or None,
        user=body.metadata.user_id if body.metadata is not None else None,
    )
    return _options(raw)


# Fields refused by name, and why.
_REFUSED = {
    "top_k": "`top_k` sampling has no equivalent in the engine's options (OpenAI has none)",
    "container": "code execution containers are Anthropic's own",
    "mcp_servers": "MCP servers are not supported by this gateway",
    "context_management": "context management is Anthropic's own",
    "inference_geo": "the gateway cannot promise where every provider it routes to runs",
    "compaction": "compaction is Anthropic's own",
    "fallbacks": "fallbacks are not supported by this gateway",
    "thread": "threads are not supported by this gateway",
    "billing_policy": "billing policies are Anthropic's own",
    "fallback_credit_token": "fallback credit tokens are Anthropic's own",
}


def check(body: _Prompt) -> None:
    """Refuse what the gateway cannot honour instead of ignoring it."""
    for name, why in _REFUSED.items():
        if getattr(body, name, None) is not None:
            raise _refuse(name, why)
    if body.speed == "fast":
        raise _refuse("speed", "fast mode is Anthropic's own")


# -- counting ------------------------------------------------------------------------------

#: Tokens counted per image: Anthropic's largest unresized image (about 1.15
#: megapixels at 750 pixels a token, https://docs.anthropic.com/en/docs/build-with-claude/vision).
IMAGE_TOKENS = 1600
#: Tokens counted per message, for its role and turn markers (a guess, as OpenAI's 3-4).
MESSAGE_TOKENS = 4
#: Tokens counted once when tools are given: the size of the system prompt
#: Anthropic adds for tool use (346 for ``auto``, published with its pricing).
TOOLS_TOKENS = 346


def estimate_tokens(messages: list[Message], options: Options) -> int:
    """An estimate of the input tokens of ``messages`` with ``options``' tools.

    Not a count: a character is about a quarter token in English under every
    tokenizer the providers publish, so this is the characters of all text
    (messages, tool calls' names and arguments, tools' names, descriptions and
    schemas) divided by 4, plus :data:`IMAGE_TOKENS` per image,
    :data:`MESSAGE_TOKENS` per message and :data:`TOOLS_TOKENS` when there are
    tools.
    """
    chars = images = 0
    for message in messages:
        for part in message.parts:
            if isinstance(part, TextPart):
                chars += len(part.text)
            else:
                images += 1
        for call in message.tool_calls or ():
            chars += len(call.function.name) + len(call.function.arguments)
    for tool in options.tools or ():
        chars += len(_encoder.encode(tool["function"]))
    tokens = math.ceil(chars / 4) + IMAGE_TOKENS * images + MESSAGE_TOKENS * len(messages)
    if options.tools:
        tokens += TOOLS_TOKENS
    return max(1, tokens)


# -- engine -> response --------------------------------------------------------------------

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    # A Stop on purpose: the turn ended where the client asked, nothing was refused.
    "stopped": "end_turn",
}


def stop_reason(finish_reason: str | None) -> str:
    """Anthropic's ``stop_reason`` for the engine's ``finish_reason``."""
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def message_id() -> str:
    """A new message id, ``msg_`` and 32 hex digits (also the stream's id for Stop)."""
    return f"msg_{uuid.uuid4().hex}"


def _input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as ``tool_use.input``: a JSON object."""
    if not arguments.strip():
        return {}  # a call without arguments
    try:
        value = _decoder.decode(arguments)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError(
            f"the model's tool call arguments are not a JSON object: {arguments[:100]!r}"
        )
    return value


def reply_message(mid: str, model: str, reply: Reply) -> MessageObject:
    """The whole reply as Anthropic's message object."""
    content: list[TextContent | ToolUseContent] = []
    if reply.content:
        content.append(TextContent(text=reply.content))
    for call in reply.tool_calls or ():
        function = call.get("function") or {}
        content.append(
            ToolUseContent(
                id=call.get("id") or f"toolu_{uuid.uuid4().hex}",
                name=function.get("name") or "",
                input=_input(function.get("arguments") or ""),
            )
        )
    usage = reply.usage or Usage()
    return MessageObject(
        id=mid,
        model=model,
        content=content,
        stop_reason=stop_reason(reply.finish_reason),
        usage=MessageUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens),
    )


# -- engine -> stream ----------------------------------------------------------------------


class MessageStart(Struct, kw_only=True, tag_field="type", tag="message_start"):
    message: MessageObject


class Ping(Struct, kw_only=True, tag_field="type", tag="ping"):
    pass


class ContentBlockStart(Struct, kw_only=True, tag_field="type", tag="content_block_start"):
    index: int
    content_block: TextContent | ToolUseContent


class TextDelta(Struct, kw_only=True, tag_field="type", tag="text_delta"):
    text: str


class InputJSONDelta(Struct, kw_only=True, tag_field="type", tag="input_json_delta"):
    partial_json: str


class ContentBlockDelta(Struct, kw_only=True, tag_field="type", tag="content_block_delta"):
    index: int
    delta: TextDelta | InputJSONDelta


class ContentBlockStop(Struct, kw_only=True, tag_field="type", tag="content_block_stop"):
    index: int


class StopDelta(Struct, kw_only=True):
    stop_reason: str
    stop_sequence: str | None = None


class DeltaUsage(Struct, kw_only=True):
    #: Known only at the end (message_start says 0): the SDK takes the last value.
    input_tokens: int
    output_tokens: int


class MessageDelta(Struct, kw_only=True, tag_field="type", tag="message_delta"):
    delta: StopDelta
    usage: DeltaUsage


class MessageStop(Struct, kw_only=True, tag_field="type", tag="message_stop"):
    pass


_PING = encode_json(Ping(), event="ping")
_MESSAGE_STOP = encode_json(MessageStop(), event="message_stop")


class AnthropicFraming:
    """One message stream's events, in Anthropic's order (engine.streams.relay.Framing).

    ``message_start`` (empty content, usage 0: the input count comes with the
    end) and ``ping``; then content blocks indexed from 0 in order, each
    ``content_block_start``, its deltas (``text_delta``, or ``input_json_delta``
    for a ``tool_use`` block, which starts with its id, name and ``input: {}``)
    and ``content_block_stop`` before the next one starts; then
    ``message_delta`` (stop reason, usage) and ``message_stop``.

    A new tool call (a tool-call delta of an index not seen yet) closes the
    open block and starts a ``tool_use`` block; text after a tool call starts
    a new text block. A slotted object, not closures: an open stream keeps
    only this, never the request's messages.
    """

    __slots__ = ("blocks", "id", "index", "model", "open")

    def __init__(self, mid: str, model: str) -> None:
        self.id = mid
        self.model = model
        #: The index of the last block started (-1: none yet).
        self.index = -1
        #: Whether a block is open (started and not stopped).
        self.open = False
        #: The block index of each tool call, by the call's index in the engine's deltas.
        self.blocks: dict[int, int] = {}
        # (text is open when self.open and the last block is not a tool call's)

    def start(self) -> bytes:
        message = MessageObject(
            id=self.id, model=self.model, content=[], stop_reason=None, usage=MessageUsage()
        )
        return encode_json(MessageStart(message=message), event="message_start") + _PING

    def _close(self) -> bytes:
        if not self.open:
            return b""
        self.open = False
        return encode_json(ContentBlockStop(index=self.index), event="content_block_stop")

    def _begin(self, block: TextContent | ToolUseContent) -> bytes:
        frames = self._close()
        self.index += 1
        self.open = True
        start = ContentBlockStart(index=self.index, content_block=block)
        return frames + encode_json(start, event="content_block_start")

    def _text_open(self) -> bool:
        return self.open and self.index not in self.blocks.values()

    def chunk(self, chunk: Chunk, n: int) -> bytes | None:
        frames = b""
        if chunk.content:
            if not self._text_open():
                frames += self._begin(TextContent(text=""))
            delta = ContentBlockDelta(index=self.index, delta=TextDelta(text=chunk.content))
            frames += encode_json(delta, event="content_block_delta")
        for call in chunk.tool_calls or ():
            function = call.get("function") or {}
            number = call.get("index")
            if not isinstance(number, int):
                # No index: a new call when it names one, else more of the last one.
                number = len(self.blocks) if call.get("id") else max(self.blocks, default=0)
            block = self.blocks.get(number)
            if block is None:
                tool = ToolUseContent(
                    id=call.get("id") or f"toolu_{uuid.uuid4().hex}",
                    name=function.get("name") or "",
                    input={},
                )
                frames += self._begin(tool)
                block = self.blocks[number] = self.index
            arguments = function.get("arguments")
            if arguments:
                delta = ContentBlockDelta(index=block, delta=InputJSONDelta(partial_json=arguments))
                frames += encode_json(delta, event="content_block_delta")
        return frames or None

    def error(self, exc: EngineError, n: int) -> bytes:
        return error_frame(exc)

    def finish(self, finish_reason: str | None, usage: Usage | None, n: int) -> bytes:
        counted = usage or Usage()
        delta = MessageDelta(
            delta=StopDelta(stop_reason=stop_reason(finish_reason)),
            usage=DeltaUsage(
                input_tokens=counted.prompt_tokens, output_tokens=counted.completion_tokens
            ),
        )
        return self._close() + encode_json(delta, event="message_delta") + _MESSAGE_STOP
