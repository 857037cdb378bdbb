"""``serve --workers N``: N worker processes on one port, and the small parent that keeps them.

One Python process relays on one core. With ``--workers N`` the command
becomes a parent that runs N copies of ``serve`` (the workers) and nothing
else: no aiohttp app, no sockets of its own but a reserved port. Each worker
is a whole gateway listening on the same port with ``SO_REUSEPORT``, so the
kernel spreads new connections across them (by a hash of the connection's
addresses: a kept-alive connection stays on its worker).

The parent:

* makes a private runtime folder (``mkdtemp``: mode 0700, so only this user
  reaches what is in it) where each worker listens on a Unix socket of its own,
  ``worker-<slot>.sock``; siblings reach each other there (engine.siblings:
  a resume or a Stop for a stream another worker holds, the metrics of all);
* starts each worker as ``python -m engine <the same arguments> --worker
  SLOT,COUNT,FD,DIR``: the same config from the same flags, file and
  environment; the hidden ``--worker`` names its slot, the folder and its end
  of a socket pair (:class:`WorkerSlot`). The worker writes ``ready`` on it
  once it listens, and reads EOF on it when the parent is gone, however it
  went (even ``kill -9``): then it drains and exits, so no worker outlives its
  parent (and the last to go removes the folder). With ``--port 0`` the parent
  binds a port first (``SO_REUSEPORT``, never listening) so that every worker,
  and every restart, gets the same one;
* restarts a worker that exits, after a delay that doubles with each quick
  death (:data:`FIRST_BACKOFF` to :data:`MAX_BACKOFF`, reset once a worker
  has run :data:`STABLE_AFTER` seconds), logging why and when;
* on SIGINT or SIGTERM sends SIGTERM to every worker, which drains as a single
  ``serve`` does (``/readyz`` 503 for ``--drain-delay``, then
  ``--shutdown-grace`` for open streams, then the farewell ``shutdown``
  event), waits for them (SIGKILL past the grace and :data:`KILL_AFTER`),
  removes the folder and exits 0.

Limits: the workers share no memory. A stream lives in the worker that started
it (its id says which: ``-w<slot>``); a restarted worker's streams are gone,
and so is what it counted for ``/metrics``. Per-key limits live in Redis with
``limits_url``; without it each worker enforces its part of every limit and of
``max_streams`` (engine.limits.Share: the parts add up to the limit, so the
workers never admit more than it, but one can refuse while another has room).
The in-memory memory store is per worker (``memory_url`` shares one). Two
unrelated ``serve --workers`` of the same user on the same port would share it
(``SO_REUSEPORT``'s rule): give each its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "FIRST_BACKOFF",
    "KILL_AFTER",
    "MAX_BACKOFF",
    "STABLE_AFTER",
    "WORKER_FLAG",
    "WorkerSlot",
    "count_workers",
    "run",
]

log = logging.getLogger("engine.workers")

#: The hidden ``serve`` flag that makes a process a worker (:meth:`WorkerSlot.parse`).
WORKER_FLAG = "--worker"

#: Seconds before the first restart of a worker that died; doubled for each
#: further quick death, up to :data:`MAX_BACKOFF` (as systemd's
#: ``RestartSec`` with ``RestartSteps``, or supervisord's growing backoff).
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: Seconds a worker must have run for its death to count as a first one again.
STABLE_AFTER = 30.0
#: Seconds past drain and grace the parent waits before it SIGKILLs a worker.
KILL_AFTER = 10.0

_READY = b"ready"


def count_workers(value: int | str) -> int:
    """``workers`` as a number: ``auto`` is the CPUs this process may run on.

    ``os.sched_getaffinity`` rather than ``os.cpu_count()``: a container or
    ``taskset`` that allows two of 64 cores gets two workers, not 64.
    """
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # (not on Linux)
            return os.cpu_count() or 1
    return int(value)


@dataclass
class WorkerSlot:
    """What a worker knows of its place: its slot, how many there are, the
    runtime folder, and its end of the socket pair to the parent."""

    slot: int
    count: int
    runtime_dir: str
    control_fd: int
    _control: socket.socket | None = field(default=None, repr=False, compare=False)
    #: True once the parent is gone (then nobody else removes the runtime folder).
    orphaned: bool = field(default=False, compare=False)

    @classmethod
    def parse(cls, value: str) -> WorkerSlot:
        """``SLOT,COUNT,FD,DIR`` (the folder last: it may hold commas). Raises ValueError."""
        slot, count, fd, runtime_dir = value.split(",", 3)
        parsed = cls(int(slot), int(count), runtime_dir, int(fd))
        if not 0 <= parsed.slot < parsed.count:
            raise ValueError(f"slot {parsed.slot} of {parsed.count}")
        return parsed

    def flag(self) -> str:
        return f"{self.slot},{self.count},{self.control_fd},{self.runtime_dir}"

    def socket_path(self, slot: int) -> str:
        """Where worker ``slot`` listens for its siblings."""
        return os.path.join(self.runtime_dir, f"worker-{slot}.sock")

    def _sock(self) -> socket.socket:
        if self._control is None:
            self._control = socket.socket(fileno=self.control_fd)
            self._control.setblocking(False)
        return self._control

    async def announce(self, url: str, loop_name: str) -> None:
        """Tell the parent this worker listens (it prints the address once for all)."""
        line = f"{_READY.decode()} {loop_name} {url}\n".encode()
        with contextlib.suppress(OSError):  # (a parent already gone: parent_gone says so)
            await asyncio.get_running_loop().sock_sendall(self._sock(), line)

    async def parent_gone(self, then: Callable[[], None]) -> None:
        """Wait for EOF on the socket pair (the parent exited, however), then call ``then``."""
        loop = asyncio.get_running_loop()
        sock = self._sock()
        with contextlib.suppress(OSError):
            while await loop.sock_recv(sock, 64):
                pass
        log.warning("worker %d: the parent process is gone; shutting down", self.slot)
        self.orphaned = True
        then()

    def leave(self) -> None:
        """On the way out: remove this worker's socket, and the folder if the parent is gone.

        The last orphan to leave removes the folder (``rmdir`` fails while a
        sibling's socket is still in it); with the parent alive, it does
        (and may start a worker in it again).
        """
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path(self.slot))
        if self.orphaned:
            with contextlib.suppress(OSError):
                os.rmdir(self.runtime_dir)
        if self._control is not None:
            self._control.close()
            self._control = None


# -- the parent ------------------------------------------------------------------------


class _Worker:
    """One slot's process, as the parent sees it."""

    __slots__ = ("control", "failures", "process", "slot", "started")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.process: asyncio.subprocess.Process | None = None
        self.control: socket.socket | None = None
        self.started = 0.0
        #: Deaths in a row, each within STABLE_AFTER of its start.
        self.failures = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def close_control(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _reserve_port(host: str) -> socket.socket:
    """A socket bound (not listening) to a free port of ``host``, with ``SO_REUSEPORT``.

    Held for the parent's life so that the workers, and their restarts, all
    bind the same port and nobody else takes it meanwhile. It never listens,
    so the kernel hands it no connection.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _runtime_dir() -> str:
    """A private folder for the workers' sockets (``mkdtemp`` makes it mode 0700)."""
    path = tempfile.mkdtemp(prefix="sse-engine-")
    # A Unix socket path is at most 107 bytes (sun_path); a long TMPDIR would not fit.
    if len(path) > 80:
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="sse-engine-", dir="/tmp")
    return path


class _Parent:
    """Starts, restarts and stops the workers (see the module docstring)."""

    def __init__(self, config: Config, argv: Sequence[str], count: int) -> None:
        self.config = config
        self.argv = list(argv)
        self.count = count
        self.workers = [_Worker(slot) for slot in range(count)]
        self.runtime_dir = ""
        self.port = config.port
        self.stopping = asyncio.Event()

    def _command(self, slot: WorkerSlot) -> list[str]:
        # The worker reads the same flags (later ones win): the same config,
        # with the port the parent settled and the worker's own slot.
        return [
            sys.executable,
            "-m",
            "engine",
            *self.argv,
            "--port",
            str(self.port),
            "--workers",
            str(self.count),
            WORKER_FLAG,
            slot.flag(),
        ]

    async def _spawn(self, worker: _Worker) -> asyncio.Future[str]:
        """Start ``worker``'s process; the future resolves with its ready line (or
        ``""`` if it closed its end first)."""
        worker.close_control()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        slot = WorkerSlot(worker.slot, self.count, self.runtime_dir, theirs.fileno())
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *self._command(slot), pass_fds=(theirs.fileno(),)
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.control = ours
        worker.started = asyncio.get_running_loop().time()
        log.info("worker %d started (pid %d)", worker.slot, worker.process.pid)
        return asyncio.ensure_future(self._ready_line(ours))

    @staticmethod
    async def _ready_line(sock: socket.socket) -> str:
        loop = asyncio.get_running_loop()
        line = b""
        with contextlib.suppress(OSError):
            while not line.endswith(b"\n"):
                data = await loop.sock_recv(sock, 256)
                if not data:
                    return ""
                line += data
        return line.decode(errors="replace").strip()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        reserved = _reserve_port(self.config.host) if self.config.port == 0 else None
        if reserved is not None:
            self.port = reserved.getsockname()[1]
        self.runtime_dir = _runtime_dir()
        try:
            code = await self._start_all()
            if code:
                return code
            keepers = [asyncio.ensure_future(self._keep(worker)) for worker in self.workers]
            await self.stopping.wait()
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            return 0
        finally:
            await self._stop_all()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            if reserved is not None:
                reserved.close()

    def _on_signal(self) -> None:
        if self.stopping.is_set():
            log.info("already stopping: waiting for the workers to drain")
        self.stopping.set()

    async def _start_all(self) -> int:
        """Start every worker and wait until all listen; non-zero if one could not."""
        readies = [await self._spawn(worker) for worker in self.workers]
        stop = asyncio.ensure_future(self.stopping.wait())
        url = loop_name = ""
        try:
            for worker, ready in zip(self.workers, readies, strict=True):
                assert worker.process is not None
                exited = asyncio.ensure_future(worker.process.wait())
                waits: set[asyncio.Future[Any]] = {ready, exited, stop}
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                exited.cancel()
                if stop in done:
                    return 0
                line = ready.result() if ready in done else ""
                if not line.startswith(_READY.decode()):
                    code = await worker.process.wait()
                    log.error("worker %d %s before it listened", worker.slot, _describe(code))
                    return code if code > 0 else 1
                if worker.slot == 0:
                    _, loop_name, url = line.split(" ", 2)
        finally:
            stop.cancel()
        self._banner(url, loop_name)  # (once every worker listens)
        return 0

    def _banner(self, url: str, loop_name: str) -> None:
        config = self.config
        # The command's banner, as cli.serve prints it for one process.
        print(  # noqa: T201
            f"sse-engine {__version__} on {url} ({self.count} workers, "
            f"provider {config.provider}, {loop_name} loop)"
        )
        print(  # noqa: T201
            f"try: curl -N -X POST {url}/v1/chat/stream -H 'content-type: application/json' "
            """-d '{"messages":[{"role":"user","content":"hi"}]}'""",
            flush=True,
        )

    async def _keep(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it exits, with backoff, until the parent stops."""
        loop = asyncio.get_running_loop()
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self.stopping.is_set():
                return
            worker.close_control()
            ran = loop.time() - worker.started
            worker.failures = 1 if ran >= STABLE_AFTER else worker.failures + 1
            delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (worker.failures - 1))
            log.warning(
                "worker %d (pid %d) %s after %.1f s; restarting it in %g s",
                worker.slot,
                worker.process.pid,
                _describe(code),
                ran,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()
                    return
            try:
                ready = await self._spawn(worker)
            except OSError as exc:
                log.error("worker %d could not be started: %s", worker.slot, exc)
                worker.started = loop.time()
                continue
            ready.add_done_callback(self._restarted(worker))

    @staticmethod
    def _restarted(worker: _Worker) -> Callable[[asyncio.Future[str]], None]:
        def done(ready: asyncio.Future[str]) -> None:
            if not ready.cancelled() and ready.result().startswith(_READY.decode()):
                assert worker.process is not None
                log.info("worker %d ready again (pid %d)", worker.slot, worker.process.pid)

        return done

    async def _stop_all(self) -> None:
        """SIGTERM every worker (each drains), wait, SIGKILL what is left past the grace."""
        live = [worker for worker in self.workers if worker.alive]
        for worker in live:
            assert worker.process is not None
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        config = self.config
        patience = config.drain_delay + config.shutdown_grace + KILL_AFTER
        waits = [asyncio.ensure_future(w.process.wait()) for w in live if w.process is not None]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=patience)
            for wait in pending:
                wait.cancel()
        for worker in live:
            assert worker.process is not None
            if worker.process.returncode is None:
                log.error("worker %d did not stop within %g s: killing it", worker.slot, patience)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            elif worker.process.returncode:
                log.warning("worker %d %s", worker.slot, _describe(worker.process.returncode))
            worker.close_control()
        log.info("all workers stopped")


def _configure_logs(config: Config) -> None:
    if config.log_format == "json":
        from .logs import configure  # (imports aiohttp; only for JSON lines)

        configure(config.log_level, config.log_format)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())


def run(config: Config, argv: Sequence[str], count: int) -> int:
    """Be the parent of ``count`` workers serving ``config`` until SIGINT/SIGTERM (the exit code).

    ``argv`` is the command line the workers get (``serve`` and its flags).
    """
    _configure_logs(config)
    if not Path(sys.executable).exists():  # pragma: no cover - a broken venv
        log.error("cannot start workers: %s does not exist", sys.executable)
        return 1
    return asyncio.run(_Parent(config, argv, count).run())
