"""The Redis stream log (``stream_log = "redis://..."``): two gateways sharing one real Redis.

Each test runs two apps on loopback, "box A" producing and "box B" resuming or
stopping, both with the stream log on the server named by
ENGINE_TEST_REDIS_URL (skipped without it, failed under CI, as the memory
contract). Stream ids are random, so tests share the database without
meeting; their keys expire with ``resume_ttl``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
import redis.asyncio as aioredis

from engine.app import create_app
from engine.errors import InvalidFields
from engine.gateway import ENGINE
from engine.keys import hash_key
from engine.sse import Decoder
from engine.streams.redis_log import KEY_PREFIX, RedisRegistry, check_url
from tests.test_memory_contract import server_url

from .helpers import ScriptedProvider, make_config, read_until

USER = [{"role": "user", "content": "hi"}]
TOKENS = [f"t{i} " for i in range(10)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def url() -> str:
    return server_url("redis")


@pytest.fixture
async def redis(url):
    client = aioredis.from_url(url)
    yield client
    await client.aclose()


def blocks(raw: bytes) -> list[bytes]:
    """The event blocks of a stream's body (the leading retry: line dropped)."""
    body = raw.split(b"\n", 1)[1] if raw.startswith(b"retry:") else raw
    return [block + b"\n\n" for block in body.split(b"\n\n") if block]


def events(raw: bytes):
    return Decoder().feed(raw)


async def boxes(gateway, url, provider=None, **config):
    """Two apps on one Redis stream log: A (with ``provider`` as mock) and B."""
    config.setdefault("stream_log", url)
    a = await gateway(provider, **config)
    b = await gateway(None, **config)
    return a, b


async def written(client) -> None:
    """Until what the app's writer holds is in Redis."""
    await client.engine.registry.writer.drain(5.0)


async def finished_stream(client, body=None) -> tuple[str, bytes]:
    resp = await client.post("/v1/chat/stream", json=body or {"messages": USER})
    raw = await resp.read()
    start = json.loads(events(raw)[0].data)
    await written(client)
    return start["stream_id"], raw


# -- what is kept, and where --------------------------------------------------


async def test_each_event_is_an_entry_0_n_with_the_meta_beside_it(gateway, url, redis):
    a, _ = await boxes(gateway, url, ScriptedProvider(TOKENS), resume_ttl=120)
    sid, raw = await finished_stream(a)
    original = blocks(raw)
    entries = await redis.xrange(KEY_PREFIX + sid)
    final = len(TOKENS) + 1
    assert [entry_id for entry_id, _ in entries] == [f"0-{n}".encode() for n in range(1, final + 1)]
    # Event 0 (start) rides in entry 0-1 and in the meta hash; the last is the final one.
    assert entries[0][1][b"s"] == original[0]
    assert [fields.get(b"f", fields.get(b"e")) for _, fields in entries] == original[1:]
    assert b"e" in entries[-1][1]
    meta = await redis.hgetall(KEY_PREFIX + sid + ":meta")
    assert meta[b"start"] == original[0]
    assert meta[b"final"] == str(final).encode()
    assert meta[b"state"] == b"done"
    assert meta[b"worker"] == a.engine.registry.worker.encode()
    for key in (KEY_PREFIX + sid, KEY_PREFIX + sid + ":meta"):
        assert 0 < await redis.pttl(key) <= 120_000  # expires resume_ttl after the end


async def test_a_resume_on_the_other_box_replays_byte_for_byte(gateway, url):
    a, b = await boxes(gateway, url, ScriptedProvider(TOKENS))
    sid, raw = await finished_stream(a)
    original = blocks(raw)
    resp = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:3"})
    assert resp.status == 200
    assert blocks(await resp.read()) == original[4:]
    resp = await b.get(f"/v1/streams/{sid}")
    assert blocks(await resp.read()) == original
    # EventSource's reconnect after the end is told to stop; junk is refused.
    final = len(TOKENS) + 1
    resp = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:{final}"})
    assert resp.status == 204
    resp = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:{final + 5}"})
    assert resp.status == 400
    resp = await b.get("/v1/streams/0123456789abcdef0123456789abcdef")
    assert resp.status == 404
    assert (await resp.json())["type"] == "stream_not_found"


