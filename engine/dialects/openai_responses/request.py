"""The body of ``POST /v1/responses``: every field OpenAI's reference lists, carried or refused.

:class:`ResponsesRequest` declares them all (openai-python's
``types/responses/response_create_params.py``); an undeclared field is refused
by msgspec, naming it. :func:`check` refuses by name what has no engine form;
:func:`to_options` maps the rest onto :class:`~engine.wire.Options`, which
each provider carries in its own form or refuses by name. The input items
are :mod:`.items`' business.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from ...errors import InvalidFields, UnsupportedField
from ...wire import Options

__all__ = [
    "ReasoningConfig",
    "ResponsesRequest",
    "TextConfig",
    "check",
    "param_of",
    "refuse",
    "to_options",
]


def refuse(field: str, why: str) -> UnsupportedField:
    """The 400 for a field the gateway cannot carry, naming it (OpenAI's ``param``)."""
    return UnsupportedField(f"{why} - at `$.{field}`", field=field)


# msgspec's messages: "... - at `$.input[0].type`", "unknown field `foo`",
# "missing required field `role`" (the last two with the object's path, if any).
_AT = re.compile(r" - at `\$\.?([^`]*)`")
_NAMED = re.compile(r"(?:unknown|required) field `([^`]+)`")


def param_of(message: str) -> str | None:
    """The request field a validation message is about, as OpenAI's ``param`` names one
    (``input[0].content[1].type``), or None."""
    at = _AT.search(message)
    path = at.group(1) if at else ""
    named = _NAMED.search(message)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


class TextFormatText(
    Struct, kw_only=True, tag_field="type", tag="text", forbid_unknown_fields=True
):
    pass


class TextFormatJSONObject(
    Struct, kw_only=True, tag_field="type", tag="json_object", forbid_unknown_fields=True
):
    pass


class TextFormatJSONSchema(
    Struct, kw_only=True, tag_field="type", tag="json_schema", forbid_unknown_fields=True
):
    """Responses' flat form of Chat Completions' ``response_format.json_schema``."""

    name: str
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


TextFormat = TextFormatText | TextFormatJSONObject | TextFormatJSONSchema


class TextConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    format: TextFormat | None = None
    #: Refused unless null (:func:`check`): no provider but OpenAI has the knob.
    verbosity: str | None = None


class ReasoningConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    effort: str | None = None
    # Refused unless null: the gateway returns no reasoning items to summarise.
    summary: str | None = None
    generate_summary: str | None = None
    context: str | None = None
    mode: str | None = None


class StreamOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    #: Obfuscation padding on OpenAI's own stream: nothing a relay adds.
    include_obfuscation: bool | None = None


#: OpenAI's bounds: 16 pairs, keys of 64 characters, values of 512.
Metadata = Annotated[
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]],
    Meta(max_length=16),
]


class ResponsesRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/responses`` (see the module docstring)."""

    model: Annotated[str, Meta(min_length=1)]
    #: A string, or items (decoded one by one in :mod:`.items`, which names each).
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    #: Decoded per tool in :mod:`.items` (a hosted tool has fields of its own).
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    background: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    safety_identifier: str | None = None
    #: ``reasoning.encrypted_content`` only (there are no reasoning items to include).
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
    # Bookkeeping on OpenAI's platform that cannot change the answer: accepted, echoed.
    metadata: Metadata | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    # Refused by name (check()): features of OpenAI's own platform.
    conversation: Any | None = None
    prompt: Any | None = None
    access_programs: Any | None = None
    background_options: Any | None = None
    context_management: Any | None = None
    image: Any | None = None
    moderation: Any | None = None
    prompt_cache_options: Any | None = None


# Refused whenever set, and why.
_REFUSED = {
    "conversation": "the Conversations API is not supported by this gateway: continue with "
    "`previous_response_id`",
    "prompt": "stored prompt templates are OpenAI's own: send `instructions` and `input`",
    "access_programs": "access programs are OpenAI's own",
    "background_options": "background options are OpenAI's own (`background: true` is supported)",
    "context_management": "context management is OpenAI's own",
    "image": "image output settings are OpenAI's own",
    "moderation": "moderated responses are OpenAI's own",
    "prompt_cache_options": "prompt cache options are OpenAI's own",
    "max_tool_calls": "`max_tool_calls` has no equivalent among the providers this gateway "
    "routes to",
}
#: ``include`` values that cannot change what is returned here.
_INCLUDABLE = frozenset({"reasoning.encrypted_content"})


def check(body: ResponsesRequest) -> None:
    """Refuse what the gateway cannot honour instead of ignoring it."""
    for name, why in _REFUSED.items():
        if getattr(body, name) is not None:
            raise refuse(name, why)
    for index, value in enumerate(body.include or ()):
        if value not in _INCLUDABLE:
            raise refuse(f"include[{index}]", f"`{value}` is not supported by this gateway")
    if body.truncation == "auto":
        raise refuse(
            "truncation",
            '`truncation: "auto"` is not supported: the history sent upstream is bounded '
            "by the gateway's max_history instead",
        )
    if body.top_logprobs:
        raise refuse("top_logprobs", "log probabilities are not returned by this endpoint")
    if body.text is not None and body.text.verbosity is not None:
        raise refuse("text.verbosity", "`verbosity` is not supported by this gateway")
    reasoning = body.reasoning
    if reasoning is not None:
        for name in ("summary", "generate_summary", "context", "mode"):
            if getattr(reasoning, name) is not None:
                raise refuse(
                    f"reasoning.{name}",
                    f"`reasoning.{name}` is not supported: no reasoning items are returned",
                )
        if reasoning.effort in ("xhigh", "max"):
            raise refuse(
                "reasoning.effort",
                f"effort {reasoning.effort!r} has no equivalent here: the highest is 'high'",
            )


# Where an Options field came from in the request, for its error messages.
_SOURCES = {
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
    "user": "safety_identifier",
}
_CHECKED_FIELD = re.compile(r"`(\w+)")


def _response_format(text: TextConfig | None) -> dict[str, Any] | None:
    form = text.format if text is not None else None
    if form is None or isinstance(form, TextFormatText):
        return None  # prose: the default
    if isinstance(form, TextFormatJSONObject):
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": form.name, "schema": form.schema}
    if form.description is not None:
        schema["description"] = form.description
    if form.strict is not None:
        schema["strict"] = form.strict
    return {"type": "json_schema", "json_schema": schema}


def to_options(
    body: ResponsesRequest, tools: list[dict[str, Any]] | None, tool_choice: Any
) -> Options:
    """Generation options (``tools`` and ``tool_choice`` already in Chat Completions'
    form, :func:`.items.to_tools`), validated like the other endpoints' (bad values 400)."""
    raw: dict[str, Any] = {
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tools": tools,
        "tool_choice": tool_choice,
        # Without tools there are no calls to make in parallel (clients send it always).
        "parallel_tool_calls": body.parallel_tool_calls if tools else None,
        "response_format": _response_format(body.text),
        "reasoning_effort": body.reasoning.effort if body.reasoning is not None else None,
        # `safety_identifier` is what OpenAI renamed `user` to: the same end-user id.
        "user": body.safety_identifier if body.safety_identifier is not None else body.user,
    }
    try:
        return msgspec.convert({k: v for k, v in raw.items() if v is not None}, Options)
    except msgspec.ValidationError as exc:
        message = str(exc)
        for name, source in _SOURCES.items():
            message = message.replace(f"`$.{name}`", f"`$.{source}`")
        named = _CHECKED_FIELD.match(message)
        if named and "- at `$." not in message:
            # Options' own checks name their field first but give no path.
            message += f" - at `$.{_SOURCES.get(named.group(1), named.group(1))}`"
        raise InvalidFields(f"Invalid value: {message}") from exc
