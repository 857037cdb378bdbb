"""Google Gemini over raw aiohttp.

``POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse`` with
``x-goog-api-key``; roles ``user``/``model``, system messages in
``systemInstruction``. Each event is a whole ``GenerateContentResponse``:
``candidates[0].content.parts[*].text`` is the content, the last one carries
``finishReason`` and ``usageMetadata``. There is no terminating event.
https://ai.google.dev/api/generate-content

Request fields, each carried in Gemini's form or refused by name
(:class:`~engine.errors.UnsupportedField`), never dropped:

* messages (https://ai.google.dev/gemini-api/docs/function-calling): text and
  text parts are ``text`` parts; images sent as ``data:`` URLs and audio are
  ``inlineData`` (Gemini fetches no web address, only its Files API's and
  ``gs://`` URIs, so an image by URL is refused); an assistant's ``tool_calls``
  are ``functionCall`` parts of a ``model`` turn, after its text; ``tool``
  messages are ``functionResponse`` parts of a ``user`` turn, named after the
  call they answer. Consecutive turns of one role are merged, so the results
  of parallel calls form one turn, as Gemini requires;
* options: ``generationConfig`` fields (``_OPTIONS``, ``_generation_config``:
  ``response_format`` as ``responseMimeType``/``responseJsonSchema``,
  ``reasoning_effort`` as a thinking budget), ``tools``/``tool_choice`` as
  ``functionDeclarations``/``toolConfig``; ``parallel_tool_calls: true`` is what
  Gemini does anyway, ``false`` is refused where tools can be called (no switch);
  ``user`` is accepted and not sent (no such field; it cannot change the
  answer); ``logprobs: true``, ``top_logprobs`` and ``logit_bias`` are refused:
  the first two have a Gemini form (``responseLogprobs``, ``logprobs``) but the
  engine's chunks have nowhere to relay the result yet, the last has none.

Replies: each ``functionCall`` becomes one whole tool-call delta, ``index`` its
position in the reply, ``id`` Gemini's when it gives one, else made here.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import msgspec

from ..errors import UnsupportedField, UpstreamError
from ..sse import ServerSentEvent
from ..wire import (
    MAX_JSON_DEPTH,
    AudioPart,
    Chunk,
    JSONObjectFormat,
    Message,
    Options,
    Part,
    Reply,
    ResponseFormat,
    TextFormat,
    TextPart,
    Usage,
    json_depth,
)
from ._http import HTTPProvider, decode_view, event_error, options_dict

__all__ = ["THINKING_BUDGETS", "GeminiProvider"]

# https://ai.google.dev/api/generate-content#generationconfig
_OPTIONS = {
    "max_tokens": "maxOutputTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
#: ``reasoning_effort`` as ``thinkingConfig.thinkingBudget`` (tokens). low,
#: medium and high are the budgets Google's own OpenAI-compatible endpoint uses
#: (https://ai.google.dev/gemini-api/docs/openai#thinking); none is 0, which
#: turns thinking off where a model allows it (2.5 Flash, Flash-Lite; 2.5 Pro
#: answers 400, which is relayed); minimal is 512, Flash-Lite's smallest budget.
#: Gemini 3 models prefer ``thinkingLevel`` but still take a budget.
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
#: Gemini's limit on ``stopSequences`` (GenerationConfig: "up to 5"); the
#: engine allows more, so more is refused here rather than by a vaguer upstream 400.
MAX_STOP_SEQUENCES = 5
_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
_ROLE = "assistant"


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool = False
    function_call: dict[str, Any] | None = None
    thought_signature: str | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = []


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None


class _UsageView(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    total_token_count: int = 0


class _Feedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class _ErrorView(msgspec.Struct):
    code: int | None = None
    message: str = ""
    status: str | None = None


class _ResponseView(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] = []
    usage_metadata: _UsageView | None = None
    model_version: str | None = None
    prompt_feedback: _Feedback | None = None
    error: _ErrorView | None = None


_decoder = msgspec.json.Decoder(_ResponseView)
_json = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


# -- messages -> contents -------------------------------------------------------------


def _object(text: str) -> dict[str, Any] | None:
    """``text`` parsed, if it is a JSON object Gemini can take (a ``Struct``), else None."""
    try:
        value = _json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return None
    if not isinstance(value, dict) or json_depth(value) > MAX_JSON_DEPTH:
        return None
    return value


def _base64(data: str) -> str:
    # A data: URL may wrap its base64 over lines; Gemini's bytes fields take it unbroken.
    return "".join(data.split()) if any(c.isspace() for c in data) else data


def _user_part(part: Part, where: str) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    if isinstance(part, AudioPart):
        audio = part.input_audio
        # https://ai.google.dev/gemini-api/docs/audio#supported-formats
        blob = {"mimeType": f"audio/{audio.format}", "data": _base64(audio.data)}
        return {"inlineData": blob}
    image = part.image_url
    data = image.data()
    if data is None:
        raise UnsupportedField(
            f"`{where}` is an image by web address, which the gemini provider cannot "
            "pass on: Gemini fetches no web URLs, only files from its own Files API or "
            "gs:// URIs. Send the image itself, as a data:image/...;base64, URL",
            field=where,
        )
    if image.detail not in (None, "auto"):
        # Gemini's resolution (generationConfig.mediaResolution) is per request,
        # not per image: one image's detail would change every other's.
        raise UnsupportedField(
            f"`{where}.image_url.detail` {image.detail!r} is not supported by the gemini "
            'provider: it has no per-image detail. Leave it out or use "auto"',
            field=f"{where}.image_url.detail",
        )
    media_type, b64 = data
    return {"inlineData": {"mimeType": media_type.lower(), "data": _base64(b64)}}


def _model_parts(message: Message, index: int) -> list[dict[str, Any]]:
    calls = message.tool_calls or []
    parts: list[dict[str, Any]] = [
        {"text": part.text}
        for part in message.parts
        if isinstance(part, TextPart) and (part.text or not calls)
    ]
    for k, call in enumerate(calls):
        where = f"messages[{index}].tool_calls[{k}].function.arguments"
        text = call.function.arguments
        # An empty string is how some models write "no arguments".
        args = _object(text) if text.strip() else {}
        if args is None:
            raise UnsupportedField(
                f"`{where}` must be a JSON object for the gemini provider (a functionCall's "
                f"args are one), got {text[:40]!r}",
                field=where,
            )
        part: dict[str, Any] = {"functionCall": {"name": call.function.name, "args": args}}
        if call.extra_content is not None:
            # Gemini 3 refuses a call replayed without the signature it came with.
            part["thoughtSignature"] = call.extra_content.google.thought_signature
        parts.append(part)
    return parts


def _function_response(message: Message, index: int, called: dict[str, str]) -> dict[str, Any]:
    """A tool message as a ``functionResponse``, named after the call it answers.

    Gemini matches results to calls by name (and by order, for parallel calls of
    one function): ids are the engine's, Gemini's older models never see any.
    """
    call_id = str(message.tool_call_id)
    name = called.get(call_id)
    if name is None:
        where = f"messages[{index}].tool_call_id"
        raise UnsupportedField(
            f"`{where}` is {call_id!r}, which no earlier assistant message called: the "
            "gemini provider names a result after its call",
            field=where,
        )
    text = message.text
    response = _object(text)
    if response is None:
        response = {"content": text}  # the response must be an object: wrap the text
    return {"functionResponse": {"name": name, "response": response}}


def _contents(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The conversation as Gemini ``contents``, one turn per run of same-role messages."""
    contents: list[dict[str, Any]] = []
    #: Tool call id -> function name, the latest call with that id winning.
    called: dict[str, str] = {}
    for index, message in enumerate(messages):
        role = message.role
        if role == "system":
            continue
        if role == "tool":
            turn, parts = "user", [_function_response(message, index, called)]
        elif role == "assistant":
            turn, parts = "model", _model_parts(message, index)
            called.update((call.id, call.function.name) for call in message.tool_calls or ())
        else:
            where = f"messages[{index}].content"
            if isinstance(message.content, str):
                parts = [{"text": message.content}]
            else:
                parts = [_user_part(p, f"{where}[{j}]") for j, p in enumerate(message.parts)]
            turn = "user"
        if contents and contents[-1]["role"] == turn:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": turn, "parts": parts})
    return contents