async def test_a_resume_on_the_other_box_follows_the_live_rest(gateway, url):
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=3)
    a, b = await boxes(gateway, url, provider)
    first = await a.post("/v1/chat/stream", json={"messages": USER})
    seen, _ = await read_until(first, 4)  # start and three chunks
    sid = json.loads(seen[0].data)["stream_id"]
    await written(a)
    resumed = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:1"})
    assert resumed.status == 200
    replay, decoder = await read_until(resumed, 2)
    assert [e.id for e in replay] == [f"{sid}:2", f"{sid}:3"]
    gate.set()
    rest = replay + decoder.feed(await resumed.read())
    original = events(await first.read())
    assert [e.id for e in rest] == [f"{sid}:{n}" for n in range(2, len(TOKENS) + 2)]
    assert [(e.event, e.data) for e in rest] == [(e.event, e.data) for e in seen[2:] + original]
    assert rest[-1].event == "done"


async def test_many_followers_on_a_box_share_one_mirror_and_one_reader(gateway, url):
    gate = asyncio.Event()
    a, b = await boxes(gateway, url, ScriptedProvider(TOKENS, gate=gate, hold_from=2))
    first = await a.post("/v1/chat/stream", json={"messages": USER})
    seen, _ = await read_until(first, 3)
    sid = json.loads(seen[0].data)["stream_id"]
    await written(a)
    followers = [await b.get(f"/v1/streams/{sid}") for _ in range(20)]
    starts = [await read_until(follower, 3) for follower in followers]
    assert len(b.engine.registry.follower) == 1
    gate.set()
    bodies = await asyncio.gather(*(follower.read() for follower in followers))
    whole = seen + events(await first.read())
    for (head, decoder), body in zip(starts, bodies, strict=True):
        got = head + decoder.feed(body)
        assert [(e.id, e.data) for e in got] == [(e.id, e.data) for e in whole]
    assert whole[-1].event == "done"


async def test_a_long_stream_keeps_its_newest_entries_and_refuses_a_gap(gateway, url, redis):
    tokens = [f"w{i} " for i in range(600)]
    a, b = await boxes(gateway, url, ScriptedProvider(tokens), stream_log_maxlen=100)
    sid, raw = await finished_stream(a)
    held = await redis.xlen(KEY_PREFIX + sid)
    assert 100 <= held < 600
    resp = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:1"})
    assert resp.status == 410
    assert (await resp.json())["type"] == "resume_gap"
    resp = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:590"})
    assert resp.status == 200
    assert blocks(await resp.read()) == blocks(raw)[591:]


async def test_an_expired_stream_is_unknown_on_the_other_box(gateway, url, redis):
    a, b = await boxes(gateway, url, ScriptedProvider(TOKENS))
    sid, _ = await finished_stream(a)
    # What expiry does: the keys go (PEXPIRE was checked above).
    await redis.delete(KEY_PREFIX + sid, KEY_PREFIX + sid + ":meta")
    resp = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"})
    assert resp.status == 404


async def test_another_keys_stream_is_404_on_every_box(gateway, url):
    alice, bob = (
        "sk-sse-alice-0123456789abcdefghijklmnop",
        "sk-sse-bob-0123456789abcdefghijklmnopqr",
    )
    keys = {"alice": {"hash": hash_key(alice)}, "bob": {"hash": hash_key(bob)}}
    a, b = await boxes(gateway, url, ScriptedProvider(TOKENS), keys=keys)
    resp = await a.post(
        "/v1/chat/stream",
        json={"messages": USER},
        headers={"Authorization": f"Bearer {alice}"},
    )
    sid = json.loads(events(await resp.read())[0].data)["stream_id"]
    await written(a)
    for box in (a, b):
        as_bob = {"Authorization": f"Bearer {bob}", "Last-Event-ID": f"{sid}:1"}
        resp = await box.get(f"/v1/streams/{sid}", headers=as_bob)
        assert resp.status == 404
        resp = await box.post(f"/v1/streams/{sid}/stop", headers=as_bob)
        assert resp.status == 404
    as_alice = {"Authorization": f"Bearer {alice}", "Last-Event-ID": f"{sid}:1"}
    resp = await b.get(f"/v1/streams/{sid}", headers=as_alice)
    assert resp.status == 200
    assert events(await resp.read())[-1].event == "done"


