"""What operators' machines read: ``GET /metrics`` and ``GET /readyz``.

::

    GET /metrics   Prometheus text exposition (engine.metrics); 503 naming the
                   extra without prometheus_client, 404 with metrics off
    GET /readyz    200 {"status": "ready"}; 503 {"status": "draining"} once the
                   server drains or stops (``/healthz`` stays the liveness probe)

Who may scrape: on an open gateway (no client keys) anyone, like every other
route there. With keys on, the admin key or ``metrics_key``, never a client
key (401 without a credential, 403 with a client key's): the metrics hold every
tenant's models, volumes and errors, which one client key must not read, and
a scraper's token should be able to read nothing else (``metrics_key`` is
good for ``/metrics`` alone, and for a key in a Prometheus config that is the
point).

Rendering is bounded by the label cap (engine.metrics.MAX_MODELS), not by the
traffic: the gauges count the engine's registries as they are, and 1,000 open
streams add a pass over 1,000 small objects (benchmarks/NOTES.md).
"""

from __future__ import annotations

import hmac

from aiohttp import web

from ..errors import Forbidden, MetricsUnavailable, NotFound
from ..gateway import ENGINE, Engine
from ..middleware import SERVER_HEADER, public
from ._io import json_response

__all__ = ["CONTENT_TYPE", "routes"]

routes = web.RouteTableDef()

#: Prometheus' text format, the one every scraper reads (prometheus_client's
#: ``CONTENT_TYPE_PLAIN_0_0_4``, spelt out so this module imports without it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _check_scraper(request: web.Request, engine: Engine) -> None:
    """Raise Unauthorized/Forbidden unless the request may read the metrics (module docstring)."""
    gate = engine.gate
    if not gate.required:
        return
    token = engine.config.metrics_key
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if token is not None and scheme.lower() == "bearer":
        if hmac.compare_digest(value.strip().encode(), token.encode()):
            return
    who = gate.authenticate(request.headers, request.query, query_token=False)
    if not who.admin:
        raise Forbidden("/metrics takes the admin key or metrics_key, not a client key")


@routes.get("/metrics")
@public
async def metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    _check_scraper(request, engine)
    telemetry = engine.telemetry
    if telemetry.metrics is None:
        why = telemetry.unavailable or "metrics are unavailable"
        raise NotFound(why) if not engine.config.metrics else MetricsUnavailable(why)
    body = await telemetry.metrics.render_async()
    siblings = engine.siblings
    if siblings is not None and not siblings.asked_by_sibling(request):
        # `serve --workers N`: the whole server in one scrape, not one worker at random.
        body = await siblings.gather_metrics(request, body)
    return web.Response(
        body=body,
        headers={
            "Content-Type": CONTENT_TYPE,
            "Cache-Control": "no-store",
            "Server": SERVER_HEADER,
        },
    )


@routes.get("/readyz")
@public
async def readyz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    if engine.ready:
        return json_response({"status": "ready"})
    return json_response({"status": "draining"}, status=503, headers={"Retry-After": "1"})
