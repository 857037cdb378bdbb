"""The routes, one ``RouteTableDef`` per subject: native chat, OpenAI, memory."""

from __future__ import annotations

from aiohttp import web

from . import chat, memory, openai

__all__ = ["ROUTES"]

#: Every route table of the gateway, in the order ``create_app`` adds them.
ROUTES: tuple[web.RouteTableDef, ...] = (chat.routes, openai.routes, memory.routes)
