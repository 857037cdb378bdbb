"""Anthropic Messages over raw aiohttp (alias ``claude``).

``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``.
Events, per https://docs.anthropic.com/en/api/messages-streaming:
``message_start`` (model, input usage), ``content_block_*`` (text, and
``tool_use`` blocks relayed as tool-call deltas), ``message_delta`` (stop
reason, output usage), ``message_stop`` (the end), ``ping`` (ignored), ``error``
(raised: an ``overloaded_error`` is never swallowed). Unknown event types are
ignored, as the documentation asks.

The body is built field by field from the engine's messages and options (never
by encoding the wire Structs), so a field added to :mod:`engine.wire` cannot
reach Anthropic by accident. Each request field is carried in Anthropic's form
or refused with :class:`~engine.errors.UnsupportedField` naming it:

* system messages -> the top-level ``system`` (joined by blank lines);
* user text -> ``text`` blocks; images -> ``image`` blocks, a ``data:`` URL as a
  ``base64`` source, a web address as a ``url`` source. ``detail`` is OpenAI's
  resolution hint: Claude sizes images itself, so it is ignored (it cannot
  change what the image says). Audio parts are refused;
* assistant ``tool_calls`` -> ``tool_use`` blocks after the text; arguments must
  be a JSON object (an empty string is ``{}``: what a call without arguments
  streams as);
* ``tool`` messages -> ``tool_result`` blocks in a user turn;
* consecutive turns of one side (parallel tool results, a user message after
  tool results, two user messages) merge into one turn, so the body alternates
  user/assistant. Within a user turn the ``tool_result`` blocks come first, as
  Anthropic requires; a turn of one plain-text message stays a plain string.

Options: ``max_tokens`` (always sent: the API requires it), ``temperature`` (0..1
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

Thinking blocks in replies are skipped (the engine's messages have no place for
them, nor for their signatures). Anthropic wants them passed back unchanged in a
tool loop: with thinking on, the assistant turn whose tool calls the last user
turn answers must start with its thinking block. The engine cannot send one, so
a request that continues a tool loop with ``reasoning_effort`` set (not
``none``) is refused naming ``reasoning_effort``; turn thinking off for the
steps that return tool results.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgspec

from ..errors import UnsupportedField, UpstreamError
from ..sse import ServerSentEvent
from ..wire import (
    MAX_JSON_DEPTH,
    Chunk,
    ImagePart,
    JSONObjectFormat,
    JSONSchemaFormat,
    Message,
    Options,
    Reply,
    TextPart,
    ToolCall,
    Usage,
    json_depth,
)
from ._http import HTTPProvider, decode_view, event_error

__all__ = ["ANTHROPIC_VERSION", "THINKING_BUDGETS", "AnthropicProvider"]

#: The API version this adapter speaks (https://docs.anthropic.com/en/api/versioning).
ANTHROPIC_VERSION = "2023-06-01"

#: ``budget_tokens`` per ``reasoning_effort``. 1,024 is Anthropic's minimum
#: (https://platform.claude.com/docs/en/build-with-claude/extended-thinking);
#: each step up gives clearly more room. These are the engine's choice, not a
#: published equivalence: OpenAI does not say how many tokens an effort means.
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 4096, "high": 16384}

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_ROLE = "assistant"
_PROVIDER = "anthropic"

#: What a ``base64`` image source may be (image/jpg is a common alias of jpeg).
_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_MEDIA_ALIASES = {"image/jpg": "image/jpeg"}


class _UsageView(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _MessageView(msgspec.Struct):
    model: str = ""
    usage: _UsageView | None = None


class _MessageStart(msgspec.Struct):
    message: _MessageView


class _Block(msgspec.Struct):
    type: str
    id: str | None = None
    name: str | None = None


class _BlockStart(msgspec.Struct):
    index: int
    content_block: _Block


class _Delta(msgspec.Struct):
    type: str
    text: str | None = None
    partial_json: str | None = None


class _BlockDelta(msgspec.Struct):
    index: int
    delta: _Delta


class _BlockStop(msgspec.Struct):
    index: int


class _StopView(msgspec.Struct):
    stop_reason: str | None = None


class _MessageDelta(msgspec.Struct):
    delta: _StopView
    usage: _UsageView | None = None


class _ErrorView(msgspec.Struct):
    type: str | None = None
    message: str = ""


class _ErrorEvent(msgspec.Struct):
    error: _ErrorView


class _ReplyBlock(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _ReplyView(msgspec.Struct):
    model: str = ""
    content: list[_ReplyBlock] = []
    stop_reason: str | None = None
    usage: _UsageView | None = None


_start_decoder = msgspec.json.Decoder(_MessageStart)
_block_start_decoder = msgspec.json.Decoder(_BlockStart)
_block_delta_decoder = msgspec.json.Decoder(_BlockDelta)
_block_stop_decoder = msgspec.json.Decoder(_BlockStop)
_message_delta_decoder = msgspec.json.Decoder(_MessageDelta)
_error_decoder = msgspec.json.Decoder(_ErrorEvent)
_reply_decoder = msgspec.json.Decoder(_ReplyView)
_arguments_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def _refuse(field: str, why: str) -> UnsupportedField:
    return UnsupportedField(
        f"`{field}` is not supported by the {_PROVIDER} provider: {why}", field=field
    )


# -- messages -----------------------------------------------------------------------
# https://docs.anthropic.com/en/api/messages (content blocks) and
# https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use


def _image(part: ImagePart, where: str) -> dict[str, Any]:
    data = part.image_url.data()
    if data is None:
        return {"type": "image", "source": {"type": "url", "url": part.image_url.url}}
    media_type, encoded = data
    media_type = media_type.lower()
    media_type = _MEDIA_ALIASES.get(media_type, media_type)
    if media_type not in _MEDIA_TYPES:
        raise _refuse(
            where,
            f"Claude reads JPEG, PNG, GIF and WebP images, not {media_type}. Convert the image",
        )
    # The wire form allows line breaks in the base64 (MIME style); they carry nothing.
    source = {"type": "base64", "media_type": media_type, "data": "".join(encoded.split())}
    return {"type": "image", "source": source}


def _user_blocks(message: Message, index: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for number, part in enumerate(message.parts):
        where = f"messages[{index}].content[{number}]"
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(_image(part, where))
        else:
            raise _refuse(where, "Claude takes text and images, not audio. Transcribe it first")
    return blocks


def _input(call: ToolCall, where: str) -> dict[str, Any]:
    """A tool call's arguments as the JSON object ``tool_use.input`` must be."""
    text = call.function.arguments
    if not text.strip():
        return {}  # a call without arguments streams none
    why = "a tool call's arguments must be a JSON object (Anthropic's `tool_use.input`)"
    try:
        value = _arguments_decoder.decode(text)
    except (msgspec.DecodeError, RecursionError):
        raise _refuse(where, f"{why}; these are not valid JSON") from None
    if not isinstance(value, dict):
        raise _refuse(where, f"{why}, not {type(value).__name__}")
    if json_depth(value) > MAX_JSON_DEPTH:
        raise _refuse(where, f"{why} nested at most {MAX_JSON_DEPTH} levels deep")
    return value


