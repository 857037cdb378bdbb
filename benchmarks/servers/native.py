"""The gateway under test: ``sse-engine serve`` on the mock provider (uvloop when installed).

The harness runs the real CLI (``python -m engine serve``); this module only
builds that command line, so the benchmark measures exactly what users run.
"""

from __future__ import annotations

import sys


def command(heartbeat: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "engine",
        "serve",
        "--port",
        "0",
        "--memory",
        "memory://",
        "--log-level",
        "warning",
        "--heartbeat",
        str(heartbeat),
    ]
