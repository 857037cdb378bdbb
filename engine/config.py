"""Configuration, read once: defaults, then a TOML file, then the environment, then flags.

Everything the engine reads from outside lives in one :class:`Config` built at
start-up; nothing else in the package looks at ``os.environ``. Later sources win:
a flag beats an environment variable, which beats the file.

A TOML file mirrors the fields below::

    provider = "anthropic"
    heartbeat = 15

    [providers.anthropic]
    api_key = "..."
    model = "claude-sonnet-4-5"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from .errors import InvalidFields
from .keys import KeyPolicy
from .wire import MAX_HISTORY

__all__ = ["DEFAULT_MODELS", "MAX_HISTORY_LIMIT", "Config", "KeyConfig", "ProviderSettings"]

#: The model each provider uses when neither the request nor the config names one.
DEFAULT_MODELS: dict[str, str] = {
    "mock": "mock-1",
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
}

# Environment variables per provider: (setting, variable names, first found wins).
_PROVIDER_ENV: dict[str, dict[str, tuple[str, ...]]] = {
    "openai": {
        "api_key": ("OPENAI_API_KEY",),
        "base_url": ("OPENAI_BASE_URL",),
        "organization": ("OPENAI_ORGANIZATION", "OPENAI_ORG_ID"),
        "model": ("OPENAI_MODEL",),
        "max_tokens_field": ("OPENAI_MAX_TOKENS_FIELD",),
    },
    "anthropic": {
        "api_key": ("ANTHROPIC_API_KEY",),
        "base_url": ("ANTHROPIC_BASE_URL",),
        "model": ("ANTHROPIC_MODEL",),
    },
    "gemini": {
        "api_key": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        "base_url": ("GEMINI_BASE_URL",),
        "model": ("GEMINI_MODEL",),
    },
}

# Engine-wide settings that may come from the environment.
_ENGINE_ENV: dict[str, str] = {
    "provider": "ENGINE_PROVIDER",
    "memory_url": "ENGINE_MEMORY_URL",
    "host": "ENGINE_HOST",
    "port": "ENGINE_PORT",
    "log_level": "ENGINE_LOG_LEVEL",
    "admin_key": "SSE_ENGINE_ADMIN_KEY",
    "token_secret": "SSE_ENGINE_TOKEN_SECRET",
    "limits_url": "SSE_ENGINE_LIMITS_URL",
    "stream_log": "SSE_ENGINE_STREAM_LOG",
    "log_format": "ENGINE_LOG_FORMAT",
    "metrics_key": "SSE_ENGINE_METRICS_KEY",
    "workers": "ENGINE_WORKERS",
}

Seconds = Annotated[float, Meta(gt=0)]

#: Largest ``max_history`` a request or the config may ask for.
MAX_HISTORY_LIMIT = MAX_HISTORY


class ProviderSettings(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """How to reach one provider. ``api_key`` is never logged or echoed."""

    api_key: str | None = None
    base_url: str | None = None
    model: str | None = None
    organization: str | None = None
    #: Seconds to open the TCP/TLS connection.
    connect_timeout: Seconds = 10.0
    #: Seconds from sending the request to the response status (reasoning models think first).
    first_byte_timeout: Seconds = 300.0
    #: Seconds allowed between two pieces of a streamed body.
    idle_timeout: Seconds = 120.0
    #: Retries before the response headers went out, for 429, 5xx and connect errors.
    max_retries: Annotated[int, Meta(ge=0, le=10)] = 2
    #: Anthropic requires ``max_tokens`` on every request; this is sent when the request has none.
    default_max_tokens: Annotated[int, Meta(ge=1)] = 4096
    #: The field an OpenAI-compatible upstream reads the output limit from:
    #: ``max_completion_tokens`` (OpenAI's; reasoning models refuse the other),
    #: or the older ``max_tokens`` for servers that know only that one.
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"

    def __repr__(self) -> str:
        # Keep keys out of reprs, tracebacks and logs.
        key = "***" if self.api_key else None
        return f"ProviderSettings(base_url={self.base_url!r}, model={self.model!r}, api_key={key})"


class KeyConfig(KeyPolicy, kw_only=True, forbid_unknown_fields=True):
    """A client key in the TOML file (``[keys.<alias>]``): the secret or its hash, and its policy.

    ``key`` is the secret itself (``sk-sse-...``, from ``sse-engine keys new``);
    ``hash`` its SHA-256 in hex, for a file that must not hold secrets. One of the two.
    """

    key: Annotated[str, Meta(min_length=20, max_length=512)] | None = None
    hash: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")] | None = None

    def __post_init__(self) -> None:
        if (self.key is None) == (self.hash is None):
            raise ValueError("a key needs exactly one of `key` and `hash`")

    def __repr__(self) -> str:
        return f"KeyConfig(key={'***' if self.key else None}, hash={self.hash!r})"


FallbackName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
FallbackTargets = Annotated[
    list[Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+/\S+$")]], Meta(min_length=1, max_length=8)
]


class Config(Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything the engine is configured with."""

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    #: The provider a request gets when it names none.
    provider: str = "mock"
    #: Seconds of silence after which a stream gets a keep-alive comment.
    heartbeat: Seconds = 15.0
    #: Seconds a write may wait for a slow client before the stream is dropped.
    send_timeout: Seconds = 30.0
    #: Seconds open streams get to finish when the server stops.
    shutdown_grace: Annotated[float, Meta(ge=0)] = 10.0
    #: Largest request body accepted, in bytes (413 above).
    max_body_size: Annotated[int, Meta(ge=1)] = 1024 * 1024
    #: The reconnection delay sent to clients as ``retry:``, in milliseconds.
    retry_ms: Annotated[int, Meta(ge=0)] = 3000
    #: Seconds a stream waits for the upstream before its headers go out anyway
    #: and heartbeats begin (a later refusal is then an ``error`` event): proxies
    #: cut silent connections at 60 s, and reasoning models think for minutes.
    header_deadline: Seconds = 10.0
    #: Seconds a connection may take to send a complete request head (slowloris).
    header_timeout: Seconds = 10.0
    #: Seconds an idle kept-alive connection stays open between requests.
    keepalive_timeout: Seconds = 75.0
    #: ``Host`` values the gateway answers (DNS rebinding). ``None``: loopback
    #: names when ``host`` is a loopback address, any name otherwise; ``["*"]``:
    #: any. An entry is a host name or address, without port; a leading dot
    #: (``.example.com``) also matches sub-domains.
    allowed_hosts: list[str] | None = None
    #: Seconds a native stream goes on producing, into its log, after its last reader
    #: left, when the request does not set ``options.detach`` (0: stop at once).
    detach: Annotated[float, Meta(ge=0)] = 0.0
    #: The most a request may ask for with ``options.detach``.
    max_detach: Annotated[float, Meta(ge=0)] = 300.0
    #: Keep each native stream's events for resume by ``Last-Event-ID`` (``--resume off``: not).
    resume: bool = True
    #: Bytes of framed events kept per stream; past it the oldest go (a resume there is 410).
    resume_max_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024
    #: Seconds a finished stream stays resumable.
    resume_ttl: Annotated[float, Meta(ge=0)] = 600.0
    #: Bytes of all streams' logs together; past it finished streams go first, oldest first.
    resume_total_bytes: Annotated[int, Meta(ge=1024)] = 256 * 1024 * 1024
    #: Stored messages sent upstream when a request does not set ``max_history``.
    max_history: Annotated[int, Meta(ge=0, le=MAX_HISTORY_LIMIT)] = 100
    #: Characters of stored history sent upstream at most (oldest dropped first).
    max_history_chars: Annotated[int, Meta(ge=0)] = 1_000_000
    log_level: str = "info"
    #: Where conversation memory lives: sqlite:///path, memory://, redis://..., postgresql://...
    memory_url: str = "sqlite:///./engine-memory.db"
    #: Seconds a conversation is kept by stores that expire keys (Redis).
    memory_ttl: Annotated[int, Meta(ge=1)] = 30 * 24 * 3600
    providers: dict[str, ProviderSettings] = msgspec.field(default_factory=dict)
    #: Model names that try several ``provider/model`` targets in turn, the next
    #: one when a target fails before its first byte (engine.providers.fallback).
    fallbacks: dict[FallbackName, FallbackTargets] = msgspec.field(default_factory=dict)
    #: Client keys from the file, by alias (more are made through the admin API).
    #: With none here, none stored and no ``admin_key``, the gateway is open to
    #: anyone who reaches it, which it allows only on a loopback address.
    keys: dict[FallbackName, KeyConfig] = msgspec.field(default_factory=dict)
    #: The key of the admin API (``/v1/admin/keys``); it may do everything.
    admin_key: Annotated[str, Meta(min_length=20, max_length=512)] | None = None
    #: Signs the short-lived tokens of ``POST /v1/tokens``; derived from
    #: ``admin_key`` when unset (random per process when neither is set).
    token_secret: Annotated[str, Meta(min_length=20)] | None = None
    #: Seconds a minted token is valid, at most (a request may ask for less).
    token_ttl: Annotated[float, Meta(ge=10, le=86_400)] = 600.0
    #: Listen on a non-loopback address with no keys (anyone may spend the provider keys).
    allow_anonymous: bool = False
    #: Origins whose pages may call the gateway (CORS); none by default.
    cors_origins: list[str] = msgspec.field(default_factory=list)
    #: Generations running at once in this process, all keys together (503 beyond; 0: no cap).
    max_streams: Annotated[int, Meta(ge=0)] = 0
    #: Connections open at once from one client address (``serve``; 0: no cap).
    max_connections_per_ip: Annotated[int, Meta(ge=0)] = 0
    #: Where per-key counters live: ``redis://...`` shares them across workers and
    #: boxes; unset, each process counts for itself.
    limits_url: str | None = None
    #: Where native streams' logs live for resume: ``redis://host:port/db`` keeps them
    #: in Redis Streams, so a resume or a Stop works on any worker of any box
    #: (engine.streams.redis_log); unset, each process keeps its own in memory.
    stream_log: str | None = None
    #: Entries of one stream kept in the Redis stream log (``XADD MAXLEN ~``); a
    #: resume from before the earliest kept is refused (410 ``resume_gap``).
    stream_log_maxlen: Annotated[int, Meta(ge=100)] = 20_000
    #: Seconds between re-reads of the stored keys (changes made elsewhere show within it).
    key_refresh: Seconds = 5.0
    #: Count for ``GET /metrics`` (needs the ``metrics`` extra, prometheus_client).
    metrics: bool = True
    #: A bearer token that may read ``/metrics`` when client keys are on (so may the
    #: admin key); with no keys, ``/metrics`` is open like the rest of the gateway.
    metrics_key: Annotated[str, Meta(min_length=20, max_length=512)] | None = None
    #: ``text``, or ``json``: one JSON object per line, a line per request and per stream end.
    log_format: Literal["text", "json"] = "text"
    #: Put message content (a reply's text) in the stream-end log lines.
    log_content: bool = False
    #: Seconds between SIGTERM and closing the listener, ``/readyz`` answering 503
    #: meanwhile, so a load balancer stops sending new streams first (``serve``).
    drain_delay: Annotated[float, Meta(ge=0)] = 0.0
    #: Worker processes ``serve`` runs on the one port (SO_REUSEPORT), or ``"auto"``:
    #: one per CPU this process may use (engine.workers).
    workers: Annotated[int, Meta(ge=1, le=256)] | Literal["auto"] = 1

    def __repr__(self) -> str:
        # The admin key and the token secret stay out of reprs, tracebacks and logs.
        shown = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in ("admin_key", "token_secret", "metrics_key") and value is not None:
                value = "***"
            shown.append(f"{name}={value!r}")
        return f"Config({', '.join(shown)})"

    def provider_settings(self, name: str) -> ProviderSettings:
        """The settings for ``name``, defaults filled in (the model above all)."""
        settings = self.providers.get(name) or ProviderSettings()
        if settings.model is None:
            settings = msgspec.structs.replace(settings, model=DEFAULT_MODELS.get(name, name))
        return settings

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Config:
        """Build the config: defaults < TOML file at ``path`` < ``environ`` < ``overrides``.

        ``environ`` defaults to ``os.environ``; pass ``{}`` to ignore it (tests do).
        ``None`` values in ``overrides`` are skipped, so unset flags change nothing.

        Raises :class:`~engine.errors.InvalidFields` for a bad file or value.
        """
        data: dict[str, Any] = {}
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise InvalidFields(f"cannot read config file {path}: {exc}") from exc
        env = os.environ if environ is None else environ
        for field, var in _ENGINE_ENV.items():
            if env.get(var):
                data[field] = env[var]
        providers = data.setdefault("providers", {})
        for name, fields in _PROVIDER_ENV.items():
            for field, names in fields.items():
                value = next((env[n] for n in names if env.get(n)), None)
                if value is not None:
                    providers.setdefault(name, {})[field] = value
        for key, value in overrides.items():
            if value is not None:
                data[key] = value
        try:
            return msgspec.convert(data, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidFields(f"invalid configuration: {exc}") from exc
