"""Where what the engine counts goes: :class:`Telemetry`, the metrics and the stream log lines.

One per :class:`~engine.gateway.Engine`. It hears of every relayed stream's
end (the supervisor's ``observer``: the relay reports once, in its ``finally``),
of every reply not streamed, of every resume, and of every upstream attempt
(``Upstream.observe``, set on each HTTP provider the engine makes), and passes
them to :class:`~engine.metrics.Metrics` (``metrics = true``, the default, with
prometheus_client installed) and, with ``log_format = "json"``, to one log line
per stream end on ``engine.stream`` (engine.logs renders it).

A line names the key by its alias, never the key; message content only with
``log_content`` (the reply's text, at most :data:`MAX_LOGGED_CONTENT` characters).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .metrics import EXTRA, Metrics

if TYPE_CHECKING:
    from .config import Config
    from .providers import Provider
    from .streams.generation import Generations
    from .streams.log import Registry
    from .streams.stats import StreamEnd
    from .streams.supervisor import StreamSupervisor
    from .wire import Usage

__all__ = ["MAX_LOGGED_CONTENT", "Telemetry"]

log = logging.getLogger("engine.stream")

#: Characters of a reply's text a log line holds at most (``--log-content``).
MAX_LOGGED_CONTENT = 64 * 1024


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class Telemetry:
    """The engine's metrics and stream log lines (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        supervisor: StreamSupervisor,
        generations: Generations,
        registry: Registry | None = None,
    ) -> None:
        self.metrics: Metrics | None = (
            Metrics.create(supervisor, generations, registry) if config.metrics else None
        )
        #: Why ``/metrics`` cannot answer (None: it can).
        self.unavailable: str | None = None
        if not config.metrics:
            self.unavailable = "metrics are off (metrics = false, --metrics off)"
        elif self.metrics is None:
            self.unavailable = f"metrics need the prometheus_client package: {EXTRA}"
        #: One JSON line per stream end.
        self.log_streams = config.log_format == "json"
        self.log_content = config.log_content

    @property
    def active(self) -> bool:
        """True if anything listens: else the relay reports nothing."""
        return self.metrics is not None or self.log_streams

    def stream_ended(self, end: StreamEnd) -> None:
        if self.metrics is not None:
            self.metrics.stream_ended(end)
        if self.log_streams:
            fields: dict[str, Any] = {
                "event": "stream_end",
                "stream_id": end.stream_id,
                "provider": end.provider,
                "model": end.model,
                "status": end.status,
                "reason": end.reason,
                "ttft_s": _seconds(end.ttft),
                "duration_s": _seconds(end.duration),
                "input_tokens": end.input_tokens,
                "output_tokens": end.output_tokens,
                "tokens_estimated": end.estimated,
                "chunks": end.chunks,
                "bytes": end.bytes,
            }
            if end.alias is not None:
                fields["key"] = end.alias
            if end.content is not None:
                fields["content"] = end.content[:MAX_LOGGED_CONTENT]
            log.info("stream %s ended: %s", end.stream_id, end.reason, extra={"fields": fields})

    def reply_ended(self, provider: str, model: str, seconds: float, usage: Usage | None) -> None:
        if self.metrics is not None:
            self.metrics.reply_ended(provider, model, seconds, usage)

    def resumed(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.resumed(outcome)

    def watch(self, provider: Provider) -> None:
        """Count ``provider``'s upstream requests (an HTTP provider; others have none)."""
        http = getattr(provider, "http", None)
        if self.metrics is not None and http is not None and hasattr(http, "observe"):
            http.observe = self.metrics.upstream(provider.name)
