"""Wire types: what crosses the engine's boundaries, as msgspec Structs.

Requests are validated by decoding into these types (a wrong type or value is a
``msgspec.ValidationError``, which the app maps to 422); responses and events
are encoded from them. Output Structs use ``omit_defaults`` only where leaving a
field out is part of the format (``usage`` appears on the last chunk alone).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "MAX_JSON_DEPTH",
    "AudioPart",
    "ChatRequest",
    "ENGINE_OPTIONS",
    "Chunk",
    "DoneEvent",
    "ErrorEvent",
    "EstimatedUsage",
    "FunctionCall",
    "ImagePart",
    "ImageURL",
    "InputAudio",
    "JSONObjectFormat",
    "JSONSchema",
    "JSONSchemaFormat",
    "Message",
    "Options",
    "Part",
    "Reply",
    "ResponseFormat",
    "Role",
    "SessionRef",
    "StartEvent",
    "TextFormat",
    "TextPart",
    "ToolCall",
    "Usage",
    "check_tool_results",
    "estimate_tokens",
    "json_depth",
    "merge_tool_deltas",
]

Role = Literal["system", "user", "assistant", "tool"]

#: Deepest nesting of free-form JSON a request may carry (tool schemas, memory
#: metadata). Real JSON Schemas stay far below it; what a store or provider
#: re-encodes must stay far below the interpreter's recursion limit (~1,000),
#: which msgspec and the stdlib ``json`` hit as a RecursionError.
MAX_JSON_DEPTH = 64


def json_depth(value: object) -> int:
    """How deeply ``value`` nests lists and dicts (a scalar is 0), without recursion."""
    depth = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        level += 1
        if level > depth:
            depth = level
            if depth > MAX_JSON_DEPTH:
                return depth  # deep enough to refuse: stop walking
        stack.extend((child, level) for child in children)
    return depth


#: A parent class or id for conversation memory: printable, 1..200 characters.
ParentKey = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


# -- messages: text, content parts, tool calls and tool results ---------------------
#
# The engine's own form is OpenAI Chat Completions' (the format most clients
# speak), so the OpenAI adapter sends it as is and every other provider maps it
# explicitly onto its own body: a field added here cannot reach an upstream
# payload by accident.

#: What an image part's URL may be: a web address the provider fetches, or the
#: image itself (``data:image/png;base64,...``).
_IMAGE_URL = re.compile(r"(https?://\S+|data:image/[a-z0-9.+-]+;base64,[A-Za-z0-9+/=\s]*)\Z", re.I)
_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)\Z", re.S)


class TextPart(Struct, kw_only=True, tag_field="type", tag="text", forbid_unknown_fields=True):
    """``{"type": "text", "text": ...}``."""

    text: str


class ImageURL(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    url: str
    detail: Literal["auto", "low", "high"] | None = None

    def __post_init__(self) -> None:
        if not _IMAGE_URL.match(self.url):
            raise ValueError(
                "`url` must be an http(s) URL or a data:image/...;base64, URL, "
                f"not {self.url[:40]!r}"
            )

    def data(self) -> tuple[str, str] | None:
        """``(media type, base64 data)`` of a ``data:`` URL, or None for a web address."""
        match = _DATA_URL.match(self.url)
        return (match.group(1), match.group(2)) if match else None


class ImagePart(
    Struct, kw_only=True, tag_field="type", tag="image_url", forbid_unknown_fields=True
):
    """``{"type": "image_url", "image_url": {"url": ..., "detail"?: ...}}``."""

    image_url: ImageURL


class InputAudio(Struct, kw_only=True, forbid_unknown_fields=True):
    data: str  # base64
    format: Literal["wav", "mp3"]


class AudioPart(
    Struct, kw_only=True, tag_field="type", tag="input_audio", forbid_unknown_fields=True
):
    """``{"type": "input_audio", "input_audio": {"data": ..., "format": "wav"|"mp3"}}``."""

    input_audio: InputAudio


Part = TextPart | ImagePart | AudioPart


class FunctionCall(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1)]
    #: The arguments as the model wrote them: a JSON text, not parsed.
    arguments: str


class GoogleExtra(Struct, kw_only=True, forbid_unknown_fields=True):
    #: Gemini 3's signature of the thinking behind a call, which it wants back with it.
    thought_signature: Annotated[str, Meta(max_length=1_000_000)]


class ExtraContent(Struct, kw_only=True, forbid_unknown_fields=True):
    google: GoogleExtra


class ToolCall(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One tool call of an assistant message (OpenAI's shape).

    ``extra_content`` is the form Google's own OpenAI-compatible endpoint uses for
    Gemini's thought signature: the gemini provider sends it out on each call it
    returns, and takes it back on the next turn (others have no use for it).
    """

    id: Annotated[str, Meta(min_length=1)]
    function: FunctionCall
    #: Left out when encoded (``omit_defaults``, for ``extra_content``): a body
    #: that needs it (OpenAI's) puts it back (engine.providers.openai).
    type: Literal["function"] = "function"
    extra_content: ExtraContent | None = None


