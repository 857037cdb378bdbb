"""``serve --workers 2`` as a real process tree: one port, resume and Stop on any worker.

Each test runs ``python -m engine serve --workers 2`` (the mock provider, a
SQLite memory file) on a free loopback port and talks to it over TCP like any
client.

Which worker a connection reaches is the kernel's choice (``SO_REUSEPORT``
hashes the connection's addresses). To act through a given worker the tests
open connections until one lands there: :func:`on_worker` opens a session of
a single kept-alive connection and asks ``/healthz``, which names the worker
that answered when there are several; the next requests of that session go
over the same connection, so to the same worker. Nothing test-only is exposed:
``/healthz``'s ``worker`` is public, and the stream id's ``-w<slot>`` says
which worker holds a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from engine.client import iter_events
from engine.sse import Decoder
from engine.workers import count_workers

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT (Linux, BSD)"
)

ROOT = Path(__file__).resolve().parent.parent
ALICE = "sk-sse-alice-0123456789abcdefghijklmn"
BOB = "sk-sse-bob-0123456789abcdefghijklmnopq"
METRICS_KEY = "metrics-key-0123456789abcdefghij"
KEYED = f"""
metrics_key = "{METRICS_KEY}"
[keys.alice]
key = "{ALICE}"
[keys.bob]
key = "{BOB}"
"""
_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
_AGAIN = re.compile(r"worker (\d+) ready again \(pid (\d+)\)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Tree:
    """A ``serve --workers 2`` process tree: its URL, its workers' pids, its log lines."""

    def __init__(self, tmp: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "engine", "serve", "--port", str(self.port),
                "--workers", "2", "--memory", f"sqlite:///{tmp}/memory.db",
                "--shutdown-grace", "0.5", "--log-level", "info", *flags,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()
        self.banner = self.proc.stdout.readline()
        self.pids = {int(slot): int(pid) for slot, pid in self.wait_for(_STARTED, 2)}

    def _read(self, stream) -> None:
        with stream:
            for line in stream:
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], count: int = 1, timeout: float = 30):
        """The first ``count`` matches of ``pattern`` in the log (waiting for them)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m.groups() for line in self.lines if (m := pattern.search(line))]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, "".join(self.lines)
                self._changed.wait(left)

    def runtime_dir(self) -> str:
        """The parent's runtime folder, as its workers' command lines name it."""
        pid = self.pids[0]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return argv[argv.index(b"--worker") + 1].decode().split(",", 3)[3]

    def log(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids.values():  # never leave a worker behind, whatever failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.stdout.close()


@contextlib.contextmanager
def tree(tmp: Path, *flags: str):
    running = Tree(tmp, *flags)
    try:
        assert "(2 workers" in running.banner, running.banner + running.log()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """One tree for the tests that leave it running, with two client keys."""
    tmp = tmp_path_factory.mktemp("workers")
    (tmp / "keys.toml").write_text(KEYED)
    with tree(tmp, "--config", str(tmp / "keys.toml")) as running:
        yield running


def auth(key: str = ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def on_worker(url: str, slot: int, headers: dict[str, str] | None = None):
    """A session whose one kept-alive connection reaches worker ``slot`` (module docstring)."""
    for _ in range(200):
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), headers=headers or auth()
        )
        async with session.get(f"{url}/healthz") as resp:
            answered = (await resp.json())["worker"]
        if answered == slot:
            return session
        await session.close()
    raise AssertionError(f"no connection reached worker {slot} in 200 tries")


async def worker_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/healthz") as resp:
        return (await resp.json())["worker"]


def body(tokens: int = 3, interval_ms: int = 0, **options) -> dict:
    return {
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"max_tokens": tokens, "interval_ms": interval_ms, **options},
    }


async def read_some(resp: aiohttp.ClientResponse, count: int):
    """The first ``count`` events of an open stream."""
    decoder, events = Decoder(), []
    while len(events) < count:
        data = await resp.content.readany()
        assert data, f"the stream ended after {events!r}"
        events += decoder.feed(data)
    return events


async def scrape(url: str) -> dict[str, float]:
    """``/metrics`` through a new connection (so any worker), as {series: value}."""
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            text = await resp.text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def test_auto_is_the_cpus_this_process_may_use():
    assert count_workers("auto") == len(os.sched_getaffinity(0))
    assert count_workers(3) == 3


async def test_streams_land_on_both_workers_and_their_ids_say_which(keyed):
    seen: dict[int, str] = {}
    for _ in range(100):
        async with aiohttp.ClientSession(headers=auth()) as session:
            slot = await worker_of(session, keyed.url)  # (the same connection)
            async with session.post(f"{keyed.url}/v1/chat/stream", json=body()) as resp:
                events = [event async for event in iter_events(resp)]
        start = json.loads(events[0].data)
        assert start["stream_id"].endswith(f"-w{slot}")
        assert events[-1].event == "done"
        seen[slot] = start["stream_id"]
        if len(seen) == 2:
            break
    assert sorted(seen) == [0, 1]


async def test_a_resume_on_the_other_worker_gets_the_rest_exactly_once(keyed):
    ended_before = (await scrape(keyed.url)).get('sse_engine_streams_ended_total{reason="done"}', 0)
    first = await on_worker(keyed.url, 0)
    async with first:
        # detach: the generation goes on after its client is cut, as after a lost connection.
        async with first.post(f"{keyed.url}/v1/chat/stream", json=body(30, 20, detach=30)) as resp:
            before = await read_some(resp, 5)
        # (leaving the block drops the connection: the client is gone mid-stream)
    stream_id = json.loads(before[0].data)["stream_id"]
    assert stream_id.endswith("-w0")
    assert [e.id for e in before] == [f"{stream_id}:{n}" for n in range(5)]

    other = await on_worker(keyed.url, 1)
    async with other:
        async with other.get(
            f"{keyed.url}/v1/streams/{stream_id}", headers={"Last-Event-ID": f"{stream_id}:4"}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            rest = [event async for event in iter_events(resp)]
        # The whole stream again, from its start, still through worker 1.
        async with other.get(f"{keyed.url}/v1/streams/{stream_id}") as resp:
            whole = [event async for event in iter_events(resp)]
        assert await worker_of(other, keyed.url) == 1  # (it was that connection throughout)

    ids = [e.id for e in before + rest]
    assert ids == [f"{stream_id}:{n}" for n in range(len(ids))]  # no gap, no duplicate
    assert rest[-1].event == "done" and len(ids) == 32  # start, 30 chunks, done
    assert [(e.id, e.event, e.data) for e in whole] == [
        (e.id, e.event, e.data) for e in before + rest
    ]
    # One generation: the resume read the owner's log, it did not ask the provider again.
    ended = (await scrape(keyed.url))['sse_engine_streams_ended_total{reason="done"}']
    assert ended == ended_before + 1


async def test_eventsource_reconnect_with_last_event_id_on_the_chat_url_is_relayed_too(keyed):
    first = await on_worker(keyed.url, 1)
    async with first:
        async with first.post(f"{keyed.url}/v1/chat/stream", json=body(10, 10, detach=30)) as resp:
            before = await read_some(resp, 3)
    stream_id = json.loads(before[0].data)["stream_id"]
    other = await on_worker(keyed.url, 0)
    async with other:
        # What fetch-event-source does: the same POST, with the last id seen.
        async with other.post(
            f"{keyed.url}/v1/chat/stream",
            json=body(10, 10),
            headers={"Last-Event-ID": before[-1].id},
        ) as resp:
            rest = [event async for event in iter_events(resp)]
    ids = [e.id for e in before + rest]
    assert ids == [f"{stream_id}:{n}" for n in range(12)]


async def test_stop_through_the_other_worker_ends_the_stream_there(keyed):
    owner = await on_worker(keyed.url, 1)
    other = await on_worker(keyed.url, 0)
    async with owner, other:
        async with owner.post(f"{keyed.url}/v1/chat/stream", json=body(500, 20)) as resp:
            events = await read_some(resp, 3)
            stream_id = json.loads(events[0].data)["stream_id"]
            assert stream_id.endswith("-w1")
            async with other.post(f"{keyed.url}/v1/streams/{stream_id}/stop") as stopped:
                assert stopped.status == 200
                assert await stopped.json() == {"stream_id": stream_id, "state": "stopped"}
            events += [event async for event in iter_events(resp)]
        # Stopping it again, through either: how it ended.
        async with other.post(f"{keyed.url}/v1/streams/{stream_id}/stop") as again:
            assert (await again.json())["state"] == "stopped"
    assert events[-1].event == "done"
    assert json.loads(events[-1].data)["finish_reason"] == "stopped"
    assert len(events) < 100  # cut short, not run to its 500 chunks


async def test_an_openai_stream_is_stopped_through_the_other_worker(keyed):
    owner = await on_worker(keyed.url, 0)
    other = await on_worker(keyed.url, 1)
    request = {
        "model": "mock",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 500,  # (the mock's default cadence: a chunk every 20 ms)
    }
    async with owner, other:
        async with owner.post(f"{keyed.url}/v1/chat/completions", json=request) as resp:
            assert resp.status == 200, await resp.text()
            completion_id = resp.headers["X-Stream-Id"]
            assert completion_id.startswith("chatcmpl-") and completion_id.endswith("-w0")
            await read_some(resp, 2)
            async with other.post(f"{keyed.url}/v1/streams/{completion_id}/stop") as stopped:
                assert (await stopped.json())["state"] == "stopped"
            events = [event async for event in iter_events(resp)]
    assert events[-1].data == "[DONE]"
    assert len(events) < 100


async def test_another_key_gets_404_on_every_worker(keyed):
    owner = await on_worker(keyed.url, 0)
    bob = await on_worker(keyed.url, 1, headers=auth(BOB))
    async with owner, bob:
        async with owner.post(f"{keyed.url}/v1/chat/stream", json=body(200, 20)) as resp:
            events = await read_some(resp, 2)
            stream_id = json.loads(events[0].data)["stream_id"]
            async with bob.get(f"{keyed.url}/v1/streams/{stream_id}") as denied:
                assert denied.status == 404
                assert (await denied.json())["type"] == "stream_not_found"
            async with bob.post(f"{keyed.url}/v1/streams/{stream_id}/stop") as denied:
                assert denied.status == 404
            async with bob.get(f"{keyed.url}/v1/streams/{stream_id}", headers=auth("")) as anon:
                assert anon.status == 401  # (refused where it arrived)
            # Still streaming, untouched: Bob's Stop stopped nothing.
            more = await read_some(resp, 5)
            assert all(e.event != "done" for e in more)


async def test_a_stream_id_naming_no_worker_is_not_found(keyed):
    async with aiohttp.ClientSession(headers=auth()) as session:
        for stream_id in ("0123abcd-w7", "0123abcd-w1", "nosuch"):
            async with session.get(f"{keyed.url}/v1/streams/{stream_id}") as resp:
                assert resp.status == 404
                assert (await resp.json())["type"] == "stream_not_found"


async def test_one_scrape_adds_up_every_worker(keyed):
    before = await scrape(keyed.url)
    counts = {0: 0, 1: 0}
    for slot, streams in ((0, 2), (1, 3)):
        session = await on_worker(keyed.url, slot)
        async with session:
            for _ in range(streams):
                async with session.post(f"{keyed.url}/v1/chat/stream", json=body(4)) as resp:
                    events = [event async for event in iter_events(resp)]
                assert events[-1].event == "done"
                counts[slot] += 1
    done = 'sse_engine_streams_ended_total{reason="done"}'
    for slot in (0, 1):  # the same totals whichever worker answers the scrape
        session = await on_worker(
            keyed.url, slot, headers={"Authorization": f"Bearer {METRICS_KEY}"}
        )
        async with session:
            async with session.get(
                f"{keyed.url}/metrics", headers={"X-SSE-Engine-Sibling": "0"}
            ) as resp:  # (the sibling header from outside is ignored: still the whole server)
                text = await resp.text()
        values = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
        assert float(values[done]) == before.get(done, 0) + 5
        assert (
            float(values["sse_engine_relayed_chunks_total"])
            == before["sse_engine_relayed_chunks_total"] + 5 * 4
        )
        assert float(values["sse_engine_workers_reporting"]) == 2
    assert text.count("# TYPE sse_engine_streams_ended_total counter") == 1


async def test_two_workers_writing_one_conversation_keep_every_message(keyed):
    url = f"{keyed.url}/v1/memory/ChatSession/shared-1"
    sessions = [await on_worker(keyed.url, slot) for slot in (0, 1, 0, 1)]

    async def write(session: aiohttp.ClientSession, writer: int) -> None:
        for n in range(15):
            message = {"role": "user", "content": f"writer {writer} message {n}"}
            async with session.post(f"{url}/messages", json=message) as resp:
                assert resp.status == 201, await resp.text()

    try:
        await asyncio.gather(*(write(session, i) for i, session in enumerate(sessions)))
        async with sessions[0].get(url) as resp:
            stored = (await resp.json())["messages"]
    finally:
        for session in sessions:
            await session.close()
    contents = [message["content"] for message in stored]
    assert len(contents) == 60
    assert sorted(contents) == sorted(
        f"writer {w} message {n}" for w in range(4) for n in range(15)
    )
    for writer in range(4):  # each writer's messages in the order it wrote them
        mine = [c for c in contents if c.startswith(f"writer {writer} ")]
        assert mine == [f"writer {writer} message {n}" for n in range(15)]


async def test_a_killed_worker_is_replaced_and_the_other_streams_go_on(tmp_path):
    with tree(tmp_path) as running:
        url = running.url
        survivor = await on_worker(url, 0, headers={})
        follower = await on_worker(url, 0, headers={})
        victim = await on_worker(url, 1, headers={})
        async with survivor, follower, victim:
            async with survivor.post(f"{url}/v1/chat/stream", json=body(40, 25)) as alive:
                first = await read_some(alive, 2)
                # A stream of worker 1, followed through worker 0.
                async with victim.post(
                    f"{url}/v1/chat/stream", json=body(400, 25, detach=30)
                ) as doomed:
                    doomed_id = json.loads((await read_some(doomed, 1))[0].data)["stream_id"]
                    async with follower.get(f"{url}/v1/streams/{doomed_id}") as followed:
                        await read_some(followed, 2)
                        os.kill(running.pids[1], signal.SIGKILL)
                        cut = [event async for event in iter_events(followed)]
                rest = [event async for event in iter_events(alive)]
        # The follower learnt that the producer is gone; it was not left hanging.
        assert cut[-1].event == "error"
        assert json.loads(cut[-1].data)["type"] == "producer_lost"
        # Worker 0's stream never noticed.
        stream_id = json.loads(first[0].data)["stream_id"]
        assert [e.id for e in first + rest] == [f"{stream_id}:{n}" for n in range(42)]
        assert rest[-1].event == "done"

        ((slot, pid),) = running.wait_for(_AGAIN)
        assert int(slot) == 1 and int(pid) != running.pids[1]
        running.pids[2] = int(pid)  # (stop() kills it too, should anything fail)
        assert re.search(
            r"worker 1 \(pid \d+\) was killed by SIGKILL .* restarting it in", running.log()
        )
        replacement = await on_worker(url, 1, headers={})
        async with replacement:
            async with replacement.post(f"{url}/v1/chat/stream", json=body(3)) as resp:
                events = [event async for event in iter_events(resp)]
            assert events[-1].event == "done"
            # The dead worker's streams died with it: a clear 404, from either worker.
            async with replacement.get(f"{url}/v1/streams/{doomed_id}") as resp:
                assert resp.status == 404


async def test_sigterm_drains_every_worker_with_the_farewell_and_exits_0(tmp_path):
    with tree(tmp_path) as running:
        url = running.url
        sessions = [await on_worker(url, slot, headers={}) for slot in (0, 1)]
        responses = []
        try:
            for session in sessions:
                resp = await session.post(f"{url}/v1/chat/stream", json=body(1000, 50))
                await read_some(resp, 2)
                responses.append(resp)
            running.proc.send_signal(signal.SIGTERM)
            endings = [[event async for event in iter_events(resp)][-1] for resp in responses]
        finally:
            for resp in responses:
                resp.close()
            for session in sessions:
                await session.close()
        for ending in endings:
            assert ending.event == "error"
            assert json.loads(ending.data)["type"] == "shutdown"
        assert await asyncio.to_thread(running.proc.wait, 20) == 0
        for pid in running.pids.values():  # no orphan: the parent waited for every worker
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert "Traceback" not in running.log()
        assert "all workers stopped" in running.log()


async def test_port_0_gives_every_worker_the_same_port(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "serve", "--port", "0", "--workers", "2",
        "--memory", f"sqlite:///{tmp_path}/m.db", cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        assert not url.endswith(":0")
        for slot in (0, 1):
            session = await on_worker(url, slot, headers={})
            await session.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def exited(pid: int) -> None:
    """Wait until process ``pid`` (not our child) has exited: its pidfd becomes readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, done.set_result, None)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_workers_outlive_no_parent_killed_with_sigkill(tmp_path):
    with tree(tmp_path) as running:
        runtime_dir = running.runtime_dir()
        assert os.stat(runtime_dir).st_mode & 0o777 == 0o700  # (private to this user)
        running.proc.kill()
        running.proc.wait()
        # They see the parent's end of their socket pair close, drain and exit.
        await asyncio.wait_for(asyncio.gather(*map(exited, running.pids.values())), 20)
        assert running.log().count("the parent process is gone") == 2
        # ...and the last to leave removed the runtime folder the parent could not.
        with pytest.raises(FileNotFoundError):
            os.stat(runtime_dir)


