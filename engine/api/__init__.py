"""The routes, one ``RouteTableDef`` per subject (native chat, resume, OpenAI, Anthropic, ...)."""

from __future__ import annotations

from aiohttp import web

from . import admin, anthropic, chat, memory, metrics, openai, playground, responses, streams

__all__ = ["ROUTES"]

#: Every route table of the gateway, in the order ``create_app`` adds them.
ROUTES: tuple[web.RouteTableDef, ...] = (
    chat.routes,
    streams.routes,
    openai.routes,
    anthropic.routes,
    responses.routes,
    memory.routes,
    admin.routes,
    playground.routes,
    metrics.routes,
)
