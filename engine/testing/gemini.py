"""A fake Gemini API (``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``).

With ``alt=sse`` Gemini sends each ``GenerateContentResponse`` as
``data: {...}`` with CRLF line ends, in Google's JSON style (a space after each
colon, none after commas); the last one carries ``finishReason`` and the full
``usageMetadata``. There is no terminating event: the body just ends. Without
``alt=sse`` the stream is one JSON array. ``:generateContent`` answers whole.
A mid-stream failure is a ``data: {"error": {...}}`` event.

Like the real API (protobuf JSON), the fake refuses with Gemini's 400 body
(``{"error": {"code": 400, "message", "status": "INVALID_ARGUMENT"}}``) a
request it could not parse: an unknown field name (camelCase or snake_case
accepted), a value of the wrong type, a role other than ``user``/``model``, a
part with no data or two, bad base64, and a function call or response out of
place: a ``functionResponse`` turn must follow the ``model`` turn that made
the calls, answer each once, by the name it was called with. So a wrong
mapping fails a test instead of passing one. A body without ``contents`` (the
wire tests' probes) is answered unchecked; a refused request is recorded but
uses no queued script.

https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ._fake import FakeUpstream, Frame, Recorded, Script, ToolCall

__all__ = ["FakeGemini", "GeminiScript", "check_request", "gemini_app"]

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


@dataclass(kw_only=True)
class GeminiScript(Script):
    """A :class:`~engine.testing.Script` with what only Gemini's replies have.

    ``tool_calls``: parallel calls, sent as several ``functionCall`` parts of one
    response (``tool_call`` is one more, first, if set too); ``call_ids``: put
    each call's ``id`` on its ``functionCall``, as newer models do;
    ``signatures``: a ``thoughtSignature`` on each call part, as Gemini 3 sends
    (``sig-<call id>``), which it wants back on the next turn.
    """

    tool_calls: Sequence[ToolCall] = ()
    call_ids: bool = False
    signatures: bool = False


def _calls(script: Script) -> list[ToolCall]:
    calls = [script.tool_call] if script.tool_call is not None else []
    if isinstance(script, GeminiScript):
        calls.extend(script.tool_calls)
    return calls


def _call_part(script: Script, call: ToolCall) -> dict[str, Any]:
    function: dict[str, Any] = {"name": call.name, "args": json.loads("".join(call.arguments))}
    if isinstance(script, GeminiScript) and script.call_ids:
        function["id"] = call.id
    part: dict[str, Any] = {"functionCall": function}
    if isinstance(script, GeminiScript) and script.signatures:
        part["thoughtSignature"] = f"sig-{call.id}"
    return part


# -- what the fake accepts: the v1beta field names, and Gemini's rules on turns ---------
# https://ai.google.dev/api/generate-content, https://ai.google.dev/api/caching#Content

_REQUEST = {
    "model", "contents", "tools", "toolConfig", "safetySettings", "systemInstruction",
    "generationConfig", "cachedContent",
}  # fmt: skip
_CONTENT = {"role", "parts"}
_DATA = {
    "text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
    "codeExecutionResult",
}  # fmt: skip
_PART = _DATA | {"thought", "thoughtSignature", "videoMetadata", "partMetadata"}
_BLOB = {"mimeType", "data"}
_CALL = {"id", "name", "args"}
_RESPONSE = {"id", "name", "response", "willContinue", "scheduling", "parts"}
_CONFIG = {
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
    "responseModalities", "candidateCount", "maxOutputTokens", "temperature", "topP", "topK",
    "seed", "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs",
    "enableEnhancedCivicAnswers", "speechConfig", "thinkingConfig", "imageConfig",
    "mediaResolution",
}  # fmt: skip
_INTEGERS = {"candidateCount", "maxOutputTokens", "topK", "seed", "logprobs"}
_NUMBERS = {"temperature", "topP", "presencePenalty", "frequencyPenalty"}
_MIME_TYPES = {"text/plain", "application/json", "text/x.enum"}
_THINKING = {"includeThoughts", "thinkingBudget", "thinkingLevel"}
_TOOL = {
    "functionDeclarations", "googleSearchRetrieval", "codeExecution", "googleSearch",
    "urlContext", "fileSearch", "googleMaps", "computerUse",
}  # fmt: skip
_DECLARATION = {
    "name", "description", "parameters", "parametersJsonSchema", "response",
    "responseJsonSchema", "behavior",
}  # fmt: skip
_TOOL_CONFIG = {"functionCallingConfig", "retrievalConfig"}
_CALLING = {"mode", "allowedFunctionNames"}
_MODES = {"AUTO", "ANY", "NONE", "VALIDATED"}
#: Gemini's limit on ``stopSequences`` (GenerationConfig: "up to 5").
MAX_STOP_SEQUENCES = 5
_MEDIA_TYPE = re.compile(r"[a-z0-9.+-]+/[a-z0-9.+-]+\Z")


class _Invalid(Exception):
    """A request the real API would refuse with 400 INVALID_ARGUMENT; the message says why."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _fields(obj: Any, allowed: set[str], at: str) -> dict[str, Any]:
    """``obj``'s fields under their camelCase names; an unknown one is refused."""
    if not isinstance(obj, dict):
        raise _Invalid(f"Invalid value at '{at}': expected an object, got {json.dumps(obj)}")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _camel(key)
        if name not in allowed:
            raise _Invalid(
                f"Invalid JSON payload received. Unknown name {json.dumps(key)} at '{at}': "
                "Cannot find field."
            )
        out[name] = value
    return out