def _assistant_blocks(message: Message, index: int) -> list[dict[str, Any]]:
    # Empty text adds nothing, and Anthropic refuses empty text blocks.
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": part.text}
        for part in message.parts
        if isinstance(part, TextPart) and part.text
    ]
    for number, call in enumerate(message.tool_calls or ()):
        where = f"messages[{index}].tool_calls[{number}].function.arguments"
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": _input(call, where),
            }
        )
    return blocks


def _tool_result(message: Message) -> dict[str, Any]:
    content = message.content
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    if isinstance(content, str):
        result["content"] = content
    else:
        result["content"] = [
            {"type": "text", "text": part.text}
            for part in message.parts
            if isinstance(part, TextPart) and part.text
        ]
    return result


class _Turn:
    """One side's consecutive messages, merged: Anthropic alternates user and assistant."""

    __slots__ = ("blocks", "plain", "role")

    def __init__(self, role: str, blocks: list[dict[str, Any]], plain: str | None) -> None:
        self.role = role
        self.blocks = blocks
        #: The text of a turn made of one plain-text message, sent as a string.
        self.plain = plain

    def merge(self, blocks: list[dict[str, Any]]) -> None:
        self.plain = None
        self.blocks.extend(blocks)

    def has_tool_use(self) -> bool:
        return any(block["type"] == "tool_use" for block in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        if self.plain is not None:
            return {"role": self.role, "content": self.plain}
        blocks = self.blocks
        if self.role == "user":
            # Tool results first: Anthropic refuses a turn with text before them.
            results = [b for b in blocks if b["type"] == "tool_result"]
            blocks = results + [b for b in blocks if b["type"] != "tool_result"]
        return {"role": self.role, "content": blocks}


def _turns(messages: Sequence[Message]) -> list[_Turn]:
    turns: list[_Turn] = []
    for index, message in enumerate(messages):
        role = message.role
        if role == "system":
            continue
        plain: str | None = None
        if role == "tool":
            blocks = [_tool_result(message)]
            role = "user"
        elif role == "user":
            blocks = _user_blocks(message, index)
            if isinstance(message.content, str):
                plain = message.content
        else:
            blocks = _assistant_blocks(message, index)
            if isinstance(message.content, str) and not message.tool_calls:
                plain = message.content
        if turns and turns[-1].role == role:
            turns[-1].merge(blocks)
        else:
            turns.append(_Turn(role, blocks, plain))
    return turns


# -- options ------------------------------------------------------------------------

# https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use
_TOOL_CHOICE = {"auto": "auto", "required": "any", "none": "none"}
_NO_PARAMETERS = {"type": "object", "properties": {}}


def _tool(function: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as an Anthropic tool (``input_schema`` is required)."""
    tool: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        tool["description"] = function["description"]
    tool["input_schema"] = function.get("parameters") or _NO_PARAMETERS
    return tool


def _tool_choice(options: Options) -> dict[str, Any] | None:
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


def _output_format(options: Options) -> dict[str, Any] | None:
    """``output_config.format`` for ``response_format`` (None for text or none)."""
    fmt = options.response_format
    if isinstance(fmt, JSONObjectFormat):
        raise _refuse(
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
            raise _refuse(
                "response_format.json_schema.description",
                "Anthropic's structured outputs have no separate description, and the "
                "schema's own `description` differs. Put it in the schema",
            )
    return {"type": "json_schema", "schema": schema}


def _sampling(options: Options, default_max_tokens: int) -> dict[str, Any]:
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
            raise _refuse(
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
            raise _refuse("temperature", f"Anthropic's range is 0 to 1, not {temperature:g}")
        if budget is not None and temperature != 1:
            raise _refuse(
                "temperature", "with extended thinking (`reasoning_effort`) it may only be 1"
            )
        out["temperature"] = temperature
    if options.top_p is not None:
        if budget is not None and options.top_p < 0.95:
            raise _refuse(
                "top_p",
                "with extended thinking (`reasoning_effort`) it must be between 0.95 and 1",
            )
        out["top_p"] = options.top_p
    return out


def _finish(reason: str | None) -> str | None:
    return None if reason is None else _FINISH.get(reason, reason)


def _call_delta(position: int, arguments: str) -> dict[str, Any]:
    return {"index": position, "function": {"arguments": arguments}}


class _Parser:
    __slots__ = ("_calls", "_finish", "_input", "_output", "_silent", "done", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self._finish: str | None = None
        self._input = 0
        self._output = 0
        #: Content-block index -> the tool call's position in the reply (0, 1, ...):
        #: deltas carry the position, as OpenAI's do, not Anthropic's block index.
        self._calls: dict[int, int] = {}
        #: Tool blocks that have streamed no arguments yet.
        self._silent: set[int] = set()

    def count(self, usage: _UsageView | None) -> None:
        if usage is None:
            return
        if usage.input_tokens is not None:
            self._input = (
                usage.input_tokens
                + (usage.cache_creation_input_tokens or 0)
                + (usage.cache_read_input_tokens or 0)
            )
        if usage.output_tokens is not None:
            self._output = usage.output_tokens  # cumulative, per the docs

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self._input,
            completion_tokens=self._output,
            total_tokens=self._input + self._output,
        )

    def _chunk(self, content: str = "", tools: list[dict[str, Any]] | None = None) -> Chunk:
        return Chunk(
            role=_ROLE, content=content, model=self.model, finish_reason=None, tool_calls=tools
        )

    def event(self, event: ServerSentEvent) -> Chunk | None:
        kind = event.event
        if kind == "content_block_delta":
            d = decode_view(_block_delta_decoder, event.data, provider=_PROVIDER)
            if d.delta.type == "text_delta" and d.delta.text:
                return self._chunk(d.delta.text)
            if d.delta.type == "input_json_delta" and d.delta.partial_json:
                position = self._calls.get(d.index)
                if position is None:
                    return None  # not a tool_use block (server tools are never sent)
                self._silent.discard(d.index)
                return self._chunk(tools=[_call_delta(position, d.delta.partial_json)])
            return None  # thinking, signatures, ...
        if kind == "ping":
            return None
        if kind == "message_start":
            start = decode_view(_start_decoder, event.data, provider=_PROVIDER)
            self.model = start.message.model or self.model
            self.count(start.message.usage)
            return None
        if kind == "content_block_start":
            block = decode_view(_block_start_decoder, event.data, provider=_PROVIDER)
            if block.content_block.type == "tool_use":
                position = self._calls[block.index] = len(self._calls)
                self._silent.add(block.index)
                call = {
                    "index": position,
                    "id": block.content_block.id,
                    "type": "function",
                    "function": {"name": block.content_block.name, "arguments": ""},
                }
                return self._chunk(tools=[call])
            return None
        if kind == "content_block_stop":
            if not self._silent:
                return None
            stop = decode_view(_block_stop_decoder, event.data, provider=_PROVIDER)
            if stop.index not in self._silent:
                return None
            # A call without arguments streams none: say "{}", as the whole reply does.
            self._silent.discard(stop.index)
            return self._chunk(tools=[_call_delta(self._calls[stop.index], "{}")])
        if kind == "message_delta":
            delta = decode_view(_message_delta_decoder, event.data, provider=_PROVIDER)
            self._finish = _finish(delta.delta.stop_reason)
            self.count(delta.usage)
            return None
        if kind == "message_stop":
            self.done = True
            return Chunk(
                role=_ROLE,
                content="",
                model=self.model,
                finish_reason=self._finish,
                usage=self.usage(),
            )
        if kind == "error":
            try:
                err = _error_decoder.decode(event.data).error
            except msgspec.DecodeError:
                err = _ErrorView(message=event.data)
            raise event_error(None, err.message, err.type, provider=_PROVIDER)
        return None  # event types added later

    def end(self) -> Chunk | None:
        raise UpstreamError("anthropic stream ended before message_stop")


class AnthropicProvider(HTTPProvider):
    """Claude through the Messages API."""

    name = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    carries = frozenset(
        {
            "max_tokens",
            "temperature",
            "top_p",
            "stop",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "reasoning_effort",
            "user",
        }
    )
    default_base_url = "https://api.anthropic.com"

    def body(self, messages: Sequence[Message], model: str, options: Options) -> dict[str, Any]:
        """The Messages API body (without ``stream``). Raises UnsupportedField."""
        body: dict[str, Any] = {"model": model}
        body.update(_sampling(options, self.settings.default_max_tokens))
        turns = _turns(messages)
        thinking = body.get("thinking", {}).get("type") == "enabled"
        assistant = next((turn for turn in reversed(turns) if turn.role == "assistant"), None)
        if thinking and assistant is not None and assistant.has_tool_use():
            raise _refuse(
                "reasoning_effort",
                "this request continues a tool loop, and with extended thinking Anthropic "
                "wants the assistant turn's thinking block passed back, which the engine "
                "does not keep. Leave `reasoning_effort` out (or `none`) when returning "
                "tool results",
            )
        body["messages"] = [turn.to_dict() for turn in turns]
        system = [m.text for m in messages if m.role == "system"]
        if system:
            body["system"] = "\n\n".join(system)
        if options.stop is not None:
            body["stop_sequences"] = (
                [options.stop] if isinstance(options.stop, str) else list(options.stop)
            )
        if options.tools:
            body["tools"] = [_tool(tool["function"]) for tool in options.tools]
            choice = _tool_choice(options)
            if choice is not None:
                if thinking and choice["type"] in ("any", "tool"):
                    raise _refuse(
                        "tool_choice",
                        "with extended thinking (`reasoning_effort`) Claude cannot be forced "
                        'to call a tool; only "auto" and "none" are allowed',
                    )
                body["tool_choice"] = choice
        output_format = _output_format(options)
        if output_format is not None:
            body["output_config"] = {"format": output_format}
        if options.user is not None:
            body["metadata"] = {"user_id": options.user}
        return body

    def request(
        self, messages: Sequence[Message], model: str, options: Options, *, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, str], bytes]:
        body = self.body(messages, model, options)
        headers = {"x-api-key": self.http.api_key, "anthropic-version": ANTHROPIC_VERSION}
        if stream:
            headers["Accept"] = "text/event-stream"
            body["stream"] = True
        return f"{self.base_url}/v1/messages", {}, headers, _encoder.encode(body)

    def parser(self, model: str) -> _Parser:
        return _Parser(model)

    def parse_reply(self, data: bytes, model: str) -> Reply:
        view = decode_view(_reply_decoder, data, provider=_PROVIDER)
        text: list[str] = []
        tools: list[dict[str, Any]] = []
        for block in view.content:
            if block.type == "text" and block.text:
                text.append(block.text)
            elif block.type == "tool_use":
                # Whole calls, as OpenAI's message.tool_calls: no `index` (a delta's).
                tools.append(
                    {
                        "id": block.id,
                        "type": "function",
                        "function": {"name": block.name, "arguments": json.dumps(block.input)},
                    }
                )
            # thinking and redacted_thinking blocks are skipped (module docstring)
        parser = _Parser(model)
        parser.count(view.usage)
        return Reply(
            role=_ROLE,
            content="".join(text),
            model=view.model or model,
            finish_reason=_finish(view.stop_reason),
            usage=parser.usage(),
            tool_calls=tools or None,
        )
