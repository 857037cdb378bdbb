"""The ``sse-engine`` command (also ``python -m engine``).

``sse-engine serve`` runs the gateway until SIGINT or SIGTERM, then shuts down
gracefully: the listening socket closes at once (new requests are refused), open
streams get ``--shutdown-grace`` seconds to finish, the rest receive a final
``error`` event of type ``shutdown``, and the process exits 0. With ``--workers N``
it is the parent of N such processes on one port instead (engine.workers).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from . import __version__
from .config import Config
from .errors import EngineError
from .gateway import ENGINE
from .server import start_server
from .workers import WORKER_FLAG, WorkerSlot, count_workers

__all__ = ["main"]

log = logging.getLogger("engine")


def _host_list(value: str) -> list[str]:
    """``--allowed-hosts a.example,.b.example`` -> ``["a.example", ".b.example"]``."""
    hosts = [host.strip() for host in value.split(",") if host.strip()]
    if not hosts:
        raise argparse.ArgumentTypeError("expected host names separated by commas, or '*'")
    return hosts


def _workers(value: str) -> int | str:
    """``--workers 4`` or ``--workers auto`` (one per usable CPU)."""
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError("expected a number of workers (1 or more) or 'auto'")
    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sse-engine", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"sse-engine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the streaming gateway")
    # Defaults are None so that only flags actually given override the config.
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--provider", help="default provider: mock, openai, anthropic, gemini")
    serve.add_argument("--config", help="a TOML file with any of the settings")
    serve.add_argument("--heartbeat", type=float, help="seconds of silence before a keep-alive")
    serve.add_argument("--send-timeout", type=float, help="seconds a write may wait for a client")
    serve.add_argument("--shutdown-grace", type=float, help="seconds open streams get on stop")
    serve.add_argument("--max-body-size", type=int, help="largest request body in bytes")
    serve.add_argument(
        "--header-timeout", type=float, help="seconds a client may take to send a request head"
    )
    serve.add_argument(
        "--keepalive-timeout", type=float, help="seconds an idle connection stays open"
    )
    serve.add_argument(
        "--header-deadline",
        type=float,
        help="seconds a stream waits for the upstream before its headers go out",
    )
    serve.add_argument(
        "--allowed-hosts",
        type=_host_list,
        metavar="HOST[,HOST...]",
        help="Host header values to answer ('*' for any; default: loopback names on loopback)",
    )
    serve.add_argument(
        "--max-history", type=int, help="stored messages sent upstream per request (default 100)"
    )
    serve.add_argument(
        "--resume",
        choices=["on", "off"],
        help="keep native streams' events for resume by Last-Event-ID (default on)",
    )
    serve.add_argument(
        "--resume-max-bytes", type=int, help="bytes of events kept per stream (default 1 MiB)"
    )
    serve.add_argument(
        "--resume-ttl", type=float, help="seconds a finished stream stays resumable (default 600)"
    )
    serve.add_argument(
        "--detach",
        type=float,
        help="seconds a stream goes on after its last reader left (default 0: stop at once)",
    )
    serve.add_argument(
        "--max-detach", type=float, help="most a request may ask for with options.detach (300)"
    )
    serve.add_argument(
        "--stream-log",
        metavar="URL",
        help="keep stream logs in Redis (redis://host:port/db): resume and Stop on any box",
    )
    serve.add_argument("--memory", dest="memory_url", help="memory store URL (sqlite:///path, ...)")
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default info"
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="json: one JSON object a line, with a line per request and per stream end",
    )
    serve.add_argument(
        "--log-content",
        action="store_true",
        default=None,
        help="put message content (a reply's text) in the stream-end log lines",
    )
    serve.add_argument(
        "--metrics", choices=["on", "off"], help="count for GET /metrics (default on)"
    )
    serve.add_argument(
        "--drain-delay",
        type=float,
        help="seconds /readyz answers 503 after SIGTERM before the listener closes (default 0)",
    )
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=None,
        help="listen on a non-loopback address with no client keys (anyone may use it)",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        metavar="ORIGIN",
        help="an origin whose pages may call the gateway (repeatable; default none)",
    )
    serve.add_argument(
        "--max-streams", type=int, help="generations at once, all keys together (0: no cap)"
    )
    serve.add_argument(
        "--max-connections-per-ip",
        type=int,
        help="connections at once from one address (0: no cap)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="worker processes on the one port, or 'auto': one per usable CPU (default 1)",
    )
    # A worker of `serve --workers N` (engine.workers): its slot, the parent's
    # runtime folder and socket. Set by the parent only, so not in --help.
    serve.add_argument(WORKER_FLAG, dest="worker", type=WorkerSlot.parse, help=argparse.SUPPRESS)
    keys = commands.add_parser("keys", help="client keys for the config file")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_commands.add_parser("new", help="print a new client key and the config lines for it")
    return parser


def _new_key() -> int:
    """``sse-engine keys new``: a key, and the TOML that accepts it without holding it."""
    from .keys import hash_key, new_key

    secret = new_key()
    print(f"key:  {secret}")
    print("config (the hash; the key itself is not stored):")
    print("  [keys.my-app]")
    print(f'  hash = "{hash_key(secret)}"')
    return 0


def refuse_open(config: Config) -> str | None:
    """Why ``serve`` must not start as configured, or None.

    No key means anyone who reaches the port spends the provider keys and reads
    every conversation: fine on loopback, not on a network, unless the operator
    says so.
    """
    from .hosts import is_loopback

    if config.keys or config.admin_key or config.allow_anonymous or is_loopback(config.host):
        return None
    return (
        f"refusing to listen on {config.host} with no client keys: anyone who reaches it "
        "would spend your provider keys. Add a key (`sse-engine keys new` prints one for "
        "the config's [keys] table), or set SSE_ENGINE_ADMIN_KEY and create keys with "
        "POST /v1/admin/keys; or pass --allow-anonymous to accept the risk"
    )


def _use_uvloop() -> str:
    """Run on uvloop when it is installed (the ``uvloop`` extra); say which loop runs."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def serve(
    config: Config,
    *,
    access_log: bool = False,
    loop_name: str = "asyncio",
    worker: WorkerSlot | None = None,
) -> None:
    """Run the gateway until SIGINT/SIGTERM, then shut down gracefully.

    ``worker``: this process is one of ``serve --workers N`` (engine.workers).
    """
    # engine.server: aiohttp's server with a request-head timeout, the
    # keep-alive timeout, and quiet JSON answers to malformed requests.
    runner = await start_server(config, access_log=log if access_log else None, worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, port = runner.addresses[0][:2]  # the real port when --port 0
    url = f"http://{host}:{port}"
    if worker is not None:
        # The parent prints the address once for all, and a worker whose
        # parent is gone (even killed) drains and exits like on SIGTERM.
        await worker.announce(url, loop_name)
        parent = loop.create_task(worker.parent_gone(stop.set))
    else:
        print(f"sse-engine {__version__} on {url} (provider {config.provider}, {loop_name} loop)")
        print(
            f"try: curl -N -X POST {url}/v1/chat/stream -H 'content-type: application/json' "
            """-d '{"messages":[{"role":"user","content":"hi"}]}'""",
            flush=True,
        )
    try:
        await stop.wait()
        # Not ready from now on: a load balancer that reads /readyz stops sending
        # new streams while the listener still answers (--drain-delay).
        runner.app[ENGINE].draining = True
        if config.drain_delay:
            log.info("draining for %g s before closing the listener", config.drain_delay)
            await asyncio.sleep(config.drain_delay)
    finally:
        log.info("shutting down")
        # Stops listening, runs on_shutdown (the grace period), then closes.
        await runner.cleanup()
        if worker is not None:
            parent.cancel()
            worker.leave()


def _load_config(args: argparse.Namespace) -> Config:
    """The config the flags in ``args`` describe (over the file and environment)."""
    return Config.load(
        args.config,
        host=args.host,
        port=args.port,
        provider=args.provider,
        heartbeat=args.heartbeat,
        send_timeout=args.send_timeout,
        shutdown_grace=args.shutdown_grace,
        max_body_size=args.max_body_size,
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        header_deadline=args.header_deadline,
        allowed_hosts=args.allowed_hosts,
        max_history=args.max_history,
        resume=None if args.resume is None else args.resume == "on",
        resume_max_bytes=args.resume_max_bytes,
        resume_ttl=args.resume_ttl,
        detach=args.detach,
        max_detach=args.max_detach,
        memory_url=args.memory_url,
        stream_log=args.stream_log,
        log_level=args.log_level,
        allow_anonymous=args.allow_anonymous,
        cors_origins=args.cors_origins,
        max_streams=args.max_streams,
        max_connections_per_ip=args.max_connections_per_ip,
        log_format=args.log_format,
        log_content=args.log_content,
        metrics=None if args.metrics is None else args.metrics == "on",
        drain_delay=args.drain_delay,
        workers=args.workers,
    )


def _check_stream_log(config: Config) -> None:
    """A Redis stream log needs resume on, the ``redis`` extra and a Redis URL."""
    from .errors import InvalidFields
    from .memory import _driver

    if not config.resume:
        raise InvalidFields("stream_log keeps streams for resume: it needs resume on")
    assert config.stream_log is not None
    with _driver("redis", "redis", "redis"):
        from .streams.redis_log import check_url
    check_url(config.stream_log)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keys":
        return _new_key()
    try:
        config = _load_config(args)
        from .providers import resolve

        resolve(config.provider)
        if config.stream_log:
            _check_stream_log(config)
    except EngineError as exc:
        print(f"sse-engine: {exc.message}", file=sys.stderr)
        return 2
    refusal = refuse_open(config)
    if refusal is not None:
        print(f"sse-engine: {refusal}", file=sys.stderr)
        return 2
    workers = count_workers(config.workers)
    if workers > 1 and args.worker is None:
        # The parent: no app of its own, only the worker processes.
        from . import workers as parent

        return parent.run(config, list(sys.argv[1:] if argv is None else argv), workers)
    from .logs import configure

    configure(config.log_level, config.log_format)
    loop_name = _use_uvloop()
    try:
        asyncio.run(
            serve(config, access_log=args.access_log, loop_name=loop_name, worker=args.worker)
        )
    except OSError as exc:
        print(f"sse-engine: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0