# -- Stop and a producer that dies ---------------------------------------------


async def test_stop_on_the_other_box_stops_the_producer(gateway, url):
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    a, b = await boxes(gateway, url, provider)
    first = await a.post("/v1/chat/stream", json={"messages": USER})
    seen, decoder = await read_until(first, 3)
    sid = json.loads(seen[0].data)["stream_id"]
    resp = await b.post(f"/v1/streams/{sid}/stop")
    assert resp.status == 200
    assert await resp.json() == {"stream_id": sid, "state": "stopped"}
    assert provider.closed.is_set()  # the upstream was closed before the answer
    rest = decoder.feed(await first.read())
    assert rest[-1].event == "done"
    assert json.loads(rest[-1].data)["finish_reason"] == "stopped"
    # Stopping it again answers how it ended, from either box.
    for box in (a, b):
        resp = await box.post(f"/v1/streams/{sid}/stop")
        assert (await resp.json())["state"] == "stopped"


# Streams with no log (their generation only): model, body, the id's header.
UNLOGGED = {
    "completions": ("/v1/chat/completions", {"model": "mock/x", "messages": USER, "stream": True}),
    "messages": (
        "/v1/messages",
        {"model": "mock/x", "max_tokens": 50, "messages": USER, "stream": True},
    ),
}


def stopped_ending(dialect: str, rest) -> None:
    """``rest`` (the events after the Stop) is the dialect's normal end of a stopped stream."""
    if dialect == "completions":
        assert rest[-1].data == "[DONE]"
        assert json.loads(rest[-2].data)["choices"][0]["finish_reason"] == "stopped"
    else:
        assert rest[-1].event == "message_stop"
        assert [e.event for e in rest].count("message_delta") == 1


@pytest.mark.parametrize("dialect", sorted(UNLOGGED))
async def test_a_stream_with_no_log_is_stopped_through_the_other_box(gateway, url, redis, dialect):
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    a, b = await boxes(gateway, url, provider)
    path, body = UNLOGGED[dialect]
    first = await a.post(path, json=body)
    _, decoder = await read_until(first, 3)
    sid = first.headers["X-Stream-Id"]
    assert await redis.exists(KEY_PREFIX + sid + ":meta") == 0  # (no log: no meta hash)
    resp = await b.post(f"/v1/streams/{sid}/stop")
    assert resp.status == 200
    assert await resp.json() == {"stream_id": sid, "state": "stopped"}
    assert provider.closed.is_set()  # the upstream was closed before the answer
    assert provider.sent == 2
    stopped_ending(dialect, decoder.feed(await first.read()))
    # Stopping it again answers how it ended, from either box.
    for box in (a, b):
        resp = await box.post(f"/v1/streams/{sid}/stop")
        assert await resp.json() == {"stream_id": sid, "state": "stopped"}


async def test_an_app_whose_engine_was_made_outside_a_loop_takes_stops_from_the_start(
    gateway, url, aiohttp_client
):
    """An embedder builds the engine before ``web.run_app`` starts a loop; the
    app's start-up (not the first native stream) starts the Stop listener."""
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    app = await asyncio.to_thread(create_app, make_config(stream_log=url))  # no running loop there
    app[ENGINE].add_provider(provider, "mock")
    a = await aiohttp_client(app)
    b = await gateway(None, stream_log=url)
    path, body = UNLOGGED["completions"]
    first = await a.post(path, json=body)
    _, decoder = await read_until(first, 3)
    resp = await b.post(f"/v1/streams/{first.headers['X-Stream-Id']}/stop")
    assert await resp.json() == {"stream_id": first.headers["X-Stream-Id"], "state": "stopped"}
    stopped_ending("completions", decoder.feed(await first.read()))


