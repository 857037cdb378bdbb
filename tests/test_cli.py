"""The ``sse-engine`` command as a user runs it: a real process, a real port, real signals."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys

import aiohttp
import pytest

from engine import __version__, cli
from engine.client import iter_events
from engine.config import Config


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


NEW_FLAGS = [
    "--header-timeout",
    "--keepalive-timeout",
    "--header-deadline",
    "--allowed-hosts",
    "--max-history",
]


def test_serve_help_lists_the_connection_and_history_flags():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in NEW_FLAGS:
        assert flag in out.stdout


def test_flags_reach_the_config():
    args = cli._parser().parse_args(
        ["serve", "--header-timeout", "2.5", "--keepalive-timeout", "30", "--header-deadline", "4",
         "--allowed-hosts", "api.example.com, .example.org", "--max-history", "7"]
    )  # fmt: skip
    config = cli._load_config(args)
    assert config.header_timeout == 2.5
    assert config.keepalive_timeout == 30
    assert config.header_deadline == 4
    assert config.allowed_hosts == ["api.example.com", ".example.org"]
    assert config.max_history == 7
    star = cli._load_config(cli._parser().parse_args(["serve", "--allowed-hosts", "*"]))
    assert star.allowed_hosts == ["*"]


def test_unset_flags_keep_the_defaults():
    config = cli._load_config(cli._parser().parse_args(["serve"]))
    defaults = Config()
    assert (config.header_timeout, config.keepalive_timeout, config.max_history) == (
        defaults.header_timeout, defaults.keepalive_timeout, defaults.max_history,
    )  # fmt: skip
    assert config.allowed_hosts is None


@pytest.mark.parametrize(
    "argv",
    [["--allowed-hosts", ""], ["--allowed-hosts", " , "], ["--header-timeout", "soon"]],
)
def test_bad_flag_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli._parser().parse_args(["serve", *argv])
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_an_invalid_timeout_is_a_clear_error_not_a_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--header-timeout", "0"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "header_timeout" in out.stderr
    assert "Traceback" not in out.stderr
