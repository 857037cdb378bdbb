"""Responses' input items and tools, onto the engine's messages and Chat Completions tools.

Each input item is decoded on its own (an ``EasyInputMessage`` may leave out
its ``type``), so an error names the item: ``input[2].content[0].type``. The
mapping (engine forms are OpenAI Chat Completions', :mod:`engine.wire`):

=========================================  ===========================================
Responses                                  engine
=========================================  ===========================================
``input`` string                           one user message
``instructions``                           a system message first (never stored: as on
                                           OpenAI, a continuation does not inherit it)
``message`` user, ``input_text``           user text (several parts: text parts)
``message`` user, ``input_image``          ``ImagePart`` (``image_url``, http(s) or data:)
``message`` system / developer             a system message (text parts only)
``message`` assistant (``output_text``,    assistant text; a ``refusal`` part is its text
``refusal``, or a string)
``function_call``                          a tool call of the assistant message before it
                                           (or of a new one); ``call_id`` is its id
``function_call_output``                   a ``tool`` message answering ``call_id``
``reasoning``                              dropped: its encrypted content only OpenAI can
                                           read, and the engine returns none
=========================================  ===========================================

Refused by name: ``input_file`` and ``input_audio`` parts, images by ``file_id``,
images in a ``function_call_output``, ``item_reference`` and every item of a
hosted tool (``web_search_call``, ``computer_call``, ``mcp_*``, ...). A type
the reference does not define is refused too, naming the item.

:func:`to_input` also gives each item back in the shape
``GET /v1/responses/{id}/input_items`` lists (OpenAI's ``ResponseItem``), with
an id (the client's, or a new one) and ``status: "completed"``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from ...errors import InvalidFields
from ...wire import FunctionCall, ImagePart, ImageURL, Message, Part, TextPart, ToolCall
from .request import ResponsesRequest, refuse

__all__ = ["Tool", "new_id", "to_input", "to_tool_choice", "to_tools"]


def new_id(prefix: str) -> str:
    """A new item id, ``<prefix>_`` and 32 hex digits (``msg``, ``fc``, ``fco``, ``resp``)."""
    return f"{prefix}_{uuid.uuid4().hex}"


# -- content parts ------------------------------------------------------------------


class InputText(
    Struct, kw_only=True, tag_field="type", tag="input_text", forbid_unknown_fields=True
):
    text: str
    #: A prompt-caching breakpoint: accepted, not sent (cost, not content).
    prompt_cache_breakpoint: dict[str, Any] | None = None


class InputImage(
    Struct, kw_only=True, tag_field="type", tag="input_image", forbid_unknown_fields=True
):
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None
    prompt_cache_breakpoint: dict[str, Any] | None = None


class OutputText(
    Struct, kw_only=True, tag_field="type", tag="output_text", forbid_unknown_fields=True
):
    """Text of an assistant message replayed from an earlier output."""

    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class Refusal(Struct, kw_only=True, tag_field="type", tag="refusal", forbid_unknown_fields=True):
    refusal: str


class _RefusedPart(Struct, kw_only=True, tag_field="type"):
    """A part the gateway has no form for: decoded only to be refused by its type."""


class InputFile(_RefusedPart, tag="input_file"):
    pass


class InputAudio(_RefusedPart, tag="input_audio"):
    pass


ContentPart = InputText | InputImage | OutputText | Refusal | InputFile | InputAudio

# -- items --------------------------------------------------------------------------


class MessageItem(
    Struct, kw_only=True, tag_field="type", tag="message", forbid_unknown_fields=True
):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    #: gpt-5 codex's commentary/final-answer label: accepted, not sent.
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallItem(
    Struct, kw_only=True, tag_field="type", tag="function_call", forbid_unknown_fields=True
):
    call_id: Annotated[str, Meta(min_length=1)]
    name: Annotated[str, Meta(min_length=1)]
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    namespace: str | None = None
    caller: dict[str, Any] | None = None
    #: An asynchronous call is OpenAI's own: refused when true.
    async_: bool | None = msgspec.field(default=None, name="async")


class FunctionCallOutputItem(
    Struct, kw_only=True, tag_field="type", tag="function_call_output", forbid_unknown_fields=True
):
    call_id: Annotated[str, Meta(min_length=1)]
    output: str | list[InputText | InputImage | InputFile]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    name: str | None = None
    namespace: str | None = None
    caller: dict[str, Any] | None = None


class ReasoningItem(
    Struct, kw_only=True, tag_field="type", tag="reasoning", forbid_unknown_fields=True
):
    id: str | None = None
    summary: list[dict[str, Any]] = msgspec.field(default_factory=list)
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None
    status: str | None = None


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem

# Item types of OpenAI's reference that the gateway cannot carry, and why.
_HOSTED = "runs on OpenAI's side; this gateway offers no hosted tools"
_REFUSED_ITEMS = {
    "item_reference": "item references are not supported: send the item itself, or "
    "continue with `previous_response_id`",
    "custom_tool_call": "custom (free-form) tools are not supported by this gateway",
    "custom_tool_call_output": "custom (free-form) tools are not supported by this gateway",
    "compaction": "compaction is OpenAI's own",
    "compaction_trigger": "compaction is OpenAI's own",
    "additional_tools": "tools are given in `tools`",
    "configuration_update": "configuration updates are OpenAI's own",
    "program": "programmatic tool calling is OpenAI's own",
    "program_output": "programmatic tool calling is OpenAI's own",
    **dict.fromkeys(
        (
            "file_search_call",
            "computer_call",
            "computer_call_output",
            "web_search_call",
            "tool_search_call",
            "tool_search_output",
            "image_generation_call",
            "code_interpreter_call",
            "local_shell_call",
            "local_shell_call_output",
            "shell_call",
            "shell_call_output",
            "apply_patch_call",
            "apply_patch_call_output",
            "mcp_list_tools",
            "mcp_approval_request",
            "mcp_approval_response",
            "mcp_call",
        ),
        f"this item's tool {_HOSTED}",
    ),
}


def _decode(raw: object, kind: Any, where: str) -> Any:
    """``raw`` as ``kind``, or InvalidFields whose path starts at ``where``."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if " - at `$" in message:
            message = message.replace(" - at `$", f" - at `$.{where}", 1)
        else:
            message += f" - at `$.{where}`"
        raise InvalidFields(message) from exc


def _decode_item(raw: dict[str, Any], where: str) -> Item:
    kind = raw.get("type")
    if kind is None and "role" in raw:
        raw = {**raw, "type": "message"}  # an EasyInputMessage may leave out its type
    elif isinstance(kind, str) and kind in _REFUSED_ITEMS:
        raise refuse(f"{where}.type", f"`{kind}` items are not supported: {_REFUSED_ITEMS[kind]}")
    item: Item = _decode(raw, Item, where)
    return item


# -- items -> messages -------------------------------------------------------------------


_DETAILS: dict[str, Literal["auto", "low", "high"]] = {"auto": "auto", "low": "low", "high": "high"}


def _image(part: InputImage, where: str) -> ImagePart:
    if part.image_url is None:
        raise refuse(
            f"{where}.file_id",
            "images by `file_id` need OpenAI's Files API: send `image_url` (http(s) or a "
            "data: URL)",
        )
    # "original" (full resolution) is OpenAI's own: the providers' default is the nearest.
    detail = _DETAILS.get(part.detail) if part.detail is not None else None
    try:
        return ImagePart(image_url=ImageURL(url=part.image_url, detail=detail))
    except (msgspec.ValidationError, ValueError) as exc:
        raise InvalidFields(f"{exc} - at `$.{where}.image_url`") from None


def _refused_part(part: object, where: str) -> None:
    if isinstance(part, InputFile | InputAudio):
        kind = part.__struct_config__.tag
        raise refuse(f"{where}.type", f"`{kind}` parts have no form in the engine's messages")


def _user_content(content: str | list[ContentPart], where: str) -> str | list[Part]:
    if isinstance(content, str):
        return content
    parts: list[Part] = []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        _refused_part(part, at)
        if isinstance(part, InputText):
            parts.append(TextPart(text=part.text))
        elif isinstance(part, InputImage):
            parts.append(_image(part, at))
        else:
            raise InvalidFields(
                f"a user message takes input_text and input_image parts, not "
                f"{part.__struct_config__.tag} - at `$.{at}.type`"
            )
    if len(parts) == 1 and isinstance(parts[0], TextPart):
        return parts[0].text
    return parts


def _text_content(content: str | list[ContentPart], where: str, role: str) -> str:
    """The text of a system or assistant message (text parts joined by newlines)."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        _refused_part(part, at)
        if isinstance(part, InputText | OutputText):
            texts.append(part.text)
        elif isinstance(part, Refusal):
            texts.append(part.refusal)  # an assistant refusal replayed from history
        else:
            raise refuse(f"{at}.type", f"only user messages may carry images, not {role} ones")
    return "\n".join(texts)


def _tool_output(item: FunctionCallOutputItem, where: str) -> str:
    if isinstance(item.output, str):
        return item.output
    texts: list[str] = []
    for index, part in enumerate(item.output):
        at = f"{where}.output[{index}]"
        _refused_part(part, at)
        if isinstance(part, InputImage):
            raise refuse(f"{at}.type", "images in a function call's output have no engine form")
        assert isinstance(part, InputText)
        texts.append(part.text)
    return "\n".join(texts)


_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def _listed(item: Item, raw: dict[str, Any]) -> dict[str, Any]:
    """The item as ``input_items`` lists it: OpenAI's ``ResponseItem``, with an id."""
    listed = {k: v for k, v in raw.items() if v is not None}
    if isinstance(item, MessageItem):
        listed["type"] = "message"
        prefix = "msg"
        if isinstance(item.content, str):
            part = "output_text" if item.role == "assistant" else "input_text"
            text: dict[str, Any] = {"type": part, "text": item.content}
            if part == "output_text":
                text["annotations"] = []
            listed["content"] = [text]
    else:
        tag = str(item.__struct_config__.tag)
        prefix = {"function_call": "fc", "function_call_output": "fco"}.get(tag, "rs")
    listed.setdefault("id", item.id or new_id(prefix))
    if not isinstance(item, ReasoningItem):
        listed.setdefault("status", "completed")
    return listed


def to_input(body: ResponsesRequest) -> tuple[list[Message], list[dict[str, Any]]]:
    """The request's input as the engine's messages (instructions not included), and its
    items as ``input_items`` lists them. Raises InvalidFields/UnsupportedField naming the item.

    Consecutive ``function_call`` items become one assistant message with
    several tool calls (after the assistant's text, if that came just before),
    as every provider wants a turn's calls together.
    """
    if isinstance(body.input, str):
        only = {"type": "message", "role": "user", "content": body.input}
        return [Message(role="user", content=body.input)], [
            _listed(_decode(only, MessageItem, "input"), only)
        ]
    messages: list[Message] = []
    listed: list[dict[str, Any]] = []
    for index, raw in enumerate(body.input):
        where = f"input[{index}]"
        item = _decode_item(raw, where)
        listed.append(_listed(item, raw))
        if isinstance(item, ReasoningItem):
            continue
        if isinstance(item, FunctionCallItem):
            if item.async_:
                raise refuse(f"{where}.async", "asynchronous function calls are OpenAI's own")
            call = ToolCall(
                id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or ()), call]
                if last.content == "":
                    last.content = None
            else:
                messages.append(Message(role="assistant", content=None, tool_calls=[call]))
            continue
        if isinstance(item, FunctionCallOutputItem):
            content = _tool_output(item, where)
            messages.append(Message(role="tool", content=content, tool_call_id=item.call_id))
            continue
        role = _ROLES[item.role]
        if role == "user":
            messages.append(Message(role="user", content=_user_content(item.content, where)))
        else:
            text = _text_content(item.content, where, item.role)
            messages.append(Message(role=role, content=text))  # type: ignore[arg-type]
    if not messages:
        raise InvalidFields("`input` holds no message, function call or output - at `$.input`")
    return messages, listed


# -- tools ---------------------------------------------------------------------------------


class Tool(Struct, kw_only=True, tag_field="type", tag="function", forbid_unknown_fields=True):
    """A function tool, Responses' flat shape (``name`` beside ``type``)."""

    name: Annotated[str, Meta(min_length=1)]
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None
    defer_loading: bool | None = None
    allowed_callers: list[str] | None = None
    output_schema: dict[str, Any] | None = None
    #: Asynchronous function calls are OpenAI's own: refused when true.
    async_: bool | None = msgspec.field(default=None, name="async")


def to_tools(raw: list[dict[str, Any]] | None) -> tuple[list[Tool], list[dict[str, Any]] | None]:
    """The function tools, and them in Chat Completions' form (``None`` for none).

    A hosted tool (``web_search``, ``file_search``, ``mcp``, ...) or a custom
    one is refused naming ``tools[i].type``; a function tool's
    ``defer_loading``, programmatic callers and ``output_schema`` too.
    """
    tools: list[Tool] = []
    chat: list[dict[str, Any]] = []
    for index, spec in enumerate(raw or ()):
        where = f"tools[{index}]"
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind != "function":
            why = "custom (free-form) tools are not supported" if kind == "custom" else _HOSTED
            raise refuse(f"{where}.type", f"`{kind}` tools are not supported: {why}")
        tool: Tool = _decode(spec, Tool, where)
        if tool.defer_loading:
            raise refuse(f"{where}.defer_loading", "deferred tool loading is OpenAI's own")
        if tool.allowed_callers not in (None, ["direct"]):
            raise refuse(f"{where}.allowed_callers", "programmatic tool calling is OpenAI's own")
        if tool.async_:
            raise refuse(f"{where}.async", "asynchronous function calls are OpenAI's own")
        if tool.output_schema is not None:
            raise refuse(f"{where}.output_schema", "tool output schemas are OpenAI's own")
        function: dict[str, Any] = {"name": tool.name}
        for key in ("description", "parameters", "strict"):
            if getattr(tool, key) is not None:
                function[key] = getattr(tool, key)
        tools.append(tool)
        chat.append({"type": "function", "function": function})
    return tools, chat or None


def to_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """``tool_choice`` in Chat Completions' form: the modes as they are, a function
    ``{"type": "function", "name"}`` as ``{"type": "function", "function": {"name"}}``."""
    if choice is None or isinstance(choice, str):
        return choice
    kind = choice.get("type")
    if kind == "function":
        extra = set(choice) - {"type", "name"}
        if extra or not isinstance(choice.get("name"), str):
            raise InvalidFields(
                '`tool_choice` must be {"type": "function", "name": ...} - at `$.tool_choice`'
            )
        return {"type": "function", "function": {"name": choice["name"]}}
    why = "a subset of allowed tools" if kind == "allowed_tools" else f"`{kind}` tools"
    raise refuse("tool_choice.type", f"forcing {why} is not supported by this gateway")
