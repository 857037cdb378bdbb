"""The aiohttp application: ``create_app(config)``, standalone or mounted with ``add_subapp``.

Routes (engine.api: one ``RouteTableDef`` per subject)::

    POST /v1/chat/stream     JSON ChatRequest  -> text/event-stream
    GET  /v1/chat/stream     ?q=&provider=&model=&parent=&parent_id=&<options>  (EventSource)
    POST /v1/chat            JSON ChatRequest  -> JSON Reply
    POST /v1/chat/completions, GET /v1/models   OpenAI's shapes
    POST /v1/responses, GET|DELETE /v1/responses/{id}, .../cancel, .../input_items
                                             OpenAI's Responses API (engine.api.responses)
    POST /v1/messages, .../count_tokens      Anthropic's Messages API
    GET  /v1/memory/{parent}/{id}            -> the conversation's messages
    POST /v1/memory/{parent}/{id}/messages   -> add one message
    DELETE /v1/memory/{parent}/{id}          -> clear
    GET  /healthz

This module imports everything and nothing imports it but the server and
the CLI: errors are mapped in :mod:`engine.middleware`, the wire formats
live in :mod:`engine.dialects`, streams in :mod:`engine.streams`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from .api import ROUTES
from .config import Config
from .errors import StoreUnavailable
from .gateway import ENGINE, Engine
from .hosts import host_check
from .middleware import error_middleware, guarded

__all__ = ["ENGINE", "create_app", "error_middleware"]

log = logging.getLogger("engine.app")


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    engine = app[ENGINE]
    try:
        # Open (and create the schema of) the store at start-up; a store that is
        # down is not fatal: memory requests retry and answer 503 meanwhile.
        await engine.open_memory()
    except StoreUnavailable as exc:
        log.warning("memory store unavailable at start-up: %s", exc.message)
    await engine.open_keys()
    if engine.registry is not None:
        # The Redis stream log listens for Stops from the start (engine.streams.redis_control).
        engine.registry.start()
    yield
    await engine.aclose()


async def _on_shutdown(app: web.Application) -> None:
    await app[ENGINE].shutdown()


def create_app(config: Config | None = None, *, engine: Engine | None = None) -> web.Application:
    """The gateway as an ``aiohttp.web.Application``.

    Run it with ``web.run_app``, or mount it into another app with
    ``parent.add_subapp("/llm", create_app(config))``: its start-up, shutdown
    and clean-up run with the parent's.
    """
    if engine is None:
        engine = Engine(config)
    hosts = host_check(engine.config.allowed_hosts, engine.config.host)
    app = web.Application(middlewares=[error_middleware if hosts is None else guarded(hosts)])
    app[ENGINE] = engine
    app.cleanup_ctx.append(_lifetime)
    app.on_shutdown.append(_on_shutdown)
    for routes in ROUTES:
        app.add_routes(routes)
    return app
