"""One response as it is generated: its output items and its events, in OpenAI's order.

:class:`ResponseState` turns the engine's chunks into Responses' events and
keeps the response object current. Each event goes to the stream's log
(:class:`~engine.streams.log.StreamLog`) as an entry of its own, so an
event's ``sequence_number`` *is* its log index: a resume from
``starting_after=N`` is ``log.since(N)``, a byte copy.

The order (openai-python's ``lib/streaming/responses`` accumulates it)::

    response.created, response.queued (background), response.in_progress
    per output item: response.output_item.added
        a message:       response.content_part.added, response.output_text.delta ...,
                         response.output_text.done, response.content_part.done
        a function call: response.function_call_arguments.delta ...,
                         response.function_call_arguments.done
    response.output_item.done
    response.completed | response.incomplete | error + response.failed

A new tool call (a delta of an index not seen yet) closes the open item and
opens a ``function_call`` item; text after a call opens a new message.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ...wire import Chunk, EstimatedUsage, Usage
from .items import new_id
from .objects import (
    Completed,
    ContentPartAdded,
    ContentPartDone,
    Created,
    Event,
    Failed,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    FunctionCallOut,
    Incomplete,
    IncompleteDetails,
    InProgress,
    OutputItem,
    OutputItemAdded,
    OutputItemDone,
    OutputMessage,
    OutputText,
    OutputTextDelta,
    OutputTextDone,
    Queued,
    ResponseObject,
    ResponseUsage,
    response_error,
    stream_error,
)

if TYPE_CHECKING:
    from ...errors import EngineError
    from ...streams.log import StreamLog

__all__ = ["MAX_OUTPUT_CHARS", "ResponseState"]

#: Characters of output text (and of a call's arguments) kept for the response
#: object; the deltas carry all of it. The mock streams up to 64 GB on request,
#: which no response object may hold; real outputs stay far below (128k tokens
#: is about 512 KiB). As memory's bound (engine.streams.relay).
MAX_OUTPUT_CHARS = 4 * 1024 * 1024

# finish_reason -> (status, incomplete_details.reason)
_ENDINGS = {
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
    # A Stop on purpose (POST .../cancel, or /v1/streams/{id}/stop).
    "stopped": ("cancelled", None),
}


class _Item:
    """An output item being written: a message's text or a call's arguments, in pieces."""

    __slots__ = ("call_id", "id", "index", "name", "pieces", "room", "status")

    def __init__(self, item_id: str, index: int, call_id: str = "", name: str = "") -> None:
        self.id = item_id
        self.index = index
        self.call_id = call_id  # "" for a message
        self.name = name
        self.pieces: list[str] = []
        self.room = MAX_OUTPUT_CHARS
        self.status = "in_progress"

    def add(self, text: str) -> None:
        if self.room > 0:
            self.pieces.append(text[: self.room])
            self.room -= len(text)

    @property
    def text(self) -> str:
        if len(self.pieces) > 1:
            self.pieces = ["".join(self.pieces)]
        return self.pieces[0] if self.pieces else ""

    def out(self, content: bool = True) -> OutputItem:
        if self.call_id:
            return FunctionCallOut(
                id=self.id,
                call_id=self.call_id,
                name=self.name,
                arguments=self.text if content else "",
                status=self.status,
            )
        parts = [OutputText(text=self.text)] if content else []
        return OutputMessage(id=self.id, status=self.status, content=parts)


class ResponseState:
    """The events and the object of one response (see the module docstring).

    ``log`` is where each event goes (None: a response that is not streamed
    keeps only its object). A slotted object: an open stream keeps only this,
    never the request's messages.
    """

    __slots__ = (
        "_calls",
        "_items",
        "_open",
        "chunks",
        "finish_reason",
        "first_chunk",
        "log",
        "prompt_estimate",
        "response",
        "seq",
        "usage",
    )

    def __init__(self, response: ResponseObject, log: StreamLog | None) -> None:
        self.response = response
        self.log = log
        #: The next event's sequence number (= its index in the log).
        self.seq = 0
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}  # by the call's index in the engine's deltas
        self.chunks = 0
        #: When the first chunk came (``time.monotonic()``; 0: none yet), for its metrics.
        self.first_chunk = 0.0
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        #: About how many tokens the request was, for an estimated usage.
        self.prompt_estimate = 0

    # -- events ------------------------------------------------------------------

    def emit(self, event: Event, *, last: bool = False) -> None:
        event.sequence_number = self.seq
        self.seq += 1
        log = self.log
        if log is not None:
            if last:
                log.end(event.frame())
            else:
                log.append(event.frame())

    def created(self) -> None:
        """The first events: ``response.created``, then ``queued`` or ``in_progress``."""
        self.emit(Created(response=self.response))
        if self.response.status == "queued":
            self.emit(Queued(response=self.response))
        else:
            self.emit(InProgress(response=self.response))

    def opened(self, model: str) -> None:
        """The upstream accepted a queued (background) response: it is in progress."""
        self.response.model = model
        if self.response.status == "queued":
            self.response.status = "in_progress"
            self.emit(InProgress(response=self.response))

    def chunk(self, chunk: Chunk) -> None:
        """Account for one chunk of the reply and emit its events."""
        self.chunks += 1
        if not self.first_chunk:
            self.first_chunk = time.monotonic()
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.content:
            self._text(chunk.content)
        for call in chunk.tool_calls or ():
            self._call(call)

    def _begin(self, item: _Item) -> None:
        self._close("completed")
        self._items.append(item)
        self._open = item
        self.emit(OutputItemAdded(output_index=item.index, item=item.out(content=False)))

    def _text(self, delta: str) -> None:
        item = self._open
        if item is None or item.call_id:
            item = _Item(new_id("msg"), len(self._items))
            self._begin(item)
            part = OutputText(text="")
            self.emit(
                ContentPartAdded(
                    item_id=item.id, output_index=item.index, content_index=0, part=part
                )
            )
        item.add(delta)
        self.emit(
            OutputTextDelta(item_id=item.id, output_index=item.index, content_index=0, delta=delta)
        )

    def _call(self, delta: dict[str, Any]) -> None:
        function = delta.get("function") or {}
        number = delta.get("index")
        if not isinstance(number, int):
            # No index: a new call when it names one, else more of the last one.
            number = len(self._calls) if delta.get("id") else max(self._calls, default=0)
        item = self._calls.get(number)
        if item is None:
            call_id = delta.get("id") or new_id("call")
            item = _Item(new_id("fc"), len(self._items), call_id, function.get("name") or "")
            self._calls[number] = item
            self._begin(item)
        elif function.get("name") and not item.name:
            item.name = function["name"]
        arguments = function.get("arguments")
        if arguments:
            item.add(arguments)
            self.emit(
                FunctionCallArgumentsDelta(
                    item_id=item.id, output_index=item.index, delta=arguments
                )
            )

    def _close(self, status: str) -> None:
        item, self._open = self._open, None
        if item is None:
            return
        item.status = status
        rid, index, text = item.id, item.index, item.text
        if item.call_id:
            self.emit(
                FunctionCallArgumentsDone(
                    item_id=rid, output_index=index, name=item.name, arguments=text
                )
            )
        else:
            self.emit(OutputTextDone(item_id=rid, output_index=index, content_index=0, text=text))
            part = OutputText(text=text)
            self.emit(ContentPartDone(item_id=rid, output_index=index, content_index=0, part=part))
        self.emit(OutputItemDone(output_index=index, item=item.out()))

    # -- the end ---------------------------------------------------------------------

    def snapshot(self) -> ResponseObject:
        """The response object now (its output so far, while in progress)."""
        self.response.output = [item.out() for item in self._items]
        return self.response

    def settle(self, finish_reason: str | None, error: EngineError | None = None) -> None:
        """Close the output and set the final status, usage and output (no event yet:
        the terminal one goes out after the response is stored, :meth:`terminate`)."""
        response = self.response
        if error is not None:
            status = "failed"
            response.error = response_error(error)
            for item in self._items:
                if item.status == "in_progress":
                    item.status = "incomplete"
            self._open = None
        else:
            status, reason = _ENDINGS.get(finish_reason or "stop", ("completed", None))
            self._close("completed" if status == "completed" else "incomplete")
            if status == "incomplete":
                response.incomplete_details = IncompleteDetails(reason=reason)
            elif status == "completed":
                response.completed_at = int(time.time())
        response.status = status
        usage = self.usage
        if usage is None:
            # Stopped, or a server that sends none: say about what it was.
            prompt = self.prompt_estimate
            usage = EstimatedUsage(
                prompt_tokens=prompt,
                completion_tokens=self.chunks,
                total_tokens=prompt + self.chunks,
            )
        response.usage = ResponseUsage.of(usage)
        self.snapshot()

    def fail(self, error: EngineError) -> None:
        """Make a settled response failed (its reply could not be stored)."""
        self.response.status = "failed"
        self.response.error = response_error(error)
        self.response.completed_at = None

    def terminate(self, error: EngineError | None = None) -> None:
        """The last events: ``response.completed``/``incomplete``, or ``error`` and
        ``response.failed``; the log ends with them."""
        response = self.response
        if response.status == "completed":
            self.emit(Completed(response=response), last=True)
        elif response.status == "failed":
            if error is not None:
                self.emit(stream_error(error, self.seq))
            self.emit(Failed(response=response), last=True)
        else:
            # incomplete, or cancelled: OpenAI has no `response.cancelled` event, and
            # a cancel is no failure; the object's status says which it was.
            self.emit(Incomplete(response=response), last=True)

    def reply(self) -> tuple[str, list[dict[str, Any]]]:
        """The output as memory keeps it: the text, and the calls in Chat Completions' form."""
        text = "".join(item.text for item in self._items if not item.call_id)
        calls = [
            {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.text},
            }
            for item in self._items
            if item.call_id
        ]
        return text, calls
