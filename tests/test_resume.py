"""Resume by Last-Event-ID: replay byte for byte, follow live, end with 204, refuse gaps and junk."""

from __future__ import annotations

import asyncio
import json

import pytest

from engine.errors import UpstreamError
from engine.sse import Decoder
from engine.streams.log import Registry

from .helpers import ScriptedProvider, read_until

USER = [{"role": "user", "content": "hi"}]
TOKENS = [f"t{i} " for i in range(10)]


def blocks(raw: bytes) -> list[bytes]:
    """The event blocks of a stream's body (the leading retry: line dropped)."""
    body = raw.split(b"\n", 1)[1] if raw.startswith(b"retry:") else raw
    return [block + b"\n\n" for block in body.split(b"\n\n") if block]


def ids(raw: bytes) -> list[str]:
    return [e.id for e in Decoder().feed(raw)]


async def _finished_stream(client) -> tuple[str, bytes]:
    resp = await client.post("/v1/chat/stream", json={"messages": USER})
    raw = await resp.read()
    start = json.loads(Decoder().feed(raw)[0].data)
    return start["stream_id"], raw


async def test_a_resume_replays_the_events_after_last_event_id_byte_for_byte(gateway):
    client = await gateway(ScriptedProvider(TOKENS))
    sid, raw = await _finished_stream(client)
    original = blocks(raw)
    assert ids(raw) == [f"{sid}:{n}" for n in range(len(TOKENS) + 2)]
    resp = await client.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:3"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert blocks(await resp.read()) == original[4:]
    # ?last_event_id= for clients that cannot set headers; none: from the start.
    resp = await client.get(f"/v1/streams/{sid}", params={"last_event_id": f"{sid}:10"})
    assert blocks(await resp.read()) == original[11:]
    resp = await client.get(f"/v1/streams/{sid}")
    assert blocks(await resp.read()) == original


async def test_a_resume_after_the_final_event_is_204(gateway):
    client = await gateway(ScriptedProvider(TOKENS))
    sid, _ = await _finished_stream(client)
    final = len(TOKENS) + 1
    resp = await client.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:{final}"})
    assert resp.status == 204
    assert await resp.read() == b""


async def test_the_chat_urls_resume_instead_of_generating_again(gateway):
    provider = ScriptedProvider(TOKENS)
    client = await gateway(provider)
    sid, raw = await _finished_stream(client)
    assert len(provider.requests) == 1
    headers = {"Last-Event-ID": f"{sid}:5"}
    get = await client.get("/v1/chat/stream", params={"q": "hi"}, headers=headers)
    post = await client.post("/v1/chat/stream", json={"messages": USER}, headers=headers)
    for resp in (get, post):
        assert resp.status == 200
        assert blocks(await resp.read()) == blocks(raw)[6:]
    assert len(provider.requests) == 1  # one generation upstream, whatever the reconnects


@pytest.mark.parametrize(
    ("value", "status", "kind"),
    [
        ("x" * 1_000, 400, "bad_request"),  # (100 KB: aiohttp's parser refuses it first, 400)
        ("no-colon", 400, "bad_request"),
        ("{sid}:-1", 400, "bad_request"),
        ("{sid}:x", 400, "bad_request"),
        ("{sid}:1\x00", 400, "bad_request"),
        ("{sid}:999", 400, "bad_request"),  # past what was sent
        ("0123456789abcdef0123456789abcdef:1", 400, "bad_request"),  # another stream's
    ],
)
async def test_a_bad_last_event_id_is_a_clear_4xx(gateway, value, status, kind):
    client = await gateway(ScriptedProvider(TOKENS))
    sid, _ = await _finished_stream(client)
    resp = await client.get(
        f"/v1/streams/{sid}", params={"last_event_id": value.replace("{sid}", sid)}
    )
    assert resp.status == status
    assert (await resp.json())["type"] == kind


async def test_an_unknown_stream_is_404_and_nothing_else_is_disturbed(gateway):
    client = await gateway(ScriptedProvider(TOKENS))
    sid, raw = await _finished_stream(client)
    for headers in ({}, {"Last-Event-ID": "0123456789abcdef0123456789abcdef:3"}):
        resp = await client.get("/v1/streams/0123456789abcdef0123456789abcdef", headers=headers)
        assert resp.status == 404
        assert (await resp.json())["type"] == "stream_not_found"
    resp = await client.get("/v1/chat/stream", params={"q": "hi"}, headers={"Last-Event-ID": "a:1"})
    assert resp.status == 404
    resp = await client.get(f"/v1/streams/{sid}")
    assert blocks(await resp.read()) == blocks(raw)


async def test_a_position_the_bounded_log_dropped_is_410_naming_the_earliest_held(gateway):
    client = await gateway(
        ScriptedProvider([f"{i:080d}" for i in range(100)]), resume_max_bytes=4096
    )
    sid, raw = await _finished_stream(client)
    resp = await client.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:0"})
    assert resp.status == 410
    error = await resp.json()
    assert error["type"] == "resume_gap"
    earliest = int(error["message"].rsplit(":", 1)[1])
    assert earliest > 1
    # From the earliest held on, the replay is exact.
    resp = await client.get(
        f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:{earliest - 1}"}
    )
    assert blocks(await resp.read()) == blocks(raw)[earliest:]