async def test_an_ended_stream_with_no_log_answers_how_it_ended_on_the_other_box(gateway, url):
    a, b = await boxes(gateway, url, ScriptedProvider(TOKENS))
    path, body = UNLOGGED["completions"]
    resp = await a.post(path, json=body)
    assert events(await resp.read())[-1].data == "[DONE]"
    resp = await b.post(f"/v1/streams/{resp.headers['X-Stream-Id']}/stop")
    assert resp.status == 200
    assert (await resp.json())["state"] == "done"


async def test_an_unknown_stream_is_404_on_the_other_box_and_a_malformed_id_too(gateway, url):
    _, b = await boxes(gateway, url, ScriptedProvider(TOKENS))
    for sid in ("chatcmpl-0123456789abcdef0123456789abcdef", "not%20an%20id"):
        resp = await b.post(f"/v1/streams/{sid}/stop")
        assert resp.status == 404
        assert (await resp.json())["type"] == "stream_not_found"


async def test_another_keys_stream_with_no_log_is_404_on_every_box(gateway, url):
    alice, bob = (
        "sk-sse-alice-0123456789abcdefghijklmnop",
        "sk-sse-bob-0123456789abcdefghijklmnopqr",
    )
    keys = {"alice": {"hash": hash_key(alice)}, "bob": {"hash": hash_key(bob)}}
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    a, b = await boxes(gateway, url, provider, keys=keys)
    path, body = UNLOGGED["completions"]
    first = await a.post(path, json=body, headers={"Authorization": f"Bearer {alice}"})
    _, decoder = await read_until(first, 3)
    sid = first.headers["X-Stream-Id"]
    for box in (a, b):
        resp = await box.post(f"/v1/streams/{sid}/stop", headers={"Authorization": f"Bearer {bob}"})
        assert resp.status == 404
    assert not provider.closed.is_set()  # still streaming
    resp = await b.post(f"/v1/streams/{sid}/stop", headers={"Authorization": f"Bearer {alice}"})
    assert await resp.json() == {"stream_id": sid, "state": "stopped"}
    stopped_ending("completions", decoder.feed(await first.read()))
    # Ended, it is still only alice's to ask about.
    resp = await b.post(f"/v1/streams/{sid}/stop", headers={"Authorization": f"Bearer {bob}"})
    assert resp.status == 404


async def test_readers_elsewhere_get_producer_lost_when_the_producer_dies(gateway, url):
    """The producer is a real ``python -m engine serve`` killed with SIGKILL."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "engine", "serve", "--port", "0", "--stream-log", url),
        cwd=ROOT,
        env={**os.environ, "ENGINE_MEMORY_URL": "memory://", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        b = await gateway(None, stream_log=url)
        body = {"messages": USER, "options": {"max_tokens": 1000, "interval_ms": 50}}
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"http://127.0.0.1:{port}/v1/chat/stream", json=body)
            seen, _ = await read_until(resp, 5)
            sid = json.loads(seen[0].data)["stream_id"]
            follower = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"})
            assert follower.status == 200
            head, decoder = await read_until(follower, 2)
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
            rest = head + decoder.feed(await asyncio.wait_for(follower.read(), 15))
        last = rest[-1]
        assert last.event == "error"
        assert json.loads(last.data)["type"] == "producer_lost"
        produced = int(last.id.split(":")[1])
        assert [e.id for e in rest] == [f"{sid}:{n}" for n in range(3, produced + 1)]
        # What it produced stays replayable; a later resume ends the same way.
        resp = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"})
        again = events(await resp.read())
        assert [e.id for e in again] == [e.id for e in rest]
        assert json.loads(again[-1].data)["type"] == "producer_lost"
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)


# -- Redis going away --------------------------------------------------------------


class CuttableProxy:
    """A loopback TCP proxy to the real Redis that the test can cut and restore."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        self.writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.append(up_writer)
        await asyncio.gather(self.pipe(reader, up_writer), self.pipe(up_reader, writer))

    @staticmethod
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        await self.server.wait_closed()