# -- options -> generationConfig, tools, toolConfig -----------------------------------


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    """``response_format`` as ``responseMimeType`` (+ ``responseJsonSchema``).

    https://ai.google.dev/gemini-api/docs/structured-output: ``responseJsonSchema``
    takes JSON Schema (``responseSchema`` only an OpenAPI subset). The schema's
    name and description go in as its ``title`` and ``description``; Gemini
    always holds a reply to the schema, so ``strict`` needs nothing more.
    """
    if isinstance(fmt, TextFormat):
        return {"responseMimeType": "text/plain"}
    if isinstance(fmt, JSONObjectFormat):
        return {"responseMimeType": "application/json"}
    spec = fmt.json_schema
    schema = dict(spec.schema)
    schema.setdefault("title", spec.name)
    if spec.description is not None:
        if schema.setdefault("description", spec.description) != spec.description:
            raise UnsupportedField(
                "`response_format.json_schema.description` differs from the schema's own "
                "`description`, and the gemini provider has one place for both. Leave one out",
                field="response_format.json_schema.description",
            )
    return {"responseMimeType": "application/json", "responseJsonSchema": schema}


def _generation_config(options: Options) -> dict[str, Any]:
    config = options_dict(options, _OPTIONS)
    if options.stop is not None:
        stops = [options.stop] if isinstance(options.stop, str) else options.stop
        if len(stops) > MAX_STOP_SEQUENCES:
            raise UnsupportedField(
                f"`stop` has {len(stops)} sequences; the gemini provider takes at most "
                f"{MAX_STOP_SEQUENCES}",
                field="stop",
            )
        config["stopSequences"] = stops
    if options.response_format is not None:
        config.update(_response_format(options.response_format))
    if options.reasoning_effort is not None:
        budget = THINKING_BUDGETS[options.reasoning_effort]
        config["thinkingConfig"] = {"thinkingBudget": budget}
    return config