async def test_readers_follow_a_live_stream_each_from_its_position(gateway):
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    client = await gateway(provider)
    primary = await client.post("/v1/chat/stream", json={"messages": USER})
    events, _ = await read_until(primary, 3)  # start and the two chunks before the gate
    sid = json.loads(events[0].data)["stream_id"]
    followers = [
        await client.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:{n}"})
        for n in (0, 2)
    ]
    gate.set()
    assert await primary.read()  # the primary got the rest too
    whole = await (await client.get(f"/v1/streams/{sid}")).read()
    expected = blocks(whole)
    for n, resp in zip((0, 2), followers, strict=True):
        assert resp.status == 200
        assert blocks(await resp.read()) == expected[n + 1 :]
    assert len(provider.requests) == 1
    assert ids(whole)[-1] == f"{sid}:{len(TOKENS) + 1}"


async def test_a_stream_that_fails_upstream_logs_its_error_event(gateway):
    provider = ScriptedProvider(TOKENS, fail_after=3, error=UpstreamError("boom"))
    client = await gateway(provider)
    sid, raw = await _finished_stream(client)
    events = Decoder().feed(raw)
    assert events[-1].event == "error"
    assert events[-1].id == f"{sid}:4"  # after start and three chunks
    resp = await client.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"})
    assert blocks(await resp.read()) == blocks(raw)[3:]
    resp = await client.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:4"})
    assert resp.status == 204


async def test_a_stream_whose_client_left_ends_its_log_with_interrupted(gateway):
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    client = await gateway(provider)
    primary = await client.post("/v1/chat/stream", json={"messages": USER})
    events, _ = await read_until(primary, 3)
    sid = json.loads(events[0].data)["stream_id"]
    primary.close()
    async with asyncio.timeout(10):
        await provider.closed.wait()
    resp = await client.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"})
    replay = Decoder().feed(await resp.read())
    assert [e.event for e in replay] == ["error"]
    assert json.loads(replay[0].data)["type"] == "interrupted"
    assert replay[0].id == f"{sid}:3"


async def test_resume_off_keeps_no_log(gateway):
    client = await gateway(ScriptedProvider(TOKENS), resume=False)
    sid, _ = await _finished_stream(client)
    resp = await client.get(f"/v1/streams/{sid}")
    assert resp.status == 404
    assert "resume off" in (await resp.json())["message"]


async def test_finished_logs_expire_and_the_total_bound_drops_finished_first():
    registry = Registry(max_bytes=10_000, total_bytes=3_000, ttl=60)
    loop = asyncio.get_running_loop()
    old, live, new = registry.open("old"), registry.open("live"), registry.open("new")
    for stream_log in (old, live, new):
        stream_log.append(b"x" * 1_000)
    old.end(b"y" * 100)
    new.end(b"y" * 100)
    registry.sweep(loop.time())  # 3,200 bytes: over; the oldest finished goes
    assert registry.get("old") is None
    assert registry.get("live") is not None and registry.get("new") is not None
    registry.sweep(loop.time() + 61)  # past the TTL: the finished one expires
    assert registry.get("new") is None
    assert registry.get("live") is live  # a live stream is never dropped for time
    await registry.aclose()


async def test_a_log_trims_its_oldest_events_and_serves_exactly_what_it_holds():
    from engine.streams.log import StreamLog

    stream_log = StreamLog("s", max_bytes=1_000)
    frames = [b"%03d:" % i + b"x" * 45 for i in range(100)]  # 50 bytes each
    stream_log.append(frames[0])
    for i in range(1, 100, 3):
        stream_log.extend(frames[i : i + 3])
    assert stream_log.next == 100
    assert stream_log.size <= 1_000
    first = stream_log.first
    assert first > 0
    assert stream_log.since(first - 1) == b"".join(frames[first:])
    assert stream_log.since(97) == frames[98] + frames[99]
    assert stream_log.since(99) == b""


@pytest.mark.parametrize("grow", ["append", "extend_one", "extend_burst", "end"])
@pytest.mark.parametrize("begin", ["one", "burst"])
async def test_a_log_idle_after_its_first_write_serves_it_and_keeps_growing(begin, grow):
    """A stream idle after its first write holds it as written; the next ones join it in order."""
    from engine.streams.log import StreamLog

    stream_log = StreamLog("s", max_bytes=120)
    assert stream_log.next == 0 and stream_log.since(-1) == b""
    first = [b"id: s.0\ndata: start\n\n"]
    if begin == "burst":
        first.append(b"id: s.1\ndata: hello\n\n")
    stream_log.extend(first)
    assert stream_log.next == len(first) and stream_log.size == len(b"".join(first))
    assert stream_log.since(-1) == b"".join(first)
    assert stream_log.since(len(first) - 2) == first[-1]
    assert stream_log.since(len(first) - 1) == b""
    more = [b"id: s.%d\ndata: %s\n\n" % (i, b"y" * 30) for i in range(len(first), 4)]
    if grow == "append":
        for frame in more:
            stream_log.append(frame)
    elif grow == "extend_one":
        for frame in more:
            stream_log.extend([frame])
    elif grow == "extend_burst":
        stream_log.extend(more)
    else:
        more = [b"event: end\ndata: {}\n\n"]
        stream_log.end(more[0])
    frames = [*first, *more]
    assert stream_log.next == len(frames)
    # Bounded at 120 bytes: the oldest go, at least the newest stays, all served exactly.
    assert stream_log.size <= 120 or stream_log.first == len(frames) - 1
    held = stream_log.first
    assert stream_log.since(held - 1) == b"".join(frames[held:])
    assert stream_log.since(len(frames) - 2) == frames[-1]
    assert stream_log.since(len(frames) - 1) == b""
