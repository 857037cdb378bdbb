"""Wire types: what crosses the engine's boundaries, as msgspec Structs.

Requests are validated by decoding into these types (a wrong type or value is a
``msgspec.ValidationError``, which the app maps to 422); responses and events
are encoded from them. Output Structs use ``omit_defaults`` only where leaving a
field out is part of the format (``usage`` appears on the last chunk alone).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "MAX_JSON_DEPTH",
    "ChatRequest",
    "Chunk",
    "DoneEvent",
    "ErrorEvent",
    "Message",
    "Options",
    "Reply",
    "Role",
    "SessionRef",
    "StartEvent",
    "Usage",
    "json_depth",
]

Role = Literal["system", "user", "assistant"]

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


class Message(Struct, kw_only=True):
    """One message of a conversation, in the order it was said."""

    role: Role
    content: str


class Usage(Struct, kw_only=True):
    """Token counts for one reply, as the provider reported them (or the mock computed)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


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


#: Largest ``max_history`` a request may ask for (engine.config.MAX_HISTORY_LIMIT).
MAX_HISTORY = 10_000

StopList = Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(max_length=16)]


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

    def __post_init__(self) -> None:
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
