"""The machinery every fake upstream shares: scripts, delivery modes, recording.

A fake is an :class:`aiohttp.web.Application` that answers like a provider's API,
byte for byte, with a reply the caller scripts. The wire format lives in the
subclasses (:mod:`engine.testing.openai` and friends); this module decides *how*
those bytes go out (whole or in fragments, LF or CRLF, fast or slow, with or
without comments, cut off, failing) and records what each request looked like.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "DEFAULT_TOKENS",
    "FakeUpstream",
    "Frame",
    "Recorded",
    "Script",
    "ToolCall",
    "serve",
]

DEFAULT_TOKENS: tuple[str, ...] = ("Hello", ",", " world", "!")

#: Placeholder a stamped token holds until the moment its event is written; it
#: is replaced by ``time.time_ns()`` (19 digits) then, after any cadence wait.
STAMP = "{{stamp}}"
_STAMP = STAMP.encode()

Finish = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ToolCall:
    """A tool call the fake streams: its name and its JSON arguments in pieces."""

    name: str
    arguments: Sequence[str] = ('{"city": ', '"Paris"}')
    id: str = "call_0001"


@dataclass(kw_only=True)
class Script:
    """What one request gets back, and how it is delivered.

    Reply: ``tokens`` are sent one per content event, exactly as given (unicode,
    newlines and long strings included); ``finish`` is the engine-level finish
    reason, translated to the provider's word (``length`` is OpenAI's
    ``length``, Anthropic's ``max_tokens``, Gemini's ``MAX_TOKENS``).

    Delivery modes (combine freely):

    * ``fragment``: write each event in pieces of this many bytes (1 = byte by byte);
    * ``crlf``: end lines with CRLF (Gemini always does);
    * ``comments``: add comment lines (and, for Anthropic, extra ``ping`` events);
    * ``unknown_fields``: add JSON keys, SSE fields and (Anthropic) event types a
      client must ignore;
    * ``interval_ms``: wait this long before each content event after the first;
    * ``first_ms``: after the headers, wait this long before the first content
      event (a reasoning model's silence);
    * ``drop_after``: close the connection after this many content events;
    * ``delay_ms``: wait this long before answering at all (the status line);
    * ``status``: answer this error status before streaming (``retry_after`` sets
      the Retry-After header);
    * ``error_after``: send the provider's mid-stream error after this many
      content events (``error_type`` names it, e.g. ``overloaded_error``);
    * ``stamp``: send ``stamp_count`` content events whose text is the send time
      in ``time.time_ns()`` (for latency measurements), ignoring ``tokens``.
    """

    tokens: Sequence[str] = DEFAULT_TOKENS
    finish: Finish = "stop"
    prompt_tokens: int = 9
    #: Defaults to the number of content events.
    completion_tokens: int | None = None
    #: Defaults to the model the request named.
    model: str | None = None
    tool_call: ToolCall | None = None

    fragment: int = 0
    crlf: bool = False
    comments: bool = False
    unknown_fields: bool = False
    interval_ms: float = 0
    first_ms: float = 0
    drop_after: int | None = None
    delay_ms: float = 0
    status: int = 200
    retry_after: str | None = None
    error_after: int | None = None
    error_type: str | None = None
    error_message: str = "The server is overloaded. Please try again later."
    stamp: bool = False
    stamp_count: int = 50

    def token_count(self) -> int:
        return self.stamp_count if self.stamp else len(self.tokens)

    def token(self, index: int) -> str:
        """The text of content event ``index`` (in stamp mode, stamped at write time)."""
        return STAMP if self.stamp else self.tokens[index]

    def usage(self) -> tuple[int, int]:
        """(prompt, completion) token counts the reply reports."""
        completion = self.completion_tokens
        if completion is None:
            completion = self.token_count()
        return self.prompt_tokens, completion


@dataclass
class Recorded:
    """One request the fake received, and how its connection ended."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    #: The JSON body, decoded (``None`` when it was not JSON).
    json: Any
    #: Set when the client closed the connection before the reply was complete.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the handler finished, however it finished.
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: ``time.monotonic()`` when the disconnect was noticed.
    disconnected_at: float | None = None


@dataclass(frozen=True)
class Frame:
    """Bytes of one event, and whether it carries reply content (counted by the modes)."""

    data: bytes
    content: bool = False


class FakeUpstream:
    """Base of the fakes: a script queue, request records and the delivery loop.

    ``default`` answers every request unless scripts were queued with
    :meth:`push`, which are used once each, in order. Build the web application
    with :meth:`app` and run it with :func:`serve` (or any aiohttp runner).
    """

    #: The provider whose API this fake speaks.
    name: ClassVar[str] = ""
    #: Comment line added in ``comments`` mode.
    comment: ClassVar[bytes] = b": keep-alive\n\n"

    def __init__(self, default: Script | None = None) -> None:
        self.default = default or Script()
        self._queue: deque[Script] = deque()
        #: Every request received, oldest first.
        self.requests: list[Recorded] = []
        #: Set each time a request arrives (clear it to wait for the next one).
        self.received = asyncio.Event()

    def push(self, *scripts: Script) -> None:
        """Queue scripts for the next requests, one each, before the default applies again."""
        self._queue.extend(scripts)

    def app(self) -> web.Application:
        """The web application; routes come from :meth:`add_routes`."""
        app = web.Application()
        self.add_routes(app)
        return app

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    # -- what the subclasses provide -------------------------------------------------

    def is_streaming(self, request: web.Request, body: Any) -> bool:
        raise NotImplementedError

    def stream_frames(self, script: Script, rec: Recorded) -> Iterator[Frame]:
        """The events of a streamed reply, produced lazily (stamps are taken on send)."""
        raise NotImplementedError

    def error_frame(self, script: Script) -> bytes:
        """The provider's mid-stream error event."""
        raise NotImplementedError

    def reply_body(self, script: Script, rec: Recorded) -> bytes:
        """The JSON body of a non-streamed reply."""
        raise NotImplementedError

    def error_body(self, script: Script, rec: Recorded) -> bytes:
        """The JSON body of an error status."""
        raise NotImplementedError

    def model_of(self, rec: Recorded) -> str:
        model = rec.json.get("model") if isinstance(rec.json, dict) else None
        return str(model) if model else "unknown"

    # -- the shared handler -----------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            json=body,
        )
        self.requests.append(rec)
        self.received.set()
        script = self._queue.popleft() if self._queue else self.default
        try:
            if script.delay_ms:
                await asyncio.sleep(script.delay_ms / 1000)
            if script.status != 200:
                headers = {"Content-Type": "application/json"}
                if script.retry_after is not None:
                    headers["Retry-After"] = script.retry_after
                return web.Response(
                    status=script.status, body=self.error_body(script, rec), headers=headers
                )
            if self.is_streaming(request, body):
                return await self._stream(request, script, rec)
            return await self._reply(request, script, rec)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the client goes away.
            self._mark_disconnected(rec)
            raise
        finally:
            rec.done.set()

    @staticmethod
    def _mark_disconnected(rec: Recorded) -> None:
        if not rec.disconnected.is_set():
            rec.disconnected_at = time.monotonic()
            rec.disconnected.set()

    async def _reply(self, request: web.Request, script: Script, rec: Recorded) -> web.Response:
        body = self.reply_body(script, rec)
        if script.interval_ms:
            await asyncio.sleep(script.interval_ms / 1000)
        if script.drop_after is not None:
            # Announce the full length, send half, hang up.
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            self._drop(request)
            raise asyncio.CancelledError
        return web.Response(body=body, headers={"Content-Type": "application/json"})

    @staticmethod
    def _drop(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.close()  # flushes what was written, then closes

    async def _stream(
        self, request: web.Request, script: Script, rec: Recorded
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)
        interval = script.interval_ms / 1000
        sent = 0
        try:
            for frame in self._with_modes(script, rec):
                if frame.content:
                    if script.drop_after is not None and sent >= script.drop_after:
                        self._drop(request)
                        self._mark_disconnected(rec)
                        return resp
                    if script.error_after is not None and sent >= script.error_after:
                        await self._write(
                            resp, self._line_ends(script, self.error_frame(script)), script
                        )
                        break
                    if sent and interval:
                        await asyncio.sleep(interval)
                    elif not sent and script.first_ms:
                        await asyncio.sleep(script.first_ms / 1000)
                    sent += 1
                data = frame.data
                if script.stamp and frame.content:
                    data = data.replace(_STAMP, str(time.time_ns()).encode())
                await self._write(resp, data, script)
            await resp.write_eof()
        except ConnectionResetError:
            self._mark_disconnected(rec)
        return resp

    def _with_modes(self, script: Script, rec: Recorded) -> Iterator[Frame]:
        first = True
        for frame in self.stream_frames(script, rec):
            if script.comments and frame.content:
                yield Frame(self._line_ends(script, self.comment))
            if script.unknown_fields and first:
                # Fields the WHATWG parser must ignore, in an event with no data.
                yield Frame(self._line_ends(script, b"x-unknown-field: 1\n\n"))
            first = False
            yield Frame(self._line_ends(script, frame.data), frame.content)

    def _line_ends(self, script: Script, data: bytes) -> bytes:
        # Payloads are compact JSON, which never holds a raw line break.
        return data.replace(b"\n", b"\r\n") if script.crlf else data

    @staticmethod
    async def _write(resp: web.StreamResponse, data: bytes, script: Script) -> None:
        step = script.fragment
        if not step or step >= len(data):
            await resp.write(data)
            return
        for start in range(0, len(data), step):
            await resp.write(data[start : start + step])
            # Let the loop hand each piece to the socket before the next.
            await asyncio.sleep(0)

    # -- helpers for the subclasses ---------------------------------------------------

    @staticmethod
    def dumps(obj: Any, *, separators: tuple[str, str] = (",", ":")) -> bytes:
        """JSON as the APIs send it: UTF-8, not ASCII-escaped."""
        return json.dumps(obj, separators=separators, ensure_ascii=False).encode()

    @staticmethod
    def with_unknown(obj: dict[str, Any], script: Script) -> dict[str, Any]:
        if script.unknown_fields:
            obj = {**obj, "x_future_field": {"nested": [1, "two", None]}}
        return obj


@contextlib.asynccontextmanager
async def serve(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Run ``app`` on ``host`` (an ephemeral port by default); yield its base URL.

    Handlers are cancelled when their client disconnects, which is how a fake
    notices at once that a reader went away.
    """
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        actual = runner.addresses[0][1]
        yield f"http://{host}:{actual}"
    finally:
        await runner.cleanup()