@pytest.fixture
async def proxied(url):
    parts = urlsplit(url)
    proxy = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    netloc = parts.netloc.rpartition("@")
    proxy.url = urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}127.0.0.1:{proxy.port}"))
    yield proxy
    if proxy.server is not None and proxy.server.is_serving():
        await proxy.cut()


async def test_redis_going_down_mid_stream_never_stalls_it_and_resumes_answer_503(gateway, proxied):
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=3)
    a, b = await boxes(gateway, proxied.url, provider)
    first = await a.post("/v1/chat/stream", json={"messages": USER})
    seen, decoder = await read_until(first, 4)
    sid = json.loads(seen[0].data)["stream_id"]
    await written(a)
    await proxied.cut()
    gate.set()
    # The live stream goes on to its end, every event there.
    rest = decoder.feed(await first.read())
    assert [e.id for e in seen + rest] == [f"{sid}:{n}" for n in range(len(TOKENS) + 2)]
    assert rest[-1].event == "done"
    await written(a)  # (until the writer learnt that Redis is gone)
    assert a.engine.registry.unlogged == 1
    metrics = await (await a.get("/metrics")).text()
    assert "sse_engine_stream_log_unlogged_total 1.0" in metrics
    # Elsewhere a resume cannot be served: 503 with Retry-After.
    resp = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "2"
    assert (await resp.json())["type"] == "stream_log_unavailable"
    # Its own box still serves it from memory.
    resp = await a.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"})
    assert resp.status == 200
    assert events(await resp.read())[-1].event == "done"
    # Redis back: the stream is marked broken, and still refused elsewhere, with why.
    await proxied.start()
    await asyncio.wait_for(a.engine.registry.writer.reachable.wait(), 10)  # (a probe a second)
    await written(a)
    resp = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:2"})
    assert resp.status == 503
    assert "not logged" in (await resp.json())["message"]
    # New streams are logged again.
    sid2, raw2 = await finished_stream(a)
    resp = await b.get(f"/v1/streams/{sid2}")
    assert blocks(await resp.read()) == blocks(raw2)


async def test_a_redis_that_refuses_connections_leaves_streams_whole(gateway, proxied):
    await proxied.cut()
    a = await gateway(ScriptedProvider(TOKENS), stream_log=proxied.url)
    resp = await a.post("/v1/chat/stream", json={"messages": USER})
    got = events(await resp.read())
    assert got[-1].event == "done"
    assert len(got) == len(TOKENS) + 2
    resp = await a.post(f"/v1/streams/{got[0].id.split(':')[0]}/stop")
    assert resp.status == 200  # (it ended here: answered from memory)


async def test_a_stop_for_another_box_while_redis_is_down_is_503(gateway, proxied):
    await proxied.cut()
    b = await gateway(None, stream_log=proxied.url)
    resp = await b.post("/v1/streams/chatcmpl-0123456789abcdef0123456789abcdef/stop")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "2"
    assert (await resp.json())["type"] == "stream_log_unavailable"


async def test_entries_that_are_not_ours_are_an_error_event_not_a_crash(gateway, url, redis):
    gate = asyncio.Event()
    a, b = await boxes(gateway, url, ScriptedProvider(TOKENS, gate=gate, hold_from=2))
    first = await a.post("/v1/chat/stream", json={"messages": USER})
    seen, _ = await read_until(first, 3)
    sid = json.loads(seen[0].data)["stream_id"]
    await written(a)
    follower = await b.get(f"/v1/streams/{sid}")
    await read_until(follower, 3)
    # Someone writes far ahead into the stream: its events stop lining up.
    await redis.xadd(KEY_PREFIX + sid, {"x": "y"}, id="0-500")
    rest = events(await asyncio.wait_for(follower.read(), 10))
    assert rest[-1].event == "error"
    gate.set()
    assert events(await first.read())[-1].event == "done"  # the live stream is unaffected


