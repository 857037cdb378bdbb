"""The gateway's Prometheus metrics: :class:`Metrics`, rendered by ``GET /metrics``.

Names follow the OpenTelemetry GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/) in their
Prometheus form (dots to underscores, the unit as a suffix); the gateway's own
are ``sse_engine_*``. The README's "Metrics and logs" lists every one.

What it costs a stream (benchmarks/NOTES.md, issue 15): nothing per chunk. The
relay counts in plain locals and hands one :class:`~engine.streams.stats.StreamEnd`
over when the stream ends; it is folded in here with one dict lookup (the
labelled series of its provider and model, made once) and a dozen
``observe``/``inc`` calls, about 10 us. Gauges and the counters that hot code
bumps in place (heartbeats, back-pressure waits) are read from the engine's
registries when Prometheus scrapes (:class:`_Live`), so they cost nothing
between scrapes.

prometheus_client is an extra (``pip install 'sse-engine[metrics]'``); without
it :meth:`Metrics.create` returns None and ``/metrics`` answers 503 naming it.
One :class:`CollectorRegistry` per engine, never prometheus_client's global
one: two apps in one process (tests, ``add_subapp``) each count their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .streams.stats import REASONS

if TYPE_CHECKING:
    from .streams.generation import Generations
    from .streams.log import Registry
    from .streams.stats import StreamEnd
    from .streams.supervisor import StreamSupervisor
    from .wire import Usage

__all__ = ["EXTRA", "MAX_MODELS", "OTHER", "RESUME_OUTCOMES", "Metrics"]

#: What to install for metrics, named in ``/metrics``' 503 without it.
EXTRA = "pip install 'sse-engine[metrics]'"

#: Distinct (provider, model) label pairs kept; later models are counted as
#: :data:`OTHER`. Any client may name any model (the mock takes every name), and
#: each pair costs about 80 series: a scrape stays bounded (OpenTelemetry's
#: SDKs cap a metric at 2,000 attribute sets by default).
MAX_MODELS = 100
OTHER = "other"

#: How ``GET /v1/streams/{id}`` (and a reconnect with Last-Event-ID) was answered.
RESUME_OUTCOMES = ("replayed", "live", "204", "404", "410", "503")

# Buckets: OpenTelemetry's advisory boundaries, extended where a gateway's
# streams go further (a stream lasts minutes; reasoning models think for minutes
# before their first token, hence TTFT up to 640 s).
DURATION_BUCKETS = (
    *(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
    *(163.84, 327.68, 655.36),
)
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1 .. 67,108,864
TTFT_BUCKETS = (
    *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
    *(20.0, 40.0, 80.0, 160.0, 320.0, 640.0),
)
TPOT_BUCKETS = (
    *(0.0001, 0.0005, 0.001, 0.005),  # (the mock and cached replies are that fast)
    *(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
)
DELAY_BUCKETS = (
    *(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005),
    *(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

_GEN_AI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")


class _Live:
    """The values read from the engine when Prometheus scrapes (a custom collector)."""

    def __init__(
        self,
        supervisor: StreamSupervisor,
        generations: Generations,
        registry: Registry | None,
    ) -> None:
        self._supervisor = supervisor
        self._generations = generations
        self._registry = registry

    def describe(self) -> Iterator[Any]:
        return self._families(False)

    def collect(self) -> Iterator[Any]:
        return self._families(True)

    def _families(self, values: bool) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        supervisor, generations, registry = self._supervisor, self._generations, self._registry

        def gauge(name: str, doc: str, value: Callable[[], float]) -> Any:
            return GaugeMetricFamily(name, doc, value() if values else None)

        def counter(name: str, doc: str, value: Callable[[], float]) -> Any:
            return CounterMetricFamily(name, doc, value() if values else None)

        yield gauge(
            "sse_engine_open_streams",
            "Responses streaming to a client now (every route, resumed readers too).",
            supervisor.open_streams,
        )
        yield gauge(
            "sse_engine_generations",
            "Generations running now (detached ones too).",
            lambda: len(generations),
        )
        yield gauge(
            "sse_engine_detached_generations",
            "Generations going on after their client left (options.detach, a resumed reader).",
            generations.detached,
        )
        yield gauge(
            "sse_engine_asyncio_tasks",
            "asyncio tasks alive in the event loop now (streams, generations, the server's own): "
            "flat under a steady load, or something is left behind (benchmarks/soak.py).",
            # Counted at scrape time (one pass over the loop's task set), nothing in between.
            lambda: len(asyncio.all_tasks()),
        )
        yield counter(
            "sse_engine_heartbeats",
            "Keep-alive comments written to idle streams.",
            lambda: supervisor.heartbeats,
        )
        yield counter(
            "sse_engine_backpressure_waits",
            "Writes that waited for a slow reader to drain.",
            lambda: supervisor.waits,
        )
        if registry is not None:
            yield gauge(
                "sse_engine_resume_logs",
                "Streams whose events are kept for resume.",
                lambda: len(registry),
            )
            yield gauge(
                "sse_engine_resume_log_bytes",
                "Bytes of events kept for resume, all streams together.",
                lambda: registry.size,
            )
            yield counter(
                "sse_engine_stream_log_unlogged",
                "Streams that stopped being kept in the Redis stream log (it was slow or "
                "down): resumable only on their own worker.",
                lambda: registry.unlogged,
            )


class Metrics:
    """One engine's metrics (see the module docstring). Make it with :meth:`create`."""

    def __init__(
        self,
        supervisor: StreamSupervisor,
        generations: Generations,
        registry: Registry | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = reg = CollectorRegistry(auto_describe=True)
        self._duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration: the upstream request to the reply's end.",
            _GEN_AI,
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self._tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per operation (estimated when the provider reported none).",
            (*_GEN_AI, "gen_ai_token_type"),
            buckets=TOKEN_BUCKETS,
            registry=reg,
        )
        self._ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the upstream request to the first chunk of a streamed reply.",
            _GEN_AI,
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self._tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, for complete streamed replies.",
            _GEN_AI,
            buckets=TPOT_BUCKETS,
            registry=reg,
        )

        def each(name: str, doc: str, label: str, values: tuple[str, ...]) -> dict[str, Any]:
            """A counter by ``label``, every value's series made now (all show as 0 at once)."""
            counter = Counter(name, doc, (label,), registry=reg)
            return {value: counter.labels(value) for value in values}

        self._ended = each(
            "sse_engine_streams_ended", "Relayed streams ended, by reason.", "reason", REASONS
        )
        self._resumes = each(
            "sse_engine_resumes",
            "Resume requests (Last-Event-ID), by how they were answered.",
            "outcome",
            RESUME_OUTCOMES,
        )
        self._chunks = Counter(
            "sse_engine_relayed_chunks", "Upstream chunks relayed to streams.", registry=reg
        )
        self._bytes = Counter(
            "sse_engine_relayed_bytes",
            "Bytes written on relayed streams (headers and HTTP framing included).",
            registry=reg,
        )
        self._delay = Histogram(
            "sse_engine_chunk_delay_seconds",
            "The gateway's own delay per chunk, from the provider's parser to the socket "
            "(sampled: one chunk in 16, at most 32 a stream).",
            buckets=DELAY_BUCKETS,
            registry=reg,
        )
        self._upstream = Counter(
            "sse_engine_upstream_requests",
            "Upstream HTTP requests (each attempt), by provider and status "
            "(error: no connection; timeout: no answer within first_byte_timeout).",
            ("gen_ai_provider_name", "status"),
            registry=reg,
        )
        self._retries = Counter(
            "sse_engine_upstream_retries",
            "Upstream attempts that were retries.",
            ("gen_ai_provider_name",),
            registry=reg,
        )
        self._ttfb = Histogram(
            "sse_engine_upstream_time_to_first_byte_seconds",
            "Time from sending an upstream request to its response status.",
            ("gen_ai_provider_name",),
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        # The values read from the engine's registries: in a registry of their own,
        # rendered on the event loop (those registries are not thread-safe), while
        # the labelled series render in a thread (render_async).
        self._live = CollectorRegistry(auto_describe=True)
        self._live.register(_Live(supervisor, generations, registry))
        self._rendering = asyncio.Lock()
        # The labelled series of each (provider, model): made once, then looked up once a stream.
        self._series: dict[tuple[str, str], tuple[Any, ...]] = {}

    @classmethod
    def create(
        cls,
        supervisor: StreamSupervisor,
        generations: Generations,
        registry: Registry | None = None,
    ) -> Metrics | None:
        """The engine's metrics, or None when prometheus_client is not installed."""
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            return None
        return cls(supervisor, generations, registry)

    def _of(self, provider: str, model: str) -> tuple[Any, ...]:
        series = self._series.get((provider, model))
        if series is None:
            key = (provider, model if len(self._series) < MAX_MODELS else OTHER)
            series = self._series.get(key)
            if series is None:
                labels = ("chat", *key)
                series = (
                    self._duration.labels(*labels),
                    self._tokens.labels(*labels, "input"),
                    self._tokens.labels(*labels, "output"),
                    self._ttft.labels(*labels),
                    self._tpot.labels(*labels),
                )
                self._series[key] = series
        return series

    def stream_ended(self, end: StreamEnd) -> None:
        """Fold one stream in (the relay's ``finally``, through engine.telemetry)."""
        duration, tokens_in, tokens_out, ttft, tpot = self._of(end.provider, end.model)
        duration.observe(end.ended - end.started)
        tokens_in.observe(end.input_tokens)
        tokens_out.observe(end.output_tokens)
        first = end.first_chunk
        if first:
            ttft.observe(first - end.started)
            if end.reason == "done" and end.output_tokens > 1:
                tpot.observe((end.ended - first) / (end.output_tokens - 1))
        self._ended[end.reason].inc()
        self._chunks.inc(end.chunks)
        self._bytes.inc(end.bytes)
        observe = self._delay.observe
        for delay in end.delays:
            observe(delay)

    def reply_ended(self, provider: str, model: str, seconds: float, usage: Usage | None) -> None:
        """Fold one reply that was not streamed (``POST /v1/chat``, ``stream: false``)."""
        duration, tokens_in, tokens_out, _, _ = self._of(provider, model)
        duration.observe(seconds)
        if usage is not None:
            tokens_in.observe(usage.prompt_tokens)
            tokens_out.observe(usage.completion_tokens)

    def resumed(self, outcome: str) -> None:
        self._resumes[outcome].inc()

    def upstream(self, provider: str) -> Callable[[str, float, bool], None]:
        """The callback an upstream calls once per attempt (``Upstream.observe``)."""
        statuses: dict[str, Any] = {}
        ttfb = self._ttfb.labels(provider)
        retries = self._retries.labels(provider)

        def observe(status: str, seconds: float, retry: bool) -> None:
            counter = statuses.get(status)
            if counter is None:
                counter = statuses[status] = self._upstream.labels(provider, status)
            counter.inc()
            if status != "error" and status != "timeout":
                ttfb.observe(seconds)
            if retry:
                retries.inc()

        return observe

    def render(self) -> bytes:
        """The exposition, Prometheus' text format 0.0.4 (what every scraper reads)."""
        from prometheus_client.exposition import generate_latest

        return generate_latest(self._live) + generate_latest(self.registry)

    async def render_async(self) -> bytes:
        """:meth:`render` without holding the streams up: the labelled series in a thread.

        With every model label in use the exposition is some 10,000 series and
        prometheus_client takes about 90 ms to write them, which on the event
        loop stalled every stream for as long (benchmarks/metrics_scrape.py).
        In a thread the loop keeps running: CPython hands the GIL over every
        5 ms (``sys.getswitchinterval``), and prometheus_client's values are
        thread-safe (a lock each). One render at a time: scrapes that overlap
        wait for the one before rather than each taking a thread.
        """
        from prometheus_client.exposition import generate_latest

        async with self._rendering:
            live = generate_latest(self._live)  # a handful of gauges, read on the loop
            return live + await asyncio.to_thread(generate_latest, self.registry)
