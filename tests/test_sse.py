"""The sans-IO SSE codec: spec vectors, fragmentation, limits, the encoder.

Every decoder vector is fed whole, one byte at a time and at random split
points; all three must give the same events, as a client cannot know how the
network cut the stream (h11 ``tests/test_io.py`` does the same for bodies).

Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
"""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from engine import sse
from engine.errors import SSEProtocolError
from engine.sse import Decoder, ServerSentEvent, encode, encode_comment, encode_json, encode_retry
from engine.wire import Chunk, Usage

ROOT = Path(__file__).resolve().parent.parent


def ev(data: str, event: str = "message", id: str = "", retry: int | None = None):
    return ServerSentEvent(data=data, event=event, id=id, retry=retry)


def feed_chunks(chunks, decoder: Decoder | None = None):
    decoder = decoder or Decoder()
    events = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events, decoder


def split_at(data: bytes, cuts) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def splittings(data: bytes):
    """Whole, one byte at a time, and a few seeded random cuts (empty reads included)."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for seed in range(8):
        rng = random.Random(seed)
        cuts = [rng.randint(0, len(data)) for _ in range(rng.randint(1, max(1, len(data) // 2)))]
        yield f"random{seed}", split_at(data, cuts)


@dataclass
class Vector:
    name: str
    stream: bytes
    events: list[ServerSentEvent]
    last_id: str | None = None  # checked when set
    retry: int | None = field(default=None)  # decoder.retry at the end, checked when set


VECTORS = [
    # --- The examples of the spec's section 9.2.6 ---------------------------
    Vector(
        "spec: three data lines join with LF",
        b"data: YHOO\ndata: +2\ndata: 10\n\n",
        [ev("YHOO\n+2\n10")],
    ),
    Vector(
        "spec: comment block, id set then reset, leading space kept",
        b": test stream\n\ndata: first event\nid: 1\n\n"
        b"data:second event\nid\n\ndata:  third event\n\n",
        [ev("first event", id="1"), ev("second event"), ev(" third event")],
        last_id="",
    ),
    Vector(
        "spec: the last block needs a blank line to dispatch",
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n",
        [ev("first event", id="1"), ev("second event")],
    ),
    Vector(
        "spec: empty data, a lone newline, a discarded last block",
        b"data\n\ndata\ndata\n\ndata:",
        [ev(""), ev("\n")],
    ),
    Vector(
        "spec: the space after the colon is optional",
        b"data:test\n\ndata: test\n\n",
        [ev("test"), ev("test")],
    ),
    Vector(
        "spec: named events",
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
        [ev("73857293", "add"), ev("2153", "remove"), ev("113411", "add")],
    ),
    # --- Line ends -----------------------------------------------------------
    Vector("CRLF", b"data: a\r\ndata: b\r\n\r\n", [ev("a\nb")]),
    Vector("CR", b"data: a\rdata: b\r\r", [ev("a\nb")]),
    Vector("mixed line ends", b"data: a\rdata: b\r\ndata: c\n\r\n", [ev("a\nb\nc")]),
    Vector(
        "CR CR is two line ends: two events",
        b"data: a\r\rdata: b\r\r",
        [ev("a"), ev("b")],
    ),
    Vector("CR then CRLF: one blank line, one event", b"data: a\r\r\n\n", [ev("a")]),
    Vector(
        "LF CR: two line ends, not one",
        b"data: a\n\rdata: b\n\n",
        [ev("a"), ev("b")],
    ),
    Vector("CR LF split over data line", b"data:a\r\ndata:b\n\n", [ev("a\nb")]),
    Vector("blank lines alone dispatch nothing", b"\n\r\n\r\n\r\r", []),
    Vector("many blank lines around an event", b"\n\n\ndata: x\n\n\n\n", [ev("x")]),
    Vector("whitespace-only line is a field, not a blank line", b"data: x\n \n\t\n\n", [ev("x")]),
    # --- Fields --------------------------------------------------------------
    Vector("data with no colon is empty data", b"data\n\n", [ev("")]),
    Vector("data: with empty value dispatches empty data", b"data:\n\n", [ev("")]),
    Vector("data: space only dispatches empty data", b"data: \n\n", [ev("")]),
    Vector("only one leading space is stripped", b"data:  x \n\n", [ev(" x ")]),
    Vector("a tab is not stripped", b"data:\tx\n\n", [ev("\tx")]),
    Vector("later colons belong to the value", b"data: a:b\ndata::c\n\n", [ev("a:b\n:c")]),
    Vector("empty data lines count", b"data: a\ndata\ndata: b\n\n", [ev("a\n\nb")]),
    Vector("trailing empty data line keeps one LF", b"data: a\ndata:\n\n", [ev("a\n")]),
    Vector("NUL in data is kept", b"data: a\x00b\n\n", [ev("a\x00b")]),
    Vector(
        "field names are case-sensitive", b"Data: x\n\nDATA: y\n\nEvent: e\ndata: z\n\n", [ev("z")]
    ),
    Vector("a leading space makes another field", b" data: x\n\n", []),
    Vector("unknown fields are ignored", b"foo: bar\ndata: x\nfoo\n\n", [ev("x")]),
    Vector("comments are ignored", b": one\ndata: x\n:two\n:\n\n", [ev("x")]),
    Vector("a comment alone dispatches nothing", b":\n\n: keepalive\n\n", []),
    Vector(
        "event name resets to message after a dispatch",
        b"event: foo\ndata: 1\n\ndata: 2\n\n",
        [ev("1", "foo"), ev("2")],
    ),
    Vector(
        "a lone event line sets an empty name, which means message",
        b"event: foo\ndata: 1\n\nevent\ndata: 2\n\n",
        [ev("1", "foo"), ev("2")],
    ),
    Vector(
        "event name resets even when nothing was dispatched",
        b"event: foo\n\ndata: x\n\n",
        [ev("x")],
    ),
    Vector("the last event line wins", b"event: a\nevent: b\ndata: x\n\n", [ev("x", "b")]),
    Vector(
        "event name keeps its second space", b"event:  spaced\ndata: x\n\n", [ev("x", " spaced")]
    ),
    # --- id ------------------------------------------------------------------
    Vector(
        "the last event id carries over",
        b"id: 7\ndata: a\n\ndata: b\n\n",
        [ev("a", id="7"), ev("b", id="7")],
        last_id="7",
    ),
    Vector("id after data in the block counts", b"data: a\nid: 3\n\n", [ev("a", id="3")]),
    Vector(
        "an id block without data still sets the id",
        b"id: 5\n\ndata: x\n\n",
        [ev("x", id="5")],
        last_id="5",
    ),
    Vector(
        "an empty id resets it",
        b"id: 1\ndata: a\n\nid\ndata: b\n\nid: 2\ndata: c\n\nid:\ndata: d\n\n",
        [ev("a", id="1"), ev("b"), ev("c", id="2"), ev("d")],
        last_id="",
    ),
    Vector(
        "an id containing NUL is ignored",
        b"id: 1\n\ndata: x\nid: a\x00b\n\n",
        [ev("x", id="1")],
        last_id="1",
    ),
    Vector(
        "an id from an unfinished block is not committed",
        b"id: 1\ndata: a\n\nid: 2\ndata: b\n",
        [ev("a", id="1")],
        last_id="1",
    ),
    Vector("the last id line wins", b"id: 1\nid: 2\ndata: x\n\n", [ev("x", id="2")]),
    # --- retry ---------------------------------------------------------------
    Vector("retry with a space", b"retry: 1000\ndata: x\n\n", [ev("x", retry=1000)], retry=1000),
    Vector("retry with no space", b"retry:10\ndata: x\n\n", [ev("x", retry=10)], retry=10),
    Vector("retry zero", b"retry: 0\ndata: x\n\n", [ev("x", retry=0)], retry=0),
    Vector("retry with leading zeros", b"retry: 007\ndata: x\n\n", [ev("x", retry=7)], retry=7),
    Vector("retry 1a is ignored", b"retry: 1a\ndata: x\n\n", [ev("x")]),
    Vector("retry -1 is ignored", b"retry: -1\ndata: x\n\n", [ev("x")]),
    Vector("retry +1 is ignored", b"retry: +1\ndata: x\n\n", [ev("x")]),
    Vector("retry 1.5 is ignored", b"retry: 1.5\ndata: x\n\n", [ev("x")]),
    Vector("retry with two spaces is ignored", b"retry:  10\ndata: x\n\n", [ev("x")]),
    Vector("retry with a trailing space is ignored", b"retry: 10 \ndata: x\n\n", [ev("x")]),
    Vector("empty retry is ignored", b"retry:\nretry\ndata: x\n\n", [ev("x")]),
    Vector(
        "retry with non-ASCII digits is ignored",
        "retry: \u0663\ndata: x\n\nretry: \uff11\ndata: y\n\n".encode(),
        [ev("x"), ev("y")],
    ),
    Vector(
        "retry belongs to its block only",
        b"retry: 5\ndata: a\n\ndata: b\n\n",
        [ev("a", retry=5), ev("b")],
        retry=5,
    ),
    Vector(
        "retry without data sets the reconnection time only",
        b"retry: 42\n\ndata: a\n\n",
        [ev("a")],
        retry=42,
    ),
    Vector(
        "an invalid retry keeps the earlier one",
        b"retry: 42\n\nretry: x\ndata: a\n\n",
        [ev("a")],
        retry=42,
    ),
    # --- BOM and encoding ----------------------------------------------------
    Vector("a leading BOM is stripped", b"\xef\xbb\xbfdata: x\n\n", [ev("x")]),
    Vector(
        "a BOM after the start is part of the field name",
        b"data: a\n\n\xef\xbb\xbfdata: b\n\n",
        [ev("a")],
    ),
    Vector("only one BOM is stripped", b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", []),
    Vector("a half BOM is not a BOM", b"\xef\xbbdata: x\n\n", []),
    Vector("a BOM inside data is kept", b"data: \xef\xbb\xbfx\n\n", [ev("\ufeffx")]),
    Vector("BOM then CRLF", b"\xef\xbb\xbf\r\ndata: x\r\n\r\n", [ev("x")]),
    Vector("UTF-8 data", "data: héllo 😀 世界\n\n".encode(), [ev("héllo 😀 世界")]),
    Vector("invalid UTF-8 is replaced", b"data: \xff\xfea\n\n", [ev("\ufffd\ufffda")]),
    Vector("a truncated sequence is one U+FFFD", b"data: \xe2\x82\n\n", [ev("\ufffd")]),
    Vector(
        "an invalid sequence does not swallow the line end",
        b"data: \xe2\ndata: \x82\xac\n\n",
        [ev("\ufffd\n\ufffd\ufffd")],
    ),
    Vector(
        "invalid UTF-8 in event and id",
        b"event: \xff\nid: \xc0\ndata: x\n\n",
        [ev("x", "\ufffd", "\ufffd")],
    ),
]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_spec_vector(vector: Vector) -> None:
    for how, chunks in splittings(vector.stream):
        events, decoder = feed_chunks(chunks)
        assert events == vector.events, how
        if vector.last_id is not None:
            assert decoder.last_event_id == vector.last_id, how
        if vector.retry is not None:
            assert decoder.retry == vector.retry, how


def test_cr_ending_one_read_and_lf_starting_the_next_are_one_line_end() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data:a\r") == []
    # Were the LF a second line end, "a" would be dispatched alone here.
    assert decoder.feed(b"\ndata:b\n\n") == [ev("a\nb")]


def test_cr_at_end_of_read_then_cr_is_a_blank_line() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [ev("a")]


def test_pending_cr_survives_empty_reads() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [ev("a")]


def test_event_is_returned_as_soon_as_its_blank_line_arrives() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\n") == [ev("a")]
    # A CR blank line needs no look-ahead either.
    assert decoder.feed(b"data: b\r\r") == [ev("b")]


def test_bom_split_across_reads() -> None:
    decoder = Decoder()
    assert decoder.feed(b"\xef") == []
    assert decoder.feed(b"\xbb") == []
    assert decoder.feed(b"\xbfdata: x\n\n") == [ev("x")]


def test_feed_accepts_bytearray_and_memoryview() -> None:
    decoder = Decoder()
    assert decoder.feed(bytearray(b"data: a\n")) == []
    assert decoder.feed(memoryview(b"\ndata: b\n\n")) == [ev("a"), ev("b")]


def test_flush_discards_the_unfinished_event_and_keeps_the_committed_id() -> None:
    decoder = Decoder()
    assert decoder.feed(b"id: 1\ndata: a\n\nid: 2\nevent: e\nretry: 9\ndata: partial\n") == [
        ev("a", id="1")
    ]
    assert decoder.flush() == []
    assert decoder.last_event_id == "1"
    # The reconnected stream starts clean: its own BOM is stripped, no leftover
    # data, event name or id leaks into its first event.
    assert decoder.feed(b"\xef\xbb\xbfdata: b\n\n") == [ev("b", id="1", retry=None)]


def test_flush_forgets_a_pending_cr() -> None:
    decoder = Decoder()
    decoder.feed(b"data: a\r")
    decoder.flush()
    # On the new stream the LF is a blank line of its own, dispatching nothing.
    assert decoder.feed(b"\ndata: b\n\n") == [ev("b")]


def test_last_event_id_is_empty_at_first() -> None:
    assert Decoder().last_event_id == ""
    assert Decoder().retry is None


# --- Limits -------------------------------------------------------------------


def test_incomplete_line_over_max_line_size_raises() -> None:
    decoder = Decoder(max_line_size=8)
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"data: 123")  # 9 bytes and no line end yet


def test_incomplete_line_at_max_line_size_is_accepted() -> None:
    decoder = Decoder(max_line_size=8)
    stream = b"data: 12\n\n"
    events = []
    for i in range(len(stream)):
        events += decoder.feed(stream[i : i + 1])
    assert events == [ev("12")]


def test_line_limit_raises_when_growing_byte_by_byte() -> None:
    decoder = Decoder(max_line_size=8)
    for byte in b"data: 12":
        decoder.feed(bytes([byte]))
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"3")


def test_line_limit_does_not_count_earlier_complete_lines() -> None:
    decoder = Decoder(max_line_size=8)
    assert decoder.feed(b"data: 1\n" * 100 + b"\n") == [ev("\n".join(["1"] * 100))]


def test_event_data_at_max_event_size_is_accepted() -> None:
    # "ab" + LF + "cd" is 5 bytes of data.
    stream = b"data: ab\ndata: cd\n\n"
    for how, chunks in splittings(stream):
        events, _ = feed_chunks(chunks, Decoder(max_event_size=5))
        assert events == [ev("ab\ncd")], how


@pytest.mark.parametrize("how", ["whole", "bytewise"])
def test_event_data_over_max_event_size_raises(how: str) -> None:
    stream = b"data: ab\ndata: cde\n"  # 6 bytes of data, no blank line needed
    chunks = dict(splittings(stream))[how]
    with pytest.raises(SSEProtocolError):
        feed_chunks(chunks, Decoder(max_event_size=5))


def test_event_size_is_per_event() -> None:
    decoder = Decoder(max_event_size=4)
    stream = b"data: abcd\n\n" * 50
    assert decoder.feed(stream) == [ev("abcd")] * 50


def test_sse_protocol_error_maps_to_bad_gateway() -> None:
    assert SSEProtocolError.status == 502
    assert SSEProtocolError("x").to_dict()["type"] == "sse_protocol_error"


def test_huge_retry_is_not_an_error() -> None:
    # int() refuses more than sys.get_int_max_str_digits() digits (4300 by
    # default); the decoder must neither raise ValueError nor accept garbage.
    decoder = Decoder()
    events = decoder.feed(b"retry: " + b"9" * 10_000 + b"\ndata: x\n\n")
    assert events == [ev("x")]
    assert decoder.retry is None


def test_default_limits() -> None:
    assert sse.DEFAULT_MAX_LINE_SIZE >= 64 * 1024
    assert sse.DEFAULT_MAX_EVENT_SIZE >= sse.DEFAULT_MAX_LINE_SIZE
    decoder = Decoder()
    big = "x" * (512 * 1024)
    assert decoder.feed(encode(big)) == [ev(big)]


# --- Encoder ------------------------------------------------------------------


def test_encode_plain_data() -> None:
    assert encode("hello") == b"data: hello\n\n"


def test_encode_splits_every_line_end() -> None:
    assert encode("a\nb\r\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_encode_keeps_empty_lines() -> None:
    assert encode("\n") == b"data: \ndata: \n\n"
    assert encode("a\r\n") == b"data: a\ndata: \n\n"
    assert encode("") == b"data: \n\n"


def test_encode_all_fields() -> None:
    assert encode("x", event="delta", id="streamid:1", retry=1500) == (
        b"id: streamid:1\nevent: delta\nretry: 1500\ndata: x\n\n"
    )


def test_encode_without_data_is_not_an_event() -> None:
    frame = encode(id="9", retry=10)
    assert frame == b"id: 9\nretry: 10\n\n"
    decoder = Decoder()
    assert decoder.feed(frame) == []
    assert decoder.last_event_id == "9"
    assert decoder.retry == 10


def test_encode_returns_bytes() -> None:
    assert type(encode("x")) is bytes
    assert type(encode_json({"a": 1})) is bytes
    assert type(encode_comment("x")) is bytes
    assert type(encode_retry(1)) is bytes


def test_encode_utf8() -> None:
    assert encode("é😀", event="ünï") == "event: ünï\ndata: é😀\n\n".encode()


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b", "\n", "\r\n", "\x00"])
@pytest.mark.parametrize("name", ["id", "event"])
def test_encode_rejects_line_breaks_and_nul_in_id_and_event(name: str, bad: str) -> None:
    with pytest.raises(ValueError, match=name):
        encode("x", **{name: bad})
    with pytest.raises(ValueError, match=name):
        encode_json({"a": 1}, **{name: bad})


def test_encode_allows_colons_and_spaces_in_id_and_event() -> None:
    frame = encode("x", event=" a:b ", id=" 1:2 ")
    assert Decoder().feed(frame) == [ev("x", " a:b ", " 1:2 ")]


def test_encode_retry() -> None:
    # A field line, no blank line: it joins the next event's block.
    assert encode_retry(0) == b"retry: 0\n"
    assert encode_retry(3000) == b"retry: 3000\n"
    decoder = Decoder()
    assert decoder.feed(encode_retry(3000)) == []
    assert decoder.retry == 3000
    assert decoder.feed(encode("x", id="1")) == [ev("x", id="1", retry=3000)]


@pytest.mark.parametrize("bad", [-1, True, False, 1.5, 1.0, "10", None, b"1"])
def test_encode_retry_rejects_what_is_not_a_non_negative_int(bad: object) -> None:
    with pytest.raises(ValueError, match="retry"):
        encode_retry(bad)  # type: ignore[arg-type]
    if bad is not None:  # encode(retry=None) means "no retry field"
        with pytest.raises(ValueError, match="retry"):
            encode("x", retry=bad)  # type: ignore[arg-type]


def test_encode_comment() -> None:
    # Comment lines, no blank line: nothing for any client to dispatch.
    assert encode_comment("keepalive") == b": keepalive\n"
    assert encode_comment() == b": \n"
    assert encode_comment("a\nb\r\nc\rd") == b": a\n: b\n: c\n: d\n"


def _blank_line_dispatches(stream: bytes) -> list[bytes]:
    """The blocks a client that dispatches at every blank line delivers (fetch-event-source)."""
    return [block for block in stream.split(b"\n\n")[:-1]]


def test_heartbeats_and_retry_never_make_a_block_of_their_own() -> None:
    stream = (
        encode_retry(3000)
        + encode_comment("keepalive")
        + encode_json({"type": "start"}, event="start", id="s:0")
        + encode_comment("keepalive")
        + encode_comment("keepalive")
        + encode_json({"n": 1}, id="s:1")
    )
    blocks = _blank_line_dispatches(stream)
    assert len(blocks) == 2
    assert all(b"\ndata: " in b"\n" + block for block in blocks)
    events = Decoder().feed(stream)
    assert [e.event for e in events] == ["start", "message"]


def test_comments_dispatch_nothing() -> None:
    decoder = Decoder()
    stream = encode_comment("a\nb") + encode("x") + encode_comment() + encode_comment("y\r")
    assert decoder.feed(stream) == [ev("x")]


def test_encode_json_dict() -> None:
    frame = encode_json({"a": 1, "b": [True, None], "c": "x\ny"}, event="delta", id="s:1")
    assert frame == b'id: s:1\nevent: delta\ndata: {"a":1,"b":[true,null],"c":"x\\ny"}\n\n'


def test_encode_json_struct_is_one_data_line_and_round_trips() -> None:
    chunk = Chunk(
        role="assistant",
        content='line one\nline two\r\n\u2028 and \x00 "quoted" 😀',
        model="mock-1",
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
    )
    frame = encode_json(chunk, id="streamid:123")
    body = frame.removesuffix(b"\n\n")
    lines = body.split(b"\n")
    assert lines[0] == b"id: streamid:123"
    assert len(lines) == 2 and lines[1].startswith(b"data: ")
    assert b"\r" not in body
    [event] = Decoder().feed(frame)
    assert event.id == "streamid:123"
    assert msgspec.json.decode(event.data, type=Chunk) == chunk


def test_encode_json_keeps_null_finish_reason() -> None:
    chunk = Chunk(role="assistant", content="hi", model="m", finish_reason=None)
    assert encode_json(chunk) == (
        b'data: {"role":"assistant","content":"hi","model":"m","finish_reason":null}\n\n'
    )


def test_encode_json_rejects_what_msgspec_cannot_encode() -> None:
    with pytest.raises(TypeError):
        encode_json(object())


def test_encode_json_reuses_one_module_level_encoder() -> None:
    assert isinstance(sse._json_encoder, msgspec.json.Encoder)


def test_all_matches_the_public_names() -> None:
    defined_here = {
        name
        for name, value in vars(sse).items()
        if getattr(value, "__module__", None) == sse.__name__
    }
    constants = {name for name in vars(sse) if name.isupper()}
    public = {name for name in defined_here | constants if not name.startswith("_")}
    assert sorted(sse.__all__) == sorted(public)


def test_import_does_not_load_aiohttp_or_anyio() -> None:
    # The codec is sans-IO: a client or a test can use it without the server's
    # stack. Importing engine.sse runs engine/__init__.py first, so that must not
    # import the aiohttp side eagerly either.
    code = (
        "import sys, engine.sse\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "print(' '.join(sorted(roots & {'aiohttp', 'anyio'})))\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('engine.'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    loaded, engine_modules = proc.stdout.split("\n")[:2]
    assert loaded == "", f"import engine.sse loaded {loaded} (via {engine_modules})"
