"""Server-sent events, sans-IO: an encoder and an incremental decoder.

This module does no I/O and imports nothing but the standard library and
msgspec (a test keeps aiohttp out of it), so the same code frames what the
gateway sends and parses what the providers send to it.

Both sides follow the WHATWG HTML standard, section 9.2 "Server-sent events":
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
"""

from __future__ import annotations

from typing import Any

import msgspec

from .errors import SSEProtocolError

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "DEFAULT_MAX_LINE_SIZE",
    "Decoder",
    "ServerSentEvent",
    "encode",
    "encode_comment",
    "encode_json",
    "encode_json_numbered",
    "encode_retry",
    "numbered_id_prefix",
]

# One encoder for the whole module: msgspec encoders are reusable and keep an
# internal buffer, so building one per call would throw that away.
_json_encoder = msgspec.json.Encoder()

# Limits on what the decoder buffers. The spec sets none, but a decoder that
# reads someone else's stream must (h11 caps an incomplete event at 16 KiB,
# aiohttp a header line at 8 KiB). LLM events are small, yet a tool call's
# arguments or an inline image can be large, so the caps are generous.
DEFAULT_MAX_LINE_SIZE = 1024 * 1024
DEFAULT_MAX_EVENT_SIZE = 8 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_FORBIDDEN_IN_ID = ("\n", "\r", "\0")


def _check_field(name: str, value: str, forbidden: tuple[str, ...]) -> bytes:
    for ch in forbidden:
        if ch in value:
            raise ValueError(f"SSE {name} must not contain {ch!r}: {value!r}")
    return value.encode()


def _data_lines(text: str) -> bytes:
    # Every line ending the spec knows (CRLF, CR, LF) starts a new data line, so
    # the text survives the round trip with its line breaks normalised to LF.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\n" not in text:
        return b"data: " + text.encode() + b"\n"
    return b"".join(b"data: " + line.encode() + b"\n" for line in text.split("\n"))


