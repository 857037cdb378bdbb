"""The content blocks of a Messages request, and the message that holds them.

Every block type of Anthropic's reference is declared
(https://docs.anthropic.com/en/api/messages), so that one the gateway cannot
carry is refused by its type, with a reason (:mod:`.messages`), rather than
as an unknown tag.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

__all__ = [
    "Base64Source",
    "BashCodeExecutionToolResultBlock",
    "Block",
    "BrowserStateBlock",
    "CacheControl",
    "CodeExecutionToolResultBlock",
    "ContainerUploadBlock",
    "DocumentBlock",
    "FileSource",
    "ImageBlock",
    "InputMessage",
    "MCPToolResultBlock",
    "MCPToolUseBlock",
    "RedactedThinkingBlock",
    "RefusedBlock",
    "SearchResultBlock",
    "ServerToolUseBlock",
    "TextBlock",
    "TextEditorCodeExecutionToolResultBlock",
    "ThinkingBlock",
    "ToolReferenceBlock",
    "ToolResultBlock",
    "ToolResultContent",
    "ToolSearchToolResultBlock",
    "ToolUseBlock",
    "URLSource",
    "WebFetchToolResultBlock",
    "WebSearchToolResultBlock",
]


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


class RefusedBlock(Struct, kw_only=True, tag_field="type"):
    """A block the gateway has no form for: decoded only to be refused by its type."""


class DocumentBlock(RefusedBlock, tag="document"):
    pass


class SearchResultBlock(RefusedBlock, tag="search_result"):
    pass


class ToolReferenceBlock(RefusedBlock, tag="tool_reference"):
    pass


class BrowserStateBlock(RefusedBlock, tag="browser_state"):
    pass


class ServerToolUseBlock(RefusedBlock, tag="server_tool_use"):
    pass


class WebSearchToolResultBlock(RefusedBlock, tag="web_search_tool_result"):
    pass


class WebFetchToolResultBlock(RefusedBlock, tag="web_fetch_tool_result"):
    pass


class CodeExecutionToolResultBlock(RefusedBlock, tag="code_execution_tool_result"):
    pass


class BashCodeExecutionToolResultBlock(RefusedBlock, tag="bash_code_execution_tool_result"):
    pass


class TextEditorCodeExecutionToolResultBlock(
    RefusedBlock, tag="text_editor_code_execution_tool_result"
):
    pass


class ToolSearchToolResultBlock(RefusedBlock, tag="tool_search_tool_result"):
    pass


class ContainerUploadBlock(RefusedBlock, tag="container_upload"):
    pass


class MCPToolUseBlock(RefusedBlock, tag="mcp_tool_use"):
    pass


class MCPToolResultBlock(RefusedBlock, tag="mcp_tool_result"):
    pass


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
