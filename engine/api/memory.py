"""The memory routes: read, add to and clear one conversation.

::

    GET    /v1/memory/{parent}/{id}            ?limit=N -> the messages, oldest first
    POST   /v1/memory/{parent}/{id}/messages   add one (201)
    DELETE /v1/memory/{parent}/{id}            clear: {"deleted": N}

A message, as POSTed and as returned, has ``role`` (``system``, ``user``,
``assistant`` or ``tool``), ``content``, ``type``, ``metadata``,
``message_id`` (and, returned, ``created_at``), plus the agent-loop fields in
OpenAI Chat Completions' shapes:

- ``tool_calls``: an assistant message's
  ``[{"id", "type": "function", "function": {"name", "arguments"}}]``;
- ``tool_call_id``: on a ``tool`` message, the call it answers (required there);
- ``parts``: the content parts (``{"type": "text", "text"}``,
  ``{"type": "image_url", "image_url": {"url", "detail"?}}``,
  ``{"type": "input_audio", "input_audio": {"data", "format"}}``) of a message
  whose content was a list; ``content`` is then their text parts joined by
  newlines, and may be left out of a POST to have it computed. ``content`` may
  also be left out of an assistant message with ``tool_calls`` (stored as ``""``).

Every returned message has all three fields, ``null`` where unset (as it has
``type`` and ``metadata`` when they hold their defaults): one shape for every
message, old or new.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ..auth import memory_parent
from ..errors import Forbidden, InvalidFields
from ..gateway import ENGINE
from ..keys import Principal
from ..memory import Conversation
from ..memory.base import MessageRole, MessageType, check_key
from ..middleware import expect_handler, principal
from ._io import json_response, read_json

__all__ = ["NewMessage", "routes"]

routes = web.RouteTableDef()


class NewMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/memory/{parent}/{id}/messages``.

    Only the types are checked here; the store validates the rest (shapes,
    which role may carry what), so the HTTP API and Python callers get the same
    answers.
    """

    role: MessageRole
    content: str | None = None
    type: MessageType = "text"
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    message_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    parts: list[dict[str, Any]] | None = None


async def _conversation(request: web.Request) -> Conversation:
    """The conversation the path names, the requesting key's own.

    With keys, each key has its own conversations (a key's ``shared_parents``
    excepted): the same path is another conversation for another key. The
    admin reads a key's with ``?owner=<key id>`` (without it, the unscoped ones).
    """
    parent, pid = request.match_info["parent"], request.match_info["id"]
    check_key("parent", parent)
    check_key("id", pid)
    who = principal(request)
    owner = request.query.get("owner")
    if owner is not None:
        if not who.admin:
            raise Forbidden("`owner` is for the admin key")
        key = request.app[ENGINE].gate.get(owner)
        who = Principal(key)
    store = await request.app[ENGINE].open_memory()
    return store.for_parent(memory_parent(who, parent), pid)


@routes.get("/v1/memory/{parent}/{id}")
async def memory_get(request: web.Request) -> web.Response:
    limit = request.query.get("limit")
    try:
        n = None if limit is None else int(limit)
    except ValueError:
        n = -1
    if n is not None and n < 0:
        raise InvalidFields("`limit` must be a non-negative integer")
    conversation = await _conversation(request)
    messages = await conversation.get_messages(limit=n)
    return json_response(
        {
            "parent": request.match_info["parent"],
            "id": request.match_info["id"],
            "messages": messages,
        }
    )


@routes.post("/v1/memory/{parent}/{id}/messages", expect_handler=expect_handler)
async def memory_post(request: web.Request) -> web.Response:
    body = await read_json(request, NewMessage)
    conversation = await _conversation(request)
    stored = await conversation.add_message(
        body.role,
        body.content,
        type=body.type,
        metadata=body.metadata,
        message_id=body.message_id,
        tool_calls=body.tool_calls,
        tool_call_id=body.tool_call_id,
        parts=body.parts,
    )
    return json_response(stored, status=201)


@routes.delete("/v1/memory/{parent}/{id}")
async def memory_delete(request: web.Request) -> web.Response:
    conversation = await _conversation(request)
    removed = await conversation.clear()
    return json_response({"deleted": removed})
