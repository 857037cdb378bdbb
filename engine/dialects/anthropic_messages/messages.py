"""A Messages request's ``system`` and ``messages`` as the engine's messages.

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
* Refused by type, with the reason: ``document``, ``search_result``,
  server-tool and ``container_upload`` blocks, ``file`` image sources, image
  ``transformations``, images in tool results.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ...errors import InvalidFields, UnsupportedField
from ...wire import FunctionCall, ImagePart, ImageURL, Message, Part, TextPart, ToolCall
from .blocks import (
    FileSource,
    ImageBlock,
    InputMessage,
    RedactedThinkingBlock,
    RefusedBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    URLSource,
)
from .errors import refuse
from .request import Prompt

__all__ = ["to_messages"]

_encoder = msgspec.json.Encoder()

# Why each refused block cannot be carried.
_REFUSED_BLOCKS = {
    "document": "documents (PDF, text sources) have no form in the engine's messages",
    "search_result": "search results have no form in the engine's messages",
    "tool_reference": "tool references need Anthropic's tool search",
    "browser_state": "browser state needs Anthropic's browser tool",
    "container_upload": "container uploads need Anthropic's code execution container",
}
_SERVER_BLOCK = "server tools run on Anthropic's side; this gateway offers none"


def _refused_block(block: Any, where: str) -> UnsupportedField:
    kind = block.__struct_config__.tag
    why = _REFUSED_BLOCKS.get(kind, _SERVER_BLOCK)
    return refuse(where, f"`{kind}` blocks are not supported by this gateway: {why}")


def _text(texts: list[TextPart]) -> str | list[Part]:
    """One text block as a string (what every provider takes), several as parts."""
    if len(texts) == 1:
        return texts[0].text
    parts: list[Part] = [*texts]
    return parts


def _image(block: ImageBlock, where: str) -> ImagePart:
    if block.transformations:
        raise refuse(f"{where}.transformations", "image `transformations` are not supported")
    source = block.source
    if isinstance(source, FileSource):
        raise refuse(
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
        raise refuse(f"{where}.caller", "calls made by Anthropic's server tools are not supported")
    if block.toolset_name is not None:
        raise refuse(f"{where}.toolset_name", "toolsets are not supported by this gateway")
    arguments = _encoder.encode(block.input).decode()
    return ToolCall(
        id=block.id, type="function", function=FunctionCall(name=block.name, arguments=arguments)
    )


def _tool_result(block: ToolResultBlock, where: str) -> Message:
    if block.toolset_name is not None:
        raise refuse(f"{where}.toolset_name", "toolsets are not supported by this gateway")
    content = block.content
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        texts = []
        for index, part in enumerate(content):
            if isinstance(part, ImageBlock):
                raise refuse(
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
        elif isinstance(block, RefusedBlock):
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


def to_messages(body: Prompt) -> list[Message]:
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
