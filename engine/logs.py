"""JSON logs (``--log-format json``): :class:`JSONFormatter` and :class:`JSONAccessLogger`.

One JSON object per line, for a log shipper: every record the engine logs
(``time``, ``level``, ``logger``, ``message``, and the record's ``fields``
when it has some), a line per request (``event: "request"``, written by
:class:`JSONAccessLogger` from ``serve``'s server) and a line per stream end
(``event: "stream_end"``, from engine.telemetry)::

    {"time": "2026-12-02T10:00:00.123Z", "level": "info", "logger": "engine.access",
     "message": "POST /v1/chat/stream 200", "event": "request", "method": "POST",
     "path": "/v1/chat/stream", "status": 200, "duration_s": 0.8123, "bytes": 4410,
     "key": "web-app"}

A request line names the path, never the query string (a GET stream carries
its message in ``q=`` and may carry a ``token=``), and the client key by its
alias, never the key.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import msgspec
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, Request, StreamResponse

from .middleware import PRINCIPAL

__all__ = ["ACCESS_LOG", "JSONAccessLogger", "JSONFormatter", "configure"]

#: The logger request lines go to.
ACCESS_LOG = "engine.access"

_encoder = msgspec.json.Encoder()


class JSONFormatter(logging.Formatter):
    """A record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        doc: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(doc).decode()


class JSONAccessLogger(AbstractAccessLogger):
    """aiohttp's access log as one JSON line per request (``access_log_class``)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        fields: dict[str, Any] = {
            "event": "request",
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_s": round(time, 6),
            "bytes": response.body_length,
        }
        stream_id = response.headers.get("X-Stream-Id")
        if stream_id is not None:
            fields["stream_id"] = stream_id
        who = request.get(PRINCIPAL) if isinstance(request, Request) else None
        if who is not None and who.key is not None:
            fields["key"] = who.key.alias
        self.logger.info(
            "%s %s %d", request.method, request.path, response.status, extra={"fields": fields}
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def configure(level: str, log_format: str) -> None:
    """Set up the root logger for ``serve``: text lines, or JSON (``log_format="json"``)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
