"""A fake Gemini API (``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``).

With ``alt=sse`` Gemini sends each ``GenerateContentResponse`` as
``data: {...}`` with CRLF line ends, in Google's JSON style (a space after each
colon, none after commas); the last one carries ``finishReason`` and the full
``usageMetadata``. There is no terminating event: the body just ends. Without
``alt=sse`` the stream is one JSON array. ``:generateContent`` answers whole.
A mid-stream failure is a ``data: {"error": {...}}`` event.

https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from ._fake import FakeUpstream, Frame, Recorded, Script

__all__ = ["FakeGemini", "gemini_app"]

_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "Method doesn't allow unregistered callers."),
    404: ("NOT_FOUND", "models/unknown is not found for API version v1beta."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "An internal error has occurred."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}
_CODES = {status: code for code, (status, _) in _ERRORS.items()}
_SEPARATORS = (",", ": ")


class FakeGemini(FakeUpstream):
    """Speaks the Gemini ``generateContent`` wire formats; see :class:`~engine.testing.Script`."""

    name = "gemini"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1beta/models/{target}", self.handle)

    def model_of(self, rec: Recorded) -> str:
        return rec.path.rsplit("/", 1)[-1].partition(":")[0]

    def is_streaming(self, request: web.Request, body: Any) -> bool:
        return request.path.endswith(":streamGenerateContent")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["target"].partition(":")[2]
        if action not in ("streamGenerateContent", "generateContent"):
            raise web.HTTPNotFound()
        if action == "streamGenerateContent" and request.query.get("alt") != "sse":
            return await self._json_array(request)
        return await super().handle(request)

    def _line_ends(self, script: Script, data: bytes) -> bytes:
        # Gemini always ends lines with CRLF.
        return data.replace(b"\n", b"\r\n")

    def _usage(self, script: Script, final: bool) -> dict[str, Any]:
        prompt, completion = script.usage()
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        if final:
            usage["candidatesTokenCount"] = completion
        usage["totalTokenCount"] = prompt + completion if final else prompt
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        return usage

    def _response(
        self, script: Script, rec: Recorded, parts: list[dict[str, Any]], final: bool
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if final:
            candidate["finishReason"] = _FINISH[script.finish]
        candidate["index"] = 0
        obj = {
            "candidates": [candidate],
            "usageMetadata": self._usage(script, final),
            "modelVersion": script.model or self.model_of(rec),
            "responseId": "fake0001",
        }
        return self.with_unknown(obj, script)

    def _responses(self, script: Script, rec: Recorded) -> Iterator[tuple[dict[str, Any], bool]]:
        count = script.token_count()
        call = script.tool_call
        for index in range(count):
            final = index == count - 1 and call is None
            yield self._response(script, rec, [{"text": script.token(index)}], final), True
        if call is not None:
            args = json.loads("".join(call.arguments))
            part = {"functionCall": {"name": call.name, "args": args}}
            yield self._response(script, rec, [part], True), True
        elif not count:
            yield self._response(script, rec, [{"text": ""}], True), False

    def stream_frames(self, script: Script, rec: Recorded) -> Iterator[Frame]:
        for obj, content in self._responses(script, rec):
            yield Frame(b"data: " + self.dumps(obj, separators=_SEPARATORS) + b"\n\n", content)

    def error_frame(self, script: Script) -> bytes:
        status = script.error_type or "UNAVAILABLE"
        error = {"code": _CODES.get(status, 500), "message": script.error_message, "status": status}
        return b"data: " + self.dumps({"error": error}, separators=_SEPARATORS) + b"\n\n"

    def error_body(self, script: Script, rec: Recorded) -> bytes:
        status, message = _ERRORS.get(script.status, ("UNKNOWN", f"Error {script.status}"))
        error = {"code": script.status, "message": message, "status": status}
        return json.dumps({"error": error}, indent=2).encode() + b"\n"

    def reply_body(self, script: Script, rec: Recorded) -> bytes:
        parts: list[dict[str, Any]] = []
        text = "".join(script.token(i) for i in range(script.token_count()))
        parts.append({"text": text})
        if script.tool_call is not None:
            args = json.loads("".join(script.tool_call.arguments))
            parts.append({"functionCall": {"name": script.tool_call.name, "args": args}})
        obj = self._response(script, rec, parts, True)
        return json.dumps(obj, indent=2, ensure_ascii=False).encode() + b"\n"

    async def _json_array(self, request: web.Request) -> web.Response:
        # The default (non-SSE) streaming format: one JSON array, written whole here.
        raw = await request.read()
        rec = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=request.headers.copy(),
            json=json.loads(raw) if raw else None,
        )
        self.requests.append(rec)
        rec.done.set()
        script = self.default
        items = [obj for obj, _ in self._responses(script, rec)]
        body = json.dumps(items, indent=2, ensure_ascii=False).encode()
        return web.Response(body=body, content_type="application/json")


def gemini_app(default: Script | None = None) -> tuple[web.Application, FakeGemini]:
    """A fake Gemini application and the fake behind it (for scripts and records)."""
    fake = FakeGemini(default)
    return fake.app(), fake
