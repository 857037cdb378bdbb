"""Hypothesis properties of the SSE codec.

- ``decode(encode(events))`` gives the events back, line ends normalised to LF,
  however the byte stream is cut;
- on arbitrary bytes the decoder agrees with a direct transcription of the
  WHATWG algorithm (written here over decoded text, the way the spec states it),
  under any cut, and never raises anything but ``SSEProtocolError`` (h11
  ``fuzz/afl-server.py``).

Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
"""

from __future__ import annotations

import re

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import SSEProtocolError
from engine.sse import Decoder, ServerSentEvent, encode, encode_comment, encode_json, encode_retry

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text as a user might send it: any code point but lone surrogates (which UTF-8
# cannot carry), with line ends of all three kinds, emoji and spaces made common.
_char = st.characters(exclude_categories=("Cs",))
_piece = st.one_of(
    st.text(_char, max_size=8),
    st.sampled_from(["\n", "\r", "\r\n", "\n\r", " ", ":", "\x00", "😀", "\ufeff", "é"]),
)
texts = st.lists(_piece, max_size=12).map("".join)
# Names and ids: anything but the three characters a field line cannot hold.
_field_char = st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\x00")
names = st.one_of(st.none(), st.text(_field_char, max_size=10))
retries = st.one_of(st.none(), st.integers(min_value=0, max_value=2**63))

events = st.tuples(st.one_of(st.none(), texts), names, names, retries)


def normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def decode_split(data: bytes, cuts: list[int], decoder: Decoder | None = None):
    decoder = decoder or Decoder()
    out: list[ServerSentEvent] = []
    bounds = [0, *sorted(cuts), len(data)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        out += decoder.feed(data[a:b])
    return out, decoder


def cuts_for(data: bytes):
    return st.lists(st.integers(min_value=0, max_value=len(data)), max_size=len(data) + 1)


@SETTINGS
@given(items=st.lists(events, max_size=8), comment=texts, data=st.data())
def test_round_trip_under_any_split(items, comment, data) -> None:
    stream = encode_comment(comment)
    expected = []
    last_id = ""
    last_retry = None
    for text, event, id, retry in items:
        stream += encode(text, event=event, id=id, retry=retry)
        if id is not None:
            last_id = id
        if retry is not None:
            last_retry = retry
        if text is not None:  # no data field: not dispatched
            expected.append(
                ServerSentEvent(
                    data=normalise(text), event=event or "message", id=last_id, retry=retry
                )
            )
    cuts = data.draw(cuts_for(stream), label="cuts")
    at_lf = [i + 1 for i, byte in enumerate(stream) if byte == 0x0A]
    # Any cut, and a cut after every LF (whole lines per read, as a relayed
    # upstream delivers them: Decoder._feed_lines).
    for split in (cuts, at_lf):
        decoded, decoder = decode_split(stream, split)
        assert decoded == expected
        assert decoder.last_event_id == last_id
        assert decoder.retry == last_retry


@SETTINGS
@given(text=texts, data=st.data())
def test_text_round_trip_with_a_retry_frame_between(text, data) -> None:
    stream = encode(text) + encode_retry(5) + encode(text, id="1")
    decoded, decoder = decode_split(stream, data.draw(cuts_for(stream), label="cuts"))
    assert [e.data for e in decoded] == [normalise(text)] * 2
    assert decoder.retry == 5


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(obj=st.dictionaries(texts, json_values, max_size=6), id=names, data=st.data())
def test_encode_json_is_one_data_line_and_round_trips(obj, id, data) -> None:
    frame = encode_json(obj, id=id)
    assert frame.endswith(b"\n\n")
    lines = frame[:-2].split(b"\n")
    assert b"\r" not in frame
    assert [line for line in lines if line.startswith(b"data: ")] == [lines[-1]]
    assert len(lines) == (1 if id is None else 2)
    decoded, _ = decode_split(frame, data.draw(cuts_for(frame), label="cuts"))
    [event] = decoded
    assert msgspec.json.decode(event.data) == obj


# --- Arbitrary bytes ------------------------------------------------------------

_LINE_END = re.compile(r"\r\n|\r|\n")


def reference(data: bytes, last_id: str = "") -> tuple[list[ServerSentEvent], str, int | None]:
    """The WHATWG algorithm, step by step, on the whole stream (no limits)."""
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = _LINE_END.split(text)
    # A CR at the very end may still become CRLF, but it ends the line either
    # way; what follows the last line end is an unfinished line, never processed.
    lines.pop()
    out = []
    data_buf, event_buf, id_buf, retry, block_retry = "", "", last_id, None, None
    for line in lines:
        if line == "":
            last_id = id_buf
            if data_buf:
                out.append(
                    ServerSentEvent(
                        data=data_buf[:-1],
                        event=event_buf or "message",
                        id=last_id,
                        retry=block_retry,
                    )
                )
            data_buf, event_buf, block_retry = "", "", None
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event_buf = value
        elif name == "data":
            data_buf += value + "\n"
        elif name == "id":
            if "\x00" not in value:
                id_buf = value
        elif name == "retry":
            if value and all(c in "0123456789" for c in value):
                retry = block_retry = int(value)
    return out, last_id, retry


# Fragments that make SSE-ish noise, mixed with raw bytes, so the interesting
# branches (fields, line ends, BOMs, bad UTF-8) come up far more often than
# from uniform bytes alone.
_fragments = st.sampled_from(
    [
        b"data",
        b"data:",
        b"data: ",
        b"event:",
        b"id:",
        b"id: 1",
        b"retry:",
        b"retry: 12",
        b":",
        b" ",
        b"\r",
        b"\n",
        b"\r\n",
        b"\x00",
        b"\xef\xbb\xbf",
        b"\xef\xbb",
        b"\xe2\x82",
        b"\xff",
        b"7",
        b"x",
        "é😀".encode(),
    ]
)
sse_noise = st.lists(st.one_of(_fragments, st.binary(max_size=6)), max_size=40).map(b"".join)


@SETTINGS
@given(stream=sse_noise, data=st.data())
def test_decoder_matches_the_spec_algorithm_on_any_bytes(stream, data) -> None:
    decoded, decoder = decode_split(stream, data.draw(cuts_for(stream), label="cuts"))
    expected, last_id, retry = reference(stream)
    assert decoded == expected
    assert decoder.last_event_id == last_id
    assert decoder.retry == retry


@SETTINGS
@given(stream=st.binary(max_size=300), data=st.data())
def test_arbitrary_bytes_give_the_same_events_under_any_split(stream, data) -> None:
    whole, _ = decode_split(stream, [])
    split, _ = decode_split(stream, data.draw(cuts_for(stream), label="cuts"))
    assert split == whole
    assert whole == reference(stream)[0]


@SETTINGS
@given(
    chunks=st.lists(st.one_of(st.binary(max_size=40), sse_noise), max_size=20),
    max_line_size=st.integers(min_value=0, max_value=24),
    max_event_size=st.integers(min_value=0, max_value=48),
)
def test_arbitrary_bytes_raise_nothing_but_sse_protocol_error(
    chunks, max_line_size, max_event_size
) -> None:
    decoder = Decoder(max_line_size=max_line_size, max_event_size=max_event_size)
    try:
        for chunk in chunks:
            for event in decoder.feed(chunk):
                # Each input byte yields at most one code point, even replaced.
                assert len(event.data) <= max_event_size
        decoder.flush()
    except SSEProtocolError:
        pass


@SETTINGS
@given(stream=sse_noise, data=st.data())
def test_reads_that_end_at_line_ends_match_the_spec_too(stream, data) -> None:
    """A relayed upstream usually delivers whole lines per read; the decoder then
    slices lines straight out of each read (``Decoder._feed_lines``). Cut after
    LFs (and, drawn, some other places) so that path meets every kind of line."""
    at_lf = [i + 1 for i, byte in enumerate(stream) if byte == 0x0A]
    extra = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=3))
    decoded, decoder = decode_split(stream, [*at_lf, *extra])
    expected, last_id, retry = reference(stream)
    assert decoded == expected
    assert decoder.last_event_id == last_id
    assert decoder.retry == retry


def test_the_line_path_keeps_the_limits():
    """Whole lines per read take ``_feed_lines``: its limits are feed()'s."""
    ok = Decoder(max_event_size=10)
    ok.feed(b"\n")  # past the start of the stream
    assert ok.feed(b"data: 0123456789\n\n")[0].data == "0123456789"
    big = Decoder(max_event_size=10)
    big.feed(b"\n")
    try:
        big.feed(b"data: 01234\ndata: 56789\n\n")  # 11 bytes with the joining LF
    except SSEProtocolError:
        pass
    else:  # pragma: no cover
        raise AssertionError("an event over max_event_size must raise")
    long = Decoder(max_line_size=8)
    long.feed(b"\n")
    assert long.feed(b"data: a\n\n")[0].data == "a"
    try:
        long.feed(b"data: 0123")  # an incomplete line of 10 bytes
    except SSEProtocolError:
        pass
    else:  # pragma: no cover
        raise AssertionError("an incomplete line over max_line_size must raise")
