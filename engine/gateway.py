"""The :class:`Engine` facade: the seed's ``Engine`` in asyncio form.

One object owns what must be shared and closed: the HTTP session every provider
reads through, the providers themselves, the stream supervisor and the memory
store. Library users hold one for the life of their program::

    async with Engine(Config.load()) as engine:
        async for chunk in engine.provider("anthropic").stream(messages):
            ...

and ``create_app()`` holds one per application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from aiohttp import web

from .auth import Gatekeeper
from .config import Config
from .dialects.openai_responses.run import LiveResponses
from .errors import EngineError, StoreUnavailable, UnknownProvider
from .providers import Provider, create_provider, resolve
from .streams import EventStream, StreamSupervisor
from .streams.generation import Generations
from .streams.log import Registry
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .memory import MemoryStore
    from .siblings import Siblings

__all__ = ["ENGINE", "Engine"]

T = TypeVar("T")

log = logging.getLogger("engine.auth")


class Engine:
    """Providers, streams and memory, configured once.

    ``session`` may be passed to share an existing ``aiohttp.ClientSession``
    (it is then not closed here); otherwise one is created on first use.
    """

    def __init__(
        self, config: Config | None = None, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.config = config if config is not None else Config.load()
        self._session = session
        self._own_session = session is None
        self._providers: dict[str, Provider] = {}
        self._store: MemoryStore | None = None
        self._store_lock: asyncio.Lock | None = None
        self.supervisor = StreamSupervisor(self.config.heartbeat)
        config = self.config
        #: Live generations by stream id, for Stop.
        self.generations = Generations()
        #: ``/v1/responses`` responses still being generated, by id (engine.api.responses).
        self.responses = LiveResponses()
        #: Client keys, tokens and limits (engine.auth).
        self.gate = Gatekeeper(config)
        # Tasks the engine owns (detached generations and their watches).
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The logs of native streams, for resume (``None`` with ``resume = false``).
        self.registry: Registry | None = (
            Registry(
                max_bytes=config.resume_max_bytes,
                total_bytes=config.resume_total_bytes,
                ttl=config.resume_ttl,
            )
            if config.resume and not config.stream_log
            else None
        )
        if config.resume and config.stream_log:
            from .streams.redis_log import RedisRegistry

            self.registry = RedisRegistry(
                config.stream_log,
                max_bytes=config.resume_max_bytes,
                total_bytes=config.resume_total_bytes,
                ttl=config.resume_ttl,
                maxlen=config.stream_log_maxlen,
                generations=self.generations,
                spawn=self.spawn,
            )
        #: Metrics and stream log lines (engine.telemetry); the relay reports to it.
        self.telemetry = Telemetry(config, self.supervisor, self.generations, self.registry)
        if self.telemetry.active:
            self.supervisor.observer = self.telemetry
        #: True once the server began to drain (``/readyz`` answers 503).
        self.draining = False
        #: The other workers of ``serve --workers N`` (engine.siblings); None alone.
        self.siblings: Siblings | None = None
        #: Appended to every stream id made here: ``-w<slot>`` in a worker of
        #: ``serve --workers N``, so that any worker knows which one holds the
        #: stream (engine.siblings); empty otherwise.
        self.stream_tag = ""
        # Bound once, for every caller: each open stream holds it (EventStream's
        # ``scrub``), and a bound method made per stream is 64 bytes (NOTES.md, Change 12).
        self.scrub = self.scrub  # type: ignore[method-assign]

    @classmethod
    def from_env(cls, **overrides: Any) -> Engine:
        """An engine configured from the environment (and ``overrides``)."""
        return cls(Config.load(**overrides))

    # -- providers -------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        """The one HTTP session all providers share (created on first use)."""
        if self._session is None:
            # No connection limit: a gateway relays as many streams as clients
            # open; aiohttp's default of 100 would queue the 101st silently.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    def provider(self, name: str | None = None) -> Provider:
        """The provider ``name`` (the configured default when ``None``).

        Raises :class:`~engine.errors.UnknownProvider` for a name it does not know.
        """
        name = name or self.config.provider
        provider = self._providers.get(name)
        if provider is not None:
            return provider
        targets = self.config.fallbacks.get(name)
        if targets is not None:
            provider = self._fallback(name, targets)
            self._providers[name] = provider
            return provider
        canonical = resolve(name)
        provider = self._providers.get(canonical)
        if provider is None:
            provider = create_provider(canonical, self.config, session=self.session)
            self.telemetry.watch(provider)
            self._providers[canonical] = provider
        return provider

    def _fallback(self, name: str, targets: list[str]) -> Provider:
        from .providers.fallback import Fallback

        resolved = []
        for target in targets:
            prefix, _, model = target.partition("/")
            if prefix in self.config.fallbacks:
                raise UnknownProvider(f"fallback {name!r}: {target!r} names another fallback")
            resolved.append((self.provider(prefix), model, target))
        return Fallback(name, resolved)

    def add_provider(self, provider: Provider, name: str | None = None) -> None:
        """Serve ``provider`` under ``name`` (default: its own name), e.g. a custom adapter.

        It then answers requests naming it, ahead of the built-in registry.
        """
        self._providers[name or provider.name] = provider
        self.telemetry.watch(provider)

    # -- errors ----------------------------------------------------------------

    def secrets(self) -> tuple[str, ...]:
        """Every provider key this engine knows: configured, and of providers in use."""
        keys = {s.api_key for s in self.config.providers.values() if s.api_key}
        for provider in self._providers.values():
            http = getattr(provider, "http", None)
            keys.update(getattr(http, "secrets", ()))
        # Longest first, so a key that contains another is replaced whole.
        return tuple(sorted(keys, key=len, reverse=True))

    def redact(self, text: str) -> str:
        """``text`` with every provider key replaced by ``***``.

        Called where an error leaves the gateway (the error middleware and a
        stream's error event), so a key that reached an error message by any
        path (a provider echoing it, an in-stream error event) never reaches
        a client or the log.
        """
        for secret in self.secrets():
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def scrub(self, exc: EngineError) -> EngineError:
        """``exc`` with its message redacted (in place), ready to leave the gateway."""
        exc.message = self.redact(exc.message)
        return exc

    # -- streams ---------------------------------------------------------------

    def sse(self, request: web.BaseRequest, **headers: str) -> EventStream:
        """An :class:`EventStream` answering ``request`` with this engine's heartbeat and limits."""
        return EventStream(
            request,
            supervisor=self.supervisor,
            send_timeout=self.config.send_timeout,
            retry_ms=self.config.retry_ms,
            headers=headers or None,
            scrub=self.scrub,
        )

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` in a task the engine owns (kept referenced; cancelled by ``aclose``)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- memory ----------------------------------------------------------------

    async def open_memory(self) -> MemoryStore:
        """Open the memory store named by ``config.memory_url`` (once)."""
        if self._store is None:
            if self._store_lock is None:
                self._store_lock = asyncio.Lock()
            async with self._store_lock:
                if self._store is None:
                    from .memory import open_store

                    self._store = await open_store(
                        self.config.memory_url, ttl=self.config.memory_ttl
                    )
        return self._store

    async def open_keys(self) -> None:
        """Open the key store beside the memory store, read its keys, and keep them fresh.

        A store that is down at start-up leaves the config's keys working and
        is retried every ``key_refresh`` seconds. Meanwhile a gateway that
        would be open fails closed when it listens beyond loopback (unless
        ``allow_anonymous``): stored keys it cannot read yet may exist.
        """
        config = self.config
        if config.limits_url:
            from .memory import _driver

            with _driver("redis", "redis", "redis"):
                from .limits_redis import open_limiter
            self.gate.limiter = await open_limiter(config.limits_url, spent=self.gate.record_spent)
        if not await self._open_keystore():
            from .hosts import is_loopback

            if not (config.allow_anonymous or is_loopback(config.host)):
                self.gate.required = True
        self.spawn(self._refresh_keys())

    async def _open_keystore(self) -> bool:
        from .keystore import open_keystore

        try:
            await self.gate.open(await open_keystore(self.config.memory_url))
        except StoreUnavailable as exc:
            log.warning("key store unavailable: %s", exc.message)
            return False
        return True

    async def _refresh_keys(self) -> None:
        while True:
            await asyncio.sleep(self.config.key_refresh)
            if self.gate.store is None:
                await self._open_keystore()
                continue
            try:
                await self.gate.refresh()
            except StoreUnavailable as exc:
                log.warning("could not re-read the keys: %s", exc.message)

    def memory(self) -> MemoryStore:
        """The conversation store; ``store.for_parent("ChatSession", "42")`` scopes it.

        Raises ``RuntimeError`` before :meth:`open_memory` (``create_app`` and
        ``async with Engine()`` call it).
        """
        if self._store is None:
            raise RuntimeError("memory is not open: use `async with Engine()` or open_memory()")
        return self._store

    # -- lifetime --------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """False once the server drains or stops: ``/readyz`` then answers 503."""
        return not (self.draining or self.supervisor.stopping)

    async def shutdown(self, grace: float | None = None) -> None:
        """Let open streams finish for ``grace`` seconds, then end them with a shutdown error."""
        await self.supervisor.shutdown(self.config.shutdown_grace if grace is None else grace)

    async def aclose(self) -> None:
        """Close providers, the supervisor, the store and (if ours) the HTTP session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # Generations still live: detached ones run in handler tasks that no
        # connection holds any more (a resumed reader kept them going).
        tasks += self.generations.abandon_all()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.supervisor.aclose()
        with contextlib.suppress(StoreUnavailable):
            await self.gate.aclose()
        if self.registry is not None:
            await self.registry.aclose()
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()
        if self._store is not None:
            store, self._store = self._store, None
            await store.aclose()
        if self._session is not None and self._own_session:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> Engine:
        await self.open_memory()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


#: The application's :class:`Engine`, for handlers of an app that mounts ours
#: (``request.app[ENGINE]``; ``engine.app`` re-exports it).
ENGINE = web.AppKey("engine", Engine)
