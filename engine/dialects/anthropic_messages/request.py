"""The bodies of ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Every field of Anthropic's reference is declared (tools, ``tool_choice``,
``thinking``, ``output_config``, the content blocks of :mod:`.blocks`) and
either carried, accepted as bookkeeping that cannot change the answer, or
refused by name (:func:`.options.check`); a field Anthropic does not define is
refused by msgspec, naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from .blocks import CacheControl, InputMessage, TextBlock

__all__ = [
    "CountTokensRequest",
    "JSONOutputFormat",
    "MessagesRequest",
    "Metadata",
    "OutputConfig",
    "Prompt",
    "Thinking",
    "ThinkingAdaptive",
    "ThinkingBetweenTools",
    "ThinkingDisabled",
    "ThinkingEnabled",
    "Tool",
    "ToolChoice",
    "ToolChoiceAny",
    "ToolChoiceAuto",
    "ToolChoiceNone",
    "ToolChoiceTool",
]


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


class Prompt(Struct, kw_only=True, forbid_unknown_fields=True):
    """What ``/v1/messages`` and ``/v1/messages/count_tokens`` share."""

    model: str
    messages: Annotated[list[InputMessage], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    #: Decoded per tool (:mod:`.options`): a server tool has fields of its own.
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    # Bookkeeping that cannot change the answer: accepted, not sent.
    cache_control: CacheControl | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None
    speed: Literal["standard", "fast"] | None = None
    # Refused by name (options.check()): Anthropic-side features the gateway cannot carry.
    mcp_servers: list[Any] | None = None
    context_management: Any | None = None


class MessagesRequest(Prompt, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/messages``: every field of Anthropic's reference.

    Carried, accepted as bookkeeping, or refused by name (see the package
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
    # Refused by name (options.check()).
    container: str | dict[str, Any] | None = None
    inference_geo: str | None = None
    compaction: Any | None = None
    fallbacks: Any | None = None
    thread: Any | None = None
    billing_policy: Any | None = None
    fallback_credit_token: Any | None = None


class CountTokensRequest(Prompt, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/messages/count_tokens``."""
