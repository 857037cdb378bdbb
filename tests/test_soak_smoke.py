"""The soak benchmark (benchmarks/soak.py) runs end to end: a short one, not a timing test.

Twenty clients for twenty seconds against a real ``sse-engine serve`` and a fake
OpenAI upstream, both on loopback, with memory in SQLite and resume on. What is
asserted is what the soak's reader relies on: it finishes by itself, it took
its samples from ``/proc`` and ``/metrics``, every stream ended one of the ways
its action expects (done, left, resumed, followed, stopped), no resumed or
followed stream had a gap or a duplicate, and nothing was left open after.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._soak_clients import ACTIONS, EXPECTED

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_a_short_soak_completes_samples_and_every_stream_ends_as_expected(tmp_path):
    out = tmp_path / "soak.json"
    command = [sys.executable, "-m", "benchmarks.soak", "--seconds", "20", "--clients", "20"]
    command += ["--sample-seconds", "4", "--start-retries", "0", "--no-record"]
    command += ["--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())

    samples = result["samples"]
    assert len(samples) >= 5  # at 0 s, then every 4 s
    for sample in samples:
        assert sample["rss_kib"] > 0 and sample["fds"] > 0
        assert sample["tasks"] is not None and sample["tasks"] > 0  # the gauge is scraped
        assert sample["open_streams"] is not None and sample["resume_logs"] is not None
    assert {row["key"] for row in result["rows"]} >= {"rss_kib", "fds", "tasks", "mismatches"}

    assert result["errors"] == 0, result["error_examples"]
    assert result["mismatches"] == 0, result["mismatch_examples"]
    assert result["finished"] > 50
    ran = {}
    for key, count in result["outcomes"].items():
        action, outcome = key.split(":")
        assert outcome in EXPECTED[action]
        ran[action] = ran.get(action, 0) + count
    # Every kind of action ran (the mix is seeded), the resuming ones included.
    assert set(ran) == {name for name, _ in ACTIONS}

    # Once the clients stopped, the gateway went back to holding no stream.
    assert result["drained"]["open_streams"] == 0
    assert result["drained"]["generations"] == 0
    assert "## Soak" in done.stdout and "| gateway RSS (KiB) |" in done.stdout