async def test_a_stream_deleted_by_hand_goes_on_and_its_resume_says_what_is_gone(
    gateway, url, redis
):
    """As after a Redis that restarted empty: the next writes start the log again."""
    gate = asyncio.Event()
    a, b = await boxes(gateway, url, ScriptedProvider(TOKENS, gate=gate, hold_from=3))
    first = await a.post("/v1/chat/stream", json={"messages": USER})
    seen, decoder = await read_until(first, 4)
    sid = json.loads(seen[0].data)["stream_id"]
    await written(a)
    await redis.delete(KEY_PREFIX + sid, KEY_PREFIX + sid + ":meta")
    gate.set()
    rest = decoder.feed(await first.read())
    assert [e.id for e in seen + rest] == [f"{sid}:{n}" for n in range(len(TOKENS) + 2)]
    await written(a)
    resp = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:1"})
    assert resp.status == 410
    assert f"the earliest still held is {sid}:4" in (await resp.json())["message"]
    resp = await b.get(f"/v1/streams/{sid}", headers={"Last-Event-ID": f"{sid}:8"})
    assert [(e.id, e.data) for e in events(await resp.read())] == [
        (e.id, e.data) for e in rest[-3:]
    ]


# -- configuration --------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["http://127.0.0.1:6379/0", "redis://", "redis://h:99999/0", "redis://h/x", "junk"]
)
def test_a_malformed_stream_log_url_is_a_clear_error(bad):
    with pytest.raises(InvalidFields, match="stream_log must be redis://"):
        check_url(bad)


def test_serve_refuses_a_malformed_stream_log_url_at_start():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--stream-log", "redis://:pw@h:notaport/0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "ENGINE_MEMORY_URL": "memory://"},
    )
    assert out.returncode == 2
    assert "stream_log must be redis://" in out.stderr
    assert "pw" not in out.stderr and "Traceback" not in out.stderr


def test_the_stream_log_comes_from_the_environment_and_the_file(tmp_path, url):
    from engine.config import Config

    assert Config.load(environ={"SSE_ENGINE_STREAM_LOG": url}).stream_log == url
    path = tmp_path / "engine.toml"
    path.write_text(f'stream_log = "{url}"\nstream_log_maxlen = 500\n')
    config = Config.load(path, environ={})
    assert (config.stream_log, config.stream_log_maxlen) == (url, 500)


async def test_the_engine_uses_the_redis_registry_only_with_a_stream_log(gateway, url):
    on = await gateway(None, stream_log=url)
    off = await gateway(None)
    assert isinstance(on.engine.registry, RedisRegistry)
    assert not isinstance(off.engine.registry, RedisRegistry)


# -- /v1/responses across boxes ------------------------------------------------------


def sdk(client, key: str = "unused"):
    """The official OpenAI SDK pointed at one box."""
    import openai

    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=key, max_retries=0)


def shared_memory(tmp_path) -> dict[str, str]:
    """One memory for both boxes (stored responses): a SQLite file they both open."""
    return {"memory_url": f"sqlite:///{tmp_path}/memory.db"}