# -- the config, and the merge of expositions ------------------------------------------


def test_workers_come_from_the_flag_the_environment_and_the_file(tmp_path):
    from engine import cli
    from engine.config import Config

    def flags(*argv):
        return cli._load_config(cli._parser().parse_args(["serve", *argv])).workers

    assert flags() == 1
    assert flags("--workers", "3") == 3
    assert flags("--workers", "auto") == "auto"
    assert Config.load(environ={"ENGINE_WORKERS": "4"}).workers == 4
    (tmp_path / "c.toml").write_text('workers = "auto"\n')
    assert Config.load(tmp_path / "c.toml", environ={}).workers == "auto"


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5"])
def test_a_bad_worker_count_is_a_usage_error(value, capsys):
    from engine import cli

    with pytest.raises(SystemExit) as exit_:
        cli._parser().parse_args(["serve", "--workers", value])
    assert exit_.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_a_bad_worker_count_in_the_environment_is_a_clear_error():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--port", "0"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "ENGINE_WORKERS": "zero"},
    )  # fmt: skip
    assert out.returncode == 2
    assert "invalid configuration" in out.stderr and "workers" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_port_in_use_stops_the_parent_with_an_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "engine", "serve", "--port", str(port), "--workers", "2",
             "--memory", f"sqlite:///{tmp_path}/m.db"],
            capture_output=True, text=True, cwd=ROOT, timeout=30,
        )  # fmt: skip
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "before it listened" in out.stderr
    assert "Traceback" not in out.stderr