def _check_type(value: Any, kind: type | tuple[type, ...], at: str) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _Invalid(f"Invalid value at '{at}': {json.dumps(value)}")


def _check_part(obj: Any, role: str, at: str) -> dict[str, Any]:
    part = _fields(obj, _PART, at)
    data = [name for name in part if name in _DATA]
    if len(data) != 1:
        raise _Invalid(f"Invalid value at '{at}': a part needs exactly one of its data fields")
    if "text" in part:
        _check_type(part["text"], str, f"{at}.text")
    if "inlineData" in part:
        blob = _fields(part["inlineData"], _BLOB, f"{at}.inlineData")
        mime = blob.get("mimeType")
        if not isinstance(mime, str) or not _MEDIA_TYPE.match(mime):
            raise _Invalid(f"Invalid value at '{at}.inlineData.mimeType': {json.dumps(mime)}")
        try:
            base64.b64decode(str(blob.get("data", "")), validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(
                f"Invalid value at '{at}.inlineData.data' (TYPE_BYTES), Base64 decoding failed"
            ) from None
    if "functionCall" in part:
        if role != "model":
            raise _Invalid(f"Invalid value at '{at}': a functionCall belongs in a model turn")
        call = _fields(part["functionCall"], _CALL, f"{at}.functionCall")
        _check_type(call.get("name"), str, f"{at}.functionCall.name")
        _check_type(call.get("args", {}), dict, f"{at}.functionCall.args")
    if "functionResponse" in part:
        if role != "user":
            raise _Invalid(f"Invalid value at '{at}': a functionResponse belongs in a user turn")
        response = _fields(part["functionResponse"], _RESPONSE, f"{at}.functionResponse")
        _check_type(response.get("name"), str, f"{at}.functionResponse.name")
        _check_type(response.get("response"), dict, f"{at}.functionResponse.response")
    return part


def _names(parts: list[dict[str, Any]], kind: str) -> list[str]:
    return [part[kind]["name"] for part in parts if kind in part]


def _check_contents(contents: Any) -> None:
    if not isinstance(contents, list) or not contents:
        raise _Invalid("* GenerateContentRequest.contents: contents is not specified")
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for i, obj in enumerate(contents):
        at = f"contents[{i}]"
        content = _fields(obj, _CONTENT, at)
        role = content.get("role", "user")
        if role not in ("user", "model"):
            raise _Invalid("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _Invalid(
                f"* GenerateContentRequest.{at}.parts: contents.parts must not be empty."
            )
        turns.append(
            (role, [_check_part(p, role, f"{at}.parts[{j}]") for j, p in enumerate(parts)])
        )
    for i, (_role, parts) in enumerate(turns):
        previous = _names(turns[i - 1][1], "functionCall") if i else []
        if _names(parts, "functionCall") and (i == 0 or turns[i - 1][0] != "user"):
            raise _Invalid(
                "Please ensure that function call turn comes immediately after a user turn "
                "or after a function response turn."
            )
        answered = _names(parts, "functionResponse")
        if answered or previous:
            if not previous:
                raise _Invalid(
                    "Please ensure that function response turn comes immediately after a "
                    "function call turn."
                )
            if len(answered) != len(previous):
                raise _Invalid(
                    "Please ensure that the number of function response parts is equal to the "
                    "number of function call parts of the function call turn."
                )
            if Counter(answered) != Counter(previous):
                stray = sorted(set(answered) - set(previous)) or sorted(set(previous))
                raise _Invalid(
                    f"Function response name(s) {stray} do not match the function calls "
                    f"{previous} of the previous turn."
                )


def _check_config(obj: Any) -> None:
    config = _fields(obj, _CONFIG, "generation_config")
    for name in _INTEGERS & config.keys():
        _check_type(config[name], int, f"generation_config.{name}")
    for name in _NUMBERS & config.keys():
        _check_type(config[name], (int, float), f"generation_config.{name}")
    stops = config.get("stopSequences", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _Invalid("Invalid value at 'generation_config.stop_sequences'")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise _Invalid(
            f"The number of stop sequences ({len(stops)}) exceeds the maximum allowed "
            f"({MAX_STOP_SEQUENCES})."
        )
    mime = config.get("responseMimeType")
    if mime is not None and mime not in _MIME_TYPES:
        raise _Invalid(f"Unsupported response mime type: {mime}")
    if "responseJsonSchema" in config or "responseSchema" in config:
        if "responseJsonSchema" in config and "responseSchema" in config:
            raise _Invalid("response_schema and response_json_schema cannot both be set.")
        if mime not in ("application/json", "text/x.enum"):
            raise _Invalid("response_mime_type must be set with a response schema.")
        _check_type(config.get("responseJsonSchema", {}), dict, "generation_config.schema")
    if "thinkingConfig" in config:
        thinking = _fields(config["thinkingConfig"], _THINKING, "generation_config.thinking_config")
        if "thinkingBudget" in thinking:
            _check_type(thinking["thinkingBudget"], int, "thinking_config.thinking_budget")


def _check_tools(tools: Any, tool_config: Any) -> None:
    declared: set[str] = set()
    if not isinstance(tools, list):
        raise _Invalid("Invalid value at 'tools'")
    for i, obj in enumerate(tools):
        tool = _fields(obj, _TOOL, f"tools[{i}]")
        for j, fn in enumerate(tool.get("functionDeclarations", [])):
            declaration = _fields(fn, _DECLARATION, f"tools[{i}].function_declarations[{j}]")
            _check_type(declaration.get("name"), str, f"tools[{i}].function_declarations[{j}]")
            declared.add(declaration["name"])
    if tool_config is None:
        return
    config = _fields(tool_config, _TOOL_CONFIG, "tool_config")
    calling = _fields(config.get("functionCallingConfig", {}), _CALLING, "function_calling_config")
    if calling.get("mode", "AUTO") not in _MODES:
        raise _Invalid(f"Invalid value at 'tool_config.function_calling_config.mode': {calling}")
    allowed = calling.get("allowedFunctionNames")
    if allowed is not None:
        if calling.get("mode") not in ("ANY", "VALIDATED"):
            raise _Invalid("allowed_function_names may only be set with mode ANY.")
        if not set(allowed) <= declared:
            raise _Invalid(f"allowed_function_names {allowed} are not among the declared functions")


def check_request(body: Any) -> str | None:
    """Why the real API would refuse ``body`` (a decoded ``generateContent`` request), or None."""
    if not isinstance(body, dict) or "contents" not in body:
        return None  # a raw-wire probe, not a request: see the module docstring
    try:
        request = _fields(body, _REQUEST, "")
        _check_contents(request["contents"])
        if "systemInstruction" in request:
            system = _fields(request["systemInstruction"], _CONTENT, "system_instruction")
            for j, part in enumerate(system.get("parts", [])):
                _check_part(part, "user", f"system_instruction.parts[{j}]")
        if "generationConfig" in request:
            _check_config(request["generationConfig"])
        if "tools" in request or "toolConfig" in request:
            _check_tools(request.get("tools", []), request.get("toolConfig"))
    except _Invalid as exc:
        return str(exc)
    return None


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
        raw = await request.read()  # aiohttp keeps it: super().handle reads it again
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        problem = check_request(body)
        if problem is not None:
            self._record(request, body)
            error = {"code": 400, "message": problem, "status": "INVALID_ARGUMENT"}
            return web.json_response({"error": error}, status=400, dumps=_indented)
        if action == "streamGenerateContent" and request.query.get("alt") != "sse":
            return await self._json_array(request, body)
        return await super().handle(request)

    def _record(self, request: web.Request, body: Any) -> Recorded:
        rec = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            json=body,
        )
        self.requests.append(rec)
        self.received.set()
        rec.done.set()
        return rec

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
        calls = _calls(script)
        for index in range(count):
            final = index == count - 1 and not calls
            yield self._response(script, rec, [{"text": script.token(index)}], final), True
        if calls:
            # Parallel calls arrive together, as the parts of one response.
            parts = [_call_part(script, call) for call in calls]
            yield self._response(script, rec, parts, True), True
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
        text = "".join(script.token(i) for i in range(script.token_count()))
        calls = _calls(script)
        parts: list[dict[str, Any]] = [{"text": text}] if text or not calls else []
        parts.extend(_call_part(script, call) for call in calls)
        obj = self._response(script, rec, parts, True)
        return json.dumps(obj, indent=2, ensure_ascii=False).encode() + b"\n"

    async def _json_array(self, request: web.Request, body: Any) -> web.Response:
        # The default (non-SSE) streaming format: one JSON array, written whole here.
        rec = self._record(request, body)
        script = self.default
        items = [obj for obj, _ in self._responses(script, rec)]
        data = json.dumps(items, indent=2, ensure_ascii=False).encode()
        return web.Response(body=data, content_type="application/json")


def _indented(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"


def gemini_app(default: Script | None = None) -> tuple[web.Application, FakeGemini]:
    """A fake Gemini application and the fake behind it (for scripts and records)."""
    fake = FakeGemini(default)
    return fake.app(), fake
