"""A Messages request's generation options, and the fields refused by name.

==================================  ==================================================
Anthropic                           engine
==================================  ==================================================
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

``thinking.budget_tokens`` becomes the largest ``reasoning_effort`` whose
budget in the Anthropic adapter (:data:`~engine.providers.anthropic.THINKING_BUDGETS`)
is not above it: the nearest effort that never thinks more than was allowed,
so a request Anthropic would take (budget below ``max_tokens``) stays one, and
a budget of exactly 1024/2048/4096/16384 goes to Claude unchanged. ``display``
is moot: thinking is never returned.

Refused by name (:func:`check` and the translation): ``top_k`` (no engine
form), ``container``, ``mcp_servers``, ``context_management``,
``inference_geo`` (a residency promise the gateway cannot keep for other
providers), ``speed: "fast"``, adaptive and between-tools ``thinking``,
``effort`` ``xhigh``/``max`` (and with ``thinking``), server tools
(``web_search_*``, ``bash_*``, ...), a tool's ``strict: true``,
``input_examples`` and ``defer_loading``.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from ...errors import InvalidFields
from ...providers.anthropic import THINKING_BUDGETS
from ...wire import Options
from .errors import refuse
from .request import (
    MessagesRequest,
    OutputConfig,
    Prompt,
    Thinking,
    ThinkingDisabled,
    ThinkingEnabled,
    Tool,
    ToolChoice,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
)

__all__ = ["check", "prompt_options", "to_options"]


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
            raise refuse(
                f"{where}.type",
                f"server tools ({str(kind)[:64]!r}) run on Anthropic's side and this gateway "
                "offers none: send client tools (`name`, `description`, `input_schema`)",
            )
        try:
            tool = msgspec.convert(raw, Tool)
        except msgspec.ValidationError as exc:
            raise InvalidFields(_at(str(exc), where)) from None
        if tool.strict:
            raise refuse(
                f"{where}.strict",
                "strict tool inputs are not supported by every provider this gateway routes to",
            )
        if tool.input_examples:
            raise refuse(f"{where}.input_examples", "tool `input_examples` are not supported")
        if tool.defer_loading:
            raise refuse(f"{where}.defer_loading", "deferred tools need Anthropic's tool search")
        if tool.allowed_callers is not None and tool.allowed_callers != ["direct"]:
            raise refuse(
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
        raise refuse(
            "thinking.type",
            f"`{kind}` thinking has no equivalent among the providers this gateway routes "
            'to: send {"type": "enabled", "budget_tokens": N} or {"type": "disabled"}',
        )
    asked = config.effort if config is not None else None
    if asked is None:
        return effort
    if effort is not None:
        raise refuse(
            "output_config.effort",
            "`output_config.effort` and `thinking` both become the engine's "
            "`reasoning_effort`: send one of them",
        )
    if asked in ("xhigh", "max"):
        raise refuse(
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


def _prompt_fields(body: Prompt) -> dict[str, Any]:
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


def prompt_options(body: Prompt) -> Options:
    """The options a prompt alone sets (tools, thinking, output format), validated."""
    return _options(_prompt_fields(body))


def to_options(body: MessagesRequest) -> Options:
    """Generation options, validated like the other endpoints' (bad values are 400)."""
    if body.max_tokens == 0:
        raise refuse(
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


def check(body: Prompt) -> None:
    """Refuse what the gateway cannot honour instead of ignoring it."""
    for name, why in _REFUSED.items():
        if getattr(body, name, None) is not None:
            raise refuse(name, why)
    if body.speed == "fast":
        raise refuse("speed", "fast mode is Anthropic's own")
