"""The aiohttp relay that parses: what relaying costs when every chunk is read.

The passthrough relay (``aiohttp_relay``) writes the upstream's bytes as they
came and so never knows what it relays. A gateway cannot: to normalise a
provider's chunks, count tokens, keep a log and end a stream with an error
event it must split the body into events and decode each one's JSON. This
relay does that much and nothing more, on the same aiohttp server and client:
per upstream read, the events of ``engine.sse.Decoder`` (the gateway's own
spec-exact decoder), each event's data decoded with msgspec and encoded again
(``[DONE]`` passed as is), then one write of the re-framed events. Its CPU per
chunk minus the passthrough's is the price of reading the stream; the gateway
minus this one is what the gateway does beyond reading it (benchmarks/NOTES.md).

    OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 python -m benchmarks.servers.aiohttp_parsing_relay
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from engine.sse import Decoder

from . import aiohttp_relay
from ._common import run

_decode = msgspec.json.decode
_encode = msgspec.json.encode


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[aiohttp_relay.SESSION]
    async with session.post(
        request.app[aiohttp_relay.UPSTREAM], data=body, headers={"Content-Type": "application/json"}
    ) as upstream:
        if upstream.status != 200:
            return web.Response(status=502)
        response = web.StreamResponse(headers=aiohttp_relay._HEADERS)
        await response.prepare(request)
        decoder = Decoder()
        async for data in upstream.content.iter_any():
            out = []
            for event in decoder.feed(data):
                text = event.data
                payload = text.encode() if text == "[DONE]" else _encode(_decode(text))
                out.append(b"data: " + payload + b"\n\n")
            if out:
                await response.write(b"".join(out))
    await response.write_eof()
    return response


if __name__ == "__main__":
    run(lambda: aiohttp_relay.main(relay, "aiohttp parsing relay"))
