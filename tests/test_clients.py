"""What SSE clients that are not browsers make of our streams (USERS-ASK 16).

httpx-sse (and @microsoft/fetch-event-source, which parses the same way)
delivers every blank-line-terminated block as a message, data or not: a lone
``retry:`` block or a heartbeat followed by a blank line became a message with
empty data, and the usual ``json.loads(event.data)`` threw on the first one.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from httpx_sse import aconnect_sse

from engine import create_app
from engine.app import ENGINE

from .helpers import ScriptedProvider, make_config


@pytest.mark.parametrize("route", ["native-get", "native-post", "openai"])
async def test_httpx_sse_gets_no_empty_message_from_retry_or_heartbeats(aiohttp_server, route):
    gate = asyncio.Event()
    provider = ScriptedProvider(["a", "b", "c"], gate=gate, hold_from=1)
    app = create_app(make_config(heartbeat=0.05))
    app[ENGINE].add_provider(provider, "mock")
    server = await aiohttp_server(app)
    base = f"http://{server.host}:{server.port}"
    if route == "native-get":
        method, path, kwargs = "GET", "/v1/chat/stream", {"params": {"q": "hi"}}
    elif route == "native-post":
        body = {"messages": [{"role": "user", "content": "hi"}]}
        method, path, kwargs = "POST", "/v1/chat/stream", {"json": body}
    else:
        body = {"model": "mock/x", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        method, path, kwargs = "POST", "/v1/chat/completions", {"json": body}
    seen = []
    async with httpx.AsyncClient(base_url=base) as client:
        async with aconnect_sse(client, method, path, **kwargs) as source:
            raw_heartbeats = 0
            async for sse in source.aiter_sse():
                seen.append(sse)
                if len(seen) == 2 and not gate.is_set():
                    # Heartbeats flow while the provider holds the next token.
                    await asyncio.sleep(0.3)
                    raw_heartbeats += 1
                    gate.set()
    assert raw_heartbeats == 1
    assert seen, "no events at all"
    for sse in seen:
        assert sse.data, f"an empty message was delivered: {sse!r}"
        if sse.data != "[DONE]":
            json.loads(sse.data)
    if route.startswith("native"):
        assert [s.event for s in seen] == ["start", "message", "message", "message", "done"]
        assert seen[0].retry == 3000  # retry travels with the start event
    else:
        assert seen[-1].data == "[DONE]"
