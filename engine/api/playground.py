"""The playground: one static page that streams a reply from this gateway in a browser.

::

    GET /, GET /playground    the page (text/html); mounted at /llm, /llm redirects to /llm/
    GET /playground.js        its script
    GET /playground.css       its style sheet
    GET /playground.svg       its icon

The files ship in the package (``engine/static``, package data): no build
step, no CDN, nothing fetched from elsewhere, so it works offline. Every URL in
them is relative, so the page works wherever the gateway is mounted
(``add_subapp("/llm", ...)`` serves it at ``/llm/`` and ``/llm/playground``).
The script and the style sheet are files of their own rather than inline, so
the Content-Security-Policy allows this origin only, with no ``unsafe-inline``
and no hashes to keep in step with the page. The files hold no secret: they
need no key (the API calls the page makes do, when keys are on).
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from aiohttp import web

from ..middleware import SERVER_HEADER, public

__all__ = ["CONTENT_SECURITY_POLICY", "routes"]

routes = web.RouteTableDef()

#: This origin only: scripts, styles, images, fetch and EventSource; no inline
#: code, no plug-ins, no framing (clickjacking), no ``<base>`` rewriting the
#: relative URLs, no form posting elsewhere.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

_TYPES = {
    "playground.html": "text/html",
    "playground.js": "text/javascript",
    "playground.css": "text/css",
    "playground.svg": "image/svg+xml",
}


@functools.cache
def _asset(name: str) -> tuple[bytes, str]:
    """A file of ``engine/static`` and its ETag, read once per process (on first use)."""
    body = resources.files("engine.static").joinpath(name).read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:32]


def _serve(request: web.Request, name: str) -> web.Response:
    body, etag = _asset(name)
    # no-cache: revalidate every time (a 304 while unchanged), so an upgraded
    # gateway never runs last version's script against its new API.
    headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Server": SERVER_HEADER,
    }
    seen = request.if_none_match
    if seen is not None and any(tag.value in (etag, "*") for tag in seen):
        response = web.Response(status=304, headers=headers)
    else:
        kind = _TYPES[name]
        charset = None if kind.startswith("image/") else "utf-8"
        response = web.Response(body=body, content_type=kind, charset=charset, headers=headers)
    response.etag = etag
    return response


@routes.get("/")
@public
async def playground_root(request: web.Request) -> web.Response:
    return _serve(request, "playground.html")


# After "/", so that a standalone gateway's "/" is served above; in a sub-app
# this is the prefix itself (aiohttp joins "/llm" and ""), where relative URLs
# would resolve one level too high: send the browser to the prefix with a slash.
@routes.get("")
@public
async def playground_prefix(request: web.Request) -> web.Response:
    if request.path.endswith("/"):
        return _serve(request, "playground.html")
    # Relative, so a proxy in front that adds a prefix of its own still gets it right;
    # "./" so a segment with a colon is not read as a URL scheme.
    location = "./" + request.rel_url.raw_path.rsplit("/", 1)[-1] + "/"
    raise web.HTTPFound(location, headers={"Server": SERVER_HEADER})


@routes.get("/playground")
@public
async def playground_page(request: web.Request) -> web.Response:
    return _serve(request, "playground.html")


@routes.get("/playground.js")
@public
async def playground_script(request: web.Request) -> web.Response:
    return _serve(request, "playground.js")


@routes.get("/playground.css")
@public
async def playground_style(request: web.Request) -> web.Response:
    return _serve(request, "playground.css")


@routes.get("/playground.svg")
@public
async def playground_icon(request: web.Request) -> web.Response:
    return _serve(request, "playground.svg")
