"""The playground: its route, and the page itself in a real browser.

The browser tests drive Debian's chromium with playwright's Python package (no
browser download), as tests/test_browser.py does. The gateway is mounted at
``/llm`` in a parent app and reached through a TCP proxy on loopback that can
drop the streams' connections, both ways, as a network would; the page talks
to the mock provider, slowed down by the page's options so Stop and the cut
land mid-stream.

The browser tests are skipped when chromium or playwright is missing, except
under CI (``CI`` set), where ``.ci/run`` installs both and a missing one fails.
``ENGINE_SCREENSHOT=docs/playground.png`` makes the streaming test save its
screenshot there (the README's). With client keys on (``keys={"app": {"key":
KEY}}``), the key is typed into the page: it must go as ``Authorization:
Bearer`` on fetches only, and each EventSource carry a minted token instead.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import msgspec
import pytest
from aiohttp import web

from engine import create_app
from engine.api.playground import CONTENT_SECURITY_POLICY
from engine.app import ENGINE
from engine.errors import UpstreamError
from engine.gateway import Engine
from engine.providers.mock import mock_text
from engine.wire import Message

from .helpers import ScriptedProvider, make_config
from .test_browser import CHROMIUM_ARGS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.async_api import Page, Request, async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None

# The same rule as tests/test_browser.py, for the browser tests only.
needs_browser = pytest.mark.skipif(
    (CHROMIUM is None or async_playwright is None) and not os.environ.get("CI"),
    reason="needs Debian's chromium and the playwright package (.ci/run installs both)",
)

STATIC = Path(__file__).resolve().parent.parent / "engine" / "static"
PAGE_TYPES = {
    "/": "text/html",
    "/playground": "text/html",
    "/playground.js": "text/javascript",
    "/playground.css": "text/css",
    "/playground.svg": "image/svg+xml",
}
#: A client key of the keyed browser tests, and its id (memory is stored under it).
KEY = "sk-sse-playground-test-key-0123456789abcdef"
KEYED = {"keys": {"app": {"key": KEY}}}
KEY_PARENT = "cfg_app/playground"
#: The page has loaded (the models and the conversation have answered). A
#: function, not an expression: playwright polls an expression with eval, which
#: the page's Content-Security-Policy forbids.
READY = "() => document.body.dataset.ready === 'true'"


def _policy(header: str) -> dict[str, list[str]]:
    directives = (part.split() for part in header.split(";") if part.strip())
    return {name: values for name, *values in directives}


# -- the route ---------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGE_TYPES)
async def test_each_file_is_served_with_its_type_and_the_strict_headers(aiohttp_client, path):
    client = await aiohttp_client(create_app(make_config()))
    response = await client.get(path)
    assert response.status == 200
    kind = PAGE_TYPES[path]
    charset = "" if kind.startswith("image/") else "; charset=utf-8"
    assert response.headers["Content-Type"] == kind + charset
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["Server"] == "sse-engine"
    name = "playground.html" if kind == "text/html" else path.lstrip("/")
    assert await response.read() == (STATIC / name).read_bytes()


def test_the_policy_allows_this_origin_only_and_no_inline_code():
    policy = _policy(CONTENT_SECURITY_POLICY)
    assert policy["default-src"] == ["'none'"]
    for directive in ("script-src", "style-src", "connect-src", "img-src"):
        assert policy[directive] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert "unsafe" not in CONTENT_SECURITY_POLICY


def test_the_page_has_no_inline_script_or_style():
    html = (STATIC / "playground.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="playground.js" defer>']
    assert "<style" not in html
    assert not re.search(r"\s(on[a-z]+|style)=", html)  # no handler or style attributes


def test_every_url_the_page_uses_is_relative():
    # So that it works mounted under a prefix: "/v1/models" would miss "/llm/".
    html = (STATIC / "playground.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert not re.match(r"[a-z]+:|/", url), url
    script = (STATIC / "playground.js").read_text()
    assert not re.search(r"""["'`]/[a-z]|https?:""", script)
    for path in ("v1/models", "v1/chat/stream?", "v1/streams/", "v1/memory/"):
        assert f"`{path}" in script or f'"{path}' in script, path


