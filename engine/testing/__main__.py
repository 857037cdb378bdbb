"""Run a fake upstream from a shell: ``python -m engine.testing openai --port 9000``.

Every request gets the reply and delivery mode the flags describe; the first
line printed is the base URL (useful with ``--port 0``). Point the engine at it::

    OPENAI_BASE_URL=http://127.0.0.1:9000/v1 OPENAI_API_KEY=x sse-engine serve --provider openai
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

from . import FAKES, Script, serve

_PATHS = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "gemini": "/v1beta/models/{model}:streamGenerateContent?alt=sse",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.testing", description=__doc__)
    parser.add_argument("provider", choices=sorted(FAKES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--text", default="Hello from the fake upstream.", help="reply text")
    parser.add_argument("--token-size", type=int, default=4, help="characters per chunk")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="ms between chunks")
    parser.add_argument("--first-ms", type=float, default=0.0, help="ms before the first chunk")
    parser.add_argument("--fragment", type=int, default=0, help="bytes per write (1 = bytewise)")
    parser.add_argument("--crlf", action="store_true")
    parser.add_argument("--comments", action="store_true")
    parser.add_argument("--unknown-fields", action="store_true")
    parser.add_argument("--status", type=int, default=200, help="answer this error status")
    parser.add_argument("--retry-after", default=None)
    parser.add_argument("--drop-after", type=int, default=None)
    parser.add_argument("--error-after", type=int, default=None)
    parser.add_argument("--stamp", type=int, default=0, metavar="N", help="N timestamp chunks")
    return parser.parse_args(argv)


def script_from(args: argparse.Namespace) -> Script:
    size = max(1, args.token_size)
    tokens = [args.text[i : i + size] for i in range(0, len(args.text), size)]
    return Script(
        tokens=tokens,
        interval_ms=args.interval_ms,
        first_ms=args.first_ms,
        fragment=args.fragment,
        crlf=args.crlf,
        comments=args.comments,
        unknown_fields=args.unknown_fields,
        status=args.status,
        retry_after=args.retry_after,
        drop_after=args.drop_after,
        error_after=args.error_after,
        stamp=args.stamp > 0,
        stamp_count=args.stamp or 50,
    )


async def run(args: argparse.Namespace) -> None:
    fake = FAKES[args.provider](script_from(args))
    async with serve(fake.app(), host=args.host, port=args.port) as url:
        sys.stdout.write(f"{url}\n")
        sys.stdout.write(f"fake {args.provider} upstream: POST {url}{_PATHS[args.provider]}\n")
        sys.stdout.flush()
        await asyncio.Event().wait()  # until interrupted


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