def test_merge_adds_up_counters_histograms_and_gauges():
    from engine.metrics_merge import merge

    one = (
        "# HELP requests_total Requests.\n"
        "# TYPE requests_total counter\n"
        'requests_total{code="200"} 3.0\n'
        'requests_created{code="200"} 1700000005.0\n'
        "# HELP latency_seconds Latency.\n"
        "# TYPE latency_seconds histogram\n"
        'latency_seconds_bucket{le="0.1"} 1.0\n'
        'latency_seconds_bucket{le="+Inf"} 2.0\n'
        "latency_seconds_sum 0.25\n"
        "latency_seconds_count 2.0\n"
        "# HELP open Open now.\n"
        "# TYPE open gauge\n"
        "open 4.0\n"
    )
    two = (
        "# HELP requests_total Requests.\n"
        "# TYPE requests_total counter\n"
        'requests_total{code="200"} 2.0\n'
        'requests_total{code="a b"} 1.0\n'
        'requests_created{code="200"} 1700000001.0\n'
        "# HELP latency_seconds Latency.\n"
        "# TYPE latency_seconds histogram\n"
        'latency_seconds_bucket{le="0.1"} 0.0\n'
        'latency_seconds_bucket{le="+Inf"} 1.0\n'
        "latency_seconds_sum 0.5\n"
        "latency_seconds_count 1.0\n"
        "# HELP open Open now.\n"
        "# TYPE open gauge\n"
        "open 1.0\n"
        "garbage line\n"
    )
    merged = merge([one.encode(), two], extra=["# TYPE workers gauge", "workers 2.0"]).decode()
    assert merged == (
        "# HELP requests_total Requests.\n"
        "# TYPE requests_total counter\n"
        'requests_total{code="200"} 5.0\n'
        'requests_created{code="200"} 1700000001.0\n'
        'requests_total{code="a b"} 1.0\n'
        "# HELP latency_seconds Latency.\n"
        "# TYPE latency_seconds histogram\n"
        'latency_seconds_bucket{le="0.1"} 1.0\n'
        'latency_seconds_bucket{le="+Inf"} 3.0\n'
        "latency_seconds_sum 0.75\n"
        "latency_seconds_count 3.0\n"
        "# HELP open Open now.\n"
        "# TYPE open gauge\n"
        "open 5.0\n"
        "# TYPE workers gauge\n"
        "workers 2.0\n"
    )


