"""The ``sse-engine`` command as a user runs it: a real process, a real port, real signals."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys

import aiohttp

from engine import __version__
from engine.client import iter_events


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"sse-engine {__version__}"


def test_unknown_provider_is_a_clear_error_not_a_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--provider", "nosuch"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "unknown provider 'nosuch'" in out.stderr
    assert "Traceback" not in out.stderr


async def test_serve_streams_then_sigterm_says_goodbye_and_exits_0(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "serve", "--port", "0",
        "--memory", f"sqlite:///{tmp_path}/m.db", "--shutdown-grace", "0.3",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = re.search(r"http://[\d.]+:\d+", line).group(0)
        curl_line = (await proc.stdout.readline()).decode()
        assert "curl -N -X POST" in curl_line and url in curl_line

        body = {
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"max_tokens": 1000, "interval_ms": 50},
        }
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/chat/stream", json=body) as resp:
                assert resp.status == 200
                events = []
                async for event in iter_events(resp):
                    events.append(event)
                    if len(events) == 3:  # start and two chunks: the stream is flowing
                        proc.send_signal(signal.SIGTERM)
        assert events[-1].event == "error"
        assert json.loads(events[-1].data)["type"] == "shutdown"
        assert len(events) < 100  # it was cut short, not run to its end
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        stderr = (await proc.stderr.read()).decode()
        assert "Traceback" not in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
