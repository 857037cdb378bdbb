"""The engine's options as the Messages API's fields, refused by name where none fits.

``max_tokens`` (always sent: the API requires it), ``temperature`` (0..1
here; above 1 is refused, not scaled), ``top_p``, ``stop`` -> ``stop_sequences``,
``tools``/``tool_choice`` (``required`` is ``any``), ``parallel_tool_calls:
false`` -> ``tool_choice.disable_parallel_tool_use`` (with ``auto`` when no
choice was given), ``user`` -> ``metadata.user_id``, ``response_format``
json_schema -> structured outputs, ``output_config.format`` (generally available,
no beta header: https://platform.claude.com/docs/en/build-with-claude/structured-outputs;
the schema's name is an identifier and is not sent, its description becomes
the schema's top-level ``description``, and ``strict`` is moot: Anthropic always
constrains decoding to the schema). ``json_object`` is refused: structured
outputs need a schema, and every object in one must set ``additionalProperties:
false``, so "any object" cannot be said. ``seed``, penalties, ``logit_bias`` and
logprobs have no equivalent and are refused by :meth:`Provider.check_options`.

``reasoning_effort`` -> extended thinking, ``{"type": "enabled", "budget_tokens":
N}`` (:data:`THINKING_BUDGETS`); ``none`` is ``{"type": "disabled"}``, said
explicitly because what an absent ``thinking`` means depends on the model.
Thinking tokens count against ``max_tokens``: a request that sets ``max_tokens``
must leave room above the budget (else 400), and one that does not gets the
default plus the budget. With thinking on, Anthropic only takes ``temperature``
1, ``top_p`` from 0.95 and ``tool_choice`` auto or none; anything else is
refused by name.
"""

from __future__ import annotations

from typing import Any

from ...wire import JSONObjectFormat, JSONSchemaFormat, Options
from ._refuse import refuse

__all__ = ["THINKING_BUDGETS", "sampling", "to_output_format", "to_tool", "to_tool_choice"]

#: ``budget_tokens`` per ``reasoning_effort``. 1,024 is Anthropic's minimum
#: (https://platform.claude.com/docs/en/build-with-claude/extended-thinking);
#: each step up gives clearly more room. These are the engine's choice, not a
#: published equivalence: OpenAI does not say how many tokens an effort means.
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 4096, "high": 16384}

# https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use
_TOOL_CHOICE = {"auto": "auto", "required": "any", "none": "none"}
_NO_PARAMETERS = {"type": "object", "properties": {}}


def to_tool(function: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as an Anthropic tool (``input_schema`` is required)."""
    tool: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        tool["description"] = function["description"]
    tool["input_schema"] = function.get("parameters") or _NO_PARAMETERS
    return tool


def to_tool_choice(options: Options) -> dict[str, Any] | None:
    choice: dict[str, Any] | None = None
    name = options.tool_name()
    if name is not None:
        choice = {"type": "tool", "name": name}
    elif options.tool_choice is not None:
        choice = {"type": _TOOL_CHOICE[str(options.tool_choice)]}
    if options.parallel_tool_calls is False and (choice is None or choice["type"] != "none"):
        # Parallel use is Anthropic's default too; only turning it off is said.
        # With tool_choice none there is no call, so nothing to turn off.
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return choice


def to_output_format(options: Options) -> dict[str, Any] | None:
    """``output_config.format`` for ``response_format`` (None for text or none)."""
    fmt = options.response_format
    if isinstance(fmt, JSONObjectFormat):
        raise refuse(
            "response_format",
            "JSON mode without a schema has no equivalent (structured outputs need a schema "
            'whose objects set "additionalProperties": false). Send a `json_schema` format',
        )
    if not isinstance(fmt, JSONSchemaFormat):
        return None
    spec = fmt.json_schema
    schema = spec.schema
    if spec.description is not None:
        # OpenAI shows the description to the model; a JSON Schema says it at its top.
        current = schema.get("description")
        if current is None:
            schema = {**schema, "description": spec.description}
        elif current != spec.description:
            raise refuse(
                "response_format.json_schema.description",
                "Anthropic's structured outputs have no separate description, and the "
                "schema's own `description` differs. Put it in the schema",
            )
    return {"type": "json_schema", "schema": schema}


def sampling(options: Options, default_max_tokens: int) -> dict[str, Any]:
    """``max_tokens``, ``thinking``, ``temperature`` and ``top_p``, checked together."""
    out: dict[str, Any] = {}
    effort = options.reasoning_effort
    budget = THINKING_BUDGETS.get(effort) if effort is not None else None
    max_tokens = options.max_tokens
    if budget is None:
        out["max_tokens"] = max_tokens or default_max_tokens
        if effort == "none":
            out["thinking"] = {"type": "disabled"}
    else:
        if max_tokens is None:
            # The answer keeps its default room; the thinking gets its budget on top.
            max_tokens = default_max_tokens + budget
        elif max_tokens <= budget:
            raise refuse(
                "max_tokens",
                f"with `reasoning_effort` {effort!r} Claude thinks with a budget of "
                f"{budget} tokens, which count against `max_tokens`; it must be above "
                f"{budget}, not {max_tokens}",
            )
        out["max_tokens"] = max_tokens
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    temperature = options.temperature
    if temperature is not None:
        if temperature > 1:
            raise refuse("temperature", f"Anthropic's range is 0 to 1, not {temperature:g}")
        if budget is not None and temperature != 1:
            raise refuse(
                "temperature", "with extended thinking (`reasoning_effort`) it may only be 1"
            )
        out["temperature"] = temperature
    if options.top_p is not None:
        if budget is not None and options.top_p < 0.95:
            raise refuse(
                "top_p",
                "with extended thinking (`reasoning_effort`) it must be between 0.95 and 1",
            )
        out["top_p"] = options.top_p
    return out