class Message(Struct, kw_only=True, omit_defaults=True):
    """One message of a conversation, in the order it was said.

    ``content`` is text, or a list of parts (text, images, audio) on user
    messages; an assistant message may carry ``tool_calls`` (its content then
    may be None), and a ``tool`` message answers one of them by
    ``tool_call_id``. Shapes are OpenAI Chat Completions' (see above).
    """

    role: Role
    content: str | list[Part] | None = None
    tool_calls: Annotated[list[ToolCall], Meta(min_length=1)] | None = None
    tool_call_id: Annotated[str, Meta(min_length=1)] | None = None

    def __post_init__(self) -> None:
        # Each message starts with what it is about (msgspec adds the path).
        role, content = self.role, self.content
        if self.tool_calls is not None and role != "assistant":
            raise ValueError(f"`tool_calls` belong to assistant messages, not {role!r} ones")
        if role == "tool":
            if self.tool_call_id is None:
                raise ValueError("a `tool` message needs the `tool_call_id` it answers")
        elif self.tool_call_id is not None:
            raise ValueError(f"`tool_call_id` belongs to tool messages, not {role!r} ones")
        if content is None:
            if role != "assistant" or self.tool_calls is None:
                raise ValueError(f"a {role!r} message needs `content`")
        elif not isinstance(content, str):
            if role == "user":
                return
            if any(not isinstance(part, TextPart) for part in content):
                raise ValueError(f"only user messages may carry images or audio, not {role!r} ones")

    @property
    def text(self) -> str:
        """The message's text: its content, or its text parts joined by newlines."""
        content = self.content
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "\n".join(part.text for part in content if isinstance(part, TextPart))

    @property
    def parts(self) -> list[Part]:
        """The content as parts (a text content is one text part; none is none)."""
        content = self.content
        if content is None:
            return []
        return [TextPart(text=content)] if isinstance(content, str) else content