def test_merge_output_is_read_by_prometheus_client():
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from engine.metrics_merge import merge

    expositions = []
    for n in (1, 2):
        registry = CollectorRegistry()
        Counter("things", "Things.", ["kind"], registry=registry).labels("x").inc(n)
        Histogram("waits", "Waits.", buckets=(1.0,), registry=registry).observe(n * 0.5)
        expositions.append(generate_latest(registry))
    families = {f.name: f for f in text_string_to_metric_families(merge(expositions).decode())}
    things = {s.name: s.value for s in families["things"].samples}
    assert things["things_total"] == 3
    waits = {(s.name, s.labels.get("le")): s.value for s in families["waits"].samples}
    assert waits[("waits_bucket", "1.0")] == 2 and waits[("waits_bucket", "+Inf")] == 2
    assert waits[("waits_count", None)] == 2 and waits[("waits_sum", None)] == 1.5


@pytest.mark.parametrize("name", ["engine.workers", "engine.siblings", "engine.metrics_merge"])
def test_all_matches_the_public_names(name):
    import ast
    import importlib

    module = importlib.import_module(name)
    defined_here = {
        key for key, value in vars(module).items() if getattr(value, "__module__", None) == name
    }
    tree = ast.parse(Path(module.__file__).read_text())
    constants = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and target.id.isupper()
    }
    public = {key for key in defined_here | constants if not key.startswith("_")}
    assert sorted(module.__all__) == sorted(public)