async def held_response(a, count: int, headers=None):
    """A streamed response on box A, read until ``count`` events; (its id, the events,
    the open response, its decoder), once what A logged is in Redis."""
    body = {"model": "mock/x", "input": "hi", "stream": True}
    resp = await a.post("/v1/responses", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    seen, decoder = await read_until(resp, count)
    await written(a)
    return json.loads(seen[0].data)["response"]["id"], seen, resp, decoder


def sequence(got) -> list[int]:
    return [json.loads(e.data)["sequence_number"] for e in got]


async def test_a_response_resumed_on_the_other_box_replays_then_follows_it_live(gateway, url):
    gate = asyncio.Event()
    a, b = await boxes(gateway, url, ScriptedProvider(TOKENS, gate=gate, hold_from=3))
    rid, seen, first, decoder = await held_response(a, 7)  # (through the third delta)
    assert seen[-1].event == "response.output_text.delta"
    assert rid.startswith("resp_") and "-w" not in rid  # (one worker: no tag)
    resumed = await b.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": "2"})
    assert resumed.status == 200
    assert resumed.headers["Content-Type"].startswith("text/event-stream")
    replay, resumed_decoder = await read_until(resumed, len(seen) - 3)
    gate.set()
    rest = replay + resumed_decoder.feed(await resumed.read())
    whole = seen + decoder.feed(await first.read())
    # Exactly what A sent after event 2: the same names, the same bytes, numbered on.
    assert [(e.event, e.data) for e in rest] == [(e.event, e.data) for e in whole[3:]]
    assert sequence(rest) == list(range(3, len(whole)))
    assert rest[-1].event == "response.completed"
    # The SDK resumes there the same way, once it ended.
    client = sdk(b)
    async with client:
        again = await client.responses.retrieve(rid, stream=True, starting_after=len(whole) - 3)
        tail = [event async for event in again]
    assert [e.sequence_number for e in tail] == [len(whole) - 2, len(whole) - 1]
    assert tail[-1].type == "response.completed"
    assert tail[-1].response.output_text == "".join(TOKENS)


@pytest.mark.parametrize("memory", ["shared", "own"])
async def test_a_cancel_on_the_other_box_stops_the_producer_and_answers_cancelled(
    gateway, url, tmp_path, memory
):
    """With one memory B answers the stored response; with each box its own, the
    object the response's last event carries in the log: the same either way."""
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    config = shared_memory(tmp_path) if memory == "shared" else {}
    a, b = await boxes(gateway, url, provider, **config)
    rid, _, first, decoder = await held_response(a, 6)  # (through the second delta)
    client = sdk(b)
    async with client:
        cancelled = await client.responses.cancel(rid)
        assert provider.closed.is_set()  # the upstream was closed before the answer
        assert provider.sent == 2
        assert cancelled.id == rid and cancelled.status == "cancelled"
        assert cancelled.output_text == "t0 t1 "
        rest = decoder.feed(await first.read())
        assert rest[-1].event == "response.incomplete"
        final = json.loads(rest[-1].data)["response"]
        assert cancelled.model_dump(mode="json", exclude_unset=True) == final
        # Cancelling it again answers it as it ended: an ended response is the store's,
        # so on B only with the memory shared (with its own, B knows it no more than a GET).
        if memory == "shared":
            assert (await client.responses.cancel(rid)).status == "cancelled"
            got = await client.responses.retrieve(rid)
            assert got.status == "cancelled" and got.output_text == "t0 t1 "
        else:
            import openai

            for ask in (client.responses.cancel, client.responses.retrieve):
                with pytest.raises(openai.NotFoundError):
                    await ask(rid)
    resp = await a.post(f"/v1/responses/{rid}/cancel")
    assert (await resp.json())["status"] == "cancelled"


async def test_a_response_generating_on_one_box_is_in_progress_on_the_other(gateway, url, tmp_path):
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    a, b = await boxes(gateway, url, provider, **shared_memory(tmp_path))
    rid, _, first, _ = await held_response(a, 6)
    client = sdk(b)
    async with client:
        polled = await client.responses.retrieve(rid)
        assert polled.status == "in_progress"
        assert polled.output_text == "t0 t1 "  # its output so far, as its own box shows it
        on_a = await (await a.get(f"/v1/responses/{rid}")).json()
        assert await (await b.get(f"/v1/responses/{rid}")).json() == on_a
        # Its input items are stored with the reply: until then only its box lists them.
        assert (await a.get(f"/v1/responses/{rid}/input_items")).status == 200
        gate.set()
        whole = events(await first.read())
        assert whole[-1].event == "response.completed"
        done = await client.responses.retrieve(rid)
        assert done.status == "completed" and done.output_text == "".join(TOKENS)
        items = await client.responses.input_items.list(rid)
        assert [item.content[0].text for item in items.data] == ["hi"]
        assert (
            done.model_dump(mode="json", exclude_unset=True)
            == json.loads(whole[-1].data)["response"]
        )


async def test_a_response_ended_elsewhere_with_store_false_stays_unknown(gateway, url, tmp_path):
    a, b = await boxes(gateway, url, ScriptedProvider(TOKENS), **shared_memory(tmp_path))
    body = {"model": "mock/x", "input": "hi", "stream": True, "store": False}
    resp = await a.post("/v1/responses", json=body)
    rid = json.loads(events(await resp.read())[0].data)["response"]["id"]
    await written(a)
    for box in (a, b):
        resp = await box.get(f"/v1/responses/{rid}")
        assert resp.status == 404, box
        assert (await resp.json())["error"]["code"] == "response_not_found"
    # (Its events are still there to stream again, as on its own box.)
    resp = await b.get(f"/v1/responses/{rid}", params={"stream": "true"})
    assert events(await resp.read())[-1].event == "response.completed"


async def test_a_delete_on_the_other_box_stops_the_response_and_forgets_it(gateway, url, tmp_path):
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    a, b = await boxes(gateway, url, provider, **shared_memory(tmp_path))
    rid, _, first, decoder = await held_response(a, 6)
    resp = await b.delete(f"/v1/responses/{rid}")
    assert resp.status == 200
    assert await resp.json() == {"id": rid, "object": "response", "deleted": True}
    assert provider.closed.is_set()
    assert decoder.feed(await first.read())[-1].event == "response.incomplete"
    # Its partial reply was stored before the delete, not after it.
    for box in (a, b):
        assert (await box.get(f"/v1/responses/{rid}")).status == 404
        assert (await box.delete(f"/v1/responses/{rid}")).status == 404


async def test_another_keys_response_is_404_on_every_box(gateway, url, tmp_path):
    alice, bob = (
        "sk-sse-alice-0123456789abcdefghijklmnop",
        "sk-sse-bob-0123456789abcdefghijklmnopqr",
    )
    keys = {"alice": {"hash": hash_key(alice)}, "bob": {"hash": hash_key(bob)}}
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    a, b = await boxes(gateway, url, provider, keys=keys, **shared_memory(tmp_path))
    as_alice, as_bob = ({"Authorization": f"Bearer {key}"} for key in (alice, bob))
    rid, _, first, decoder = await held_response(a, 6, headers=as_alice)
    for box in (a, b):
        for method, path, params in (
            ("GET", f"/v1/responses/{rid}", {}),
            ("GET", f"/v1/responses/{rid}", {"stream": "true", "starting_after": "1"}),
            ("GET", f"/v1/responses/{rid}/input_items", {}),
            ("POST", f"/v1/responses/{rid}/cancel", {}),
            ("DELETE", f"/v1/responses/{rid}", {}),
        ):
            resp = await box.request(method, path, params=params, headers=as_bob)
            assert resp.status == 404, (method, path, params, await resp.text())
    assert not provider.closed.is_set()  # still generating: Bob's cancel stopped nothing
    resp = await b.get(f"/v1/responses/{rid}", headers=as_alice)
    assert (await resp.json())["status"] == "in_progress"
    resp = await b.post(f"/v1/responses/{rid}/cancel", headers=as_alice)
    assert (await resp.json())["status"] == "cancelled"
    assert decoder.feed(await first.read())[-1].event == "response.incomplete"
    for box in (a, b):  # ended, it is still only Alice's
        assert (await box.get(f"/v1/responses/{rid}", headers=as_bob)).status == 404


async def test_a_background_response_is_polled_and_streamed_from_the_other_box(
    gateway, url, tmp_path
):
    gate = asyncio.Event()
    provider = ScriptedProvider(TOKENS, gate=gate, hold_from=2)
    a, b = await boxes(gateway, url, provider, **shared_memory(tmp_path))
    async with sdk(a) as on_a, sdk(b) as on_b:
        created = await on_a.responses.create(model="mock/x", input="hi", background=True)
        assert created.status == "queued"
        await provider.started.wait()
        await written(a)
        polled = await on_b.responses.retrieve(created.id)
        assert polled.status == "in_progress" and polled.background is True
        gate.set()
        stream = await on_b.responses.retrieve(created.id, stream=True, starting_after=0)
        got = [event async for event in stream]
        assert [e.sequence_number for e in got] == list(range(1, len(got) + 1))
        assert got[0].type == "response.queued" and got[-1].type == "response.completed"
        done = await on_b.responses.retrieve(created.id)
        assert done.status == "completed" and done.output_text == "".join(TOKENS)