# https://ai.google.dev/gemini-api/docs/function-calling
_TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


def _declaration(function: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as a Gemini ``FunctionDeclaration``."""
    return {
        key: function[key]
        for key in ("name", "description", "parameters")
        if function.get(key) is not None
    }


def _calling_config(options: Options) -> dict[str, Any]:
    name = options.tool_name()
    if name is not None:
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    return {"mode": _TOOL_MODES[str(options.tool_choice)]}


# -- replies -> chunks ------------------------------------------------------------------


def _usage(view: _UsageView | None) -> Usage | None:
    if view is None:
        return None
    completion = view.candidates_token_count + view.thoughts_token_count
    return Usage(
        prompt_tokens=view.prompt_token_count,
        completion_tokens=completion,
        total_tokens=view.total_token_count or view.prompt_token_count + completion,
    )


class _Parser:
    __slots__ = ("_tools", "done", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self._tools = 0

    def _call(self, call: dict[str, Any]) -> dict[str, Any]:
        """A ``functionCall`` as an OpenAI tool-call delta (Gemini sends each call whole)."""
        # Newer models give each call an id; otherwise one is made, unique
        # across turns, since the client sends it back with the call's result.
        call_id = call.get("id") or f"call_{secrets.token_hex(12)}"
        delta = {
            "index": self._tools,
            "id": call_id,
            "type": "function",
            "function": {"name": call.get("name"), "arguments": json.dumps(call.get("args", {}))},
        }
        self._tools += 1
        return delta

    def read(self, view: _ResponseView) -> tuple[str, list[dict[str, Any]] | None, str | None]:
        """Text, tool calls and finish reason (engine words) of one response."""
        if view.error is not None:
            err = view.error
            raise event_error(err.code, err.message, err.status, provider="gemini")
        if view.model_version:
            self.model = view.model_version
        if not view.candidates:
            if view.prompt_feedback is not None and view.prompt_feedback.block_reason:
                return "", None, "content_filter"
            return "", None, None
        candidate = view.candidates[0]
        text: list[str] = []
        tools: list[dict[str, Any]] | None = None
        if candidate.content is not None:
            for part in candidate.content.parts:
                if part.text is not None and not part.thought:
                    text.append(part.text)
                elif part.function_call is not None:
                    tools = tools or []
                    call = self._call(part.function_call)
                    if part.thought_signature:
                        call["extra_content"] = {
                            "google": {"thought_signature": part.thought_signature}
                        }
                    tools.append(call)
        reason = candidate.finish_reason
        finish = None
        if reason is not None and reason != "FINISH_REASON_UNSPECIFIED":
            finish = "tool_calls" if self._tools and reason == "STOP" else _FINISH.get(reason)
            finish = finish or reason.lower()
        return "".join(text), tools, finish

    def event(self, event: ServerSentEvent) -> Chunk | None:
        view = decode_view(_decoder, event.data, provider="gemini")
        content, tools, finish = self.read(view)
        if finish is not None:
            self.done = True
            return Chunk(
                role=_ROLE,
                content=content,
                model=self.model,
                finish_reason=finish,
                usage=_usage(view.usage_metadata),
                tool_calls=tools,
            )
        if not content and not tools:
            return None
        return Chunk(
            role=_ROLE, content=content, model=self.model, finish_reason=None, tool_calls=tools
        )

    def end(self) -> Chunk | None:
        raise UpstreamError("gemini stream ended before a finishReason")


class GeminiProvider(HTTPProvider):
    """Gemini through the Generative Language API."""

    name = "gemini"
    key_env = "GEMINI_API_KEY"
    carries = frozenset(
        {
            *_OPTIONS,
            "stop",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "reasoning_effort",
        }
    )
    ignores = frozenset({"user"})
    default_base_url = "https://generativelanguage.googleapis.com"

    def check_options(self, options: Options) -> None:
        """Refuse what Gemini cannot do, by value where the value decides.

        ``parallel_tool_calls: false`` has no Gemini switch (a reply may hold
        several calls), so it is refused when tools can be called at all;
        ``logprobs: false`` asks for nothing and passes.
        """
        tools_callable = bool(options.tools) and options.tool_choice != "none"
        if options.parallel_tool_calls is False and tools_callable:
            raise UnsupportedField(
                "`parallel_tool_calls: false` is not supported by the gemini provider: "
                "Gemini has no switch to limit a reply to one function call. Leave it out "
                "or set it to true, or choose another provider",
                field="parallel_tool_calls",
            )
        if options.logprobs is False:
            options = msgspec.structs.replace(options, logprobs=None)
        super().check_options(options)

    def request(
        self, messages: Sequence[Message], model: str, options: Options, *, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, str], bytes]:
        """The upstream request. Raises UnsupportedField for a message Gemini cannot take."""
        headers = {"x-goog-api-key": self.http.api_key}
        system = [m.text for m in messages if m.role == "system"]
        body: dict[str, Any] = {"contents": _contents(messages)}
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        config = _generation_config(options)
        if config:
            body["generationConfig"] = config
        if options.tools:
            declarations = [_declaration(tool["function"]) for tool in options.tools]
            body["tools"] = [{"functionDeclarations": declarations}]
            if options.tool_choice is not None:
                body["toolConfig"] = {"functionCallingConfig": _calling_config(options)}
        name = quote(model.removeprefix("models/"), safe="-._~")
        if stream:
            url = f"{self.base_url}/v1beta/models/{name}:streamGenerateContent"
            params = {"alt": "sse"}
            headers["Accept"] = "text/event-stream"
        else:
            url = f"{self.base_url}/v1beta/models/{name}:generateContent"
            params = {}
        return url, params, headers, _encoder.encode(body)

    def parser(self, model: str) -> _Parser:
        return _Parser(model)

    def parse_reply(self, data: bytes, model: str) -> Reply:
        view = decode_view(_decoder, data, provider="gemini")
        parser = _Parser(model)
        content, tools, finish = parser.read(view)
        return Reply(
            role=_ROLE,
            content=content,
            model=parser.model,
            finish_reason=finish,
            usage=_usage(view.usage_metadata),
            # Whole calls, as OpenAI's message.tool_calls: no `index` (a delta's).
            tool_calls=[{k: v for k, v in t.items() if k != "index"} for t in tools]
            if tools
            else None,
        )