# -- /v1/responses on any worker ---------------------------------------------------------


async def sdk_on_worker(url: str, slot: int, key: str = ALICE):
    """The official OpenAI SDK over one kept-alive connection that reaches worker ``slot``
    (as :func:`on_worker`, through the SDK's own HTTP client)."""
    import httpx2
    import openai

    limits = httpx2.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=120)
    for _ in range(200):
        http = httpx2.AsyncClient(limits=limits, headers=auth(key))
        answered = (await http.get(f"{url}/healthz")).json()["worker"]
        if answered == slot:
            client = openai.AsyncOpenAI(
                base_url=f"{url}/v1", api_key=key, max_retries=0, http_client=http
            )
            client.http = http  # (to ask /healthz again)
            return client
        await http.aclose()
    raise AssertionError(f"no connection reached worker {slot} in 200 tries")


async def test_a_response_is_retrieved_resumed_cancelled_and_deleted_through_the_other_worker(
    keyed,
):
    url = keyed.url
    owner = await on_worker(url, 0)
    other = await on_worker(url, 1)
    bob = await on_worker(url, 1, headers=auth(BOB))
    client = await sdk_on_worker(url, 1)
    request = {"model": "mock", "input": "hi", "stream": True, "max_output_tokens": 500}
    async with owner, other, bob, client:
        async with owner.post(f"{url}/v1/responses", json=request) as resp:
            assert resp.status == 200, await resp.text()
            seen = await read_some(resp, 8)
            rid = json.loads(seen[0].data)["response"]["id"]
            assert re.fullmatch(r"resp_[0-9a-f]{32}-w0", rid)  # the tag says which worker
            assert resp.headers["X-Stream-Id"] == rid

            polled = await client.responses.retrieve(rid)
            assert polled.id == rid and polled.status == "in_progress"
            assert polled.output_text.startswith("You said: hi.")
            # A resume through worker 1: the owner's own events, from where it was asked.
            async with other.get(
                f"{url}/v1/responses/{rid}", params={"stream": "true", "starting_after": "3"}
            ) as resumed:
                assert resumed.status == 200
                again = await read_some(resumed, len(seen) - 4)
            assert [(e.event, e.data) for e in again[: len(seen) - 4]] == [
                (e.event, e.data) for e in seen[4:]
            ]
            assert json.loads(again[0].data)["sequence_number"] == 4
            items = await client.responses.input_items.list(rid)
            assert [item.content[0].text for item in items.data] == ["hi"]
            # Another key: 404 through the other worker too, and nothing stopped.
            for method, path in (("GET", rid), ("POST", f"{rid}/cancel"), ("DELETE", rid)):
                async with bob.request(method, f"{url}/v1/responses/{path}") as denied:
                    assert denied.status == 404, (method, path)
            assert all(e.event != "response.incomplete" for e in await read_some(resp, 3))

            cancelled = await client.responses.cancel(rid)
            assert cancelled.status == "cancelled"
            rest = [event async for event in iter_events(resp)]

        final = json.loads(rest[-1].data)
        assert rest[-1].event == "response.incomplete"
        assert final["response"]["status"] == "cancelled"
        assert final["sequence_number"] < 400  # cut short, not run to its 500 deltas
        assert cancelled.output_text == final["response"]["output"][0]["content"][0]["text"]
        got = await client.responses.retrieve(rid)
        assert got.status == "cancelled" and got.output_text == cancelled.output_text
        # The SDK resumes through worker 1 once it ended: the last events again.
        last = final["sequence_number"]
        tail = await client.responses.retrieve(rid, stream=True, starting_after=last - 2)
        assert [event.sequence_number async for event in tail] == [last - 1, last]

        await client.responses.delete(rid)
        assert (await client.http.get(f"{url}/healthz")).json()["worker"] == 1  # (throughout)
        for session in (owner, other):
            async with session.get(f"{url}/v1/responses/{rid}") as gone:
                assert gone.status == 404
                assert (await gone.json())["error"]["code"] == "response_not_found"