def encode(
    data: str | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Frame one event with text data.

    ``data`` may hold any line breaks; each line becomes its own ``data:`` field.
    ``data=None`` writes no data field, which a client will not dispatch (useful
    to set only ``id`` or ``retry``).

    Raises ``ValueError`` for an ``id`` or ``event`` containing CR, LF or NUL, and
    for a ``retry`` that is not a non-negative integer.
    """
    parts = []
    if id is not None:
        parts.append(b"id: " + _check_field("id", id, _FORBIDDEN_IN_ID) + b"\n")
    if event is not None:
        parts.append(b"event: " + _check_field("event", event, _FORBIDDEN_IN_ID) + b"\n")
    if retry is not None:
        parts.append(encode_retry(retry))
    if data is not None:
        parts.append(_data_lines(data))
    parts.append(b"\n")
    return b"".join(parts)


def encode_json(obj: Any, *, event: str | None = None, id: str | None = None) -> bytes:
    """Frame one event whose data is ``obj`` as compact JSON (a Struct or a dict).

    This is the hot path: msgspec writes the JSON straight into the frame's
    buffer, and compact JSON never contains a raw line break, so one ``data:``
    line always suffices.
    """
    buf = bytearray()
    if id is not None:
        buf += b"id: "
        buf += _check_field("id", id, _FORBIDDEN_IN_ID)
        buf += b"\n"
    if event is not None:
        buf += b"event: "
        buf += _check_field("event", event, _FORBIDDEN_IN_ID)
        buf += b"\n"
    buf += b"data: "
    _json_encoder.encode_into(obj, buf, -1)
    buf += b"\n\n"
    return bytes(buf)


def numbered_id_prefix(base: str) -> bytes:
    """The checked ``id: {base}:`` head for :func:`encode_json_numbered` (checked once, here).

    Raises ``ValueError`` for a ``base`` containing CR, LF or NUL.
    """
    return b"id: " + _check_field("id", base, _FORBIDDEN_IN_ID) + b":"


def encode_json_numbered(obj: Any, prefix: bytes, n: int) -> bytes:
    """``encode_json(obj, id=f"{base}:{n}")`` for a ``prefix`` from :func:`numbered_id_prefix`.

    The relay frames every chunk of a stream with the same id base and a
    counter; the base is checked once per stream instead of once per chunk.
    """
    # One %-format of small bytes beats a bytearray and its copy (0.26 us vs 0.48).
    return b"%s%d\ndata: %s\n\n" % (prefix, n, _json_encoder.encode(obj))


def encode_comment(text: str = "") -> bytes:
    """Frame a comment (clients ignore it; proxies see traffic). One per line of ``text``.

    No blank line follows: per the WHATWG rules a blank line after a comment
    dispatches nothing, but SSE clients that are not browsers (httpx-sse,
    @microsoft/fetch-event-source) deliver it as a message with empty data, on
    which ``JSON.parse`` throws (USERS-ASK 16). The comment becomes part of the
    next event's block, where it is ignored.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return b"".join(b": " + line.encode() + b"\n" for line in text.split("\n"))


def encode_retry(ms: int) -> bytes:
    """Frame a ``retry:`` field telling the client how long to wait before reconnecting.

    A field line without a blank line, so it travels in the next event's block
    (a browser applies it when it reads the line; a lone ``retry:`` block is an
    empty message to httpx-sse and fetch-event-source).
    """
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
        raise ValueError(f"SSE retry must be a non-negative integer, got {ms!r}")
    return b"retry: %d\n" % ms


class ServerSentEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event, as a browser's ``MessageEvent`` would see it.

    ``id`` is the last event ID in force when the event was dispatched (it carries
    over from earlier events, as the spec requires); ``retry`` is set when the
    event's block held a valid ``retry`` field.
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class Decoder:
    """Incremental event-stream parser: :meth:`feed` bytes in, events out.

    Input may be split anywhere, down to one byte at a time; a CR at the end of
    one read followed by an LF at the start of the next counts as one line end.
    An event is returned as soon as the blank line that ends it arrives: nothing
    waits for more input. Invalid UTF-8 is replaced, never fatal.

    Raises :class:`~engine.errors.SSEProtocolError` only when an incomplete line
    or an event's data grows past its limit.
    """

    __slots__ = (
        "_buf",
        "_data",
        "_data_size",
        "_event",
        "_id_buf",
        "_last_id",
        "_max_event_size",
        "_max_line_size",
        "_retry",
        "_skip_lf",
        "_start",
        "retry",
    )

    def __init__(
        self,
        *,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        self._buf = bytearray()
        self._data: list[bytes] = []
        self._data_size = 0
        self._event = b""
        # The spec keeps two ids: the "last event ID buffer" an ``id`` field sets,
        # and the "last event ID string" it is copied to only when a blank line
        # ends the block. A client reconnects with the string, so an ``id`` in a
        # block the stream never finished must not count.
        self._id_buf = ""
        self._last_id = ""
        self._retry: int | None = None
        self._skip_lf = False  # the previous read ended in CR
        self._start = True  # still before the first byte (a BOM may come)
        self._max_line_size = max_line_size
        self._max_event_size = max_event_size
        #: The reconnection time the stream last asked for, in milliseconds.
        self.retry: int | None = None

    @property
    def last_event_id(self) -> str:
        """The last event ID a blank line committed (what a client sends as Last-Event-ID)."""
        return self._last_id

    def feed(self, data: bytes | bytearray | memoryview) -> list[ServerSentEvent]:
        """Parse more bytes; return the events they completed, in order."""
        buf = self._buf
        if not buf and not self._skip_lf and not self._start and type(data) is bytes:
            if b"\r" not in data:
                return self._feed_lines(data)
        buf += data
        if self._start:
            # The stream may begin with one BOM, possibly split across reads.
            if len(buf) < 3 and _BOM.startswith(buf):
                return []
            if buf.startswith(_BOM):
                del buf[:3]
            self._start = False
        if self._skip_lf and buf:
            if buf[0] == 0x0A:
                del buf[:1]
            self._skip_lf = False

        events: list[ServerSentEvent] = []
        pos = 0
        end = len(buf)
        has_cr = b"\r" in buf
        while pos < end:
            lf = buf.find(b"\n", pos)
            if has_cr:
                cr = buf.find(b"\r", pos, lf if lf != -1 else end)
                if cr != -1:
                    line = bytes(buf[pos:cr])
                    if cr + 1 == end:
                        self._skip_lf = True  # an LF may still come in the next read
                        pos = end
                    elif buf[cr + 1] == 0x0A:
                        pos = cr + 2
                    else:
                        pos = cr + 1
                    event = self._line(line)
                    if event is not None:
                        events.append(event)
                    continue
            if lf == -1:
                break
            event = self._line(bytes(buf[pos:lf]))
            pos = lf + 1
            if event is not None:
                events.append(event)
        if pos:
            del buf[:pos]
        if len(buf) > self._max_line_size:
            raise SSEProtocolError(f"event-stream line longer than {self._max_line_size} bytes")
        return events

    def _feed_lines(self, data: bytes) -> list[ServerSentEvent]:
        """:meth:`feed` when no partial line is pending and ``data`` has no CR.

        The usual case when relaying: each upstream read holds whole events
        (``data: {...}\\n\\n``). Lines are then sliced straight out of ``data``
        instead of going through the buffer, and a ``data: `` line is handled
        in place; every other line takes :meth:`_line` as before. Decoding one
        OpenAI chunk per read went from 1.93 to 1.55 us (benchmarks/NOTES.md,
        Change 10). What follows the last LF is kept, as :meth:`feed` keeps it.
        """
        events: list[ServerSentEvent] = []
        find = data.find
        startswith = data.startswith
        pos = 0
        while (lf := find(b"\n", pos)) != -1:
            if startswith(b"data: ", pos):
                self._add_data(data[pos + 6 : lf])
            else:
                event = self._dispatch() if lf == pos else self._line(data[pos:lf])
                if event is not None:
                    events.append(event)
            pos = lf + 1
        if pos < len(data):
            self._buf += memoryview(data)[pos:]
            if len(self._buf) > self._max_line_size:
                raise SSEProtocolError(f"event-stream line longer than {self._max_line_size} bytes")
        return events

    def flush(self) -> list[ServerSentEvent]:
        """Signal the end of the stream.

        The spec discards an event that was not ended by a blank line, so this
        returns no events; it resets the parser so a reconnection starts clean
        (the last event ID is kept, as a client keeps it across reconnections).
        """
        self._buf.clear()
        self._data.clear()
        self._data_size = 0
        self._event = b""
        self._id_buf = self._last_id
        self._retry = None
        self._skip_lf = False
        self._start = True
        return []

    def _line(self, line: bytes) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == 0x3A:  # ':' starts a comment
            return None
        colon = line.find(b":")
        if colon == -1:
            field, value = line, b""
        else:
            field = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if field == b"data":
            self._add_data(value)
        elif field == b"event":
            self._event = value
        elif field == b"id":
            if b"\0" not in value:
                self._id_buf = value.decode("utf-8", "replace")
        elif field == b"retry":
            # bytes.isdigit() is true for ASCII digits only, as the spec requires.
            if value.isdigit():
                try:
                    self._retry = self.retry = int(value)
                except ValueError:
                    # More digits than sys.get_int_max_str_digits() allows: no
                    # meaningful delay, and the decoder must not raise on input.
                    pass
        # Any other field is ignored.
        return None

    def _add_data(self, value: bytes) -> None:
        self._data.append(value)
        self._data_size += len(value) + 1
        # _data_size counts an LF after every line; the last one is dropped.
        if self._data_size - 1 > self._max_event_size:
            raise SSEProtocolError(f"event data larger than {self._max_event_size} bytes")

    def _dispatch(self) -> ServerSentEvent | None:
        # Every blank line commits the id, even one that dispatches nothing.
        self._last_id = self._id_buf
        data, event, retry = self._data, self._event, self._retry
        self._event = b""
        self._retry = None
        if not data:
            return None
        self._data = []
        self._data_size = 0
        return ServerSentEvent(
            data=b"\n".join(data).decode("utf-8", "replace"),
            event=event.decode("utf-8", "replace") if event else "message",
            id=self._last_id,
            retry=retry,
        )
