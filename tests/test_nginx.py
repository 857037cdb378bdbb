"""Two boxes behind a real nginx: a stream cut off on one instance is resumed, and
stopped, on the other, through one Redis stream log.

Debian's ``nginx`` runs in the foreground on a free loopback port with the
config shipped in deploy/nginx/sse-engine.conf (placeholders filled, its pid,
logs and temp files in a temporary folder), in front of two real
``python -m engine serve`` processes on their own ports sharing the Redis
named by ENGINE_TEST_REDIS_URL. nginx's round robin (one worker) sends
requests to the two in turn, and every answer names its instance
(``X-Upstream``), so the test checks that the resume did land on the other one.

Skipped without nginx or Redis, except under CI (``CI`` set), where
``.ci/run`` installs nginx and starts Redis and a missing one fails. Every
process is killed at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from engine.sse import Decoder

from .helpers import read_until
from .test_memory_contract import server_url

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx" / "sse-engine.conf"
USER = [{"role": "user", "content": "hi"}]
#: Seconds any one step may take before the test fails (nothing here hangs).
STEP = 20.0

pytestmark = pytest.mark.skipif(
    NGINX is None and not os.environ.get("CI"),
    reason="needs Debian's nginx package (.ci/run installs it)",
)


def fill(template: str, **values: str) -> str:
    """``template`` with its ``${NAME}`` placeholders filled, as envsubst would
    (nginx's own ``$variables`` stay); a placeholder with no value fails."""
    body = "\n".join(line for line in template.splitlines() if not line.startswith("#"))
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve(redis_url: str) -> tuple[subprocess.Popen[str], int]:
    """A real ``python -m engine serve`` on a port of its own; its port once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", "0", "--stream-log", redis_url],
        cwd=ROOT,
        env={**os.environ, "ENGINE_MEMORY_URL": "memory://", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + STEP
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return proc, int(match.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("sse-engine serve did not start")


def _wait_listening(port: int, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + STEP
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {log.read_text() if log.exists() else ''}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("nginx did not listen")


def _stop(proc: subprocess.Popen[str]) -> None:
    """End ``proc`` and its children (nginx's workers): it leads a session of its own."""
    if proc.poll() is None:
        proc.terminate()  # nginx: a fast shutdown, its workers with it
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its group
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


class Boxes:
    """nginx on ``url``, in front of the instances on ``ports``."""

    def __init__(self, url: str, ports: list[int]) -> None:
        self.url = url
        self.ports = ports

    def instance(self, upstream: str) -> int:
        """Which of ``ports`` an ``X-Upstream`` value names."""
        return self.ports.index(int(upstream.rsplit(":", 1)[1]))


@pytest.fixture(scope="module")
def boxes(tmp_path_factory) -> Iterator[Boxes]:
    redis_url = server_url("redis")
    assert NGINX is not None, "CI must install nginx (.ci/run)"
    tmp = tmp_path_factory.mktemp("nginx")
    procs: list[subprocess.Popen[str]] = []
    try:
        ports = []
        for _ in range(2):
            proc, port = _serve(redis_url)
            procs.append(proc)
            ports.append(port)
        (tmp / "temp").mkdir()
        listen = free_port()
        conf = fill(
            TEMPLATE.read_text(),
            LISTEN=f"127.0.0.1:{listen}",
            UPSTREAM_A=f"127.0.0.1:{ports[0]}",
            UPSTREAM_B=f"127.0.0.1:{ports[1]}",
            ACCESS_LOG=str(tmp / "access.log"),
            TEMP_DIR=str(tmp / "temp"),
        )
        (tmp / "nginx.conf").write_text(conf)
        error_log = tmp / "error.log"
        nginx = subprocess.Popen(
            [
                NGINX,
                "-p",
                str(tmp),
                "-c",
                str(tmp / "nginx.conf"),
                "-e",
                str(error_log),
                "-g",
                f"daemon off; pid {tmp / 'nginx.pid'};",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        procs.append(nginx)
        _wait_listening(listen, nginx, error_log)
        yield Boxes(f"http://127.0.0.1:{listen}", ports)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _stream_id(events) -> str:
    return str(json.loads(events[0].data)["stream_id"])


async def test_a_stream_cut_off_on_one_box_resumes_exactly_on_the_other(boxes):
    body = {
        "messages": USER,
        # Goes on into the log for a moment after its client is cut off.
        "options": {"max_tokens": 60, "interval_ms": 20, "detach": 30},
    }
    timeout = aiohttp.ClientTimeout(total=STEP)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        resp = await session.post(f"{boxes.url}/v1/chat/stream", json=body)
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        producer = boxes.instance(resp.headers["X-Upstream"])
        seen, _ = await read_until(resp, 10)
        sid = _stream_id(seen)
        resp.close()  # the connection is cut: nginx closes its upstream one too
        last = seen[-1].id
        resumed = await session.get(
            f"{boxes.url}/v1/streams/{sid}", headers={"Last-Event-ID": last}
        )
        assert resumed.status == 200
        assert boxes.instance(resumed.headers["X-Upstream"]) == 1 - producer
        rest = Decoder().feed(await resumed.read())
        # The whole stream, as its own instance logged it.
        direct = f"http://127.0.0.1:{boxes.ports[producer]}/v1/streams/{sid}"
        async with session.get(direct) as whole_resp:
            whole = Decoder().feed(await whole_resp.read())
    n = int(last.rsplit(":", 1)[1])
    assert [e.id for e in rest] == [f"{sid}:{i}" for i in range(n + 1, 62)]
    assert [(e.id, e.event, e.data) for e in seen + rest] == [
        (e.id, e.event, e.data) for e in whole
    ]
    assert rest[-1].event == "done"
    assert json.loads(rest[-1].data)["finish_reason"] == "length"


async def test_stop_through_nginx_reaches_the_producing_box(boxes):
    body = {"messages": USER, "options": {"max_tokens": 10_000, "interval_ms": 20}}
    timeout = aiohttp.ClientTimeout(total=STEP)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        resp = await session.post(f"{boxes.url}/v1/chat/stream", json=body)
        producer = boxes.instance(resp.headers["X-Upstream"])
        seen, decoder = await read_until(resp, 3)
        sid = _stream_id(seen)
        stop = await session.post(f"{boxes.url}/v1/streams/{sid}/stop")
        assert boxes.instance(stop.headers["X-Upstream"]) == 1 - producer
        assert stop.status == 200
        assert await stop.json() == {"stream_id": sid, "state": "stopped"}
        rest = decoder.feed(await asyncio.wait_for(resp.read(), STEP))
    assert rest[-1].event == "done"
    assert json.loads(rest[-1].data)["finish_reason"] == "stopped"
    assert len(seen + rest) < 10_000
