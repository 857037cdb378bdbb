"""The mock provider: deterministic replies with no key and no network.

It is the embedded default (``make serve`` works offline) and a load-testing
target: ``interval_ms`` sets the cadence (0 streams as fast as the client reads)
and ``max_tokens`` and ``token_size`` set how many chunks of how many
characters. The same request always gives the same reply, so a test can compare
the stream with ``send()`` and a benchmark can check every byte it received.

The text is generated lazily, because a request may ask for up to
1,000,000 x 65,536 characters (the :class:`~engine.wire.Options` bounds): it is
the echo of the last user message, then a *period* of words (about 16 KiB)
repeated for as long as asked. The period is built once per distinct message
and cached, and each chunk is a slice of it, so a stream holds
O(echo + period + token_size) characters whatever its length, and a chunk costs
a copy of its own characters, never a loop per word.

What it answers, first rule that applies (streamed and ``send()`` alike):

1. **Tool calls**, when ``tools`` are set, ``tool_choice`` is not ``"none"``
   and the last message is a user message. It calls the function
   ``tool_choice`` names; otherwise each tool whose name the last user text
   mentions as a whole word (in the order of ``tools``), or the first tool when
   none is mentioned and ``tool_choice`` is ``"required"``; only the first of
   them when ``parallel_tool_calls`` is false. With ``"auto"`` (or no
   ``tool_choice``) and no tool mentioned, it answers as below. Arguments are a
   JSON object synthesized from the function's ``parameters``
   (:func:`synthesize`); ids are ``call_mock_<n>``, numbered on from the tool
   calls earlier in the conversation. Streamed, each call is three chunks with
   ``content: ""`` (the first delta with ``id``, ``type``, ``function.name``
   and ``arguments: ""``, then the arguments in two halves), then a last chunk
   with ``finish_reason: "tool_calls"`` and usage; ``send()`` gives the whole
   calls, ``content: ""``, ``finish_reason: "tool_calls"``.
2. **JSON**, when ``response_format`` is ``json_object`` (``{"reply": <what
   the echo says>}``) or ``json_schema`` (a document synthesized from its
   ``schema``), in chunks of ``token_size`` characters (at least one), ending
   ``"stop"``.
3. **Text**: the echo, then words. The echo is ``You said: <text>. `` for the
   last user message, with its images and audio counted (``You said: <text>
   [1 image, 1 audio clip]. ``), or, when the conversation ends with tool
   results, ``Tool <name> returned: <content>. `` for each of them (the name is
   the one the assistant called under that ``tool_call_id``). Without
   ``max_tokens`` the reply is :data:`DEFAULT_CHUNKS` chunks and ends
   ``"stop"``; with it, the mock, which would say more, is cut at exactly
   ``max_tokens`` chunks and ends ``"length"``, as a model stopped by its limit.

``max_tokens`` cuts only text: a tool call or a JSON document is always whole
(a cut one would only be invalid JSON), so :data:`MAX_WHOLE_REPLY_CHARS` bounds
text replies alone. ``usage.completion_tokens`` is the number of chunks.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import zlib
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import InvalidFields
from ..wire import (
    AudioPart,
    Chunk,
    ImagePart,
    JSONObjectFormat,
    JSONSchemaFormat,
    Message,
    Options,
    Reply,
    Usage,
)
from .base import ChunkStream, Provider, to_options

if TYPE_CHECKING:
    from ..config import ProviderSettings

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_INTERVAL_MS",
    "DEFAULT_TOKEN_SIZE",
    "MAX_WHOLE_REPLY_CHARS",
    "PERIOD_CHARS",
    "MockProvider",
    "mock_text",
    "synthesize",
]

DEFAULT_CHUNKS = 40
DEFAULT_INTERVAL_MS = 20
DEFAULT_TOKEN_SIZE = 4

#: The words after the echo repeat with this period (rounded up to a whole word),
#: so the first 16 KiB after the echo are exactly what the mock said before it
#: repeated (tests and benchmarks compare short replies byte for byte), and a
#: cached period costs 16 KiB: 64 of them (``_period``'s cache) hold 1 MiB.
PERIOD_CHARS = 16 * 1024

#: The largest non-streamed text reply (``send()``, ``POST /v1/chat``, ``stream: false``),
#: in characters of ``max_tokens`` x ``token_size``. A whole reply is held in memory
#: and sent as one JSON body, so it is bounded like a request body: aiohttp's
#: default ``client_max_size`` and this engine's ``max_body_size`` are 1 MiB. It is
#: still above any real model's output (128k tokens are about 512 KiB of text).
#: Streams have no such bound: their memory does not grow with their length.
MAX_WHOLE_REPLY_CHARS = 1024 * 1024

# At interval 0, yield to the event loop after this many chunks or this many
# characters sent without a pause, whichever comes first, so a fast stream cannot
# starve the other streams on the same loop. 64 KiB is aiohttp's write buffer
# high-water mark (``StreamWriter`` drains past it): about one socket buffer of
# work between two yields, even with 64 KiB chunks.
_YIELD_EVERY = 32
_YIELD_CHARS = 64 * 1024

# Bounds of the JSON Schema synthesizer. A schema is at most MAX_JSON_DEPTH (64)
# deep, but ``$ref`` can nest it without end and fan it out exponentially (ten
# properties referring to a definition of ten properties...): the value built
# stops at this depth (Pydantic models nest a few levels) and after this many
# values (a long string counts as one per 32 characters), then has ``null`` in
# place of the rest: at most a few hundred KiB of JSON. A padded string
# (``minLength``) is capped too.
_MAX_DEPTH = 32
_MAX_VALUES = 10_000
_MAX_STRING = 4096

_WORDS = (
    "stream", "token", "event", "gateway", "latency", "socket", "buffer", "reply",
    "model", "chunk", "server", "client", "memory", "session", "provider", "heartbeat",
)  # fmt: skip

# The formats Pydantic writes for datetime, date, time, UUID, EmailStr and the URL types.
_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "duration": "PT1S",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "email": "mock@example.com",
    "uri": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}

_encoder = msgspec.json.Encoder()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled meanwhile
        future.set_result(None)


# -- text ------------------------------------------------------------------------------


def mock_text(messages: Sequence[Message], length: int) -> str:
    """The first ``length`` characters of the mock's text reply to ``messages``.

    The reply echoes the last user message (or the tool results that end the
    conversation), then continues with words chosen by a CRC of what it echoed,
    so it is the same in every process and run. It is exactly what a text
    stream of ``max_tokens`` x ``token_size`` = ``length`` characters
    concatenates to; unlike the stream, it builds the whole string.
    """
    echo, period = _parts(messages, length)
    if length <= len(echo):
        return echo[:length]
    repeats, rest = divmod(length - len(echo), len(period))
    return echo + period * repeats + period[:rest]


def _echo(messages: Sequence[Message]) -> tuple[str, str]:
    """What the reply starts with, and the text whose CRC picks the words after it."""
    if messages and messages[-1].role == "tool":
        return _tool_results(messages)
    last = next((m for m in reversed(messages) if m.role == "user"), None)
    if last is None:
        return "You said: . ", ""
    text, content = last.text, last.content
    if content is None or isinstance(content, str):  # the common case: no parts to count
        return f"You said: {text}. ", text
    images = sum(isinstance(part, ImagePart) for part in content)
    clips = sum(isinstance(part, AudioPart) for part in content)
    counted = [
        f"{n} {noun}{'s' if n > 1 else ''}"
        for n, noun in ((images, "image"), (clips, "audio clip"))
        if n
    ]
    said = " ".join([text, f"[{', '.join(counted)}]"] if counted else [text]).strip()
    return f"You said: {said}. ", text


def _tool_results(messages: Sequence[Message]) -> tuple[str, str]:
    # The results that end the conversation (several after parallel calls),
    # each named after the call it answers; the latest call of an id wins.
    start = len(messages)
    while start and messages[start - 1].role == "tool":
        start -= 1
    names = {
        call.id: call.function.name
        for message in messages[:start]
        for call in message.tool_calls or ()
    }
    said = " ".join(
        f"Tool {names.get(m.tool_call_id or '', m.tool_call_id)} returned: {m.text}."
        for m in messages[start:]
    )
    return said + " ", said


def _parts(messages: Sequence[Message], length: int) -> tuple[str, str]:
    """The echo and the period of a reply ``length`` characters long.

    A reply that ends within its first period gets only the words it needs (the
    same words, so it is a prefix of any longer reply): a short reply to a new
    message costs a few words, not 16 KiB of them.
    """
    echo, key = _echo(messages)
    wanted = min(max(length - len(echo), 0), PERIOD_CHARS)
    return echo, _period(zlib.crc32(key.encode()), wanted)


# A load test asks for the same reply thousands of times and building a period
# is a Python loop per word, so recent ones are kept: at most 64 x 16 KiB. The
# key is the CRC, not the message, so a long message is not kept alive by it.
@functools.lru_cache(maxsize=64)
def _period(seed: int, length: int) -> str:
    """The shortest run of whole words from ``seed`` that reaches ``length`` characters."""
    parts: list[str] = []
    size = 0
    while size < length:
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        word = _WORDS[seed % len(_WORDS)] + " "
        parts.append(word)
        size += len(word)
    return "".join(parts)


def _wrap(head: str, period: str, size: int) -> tuple[str, int]:
    """``head`` continued by ``period`` from its start, to ``size`` characters.

    Returns the chunk and where in ``period`` the next one starts. A chunk larger
    than the period repeats it whole: still one copy per character.
    """
    repeats, rest = divmod(size - len(head), len(period))
    return head + period * repeats + period[:rest], rest


# -- tool calls and JSON ----------------------------------------------------------------


def _mentions(text: str, name: str) -> bool:
    # A whole word: "get_weather" does not mention a tool named "weather".
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def _tool_calls(messages: Sequence[Message], options: Options) -> list[dict[str, Any]] | None:
    """The whole tool calls the mock makes (rule 1 of the module's docstring), or None."""
    tools = options.tools
    if not tools or options.tool_choice == "none" or not messages:
        return None
    last = messages[-1]
    if last.role != "user":
        return None
    functions: list[dict[str, Any]] = [tool["function"] for tool in tools]
    forced = options.tool_name()
    if forced is not None:
        chosen = [f for f in functions if f["name"] == forced]
    else:
        text = last.text
        chosen = [f for f in functions if _mentions(text, f["name"])]
        if not chosen and options.tool_choice == "required":
            chosen = functions[:1]
    if not chosen:
        return None
    if options.parallel_tool_calls is False:
        chosen = chosen[:1]
    made = sum(len(m.tool_calls or ()) for m in messages)
    return [
        {
            "id": f"call_mock_{made + n}",
            "type": "function",
            "function": {
                "name": function["name"],
                "arguments": _encoder.encode(
                    synthesize(function.get("parameters") or {"type": "object"})
                ).decode(),
            },
        }
        for n, function in enumerate(chosen, 1)
    ]


def _tool_deltas(calls: list[dict[str, Any]], model: str, usage: Usage) -> list[Chunk]:
    """The stream of ``calls``: three chunks a call, then the finish."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        half = len(arguments) // 2
        deltas.append(
            {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
        )
        deltas.append({"index": index, "function": {"arguments": arguments[:half]}})
        deltas.append({"index": index, "function": {"arguments": arguments[half:]}})
    chunks = [
        Chunk(role="assistant", content="", model=model, finish_reason=None, tool_calls=[delta])
        for delta in deltas
    ]
    chunks.append(
        Chunk(role="assistant", content="", model=model, finish_reason="tool_calls", usage=usage)
    )
    return chunks


def _document(messages: Sequence[Message], options: Options) -> str | None:
    """The JSON text ``response_format`` asks for (rule 2), or None for prose."""
    form = options.response_format
    if isinstance(form, JSONObjectFormat):
        return _encoder.encode({"reply": _echo(messages)[0].rstrip()}).decode()
    if isinstance(form, JSONSchemaFormat):
        return _encoder.encode(synthesize(form.json_schema.schema)).decode()
    return None


def _document_chunks(document: str, size: int, model: str, usage: Usage) -> Iterator[Chunk]:
    last = max(len(document) - 1, 0) // size * size
    for start in range(0, last, size):
        content = document[start : start + size]
        yield Chunk(role="assistant", content=content, model=model, finish_reason=None)
    content = document[last:]
    yield Chunk(role="assistant", content=content, model=model, finish_reason="stop", usage=usage)


def synthesize(schema: Any) -> Any:
    """A JSON value that validates against the JSON Schema ``schema``, the same every time.

    Meant for the schemas of tool parameters and structured outputs (what
    Pydantic writes): ``type`` (the first non-null one of a list), ``enum``
    (its first value), ``const``, ``properties`` with ``required`` (only the
    required ones, or all when none is), ``items`` (one item, or ``minItems``)
    and ``prefixItems``, ``anyOf``/``oneOf`` (the first branch), ``allOf``
    (merged), ``$ref`` within the document (``#/$defs/...``,
    ``#/definitions/...``), string ``format``/``minLength``/``maxLength`` and
    number bounds. Strings are words picked by the property's name, numbers 1,
    booleans true. Within a ``$ref`` to a definition it is already expanding (a
    recursive model), the value is the smallest it can be: no optional
    properties, empty arrays, the ``null`` branch of an ``anyOf``. Anything it
    does not understand (``pattern``, ``not``, ...) may give an invalid value.
    """
    return _Synthesizer(schema).value(schema, "", 0, (), False)


class _Synthesizer:
    __slots__ = ("left", "root")

    def __init__(self, root: Any) -> None:
        self.root = root
        self.left = _MAX_VALUES

    def resolve(self, ref: str) -> Any:
        """The schema a local ``$ref`` (a JSON Pointer after ``#``) points to, or None."""
        if not ref.startswith("#"):
            return None  # another document: not fetched
        node = self.root
        for token in ref[1:].split("/")[1:]:
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict):
                node = node.get(token)
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                return None
        return node

    def merged(self, schema: dict[str, Any], parts: list[Any]) -> dict[str, Any]:
        """``schema`` with its ``allOf`` parts folded in (properties and required united)."""
        result = {key: value for key, value in schema.items() if key != "allOf"}
        properties = dict(result.get("properties") or {})
        required = list(result.get("required") or [])
        for part in parts:
            if isinstance(part, dict) and isinstance(part.get("$ref"), str):
                part = self.resolve(part["$ref"])
            if not isinstance(part, dict):
                continue
            properties.update(part.get("properties") or {})
            required.extend(part.get("required") or [])
            for key, value in part.items():
                result.setdefault(key, value)
        if properties:
            result["properties"] = properties
        if required:
            result["required"] = required
        return result

    def value(
        self, schema: Any, name: str, depth: int, refs: tuple[str, ...], minimal: bool
    ) -> Any:
        self.left -= 1
        if self.left < 0 or depth > _MAX_DEPTH or not isinstance(schema, dict):
            return None if schema is not True else {}
        ref = schema.get("$ref")
        if isinstance(ref, str):
            minimal = minimal or ref in refs  # recursion: the smallest instance
            target = self.resolve(ref)
            return self.value(target, name, depth + 1, (*refs, ref), minimal)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                branch = branches[0]
                if minimal:
                    branch = next((b for b in branches if b == {"type": "null"}), branch)
                return self.value(branch, name, depth + 1, refs, minimal)
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts:
            return self.value(self.merged(schema, parts), name, depth + 1, refs, minimal)

        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = "null" if not kinds or (minimal and "null" in kind) else kinds[0]
        if kind is None:
            if "properties" in schema or "required" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return {}  # no constraint: any value does, and an object suits tool arguments
        if kind == "object":
            return self.object(schema, depth, refs, minimal)
        if kind == "array":
            return self.array(schema, name, depth, refs, minimal)
        if kind == "string":
            text = _string(schema, name)
            self.left -= len(text) // 32  # long strings spend the budget too
            return text
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return True
        return None  # "null", or a type that does not exist

    def object(
        self, schema: dict[str, Any], depth: int, refs: tuple[str, ...], minimal: bool
    ) -> dict[str, Any]:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        required = [key for key in schema.get("required") or () if isinstance(key, str)]
        if required:
            names = [key for key in properties if key in required]
            names += [key for key in dict.fromkeys(required) if key not in properties]
        else:
            names = [] if minimal else list(properties)
        result: dict[str, Any] = {}
        for key in names:
            if self.left <= 0:
                break
            result[key] = self.value(properties.get(key, {}), key, depth + 1, refs, minimal)
        return result

    def array(
        self, schema: dict[str, Any], name: str, depth: int, refs: tuple[str, ...], minimal: bool
    ) -> list[Any]:
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            return [self.value(item, name, depth + 1, refs, minimal) for item in prefix]
        items = schema.get("items", {})
        least = schema.get("minItems")
        count = least if isinstance(least, int) and least > 0 else 0
        if not count and not minimal and schema.get("maxItems") != 0:
            count = 1
        result: list[Any] = []
        while len(result) < count and self.left > 0:
            result.append(self.value(items, name, depth + 1, refs, minimal))
        return result


def _string(schema: dict[str, Any], name: str) -> str:
    text = _FORMATS.get(str(schema.get("format")))
    if text is None:
        text = _WORDS[zlib.crc32(name.encode()) % len(_WORDS)]
    least, most = schema.get("minLength"), schema.get("maxLength")
    if isinstance(least, int) and len(text) < least:
        text = (text * (min(least, _MAX_STRING) // len(text) + 1))[: min(least, _MAX_STRING)]
    if isinstance(most, int) and most >= 0:
        text = text[:most]
    return text


def _bound(schema: dict[str, Any], key: str) -> float | None:
    value = schema.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    # 1 when the bounds allow it, else the first candidate near them that they do.
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    above, below = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")

    def allowed(value: float) -> bool:
        return (
            (low is None or value >= low)
            and (above is None or value > above)
            and (high is None or value <= high)
            and (below is None or value < below)
        )

    lo = max((b for b in (low, above) if b is not None), default=None)
    hi = min((b for b in (high, below) if b is not None), default=None)
    candidates: list[float] = [1]
    if lo is not None:
        candidates += [math.ceil(lo), math.floor(lo) + 1] if integer else [lo, lo + 1]
    if hi is not None:
        candidates += [math.floor(hi), math.ceil(hi) - 1] if integer else [hi, hi - 1]
    if lo is not None and hi is not None and not integer:
        candidates.append((lo + hi) / 2)
    value = next((c for c in candidates if allowed(c)), 1)
    return int(value) if float(value).is_integer() else value


# -- the provider ------------------------------------------------------------------------


def _count_tokens(messages: Sequence[Message]) -> int:
    # A rough, deterministic stand-in for a tokenizer: four characters a token.
    return sum(len(m.text) // 4 + 1 for m in messages)


def _shape(options: Options) -> tuple[int, int, int]:
    """Chunks, characters per chunk and milliseconds between chunks that ``options`` ask for."""
    count = options.max_tokens if options.max_tokens is not None else DEFAULT_CHUNKS
    size = options.token_size or DEFAULT_TOKEN_SIZE
    interval = DEFAULT_INTERVAL_MS if options.interval_ms is None else options.interval_ms
    return count, size, interval


def _usage(messages: Sequence[Message], count: int) -> Usage:
    prompt = _count_tokens(messages)
    return Usage(prompt_tokens=prompt, completion_tokens=count, total_tokens=prompt + count)


class MockProvider(Provider):
    """Replies derived from the conversation, at a cadence the request sets."""

    name = "mock"
    #: What it answers by (the module's docstring gives the rules).
    carries = frozenset(
        {"max_tokens", "tools", "tool_choice", "parallel_tool_calls", "response_format"}
    )
    # Any other option cannot change its answer.
    ignores = frozenset(Options.__struct_fields__) - carries

    def output_limit(self, options: Options) -> int:
        """Always bounded: ``max_tokens`` chunks, else :data:`DEFAULT_CHUNKS` (a chunk a token)."""
        return _shape(options)[0]

    @classmethod
    def from_settings(cls, settings: ProviderSettings, *, session: Any = None) -> MockProvider:
        return cls(model=settings.model or "mock-1")

    async def open(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
    ) -> ChunkStream:
        options = options or Options()
        model = model or self.default_model
        count, size, interval = _shape(options)
        # Tools and JSON are off the hot path: a plain request pays two tests.
        if options.tools is not None or options.response_format is not None:
            special = _special(messages, options, model, size, interval / 1000)
            if special is not None:
                return ChunkStream(special, model=model, provider=self.name)
        echo, period = _parts(messages, count * size)
        usage = _usage(messages, count)
        finish = "stop" if options.max_tokens is None else "length"
        chunks = self._chunks(echo, period, count, size, interval / 1000, model, usage, finish)
        return ChunkStream(chunks, model=model, provider=self.name)

    async def send(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: Options | None = None,
        **extra: Any,
    ) -> Reply:
        """The whole reply: what the stream would give, built in one piece.

        A text is built with :func:`mock_text` rather than by joining the
        stream's chunks, which would hold every chunk's string as well (tens of
        bytes each); it still takes as long as the stream would,
        ``interval_ms`` between chunks.

        Raises :class:`~engine.errors.InvalidFields` when a text reply's
        ``max_tokens`` x ``token_size`` exceeds :data:`MAX_WHOLE_REPLY_CHARS`.
        """
        options = to_options(options, extra)
        model = model or self.default_model
        count, size, interval = _shape(options)
        calls = _tool_calls(messages, options)
        document = None if calls is not None else _document(messages, options)
        if calls is not None:
            count = 3 * len(calls) + 1
        elif document is not None:
            count = -(-len(document) // size)
        elif count * size > MAX_WHOLE_REPLY_CHARS:
            raise InvalidFields(
                f"`max_tokens` x `token_size` ({count} x {size} = {count * size} characters) "
                f"exceeds the mock's bound for a whole reply, {MAX_WHOLE_REPLY_CHARS} "
                "characters: lower them, or stream the reply (streams have no such bound)"
            )
        if interval and count > 1:
            await asyncio.sleep((count - 1) * interval / 1000)
        usage = _usage(messages, count)
        if calls is not None:
            return Reply(
                role="assistant",
                content="",
                model=model,
                finish_reason="tool_calls",
                usage=usage,
                tool_calls=calls,
            )
        if document is not None:
            return Reply(
                role="assistant", content=document, model=model, finish_reason="stop", usage=usage
            )
        return Reply(
            role="assistant",
            content=mock_text(messages, count * size),
            model=model,
            finish_reason="stop" if options.max_tokens is None else "length",
            usage=usage,
        )

    @staticmethod
    async def _chunks(
        echo: str,
        period: str,
        count: int,
        size: int,
        interval: float,
        model: str,
        usage: Usage,
        finish: str,
    ) -> AsyncGenerator[Chunk, None]:
        loop = asyncio.get_running_loop()
        every = max(1, min(_YIELD_EVERY, _YIELD_CHARS // size))
        final = count - 1
        # The string the next chunk starts in: the echo, then the period forever.
        text, pos, end_of_text = echo, 0, len(echo)
        for n in range(count):
            if n:
                if interval:
                    # asyncio.sleep(interval), minus its coroutine: thousands of
                    # paced mock streams sleep once per chunk (benchmarks).
                    wake: asyncio.Future[None] = loop.create_future()
                    timer = loop.call_later(interval, _wake, wake)
                    try:
                        await wake
                    finally:
                        timer.cancel()
                elif n % every == 0:
                    await asyncio.sleep(0)
            end = pos + size
            if end <= end_of_text:
                content = text[pos:end]
                pos = end
            else:
                content, pos = _wrap(text[pos:], period, size)
                text, end_of_text = period, len(period)
            if n == final:
                yield Chunk(
                    role="assistant",
                    content=content,
                    model=model,
                    finish_reason=finish,
                    usage=usage,
                )
            else:
                yield Chunk(role="assistant", content=content, model=model, finish_reason=None)


def _special(
    messages: Sequence[Message], options: Options, model: str, size: int, interval: float
) -> AsyncGenerator[Chunk, None] | None:
    """The stream of tool calls or of a JSON document (rules 1 and 2), or None for text."""
    if (calls := _tool_calls(messages, options)) is not None:
        usage = _usage(messages, 3 * len(calls) + 1)
        return _paced(_tool_deltas(calls, model, usage), interval, _YIELD_EVERY)
    if (document := _document(messages, options)) is not None:
        usage = _usage(messages, -(-len(document) // size))
        every = max(1, min(_YIELD_EVERY, _YIELD_CHARS // size))
        return _paced(_document_chunks(document, size, model, usage), interval, every)
    return None


async def _paced(
    chunks: Iterable[Chunk], interval: float, every: int
) -> AsyncGenerator[Chunk, None]:
    """``chunks`` at the text's cadence (tool calls and JSON: not the hot path)."""
    for n, chunk in enumerate(chunks):
        if n:
            if interval:
                await asyncio.sleep(interval)
            elif n % every == 0:
                await asyncio.sleep(0)
        yield chunk