async def test_an_unchanged_file_is_revalidated_with_a_304(aiohttp_client):
    client = await aiohttp_client(create_app(make_config()))
    first = await client.get("/playground.js")
    etag = first.headers["ETag"]
    again = await client.get("/playground.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert again.headers["ETag"] == etag
    other = await client.get("/playground.js", headers={"If-None-Match": '"stale"'})
    assert other.status == 200


async def test_under_a_prefix_the_page_and_every_url_it_uses_resolve_there(aiohttp_client):
    parent = web.Application()
    parent.add_subapp("/llm", create_app(make_config()))
    client = await aiohttp_client(parent)
    html = (STATIC / "playground.html").read_bytes()
    for page in ("/llm/", "/llm/playground"):
        response = await client.get(page)
        assert response.status == 200
        assert await response.read() == html
        linked = [url.decode() for url in re.findall(rb'(?:src|href)="([^"]*)"', html)]
        for url in (*linked, "v1/models", "v1/memory/playground/demo"):
            resolved = urljoin(page, url)
            assert resolved.startswith("/llm/")
            assert (await client.get(resolved)).status == 200, resolved
    # The prefix without its slash would resolve the page's URLs one level too high.
    bare = await client.get("/llm", allow_redirects=False)
    assert bare.status == 302
    assert bare.headers["Location"] == "./llm/"
    assert bare.headers["Server"] == "sse-engine"
    followed = await client.get("/llm")
    assert followed.url.path == "/llm/"
    assert await followed.read() == html


async def test_the_page_needs_no_key_when_the_api_does(aiohttp_client):
    client = await aiohttp_client(create_app(make_config(admin_key="a" * 32)))
    for path in PAGE_TYPES:
        assert (await client.get(path)).status == 200, path
    assert (await client.get("/v1/models")).status == 401


def test_the_files_ship_as_package_data():
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    shipped = [p.strip() for p in setup["options.package_data"]["engine.static"].split(",")]
    assert sorted(shipped) == ["*.css", "*.html", "*.js", "*.svg"]
    served = {"playground.html"} | {p.lstrip("/") for p in PAGE_TYPES if "." in p}
    files = {p.name for p in STATIC.iterdir() if p.suffix in (".html", ".js", ".css", ".svg")}
    assert files == served  # nothing shipped that is not served, nothing served that is not shipped


# -- the page in a browser -------------------------------------------------------------


class CuttingProxy:
    """Forwards TCP to ``target``. :meth:`cut` drops every connection that carries a
    stream, both ways, as a network would. With ``rewind``, a reconnect's
    Last-Event-ID is moved that many events back, so the gateway replays events the
    page already shows (it must skip them)."""

    def __init__(self, target: tuple[str, int], *, rewind: int = 0) -> None:
        self.target = target
        self.rewind = rewind
        self.cuts = 0
        self.rewound: list[str] = []
        self._streams: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    def cut(self) -> None:
        assert self._streams, "no stream to cut"
        for pair in list(self._streams):
            for writer in pair:
                writer.transport.abort()
        self.cuts += 1

    def _rewound(self, data: bytes) -> bytes:
        def back(match: re.Match[bytes]) -> bytes:
            n = max(0, int(match.group(2)) - self.rewind)
            self.rewound.append(f"{match.group(1).decode()}:{n}")
            return b"Last-Event-ID: " + match.group(1) + b":" + str(n).encode()

        return re.sub(rb"Last-Event-ID: ([0-9a-f]+):([0-9]+)", back, data, flags=re.IGNORECASE)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        pair = (writer, up_writer)

        async def upstream() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    if b"/v1/chat/stream" in data:
                        self._streams.add(pair)
                        if self.rewind:
                            data = self._rewound(data)
                    up_writer.write(data)
                    await up_writer.drain()

        async def downstream() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()

        try:
            await asyncio.wait(
                [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self._streams.discard(pair)
            for w in pair:
                w.transport.abort()


@dataclass
class Browser:
    tab: Page
    engine: Engine
    proxy: CuttingProxy
    #: Console errors and uncaught exceptions of the page: none, in every test.
    errors: list[str] = field(default_factory=list)
    #: Every console message of the page (none may hold the key).
    console: list[str] = field(default_factory=list)
    #: Every request the page made, in order.
    requests: list[Request] = field(default_factory=list)

    async def send(self, text: str, *, model: str | None = None, options: str = "") -> None:
        if model is not None:
            await self.tab.fill("#model", model)
        await self.tab.fill("#options", options)
        await self.tab.fill("#prompt", text)
        await self.tab.press("#prompt", "Enter")

    async def wait(self, expression: str, arg: Any = None) -> None:
        await self.tab.wait_for_function(expression, arg=arg, timeout=20_000)

    async def wait_tokens(self, n: int) -> None:
        await self.wait("n => Number(document.querySelector('#tokens').textContent) >= n", n)

    async def wait_status(self, status: str) -> None:
        await self.wait("s => document.querySelector('#status').textContent === s", status)

    async def text(self, selector: str) -> str:
        return await self.tab.text_content(selector) or ""

    async def texts(self, selector: str) -> list[str]:
        return await self.tab.locator(selector).all_text_contents()

    async def reply(self) -> str:
        return (await self.texts(".msg.assistant .text"))[-1]

    async def use_key(self, key: str, *, remember: bool = False) -> None:
        """Type ``key`` in, press Enter, and wait for the page to have reloaded with it."""
        await self.tab.fill("#key", key)
        if remember:
            await self.tab.check("#remember")
        await self.tab.press("#key", "Enter")
        await self.wait(READY)

    def sent(self, fragment: str, kind: str | None = None) -> list[Request]:
        """The requests whose URL holds ``fragment`` (of resource type ``kind``)."""
        return [
            r
            for r in self.requests
            if fragment in r.url and (kind is None or r.resource_type == kind)
        ]

    async def assert_key_never_leaked(self) -> None:
        """The key went in no URL, no console message, no raw frame, no localStorage."""
        assert self.requests
        assert all(KEY not in r.url for r in self.requests)
        assert all(KEY not in m for m in self.console)
        assert KEY not in await self.text("#raw")
        assert await self.tab.evaluate("localStorage.length") == 0


@contextlib.asynccontextmanager
async def browser(*, rewind: int = 0, **config: Any) -> AsyncIterator[Browser]:
    """The playground at ``/llm/`` of a parent app, in chromium, through a CuttingProxy."""
    assert CHROMIUM is not None and async_playwright is not None
    engine_app = create_app(make_config(retry_ms=200, heartbeat=0.2, **config))
    engine = engine_app[ENGINE]
    parent = web.Application()
    parent.add_subapp("/llm", engine_app)
    runner = web.AppRunner(parent, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    proxy = CuttingProxy(runner.addresses[0][:2], rewind=rewind)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with async_playwright() as pw:
            chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                tab = await chromium.new_page(viewport={"width": 1000, "height": 820})
                env = Browser(tab, engine, proxy)
                tab.on("console", lambda m: m.type == "error" and env.errors.append(m.text))
                tab.on("console", lambda m: env.console.append(m.text))
                tab.on("request", lambda r: env.requests.append(r))
                tab.on("pageerror", lambda exc: env.errors.append(f"uncaught: {exc}"))
                await tab.goto(f"http://127.0.0.1:{port}/llm/")
                await env.wait(READY)
                yield env
            finally:
                await chromium.close()
    finally:
        server.close()
        await server.wait_closed()
        await runner.cleanup()


def _network_report(message: str) -> bool:
    """Whether a console error is the browser's own report of a response or a
    connection (which the page cannot silence), not the page's."""
    return message.startswith("Failed to load resource: ") or message.startswith(
        'EventSource\'s response has a MIME type ("application/json")'
    )


def expected(text: str, chunks: int) -> str:
    """The mock's reply to ``text`` in ``chunks`` chunks of its default 4 characters."""
    return mock_text([Message(role="user", content=text)], chunks * 4)


@needs_browser
async def test_a_reply_streams_into_the_page_token_by_token():
    async with browser() as env:
        assert await env.tab.input_value("#model") == "mock/mock-1"  # from /v1/models
        options = env.tab.locator("#models option")
        assert await options.evaluate_all("list => list.map(o => o.value)") == ["mock/mock-1"]
        await env.send("hello", options="max_tokens=40&interval_ms=30")
        await env.wait_tokens(3)
        partial = await env.reply()
        assert (await env.text("#status")).startswith("streaming from mock/mock-1")
        await env.wait_status("done")
        full = await env.reply()
        assert full == expected("hello", 40)
        assert 0 < len(partial) < len(full)  # shown as it arrived, not at the end
        assert re.fullmatch(r"\d+ ms", await env.text("#ttft"))
        assert re.fullmatch(r"\d+\.\d", await env.text("#rate"))
        assert await env.text("#tokens") == "40"
        assert await env.text("#finish") == "length"
        assert await env.texts(".msg .role") == ["user", "assistant"]
        sid = await env.text("#stream-id")
        assert env.engine.generations.ended_state(sid) == "done"

        assert not await env.tab.is_visible("#raw")
        await env.tab.check("#raw-toggle")
        raw = await env.text("#raw")
        assert f"id: {sid}:0\nevent: start\ndata: " in raw
        assert f"id: {sid}:1\ndata: " in raw
        assert f"id: {sid}:41\nevent: done\ndata: " in raw
        if path := os.environ.get("ENGINE_SCREENSHOT"):
            await env.tab.screenshot(path=path, full_page=True)
        await env.tab.uncheck("#raw-toggle")
        assert not await env.tab.is_visible("#raw")
        assert env.errors == []


@needs_browser
async def test_stop_ends_the_reply_where_it_was():
    async with browser() as env:
        await env.send("hello", options="max_tokens=500&interval_ms=40")
        await env.wait_tokens(5)
        await env.tab.click("#stop")
        await env.wait_status("stopped")
        assert await env.text("#finish") == "stopped"
        assert "stop: the stream is stopped" in await env.texts("#notices li")
        reply = await env.reply()
        assert 0 < len(reply) < len(expected("hello", 500))
        assert expected("hello", 500).startswith(reply)
        sid = await env.text("#stream-id")
        assert env.engine.generations.ended_state(sid) == "stopped"
        assert await env.tab.is_enabled("#send")
        assert not await env.tab.is_enabled("#stop")
        assert env.errors == []


@needs_browser
@pytest.mark.parametrize("rewind", [0, 5], ids=["resume", "resume-replaying-what-was-shown"])
async def test_a_dropped_connection_resumes_without_duplicating_text(rewind):
    async with browser(rewind=rewind) as env:
        await env.send("hello", options="max_tokens=60&interval_ms=30")
        await env.wait_tokens(10)
        env.proxy.cut()
        await env.wait_status("done")
        notices = await env.texts("#notices li")
        shown = [n for n in notices if n.startswith("resumed at event ")]
        assert len(shown) == 1, notices
        assert 11 <= int(shown[0].removeprefix("resumed at event ")) <= 61
        assert await env.reply() == expected("hello", 60)  # every token once
        sid = await env.text("#stream-id")
        assert env.engine.generations.ended_state(sid) == "done"  # one generation, completed
        assert env.proxy.cuts == 1
        conversation = (await env.engine.open_memory()).for_parent("playground", "demo")
        stored = [m.content for m in await conversation.get_messages()]
        assert stored == ["hello", expected("hello", 60)]  # asked once, answered whole
        raw = await env.text("#raw")
        skipped = raw.count(": already shown, skipped")
        if rewind:
            assert env.proxy.rewound  # the reconnect did carry Last-Event-ID
            assert skipped == rewind
        else:
            assert skipped == 0
        # The browser reports the cut itself (net::ERR_INCOMPLETE_CHUNKED_ENCODING);
        # nothing else may reach the console.
        assert [e for e in env.errors if not _network_report(e)] == []


@needs_browser
async def test_a_missing_or_unknown_model_or_a_failing_one_shows_the_gateways_message():
    async with browser() as env:
        env.engine.add_provider(
            ScriptedProvider(["a", "b", "c"], fail_after=2, error=UpstreamError("upstream broke"))
        )
        cases = [
            # Refused before the stream: EventSource cannot read these; the page fetches them.
            ("nope/x", "", "unknown provider 'nope'", "(400 unknown_provider)"),
            ("openai/gpt-4o", "", "OPENAI_API_KEY is not set", "(503 provider_not_configured)"),
            ("mock/mock-1", "max_tokens=many", "invalid option", "(422 invalid_fields)"),
            # Failing after the start: the gateway's error event.
            ("scripted/x", "", "upstream broke", "(502 upstream_error)"),
        ]
        for model, options, message, code in cases:
            await env.send("hello", model=model, options=options)
            await env.wait_status("error")
            errors = await env.texts("#notices li.error")
            assert len(errors) == 1 and message in errors[0] and errors[0].endswith(code), errors
            assert await env.text("#finish") == "error"
            assert await env.tab.is_enabled("#send")
        assert await env.reply() == "ab"  # the scripted reply's part before its error
        # The browser reports each refused response itself (the HTTP status, and that
        # an EventSource got JSON); nothing else may reach the console.
        assert [e for e in env.errors if not _network_report(e)] == []


class RefusingOnce(ScriptedProvider):
    """Refuses its first request before the stream (a transient upstream error),
    then streams "a" and holds until stopped."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__(["a", "b"], gate=asyncio.Event(), hold_from=1)
        self.refused = False

    async def open(self, messages, *, model=None, options=None):
        if not self.refused:
            self.refused = True
            raise UpstreamError("the upstream is briefly unavailable")
        return await super().open(messages, model=model, options=options)


@needs_browser
async def test_a_refusal_that_does_not_repeat_is_reported_and_the_second_try_stopped():
    async with browser() as env:
        provider = RefusingOnce()
        env.engine.add_provider(provider)
        await env.send("hello", model="flaky/x")
        await env.wait_status("error")
        assert await env.texts("#notices li.error") == [
            "the stream failed to open, then opened on a second try (HTTP 200): send again"
        ]
        # The page's second try (to read the refusal) got a stream: it stopped it.
        await asyncio.wait_for(provider.closed.wait(), 10)
        assert len(provider.requests) == 1 and provider.refused
        assert [e for e in env.errors if not _network_report(e)] == []


@needs_browser
async def test_with_keys_on_the_page_loads_and_says_what_the_api_answered():
    async with browser(admin_key="a" * 32) as env:
        notices = await env.texts("#notices li.error")
        # The OpenAI route's error shape and the native one, each with the gateway's words.
        [memory, models] = sorted(notices)  # the two loads answer in either order
        assert models.startswith("models: ") and "unauthorized" in models
        assert memory.startswith("memory: ") and memory.endswith("(401 unauthorized)")
        # And next to the key field, which is empty.
        assert (await env.text("#key-state")).startswith("key needed: this gateway needs a key")
        assert await env.tab.get_attribute("#key", "type") == "password"
        assert await env.tab.get_attribute("#key", "autocomplete") == "off"
        assert [e for e in env.errors if not _network_report(e)] == []


@needs_browser
async def test_the_conversation_picker_loads_and_clears_the_stored_messages():
    async with browser() as env:
        store = await env.engine.open_memory()
        other = store.for_parent("playground", "earlier")
        await other.add_message("user", "what is SSE?")
        await other.add_message("assistant", "Server-Sent Events.")
        await env.tab.fill("#conversation", "earlier")
        await env.tab.click("#load")
        await env.wait_status("playground/earlier: 2 stored messages")
        assert await env.texts(".msg .text") == ["what is SSE?", "Server-Sent Events."]

        await env.send("hello", options="max_tokens=5&interval_ms=0")
        await env.wait_status("done")
        stored = await other.get_messages()
        assert [m.content for m in stored][2:] == ["hello", expected("hello", 5)]

        await env.tab.click("#clear")
        await env.wait_status("playground/earlier: cleared 4 messages")
        assert await env.texts(".msg") == []
        assert await other.get_messages() == []
        assert env.errors == []


# -- with client keys on ---------------------------------------------------------------


async def _authorization(request: Request) -> str | None:
    return (await request.all_headers()).get("authorization")


@needs_browser
async def test_with_the_key_typed_in_the_page_streams_through_a_minted_token_and_stops():
    async with browser(**KEYED) as env:
        assert (await env.text("#key-state")).startswith("key needed: ")
        await env.use_key(KEY)
        assert await env.text("#key-state") == ""
        assert await env.texts("#notices li") == []
        assert await env.tab.input_value("#model") == "mock/mock-1"  # /v1/models, with the key
        await env.wait_status("playground/demo: 0 stored messages")

        await env.send("hello", options="max_tokens=500&interval_ms=40")
        await env.wait_tokens(5)
        await env.tab.click("#stop")
        await env.wait_status("stopped")
        assert "stop: the stream is stopped" in await env.texts("#notices li")
        sid = await env.text("#stream-id")
        assert env.engine.generations.ended_state(sid) == "stopped"
        # A second reply reuses the token: it has minutes left.
        await env.send("again", options="max_tokens=5&interval_ms=0")
        await env.wait_status("done")
        assert await env.reply() == expected("again", 5)

        [mint] = env.sent("/v1/tokens")
        assert mint.method == "POST" and mint.post_data_json == {"ttl": 300}
        streams = env.sent("/v1/chat/stream?", "eventsource")
        assert len(streams) == 2
        for stream in streams:
            assert re.search(r"[?&]token=sset-[\w.-]+(&|$)", stream.url), stream.url
            assert await _authorization(stream) is None  # EventSource sends no header
        # Every fetch carries the key as a header: the loads, the mint, Stop.
        fetched = [r for r in env.requests if r.resource_type == "fetch"]
        assert {r.url.split("/llm/", 1)[1].split("?")[0] for r in fetched} >= {
            "v1/models",
            "v1/memory/playground/demo",
            "v1/tokens",
            f"v1/streams/{sid}/stop",
        }
        after_key = fetched[2:]  # the two loads before the key was typed in went without
        assert [await _authorization(r) for r in after_key] == [f"Bearer {KEY}"] * len(after_key)
        # The raw view names the token by its prefix only.
        await env.tab.check("#raw-toggle")
        raw = await env.text("#raw")
        assert ": POST v1/tokens: a token for EventSource, valid " in raw
        assert "&token=sset-…" in raw and "token=sset-e" not in raw
        await env.assert_key_never_leaked()
        assert await env.tab.evaluate("sessionStorage.length") == 0  # not asked to remember
        # The reply is stored in the key's own conversation.
        mine = (await env.engine.open_memory()).for_parent(KEY_PARENT, "demo")
        assert [m.content for m in await mine.get_messages()][0::2] == ["hello", "again"]
        assert [e for e in env.errors if not _network_report(e)] == []


@needs_browser
async def test_with_the_key_typed_in_memory_loads_the_keys_own_conversation():
    async with browser(**KEYED) as env:
        store = await env.engine.open_memory()
        earlier = store.for_parent(KEY_PARENT, "earlier")
        await earlier.add_message("user", "what is SSE?")
        await earlier.add_message("assistant", "Server-Sent Events.")
        await env.use_key(KEY)
        await env.tab.fill("#conversation", "earlier")
        await env.tab.click("#load")
        await env.wait_status("playground/earlier: 2 stored messages")
        assert await env.texts(".msg .text") == ["what is SSE?", "Server-Sent Events."]
        await env.tab.click("#clear")
        await env.wait_status("playground/earlier: cleared 2 messages")
        assert await earlier.get_messages() == []
        await env.assert_key_never_leaked()
        assert [e for e in env.errors if not _network_report(e)] == []


@needs_browser
async def test_a_wrong_key_is_said_to_be_refused_next_to_the_key_field():
    async with browser(**KEYED) as env:
        await env.use_key("sk-sse-not-the-right-key-0000000000000000")
        state = await env.text("#key-state")
        assert state.startswith("key refused: invalid API key"), state
        assert await env.tab.get_attribute("#key", "aria-invalid") == "true"
        assert sorted(n.split(":")[0] for n in await env.texts("#notices li.error")) == [
            "memory",
            "models",
        ]
        await env.send("hello", model="mock/mock-1")
        await env.wait_status("error")
        assert await env.text("#key-state") == "key refused: invalid API key (401 unauthorized)"
        assert await env.texts("#notices li.error") == ["token: invalid API key (401 unauthorized)"]
        assert env.sent("v1/chat/stream") == []  # no stream without a token
        # The right key clears it.
        await env.use_key(KEY)
        assert await env.text("#key-state") == ""
        assert await env.tab.get_attribute("#key", "aria-invalid") == "false"
        assert await env.texts("#notices li") == []
        await env.wait_status("playground/demo: 0 stored messages")
        assert [e for e in env.errors if not _network_report(e)] == []


@needs_browser
async def test_a_cut_connection_resumes_with_the_same_token():
    async with browser(**KEYED) as env:
        await env.use_key(KEY)
        await env.send("hello", options="max_tokens=60&interval_ms=30")
        await env.wait_tokens(10)
        env.proxy.cut()
        await env.wait_status("done")
        notices = await env.texts("#notices li")
        assert len([n for n in notices if n.startswith("resumed at event ")]) == 1, notices
        assert await env.reply() == expected("hello", 60)
        # EventSource asked again with its URL (and Last-Event-ID): the token still holds.
        first, again = env.sent("/v1/chat/stream?", "eventsource")
        assert first.url == again.url and "token=sset-" in first.url
        assert (await again.all_headers())["last-event-id"].startswith(
            await env.text("#stream-id") + ":"
        )
        assert len(env.sent("/v1/tokens")) == 1
        await env.assert_key_never_leaked()
        assert [e for e in env.errors if not _network_report(e)] == []


@needs_browser
async def test_a_resume_after_the_token_expired_mints_another_and_resumes_from_the_last_event(
    monkeypatch,
):
    async with browser(**KEYED) as env:
        gate = env.engine.gate
        # Tokens of 2 s (the config's floor is 10 s: not worth waiting for).
        monkeypatch.setattr(gate, "config", msgspec.structs.replace(gate.config, token_ttl=2.0))
        mint, expiries = gate.mint, []

        def recording(who, ttl):
            token, expires = mint(who, ttl)
            expiries.append(expires)
            return token, expires

        monkeypatch.setattr(gate, "mint", recording)
        await env.use_key(KEY)
        await env.send("hello", options="max_tokens=300&interval_ms=20")
        await env.wait_tokens(5)
        await asyncio.sleep(max(0.0, expiries[0] - time.time()) + 0.2)
        assert await env.text("#finish") == "–"  # still streaming, its token expired
        env.proxy.cut()
        await env.wait_status("done")
        notices = await env.texts("#notices li")
        refused = [n for n in notices if n.startswith("the stream's token was refused")]
        assert refused == [
            "the stream's token was refused (this token has expired: mint another with "
            "POST /v1/tokens (401 unauthorized)): resuming with a new token"
        ], notices
        assert len([n for n in notices if n.startswith("resumed at event ")]) == 1, notices
        assert await env.reply() == expected("hello", 300)  # every token, once
        sid = await env.text("#stream-id")
        assert env.engine.generations.ended_state(sid) == "done"  # one generation
        # The reconnect with the expired token, then the resume route under a new one.
        assert len(env.sent("/v1/tokens")) == 2 and len(expiries) == 2
        chat = env.sent("/v1/chat/stream?", "eventsource")
        assert len(chat) == 2 and chat[0].url == chat[1].url
        [resume] = env.sent(f"/v1/streams/{sid}?", "eventsource")
        seen = (await chat[1].all_headers())["last-event-id"]
        assert f"last_event_id={seen.replace(':', '%3A')}&token=sset-" in resume.url
        assert chat[0].url.split("token=")[1] != resume.url.split("token=")[1]
        conversation = (await env.engine.open_memory()).for_parent(KEY_PARENT, "demo")
        stored = [m.content for m in await conversation.get_messages()]
        assert stored == ["hello", expected("hello", 300)]
        await env.assert_key_never_leaked()
        assert [e for e in env.errors if not _network_report(e)] == []


@needs_browser
async def test_remember_in_this_tab_keeps_the_key_in_session_storage_only():
    async with browser(**KEYED) as env:
        await env.use_key(KEY)  # not remembered: a reload forgets it
        await env.tab.reload()
        await env.wait(READY)
        assert await env.tab.input_value("#key") == ""
        assert (await env.text("#key-state")).startswith("key needed: ")

        await env.use_key(KEY, remember=True)
        assert await env.tab.evaluate("Object.values(sessionStorage)") == [KEY]
        await env.tab.reload()
        await env.wait(READY)
        assert await env.tab.input_value("#key") == KEY
        assert await env.tab.is_checked("#remember")
        assert await env.text("#key-state") == ""
        assert await env.tab.input_value("#model") == "mock/mock-1"

        await env.tab.uncheck("#remember")
        assert await env.tab.evaluate("sessionStorage.length") == 0
        await env.assert_key_never_leaked()
        assert [e for e in env.errors if not _network_report(e)] == []


@needs_browser
async def test_on_an_open_gateway_a_key_typed_in_is_harmless_and_no_token_is_used():
    async with browser() as env:
        await env.use_key("sk-sse-anything-at-all-00000000000000000")
        await env.send("hello", options="max_tokens=5&interval_ms=0")
        await env.wait_status("done")
        assert await env.reply() == expected("hello", 5)
        assert await env.text("#key-state") == ""
        [stream] = env.sent("/v1/chat/stream?", "eventsource")
        assert "token=" not in stream.url
        await env.send("again", options="max_tokens=5&interval_ms=0")
        await env.wait_status("done")
        assert len(env.sent("/v1/tokens")) == 1  # its 403 is remembered for the key
        # The browser reports the 403 itself; nothing else may reach the console.
        assert [e for e in env.errors if not _network_report(e)] == []