def merge_tool_deltas(calls: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    """Fold streamed tool-call ``deltas`` (OpenAI's shape) into whole ``calls``, by index.

    A call's first delta names it (id, name, maybe the first arguments); later
    ones carry only more of its ``function.arguments`` text.
    """
    for delta in deltas:
        index = delta.get("index", len(calls))
        while len(calls) <= index:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call = calls[index]
        if delta.get("id"):
            call["id"] = delta["id"]
        function = delta.get("function") or {}
        if function.get("name"):
            call["function"]["name"] = function["name"]
        if function.get("arguments"):
            call["function"]["arguments"] += function["arguments"]


def check_tool_results(messages: Sequence[Message], first: int = 0) -> None:
    """Raise ValueError unless every ``tool`` message answers a tool call made before it.

    A result for an id no assistant message called is a client's bug that every
    provider would answer differently (OpenAI 400s, others guess): refused once,
    here. ``messages[first:]`` are the request's (before them: stored history),
    and the error names the request's index.
    """
    called: set[str] = set()
    for index, message in enumerate(messages):
        if message.tool_calls:
            called.update(call.id for call in message.tool_calls)
        elif message.role == "tool" and message.tool_call_id not in called:
            raise ValueError(
                f"the tool message answers `tool_call_id` {message.tool_call_id!r}, which "
                f"no earlier assistant message called - at `$.messages[{index - first}]`"
            )


class Usage(Struct, kw_only=True):
    """Token counts for one reply, as the provider reported them (or the mock computed)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class EstimatedUsage(Usage, kw_only=True):
    """Usage the gateway estimated because the provider reported none (a stream cut or
    stopped before its end, a server that sends no usage): ``"estimated": true``.

    Prompt tokens are the request's characters / 4, completion tokens the chunks
    relayed (about a token each): an order of magnitude for accounting, not a bill.
    """

    estimated: bool = True


def estimate_tokens(
    messages: Sequence[Message],
    tools: Sequence[dict[str, Any]] | None = None,
    *,
    image_tokens: int = 85,
) -> int:
    """About how many tokens ``messages`` and ``tools`` are: the gateway's one estimate.

    Not a count: a character is about a quarter token in English under every
    tokenizer the providers publish. So each message is its text / 4, plus 4
    for its role and framing, plus ``image_tokens`` per image or audio part
    (85, an OpenAI image at low detail, unless the dialect knows its
    provider's price); each tool call its name and arguments / 4, plus 4; each
    of ``tools`` (OpenAI function tools) its JSON-encoded ``function`` / 4.
    """
    total = 0
    for message in messages:
        total += len(message.text) // 4 + 4  # and a few for the role and framing
        if isinstance(message.content, list):
            total += image_tokens * sum(not isinstance(part, TextPart) for part in message.content)
        for call in message.tool_calls or ():
            total += (len(call.function.name) + len(call.function.arguments)) // 4 + 4
    for tool in tools or ():
        total += len(msgspec.json.encode(tool["function"])) // 4
    return total


class Chunk(Struct, kw_only=True, omit_defaults=True):
    """One piece of a streamed reply: the seed's stream format.

    ``finish_reason`` is ``None`` until the last chunk, which also carries
    ``usage``. ``tool_calls`` holds a provider's tool-call deltas untouched, so
    they are relayed rather than dropped.
    """

    # No defaults on the first four: ``omit_defaults`` must never drop them,
    # since the format shows ``role`` and ``"finish_reason": null`` on every chunk.
    role: str
    content: str
    model: str
    finish_reason: str | None
    usage: Usage | None = None
    tool_calls: list[dict[str, Any]] | None = None
    #: The provider's log probabilities for this chunk's tokens, in OpenAI's
    #: ``choices[].logprobs`` shape (only when ``logprobs`` was asked for).
    logprobs: dict[str, Any] | None = None


class Reply(Struct, kw_only=True, omit_defaults=True):
    """A whole, non-streamed reply (``POST /v1/chat``, ``provider.send()``).

    Only ``tool_calls`` is left out when empty; the other fields always appear.
    """

    role: str
    content: str
    model: str
    finish_reason: str | None
    usage: Usage | None
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: dict[str, Any] | None = None


#: Largest ``max_history`` a request may ask for (engine.config.MAX_HISTORY_LIMIT).
MAX_HISTORY = 10_000

StopList = Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(max_length=16)]


class JSONSchema(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """``response_format.json_schema``: a named JSON Schema the reply must follow."""

    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    #: A JSON Schema; an object (its contents are the upstream's business).
    schema: dict[str, Any] = msgspec.field(default_factory=dict)
    description: str | None = None
    strict: bool | None = None


class TextFormat(Struct, kw_only=True, tag_field="type", tag="text", forbid_unknown_fields=True):
    """``{"type": "text"}``: prose, the default."""


class JSONObjectFormat(
    Struct, kw_only=True, tag_field="type", tag="json_object", forbid_unknown_fields=True
):
    """``{"type": "json_object"}``: any JSON object (JSON mode)."""


class JSONSchemaFormat(
    Struct, kw_only=True, tag_field="type", tag="json_schema", forbid_unknown_fields=True
):
    """``{"type": "json_schema", "json_schema": {...}}``: structured output."""

    json_schema: JSONSchema


ResponseFormat = TextFormat | JSONObjectFormat | JSONSchemaFormat

Penalty = Annotated[float, Meta(ge=-2, le=2)]
LogitBias = Annotated[dict[str, Annotated[int, Meta(ge=-100, le=100)]], Meta(max_length=1024)]

#: Options that only the engine reads (the mock's shape, memory, detach): never
#: a provider's business, so no provider refuses them.
ENGINE_OPTIONS = frozenset({"interval_ms", "token_size", "max_history", "detach"})


class Options(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Per-request generation options. Unknown names are rejected (422), not ignored.

    ``interval_ms`` and ``token_size`` drive the mock provider (a load-testing
    target); ``max_history`` trims what memory sends upstream, never what it stores;
    ``detach`` (seconds, native streams) lets the generation outlive its readers
    (capped by the server's ``max_detach``). None of these reach a provider.

    ``tools`` are function tools in OpenAI Chat Completions' format,
    ``{"type": "function", "function": {"name", "description"?, "parameters"?}}``,
    and ``tool_choice`` is ``"none"``, ``"auto"``, ``"required"`` or
    ``{"type": "function", "function": {"name": ...}}``; each provider maps
    them onto its own format (the mock ignores them). Their shape is checked,
    not their JSON Schemas: that is the upstream's business.
    """

    max_tokens: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    stop: str | StopList | None = None
    interval_ms: Annotated[int, Meta(ge=0, le=60_000)] | None = None
    token_size: Annotated[int, Meta(ge=1, le=65_536)] | None = None
    max_history: Annotated[int, Meta(ge=0, le=MAX_HISTORY)] | None = None
    detach: Annotated[float, Meta(ge=0, le=86_400)] | None = None
    tools: Annotated[list[dict[str, Any]], Meta(max_length=128)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: (
        Annotated[dict[str, Annotated[int, Meta(ge=-100, le=100)]], Meta(max_length=1024)] | None
    ) = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    #: An end-user id for the provider's abuse monitoring; it cannot change the answer.
    user: Annotated[str, Meta(max_length=256)] | None = None

    def set_fields(self) -> list[str]:
        """The names of the options this request set (not None), in declaration order."""
        return [name for name in self.__struct_fields__ if getattr(self, name) is not None]

    def __post_init__(self) -> None:
        if self.response_format is not None and isinstance(self.response_format, JSONSchemaFormat):
            schema = self.response_format.json_schema.schema
            if json_depth(schema) > MAX_JSON_DEPTH:
                raise ValueError(f"`response_format` is nested deeper than {MAX_JSON_DEPTH} levels")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        # Raised as ValueError, which msgspec reports as a ValidationError (422)
        # when decoding; each message starts with the field it is about.
        names: set[str] = set()
        for field, value in (("tools", self.tools), ("tool_choice", self.tool_choice)):
            if value is not None and json_depth(value) > MAX_JSON_DEPTH:
                raise ValueError(f"`{field}` is nested deeper than {MAX_JSON_DEPTH} levels")
        for index, tool in enumerate(self.tools or ()):
            where = f"`tools[{index}]`"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise ValueError(f'{where} must have "type": "function"')
            function = tool.get("function")
            if not isinstance(function, dict):
                raise ValueError(f"{where} must have a `function` object")
            name = function.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where} must have a non-empty string `function.name`")
            if name in names:
                raise ValueError(f"{where} repeats the function name {name!r}")
            names.add(name)
            if not isinstance(function.get("description", ""), str):
                raise ValueError(f"{where} `function.description` must be a string")
            if not isinstance(function.get("parameters", {}), dict):
                raise ValueError(f"{where} `function.parameters` must be an object")
        choice = self.tool_choice
        if choice is None:
            return
        if isinstance(choice, str):
            if choice not in ("none", "auto", "required"):
                raise ValueError(
                    '`tool_choice` must be "none", "auto", "required" or a function, '
                    f"got {choice!r}"
                )
        else:
            function = choice.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if choice.get("type") != "function" or not isinstance(name, str):
                raise ValueError(
                    '`tool_choice` object must be {"type": "function", "function": {"name": ...}}'
                )
            if name not in names:
                raise ValueError(f"`tool_choice` names {name!r}, which is not among `tools`")
        if not names:
            raise ValueError("`tool_choice` needs `tools`")

    def tool_name(self) -> str | None:
        """The function ``tool_choice`` forces, if it names one."""
        choice = self.tool_choice
        return str(choice["function"]["name"]) if isinstance(choice, dict) else None


class SessionRef(Struct, kw_only=True, forbid_unknown_fields=True):
    """Which conversation a request belongs to: ``{"parent": "ChatSession", "id": "42"}``."""

    parent: ParentKey
    id: ParentKey


class ChatRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/chat/stream`` and ``POST /v1/chat``."""

    messages: Annotated[list[Message], Meta(min_length=1)]
    provider: str | None = None
    model: str | None = None
    options: Options = msgspec.field(default_factory=Options)
    session: SessionRef | None = None


class StartEvent(Struct, kw_only=True, tag_field="type", tag="start"):
    """First event of a stream: which stream, provider and model answer."""

    stream_id: str
    provider: str
    model: str


class DoneEvent(Struct, kw_only=True, tag_field="type", tag="done"):
    """Last event of a stream that ended normally."""

    finish_reason: str | None
    usage: Usage | None = None


class ErrorEvent(Struct, kw_only=True):
    """Data of an ``error`` event, and the JSON body of an error response."""

    error: bool = True
    message: str
    code: int
    type: str
