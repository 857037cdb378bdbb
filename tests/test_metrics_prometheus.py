"""A real Prometheus scrapes the gateway's /metrics and sees the GenAI histograms move.

Debian's ``prometheus``, started here with a throwaway config (the gateway on
127.0.0.1 every second), its storage in a temporary folder and its web API on a
free loopback port; the test queries that API until the time to first token
and token usage of a stream show up, then stops it.

Skipped when the binary is missing, except under CI (``CI`` set), where
``.ci/run`` installs it and a missing one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket

import aiohttp
import pytest

from engine.server import start_server

from .helpers import make_config

PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None and not os.environ.get("CI"),
    reason="needs Debian's prometheus package (.ci/run installs it)",
)

CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: sse-engine
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def query(session: aiohttp.ClientSession, api: str, promql: str) -> float:
    """The value of an instant query (0 when it has no result yet)."""
    async with session.get(f"{api}/api/v1/query", params={"query": promql}) as resp:
        if resp.status != 200:
            return 0.0
        body = await resp.json()
    result = body["data"]["result"]
    return sum(float(series["value"][1]) for series in result)


async def until(session: aiohttp.ClientSession, api: str, promql: str, within: float) -> float:
    """Poll ``promql`` until it is above 0 (Prometheus scrapes every second)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            found = await query(session, api, promql)
            if found > 0:
                return found
        if loop.time() > deadline:
            raise AssertionError(f"Prometheus never saw {promql} > 0")
        await asyncio.sleep(0.25)


@pytest.mark.timeout(120)
async def test_a_real_prometheus_sees_ttft_and_token_usage_after_a_stream(tmp_path):
    assert PROMETHEUS is not None, "CI installs prometheus (.ci/run)"
    runner = await start_server(make_config(port=0))
    gateway_port = runner.addresses[0][1]
    (tmp_path / "prometheus.yml").write_text(CONFIG.format(port=gateway_port))
    web_port = free_port()
    process = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{web_port}",
        "--log.level=warn",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    api = f"http://127.0.0.1:{web_port}"
    try:
        async with aiohttp.ClientSession() as session:
            # It scrapes the gateway: the target is up.
            await until(session, api, 'up{job="sse-engine"}', 60)
            before = await query(session, api, "gen_ai_server_time_to_first_token_seconds_count")
            assert before == 0
            url = f"http://127.0.0.1:{gateway_port}/v1/chat/stream"
            body = {"messages": [{"role": "user", "content": "hi"}], "options": {"max_tokens": 8}}
            async with session.post(url, json=body) as resp:
                assert resp.status == 200
                await resp.read()
            assert (
                await until(session, api, "gen_ai_server_time_to_first_token_seconds_count", 30)
                == 1
            )
            tokens = 'gen_ai_client_token_usage_sum{gen_ai_token_type="output"}'
            assert await until(session, api, tokens, 30) == 8
            assert await until(session, api, 'sse_engine_streams_ended_total{reason="done"}', 30)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        await runner.cleanup()
